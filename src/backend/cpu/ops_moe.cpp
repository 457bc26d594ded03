// Routed experts as grouped matrix products: tokens are grouped by expert, each active expert's
// weights are read once per batch for all of its tokens, and results are scattered back and
// summed per token in top-k order (so the sum does not depend on the grouping).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "backend/cpu/repack.h"
#include "quant/quants.h"

namespace bigmoe::cpu {

namespace {

struct Route {
    std::vector<int32_t> ids;  // [T][K]
    std::vector<float> w;      // [T][K]
};

// Softmax over the experts, the top K (ties to the lower id) and their weights renormalised; per
// token, independent of the others (tokens are split over the pool: 512 tokens of 64 experts
// took ~0.6 ms a layer on one thread).
void route(ThreadPool& pool, Tensor logits, int64_t K, Route& r) {
    const int64_t T = logits.rows, E = logits.cols;
    r.ids.resize(size_t(T * K));
    r.w.resize(size_t(T * K));
    pool.parallel_for(T, [&](int64_t tb, int64_t te, int) {
        std::vector<float> p(static_cast<size_t>(E));
        std::vector<int32_t> order(static_cast<size_t>(E));
        for (int64_t t = tb; t < te; ++t) {
            const float* z = logits.row(t);
            const float mx = *std::max_element(z, z + E);
            double sum = 0;
            for (int64_t e = 0; e < E; ++e) {
                p[size_t(e)] = std::exp(z[e] - mx);
                sum += p[size_t(e)];
            }
            const float inv = float(1.0 / sum);
            for (int64_t e = 0; e < E; ++e) p[size_t(e)] *= inv;
            std::iota(order.begin(), order.end(), 0);
            std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int32_t a, int32_t b) {
                return p[size_t(a)] > p[size_t(b)] || (p[size_t(a)] == p[size_t(b)] && a < b);
            });
            float wsum = 0;
            for (int64_t k = 0; k < K; ++k) wsum += p[size_t(order[size_t(k)])];
            wsum = std::max(wsum, 6.103515625e-5f);
            for (int64_t k = 0; k < K; ++k) {
                r.ids[size_t(t * K + k)] = order[size_t(k)];
                r.w[size_t(t * K + k)] = p[size_t(order[size_t(k)])] / wsum;
            }
        }
    });
}

// Rows per task. With few tokens per expert (decode, verification) the product is bound by memory
// bandwidth: an expert's matrix is split into as few blocks as keep every thread busy (about two
// tasks each), so each task streams a long run of weights and the hardware prefetcher stays
// ahead (16-row tasks measured 20% slower decode). With many tokens per expert it is bound by
// arithmetic and small blocks (~16 KB, hot in L1/L2 while the tokens pass) measured faster; the
// many-token kernel (gemm: AMX) takes 4x that, as its calls work on 64 rows together.
int64_t rows_per_task(int64_t rows, size_t row_bytes, int64_t n_slots, int64_t n_active, int n_threads, bool packed,
                      bool gemm) {
    const size_t task_bytes = n_slots <= 4 * n_active ? size_t(1) << 19 : size_t(1) << (gemm ? 16 : 14);
    const int64_t by_size = int64_t((size_t(rows) * row_bytes + task_bytes - 1) / task_bytes);
    const int64_t by_threads = (2 * int64_t(n_threads) + n_active - 1) / n_active;
    const int64_t blocks = std::clamp<int64_t>(std::max(by_size, by_threads), 1, rows);
    const int64_t per = (rows + blocks - 1) / blocks;
    // whole pairs of packed groups: the AVX-512 many-token kernels take two groups at once (a
    // task of 7 groups ran its seventh alone at half the rate: bench-1b's 256-row experts at 512
    // tokens)
    constexpr int64_t unit = 2 * k_pack_rows;
    return packed ? (per + unit - 1) / unit * unit : per;
}

// BIGMOE_CPU_MOE_UNFUSED=1 keeps the two passes apart at decode sizes too (for A/B runs).
bool moe_unfused() {
    static const bool off = [] {
        const char* e = std::getenv("BIGMOE_CPU_MOE_UNFUSED");
        return e && std::string(e) == "1";
    }();
    return off;
}

}  // namespace

void CpuBackend::moe(Tensor x, Tensor router_logits, const MoeWeights& m, Tensor out) {
    const int64_t T = x.rows, K = m.n_expert_used, E = m.n_expert, F = m.n_ff, N = x.cols;
    BM_CHECK(router_logits.cols == E && router_logits.rows == T && out.cols == N);
    if (T == 0) return;
    Route r;
    route(*pool_, router_logits, K, r);

    // Group the T*K (token, slot) pairs by expert (a counting sort, stable in slot order):
    // grouped row j holds slot order[j]; expert e owns rows [first[e], first[e + 1]).
    const int64_t S = T * K;
    std::vector<int64_t> first(size_t(E + 1), 0);
    for (int64_t i = 0; i < S; ++i) ++first[size_t(r.ids[size_t(i)]) + 1];
    for (int64_t e = 0; e < E; ++e) first[size_t(e + 1)] += first[size_t(e)];
    std::vector<int32_t> order(static_cast<size_t>(S)), row_of(static_cast<size_t>(S));
    {
        std::vector<int64_t> fill(first.begin(), first.end() - 1);
        for (int64_t i = 0; i < S; ++i) {
            const int64_t j = fill[size_t(r.ids[size_t(i)])]++;
            order[size_t(j)] = int32_t(i);
            row_of[size_t(i)] = int32_t(j);
        }
    }
    std::vector<int32_t> active;
    for (int64_t e = 0; e < E; ++e)
        if (first[size_t(e + 1)] > first[size_t(e)]) active.push_back(int32_t(e));

    const Weight& wg = m.gate_up ? *m.gate_up : *m.gate;
    const Weight* wu = m.gate_up ? m.gate_up : m.up;
    const DType in_type = wg.type;
    // Quantized inputs, gathered into expert order (one copy per slot).
    auto gather = [&](DType wt, std::vector<uint8_t>& q, std::vector<uint8_t>& g) {
        const size_t rb = quantize_rows(wt, x, q);
        g.resize(size_t(S) * rb);
        pool_->parallel_for(S, [&](int64_t b, int64_t e, int) {
            for (int64_t j = b; j < e; ++j)
                std::copy_n(q.data() + size_t(order[size_t(j)] / K) * rb, rb, g.data() + size_t(j) * rb);
        });
        return rb;
    };
    std::vector<uint8_t> qx, gx, qxu, gxu;
    const size_t qrb = gather(in_type, qx, gx);
    const bool same_act = activation_type(wu->type) == activation_type(in_type);
    const size_t urb = same_act ? qrb : gather(wu->type, qxu, gxu);
    const uint8_t* gx_up = same_act ? gx.data() : gxu.data();

    // Pass 1: h = silu(x W_gate) * (x W_up) for every active expert, one task per (expert, block
    // of rows), so a decode step synchronises once here instead of once per expert and op.
    const int64_t up_off = m.gate_up ? F : 0;
    const bool pg = wg.backend_data != nullptr, pu = wu->backend_data != nullptr, pd = m.down->backend_data != nullptr;
    const int64_t per_expert = S / int64_t(active.size());  // tokens an active expert has, on average
    const int64_t rows_f = rows_per_task(F, wg.row_bytes + wu->row_bytes, S, int64_t(active.size()), pool_->size(),
                                         pg || pu, takes_gemm(wg.type, pg, per_expert));
    const int64_t blocks_f = (F + rows_f - 1) / rows_f;
    Tensor h = scratch(S, F);
    const int64_t rows_n = rows_per_task(N, m.down->row_bytes, S, int64_t(active.size()), pool_->size(), pd,
                                         takes_gemm(m.down->type, pd, per_expert));
    const int64_t blocks_n = (N + rows_n - 1) / rows_n;
    const DType hq_type = activation_type(m.down->type);
    const size_t hrb = row_bytes(hq_type, F);
    std::vector<uint8_t> hq;  // h quantized: sized by the tasks' pass (fused) or by quantize_rows
    Tensor y = scratch(S, N);
    // Pass 2's task for expert e and output rows [r0, r1): y = h W_down.
    auto down = [&](int64_t e, int64_t r0, int64_t r1) {
        const int64_t j0 = first[size_t(e)], n = first[size_t(e + 1)] - j0;
        const uint8_t* w2 = product_bytes(*m.down) + size_t(e) * m.down->expert_bytes;
        rows_product(m.down->type, pd, w2, m.down->row_bytes, r0, r1, hq.data() + size_t(j0) * hrb, hrb, n, F,
                     y.row(j0) + r0, y.stride);
    };
    // With one task per expert in both passes (decode, verification), a task goes on from its
    // expert's h to quantizing it and the down product: two fork-joins a layer fewer, and h
    // still in cache. The same calls on the same rows as the two passes, so the same bits.
    const bool fused = blocks_f == 1 && blocks_n == 1 && !moe_unfused();
    if (fused) hq.resize(size_t(S) * hrb);
    pool_->parallel_tasks(int64_t(active.size()) * blocks_f, [&](int64_t task, int) {
        const int64_t e = active[size_t(task / blocks_f)];
        const int64_t r0 = (task % blocks_f) * rows_f, r1 = std::min(F, r0 + rows_f), nr = r1 - r0;
        const int64_t j0 = first[size_t(e)], n = first[size_t(e + 1)] - j0;
        const uint8_t* w1 = product_bytes(wg) + size_t(e) * wg.expert_bytes;
        const uint8_t* w3 = product_bytes(*wu) + size_t(e) * wu->expert_bytes;
        // The task's gate and up results in a compact block of its own ([n][nr]: 28 KB for
        // bench-1b's ~64 tokens an expert at 512 tokens), read back by the SiLU while still in
        // L1/L2; through strided rows of S x F tensors its loads waited (bench-1b pp512 ~3% slower
        // on the Xeon dev VM).
        thread_local std::vector<float> gu;
        if (gu.size() < size_t(2 * n * nr)) gu.resize(size_t(2 * n * nr));
        float *gb = gu.data(), *ub = gu.data() + n * nr;
        rows_product(wg.type, pg, w1, wg.row_bytes, r0, r1, gx.data() + size_t(j0) * qrb, qrb, n, N, gb, nr);
        rows_product(wu->type, pu, w3, wu->row_bytes, up_off + r0, up_off + r1, gx_up + size_t(j0) * urb, urb, n, N, ub,
                     nr);
        for (int64_t j = 0; j < n; ++j) k_->silu_mul(gb + j * nr, ub + j * nr, h.row(j0 + j) + r0, nr);
        if (fused) {
            for (int64_t j = j0; j < j0 + n; ++j) k_->quantize[int(hq_type)](h.row(j), hq.data() + size_t(j) * hrb, F);
            down(e, 0, N);
        }
    });

    // Pass 2: y = h W_down, again one task per (expert, block of output rows).
    if (!fused) {
        quantize_rows(m.down->type, h, hq);  // rows of hrb bytes
        pool_->parallel_tasks(int64_t(active.size()) * blocks_n, [&](int64_t task, int) {
            const int64_t r0 = (task % blocks_n) * rows_n;
            down(active[size_t(task / blocks_n)], r0, std::min(N, r0 + rows_n));
        });
    }

    // Scatter back: each token sums its experts' outputs in top-k order.
    pool_->parallel_for(T, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t) {
            float* o = out.row(t);
            for (int64_t k = 0; k < K; ++k) {
                const float w = r.w[size_t(t * K + k)];
                const float* yr = y.row(row_of[size_t(t * K + k)]);
                if (k == 0)
                    for (int64_t i = 0; i < N; ++i) o[i] = yr[i] * w;
                else
                    for (int64_t i = 0; i < N; ++i) o[i] += yr[i] * w;
            }
        }
    });
}

}  // namespace bigmoe::cpu
