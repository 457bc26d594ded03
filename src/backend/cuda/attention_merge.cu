// The merge of an attention op's split chunks (decode and verification batches): each (row,
// query head)'s chunk partials folded in chunk order into its result.
#include "backend/cuda/att_merge.cuh"
#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

// The chunks of a split row merged in chunk order: a block per (row, query head), a thread per
// value of d, chunks in windows of k_merge_window. The fold's scalars come first: warp 0 forms
// the running maxima over the window (prefix maxima by shuffles) and each chunk's two factors, as
// att_merge_scalars forms them (the total's mass is nonzero exactly when an earlier chunk's is:
// the larger side's factor is exp(0) = 1). Then each thread folds its value over the window with
// k_merge_ahead chunks' values in flight, and the mass alongside: the same operations in the
// same order as att_merge. The kernel issues few instructions a chunk, as its 8 warps an SM wait
// on their own chains: with the head size known when compiled (DC), a value's load is one
// instruction at an immediate offset, and a chunk's step is one shared-memory float4.
constexpr int k_merge_threads = int(k_att_max_d);
constexpr int k_merge_window = 256;
constexpr int k_merge_ahead = 32;

template <int DC>  // the head size, 0: a.D
__global__ void __launch_bounds__(k_merge_threads) k_attention_merge(AttentionArgs a) {
    pdl_enter();
    // each chunk's maximum and mass, then its step: the two factors, its mass and the mode
    __shared__ float snm[k_merge_window], snl[k_merge_window];
    __shared__ float4 sstep[k_merge_window];
    __shared__ float s_tm;
    __shared__ int s_seen;
    const int64_t t = blockIdx.x, h = blockIdx.y;
    const int D = DC > 0 ? DC : int(a.D), rs = D + 4;
    if (a.row_span[t] < 0) return;
    const int tid = threadIdx.x;
    const bool mine = tid < D;
    const int64_t n_chunks = a.pos[t] / a.chunk + 1;
    const float* src = a.part + (t * a.n_head + h) * a.max_chunks * rs;
    const float* mysrc = src + 4 + (mine ? tid : 0);  // threads past D read d 0 and drop it
    if (tid == 0) {
        s_tm = -INFINITY;
        s_seen = 0;
    }
    float ta = 0.0f, tl = 0.0f;
    for (int64_t w0 = 0; w0 < n_chunks; w0 += k_merge_window) {
        const int nw = int(min(int64_t(k_merge_window), n_chunks - w0));
        const float* wsrc = src + w0 * rs;
        for (int c = tid; c < nw; c += k_merge_threads) {
            snm[c] = wsrc[c * rs];
            snl[c] = wsrc[c * rs + 1];
        }
        float nv[k_merge_ahead];
        auto load = [&](int c0) {
            const float* g = mysrc + (w0 + c0) * rs;
            if (c0 + k_merge_ahead <= nw) {
#pragma unroll
                for (int j = 0; j < k_merge_ahead; ++j) nv[j] = g[j * rs];
            } else {
#pragma unroll
                for (int j = 0; j < k_merge_ahead; ++j) nv[j] = c0 + j < nw ? g[j * rs] : 0.0f;
            }
        };
        load(0);  // in flight while the scalars form
        __syncthreads();
        if (tid < 32) {
            // The running maximum after each chunk (att_merge_scalars' tm): the maximum of the
            // nonempty chunks' maxima so far (a chunk taken as the first nonempty one sets tm =
            // nm = max(-inf, nm)), a prefix maximum over the warp's lanes, 32 chunks at a time.
            float tm = s_tm;
            int seen = s_seen;
            for (int c0 = 0; c0 < nw; c0 += 32) {
                const int c = c0 + tid;
                const float nm = c < nw ? snm[c] : -INFINITY, nl = c < nw ? snl[c] : 0.0f;
                const bool full = nl != 0.0f;
                float run = full ? nm : -INFINITY;
#pragma unroll
                for (int o = 1; o < 32; o <<= 1) {
                    const float up = __shfl_up_sync(0xffffffffu, run, o);
                    if (tid >= o) run = fmaxf(run, up);
                }
                run = fmaxf(tm, run);
                const float before = __shfl_up_sync(0xffffffffu, run, 1);
                const uint32_t fulls = __ballot_sync(0xffffffffu, full);
                if (c < nw) {
                    const int mode = !full ? 0 : seen || (fulls & ((1u << tid) - 1)) ? 2 : 1;
                    const float prev = tid == 0 ? tm : before;
                    float fa = 0.0f, fb = 0.0f;
                    if (mode == 2) {
                        fa = expf(__fsub_rn(prev, run));
                        fb = expf(__fsub_rn(nm, run));
                    }
                    sstep[c] = make_float4(fa, fb, nl, __int_as_float(mode));
                }
                tm = __shfl_sync(0xffffffffu, run, 31);
                seen |= fulls != 0;
            }
            __syncwarp();  // every lane has read s_tm and s_seen before lane 0 replaces them
            if (tid == 0) {
                s_tm = tm;
                s_seen = seen;
            }
        }
        __syncthreads();
        for (int c0 = 0; c0 < nw; c0 += k_merge_ahead) {
            float cur[k_merge_ahead];
#pragma unroll
            for (int j = 0; j < k_merge_ahead; ++j) cur[j] = nv[j];
            if (c0 + k_merge_ahead < nw) load(c0 + k_merge_ahead);
#pragma unroll
            for (int j = 0; j < k_merge_ahead; ++j) {
                const int c = c0 + j;
                if (c >= nw) break;
                const float4 st = sstep[c];
                const AttMergeStep step{__float_as_int(st.w), st.x, st.y};
                ta = att_merge_value(step, ta, cur[j]);
                tl = att_merge_value(step, tl, st.z);
            }
        }
        __syncthreads();  // the window's scalars are read before the next window's take their place
    }
    if (mine) a.out[t * a.os + h * D + tid] = __fmul_rn(ta, __fdiv_rn(1.0f, tl));
}

}  // namespace

void run_attention_merge(cudaStream_t s, const AttentionArgs& a) {
    const dim3 grid(unsigned(a.rows), unsigned(a.n_head));
    launch(a.D == 256   ? k_attention_merge<256>
           : a.D == 128 ? k_attention_merge<128>
                        : k_attention_merge<0>,
           grid, k_merge_threads, 0, s, a);
    CU_LAUNCHED();
}

}  // namespace bigmoe::cuda
