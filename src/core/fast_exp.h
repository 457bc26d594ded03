// One exp approximation for element-wise math where std::exp's cost shows (SiLU in the CPU
// kernels, the draft's softmax mass in speculative decoding): 2^n times a degree-7 Taylor
// polynomial of r = x - n ln 2 (|r| <= ln(2) / 2; ln 2 split in two so that r is exact to float
// rounding), scaled by 2^(n-1) and then 2 so that n = 128 stays finite. Within 2 ulp for x in
// [-86, 88.7], infinite above, 4.5e-38 below. Vector versions use these constants and steps lane
// by lane (with fused multiply-adds where `exp` below has std::fma, they give its bits).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace bigmoe::fast_exp {

inline constexpr float k_min = -86.0f, k_max = 89.0f;
inline constexpr float k_log2e = 1.44269504088896341f;
inline constexpr float k_ln2_hi = 0.693145751953125f, k_ln2_lo = 1.428606765330187e-06f;  // hi + lo = ln 2
// The polynomial in r for Horner's rule, highest degree first: 1/7!, 1/6!, ..., 1/2, 1, 1.
inline constexpr float k_poly[8] = {1.98412698e-4f, 1.38888889e-3f, 8.33333333e-3f, 4.16666667e-2f,
                                    1.66666667e-1f, 0.5f,           1.0f,           1.0f};
// The exponent bits of 2^(n - 1) for an integer n in [-124, 128].
inline constexpr int32_t k_bias = 126;

inline float exp(float x) {
    x = std::fmin(std::fmax(x, k_min), k_max);
    const float n = std::nearbyint(x * k_log2e);
    const float r = std::fma(n, -k_ln2_lo, std::fma(n, -k_ln2_hi, x));
    float p = k_poly[0];
    for (int i = 1; i < 8; ++i) p = std::fma(p, r, k_poly[i]);
    return p * std::bit_cast<float>(uint32_t(int32_t(n) + k_bias) << 23) * 2.0f;
}

}  // namespace bigmoe::fast_exp
