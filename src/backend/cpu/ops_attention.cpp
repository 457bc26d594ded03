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
    // Flash attention: tasks are (sequence, KV head, block of k_q_tile tokens); the queries of a
    // task (its tokens x the heads of the KV group) share every K/V row they load. Keys are
    // visited in tiles of k_kv_tile absolute positions with an online softmax, so a query's
    // arithmetic depends only on its own position, never on the batch around it.
    constexpr int64_t k_q_tile = 8, k_kv_tile = 64;
    const int64_t group = p.n_head / p.n_head_kv;
    struct Task {
        size_t span;
        int64_t g, t0, t1;
    };
    std::vector<Task> tasks;
    for (size_t si = 0; si < spans.size(); ++si)
        for (int64_t g = 0; g < p.n_head_kv; ++g)
            for (int64_t t0 = 0; t0 < spans[si].n_tokens; t0 += k_q_tile)
                tasks.push_back({si, g, t0, std::min(spans[si].n_tokens, t0 + k_q_tile)});
    pool_->parallel_for(int64_t(tasks.size()), [&](int64_t tb, int64_t te, int) {
        const int64_t max_q = k_q_tile * group;
        std::vector<float> qv(static_cast<size_t>(max_q * D)), acc(static_cast<size_t>(max_q * D));
        std::vector<float> m(static_cast<size_t>(max_q)), l(static_cast<size_t>(max_q)), sc(k_kv_tile);
        for (int64_t ti = tb; ti < te; ++ti) {
            const Task& task = tasks[size_t(ti)];
            const SeqSpan& s = spans[task.span];
            const KvBlock& b = *kv[task.span];
            const DotF32Fn dot_k = b.type_k == DType::F16 ? k_->dot_kv_f16 : k_->dot_kv_f32;
            const AxpyFn axpy_v = b.type_v == DType::F16 ? k_->axpy_f16 : k_->axpy_f32;
            const size_t k_es = b.type_k == DType::F16 ? 2 : 4, v_es = b.type_v == DType::F16 ? 2 : 4;
            const uint8_t* kbase = static_cast<const uint8_t*>(b.k);
            const uint8_t* vbase = static_cast<const uint8_t*>(b.v);
            const int64_t off = task.g * D, nq = (task.t1 - task.t0) * group;
            // query j = (token t0 + j / group, head g * group + j % group)
            for (int64_t j = 0; j < nq; ++j) {
                const float* qr = q.row(s.first + task.t0 + j / group) + (task.g * group + j % group) * D;
                float* dst = qv.data() + j * D;
                // The reference engine rounds the query to the cache precision for the K·Q product.
                for (int64_t d = 0; d < D; ++d)
                    dst[d] = b.type_k == DType::F16 ? fp16_to_f32(f32_to_fp16(qr[d])) : qr[d];
                m[size_t(j)] = -INFINITY;
                l[size_t(j)] = 0;
                std::fill_n(acc.data() + j * D, D, 0.0f);
            }
            const int64_t last_pos = s.pos0 + task.t1 - 1;
            for (int64_t kt = 0; kt <= last_pos; kt += k_kv_tile) {
                for (int64_t j = 0; j < nq; ++j) {
                    const int64_t pos = s.pos0 + task.t0 + j / group;
                    if (pos < kt) continue;
                    const int64_t end = std::min(kt + k_kv_tile, pos + 1);
                    float tile_max = -INFINITY;
                    for (int64_t t = kt; t < end; ++t) {
                        const float x = dot_k(qv.data() + j * D, kbase + size_t(t * width + off) * k_es, D) * p.scale;
                        sc[size_t(t - kt)] = x;
                        tile_max = std::max(tile_max, x);
                    }
                    float* a = acc.data() + j * D;
                    const float m_new = std::max(m[size_t(j)], tile_max);
                    if (m_new > m[size_t(j)]) {
                        const float corr = std::exp(m[size_t(j)] - m_new);
                        l[size_t(j)] *= corr;
                        for (int64_t d = 0; d < D; ++d) a[d] *= corr;
                        m[size_t(j)] = m_new;
                    }
                    for (int64_t t = kt; t < end; ++t) {
                        const float w = std::exp(sc[size_t(t - kt)] - m_new);
                        l[size_t(j)] += w;
                        axpy_v(a, w, vbase + size_t(t * width + off) * v_es, D);
                    }
                }
            }
            for (int64_t j = 0; j < nq; ++j) {
                float* o = out.row(s.first + task.t0 + j / group) + (task.g * group + j % group) * D;
                const float inv = 1.0f / l[size_t(j)];
                for (int64_t d = 0; d < D; ++d) o[d] = acc[size_t(j * D + d)] * inv;
            }
        }
    });
}

}  // namespace bigmoe::cpu
