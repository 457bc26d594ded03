// The KV cache's row layouts on the device: a row's bytes for each cache type, the writer that
// quantizes 32 values as quant/quants.cpp does (operation for operation, so a row has the same
// bytes on the GPU as on the CPU), and the reader of four elements with dequantize_row's
// arithmetic. Included by attention.cu only (internal linkage, as product_units.cuh).
#pragma once

#include <cuda_fp16.h>

#include <cstdint>

#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

// Bytes of `width` values of a cache row of type `type` (a multiple of 32 for the block types).
__host__ __device__ inline int64_t kv_row_bytes(int type, int64_t width) {
    switch (type) {
        case 0:
            return 4 * width;
        case 1:
        case 30:
            return 2 * width;
        case 8:
            return width / 32 * 34;
        case 2:
        case 20:
            return width / 32 * 18;
        case 3:
            return width / 32 * 20;
        case 6:
            return width / 32 * 22;
        default:  // 7: q5_1
            return width / 32 * 24;
    }
}

__constant__ int8_t c_iq4nl[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// f32 -> f16 bits, rounded to nearest even: core/fp16.h's f32_to_fp16 in integer operations.
__device__ uint16_t kv_fp16(float f) {
    const uint32_t x = __float_as_uint(f);
    const uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax >= 0x7f800000u) return uint16_t(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00);
    if (ax < 0x38800000u) {
        if (ax < 0x33000000u) return uint16_t(sign);
        const uint32_t e = ax >> 23, m = (ax & 0x7fffff) | 0x800000, shift = 126 - e;
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return uint16_t(sign | r);
    }
    uint32_t r = (ax >> 13) - (112u << 10);
    const uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return uint16_t(sign | r);
}

__device__ __forceinline__ void kv_put_half(uint8_t* p, float v) {
    const uint16_t h = kv_fp16(v);
    p[0] = uint8_t(h & 0xff);
    p[1] = uint8_t(h >> 8);
}

__device__ int iq4nl_nearest(float v) {
    int lo = 0;
    for (int k = 1; k < 16; ++k)
        if (v > 0.5f * float(c_iq4nl[k - 1] + c_iq4nl[k])) lo = k;
    return lo;
}

// A block's 32 levels: their low 4 bits as nibbles into qs (values j and j + 16 in byte j) and,
// for the 5-bit types, their fifth bits into the 32-bit mask at qh.
__device__ void kv_pack_levels(const uint8_t* q, uint8_t* qs, uint8_t* qh) {
    for (int j = 0; j < 16; ++j) qs[j] = uint8_t((q[j] & 15) | (q[j + 16] & 15) << 4);
    if (!qh) return;
    uint32_t h = 0;
    for (int j = 0; j < 32; ++j) h |= uint32_t(q[j] >> 4) << j;
    for (int k = 0; k < 4; ++k) qh[k] = uint8_t(h >> (8 * k));
}

// Writes n (<= 32) values as a cache of type t holds them, at element `off` of a row: the
// quantizers of quant/quants.cpp, operation for operation (no fused multiply-adds), so a row has
// the same bytes on the GPU as on the CPU.
__device__ void kv_write(uint8_t* row, int t, int64_t off, const float* x, int n) {
    if (t == 0) {
        for (int j = 0; j < n; ++j) reinterpret_cast<float*>(row)[off + j] = x[j];
        return;
    }
    if (t == 1) {
        for (int j = 0; j < n; ++j) reinterpret_cast<__half*>(row)[off + j] = __float2half_rn(x[j]);
        return;
    }
    if (t == 30) {
        for (int j = 0; j < n; ++j) {
            const uint32_t u = __float_as_uint(x[j]);
            reinterpret_cast<uint16_t*>(row)[off + j] = (u & 0x7fffffff) > 0x7f800000u
                                                            ? uint16_t((u >> 16) | 0x40)
                                                            : uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16);
        }
        return;
    }
    const int64_t b = off >> 5;
    float amax = 0, big = 0, lo = x[0], hi = x[0];  // big: the value of largest magnitude
    for (int j = 0; j < 32; ++j) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            big = x[j];
        }
        lo = fminf(lo, x[j]);
        hi = fmaxf(hi, x[j]);
    }
    uint8_t q[32];
    if (t == 8) {
        uint8_t* blk = row + b * 34;
        const float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
        kv_put_half(blk, __fdiv_rn(amax, 127.0f));
        for (int j = 0; j < 32; ++j) blk[2 + j] = uint8_t(int8_t(rintf(__fmul_rn(x[j], id))));
        return;
    }
    if (t == 2 || t == 6) {  // q4_0, q5_0: the largest magnitude at the grid's end
        const float levels = t == 2 ? 8.0f : 16.0f;
        const float d = __fdiv_rn(big, -levels);
        const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
        const int top = t == 2 ? 15 : 31;
        for (int j = 0; j < 32; ++j)
            q[j] = uint8_t(min(top, __float2int_rz(__fadd_rn(__fmul_rn(x[j], id), levels + 0.5f))));
        uint8_t* blk = row + b * (t == 2 ? 18 : 22);
        kv_put_half(blk, d);
        kv_pack_levels(q, blk + (t == 2 ? 2 : 6), t == 6 ? blk + 2 : nullptr);
        return;
    }
    if (t == 3 || t == 7) {  // q4_1, q5_1: levels spanning [min, max]
        const int top = t == 3 ? 15 : 31;
        const float d = __fdiv_rn(__fsub_rn(hi, lo), float(top));
        const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
        for (int j = 0; j < 32; ++j)
            q[j] = uint8_t(max(0, min(top, __float2int_rz(__fadd_rn(__fmul_rn(__fsub_rn(x[j], lo), id), 0.5f)))));
        uint8_t* blk = row + b * (t == 3 ? 20 : 24);
        kv_put_half(blk, d);
        kv_put_half(blk + 2, lo);
        kv_pack_levels(q, blk + (t == 3 ? 4 : 8), t == 7 ? blk + 4 : nullptr);
        return;
    }
    // iq4_nl: the scale search of quant/quants.cpp
    uint8_t best[32] = {};
    float best_d = 0;
    if (amax > 0) {
        double best_err = INFINITY;
        for (int tr = -9; tr <= 9; ++tr) {
            const float id = __fdiv_rn(float(c_iq4nl[0] + tr), big);
            double sxv = 0, svv = 0;
            for (int j = 0; j < 32; ++j) {
                q[j] = uint8_t(iq4nl_nearest(__fmul_rn(x[j], id)));
                const double v = c_iq4nl[q[j]];
                sxv = __dadd_rn(sxv, __dmul_rn(double(x[j]), v));
                svv = __dadd_rn(svv, __dmul_rn(v, v));
            }
            if (svv <= 0) continue;
            const float d = float(__ddiv_rn(sxv, svv));
            const double dq = double(__half2float(__ushort_as_half(kv_fp16(d))));
            double err = 0;
            for (int j = 0; j < 32; ++j) {
                const double e = __dsub_rn(double(x[j]), __dmul_rn(dq, double(c_iq4nl[q[j]])));
                err = __dadd_rn(err, __dmul_rn(e, e));
            }
            if (err < best_err) {
                best_err = err;
                best_d = d;
                for (int j = 0; j < 32; ++j) best[j] = q[j];
            }
        }
    }
    uint8_t* blk = row + b * 18;
    kv_put_half(blk, best_d);
    kv_pack_levels(best, blk + 2, nullptr);
}

// Four consecutive elements (off a multiple of 4) of a cache row of type t (the layouts of
// quant/dtype.h), with dequantize_row's arithmetic; a block of 32 elements never straddles them.
__device__ __forceinline__ float4 kv_load4(const uint8_t* row, int t, int64_t off) {
    if (t == 0) return *reinterpret_cast<const float4*>(row + 4 * off);
    if (t == 1 || t == 30) {
        const uint2 u = *reinterpret_cast<const uint2*>(row + 2 * off);
        if (t == 1) {
            const float2 lo = __half22float2(*reinterpret_cast<const __half2*>(&u.x)),
                         hi = __half22float2(*reinterpret_cast<const __half2*>(&u.y));
            return make_float4(lo.x, lo.y, hi.x, hi.y);
        }
        return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                           __uint_as_float(u.y & 0xffff0000u));
    }
    const int64_t b = off >> 5;
    const int i = int(off & 31);
    // the four quants' low nibbles (or high, past 16) from the packed bytes at qs
    auto nibbles = [i](uint32_t w) { return i < 16 ? w & 0x0f0f0f0fu : (w >> 4) & 0x0f0f0f0fu; };
    auto fifths = [i](uint32_t qh) { return qh >> i; };  // bit j: element i + j's fifth bit
    float v[4];
    switch (t) {
        case 8: {
            const uint8_t* blk = row + b * 34;
            const float d = half_bits(load_u16(blk));
            const uint32_t w = uint32_t(load_i32_a2(blk + 2 + i));
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = float(int8_t(w >> (8 * j))) * d;
            break;
        }
        case 2:
        case 20: {
            const uint8_t* blk = row + b * 18;
            const float d = half_bits(load_u16(blk));
            const uint32_t w = nibbles(uint32_t(load_i32_a2(blk + 2 + (i & 15))));
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int q = int(w >> (8 * j)) & 15;
                v[j] = t == 2 ? float(q - 8) * d : d * float(c_iq4nl[q]);
            }
            break;
        }
        case 3: {
            const uint8_t* blk = row + b * 20;
            const float d = half_bits(load_u16(blk)), m = half_bits(load_u16(blk + 2));
            const uint32_t w = nibbles(*reinterpret_cast<const uint32_t*>(blk + 4 + (i & 15)));
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = __fadd_rn(__fmul_rn(float(int(w >> (8 * j)) & 15), d), m);
            break;
        }
        case 6: {
            const uint8_t* blk = row + b * 22;
            const float d = half_bits(load_u16(blk));
            const uint32_t h = fifths(uint32_t(load_i32_a2(blk + 2)));
            const uint32_t w = nibbles(uint32_t(load_i32_a2(blk + 6 + (i & 15))));
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = float(((int(w >> (8 * j)) & 15) | (int((h >> j) & 1) << 4)) - 16) * d;
            break;
        }
        default: {  // 7: q5_1
            const uint8_t* blk = row + b * 24;
            const float d = half_bits(load_u16(blk)), m = half_bits(load_u16(blk + 2));
            const uint32_t h = fifths(*reinterpret_cast<const uint32_t*>(blk + 4));
            const uint32_t w = nibbles(*reinterpret_cast<const uint32_t*>(blk + 8 + (i & 15)));
#pragma unroll
            for (int j = 0; j < 4; ++j)
                v[j] = __fadd_rn(__fmul_rn(float((int(w >> (8 * j)) & 15) | (int((h >> j) & 1) << 4)), d), m);
            break;
        }
    }
    return make_float4(v[0], v[1], v[2], v[3]);
}

}  // namespace

}  // namespace bigmoe::cuda
