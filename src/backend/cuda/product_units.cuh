// Device code shared by the product kernels (products.cu: dense products; moe.cu: the routed
// experts): activation quantization, the 32-value units of quantized rows and their in-order
// folds, and the tensor-core (mma) tiles with their staged inputs. Each including file compiles
// its own copy (internal linkage; there is no device linking), so an expert's products and the
// dense ones share one definition of a token's arithmetic.
//
// Every kernel computes a token's result in a fixed order of its own, so results do not depend
// on the batch a token comes in (bigmoe's batch invariance). Weights stay in their GGUF block
// layouts and are decoded where they are read. Quantized products run on 32-value units (a Q4_0 /
// Q8_0 block, or a K-quant sub-block): a lane loads a unit's weights into registers once and forms
// the integer sums with dp4a for every token of its tile. A Q4_0 / Q8_0 unit is scaled on its own;
// K-quant units' scaled integer sums add up over their 256-value super-block (exactly), and the
// super-block is scaled once, as the reference's dot product does.
#pragma once

#include <cuda_pipeline.h>

#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (the 12-byte packing), its
// byte k being byte(k) (read from memory, or out of words already in registers).
template <class Byte>
__device__ __forceinline__ void scale_min_k4(int j, Byte byte, int* sc, int* m) {
    if (j < 4) {
        *sc = byte(j) & 63;
        *m = byte(j + 4) & 63;
    } else {
        *sc = (byte(j + 4) & 0x0F) | ((byte(j - 4) >> 6) << 4);
        *m = (byte(j + 4) >> 4) | ((byte(j) >> 6) << 4);
    }
}
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    scale_min_k4(
        j, [q](int k) { return int(q[k]); }, sc, m);
}

// Element i of a float row (f32, f16, bf16), inlined: dequant is a call with a switch.
template <int TYPE>
__device__ __forceinline__ float float_weight(const uint8_t* row, int64_t i) {
    if constexpr (TYPE == k_f32)
        return reinterpret_cast<const float*>(row)[i];
    else if constexpr (TYPE == k_f16)
        return half_bits(load_u16(row + 2 * i));
    else
        return __uint_as_float(uint32_t(load_u16(row + 2 * i)) << 16);
}

// Element i of a row of type `type`. The arithmetic is the reference dequantizer's, operation
// for operation and without fused multiply-adds (the _rn intrinsics), so values are bit-equal.
__device__ float dequant(int type, const uint8_t* row, int64_t i) {
    switch (type) {
        case k_f32:
            return float_weight<k_f32>(row, i);
        case k_f16:
            return float_weight<k_f16>(row, i);
        case k_bf16:
            return float_weight<k_bf16>(row, i);
        case k_q4_0: {
            const uint8_t* b = row + (i / 32) * 18;
            const int j = int(i % 32);
            const uint8_t q = b[2 + (j % 16)];
            return __fmul_rn(float((j < 16 ? (q & 0x0F) : (q >> 4)) - 8), half_bits(load_u16(b)));
        }
        case k_q8_0: {
            const uint8_t* b = row + (i / 32) * 34;
            return __fmul_rn(float(int8_t(b[2 + i % 32])), half_bits(load_u16(b)));
        }
        case k_q4_k:
        case k_q5_k: {
            const bool five = type == k_q5_k;
            const uint8_t* b = row + (i / 256) * (five ? 176 : 144);
            const float d = half_bits(load_u16(b)), dmin = half_bits(load_u16(b + 2));
            const int j = int(i % 256), c = j / 64, l = j % 32, sub = 2 * c + ((j % 64) >= 32);
            int sc, m;
            scale_min_k4(sub, b + 4, &sc, &m);
            const uint8_t* qs = b + (five ? 48 : 16) + 32 * c;
            int q = (j % 64) < 32 ? (qs[l] & 0x0F) : (qs[l] >> 4);
            if (five) q += ((b[16 + l] >> sub) & 1) << 4;
            return __fsub_rn(__fmul_rn(__fmul_rn(d, float(sc)), float(q)), __fmul_rn(dmin, float(m)));
        }
        case k_q6_k: {
            const uint8_t* b = row + (i / 256) * 210;
            const float d = half_bits(load_u16(b + 208));
            const int j = int(i % 256), n = j / 128, r = j % 128, quarter = r / 32, l = r % 32;
            const uint8_t* L = b + 64 * n;
            const uint8_t h = b[128 + 32 * n + l];
            const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * n;
            const int lo = quarter == 0   ? (L[l] & 0x0F)
                           : quarter == 1 ? (L[l + 32] & 0x0F)
                           : quarter == 2 ? (L[l] >> 4)
                                          : (L[l + 32] >> 4);
            const int q = (lo | (((h >> (2 * quarter)) & 3) << 4)) - 32;
            return __fmul_rn(__fmul_rn(d, float(sc[l / 16 + 2 * quarter])), float(q));
        }
        default:
            return __int_as_float(0x7fc00000);  // an unsupported type shows as NaN
    }
}

__device__ __forceinline__ float round_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(((u >> 16) | 0x40) << 16);
    return __uint_as_float(((u + 0x7fffu + ((u >> 16) & 1)) >> 16) << 16);
}

// Quantization block blk of activation row xr (n values) into row, by one warp: Q8_0 and Q8_K
// blocks, or 32 values of a float row rounded to the weight's precision.
__device__ __forceinline__ int64_t act_blocks(int at, int64_t n) {
    return at == k_q8_0 ? n / 32 : at == k_q8_k ? n / 256 : (n + 31) / 32;
}
__device__ void quantize_block(int at, const float* xr, int64_t n, int64_t blk, int lane, uint8_t* row) {
    if (at == k_q8_0) {
        if (blk >= n / 32) return;
        const float v = xr[blk * 32 + lane];
        float amax = fabsf(v);
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float d = __fdiv_rn(amax, 127.0f);
        const float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
        const int q = int(rintf(__fmul_rn(v, id)));
        row[blk * 32 + lane] = uint8_t(int8_t(q));
        int sum = q;
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (lane == 0) {
            reinterpret_cast<int16_t*>(row + act_sums_at(n))[blk] = int16_t(sum);
            reinterpret_cast<float*>(row + act_scales_at(k_q8_0, n))[blk] = __half2float(__float2half_rn(d));
        }
    } else if (at == k_q8_k) {
        if (blk >= n / 256) return;
        const float* xb = xr + blk * 256;
        // the largest |x| and the first position holding it
        float amax = 0;
        int at_i = 1 << 30;
        for (int k = 0; k < 8; ++k) {
            const int i = lane + 32 * k;
            const float ax = fabsf(xb[i]);
            if (ax > amax) {
                amax = ax;
                at_i = i;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float oa = __shfl_xor_sync(0xffffffffu, amax, o);
            const int oi = __shfl_xor_sync(0xffffffffu, at_i, o);
            if (oa > amax || (oa == amax && oi < at_i)) {
                amax = oa;
                at_i = oi;
            }
        }
        int8_t* qs = reinterpret_cast<int8_t*>(row) + blk * 256;
        int16_t* bsums = reinterpret_cast<int16_t*>(row + act_sums_at(n)) + blk * 16;
        float* d = reinterpret_cast<float*>(row + act_scales_at(k_q8_k, n)) + blk;
        if (amax == 0.0f) {
            for (int k = 0; k < 8; ++k) qs[lane + 32 * k] = 0;
            if (lane < 16) bsums[lane] = 0;
            if (lane == 0) *d = 0.0f;
            return;
        }
        const float iscale = __fdiv_rn(-127.0f, xb[at_i]);
        for (int k = 0; k < 8; ++k) {
            const int i = lane + 32 * k;
            qs[i] = int8_t(min(127, int(rintf(__fmul_rn(iscale, xb[i])))));
        }
        // the sums of the 16 groups of 16 values, a lane per group over the bytes just written
        __syncwarp();
        if (lane < 16) {
            const int4 q = *reinterpret_cast<const int4*>(qs + 16 * lane);
            bsums[lane] = int16_t(
                __dp4a(q.w, 0x01010101, __dp4a(q.z, 0x01010101, __dp4a(q.y, 0x01010101, __dp4a(q.x, 0x01010101, 0)))));
        }
        if (lane == 0) *d = __fdiv_rn(1.0f, iscale);
    } else {
        const int64_t i = blk * 32 + lane;
        if (i >= n) return;
        const float v = xr[i];
        reinterpret_cast<float*>(row)[i] = at == k_f16    ? __half2float(__float2half_rn(v))
                                           : at == k_bf16 ? round_bf16(v)
                                                          : v;
    }
}

// Rows of activations quantized by the whole block into `dst` (shared memory); the caller waits
// for them at a barrier.
__device__ void quantize_rows_in_block(int at, const float* x, int64_t xs, int64_t rows, int64_t n, uint8_t* dst,
                                       int64_t drb, int first_warp = 0) {
    const int warp = threadIdx.x / 32 - first_warp, lane = threadIdx.x % 32, nw = blockDim.x / 32 - first_warp;
    if (warp < 0) return;
    const int64_t nb = act_blocks(at, n);
    // (row, block) pairs over the warps: a row of a few blocks (an expert's 512-value hidden row:
    // 2 Q8_K blocks) keeps every warp busy instead of two, row after row.
    for (int64_t i = warp; i < rows * nb; i += nw)
        quantize_block(at, x + (i / nb) * xs, n, i % nb, lane, dst + (i / nb) * drb);
}

// ---- 32-value units of quantized rows
//
// A quantized row's dot product with an activation row is the sum of its contributions (a
// K-quant super-block's, a Q4_0 / Q8_0 block's) c_0 + c_1 + ... added in that order (a left
// fold), whichever kernel forms them: the warp-per-row kernels below and the tensor-core kernel
// for larger batches give a token the same bits, so a token's result never depends on the batch
// around it.

// A unit's weights as the dot products use them: 32 small integers packed 4 to a word (unsigned
// 0..15 / 0..63 for the K-quants and Q4_0, int8 for Q8_0), value 4 i + b in byte b of word i.
struct UnitScales {
    float d, dm;
    int s0, s1;  // K-quants: scale and min (Q6_K: the scales of values 0..15 and 16..31)
};
struct Unit {
    int q[8];
    UnitScales sc;
};

template <int TYPE>
__device__ __forceinline__ UnitScales unit_scales(const uint8_t* row, int64_t u) {
    UnitScales w{};
    if constexpr (TYPE == k_q4_k || TYPE == k_q5_k) {
        const uint8_t* x = row + (u / 8) * (TYPE == k_q5_k ? 176 : 144);
        w.d = half_bits(load_u16(x));
        w.dm = half_bits(load_u16(x + 2));
        scale_min_k4(int(u % 8), x + 4, &w.s0, &w.s1);
    } else if constexpr (TYPE == k_q6_k) {
        const uint8_t* x = row + (u / 8) * 210;
        const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
        const int j = int(u % 8);
        w.s0 = sc[2 * j];
        w.s1 = sc[2 * j + 1];
        w.d = half_bits(load_u16(x + 208));
    } else {
        w.d = half_bits(load_u16(row + u * (TYPE == k_q4_0 ? 18 : 34)));
    }
    return w;
}

// Word i (values 4 i .. 4 i + 3) of unit u.
template <int TYPE>
__device__ __forceinline__ int unit_word(const uint8_t* row, int64_t u, int i) {
    if constexpr (TYPE == k_q4_k || TYPE == k_q5_k) {
        constexpr bool five = TYPE == k_q5_k;
        const uint8_t* x = row + (u / 8) * (five ? 176 : 144);
        const int j = int(u % 8);
        const uint32_t raw = *reinterpret_cast<const uint32_t*>(x + (five ? 48 : 16) + 32 * (j / 2) + 4 * i);
        uint32_t v = (raw >> (4 * (j & 1))) & 0x0F0F0F0Fu;
        if constexpr (five) v |= ((*reinterpret_cast<const uint32_t*>(x + 16 + 4 * i) >> j) & 0x01010101u) << 4;
        return int(v);
    } else if constexpr (TYPE == k_q6_k) {
        const uint8_t* x = row + (u / 8) * 210;
        const int j = int(u % 8), n = j / 4, quarter = j % 4;
        const uint32_t lo =
            (uint32_t(load_i32_a2(x + 64 * n + (quarter & 1) * 32 + 4 * i)) >> (quarter < 2 ? 0 : 4)) & 0x0F0F0F0Fu;
        const uint32_t hi = ((uint32_t(load_i32_a2(x + 128 + 32 * n + 4 * i)) >> (2 * quarter)) & 0x03030303u) << 4;
        return int(lo | hi);
    } else if constexpr (TYPE == k_q4_0) {
        const uint32_t v = uint32_t(load_i32_a2(row + u * 18 + 2 + 4 * (i % 4)));
        return int((i < 4 ? v : v >> 4) & 0x0F0F0F0Fu);
    } else {
        return load_i32_a2(row + u * 34 + 2 + 4 * i);
    }
}

// All of unit u, with wide loads where the layout is aligned (the same values as unit_word).
template <int TYPE>
__device__ __forceinline__ Unit load_unit(const uint8_t* row, int64_t u) {
    Unit w;
    w.sc = unit_scales<TYPE>(row, u);
    if constexpr (TYPE == k_q4_k || TYPE == k_q5_k) {
        constexpr bool five = TYPE == k_q5_k;
        const uint8_t* x = row + (u / 8) * (five ? 176 : 144);
        const int j = int(u % 8);
        const uint4* qs = reinterpret_cast<const uint4*>(x + (five ? 48 : 16) + 32 * (j / 2));
        const uint4 q0 = qs[0], q1 = qs[1];
        const uint32_t raw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
#pragma unroll
        for (int i = 0; i < 8; ++i) w.q[i] = int((raw[i] >> (4 * (j & 1))) & 0x0F0F0F0Fu);
        if constexpr (five) {
            const uint4* qh = reinterpret_cast<const uint4*>(x + 16);
            const uint4 h0 = qh[0], h1 = qh[1];
            const uint32_t hr[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i) w.q[i] |= int(((hr[i] >> j) & 0x01010101u) << 4);
        }
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) w.q[i] = unit_word<TYPE>(row, u, i);
    }
    return w;
}

// What a unit's contribution needs of an activation row: its scale and its quant sums (Q8_K: of
// values 0..15 and 16..31 of the unit; Q8_0: of the whole block, in bs0).
struct ActUnit {
    float yd;
    int bs0, bs1;
};
template <int TYPE>
__device__ __forceinline__ ActUnit act_unit(const uint8_t* arow, int64_t n, int64_t u) {
    if constexpr (TYPE == k_q4_k || TYPE == k_q5_k || TYPE == k_q6_k) {
        const int16_t* bs = reinterpret_cast<const int16_t*>(arow + act_sums_at(n)) + 2 * u;
        return {reinterpret_cast<const float*>(arow + act_scales_at(k_q8_k, n))[u / 8], bs[0], bs[1]};
    } else {
        return {reinterpret_cast<const float*>(arow + act_scales_at(k_q8_0, n))[u],
                reinterpret_cast<const int16_t*>(arow + act_sums_at(n))[u], 0};
    }
}

// K-quant units contribute per super-block: the 8 units' integer parts, summed exactly (in any
// order), then one float contribution of the super-block (the reference's vec_dot forms it so).
// A Q4_0 / Q8_0 unit is a whole block with its own scale: one float contribution a unit.
template <int TYPE>
constexpr bool k_quant = TYPE == k_q4_k || TYPE == k_q5_k || TYPE == k_q6_k;

// A K-quant unit's integer part, from its integer sums over values 0..15 (s0) and 16..31 (s1):
// Q4_K / Q5_K the scaled sum (a) and the min's share (b), Q6_K the scaled sum less the offset.
struct UnitInts {
    int a, b;
};
template <int TYPE>
__device__ __forceinline__ UnitInts unit_ints(const UnitScales& w, int s0, int s1, const ActUnit& y) {
    if constexpr (TYPE == k_q6_k)
        return {(s0 - 32 * y.bs0) * w.s0 + (s1 - 32 * y.bs1) * w.s1, 0};
    else
        return {(s0 + s1) * w.s0, (y.bs0 + y.bs1) * w.s1};
}
// A super-block's contribution from its units' integer parts summed (w: any of its units' scales,
// yd: the activation's scale).
template <int TYPE>
__device__ __forceinline__ float sb_contribution(const UnitScales& w, float yd, int a, int b) {
    if constexpr (TYPE == k_q6_k)
        return __fmul_rn(__fmul_rn(w.d, yd), float(a));
    else
        return __fsub_rn(__fmul_rn(__fmul_rn(w.d, yd), float(a)), __fmul_rn(__fmul_rn(w.dm, yd), float(b)));
}
// A Q4_0 / Q8_0 unit's contribution.
template <int TYPE>
__device__ __forceinline__ float combine(const UnitScales& w, int s0, int s1, const ActUnit& y) {
    if constexpr (TYPE == k_q4_0)
        return __fmul_rn(__fmul_rn(float(s0 + s1 - 8 * y.bs0), w.d), y.yd);
    else
        return __fmul_rn(float(s0 + s1), __fmul_rn(w.d, y.yd));
}

// The integer sums of unit u's weights with an activation row: values 0..15 and 16..31.
template <int TYPE>
__device__ __forceinline__ void unit_sums(const Unit& w, const uint8_t* arow, int64_t u, int& s0, int& s1) {
    const uint4* qp = reinterpret_cast<const uint4*>(arow + 32 * u);
    const uint4 a0 = qp[0], a1 = qp[1];
    const int y[8] = {int(a0.x), int(a0.y), int(a0.z), int(a0.w), int(a1.x), int(a1.y), int(a1.z), int(a1.w)};
    s0 = 0;
    s1 = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        s0 = __dp4a(w.q[i], y[i], s0);
        s1 = __dp4a(w.q[4 + i], y[4 + i], s1);
    }
}
// A Q4_0 / Q8_0 unit's contribution.
template <int TYPE>
__device__ __forceinline__ float unit_dot(const Unit& w, const uint8_t* arow, int64_t n, int64_t u) {
    int s0, s1;
    unit_sums<TYPE>(w, arow, u, s0, s1);
    return combine<TYPE>(w.sc, s0, s1, act_unit<TYPE>(arow, n, u));
}
// A K-quant unit's integer part, and the activation's scale of its super-block.
template <int TYPE>
__device__ __forceinline__ UnitInts unit_int_dot(const Unit& w, const uint8_t* arow, int64_t n, int64_t u, float& yd) {
    int s0, s1;
    unit_sums<TYPE>(w, arow, u, s0, s1);
    const ActUnit y = act_unit<TYPE>(arow, n, u);
    yd = y.yd;
    return unit_ints<TYPE>(w.sc, s0, s1, y);
}
// The integer parts summed over each super-block's 8 lanes (lanes 8 k .. 8 k + 7 hold one
// super-block's units), in all 8.
template <int TYPE>
__device__ __forceinline__ void sb_reduce(int& a, int& b) {
#pragma unroll
    for (int o = 1; o < 8; o <<= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        if constexpr (TYPE != k_q6_k) b += __shfl_xor_sync(0xffffffffu, b, o);
    }
}

// Units a contribution covers: a K-quant super-block's 8 (held by 8 adjacent lanes), or one.
template <int TYPE>
constexpr int units_per_contribution = k_quant<TYPE> ? 8 : 1;

// A lane's contributions of unit u (when `valid`) of a row with nt <= NT activation rows (act,
// act + arb, ...): a Q4_0 / Q8_0 unit's own; a K-quant unit's super-block's, in all 8 of its
// lanes (every lane of the warp takes part in the sums: call from all 32). Zeros past nt.
template <int TYPE, int NT>
__device__ __forceinline__ void unit_contributions(bool valid, const uint8_t* row, const uint8_t* act, int64_t arb,
                                                   int64_t n, int nt, int64_t u, float (&c)[NT]) {
    if constexpr (k_quant<TYPE>) {
        int ia[NT], ib[NT];
        float yd[NT];
        UnitScales sc{};
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            ia[j] = ib[j] = 0;
            yd[j] = 0;
        }
        if (valid) {
            const Unit w = load_unit<TYPE>(row, u);
            sc = w.sc;
#pragma unroll
            for (int j = 0; j < NT; ++j)
                if (j < nt) {
                    const UnitInts r = unit_int_dot<TYPE>(w, act + j * arb, n, u, yd[j]);
                    ia[j] = r.a;
                    ib[j] = r.b;
                }
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            sb_reduce<TYPE>(ia[j], ib[j]);
            c[j] = sb_contribution<TYPE>(sc, yd[j], ia[j], ib[j]);
        }
    } else {
#pragma unroll
        for (int j = 0; j < NT; ++j) c[j] = 0;
        if (valid) {
            const Unit w = load_unit<TYPE>(row, u);
#pragma unroll
            for (int j = 0; j < NT; ++j)
                if (j < nt) c[j] = unit_dot<TYPE>(w, act + j * arb, n, u);
        }
    }
}

// A warp's dot products of a weight row with the activation rows of nt <= NT tokens (act, act +
// arb, ...), in every lane. Quantized rows: lane l forms the contributions of units u0 + l, and
// the warp folds each group of 32 in unit order. Float rows: lane l adds every 32nd value, then
// the lanes are added in a tree (float weights always take this kernel).
template <int TYPE, int NT>
__device__ __forceinline__ void lane_dots(const uint8_t* row, const uint8_t* act, int64_t arb, int64_t n, int nt,
                                          int lane, float (&acc)[NT]) {
#pragma unroll
    for (int j = 0; j < NT; ++j) acc[j] = 0;
    if constexpr (TYPE == k_f32 || TYPE == k_f16 || TYPE == k_bf16) {
        for (int64_t i = lane; i < n; i += 32) {
            const float wv = float_weight<TYPE>(row, i);
#pragma unroll
            for (int j = 0; j < NT; ++j)
                if (j < nt) acc[j] = fmaf(wv, reinterpret_cast<const float*>(act + j * arb)[i], acc[j]);
        }
#pragma unroll
        for (int j = 0; j < NT; ++j) acc[j] = warp_sum(acc[j]);
    } else {
        constexpr int S = units_per_contribution<TYPE>, G = 32 / S;
        const int64_t U = n / 32;
        for (int64_t u0 = 0; u0 < U; u0 += 32) {
            float c[NT];
            unit_contributions<TYPE, NT>(u0 + lane < U, row, act, arb, n, nt, u0 + lane, c);
            // the contributions added in order; a full group unrolled (the loop's own
            // instructions were most of a decode product's)
            const int m = int(U - u0 < 32 ? U - u0 : 32) / S;
            if (m == G) {
#pragma unroll
                for (int k = 0; k < G; ++k)
#pragma unroll
                    for (int j = 0; j < NT; ++j) acc[j] += __shfl_sync(0xffffffffu, c[j], S * k);
            } else {
                for (int k = 0; k < m; ++k)
#pragma unroll
                    for (int j = 0; j < NT; ++j) acc[j] += __shfl_sync(0xffffffffu, c[j], S * k);
            }
        }
    }
}

// A warp's dot products of one weight row with nt tokens' activation rows, for a type known at
// run time (uniform over the warp).
template <int NT>
__device__ void row_dots(int type, const uint8_t* row, const uint8_t* act, int64_t arb, int64_t n, int nt, int lane,
                         float (&acc)[NT]) {
    switch (type) {
        case k_q4_k:
            lane_dots<k_q4_k, NT>(row, act, arb, n, nt, lane, acc);
            break;
        case k_q5_k:
            lane_dots<k_q5_k, NT>(row, act, arb, n, nt, lane, acc);
            break;
        case k_q6_k:
            lane_dots<k_q6_k, NT>(row, act, arb, n, nt, lane, acc);
            break;
        case k_q4_0:
            lane_dots<k_q4_0, NT>(row, act, arb, n, nt, lane, acc);
            break;
        case k_q8_0:
            lane_dots<k_q8_0, NT>(row, act, arb, n, nt, lane, acc);
            break;
        case k_f16:
            lane_dots<k_f16, NT>(row, act, arb, n, nt, lane, acc);
            break;
        case k_bf16:
            lane_dots<k_bf16, NT>(row, act, arb, n, nt, lane, acc);
            break;
        default:
            lane_dots<k_f32, NT>(row, act, arb, n, nt, lane, acc);
            break;
    }
}

// The dot products of R quantized rows, row r = row_at(r), with activation rows act_at(r), for one
// token: the R x U (row, unit) pairs are spread over the lanes CH per lane at a time, so one
// warp's loads for several rows (a token's experts in the down kernel) are in flight
// together; each row's contributions are then folded in unit order (the bits of lane_dots) and
// handed to sink(r, value), rows in order, value in every lane.
template <int TYPE, int CH, class RowAt, class ActAt, class Sink>
__device__ __forceinline__ void fold_rows(int64_t R, int64_t n, int lane, RowAt row_at, ActAt act_at, Sink sink) {
    constexpr int S = units_per_contribution<TYPE>, G = 32 / S;
    const int U = int(n / 32), P = int(R) * U;  // 32-bit: the pairs' divisions are per lane and unit
    const int per_row = U / S;                  // rows are whole super-blocks
    float acc = 0;
    int done = 0;
    int64_t rc = 0;
    for (int p0 = 0; p0 < P; p0 += 32 * CH) {
        float c[CH];
#pragma unroll
        for (int i = 0; i < CH; ++i) {
            const int p = p0 + 32 * i + lane, r = p < P ? p / U : 0, u = p < P ? p % U : 0;
            float ci[1];
            unit_contributions<TYPE, 1>(p < P, row_at(r), act_at(r), 0, n, 1, u, ci);
            c[i] = ci[0];
        }
#pragma unroll
        for (int i = 0; i < CH; ++i) {
            const int q0 = p0 + 32 * i, m = (P - q0 < 32 ? P - q0 : 32) / S;
            if (per_row % G == 0 && m == G) {  // a full group of one row: unrolled, the row ends at most at its end
#pragma unroll
                for (int k = 0; k < G; ++k) acc += __shfl_sync(0xffffffffu, c[i], S * k);
                done += G;
                if (done == per_row) {
                    sink(rc++, acc);
                    acc = 0;
                    done = 0;
                }
                continue;
            }
            for (int k = 0; k < m; ++k) {
                acc += __shfl_sync(0xffffffffu, c[i], S * k);
                if (++done == per_row) {
                    sink(rc++, acc);
                    acc = 0;
                    done = 0;
                }
            }
        }
    }
}

// fold_rows for a weight type known at run time; float rows one by one (lane_dots).
template <class RowAt, class ActAt, class Sink>
__device__ void fold_rows_any(int type, int64_t R, int64_t n, int lane, RowAt row_at, ActAt act_at, Sink sink) {
    switch (type) {
        case k_q4_k:
            fold_rows<k_q4_k, 4>(R, n, lane, row_at, act_at, sink);
            break;
        case k_q5_k:
            fold_rows<k_q5_k, 4>(R, n, lane, row_at, act_at, sink);
            break;
        case k_q6_k:
            fold_rows<k_q6_k, 4>(R, n, lane, row_at, act_at, sink);
            break;
        case k_q4_0:
            fold_rows<k_q4_0, 4>(R, n, lane, row_at, act_at, sink);
            break;
        case k_q8_0:
            fold_rows<k_q8_0, 4>(R, n, lane, row_at, act_at, sink);
            break;
        default:
            for (int64_t r = 0; r < R; ++r) {
                float acc[1];
                row_dots<1>(type, row_at(r), act_at(r), 0, n, 1, lane, acc);
                sink(r, acc[0]);
            }
            break;
    }
}

// ---- a lane per super-block: one-token products of K-quant rows
//
// A decode product's rows taken a few to a warp, 8 to 32 lanes a row, a lane a whole
// super-block: its bytes come in a few 16-byte loads issued together (Q4_K: 9), its 8 units'
// integer sums need no shuffles, and the super-block's contribution is sb_contribution's of the
// same integers, so a row folds (in super-block order) to the bits of lane_dots. The activation
// row's Q8_K quants are read from a copy whose 16-value chunks are rotated by the super-block's
// index (chunk k of super-block b at (k + b) % 16): the 8 lanes of a row read chunk k of 8
// adjacent super-blocks from distinct banks.
// (rows of several experts side by side rotate by the super-block's index among all of them:
// rot = the row's first super-block's)
__device__ __forceinline__ int64_t swz_at(int64_t b, int k, int64_t rot = 0) {
    return 256 * b + 16 * ((k + b + rot) & 15);
}
__device__ __forceinline__ int4 swz_chunk(const uint8_t* swz, int64_t b, int k, int64_t rot) {
    return *reinterpret_cast<const int4*>(swz + swz_at(b, k, rot));
}
__device__ __forceinline__ int dp4a4(uint32_t mask_shift_src, int sh, uint32_t m, int y, int acc) {
    return __dp4a(int((mask_shift_src >> sh) & m), y, acc);
}

// The rotated copy of `rows` Q8_K activation rows of n values (src: arb bytes apart) at dst,
// row r's super-blocks rotating from r * n / 256, by the whole block (callers wait at a barrier).
__device__ __forceinline__ void rotate_rows_in_block(const uint8_t* src, int64_t arb, int64_t rows, int64_t n,
                                                     uint8_t* dst) {
    const int64_t chunks = n / 16;
    for (int64_t c = threadIdx.x; c < rows * chunks; c += blockDim.x) {
        const int64_t r = c / chunks, cc = c % chunks, nsb = n / 256;
        *reinterpret_cast<int4*>(dst + r * n + swz_at(cc / 16, int(cc % 16), r * nsb)) =
            *reinterpret_cast<const int4*>(src + r * arb + 16 * cc);
    }
}

// Super-block b of a Q4_K / Q6_K row against the activation row (act: sums and scales in the
// usual layout; swz: the rotated quants of n values).
template <int TYPE>
__device__ __forceinline__ float sb_lane(const uint8_t* row, int64_t b, const uint8_t* act, const uint8_t* swz,
                                         int64_t n, int64_t rot = 0) {
    // the super-block's 16 sums of 16 activations as two 16-byte loads (16 two-byte loads kept
    // the load queue full): sum 2 i in the low half of word i, sum 2 i + 1 in the high half
    const int4* bsv = reinterpret_cast<const int4*>(act + act_sums_at(n) + 32 * b);
    const int4 bv0 = bsv[0], bv1 = bsv[1];
    const int bw[8] = {bv0.x, bv0.y, bv0.z, bv0.w, bv1.x, bv1.y, bv1.z, bv1.w};
    auto bs_lo = [&](int j) { return (bw[j] << 16) >> 16; };
    auto bs_hi = [&](int j) { return bw[j] >> 16; };
    const float yd = reinterpret_cast<const float*>(act + act_scales_at(k_q8_k, n))[b];
    int ia = 0, ib = 0;
    UnitScales w{};
    if constexpr (TYPE == k_q4_k) {
        const uint4* p = reinterpret_cast<const uint4*>(row + b * 144);
        uint4 q[9];
#pragma unroll
        for (int i = 0; i < 9; ++i) q[i] = p[i];
        const uint32_t sw[3] = {q[0].y, q[0].z, q[0].w};  // the 12 bytes of scales and mins
        auto sbyte = [&](int k) { return int((sw[k / 4] >> (8 * (k % 4))) & 0xFFu); };
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            int sc, m;
            scale_min_k4(j, sbyte, &sc, &m);
            const uint4 lo = q[1 + 2 * (j / 2)], hi = q[2 + 2 * (j / 2)];
            const int sh = 4 * (j & 1);
            const int4 y0 = swz_chunk(swz, b, 2 * j, rot), y1 = swz_chunk(swz, b, 2 * j + 1, rot);
            constexpr uint32_t m4 = 0x0F0F0F0Fu;
            int s0 = dp4a4(lo.x, sh, m4, y0.x, 0);
            s0 = dp4a4(lo.y, sh, m4, y0.y, s0);
            s0 = dp4a4(lo.z, sh, m4, y0.z, s0);
            s0 = dp4a4(lo.w, sh, m4, y0.w, s0);
            int s1 = dp4a4(hi.x, sh, m4, y1.x, 0);
            s1 = dp4a4(hi.y, sh, m4, y1.y, s1);
            s1 = dp4a4(hi.z, sh, m4, y1.z, s1);
            s1 = dp4a4(hi.w, sh, m4, y1.w, s1);
            ia += (s0 + s1) * sc;
            ib += (bs_lo(j) + bs_hi(j)) * m;
        }
        w.d = half_bits(uint16_t(q[0].x & 0xFFFFu));
        w.dm = half_bits(uint16_t(q[0].x >> 16));
    } else {
        // 210 bytes at a 2-byte aligned address: the 16-byte aligned window around them (the
        // weights' buffers have 16 bytes to spare), moved down by the offset in words, then in
        // half-words
        const uintptr_t at = reinterpret_cast<uintptr_t>(row + b * 210);
        const uint4* p = reinterpret_cast<const uint4*>(at & ~uintptr_t(15));
        const int off = int(at & 15);
        uint32_t W[56];
#pragma unroll
        for (int i = 0; i < 14; ++i) {
            const uint4 v = p[i];
            W[4 * i] = v.x;
            W[4 * i + 1] = v.y;
            W[4 * i + 2] = v.z;
            W[4 * i + 3] = v.w;
        }
        const bool one = off & 4, two = off & 8;
#pragma unroll
        for (int i = 0; i < 55; ++i) W[i] = one ? W[i + 1] : W[i];
#pragma unroll
        for (int i = 0; i < 53; ++i) W[i] = two ? W[i + 2] : W[i];
        const int fs = (off & 2) * 8;
        auto word = [&](int i) { return __funnelshift_r(W[i], W[i + 1], fs); };
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int half = j / 4, quarter = j % 4;
            const int4 y0 = swz_chunk(swz, b, 2 * j, rot), y1 = swz_chunk(swz, b, 2 * j + 1, rot);
            const int ys[8] = {y0.x, y0.y, y0.z, y0.w, y1.x, y1.y, y1.z, y1.w};
            int s0 = 0, s1 = 0;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const uint32_t lo = (word(16 * half + (quarter & 1) * 8 + i) >> (quarter < 2 ? 0 : 4)) & 0x0F0F0F0Fu;
                const uint32_t hi = ((word(32 + 8 * half + i) >> (2 * quarter)) & 0x03030303u) << 4;
                if (i < 4)
                    s0 = __dp4a(int(lo | hi), ys[i], s0);
                else
                    s1 = __dp4a(int(lo | hi), ys[i], s1);
            }
            auto scale = [&](int k) { return int(int8_t((word(48 + k / 4) >> (8 * (k % 4))) & 0xFFu)); };
            ia += (s0 - 32 * bs_lo(j)) * scale(2 * j) + (s1 - 32 * bs_hi(j)) * scale(2 * j + 1);
        }
        w.d = half_bits(uint16_t(word(52) & 0xFFFFu));
    }
    return sb_contribution<TYPE>(w, yd, ia, ib);
}

// sb_lane for a type known at run time (Q4_K or Q6_K).
__device__ __forceinline__ float sb_lane_any(int type, const uint8_t* row, int64_t b, const uint8_t* act,
                                             const uint8_t* swz, int64_t n, int64_t rot = 0) {
    return type == k_q4_k ? sb_lane<k_q4_k>(row, b, act, swz, n, rot) : sb_lane<k_q6_k>(row, b, act, swz, n, rot);
}
// acc += the contributions c of lanes first, first + 1, ..., first + m - 1 (m <= 8), in that
// order (a row's super-blocks folded as lane_dots folds them); every lane of the warp calls it.
__device__ __forceinline__ void fold8(float& acc, float c, int first, int m) {
    if (m == 8) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc += __shfl_sync(0xffffffffu, c, first + j);
    } else {
        for (int j = 0; j < m; ++j) acc += __shfl_sync(0xffffffffu, c, first + j);
    }
}

// The integer sums of a 16 x 16 int8 tile of weights (rows g and g + 8 of the warp's 16: a0, a1)
// and a 16 x 8 tile of activations (b: 4 values of token g), on the tensor cores: d[0], d[1] are
// row g with tokens 2 (lane % 4) and 2 (lane % 4) + 1, d[2], d[3] row g + 8.
__device__ __forceinline__ void mma_s8_16x8x16(int (&d)[4], int a0, int a1, int b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%7,%7,%7};"
                 : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
                 : "r"(a0), "r"(a1), "r"(b), "r"(0));
#else
    d[0] = d[1] = d[2] = d[3] = 0;  // not reached: the host takes this kernel on sm_80 and newer only
#endif
}

// The same for a 16 x 32 tile (a0, a1: values 0..15 of rows g and g + 8, a2, a3: values 16..31)
// and a 32 x 8 tile (b0: values 4 (lane % 4) .. of token g among 0..15, b1 among 16..31).
__device__ __forceinline__ void mma_s8_16x8x32(int (&d)[4], int a0, int a1, int a2, int a3, int b0, int b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%10,%10,%10,%10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
#else
    d[0] = d[1] = d[2] = d[3] = 0;  // not reached: the host takes this kernel on sm_80 and newer only
#endif
}

// d += a b for unsigned 8-bit a (the layout of mma_s8_16x8x32) and signed 8-bit b.
__device__ __forceinline__ void mma_u8s8_16x8x32_acc(int (&d)[4], const int (&a)[4], int b0, int b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k32.row.col.s32.u8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)a, (void)b0, (void)b1;    // not reached: the host takes this kernel on sm_80 and newer only
#endif
}

// The words of unit u a lane feeds into the products from a token's activation row (values 4 tq
// .. and 16 + 4 tq ..; zeros for no row).
__device__ __forceinline__ void feed_words(const uint8_t* feed, int64_t u, int tq, int& b0, int& b1) {
    b0 = b1 = 0;
    if (feed) {
        const int* y = reinterpret_cast<const int*>(feed + 32 * u);
        b0 = y[tq];
        b1 = y[4 + tq];
    }
}

// One Q4_0 / Q8_0 unit u of a warp's 16 rows (w0: row g, w1: row g + 8 of its tile) against up
// to 32 tokens, each output's contribution added into acc: feed[i] is the activation row token
// 8 i + g feeds into the products (nullptr: none), out_of[i][e] the rows of this lane's outputs
// (n values a row, the layout act_unit reads), [i][e] (token 8 i + 2 (lane % 4) + (e & 1), row g)
// and [i][2 + e] (row g + 8). Units are added in order by the callers, so a token's sums have the
// bits of the warp kernels.
constexpr int k_mma_rows = 64, k_mma_tokens = 32;
template <int TYPE>
__device__ __forceinline__ void mma_unit(const uint8_t* w0, const uint8_t* w1, int64_t u,
                                         const uint8_t* const (&feed)[4], const uint8_t* const (&out_of)[4][2],
                                         int64_t n, int n_tiles, float (&acc)[4][4]) {
    static_assert(TYPE == k_q4_0 || TYPE == k_q8_0);
    const int tq = threadIdx.x % 4;
    const UnitScales sc0 = unit_scales<TYPE>(w0, u), sc1 = unit_scales<TYPE>(w1, u);
    const int a00 = unit_word<TYPE>(w0, u, tq), a01 = unit_word<TYPE>(w1, u, tq);
    const int a10 = unit_word<TYPE>(w0, u, 4 + tq), a11 = unit_word<TYPE>(w1, u, 4 + tq);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (i >= n_tiles) break;
        int b0, b1;
        feed_words(feed[i], u, tq, b0, b1);
        int d[4];
        mma_s8_16x8x32(d, a00, a01, a10, a11, b0, b1);
#pragma unroll
        for (int e = 0; e < 2; ++e)
            if (out_of[i][e]) {
                const ActUnit y = act_unit<TYPE>(out_of[i][e], n, u);
                acc[i][e] += combine<TYPE>(sc0, d[e], 0, y);
                acc[i][2 + e] += combine<TYPE>(sc1, d[2 + e], 0, y);
            }
    }
}

// f(i, e, yd) for each of this lane's outputs [i][e] (as mma_unit's) whose token, 8 i + 2 (lane %
// 4) + e, has a row (live); yd: the token's Q8_K scale of the staged super-block (the token's
// chunk at ab + token astride).
template <int astride, class F>
__device__ __forceinline__ void each_live_output(uint32_t live, int n_tiles, const uint8_t* ab, F f) {
    const int tq = threadIdx.x % 4;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        if (i >= n_tiles) break;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int j = 8 * i + 2 * tq + e;
            if (live >> j & 1) f(i, e, act_unit<k_q4_k>(ab + j * astride, 256, 0).yd);
        }
    }
}

// A Q4_K / Q5_K super-block of a warp's 16 rows against up to 32 tokens (as mma_unit), its
// contribution added into acc: the tensor cores sum each unit's quants times the activations
// (u8 x s8), each output's sum is scaled by its row's 6-bit unit scale in registers (a
// multiply-add an output and unit), and the mins' share, sum over units of min x (the unit's
// activation sum), is a second product of each unit's min repeated. The integers are unit_ints'
// (the warp kernels' sums of the units), so the contribution has the same bits. (Two products a
// unit and tile: the scales written into the weights as base-16 digits need three, and measure
// ~5% slower end to end on an H100, bench/results/cuda.md.) Each row's 8 scales and mins are
// unpacked once into bytes (a unit's is then one byte permute), the units are taken in pairs that
// share their quant bytes (low and high nibbles; Q5_K's fifth bits come from words read once a
// super-block), and a token tile's words of a pair come by one ldmatrix. Token j's chunk is at
// ab + j astride; live: the tokens with a row.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
    uint32_t d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
template <int TYPE, int astride>
__device__ __forceinline__ void mma_sb(const uint8_t* w0, const uint8_t* w1, const uint8_t* ab, uint32_t live,
                                       int n_tiles, float (&acc)[4][4]) {
    static_assert(TYPE == k_q4_k || TYPE == k_q5_k);
    constexpr bool five = TYPE == k_q5_k;
    constexpr int qs_at = five ? 48 : 16;
    const int lane = threadIdx.x % 32, tq = lane % 4;
    const uint8_t* brow = ab + (lane % 8) * astride + 16 * (lane / 8);  // this lane's ldmatrix row, tile 0
    // [row][units 0-3, 4-7]: a byte a unit (scale_min_k4's values)
    uint32_t sc[2][2], mn[2][2], qh[2][2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const uint8_t* x = r ? w1 : w0;
        const uint32_t* s = reinterpret_cast<const uint32_t*>(x + 4);
        const uint32_t s0 = s[0], s1 = s[1], s2 = s[2];
        sc[r][0] = s0 & 0x3f3f3f3fu;
        sc[r][1] = (s2 & 0x0f0f0f0fu) | ((s0 >> 2) & 0x30303030u);
        mn[r][0] = s1 & 0x3f3f3f3fu;
        mn[r][1] = ((s2 >> 4) & 0x0f0f0f0fu) | ((s1 >> 2) & 0x30303030u);
        if constexpr (five) {  // the fifth bits of values 4 tq .. and 16 + 4 tq .., bit j for unit j
            const uint32_t* h = reinterpret_cast<const uint32_t*>(x + 16) + tq;
            qh[r][0] = h[0];
            qh[r][1] = h[4];
        }
    }
    int sums[4][4], mins[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) sums[i][e] = mins[i][e] = 0;
#pragma unroll 1
    for (int p = 0; p < 4; ++p) {
        const uint32_t* q0 = reinterpret_cast<const uint32_t*>(w0 + qs_at + 32 * p) + tq;
        const uint32_t* q1 = reinterpret_cast<const uint32_t*>(w1 + qs_at + 32 * p) + tq;
        const uint32_t raw[4] = {q0[0], q1[0], q0[4], q1[4]};  // rows g, g + 8; values 4 tq .., 16 + 4 tq ..
        int a_q[2][4], a_m[2][4], s_u[2][2];                   // [unit 2 p + h]
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint32_t u = 2 * p + h;
            // byte u of the pair of words; the selector's sign bit fills the rest from byte 0's
            // sign (all these bytes are under 64: zeros)
            const uint32_t one = 0x8880u | u, all = u * 0x1111u;
            s_u[h][0] = int(prmt(sc[0][0], sc[0][1], one));
            s_u[h][1] = int(prmt(sc[1][0], sc[1][1], one));
            const int m0 = int(prmt(mn[0][0], mn[0][1], all)), m1 = int(prmt(mn[1][0], mn[1][1], all));
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                uint32_t q = (raw[k] >> (4 * h)) & 0x0F0F0F0Fu;
                if constexpr (five) q |= ((qh[k % 2][k / 2] >> u) & 0x01010101u) << 4;
                a_q[h][k] = int(q);
                a_m[h][k] = k % 2 ? m1 : m0;
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            if (i >= n_tiles) break;
            uint32_t b[4];  // the tile's tokens' words of units 2 p (b[0], b[1]) and 2 p + 1 (b[2], b[3])
            ldsm_x4<false>(b, brow + 8 * i * astride + 64 * p);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                int d[4] = {0, 0, 0, 0};  // the unit's sums, scaled as they join the super-block's
                mma_u8s8_16x8x32_acc(d, a_q[h], int(b[2 * h]), int(b[2 * h + 1]));
                sums[i][0] += s_u[h][0] * d[0];
                sums[i][1] += s_u[h][0] * d[1];
                sums[i][2] += s_u[h][1] * d[2];
                sums[i][3] += s_u[h][1] * d[3];
                mma_u8s8_16x8x32_acc(mins[i], a_m[h], int(b[2 * h]), int(b[2 * h + 1]));
            }
        }
    }
    const UnitScales sc0 = unit_scales<TYPE>(w0, 0), sc1 = unit_scales<TYPE>(w1, 0);
    each_live_output<astride>(live, n_tiles, ab, [&](int i, int e, float yd) {
        acc[i][e] += sb_contribution<TYPE>(sc0, yd, sums[i][e], mins[i][e]);
        acc[i][2 + e] += sb_contribution<TYPE>(sc1, yd, sums[i][2 + e], mins[i][2 + e]);
    });
}

// Q6_K's super-block with unit_ints' integers: the quants go into the products as
// q - 32 (signed bytes), so each 16-value half's sum is already sum((q - 32) y), and the half's
// scale multiplies it (the activation's 16-value sums are not needed). A row's quant words are
// read once per 128 values (its 4 units share their bytes), 4-byte words from the super-block's
// 2-byte alignment by a funnel shift, and a token tile's words of two units by one ldmatrix.
__device__ __forceinline__ uint32_t ld32_shifted(const uint8_t* base, int off, uint32_t sh) {
    const uint32_t* w = reinterpret_cast<const uint32_t*>(base + off);
    return __funnelshift_r(w[0], w[1], sh);
}
template <int astride>
__device__ __forceinline__ void mma_sb_q6k(const uint8_t* w0, const uint8_t* w1, const uint8_t* ab, uint32_t live,
                                           int n_tiles, float (&acc)[4][4]) {
    const int lane = threadIdx.x % 32, tq = lane % 4;
    const uint8_t* brow = ab + (lane % 8) * astride + 16 * (lane / 8);  // this lane's ldmatrix row, tile 0
    const uint8_t* const x[2] = {w0, w1};
    const uint8_t* base[2];
    uint32_t sh[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const uintptr_t mis = reinterpret_cast<uintptr_t>(x[r]) & 3;
        base[r] = x[r] - mis;
        sh[r] = uint32_t(8 * mis);
    }
    int ia[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) ia[i][e] = 0;
#pragma unroll 1
    for (int n = 0; n < 2; ++n) {  // units 4 n .. 4 n + 3
        // [row][ql bytes 0..31 / 32..63 of the half][values 4 tq.., 16 + 4 tq..], qh: [row][..]
        uint32_t ql[2][2][2], qh[2][2];
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
            for (int k = 0; k < 2; ++k) {
                ql[r][0][k] = ld32_shifted(base[r], 64 * n + 4 * (tq + 4 * k), sh[r]);
                ql[r][1][k] = ld32_shifted(base[r], 64 * n + 32 + 4 * (tq + 4 * k), sh[r]);
                qh[r][k] = ld32_shifted(base[r], 128 + 32 * n + 4 * (tq + 4 * k), sh[r]);
            }
#pragma unroll
        for (int pq = 0; pq < 2; ++pq) {  // units 4 n + 2 pq, + 1 (one ldmatrix a tile)
            int a[2][2][2];               // [unit][half][row]: q - 32, signed bytes
            int sc[2][2][2];              // [unit][half][row]
#pragma unroll
            for (int v = 0; v < 2; ++v) {
                const int quarter = 2 * pq + v, j = 4 * n + quarter;
#pragma unroll
                for (int r = 0; r < 2; ++r) {
#pragma unroll
                    for (int k = 0; k < 2; ++k) {
                        const uint32_t lo = (ql[r][quarter & 1][k] >> (quarter < 2 ? 0 : 4)) & 0x0F0F0F0Fu;
                        const uint32_t hi = ((qh[r][k] >> (2 * quarter)) & 0x03030303u) << 4;
                        // bytes q - 32 without borrows between them: (q + 96) ^ 128
                        a[v][k][r] = int(((lo | hi | 0x80808080u) - 0x20202020u) ^ 0x80808080u);
                        sc[v][k][r] = reinterpret_cast<const int8_t*>(x[r])[192 + 2 * j + k];
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                if (i >= n_tiles) break;
                uint32_t b[4];  // the tile's words of units 2 pq (b[0], b[1]: halves) and 2 pq + 1 (b[2], b[3])
                ldsm_x4<false>(b, brow + 8 * i * astride + 64 * (2 * n + pq));
#pragma unroll
                for (int v = 0; v < 2; ++v)
#pragma unroll
                    for (int k = 0; k < 2; ++k) {
                        int d[4];
                        mma_s8_16x8x16(d, a[v][k][0], a[v][k][1], int(b[2 * v + k]));
                        ia[i][0] += sc[v][k][0] * d[0];
                        ia[i][1] += sc[v][k][0] * d[1];
                        ia[i][2] += sc[v][k][1] * d[2];
                        ia[i][3] += sc[v][k][1] * d[3];
                    }
            }
        }
    }
    const float d0 = half_bits(load_u16(w0 + 208)), d1 = half_bits(load_u16(w1 + 208));
    each_live_output<astride>(live, n_tiles, ab, [&](int i, int e, float yd) {
        acc[i][e] += __fmul_rn(__fmul_rn(d0, yd), float(ia[i][e]));
        acc[i][2 + e] += __fmul_rn(__fmul_rn(d1, yd), float(ia[i][2 + e]));
    });
}

// A block's 64 x 32 tile with its operands staged in shared memory. Chunks of 8 units (256
// values: a K-quant super-block, or 8 Q8_0 / Q4_0 blocks) of the block's 64 weight rows and of
// its token rows are copied with cp.async, the next chunk's copies in flight while the warps
// compute on this one. The fragments' loads from 8 rows at once (a warp's rows g, and tokens g)
// read shared memory without bank conflicts (rows an odd number of 16 bytes apart) instead of 8
// cache lines. A row's bytes keep their offset modulo 16 in shared memory, so the unit readers'
// aligned loads stay aligned; a token's chunk is laid out as an activation row of 256 values.
template <int TYPE>
struct MmaStage {
    static constexpr int chunk_bytes = TYPE == k_q4_k   ? 144
                                       : TYPE == k_q5_k ? 176
                                       : TYPE == k_q6_k ? 210
                                       : TYPE == k_q4_0 ? 144
                                                        : 272;
    static constexpr int granules = (chunk_bytes + 15 + 15) / 16;  // 16-byte copies a row's chunk may span
    static constexpr int w_stride = 16 * (granules | 1);
    static constexpr int a_stride = 304;  // 19 x 16: 256 quants, sums and scales
    static constexpr int act = TYPE == k_q4_k || TYPE == k_q5_k || TYPE == k_q6_k ? k_q8_k : k_q8_0;
    static constexpr int buffer = k_mma_rows * w_stride + k_mma_tokens * a_stride;
    static constexpr int tables = (k_mma_rows + k_mma_tokens) * 8;  // the rows' and tokens' addresses
    static constexpr int smem = 2 * buffer + tables;
};
// acc (per warp, as mma_unit) for the tile: weight row r's bytes at row_ptr(r) (r < 64), token
// j's activation row at act_ptr(j) (nullptr past the tile), n values each; n_tiles 8-token tiles.
//
// FIXED: each thread copies the same bytes of every chunk, a weight row's granules h, h + 2, ...
// (row t / 2, h = t % 2) and a token's granules q, q + 4, ... and one of its sums' or scales'
// copies (token t / 4, q = t % 4): one table read and no division a chunk, where the loop over
// (row, granule) pairs re-derived them for each 16-byte copy (~450 of a Q4_K chunk's ~1,270
// instructions a thread on an H100). The same copies into the same places.
template <int TYPE, bool FIXED = false, class RowPtr, class ActPtr>
__device__ void mma_tile_staged(RowPtr row_ptr, ActPtr act_ptr, int64_t n, int n_tiles, uint8_t* smem,
                                float (&acc)[4][4]) {
    using St = MmaStage<TYPE>;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int64_t U = n / 32, chunks = (U + 7) / 8;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[i][e] = 0;
    // The rows' and tokens' addresses, formed once: an expert's token comes through its slot
    // list (a load and a division), which every chunk's copies and fragments would repeat.
    const uint8_t** rows = reinterpret_cast<const uint8_t**>(smem + 2 * St::buffer);
    const uint8_t** toks = rows + k_mma_rows;
    for (int i = threadIdx.x; i < k_mma_rows + k_mma_tokens; i += blockDim.x) {
        if (i < k_mma_rows)
            rows[i] = row_ptr(i);
        else
            toks[i - k_mma_rows] = act_ptr(i - k_mma_rows);
    }
    __syncthreads();
    const uint32_t live = __ballot_sync(0xffffffffu, toks[lane] != nullptr);  // the tile's tokens with a row
    auto has = [&](int j) { return (live >> j & 1) != 0; };
    auto stage = [&](int64_t c, int b) {
        uint8_t* wb = smem + b * St::buffer;
        uint8_t* ab = wb + k_mma_rows * St::w_stride;
        const int64_t start = c * St::chunk_bytes, cu = min(int64_t(8), U - 8 * c);
        const int64_t bytes = TYPE == k_q8_0 ? cu * 34 : TYPE == k_q4_0 ? cu * 18 : St::chunk_bytes;
        for (int idx = threadIdx.x; idx < k_mma_rows * St::granules; idx += blockDim.x) {
            const int r = idx / St::granules, k = idx % St::granules;
            const uint8_t* src = rows[r] + start;
            const uint8_t* g0 = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(src) & ~uintptr_t(15));
            if (g0 + 16 * k < src + bytes) __pipeline_memcpy_async(wb + r * St::w_stride + 16 * k, g0 + 16 * k, 16);
        }
        // activations: quants (cu * 32 bytes), then the chunk's sums and scales
        const int64_t c0 = 256 * c;
        for (int idx = threadIdx.x; idx < k_mma_tokens * 19; idx += blockDim.x) {
            const int j = idx / 19, k = idx % 19;
            if (!has(j)) continue;
            const uint8_t* arow = toks[j];
            uint8_t* dst = ab + j * St::a_stride;
            if (k < 16) {
                if (k < 2 * cu) __pipeline_memcpy_async(dst + 16 * k, arow + c0 + 16 * k, 16);
            } else if (St::act == k_q8_k) {
                if (k < 18)
                    __pipeline_memcpy_async(dst + 256 + 16 * (k - 16),
                                            arow + act_sums_at(n) + 2 * (c0 / 16) + 16 * (k - 16), 16);
                else
                    __pipeline_memcpy_async(dst + act_scales_at(k_q8_k, 256),
                                            arow + act_scales_at(k_q8_k, n) + 4 * (c0 / 256), 4);
            } else if (k == 16) {
                for (int q = 0; q < cu; ++q) {
                    __pipeline_memcpy_async(dst + act_scales_at(k_q8_0, 256) + 4 * q,
                                            arow + act_scales_at(k_q8_0, n) + 4 * (8 * c + q), 4);
                    if (q % 2 == 0)
                        __pipeline_memcpy_async(dst + 256 + 2 * q, arow + act_sums_at(n) + 2 * (8 * c + q), 4);
                }
            }
        }
        __pipeline_commit();
    };
    static_assert(k_mma_rows * 2 == 128 && k_mma_tokens * 4 == 128, "FIXED staging: 128 threads a block");
    auto stage_fixed = [&](int64_t c, int b) {
        // the thread's index read again each chunk: offsets formed from it once before the loop
        // would stay live through the products (106 registers against 96: a block fewer an SM)
        uint32_t t;
        asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
        uint8_t* wb = smem + b * St::buffer;
        uint8_t* ab = wb + k_mma_rows * St::w_stride;
        const int64_t start = c * St::chunk_bytes, cu = min(int64_t(8), U - 8 * c);
        const int64_t bytes = TYPE == k_q8_0 ? cu * 34 : TYPE == k_q4_0 ? cu * 18 : St::chunk_bytes;
        {
            const int r = int(t / 2), h = int(t % 2);
            const uint8_t* src = rows[r] + start;
            const uint8_t* g0 = reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(src) & ~uintptr_t(15));
            const uint8_t* end = src + bytes;
            uint8_t* dst = wb + r * St::w_stride;
#pragma unroll
            for (int m = 0; m < (St::granules + 1) / 2; ++m) {
                const int k = 2 * m + h;
                if (k < St::granules && g0 + 16 * k < end) __pipeline_memcpy_async(dst + 16 * k, g0 + 16 * k, 16);
            }
        }
        const int j = int(t / 4), q = int(t % 4);
        if (has(j)) {
            const int64_t c0 = 256 * c;
            const uint8_t* arow = toks[j];
            uint8_t* dst = ab + j * St::a_stride;
#pragma unroll
            for (int m = 0; m < 4; ++m) {
                const int k = 4 * m + q;
                if (k < 2 * cu) __pipeline_memcpy_async(dst + 16 * k, arow + c0 + 16 * k, 16);
            }
            if constexpr (St::act == k_q8_k) {
                if (q < 2)
                    __pipeline_memcpy_async(dst + 256 + 16 * q, arow + act_sums_at(n) + 2 * (c0 / 16) + 16 * q, 16);
                else if (q == 2)
                    __pipeline_memcpy_async(dst + act_scales_at(k_q8_k, 256),
                                            arow + act_scales_at(k_q8_k, n) + 4 * (c0 / 256), 4);
            } else {
                for (int u = q; u < cu; u += 4) {
                    __pipeline_memcpy_async(dst + act_scales_at(k_q8_0, 256) + 4 * u,
                                            arow + act_scales_at(k_q8_0, n) + 4 * (8 * c + u), 4);
                    if (u % 2 == 0)
                        __pipeline_memcpy_async(dst + 256 + 2 * u, arow + act_sums_at(n) + 2 * (8 * c + u), 4);
                }
            }
        }
        __pipeline_commit();
    };
    auto stage_chunk = [&](int64_t c, int b) {
        if constexpr (FIXED)
            stage_fixed(c, b);
        else
            stage(c, b);
    };
    const uint8_t* feed[4];
    const uint8_t* out_of[4][2];
    stage_chunk(0, 0);
    for (int64_t c = 0; c < chunks; ++c) {
        const int b = int(c & 1);
        if (c + 1 < chunks) {
            stage_chunk(c + 1, b ^ 1);
            __pipeline_wait_prior(1);
        } else {
            __pipeline_wait_prior(0);
        }
        __syncthreads();
        uint8_t* wb = smem + b * St::buffer;
        uint8_t* ab = wb + k_mma_rows * St::w_stride;
        const int64_t start = c * St::chunk_bytes;
        const int r0 = warp * 16 + g, r1 = r0 + 8;
        const uint8_t* w0 = wb + r0 * St::w_stride + (reinterpret_cast<uintptr_t>(rows[r0] + start) & 15);
        const uint8_t* w1 = wb + r1 * St::w_stride + (reinterpret_cast<uintptr_t>(rows[r1] + start) & 15);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            feed[i] = has(8 * i + g) ? ab + (8 * i + g) * St::a_stride : nullptr;
            out_of[i][0] = has(8 * i + 2 * tq) ? ab + (8 * i + 2 * tq) * St::a_stride : nullptr;
            out_of[i][1] = has(8 * i + 2 * tq + 1) ? ab + (8 * i + 2 * tq + 1) * St::a_stride : nullptr;
        }
        const int64_t cu = min(int64_t(8), U - 8 * c);
        if constexpr (TYPE == k_q4_k || TYPE == k_q5_k) {  // a chunk is one super-block
            mma_sb<TYPE, St::a_stride>(w0, w1, ab, live, n_tiles, acc);
        } else if constexpr (TYPE == k_q6_k) {
            mma_sb_q6k<St::a_stride>(w0, w1, ab, live, n_tiles, acc);
        } else {
            for (int64_t u = 0; u < cu; ++u) mma_unit<TYPE>(w0, w1, u, feed, out_of, 256, n_tiles, acc);
        }
        __syncthreads();  // every warp is done with buffer b before the next chunk's copies go there
    }
}

}  // namespace

}  // namespace bigmoe::cuda
