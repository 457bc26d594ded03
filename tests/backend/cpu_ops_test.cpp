// What is particular to the CPU backend, for every instruction-set table (the ops themselves are
// in conformance_test.cpp): products against float64 with the activations quantized as the CPU
// quantizes them (tighter than the conformance bound), several products of one input in one job
// bit-equal to one job each, SiLU tables agreeing bit for bit, attention on Q8_0 cache rows in
// place equal to a dequantized tile, packing within the memory budget, and routed experts on
// packed weights.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "core/fp16.h"
#include "quant/quants.h"
#include "reference_ops.h"
#include "testlib.h"

namespace bigmoe {
namespace {

using testing::make_weight;
using testing::OwnedWeight;

std::vector<float> dequant_row(const Weight& w, int64_t row) {
    return testing::ref::weight_row(w, row);
}

struct Host {
    std::vector<float> data;
    Tensor t;
    Host(int64_t rows, int64_t cols) : data(size_t(rows * cols)), t{data.data(), rows, cols, cols} {}
};

// Fresh random values in [lo, hi) for every element of the tensors (in place: t points at data).
void fill_random(std::mt19937& rng, std::initializer_list<Host*> hosts, float lo, float hi) {
    for (Host* h : hosts) {
        const std::vector<float> r = testing::random_floats(rng, h->data.size(), lo, hi);
        std::copy(r.begin(), r.end(), h->data.begin());
    }
}

std::vector<std::unique_ptr<cpu::CpuBackend>> backends() {
    std::vector<std::unique_ptr<cpu::CpuBackend>> r;
    for (const cpu::Kernels* k : cpu::available_kernels()) r.push_back(std::make_unique<cpu::CpuBackend>(2, k));
    return r;
}

// silu(g) * u against float64, every table bit-identical to the scalar fast_exp arithmetic
// whatever the length and offset (vector lanes and scalar tails), extremes included.
TEST(CpuOps, silu_mul_matches_float64_and_every_table_agrees) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    auto g = testing::random_floats(rng, 300, -12, 12), u = testing::random_floats(rng, 300, -2, 2);
    const float extremes[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 87.5f, -87.5f, 88.5f, -88.5f, 200.0f, -200.0f, 0.5f};
    std::copy(std::begin(extremes), std::end(extremes), g.begin() + 40);
    for (const cpu::Kernels* k : cpu::available_kernels()) {
        for (int64_t off : {0, 3}) {
            for (int64_t n : {1, 7, 8, 9, 31, 256}) {
                std::vector<float> y(static_cast<size_t>(n)), s(static_cast<size_t>(n));
                k->silu_mul(g.data() + off, u.data() + off, y.data(), n);
                k->silu_mul(g.data() + off, nullptr, s.data(), n);
                for (int64_t i = 0; i < n; ++i) {
                    const double x = g[size_t(off + i)], ref = x / (1 + std::exp(-x));
                    const float poly = cpu::silu_poly(g[size_t(off + i)]);
                    ASSERT_EQ(s[size_t(i)], poly) << k->isa << " x=" << x << " seed=" << seed;
                    ASSERT_EQ(y[size_t(i)], poly * u[size_t(off + i)]) << k->isa << " seed=" << seed;
                    // 2 ulp of exp and the division's rounding
                    ASSERT_NEAR(s[size_t(i)], ref, 4e-7 * std::fabs(ref) + 1e-38) << k->isa << " x=" << x;
                }
            }
        }
    }
    EXPECT_TRUE(std::isinf(fast_exp::exp(88.8f)));
    for (float x = -86.0f; x <= 88.7f; x += 0.37f) {
        const double e = std::exp(double(x)), p = fast_exp::exp(x);
        ASSERT_NEAR(p, e, 2.5e-7 * e) << "x=" << x;
    }
}

// Weights as the engine prepares them: 40 rows are packed where the table has packed kernels
// (Q4_K, Q6_K), 37 rows never are.
TEST(CpuOps, matmul_every_type_matches_float64) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    for (auto& be : backends()) {
        for (DType t :
             {DType::F32, DType::F16, DType::BF16, DType::Q4_0, DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K}) {
            const int64_t n_in = traits(t).block_elems == 1 ? 100 : 2 * std::max<int64_t>(traits(t).block_elems, 256);
            for (int64_t n_out : {37, 40}) {
                auto w = make_weight(rng, t, n_in, n_out);
                ASSERT_TRUE(be->prepare_weight(w->w));
                if (n_out == 37) {
                    ASSERT_EQ(w->w.backend_data, nullptr);
                }
                for (int64_t T : {1, 3, 8, 17}) {
                    Host x(T, n_in), y(T, n_out);
                    auto xv = testing::random_floats(rng, size_t(T * n_in), -2, 2);
                    std::copy(xv.begin(), xv.end(), x.data.begin());
                    be->matmul(w->w, x.t, y.t);
                    for (int64_t i = 0; i < T; ++i) {
                        const auto xa = testing::ref::activation_view(t, x.t.row(i), n_in);
                        for (int64_t r = 0; r < n_out; ++r) {
                            const auto wr = dequant_row(w->w, r);
                            double ref = 0, mag = 0;
                            for (int64_t k = 0; k < n_in; ++k) {
                                ref += double(wr[size_t(k)]) * xa[size_t(k)];
                                mag += std::fabs(double(wr[size_t(k)]) * xa[size_t(k)]);
                            }
                            ASSERT_NEAR(y.t.row(i)[r], ref, 1e-5 * mag + 1e-6)
                                << be->name() << " " << traits(t).name << " rows=" << n_out
                                << " packed=" << (w->w.backend_data != nullptr) << " T=" << T << " seed=" << seed;
                        }
                    }
                }
            }
        }
    }
}

// Several products of one input in one call (a layer's projections: mixed weight and activation
// types, packed and not, row counts that split a product's blocks between the threads) give the
// bits of one matmul each, for decode-sized and prefill-sized batches.
TEST(CpuOps, matmuls_equal_one_matmul_each_bitwise) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    const int64_t n_in = 512;
    for (auto& be : backends()) {
        std::vector<std::unique_ptr<OwnedWeight>> ws;
        ws.push_back(make_weight(rng, DType::Q6_K, n_in, 72));
        ws.push_back(make_weight(rng, DType::Q4_K, n_in, 40));
        ws.push_back(make_weight(rng, DType::Q4_K, n_in, 8));
        ws.push_back(make_weight(rng, DType::F32, n_in, 13));
        ws.push_back(make_weight(rng, DType::Q8_0, n_in, 37));
        for (auto& w : ws) ASSERT_TRUE(be->prepare_weight(w->w));
        for (int64_t T : {1, 3, 20}) {
            Host x(T, n_in);
            fill_random(rng, {&x}, -2, 2);
            std::vector<Host> one, many;
            std::vector<Backend::Product> ps;
            for (auto& w : ws) {
                one.emplace_back(T, w->w.n_out());
                many.emplace_back(T, w->w.n_out());
            }
            for (size_t i = 0; i < ws.size(); ++i) {
                be->matmul(ws[i]->w, x.t, one[i].t);
                ps.push_back({&ws[i]->w, many[i].t});
            }
            be->matmuls(x.t, ps);
            for (size_t i = 0; i < ws.size(); ++i)
                ASSERT_EQ(std::memcmp(one[i].data.data(), many[i].data.data(), one[i].data.size() * 4), 0)
                    << be->name() << " product " << i << " T=" << T << " seed=" << seed;
        }
    }
}

// Attention's kernels on Q8_0 cache rows read in place give the bits of the rows dequantized
// into a tile and the f32 kernels: scores and weighted values, for head sizes of one to four
// blocks, query counts and key counts off the kernels' blocks of 4, queries whose keys end early.
TEST(CpuOps, q8_0_cache_rows_in_place_equal_a_dequantized_tile) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    int tables = 0;
    for (const cpu::Kernels* k : cpu::available_kernels()) {
        if (!k->kv_scores_q8_0 || !k->kv_accum_q8_0) continue;
        ++tables;
        for (int64_t D : {32, 64, 96, 128}) {
            const int64_t heads = 2, width = heads * D, n = 37, nq = 6, stride = 64;
            const size_t rb = row_bytes(DType::Q8_0, width);
            std::vector<uint8_t> rows(rb * size_t(n));
            for (int64_t t = 0; t < n; ++t) {
                const std::vector<float> x = testing::random_floats(rng, size_t(width), -2, 2);
                quantize_row(DType::Q8_0, x.data(), rows.data() + size_t(t) * rb, width);
            }
            const std::vector<float> q = testing::random_floats(rng, size_t(nq * D), -1, 1);
            const std::vector<float> p = testing::random_floats(rng, size_t(nq * stride), 0, 1);
            const std::vector<float> acc0 = testing::random_floats(rng, size_t(nq * D), -1, 1);
            std::vector<int64_t> n_of(static_cast<size_t>(nq));
            for (int64_t j = 0; j < nq; ++j) n_of[size_t(j)] = j % 2 ? n : n - 1 - 5 * j;
            const uint8_t* head = rows.data() + row_bytes(DType::Q8_0, D);  // the second head
            std::vector<float> tile(size_t(n * D));
            k->kv_tile[int(DType::Q8_0)](head, rb, n, D, tile.data(), 0);
            std::vector<float> s_in(size_t(nq * stride)), s_tile(s_in.size());
            k->kv_scores_q8_0(q.data(), nq, head, width, n, D, 0.125f, s_in.data(), stride, n);
            k->kv_scores_f32(q.data(), nq, tile.data(), D, n, D, 0.125f, s_tile.data(), stride, 0);
            for (int64_t j = 0; j < nq; ++j)
                ASSERT_EQ(std::memcmp(s_in.data() + j * stride, s_tile.data() + j * stride, size_t(n) * 4), 0)
                    << k->isa << " D=" << D << " query " << j << " seed=" << seed;
            std::vector<float> a_in = acc0, a_tile = acc0;
            k->kv_accum_q8_0(p.data(), stride, n_of.data(), nq, head, width, D, a_in.data(), n);
            k->kv_accum_f32(p.data(), stride, n_of.data(), nq, tile.data(), D, D, a_tile.data(), 0);
            ASSERT_EQ(std::memcmp(a_in.data(), a_tile.data(), a_in.size() * 4), 0)
                << k->isa << " D=" << D << " seed=" << seed;
        }
    }
#if defined(__x86_64__)
    EXPECT_GT(tables, 0) << "no x86 table reads Q8_0 rows in place";
#endif
}

// Packed copies stop at the memory budget: weights that do not fit keep the file's layout and
// give the same products (within float summation order) as packed ones.
TEST(CpuOps, packing_stops_at_the_memory_budget) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    for (const cpu::Kernels* k : cpu::available_kernels()) {
        if (!k->packed_tile[int(DType::Q4_K)][0]) continue;
        cpu::CpuBackend be(2, k);
        auto a = make_weight(rng, DType::Q4_K, 512, 64), b = make_weight(rng, DType::Q4_K, 512, 64);
        be.set_pack_budget(a->bytes.size() + a->bytes.size() / 2);  // room for one copy
        ASSERT_TRUE(be.prepare_weight(a->w));
        ASSERT_TRUE(be.prepare_weight(b->w));
        EXPECT_NE(a->w.backend_data, nullptr);
        EXPECT_EQ(b->w.backend_data, nullptr);
        Host x(3, 512), ya(3, 64), yb(3, 64);
        auto xv = testing::random_floats(rng, 3 * 512, -1, 1);
        std::copy(xv.begin(), xv.end(), x.data.begin());
        std::copy(a->bytes.begin(), a->bytes.end(), b->bytes.begin());  // same weights, unpacked
        be.matmul(a->w, x.t, ya.t);
        be.matmul(b->w, x.t, yb.t);
        for (size_t i = 0; i < ya.data.size(); ++i)
            ASSERT_NEAR(ya.data[i], yb.data[i], 1e-4 * (1 + std::fabs(yb.data[i]))) << be.name() << " seed=" << seed;
    }
}

// Routed experts on K-quant weights: packed (separate gate/up, and a fused gate_up whose up half
// starts inside a packed group of 8 rows: n_ff = 12) against the same weights unpacked.
TEST(CpuOps, moe_on_packed_weights_matches_unpacked) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    const int64_t N = 256, E = 6, K = 2, T = 5;
    for (int64_t F : {int64_t(12), int64_t(256)}) {
        for (bool fused : {false, true}) {
            Host x(T, N), logits(T, E), ref(T, N), out(T, N);
            auto xv = testing::random_floats(rng, size_t(T * N), -1, 1);
            auto lv = testing::random_floats(rng, size_t(T * E), -3, 3);
            std::copy(xv.begin(), xv.end(), x.data.begin());
            std::copy(lv.begin(), lv.end(), logits.data.begin());
            auto gate = make_weight(rng, DType::Q4_K, N, F, E), up = make_weight(rng, DType::Q4_K, N, F, E);
            auto gate_up = make_weight(rng, DType::Q4_K, N, 2 * F, E);
            auto down = make_weight(rng, DType::Q6_K, F, N, E);
            if (F % 256 != 0) down = make_weight(rng, DType::F32, F, N, E);
            const MoeWeights m = fused ? MoeWeights{nullptr, nullptr, &down->w, &gate_up->w, E, K, F}
                                       : MoeWeights{&gate->w, &up->w, &down->w, nullptr, E, K, F};
            const auto owned = {gate.get(), up.get(), gate_up.get(), down.get()};
            for (auto& be : backends()) {
                for (auto* o : owned) o->w.backend_data = nullptr;  // the previous backend's copy (freed with it)
                be->moe(x.t, logits.t, m, ref.t);                   // the file's layout
                for (auto* o : owned) ASSERT_TRUE(be->prepare_weight(o->w));
                const bool packed = (fused ? gate_up : gate)->w.backend_data != nullptr;
                be->moe(x.t, logits.t, m, out.t);
                // Only the float summation order differs, but the expert hidden state is quantized
                // again for the down product, where a value can round the other way: tolerance on
                // the scale of the token's output (a wrong row or offset is off by that scale).
                for (int64_t t = 0; t < T; ++t) {
                    double scale = 0;
                    for (int64_t o = 0; o < N; ++o) scale = std::max(scale, double(std::fabs(ref.t.row(t)[o])));
                    for (int64_t o = 0; o < N; ++o)
                        ASSERT_NEAR(out.t.row(t)[o], ref.t.row(t)[o], 5e-3 * scale + 1e-5)
                            << be->name() << " F=" << F << " fused=" << fused << " packed=" << packed
                            << " seed=" << seed;
                }
            }
        }
    }
}

}  // namespace
}  // namespace bigmoe
