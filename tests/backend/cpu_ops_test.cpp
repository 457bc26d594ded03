// CPU backend ops, for every instruction-set table, against float64 references on fresh random
// inputs: matrix products of every weight type (odd token counts, one token; several products of
// one input in one call against one call each), routed experts
// (some experts get no token), attention over f32/f16 caches, and the Gated DeltaNet recurrence.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "core/fp16.h"
#include "quant/quants.h"
#include "testlib.h"

namespace bigmoe {
namespace {

struct OwnedWeight {
    gguf::TensorInfo info;
    std::vector<uint8_t> bytes;
    Weight w;
};

// A weight of type t with shape {n_in, n_out, n_expert}, random values in [-1, 1).
std::unique_ptr<OwnedWeight> make_weight(std::mt19937& rng, DType t, int64_t n_in, int64_t n_out, int64_t n_exp = 1) {
    auto o = std::make_unique<OwnedWeight>();
    o->info.name = "w";
    o->info.type = t;
    o->info.ne[0] = n_in;
    o->info.ne[1] = n_out;
    o->info.ne[2] = n_exp;
    o->info.row_bytes = row_bytes(t, n_in);
    o->bytes.resize(o->info.row_bytes * size_t(n_out * n_exp));
    for (int64_t r = 0; r < n_out * n_exp; ++r) {
        auto v = testing::random_floats(rng, size_t(n_in), -1, 1);
        quantize_row(t, v.data(), o->bytes.data() + size_t(r) * o->info.row_bytes, n_in);
    }
    o->w.info = &o->info;
    o->w.type = t;
    o->w.ne[0] = n_in;
    o->w.ne[1] = n_out;
    o->w.ne[2] = n_exp;
    o->w.row_bytes = o->info.row_bytes;
    o->w.expert_bytes = o->info.row_bytes * size_t(n_out);
    o->w.data = o->bytes.data();
    return o;
}

std::vector<float> dequant_row(const Weight& w, int64_t row) {
    std::vector<float> r(static_cast<size_t>(w.n_in()));
    dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(row) * w.row_bytes, r.data(), w.n_in());
    return r;
}

// x as the kernel sees it: quantized to the weight type's activation type and back.
std::vector<float> act_view(DType wt, const float* x, int64_t n) {
    const DType at = activation_type(wt);
    std::vector<uint8_t> q(row_bytes(at, n));
    quantize_row(at, x, q.data(), n);
    std::vector<float> r(static_cast<size_t>(n));
    dequantize_row(at, q.data(), r.data(), n);
    return r;
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
                        const auto xa = act_view(t, x.t.row(i), n_in);
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

TEST(CpuOps, moe_matches_float64_and_handles_idle_experts) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    const int64_t N = 64, F = 32, E = 8, K = 2, T = 3;  // 3 tokens x 2 experts: at least 2 experts idle
    auto gate = make_weight(rng, DType::F32, N, F, E), up = make_weight(rng, DType::F32, N, F, E),
         down = make_weight(rng, DType::F32, F, N, E);
    MoeWeights m{&gate->w, &up->w, &down->w, nullptr, E, K, F};
    Host x(T, N), logits(T, E), out(T, N);
    auto xv = testing::random_floats(rng, size_t(T * N), -1, 1), lv = testing::random_floats(rng, size_t(T * E), -3, 3);
    std::copy(xv.begin(), xv.end(), x.data.begin());
    std::copy(lv.begin(), lv.end(), logits.data.begin());
    for (auto& be : backends()) {
        be->moe(x.t, logits.t, m, out.t);
        for (int64_t t = 0; t < T; ++t) {
            std::vector<double> p(static_cast<size_t>(E));
            double mx = -1e30, sum = 0;
            for (int64_t e = 0; e < E; ++e) mx = std::max(mx, double(logits.t.row(t)[e]));
            for (int64_t e = 0; e < E; ++e) sum += p[size_t(e)] = std::exp(double(logits.t.row(t)[e]) - mx);
            std::vector<int> idx(static_cast<size_t>(E));
            for (int e = 0; e < E; ++e) idx[size_t(e)] = e;
            std::sort(idx.begin(), idx.end(), [&](int a, int b) { return p[size_t(a)] > p[size_t(b)]; });
            const double wsum = (p[size_t(idx[0])] + p[size_t(idx[1])]) / sum;
            std::vector<double> ref(static_cast<size_t>(N), 0.0);
            for (int k = 0; k < K; ++k) {
                const int e = idx[size_t(k)];
                const double wk = p[size_t(e)] / sum / wsum;
                std::vector<double> h(static_cast<size_t>(F));
                for (int64_t f = 0; f < F; ++f) {
                    const auto g = dequant_row(gate->w, e * F + f), u = dequant_row(up->w, e * F + f);
                    double gs = 0, us = 0;
                    for (int64_t i = 0; i < N; ++i) {
                        gs += double(g[size_t(i)]) * x.t.row(t)[i];
                        us += double(u[size_t(i)]) * x.t.row(t)[i];
                    }
                    h[size_t(f)] = gs / (1 + std::exp(-gs)) * us;
                }
                for (int64_t o = 0; o < N; ++o) {
                    const auto d = dequant_row(down->w, e * N + o);
                    double s = 0;
                    for (int64_t f = 0; f < F; ++f) s += double(d[size_t(f)]) * h[size_t(f)];
                    ref[size_t(o)] += wk * s;
                }
            }
            for (int64_t o = 0; o < N; ++o)
                ASSERT_NEAR(out.t.row(t)[o], ref[size_t(o)], 1e-4 * (1 + std::fabs(ref[size_t(o)])))
                    << be->name() << " seed=" << seed;
        }
    }
}

// A KV cache of one sequence holding `depth` random earlier positions, and the float64 reference
// for queries appended after them.
struct AttentionCase {
    int64_t H, Hkv, D, depth, capacity;
    DType type;
    std::vector<float> past_k, past_v;
    std::vector<uint8_t> kbuf, vbuf;
    AttentionCase(std::mt19937& rng, int64_t h, int64_t hkv, int64_t d, int64_t dep, int64_t cap, DType t)
        : H(h), Hkv(hkv), D(d), depth(dep), capacity(cap), type(t) {
        const size_t es = t == DType::F32 ? 4 : 2;
        kbuf.resize(size_t(capacity * Hkv * D) * es);
        vbuf.resize(kbuf.size());
        past_k = testing::random_floats(rng, size_t(depth * Hkv * D), -1, 1);
        past_v = testing::random_floats(rng, size_t(depth * Hkv * D), -1, 1);
        for (size_t i = 0; i < past_k.size(); ++i) {
            if (t == DType::F32) {
                reinterpret_cast<float*>(kbuf.data())[i] = past_k[i];
                reinterpret_cast<float*>(vbuf.data())[i] = past_v[i];
            } else {
                reinterpret_cast<uint16_t*>(kbuf.data())[i] = f32_to_fp16(past_k[i]);
                reinterpret_cast<uint16_t*>(vbuf.data())[i] = f32_to_fp16(past_v[i]);
            }
        }
    }
    KvBlock block() { return KvBlock{kbuf.data(), vbuf.data(), type, type, capacity}; }
    float cached(float x) const { return type == DType::F16 ? fp16_to_f32(f32_to_fp16(x)) : x; }
    // Output of token t (appended after the cache, with new keys k / values v) for head h.
    std::vector<double> reference(const Tensor& q, const Tensor& k, const Tensor& v, int64_t t, int64_t h) const {
        const int64_t g = h / (H / Hkv), p_end = depth + t;
        auto at = [&](bool is_k, int64_t p, int64_t i) -> double {
            return cached(p < depth ? (is_k ? past_k : past_v)[size_t(p * Hkv * D + g * D + i)]
                                    : (is_k ? k : v).row(p - depth)[g * D + i]);
        };
        std::vector<double> s(size_t(p_end + 1));
        double mx = -1e300, sum = 0;
        for (int64_t p = 0; p <= p_end; ++p) {
            double d = 0;
            for (int64_t i = 0; i < D; ++i) d += double(cached(q.row(t)[h * D + i])) * at(true, p, i);
            mx = std::max(mx, s[size_t(p)] = d / std::sqrt(double(D)));
        }
        for (auto& x : s) sum += x = std::exp(x - mx);
        std::vector<double> o(size_t(D), 0.0);
        for (int64_t i = 0; i < D; ++i) {
            for (int64_t p = 0; p <= p_end; ++p) o[size_t(i)] += s[size_t(p)] * at(false, p, i);
            o[size_t(i)] /= sum;
        }
        return o;
    }
};

// Short and long caches (one chunk of keys, several, and enough new tokens that chunks run in
// order inside a task instead of as tasks of their own), f32 and f16 caches, GQA groups of 1, 2,
// 3 and 6 heads, head sizes that are and are not multiples of 16.
TEST(CpuOps, attention_matches_float64_for_f32_and_f16_caches) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    struct Shape {
        int64_t H, Hkv, D, depth, T;
    };
    const Shape shapes[] = {
        {4, 2, 40, 3, 5}, {6, 2, 24, 700, 3}, {12, 2, 32, 300, 2}, {4, 4, 16, 530, 41}, {2, 1, 8, 0, 9}};
    for (auto& be : backends()) {
        for (const Shape& sh : shapes) {
            for (DType ct : {DType::F32, DType::F16}) {
                AttentionCase c(rng, sh.H, sh.Hkv, sh.D, sh.depth, sh.depth + sh.T, ct);
                KvBlock b = c.block();
                Host q(sh.T, sh.H * sh.D), k(sh.T, sh.Hkv * sh.D), v(sh.T, sh.Hkv * sh.D), out(sh.T, sh.H * sh.D);
                fill_random(rng, {&q, &k, &v}, -1, 1);
                std::vector<SeqSpan> spans = {{0, 0, sh.T, sh.depth}};
                std::vector<KvBlock*> kv = {&b};
                be->attention(q.t, k.t, v.t, {sh.H, sh.Hkv, sh.D, 1.0f / std::sqrt(float(sh.D))}, spans, kv, out.t);
                be->reset_scratch();
                for (int64_t t = 0; t < sh.T; ++t)
                    for (int64_t h = 0; h < sh.H; ++h) {
                        const std::vector<double> ref = c.reference(q.t, k.t, v.t, t, h);
                        for (int64_t i = 0; i < sh.D; ++i)
                            ASSERT_NEAR(out.t.row(t)[h * sh.D + i], ref[size_t(i)], 1e-5)
                                << be->name() << " H=" << sh.H << " depth=" << sh.depth << " token " << t
                                << " seed=" << seed;
                    }
            }
        }
    }
}

// A token's attention output does not depend on its batch: tokens appended one at a time give the
// bits of the same tokens appended together (over caches of one and of several key chunks, where
// decoding splits a query's chunks across threads and a long batch merges them inside a task),
// and of the same tokens in a batch of two sequences.
TEST(CpuOps, attention_is_batch_invariant) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    const int64_t H = 8, Hkv = 2, D = 32, T = 37;
    for (auto& be : backends()) {
        for (int64_t depth : {5, 1200}) {
            AttentionCase c(rng, H, Hkv, D, depth, depth + T, DType::F16);
            Host q(T, H * D), k(T, Hkv * D), v(T, Hkv * D), batch(T, H * D), one(T, H * D);
            fill_random(rng, {&q, &k, &v}, -2, 2);
            const AttentionParams ap{H, Hkv, D, 1.0f / std::sqrt(float(D))};
            KvBlock b1 = c.block();
            std::vector<KvBlock*> kv1 = {&b1};
            be->attention(q.t, k.t, v.t, ap, {{0, 0, T, depth}}, kv1, batch.t);
            be->reset_scratch();
            AttentionCase c2 = c;  // a fresh copy of the cache, filled one token at a time
            KvBlock b2 = c2.block();
            std::vector<KvBlock*> kv2 = {&b2};
            for (int64_t t = 0; t < T; ++t) {
                auto row = [&](Host& h) { return Tensor{h.t.row(t), 1, h.t.cols, h.t.cols}; };
                be->attention(row(q), row(k), row(v), ap, {{0, 0, 1, depth + t}}, kv2, row(one));
                be->reset_scratch();
            }
            ASSERT_EQ(std::memcmp(batch.data.data(), one.data.data(), batch.data.size() * 4), 0)
                << be->name() << " depth=" << depth << " seed=" << seed;
            // the first 11 tokens again, beside a second sequence's 20 in one call
            AttentionCase c3 = c, c4(rng, H, Hkv, D, 900, 920, DType::F16);
            KvBlock b3 = c3.block(), b4 = c4.block();
            std::vector<KvBlock*> kv34 = {&b3, &b4};
            Host q2(31, H * D), k2(31, Hkv * D), v2(31, Hkv * D), out2(31, H * D);
            fill_random(rng, {&q2, &k2, &v2}, -2, 2);
            std::copy_n(q.data.data(), 11 * H * D, q2.data.data());
            std::copy_n(k.data.data(), 11 * Hkv * D, k2.data.data());
            std::copy_n(v.data.data(), 11 * Hkv * D, v2.data.data());
            be->attention(q2.t, k2.t, v2.t, ap, {{0, 0, 11, depth}, {1, 11, 20, 900}}, kv34, out2.t);
            be->reset_scratch();
            ASSERT_EQ(std::memcmp(out2.data.data(), batch.data.data(), size_t(11 * H * D) * 4), 0)
                << be->name() << " depth=" << depth << " seed=" << seed;
        }
    }
}

// Head sizes 16, 64 and 128 (the state rows held in registers) and 24 (the generic loop); 20 tokens
// cross the kernel's 16-token blocks. Checked against float64: every output, and the states of
// the last 3 tokens (kept in the ring for a rollback). Then the same tokens one call each (the
// state updated in place, as in decoding) must give the same bits.
TEST(CpuOps, gated_delta_net_matches_float64_recurrence) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    struct Shape {
        int64_t dk, dv;
    };
    for (const Shape sh : {Shape{16, 16}, Shape{24, 8}, Shape{64, 24}, Shape{128, 16}}) {
        const int64_t Hk = 2, Hv = 4, dk = sh.dk, dv = sh.dv, T = 20, key_dim = Hk * dk, C = 2 * key_dim + Hv * dv;
        const size_t head = size_t(dv * dk), slot = size_t(Hv) * head;
        for (auto& be : backends()) {
            auto dtb = make_weight(rng, DType::F32, Hv, 1), a = make_weight(rng, DType::F32, Hv, 1);
            float* av = reinterpret_cast<float*>(a->bytes.data());
            for (int64_t h = 0; h < Hv; ++h) av[h] = -std::fabs(av[h]) - 0.1f;  // ssm_a < 0
            Host u(T, C), beta(T, Hv), alpha(T, Hv), out(T, Hv * dv);
            fill_random(rng, {&u, &beta, &alpha}, -1, 1);
            std::vector<float> ssm(3 * slot), conv(size_t(3 * C * 3));
            const auto s0 = testing::random_floats(rng, slot, -0.5f, 0.5f);
            std::copy(s0.begin(), s0.end(), ssm.begin());  // slot 0: the incoming state
            RecurrentRing ring{conv.data(), ssm.data(), 3, 0};
            std::vector<RecurrentRing*> rings = {&ring};
            const GdnParams p{Hk, Hv, dk, dv, 4, 1e-6f};
            be->gated_delta_net(u.t, beta.t, alpha.t, dtb->w, a->w, p, {{0, 0, T, 0}}, rings, out.t);
            be->reset_scratch();
            // float64 reference of arch-qwen35.md §7.3-7.4
            std::vector<double> S(s0.begin(), s0.end());
            const float* dt = reinterpret_cast<const float*>(dtb->bytes.data());
            for (int64_t t = 0; t < T; ++t) {
                auto l2 = [&](const float* x) {
                    double n = 0;
                    for (int64_t i = 0; i < dk; ++i) n += double(x[i]) * x[i];
                    std::vector<double> r(static_cast<size_t>(dk));
                    for (int64_t i = 0; i < dk; ++i) r[size_t(i)] = x[i] / std::max(std::sqrt(n), 1e-6);
                    return r;
                };
                for (int64_t h = 0; h < Hv; ++h) {
                    const int64_t j = h % Hk;
                    const auto q = l2(u.t.row(t) + j * dk), k = l2(u.t.row(t) + key_dim + j * dk);
                    const float* v = u.t.row(t) + 2 * key_dim + h * dv;
                    const double b = 1 / (1 + std::exp(-double(beta.t.row(t)[h])));
                    const double x = double(alpha.t.row(t)[h]) + dt[h];
                    const double g = (x > 20 ? x : std::log1p(std::exp(x))) * av[h];
                    for (int64_t c = 0; c < dv; ++c) {
                        double* r = &S[size_t((h * dv + c) * dk)];
                        double pred = 0;
                        for (int64_t i = 0; i < dk; ++i) pred += (r[i] *= std::exp(g)) * k[size_t(i)];
                        const double delta = b * (v[c] - pred);
                        double o = 0;
                        for (int64_t i = 0; i < dk; ++i) o += (r[i] += k[size_t(i)] * delta) * q[size_t(i)];
                        ASSERT_NEAR(out.t.row(t)[h * dv + c], o / std::sqrt(double(dk)), 1e-4)
                            << be->name() << " dk=" << dk << " t=" << t << " seed=" << seed;
                    }
                }
                if (t >= T - 3) {  // token t's state is kept in slot (t + 1) % 3
                    const float* kept = ssm.data() + size_t((t + 1) % 3) * slot;
                    for (size_t i = 0; i < S.size(); ++i)
                        ASSERT_NEAR(kept[i], S[i], 1e-4) << be->name() << " dk=" << dk << " t=" << t;
                }
            }
            // one token per call, the state updated in place (a ring of one slot)
            std::vector<float> one_state(s0.begin(), s0.end()), one_conv(size_t(C * 3));
            RecurrentRing one{one_conv.data(), one_state.data(), 1, 0};
            std::vector<RecurrentRing*> ones = {&one};
            Host one_out(T, Hv * dv);
            for (int64_t t = 0; t < T; ++t) {
                auto row = [&](Host& h) { return Tensor{h.t.row(t), 1, h.t.cols, h.t.cols}; };
                be->gated_delta_net(row(u), row(beta), row(alpha), dtb->w, a->w, p, {{0, 0, 1, t}}, ones, row(one_out));
                be->reset_scratch();
            }
            ASSERT_EQ(std::memcmp(one_out.data.data(), out.data.data(), out.data.size() * 4), 0)
                << be->name() << " dk=" << dk << " seed=" << seed;
            ASSERT_EQ(std::memcmp(one_state.data(), ssm.data() + size_t(T % 3) * slot, slot * 4), 0)
                << be->name() << " dk=" << dk << " seed=" << seed;
        }
    }
}

}  // namespace
}  // namespace bigmoe
