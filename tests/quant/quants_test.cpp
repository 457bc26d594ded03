// Dequantizers against the worked examples of spec/quants.md, activation quantizers, and every
// registered dot-product kernel against a float64 reference on fresh random inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "backend/cpu/kernels.h"
#include "backend/cpu/repack.h"
#include "core/fp16.h"
#include "quant/quants.h"
#include "testlib.h"

namespace bigmoe {
namespace {

std::vector<uint8_t> hex(const char* s) {
    std::vector<uint8_t> r;
    for (const char* p = s; *p;) {
        if (*p == ' ') {
            ++p;
            continue;
        }
        r.push_back(uint8_t(std::stoi(std::string(p, 2), nullptr, 16)));
        p += 2;
    }
    return r;
}

TEST(Fp16, examples) {
    EXPECT_EQ(fp16_to_f32(0x3C00), 1.0f);
    EXPECT_EQ(fp16_to_f32(0xC000), -2.0f);
    EXPECT_EQ(fp16_to_f32(0x7BFF), 65504.0f);
    EXPECT_EQ(fp16_to_f32(0x3555), 0.333251953125f);
    EXPECT_EQ(fp16_to_f32(0x0001), 5.9604644775390625e-8f);
    EXPECT_TRUE(std::signbit(fp16_to_f32(0x8000)));
    EXPECT_TRUE(std::isinf(fp16_to_f32(0x7C00)));
    EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
    EXPECT_EQ(bf16_to_f32(0xBFC0), -1.5f);
    EXPECT_EQ(bf16_to_f32(0x4049), 3.140625f);
    EXPECT_EQ(f32_to_bf16(3.14159274f), 0x4049);
}

TEST(Fp16, round_trip_every_half) {
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const float f = fp16_to_f32(uint16_t(h));
        if (std::isnan(f)) continue;
        EXPECT_EQ(f32_to_fp16(f), h) << h;
    }
}

TEST(Fp16, rounds_to_nearest_even) {
    // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties go to the even mantissa (1.0).
    EXPECT_EQ(f32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
    EXPECT_EQ(f32_to_fp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
    EXPECT_EQ(f32_to_fp16(70000.0f), 0x7C00);
    std::mt19937 rng(testing::fresh_seed());
    for (float x : testing::random_floats(rng, 10000, -70000, 70000)) {
        const float r = fp16_to_f32(f32_to_fp16(x));
        // the result is one of the two neighbouring halves and no farther than the other one
        const uint16_t h = f32_to_fp16(x);
        if (std::isinf(r)) continue;
        const float up = fp16_to_f32(uint16_t(h + 1)), down = fp16_to_f32(uint16_t(h - 1));
        EXPECT_LE(std::fabs(r - x), std::fabs(up - x) + 1e-30f);
        EXPECT_LE(std::fabs(r - x), std::fabs(down - x) + 1e-30f);
    }
}

TEST(Quant, q4_0_worked_example) {
    auto b = hex("00 38 F0 E1 D2 C3 B4 A5 96 87 78 69 5A 4B 3C 2D 1E 0F");
    float y[32];
    dequantize_row(DType::Q4_0, b.data(), y, 32);
    for (int j = 0; j < 16; ++j) {
        EXPECT_EQ(y[j], -4.0f + 0.5f * float(j));
        EXPECT_EQ(y[16 + j], 3.5f - 0.5f * float(j));
    }
}

TEST(Quant, q8_0_worked_example) {
    std::vector<uint8_t> b = {0x00, 0x34};
    for (int j = 0; j < 32; ++j) b.push_back(uint8_t(j - 16));
    float y[32];
    dequantize_row(DType::Q8_0, b.data(), y, 32);
    EXPECT_EQ(y[0], -4.0f);
    EXPECT_EQ(y[1], -3.75f);
    EXPECT_EQ(y[3], -3.25f);
    EXPECT_EQ(y[30], 3.5f);
    EXPECT_EQ(y[31], 3.75f);
}

TEST(Quant, k_scale_packing_example) {
    auto q = hex("41 82 C3 C4 40 85 CA CF 41 81 02 FF");
    const int sc[8] = {1, 2, 3, 4, 17, 33, 50, 63}, m[8] = {0, 5, 10, 15, 20, 40, 48, 63};
    for (int j = 0; j < 8; ++j) {
        uint8_t a, b;
        get_scale_min_k4(j, q.data(), &a, &b);
        EXPECT_EQ(a, sc[j]) << j;
        EXPECT_EQ(b, m[j]) << j;
    }
}

std::vector<uint8_t> k_header() {
    auto h = hex("00 3C 00 38");
    auto s = hex("41 82 C3 C4 40 85 CA CF 41 81 02 FF");
    h.insert(h.end(), s.begin(), s.end());
    return h;
}

TEST(Quant, q4_k_worked_example) {
    auto b = k_header();
    for (int i = 0; i < 128; ++i) b.push_back(uint8_t((i % 16) | (((7 * i) % 16) << 4)));
    ASSERT_EQ(b.size(), 144u);
    float y[256];
    dequantize_row(DType::Q4_K, b.data(), y, 256);
    const float want[8][4] = {
        {0, 1, 2, 3},     {-2.5, 11.5, 25.5, 7.5}, {-5, -2, 1, 4},     {-7.5, 20.5, 48.5, 12.5},
        {-10, 7, 24, 41}, {-20, 211, 442, 145},    {-24, 26, 76, 126}, {-31.5, 409.5, 850.5, 283.5}};
    for (int r = 0; r < 8; ++r)
        for (int k = 0; k < 4; ++k) EXPECT_EQ(y[32 * r + k], want[r][k]) << r << "," << k;
    double sum = 0;
    for (float v : y) sum += v;
    EXPECT_EQ(sum, 38304.0);
}

TEST(Quant, q5_k_worked_example) {
    auto b = k_header();
    for (int l = 0; l < 32; ++l) b.push_back(uint8_t((37 * l) & 0xFF));
    for (int i = 0; i < 128; ++i) b.push_back(uint8_t((i % 16) | (((7 * i) % 16) << 4)));
    ASSERT_EQ(b.size(), 176u);
    float y[256];
    dequantize_row(DType::Q5_K, b.data(), y, 256);
    const float want[8][4] = {
        {0, 17, 2, 19},   {-2.5, 11.5, 57.5, 39.5}, {-5, 46, 1, 52},     {-7.5, 20.5, 112.5, 76.5},
        {-10, 7, 24, 41}, {-20, 739, 442, 673},     {-24, 26, 876, 926}, {-31.5, 409.5, 850.5, 283.5}};
    for (int r = 0; r < 8; ++r)
        for (int k = 0; k < 4; ++k) EXPECT_EQ(y[32 * r + k], want[r][k]) << r << "," << k;
    double sum = 0;
    for (float v : y) sum += v;
    EXPECT_EQ(sum, 77760.0);
}

TEST(Quant, q6_k_worked_example) {
    std::vector<uint8_t> b;
    for (int i = 0; i < 128; ++i) b.push_back(uint8_t((29 * i + 3) & 0xFF));
    for (int i = 0; i < 64; ++i) b.push_back(uint8_t((53 * i + 7) & 0xFF));
    auto sc = hex("01 FE 03 FC 05 FA 07 F8 09 F6 0B F4 0D F2 0F F0");
    b.insert(b.end(), sc.begin(), sc.end());
    b.push_back(0x00);
    b.push_back(0x34);
    ASSERT_EQ(b.size(), 210u);
    float y[256];
    dequantize_row(DType::Q6_K, b.data(), y, 256);
    const struct {
        int idx;
        float v[3];
    } want[] = {{0, {4.75, -8.0, -0.75}},      {16, {-9.5, 16.0, 1.5}},      {32, {-9.75, 12.0, -14.25}},
                {64, {-40.0, 22.5, 23.75}},    {96, {-38.5, -35.0, -5.25}},  {128, {42.75, -72.0, -6.75}},
                {160, {-35.75, 44.0, -52.25}}, {192, {13.0, -32.5, -29.25}}, {240, {-108.0, 76.0, 8.0}}};
    for (const auto& w : want)
        for (int k = 0; k < 3; ++k) EXPECT_EQ(y[w.idx + k], w.v[k]) << w.idx + k;
    double sum = 0;
    for (float v : y) sum += v;
    EXPECT_EQ(sum, -1.0);
}

TEST(Quant, q8_k_worked_examples) {
    std::vector<uint8_t> b = {0x00, 0x00, 0x00, 0x3F, 0xFE, 0x03, 0x7F, 0x81};
    b.resize(292, 0);
    float y[256];
    dequantize_row(DType::Q8_K, b.data(), y, 256);
    EXPECT_EQ(y[0], -1.0f);
    EXPECT_EQ(y[1], 1.5f);
    EXPECT_EQ(y[2], 63.5f);
    EXPECT_EQ(y[3], -63.5f);

    float x[256];
    for (int j = 0; j < 256; ++j) x[j] = float(j - 128);
    BlockQ8_K q;
    quantize_row_q8_k(x, &q, 256);
    uint32_t dbits;
    std::memcpy(&dbits, &q.d, 4);
    EXPECT_EQ(dbits, 0x3F810204u);
    EXPECT_EQ(q.qs[0], -127);
    EXPECT_EQ(q.qs[3], -124);
    EXPECT_EQ(q.qs[64], -64);
    EXPECT_EQ(q.qs[128], 0);
    EXPECT_EQ(q.qs[192], 64);
    EXPECT_EQ(q.qs[255], 126);
    const int bs[16] = {-1912, -1656, -1400, -1144, -904, -648, -392, -136, 120, 376, 632, 888, 1129, 1384, 1640, 1896};
    for (int g = 0; g < 16; ++g) EXPECT_EQ(q.bsums[g], bs[g]) << g;
}

TEST(Quant, q8_0_activation_example) {
    float x[32] = {127, -127, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f, 3.49f};
    BlockQ8_0 q;
    quantize_row_q8_0(x, &q, 32);
    EXPECT_EQ(fp16_to_f32(q.d), 1.0f);
    EXPECT_EQ(q.qs[0], 127);
    EXPECT_EQ(q.qs[1], -127);
    // ties: half-to-even (x86 SIMD reading) or half-away (portable reading) are both conformant
    EXPECT_TRUE(q.qs[2] == 2 || q.qs[2] == 3);
    EXPECT_TRUE(q.qs[4] == 0 || q.qs[4] == 1);
    EXPECT_EQ(q.qs[6], 2);
    EXPECT_EQ(q.qs[7], 3);
}

TEST(Quant, q4_0_storage_example) {
    float x[32] = {};
    for (int j = 0; j < 16; ++j) x[j] = float(j - 8);
    BlockQ4_0 q;
    quantize_row(DType::Q4_0, x, &q, 32);
    EXPECT_EQ(q.d, 0x3C00);
    for (int j = 0; j < 16; ++j) EXPECT_EQ(q.qs[j], 0x80 | j);
    float y[32];
    dequantize_row(DType::Q4_0, &q, y, 32);
    for (int j = 0; j < 32; ++j) EXPECT_EQ(y[j], x[j]);
}

// Weight quantizers (used by synth) keep the round-trip error within each type's resolution.
TEST(Quant, weight_quantizers_round_trip) {
    std::mt19937 rng(testing::fresh_seed());
    const struct {
        DType t;
        double tol;
    } cases[] = {{DType::Q4_0, 0.15}, {DType::Q8_0, 0.01}, {DType::Q4_K, 0.12}, {DType::Q5_K, 0.06},
                 {DType::Q6_K, 0.04}, {DType::F16, 1e-3},  {DType::BF16, 8e-3}};
    for (const auto& c : cases) {
        const int64_t n = 1024;
        auto x = testing::random_floats(rng, size_t(n), -1, 1);
        std::vector<uint8_t> q(row_bytes(c.t, n));
        quantize_row(c.t, x.data(), q.data(), n);
        std::vector<float> y(static_cast<size_t>(n));
        dequantize_row(c.t, q.data(), y.data(), n);
        auto rel = testing::row_rel_errors(y.data(), x.data(), 1, size_t(n));
        EXPECT_LT(rel[0], c.tol) << traits(c.t).name;
    }
}

// Every kernel table entry vs float64 dot(dequant(w), dequant(quant(x))) on fresh inputs,
// including rows of a single block.
TEST(Kernels, vec_dot_matches_float64_reference) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    const DType types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0,
                           DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K};
    for (const cpu::Kernels* k : cpu::available_kernels()) {
        for (DType t : types) {
            for (int64_t n : {traits(t).block_elems == 1 ? int64_t(1) : traits(t).block_elems, int64_t(256),
                              int64_t(2304), traits(t).block_elems == 1 ? int64_t(77) : int64_t(768)}) {
                auto w = testing::random_floats(rng, size_t(n), -1, 1);
                auto x = testing::random_floats(rng, size_t(n), -3, 3);
                std::vector<uint8_t> wq(row_bytes(t, n)), xq(row_bytes(activation_type(t), n));
                quantize_row(t, w.data(), wq.data(), n);
                k->quantize[int(activation_type(t))](x.data(), xq.data(), n);
                std::vector<float> wd(static_cast<size_t>(n)), xd(static_cast<size_t>(n));
                dequantize_row(t, wq.data(), wd.data(), n);
                dequantize_row(activation_type(t), xq.data(), xd.data(), n);
                double ref = 0, mag = 0;
                for (int64_t i = 0; i < n; ++i) {
                    ref += double(wd[size_t(i)]) * double(xd[size_t(i)]);
                    mag += std::fabs(double(wd[size_t(i)]) * double(xd[size_t(i)]));
                }
                const float got = k->vec_dot[int(t)](wq.data(), xq.data(), n);
                ASSERT_TRUE(std::isfinite(got));
                EXPECT_NEAR(got, ref, 1e-5 * mag + 1e-6)
                    << k->isa << " " << traits(t).name << " n=" << n << " seed=" << seed;
            }
        }
    }
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// A tile of 1..4 tokens must give, bit for bit, what single dot products give (batch invariance).
TEST(Kernels, tiles_equal_single_dot_products_bitwise) {
    std::mt19937 rng(testing::fresh_seed());
    for (const cpu::Kernels* k : cpu::available_kernels()) {
        for (int id = 0; id < 32; ++id) {
            for (int nt = 1; nt <= 4; ++nt) {
                if (!k->tile[id][nt - 1]) continue;
                const DType t = DType(id);
                const int64_t n = traits(t).block_elems == 1 ? 300 : 4 * traits(t).block_elems;
                auto w = testing::random_floats(rng, size_t(n), -1, 1);
                std::vector<uint8_t> wq(row_bytes(t, n));
                quantize_row(t, w.data(), wq.data(), n);
                std::vector<std::vector<uint8_t>> xq(4, std::vector<uint8_t>(row_bytes(activation_type(t), n)));
                const void* rows[4];
                for (int r = 0; r < nt; ++r) {
                    auto x = testing::random_floats(rng, size_t(n), -2, 2);
                    k->quantize[int(activation_type(t))](x.data(), xq[size_t(r)].data(), n);
                    rows[r] = xq[size_t(r)].data();
                }
                float tile[4];
                k->tile[id][nt - 1](wq.data(), rows, n, tile);
                for (int r = 0; r < nt; ++r) {
                    const float one = k->vec_dot[id](wq.data(), rows[r], n);
                    EXPECT_EQ(std::memcmp(&one, &tile[r], 4), 0)
                        << k->isa << " " << traits(t).name << " tile " << nt << " row " << r;
                }
            }
        }
    }
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// Activation quantizers of every kernel table produce the reference's bytes exactly.
TEST(Kernels, activation_quantizers_match_reference_bytes) {
    std::mt19937 rng(testing::fresh_seed());
    for (const cpu::Kernels* k : cpu::available_kernels()) {
        for (DType t : {DType::Q8_K, DType::Q8_0, DType::F16, DType::BF16}) {
            for (int trial = 0; trial < 20; ++trial) {
                const int64_t n = 1024;
                auto x = testing::random_floats(rng, size_t(n), -5, 5);
                if (trial == 1) std::fill(x.begin(), x.begin() + 256, 0.0f);  // an all-zero block
                if (trial == 2) {  // ties for the largest magnitude, opposite signs
                    x[3] = -9.0f;
                    x[7] = 9.0f;
                }
                if (trial == 3) {  // the same, in different 8-value groups, the first one late in its group
                    x[256 + 15] = 9.0f;
                    x[256 + 250] = -9.0f;
                }
                std::vector<uint8_t> a(row_bytes(t, n)), b(row_bytes(t, n));
                quantize_row(t, x.data(), a.data(), n);
                k->quantize[int(t)](x.data(), b.data(), n);
                EXPECT_EQ(a, b) << k->isa << " " << traits(t).name << " trial " << trial;
            }
        }
    }
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// Many-token row products give, bit for bit, the single-token dot products.
TEST(Kernels, gemm_rows_equal_single_dot_products_bitwise) {
    std::mt19937 rng(testing::fresh_seed());
    for (const cpu::Kernels* k : cpu::available_kernels()) {
        for (int id = 0; id < 32; ++id) {
            if (!k->gemm_row[id]) continue;
            const DType t = DType(id);
            for (int64_t n : {int64_t(256), int64_t(1280)}) {
                auto w = testing::random_floats(rng, size_t(n), -1, 1);
                std::vector<uint8_t> wq(row_bytes(t, n));
                quantize_row(t, w.data(), wq.data(), n);
                const int64_t n_tok = 13;
                const size_t arb = row_bytes(activation_type(t), n);
                std::vector<uint8_t> act(arb * size_t(n_tok));
                for (int64_t r = 0; r < n_tok; ++r) {
                    auto x = testing::random_floats(rng, size_t(n), -2, 2);
                    k->quantize[int(activation_type(t))](x.data(), act.data() + size_t(r) * arb, n);
                }
                std::vector<float> out(size_t(n_tok * 3), -1.0f);
                k->gemm_row[id](wq.data(), act.data(), arb, n_tok, n, out.data(), 3);
                for (int64_t r = 0; r < n_tok; ++r) {
                    const float one = k->vec_dot[id](wq.data(), act.data() + size_t(r) * arb, n);
                    EXPECT_EQ(std::memcmp(&one, &out[size_t(r * 3)], 4), 0) << k->isa << " " << traits(t).name;
                    EXPECT_EQ(out[size_t(r * 3 + 1)], -1.0f);  // guard: only the strided outputs are written
                }
            }
        }
    }
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// Packed rows (backend/cpu/repack.h): packing and unpacking give back the file's bytes; every
// packed kernel matches float64 per row and token, and a token's result is bit-identical
// whatever tile it shares (1..4 tokens) — the batch invariance the engine rests on.
TEST(Kernels, packed_rows_round_trip_and_match_float64_bitwise_across_tiles) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    for (DType t : {DType::Q4_K, DType::Q6_K, DType::Q8_0}) {
        for (int64_t n : {256, 768, 2048}) {
            ASSERT_TRUE(cpu::packable(t, n));
            const size_t rb = row_bytes(t, n);
            std::vector<uint8_t> wq(8 * rb), packed(8 * rb), back(rb);
            std::vector<std::vector<float>> wd(8, std::vector<float>(size_t(n)));
            for (int r = 0; r < 8; ++r) {
                // a different spread per row, so rows cannot be swapped unnoticed
                auto w = testing::random_floats(rng, size_t(n), -1.0f - float(r), 1.0f + 0.5f * float(r));
                quantize_row(t, w.data(), wq.data() + size_t(r) * rb, n);
                dequantize_row(t, wq.data() + size_t(r) * rb, wd[size_t(r)].data(), n);
            }
            cpu::pack_rows(t, wq.data(), rb, n, packed.data());
            for (int r = 0; r < 8; ++r) {
                cpu::unpack_row(t, packed.data(), n, r, back.data());
                ASSERT_EQ(std::memcmp(back.data(), wq.data() + size_t(r) * rb, rb), 0)
                    << traits(t).name << " n=" << n << " row " << r;
            }
            const DType at = activation_type(t);
            std::vector<std::vector<uint8_t>> xq(4, std::vector<uint8_t>(row_bytes(at, n)));
            std::vector<std::vector<float>> xd(4, std::vector<float>(size_t(n)));
            const void* rows[4];
            for (int j = 0; j < 4; ++j) {
                auto x = testing::random_floats(rng, size_t(n), -3, 3);
                quantize_row(at, x.data(), xq[size_t(j)].data(), n);
                dequantize_row(at, xq[size_t(j)].data(), xd[size_t(j)].data(), n);
                rows[j] = xq[size_t(j)].data();
            }
            for (const cpu::Kernels* k : cpu::available_kernels()) {
                if (!k->packed_tile[int(t)][0]) continue;
                float single[4][8];
                for (int j = 0; j < 4; ++j) k->packed_tile[int(t)][0](packed.data(), &rows[j], n, single[j]);
                for (int j = 0; j < 4; ++j)
                    for (int r = 0; r < 8; ++r) {
                        double ref = 0, mag = 0;
                        for (int64_t i = 0; i < n; ++i) {
                            const double p = double(wd[size_t(r)][size_t(i)]) * double(xd[size_t(j)][size_t(i)]);
                            ref += p;
                            mag += std::fabs(p);
                        }
                        ASSERT_NEAR(single[j][r], ref, 1e-5 * mag + 1e-6)
                            << k->isa << " " << traits(t).name << " n=" << n << " row " << r << " seed=" << seed;
                    }
                for (int nt = 2; nt <= 4; ++nt) {
                    float tile[4 * 8];
                    k->packed_tile[int(t)][nt - 1](packed.data(), rows, n, tile);
                    for (int j = 0; j < nt; ++j)
                        EXPECT_EQ(std::memcmp(single[j], tile + 8 * j, sizeof single[j]), 0)
                            << k->isa << " " << traits(t).name << " tile " << nt << " token " << j;
                }
            }
        }
    }
}

// Tiles over two packed groups at once (512-bit tables): every (row, token) bit-identical to the
// 8-row tile of its group, for 1-4 tokens, with the groups adjacent or further apart.
TEST(Kernels, packed_tile16_matches_packed_tile_bitwise) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    bool ran = false;
    for (const cpu::Kernels* k : cpu::available_kernels())
        for (DType t : {DType::Q4_K, DType::Q6_K}) {
            if (!k->packed_tile16[int(t)][0]) continue;
            ran = true;
            for (int64_t n : {256, 768, 2816}) {
                const size_t rb = row_bytes(t, n);
                for (size_t gap : {size_t(0), 3 * rb}) {
                    const size_t group_bytes = 8 * rb + gap;
                    std::vector<uint8_t> wq(16 * rb), packed(group_bytes + 8 * rb);
                    for (int64_t r = 0; r < 16; ++r) {
                        auto w =
                            testing::random_floats(rng, size_t(n), -1.0f - 0.2f * float(r), 1.0f + 0.1f * float(r));
                        quantize_row(t, w.data(), wq.data() + size_t(r) * rb, n);
                    }
                    cpu::pack_rows(t, wq.data(), rb, n, packed.data());
                    cpu::pack_rows(t, wq.data() + 8 * rb, rb, n, packed.data() + group_bytes);
                    const DType at = activation_type(t);
                    std::vector<std::vector<uint8_t>> xq(4, std::vector<uint8_t>(row_bytes(at, n)));
                    const void* rows[4];
                    for (int j = 0; j < 4; ++j) {
                        auto x = testing::random_floats(rng, size_t(n), -3, 3);
                        quantize_row(at, x.data(), xq[size_t(j)].data(), n);
                        rows[j] = xq[size_t(j)].data();
                    }
                    for (int nt = 1; nt <= 4; ++nt) {
                        float got[4 * 16], want[4 * 8];
                        k->packed_tile16[int(t)][nt - 1](packed.data(), group_bytes, rows, n, got);
                        for (int g = 0; g < 2; ++g) {
                            k->packed_tile[int(t)][nt - 1](packed.data() + size_t(g) * group_bytes, rows, n, want);
                            for (int j = 0; j < nt; ++j)
                                ASSERT_EQ(std::memcmp(want + 8 * j, got + 16 * j + 8 * g, sizeof(float) * 8), 0)
                                    << k->isa << " " << traits(t).name << " n=" << n << " gap " << gap << " tile " << nt
                                    << " token " << j << " group " << g << " seed=" << seed;
                        }
                    }
                }
            }
        }
    if (!ran) GTEST_SKIP() << "no table with two-group tiles on this machine";
}

// The many-token packed products (decoded groups; AMX where the machine has it): 1, 3 and 9 packed groups (a lone
// group at the end of a 16-row block; more blocks than a call takes at once) against token counts
// around the 16-token tile, every token and row bit-identical to the 1-token packed tile (itself
// matched to float64 above).
TEST(Kernels, packed_gemm_matches_packed_tile_bitwise) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    bool ran = false;
    for (const cpu::Kernels* k : cpu::available_kernels())
        for (DType t : {DType::Q4_K, DType::Q6_K, DType::Q8_0}) {
            if (!k->packed_gemm[int(t)]) continue;
            ran = true;
            for (int64_t n : {256, 768, 2816}) {  // 2816: more super-blocks than a decoded run
                const size_t rb = row_bytes(t, n);
                const int64_t groups = 9, rows = 8 * groups;
                std::vector<uint8_t> wq(size_t(rows) * rb), packed(size_t(rows) * rb);
                for (int64_t r = 0; r < rows; ++r) {
                    auto w = testing::random_floats(rng, size_t(n), -1.0f - 0.1f * float(r), 1.0f + 0.2f * float(r));
                    quantize_row(t, w.data(), wq.data() + size_t(r) * rb, n);
                }
                for (int64_t g = 0; g < groups; ++g)
                    cpu::pack_rows(t, wq.data() + size_t(8 * g) * rb, rb, n, packed.data() + size_t(8 * g) * rb);
                const DType at = activation_type(t);
                const size_t arb = row_bytes(at, n);
                for (int64_t n_tok : {1, 7, 16, 17, 40}) {
                    std::vector<uint8_t> xq(size_t(n_tok) * arb);
                    for (int64_t j = 0; j < n_tok; ++j) {
                        auto x = testing::random_floats(rng, size_t(n), -3, 3);
                        quantize_row(at, x.data(), xq.data() + size_t(j) * arb, n);
                    }
                    for (int64_t ng : {int64_t(1), int64_t(3), groups}) {
                        const int64_t stride = 8 * ng + 3;
                        std::vector<float> got(size_t(n_tok * stride), -7.0f);
                        k->packed_gemm[int(t)](packed.data(), 8 * rb, ng, xq.data(), arb, n_tok, n, got.data(), stride);
                        for (int64_t j = 0; j < n_tok; ++j) {
                            const void* row = xq.data() + size_t(j) * arb;
                            for (int64_t g = 0; g < ng; ++g) {
                                float want[8];
                                k->packed_tile[int(t)][0](packed.data() + size_t(8 * g) * rb, &row, n, want);
                                ASSERT_EQ(std::memcmp(want, &got[size_t(j * stride + 8 * g)], sizeof want), 0)
                                    << k->isa << " " << traits(t).name << " n=" << n << " tokens " << n_tok << " token "
                                    << j << " group " << g << " seed=" << seed;
                            }
                            for (int64_t c = 8 * ng; c < stride; ++c) ASSERT_EQ(got[size_t(j * stride + c)], -7.0f);
                        }
                    }
                }
            }
        }
    if (!ran) GTEST_SKIP() << "no table with many-token packed products on this machine";
}

}  // namespace
}  // namespace bigmoe
