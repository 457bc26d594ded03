// Causal attention over each sequence's KV block (f32 or f16 cache). Every (token, head) pair is
// computed independently in a fixed order over key positions, so a token's result does not
// depend on the batch it came in.
//
// The query is rounded to the K cache's precision, as the reference engine does. Softmax and the
// V accumulation stay in f32 for every batch size: the reference's CPU kernel accumulates V in
// f16 for small batches (decode), which measurably drifts at long context (> 1e-3 relative on
// the 297-token fixture prompt), so bigmoe does not copy it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/fp16.h"

namespace bigmoe::cpu {

namespace {

void store_row(DType type, void* base, int64_t pos, const float* src, int64_t width) {
    if (type == DType::F32) {
        std::memcpy(static_cast<float*>(base) + pos * width, src, size_t(width) * 4);
    } else {
        uint16_t* dst = static_cast<uint16_t*>(base) + pos * width;
        for (int64_t i = 0; i < width; ++i) dst[i] = f32_to_fp16(src[i]);
    }
}

}  // namespace

void CpuBackend::attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, const std::vector<SeqSpan>& spans,
                           const std::vector<KvBlock*>& kv, Tensor out) {
    const int64_t D = p.head_dim, width = p.n_head_kv * D;
    BM_CHECK(q.cols == p.n_head * D && k.cols == width && v.cols == width && out.cols == p.n_head * D);
    BM_CHECK(kv.size() == spans.size());
    for (size_t si = 0; si < spans.size(); ++si) {
        const SeqSpan& s = spans[si];
        const KvBlock& b = *kv[si];
        BM_CHECK(s.pos0 + s.n_tokens <= b.capacity);
        for (int64_t i = 0; i < s.n_tokens; ++i) {
            store_row(b.type_k, b.k, s.pos0 + i, k.row(s.first + i), width);
            store_row(b.type_v, b.v, s.pos0 + i, v.row(s.first + i), width);
        }
    }
    std::vector<int64_t> task_start(spans.size() + 1, 0);
    int64_t max_ctx = 0;
    for (size_t si = 0; si < spans.size(); ++si) {
        task_start[si + 1] = task_start[si] + spans[si].n_tokens * p.n_head;
        max_ctx = std::max(max_ctx, spans[si].pos0 + spans[si].n_tokens);
    }
    const int64_t group = p.n_head / p.n_head_kv;
    pool_.parallel_for(task_start.back(), [&](int64_t tb, int64_t te, int) {
        std::vector<float> scores(static_cast<size_t>(max_ctx)), qv(static_cast<size_t>(D)),
            acc(static_cast<size_t>(D));
        for (int64_t task = tb; task < te; ++task) {
            const size_t si =
                size_t(std::upper_bound(task_start.begin(), task_start.end(), task) - task_start.begin() - 1);
            const SeqSpan& s = spans[si];
            const KvBlock& b = *kv[si];
            const DotF32Fn dot_k = b.type_k == DType::F16 ? k_->dot_kv_f16 : k_->dot_kv_f32;
            const AxpyFn axpy_v = b.type_v == DType::F16 ? k_->axpy_f16 : k_->axpy_f32;
            const size_t k_es = b.type_k == DType::F16 ? 2 : 4, v_es = b.type_v == DType::F16 ? 2 : 4;
            const uint8_t* kbase = static_cast<const uint8_t*>(b.k);
            const uint8_t* vbase = static_cast<const uint8_t*>(b.v);
            const int64_t local = task - task_start[si];
            const int64_t i = local / p.n_head, h = local % p.n_head;
            const int64_t row = s.first + i, pos = s.pos0 + i, off = (h / group) * D;
            const float* qr = q.row(row) + h * D;
            // The reference engine rounds the query to the cache precision for the K·Q product.
            for (int64_t d = 0; d < D; ++d)
                qv[size_t(d)] = b.type_k == DType::F16 ? fp16_to_f32(f32_to_fp16(qr[d])) : qr[d];
            float mx = -INFINITY;
            for (int64_t t = 0; t <= pos; ++t) {
                scores[size_t(t)] = dot_k(qv.data(), kbase + size_t(t * width + off) * k_es, D) * p.scale;
                mx = std::max(mx, scores[size_t(t)]);
            }
            float sum = 0;
            for (int64_t t = 0; t <= pos; ++t) {
                scores[size_t(t)] = std::exp(scores[size_t(t)] - mx);
                sum += scores[size_t(t)];
            }
            std::fill(acc.begin(), acc.end(), 0.0f);
            for (int64_t t = 0; t <= pos; ++t)
                axpy_v(acc.data(), scores[size_t(t)], vbase + size_t(t * width + off) * v_es, D);
            float* o = out.row(row) + h * D;
            const float inv = 1.0f / sum;
            for (int64_t d = 0; d < D; ++d) o[d] = acc[size_t(d)] * inv;
        }
    });
}

}  // namespace bigmoe::cpu
