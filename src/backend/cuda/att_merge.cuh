// The online softmax's merge step, shared by the attention kernels (attention.cu) and the
// merge of split chunks (attention_merge.cu), so both give a query the same bits. Internal
// linkage, as kv_rows.cuh.
#pragma once

#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

// total += next, in an order fixed by the chunk sequence alone (no fused multiply-adds, so the
// attention kernel and the merge kernel give the same bits): the new maximum and mass, and how
// each value of the total is formed from its own and the chunk's.
struct AttMergeStep {
    int mode;  // 0: keep the total, 1: take the chunk's, 2: t * fa + n * fb
    float fa, fb;
};
__device__ __forceinline__ AttMergeStep att_merge_scalars(float& tm, float& tl, float nm, float nl) {
    if (nl == 0.0f) return {0, 0, 0};  // the chunk held none of the query's keys
    if (tl == 0.0f) {
        tm = nm;
        tl = nl;
        return {1, 0, 0};
    }
    const float mx = fmaxf(tm, nm);
    const float fa = expf(__fsub_rn(tm, mx)), fb = expf(__fsub_rn(nm, mx));
    tm = mx;
    tl = __fadd_rn(__fmul_rn(tl, fa), __fmul_rn(nl, fb));
    return {2, fa, fb};
}
__device__ __forceinline__ float att_merge_both(const AttMergeStep& s, float t, float n) {
    return __fadd_rn(__fmul_rn(t, s.fa), __fmul_rn(n, s.fb));
}
// (both forms computed and one selected: no branch per value)
__device__ __forceinline__ float att_merge_value(const AttMergeStep& s, float t, float n) {
    const float both = att_merge_both(s, t, n);
    return s.mode == 2 ? both : s.mode == 1 ? n : t;
}

}  // namespace

}  // namespace bigmoe::cuda
