// The KV cache types: each type's write (quantize_row) and read (dequantize_row) against a float64
// reading of the bytes written, decoded here from the block layouts alone, and the round trip
// within each type's error bound, on fresh random rows of several shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "core/fp16.h"
#include "quant/quants.h"
#include "testlib.h"

namespace bigmoe {
namespace {

const DType k_cache_types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0,  DType::Q4_0,
                               DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::IQ4_NL};

double half(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return double(fp16_to_f32(h));
}

// Element j of block b (32 values) of a row of type t, in float64, from the bytes alone.
double decode(DType t, const uint8_t* row, int64_t i) {
    if (t == DType::F32) {
        float f;
        std::memcpy(&f, row + 4 * i, 4);
        return f;
    }
    if (t == DType::F16) return half(row + 2 * i);
    if (t == DType::BF16) {
        uint32_t u = uint32_t(row[2 * i] | row[2 * i + 1] << 8) << 16;
        float f;
        std::memcpy(&f, &u, 4);
        return f;
    }
    const int64_t b = i / 32, j = i % 32;
    const size_t bb = traits(t).block_bytes;
    const uint8_t* blk = row + size_t(b) * bb;
    auto nibble = [&](const uint8_t* qs) { return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4; };
    auto fifth = [&](const uint8_t* qh) { return (qh[j / 8] >> (j % 8)) & 1; };
    switch (t) {
        case DType::Q8_0:
            return half(blk) * double(int8_t(blk[2 + j]));
        case DType::Q4_0:
            return half(blk) * double(nibble(blk + 2) - 8);
        case DType::Q4_1:
            return half(blk) * double(nibble(blk + 4)) + half(blk + 2);
        case DType::Q5_0:
            return half(blk) * double((nibble(blk + 6) | fifth(blk + 2) << 4) - 16);
        case DType::Q5_1:
            return half(blk) * double(nibble(blk + 8) | fifth(blk + 4) << 4) + half(blk + 2);
        case DType::IQ4_NL: {
            static const int grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
            return half(blk) * double(grid[nibble(blk + 2)]);
        }
        default:
            ADD_FAILURE() << "no decoder for " << traits(t).name;
            return 0;
    }
}

// The largest round-trip error a block of 32 values (amax: its largest magnitude, range:
// max - min) may have in type t. Half a step of the type's grid, plus the rounding of the
// block's fp16 scale and offset; Q4_0 / Q5_0 put the block's largest magnitude at the grid's
// end, so values of the other sign may be clamped by up to one step. IQ4_NL's scale minimizes
// the block's squared error, so its bound is on the block's RMS error (block_rms_bound); an
// element alone stays within a quarter of the block's largest magnitude.
double bound(DType t, double amax, double range, double x) {
    const double h = std::ldexp(1.0, -11);  // fp16 relative rounding
    // a scale below fp16's normal range is rounded to an absolute 2^-25 (at most 127 times)
    const double sub = 128 * std::ldexp(1.0, -25);
    switch (t) {
        case DType::F32:
            return 0;
        case DType::F16:
            return std::fabs(x) * h + std::ldexp(1.0, -25);
        case DType::BF16:
            return std::fabs(x) * std::ldexp(1.0, -8);
        case DType::Q8_0:
            return amax * (0.5 / 127 + 2 * h) + sub;
        case DType::Q4_0:
            return amax * (1.0 / 8 + 2 * h) + sub;
        case DType::Q5_0:
            return amax * (1.0 / 16 + 2 * h) + sub;
        case DType::Q4_1:
            return range * (0.5 / 15 + 2 * h) + amax * h + sub;
        case DType::Q5_1:
            return range * (0.5 / 31 + 2 * h) + amax * h + sub;
        case DType::IQ4_NL:
            return amax * 0.25 + sub;
        default:
            return 0;
    }
}

// IQ4_NL: mapping the largest magnitude to the grid's end (-127) puts every value within 14 of
// 127 units of a grid point (the widest gap is 24, the top end +113); the chosen scale has at most
// that candidate's squared error.
double block_rms_bound(double amax) {
    return amax * (14.0 / 127 + std::ldexp(1.0, -10)) + 128 * std::ldexp(1.0, -25);
}

// Rows of 256 values in several shapes: normal, normal with outliers, a zero block, a constant
// block, all of one sign, tiny and large magnitudes.
std::vector<std::vector<float>> rows(std::mt19937& rng) {
    std::normal_distribution<float> nd(0, 1);
    std::vector<std::vector<float>> out;
    for (int shape = 0; shape < 7; ++shape)
        for (int rep = 0; rep < 8; ++rep) {
            std::vector<float> r(256);
            for (float& v : r) v = nd(rng);
            if (shape == 1)
                for (int k = 0; k < 4; ++k) r[rng() % 256] *= 20;
            if (shape == 2) std::fill(r.begin() + 32, r.begin() + 64, 0.0f);
            if (shape == 3) std::fill(r.begin(), r.begin() + 32, 0.75f);
            if (shape == 4)
                for (float& v : r) v = std::fabs(v) + 0.5f;
            if (shape == 5)
                for (float& v : r) v *= 1e-3f;
            if (shape == 6)
                for (float& v : r) v *= 300.0f;
            out.push_back(r);
        }
    return out;
}

TEST(KvCacheTypes, write_and_read_match_float64_within_each_types_bound) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    const auto data = rows(rng);
    for (DType t : k_cache_types) {
        ASSERT_TRUE(is_cache_type(t));
        double err2 = 0, sig2 = 0;
        for (const auto& x : data) {
            std::vector<uint8_t> bytes(row_bytes(t, 256));
            quantize_row(t, x.data(), bytes.data(), 256);
            std::vector<float> y(256);
            dequantize_row(t, bytes.data(), y.data(), 256);
            for (int64_t b = 0; b < 8; ++b) {
                double amax = 0, lo = x[size_t(b * 32)], hi = lo;
                for (int j = 0; j < 32; ++j) {
                    const double v = x[size_t(b * 32 + j)];
                    amax = std::max(amax, std::fabs(v));
                    lo = std::min(lo, v);
                    hi = std::max(hi, v);
                }
                double block_err2 = 0;
                for (int j = 0; j < 32; ++j) {
                    const int64_t i = b * 32 + j;
                    const double want = decode(t, bytes.data(), i);
                    // the read: the stored value, to f32 rounding
                    ASSERT_NEAR(double(y[size_t(i)]), want, 1e-7 * std::max(1.0, std::fabs(want)))
                        << traits(t).name << " element " << i << " seed " << seed;
                    // the write: within the type's bound of the value written
                    ASSERT_LE(std::fabs(want - x[size_t(i)]), bound(t, amax, hi - lo, x[size_t(i)]) * (1 + 1e-9))
                        << traits(t).name << " element " << i << " of " << x[size_t(i)] << " seed " << seed;
                    err2 += (want - x[size_t(i)]) * (want - x[size_t(i)]);
                    block_err2 += (want - x[size_t(i)]) * (want - x[size_t(i)]);
                    sig2 += double(x[size_t(i)]) * x[size_t(i)];
                }
                if (t == DType::IQ4_NL) {
                    ASSERT_LE(std::sqrt(block_err2 / 32), block_rms_bound(amax)) << "block " << b << " seed " << seed;
                }
            }
            // a zero block reads back as zeros, a constant block as its value (to fp16)
            std::vector<float> z(32, 0.0f);
            std::vector<uint8_t> zb(row_bytes(t, 32));
            quantize_row(t, z.data(), zb.data(), 32);
            for (int j = 0; j < 32; ++j) ASSERT_EQ(decode(t, zb.data(), j), 0.0) << traits(t).name;
        }
        std::printf("%-7s relative RMS error %.2e\n", traits(t).name, std::sqrt(err2 / sig2));
    }
}

// More bits, less error: on normal rows the relative RMS error falls in the order of the
// types' bits per value, and IQ4_NL's non-uniform grid beats Q4_0's uniform one.
TEST(KvCacheTypes, error_falls_with_bits) {
    std::mt19937 rng(testing::fresh_seed());
    std::normal_distribution<float> nd(0, 1);
    std::vector<float> x(32 * 512);
    for (float& v : x) v = nd(rng);
    auto rms = [&](DType t) {
        std::vector<uint8_t> b(row_bytes(t, int64_t(x.size())));
        std::vector<float> y(x.size());
        quantize_row(t, x.data(), b.data(), int64_t(x.size()));
        dequantize_row(t, b.data(), y.data(), int64_t(y.size()));
        double e = 0, s = 0;
        for (size_t i = 0; i < x.size(); ++i) {
            e += double(y[i] - x[i]) * (y[i] - x[i]);
            s += double(x[i]) * x[i];
        }
        return std::sqrt(e / s);
    };
    const double q8 = rms(DType::Q8_0), q5_1 = rms(DType::Q5_1), q5_0 = rms(DType::Q5_0), q4_1 = rms(DType::Q4_1),
                 q4_0 = rms(DType::Q4_0), iq4 = rms(DType::IQ4_NL);
    EXPECT_LT(rms(DType::F16), q8);
    EXPECT_LT(q8, 0.25 * q5_1);
    EXPECT_LT(q5_1, 0.7 * q4_1);
    EXPECT_LT(q5_0, 0.7 * q4_0);
    EXPECT_LT(iq4, q4_0);
}

}  // namespace
}  // namespace bigmoe
