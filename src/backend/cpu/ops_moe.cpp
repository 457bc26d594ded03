// Routed experts as grouped matrix products: tokens are grouped by expert, each active expert's
// weights are read once per batch for all of its tokens, and results are scattered back and
// summed per token in top-k order (so the sum does not depend on the grouping).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "quant/quants.h"

namespace bigmoe::cpu {

namespace {

struct Route {
    std::vector<int32_t> ids;  // [T][K]
    std::vector<float> w;      // [T][K]
};

void route(Tensor logits, int64_t K, Route& r) {
    const int64_t T = logits.rows, E = logits.cols;
    r.ids.resize(size_t(T * K));
    r.w.resize(size_t(T * K));
    std::vector<float> p(static_cast<size_t>(E));
    std::vector<int32_t> order(static_cast<size_t>(E));
    for (int64_t t = 0; t < T; ++t) {
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
}

}  // namespace

void CpuBackend::moe(Tensor x, Tensor router_logits, const MoeWeights& m, Tensor out) {
    const int64_t T = x.rows, K = m.n_expert_used, E = m.n_expert, F = m.n_ff, N = x.cols;
    BM_CHECK(router_logits.cols == E && router_logits.rows == T && out.cols == N);
    if (T == 0) return;
    Route r;
    route(router_logits, K, r);

    // slots[e] = list of (t * K + k) routed to expert e
    std::vector<std::vector<int32_t>> slots(static_cast<size_t>(E));
    for (int64_t i = 0; i < T * K; ++i) slots[size_t(r.ids[size_t(i)])].push_back(int32_t(i));

    const Weight& wg = m.gate_up ? *m.gate_up : *m.gate;
    const DType in_type = wg.type;
    BM_CHECK(m.gate_up || m.up->type == in_type || activation_type(m.up->type) == activation_type(in_type));
    std::vector<uint8_t> qx;
    const size_t qrb = quantize_rows(in_type, x, qx);

    Tensor y = scratch(T * K, N);
    const size_t down_qrb = row_bytes(activation_type(m.down->type), F);
    std::vector<uint8_t> gathered, hq;
    for (int64_t e = 0; e < E; ++e) {
        const auto& sl = slots[size_t(e)];
        const int64_t n = int64_t(sl.size());
        if (n == 0) continue;
        gathered.resize(size_t(n) * qrb);
        for (int64_t j = 0; j < n; ++j)
            std::copy_n(qx.data() + size_t(sl[size_t(j)] / K) * qrb, qrb, gathered.data() + size_t(j) * qrb);
        Tensor g = scratch(n, F), u = scratch(n, F), h = scratch(n, F);
        if (m.gate_up) {
            Tensor gu = scratch(n, 2 * F);
            const uint8_t* w = static_cast<const uint8_t*>(wg.data) + size_t(e) * wg.expert_bytes;
            matmul_rows(wg.type, w, wg.row_bytes, 2 * F, gathered.data(), qrb, n, N, gu.data, gu.stride);
            g = gu.cols_view(0, F);
            u = gu.cols_view(F, F);
        } else {
            const uint8_t* w1 = static_cast<const uint8_t*>(m.gate->data) + size_t(e) * m.gate->expert_bytes;
            const uint8_t* w3 = static_cast<const uint8_t*>(m.up->data) + size_t(e) * m.up->expert_bytes;
            matmul_rows(m.gate->type, w1, m.gate->row_bytes, F, gathered.data(), qrb, n, N, g.data, g.stride);
            if (activation_type(m.up->type) == activation_type(in_type)) {
                matmul_rows(m.up->type, w3, m.up->row_bytes, F, gathered.data(), qrb, n, N, u.data, u.stride);
            } else {
                // Gate and up of different activation types: gather f32 rows and quantize for up.
                Tensor xs = scratch(n, N);
                for (int64_t j = 0; j < n; ++j) std::copy_n(x.row(sl[size_t(j)] / K), N, xs.row(j));
                std::vector<uint8_t> qu;
                const size_t urb = quantize_rows(m.up->type, xs, qu);
                matmul_rows(m.up->type, w3, m.up->row_bytes, F, qu.data(), urb, n, N, u.data, u.stride);
            }
        }
        swiglu(g, u, h);
        quantize_rows(m.down->type, h, hq);
        Tensor yd = scratch(n, N);
        const uint8_t* w2 = static_cast<const uint8_t*>(m.down->data) + size_t(e) * m.down->expert_bytes;
        matmul_rows(m.down->type, w2, m.down->row_bytes, N, hq.data(), down_qrb, n, F, yd.data, yd.stride);
        for (int64_t j = 0; j < n; ++j) std::copy_n(yd.row(j), N, y.row(sl[size_t(j)]));
    }
    pool_->parallel_for(T, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t) {
            float* o = out.row(t);
            for (int64_t k = 0; k < K; ++k) {
                const float w = r.w[size_t(t * K + k)];
                const float* yr = y.row(t * K + k);
                if (k == 0)
                    for (int64_t i = 0; i < N; ++i) o[i] = yr[i] * w;
                else
                    for (int64_t i = 0; i < N; ++i) o[i] += yr[i] * w;
            }
        }
    });
}

}  // namespace bigmoe::cpu
