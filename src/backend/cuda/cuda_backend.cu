// The CUDA backend, first form: correct kernels for every op of the interface, one stream, no
// host synchronisation inside a forward pass except where the interface hands data back.
//
// Every kernel computes a token's (or a (token, head)'s) result in a fixed order of its own, so
// results do not depend on the batch a token comes in (bigmoe's batch invariance). Weights stay
// in their GGUF block layouts on the device and are decoded where they are read; activations are
// f32. The products read a weight row once per tile of tokens: right, and far from the memory
// bandwidth this GPU has (tuned kernels come next, measured against the reference engine).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_backend.h"

namespace bigmoe {

namespace {

// A failed CUDA call inside an op is a bug or a lost device: there is no way to carry on, so it
// stops the process with the call and the reason (allocations report failure instead).
void cuda_check(cudaError_t e, const char* what, const char* file, int line) {
    if (e == cudaSuccess) return;
    std::fprintf(stderr, "bigmoe: CUDA error %s (%s) in %s at %s:%d\n", cudaGetErrorName(e), cudaGetErrorString(e),
                 what, file, line);
    std::abort();
}
#define CU(x) cuda_check((x), #x, __FILE__, __LINE__)
#define CU_LAUNCHED() cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

// ---------------------------------------------------------------- device helpers

constexpr int k_f32 = 0, k_f16 = 1, k_q4_0 = 2, k_q8_0 = 8, k_q4_k = 12, k_q5_k = 13, k_q6_k = 14, k_bf16 = 30;

__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) {
    return uint16_t(p[0]) | uint16_t(uint16_t(p[1]) << 8);
}
__device__ __forceinline__ float half_bits(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K block (the 12-byte packing).
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Element i of a row of type `type`. The arithmetic is the reference dequantizer's, operation
// for operation and without fused multiply-adds (the _rn intrinsics), so values are bit-equal.
__device__ float dequant(int type, const uint8_t* row, int64_t i) {
    switch (type) {
        case k_f32:
            return reinterpret_cast<const float*>(row)[i];
        case k_f16:
            return half_bits(load_u16(row + 2 * i));
        case k_bf16:
            return __uint_as_float(uint32_t(load_u16(row + 2 * i)) << 16);
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

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float sigmoidf(float x) {
    return 1.0f / (1.0f + expf(-x));
}
__device__ __forceinline__ float siluf(float x) {
    return x / (1.0f + expf(-x));
}

// What a kernel needs of the batch: rows' positions and spans, and per (layer, span) the state.
struct SpanDev {
    int64_t first, n_tokens, pos0;
};
struct KvDev {
    void* k;
    void* v;
    int f16_k, f16_v;
    int64_t capacity;
};
struct RingDev {
    float* conv;
    float* ssm;
    int n_slots, head;
};

// ---------------------------------------------------------------- activations as the products see them
//
// As on the CPU (and in the reference engine), a quantized weight multiplies activations that
// were quantized first: Q8_0 blocks for Q4_0 / Q8_0 weights, Q8_K blocks for the K-quants, with
// integer sums inside a block. F16 / BF16 weights meet activations rounded to their precision.
// The quantizers and block products are the reference ones (quant/quants.cpp), operation for
// operation, so a block's contribution has the CPU reference's bits.

constexpr int k_q8_k = 15;
constexpr size_t k_q8_0_bytes = 34, k_q8_k_bytes = 292;  // {half d, 32 x int8}, {float d, 256 x int8, 16 x int16}

__host__ __device__ inline int act_type(int w) {
    return (w == k_q4_0 || w == k_q8_0) ? k_q8_0 : (w == k_q4_k || w == k_q5_k || w == k_q6_k) ? k_q8_k : w;
}
__host__ __device__ inline bool act_quantized(int at) {
    return at == k_q8_0 || at == k_q8_k;
}
// Bytes of one activation row of n values (float rows for the float types).
inline size_t act_row_bytes(int at, int64_t n) {
    return at == k_q8_0 ? size_t(n / 32) * k_q8_0_bytes : at == k_q8_k ? size_t(n / 256) * k_q8_k_bytes : size_t(n) * 4;
}

__device__ __forceinline__ float round_bf16(float f) {
    uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return __uint_as_float(((u >> 16) | 0x40) << 16);
    return __uint_as_float(((u + 0x7fffu + ((u >> 16) & 1)) >> 16) << 16);
}

// One warp per quantization block (or per 32 values of a float row): rows x blocks.
__global__ void k_quantize_act(int at, const float* x, int64_t xs, int64_t n, uint8_t* dst, size_t drb) {
    const int lane = threadIdx.x % 32;
    const int64_t t = blockIdx.y;
    const int64_t blk = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const float* xr = x + t * xs;
    uint8_t* row = dst + size_t(t) * drb;
    if (at == k_q8_0) {
        if (blk >= n / 32) return;
        const float v = xr[blk * 32 + lane];
        float amax = fabsf(v);
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float d = __fdiv_rn(amax, 127.0f);
        const float id = amax != 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
        uint8_t* b = row + size_t(blk) * k_q8_0_bytes;  // 34-byte blocks: 2-byte aligned
        if (lane == 0) *reinterpret_cast<uint16_t*>(b) = __half_as_ushort(__float2half_rn(d));
        b[2 + lane] = uint8_t(int8_t(rintf(__fmul_rn(v, id))));
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
        uint8_t* b = row + size_t(blk) * k_q8_k_bytes;
        int8_t* qs = reinterpret_cast<int8_t*>(b + 4);
        int16_t* bsums = reinterpret_cast<int16_t*>(b + 260);
        if (amax == 0.0f) {
            for (int k = 0; k < 8; ++k) qs[lane + 32 * k] = 0;
            if (lane < 16) bsums[lane] = 0;
            if (lane == 0) *reinterpret_cast<float*>(b) = 0.0f;
            return;
        }
        const float iscale = __fdiv_rn(-127.0f, xb[at_i]);
        for (int k = 0; k < 8; ++k) {
            const int i = lane + 32 * k;
            const int v = min(127, int(rintf(__fmul_rn(iscale, xb[i]))));
            qs[i] = int8_t(v);
            // element i is in group i / 16 = 2k + (lane >= 16): sum over each half-warp
            int s = v;
            for (int o = 8; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            if (lane == 0) bsums[2 * k] = int16_t(s);
            if (lane == 16) bsums[2 * k + 1] = int16_t(s);
        }
        if (lane == 0) *reinterpret_cast<float*>(b) = __fdiv_rn(1.0f, iscale);
    } else {
        const int64_t i = blk * 32 + lane;
        if (i >= n) return;
        const float v = xr[i];
        reinterpret_cast<float*>(row)[i] = at == k_f16    ? __half2float(__float2half_rn(v))
                                           : at == k_bf16 ? round_bf16(v)
                                                          : v;
    }
}

// The contribution of Q4_0 / Q8_0 weight block b of a row to its dot product with a Q8_0
// activation row, as vec_dot_ref adds it.
__device__ float block_dot(int type, const uint8_t* w, const uint8_t* a, int64_t b) {
    switch (type) {
        case k_q4_0: {
            const uint8_t* x = w + b * 18;
            const uint8_t* y = a + b * k_q8_0_bytes;
            const int8_t* yq = reinterpret_cast<const int8_t*>(y + 2);
            int acc = 0;
            for (int j = 0; j < 16; ++j) acc += ((x[2 + j] & 0xF) - 8) * yq[j] + ((x[2 + j] >> 4) - 8) * yq[j + 16];
            return __fmul_rn(__fmul_rn(float(acc), half_bits(load_u16(x))), half_bits(load_u16(y)));
        }
        case k_q8_0: {
            const uint8_t* x = w + b * 34;
            const uint8_t* y = a + b * k_q8_0_bytes;
            const int8_t* xq = reinterpret_cast<const int8_t*>(x + 2);
            const int8_t* yq = reinterpret_cast<const int8_t*>(y + 2);
            int acc = 0;
            for (int j = 0; j < 32; ++j) acc += xq[j] * yq[j];
            return __fmul_rn(float(acc), __fmul_rn(half_bits(load_u16(x)), half_bits(load_u16(y))));
        }
        default:
            return __int_as_float(0x7fc00000);
    }
}

// The contribution of the 32 values [32 u, 32 u + 32) of a K-quant row (sub-block u % 8 of
// block u / 8): its integer sum times the sub-block's scale, less its share of the mins.
__device__ float kquant_unit_dot(int type, const uint8_t* w, const uint8_t* a, int64_t u) {
    const int64_t b = u / 8;
    const int j = int(u % 8);
    const uint8_t* y = a + b * k_q8_k_bytes;
    const float yd = *reinterpret_cast<const float*>(y);
    const int8_t* yq = reinterpret_cast<const int8_t*>(y + 4) + 32 * j;
    if (type == k_q6_k) {
        const uint8_t* x = w + b * 210;
        const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
        const int n = j / 4, quarter = j % 4;  // values 32 j .. : half n, quarter of it
        const uint8_t* L = x + 64 * n + (quarter & 1) * 32;
        const uint8_t* H = x + 128 + 32 * n;
        int s0 = 0, s1 = 0;
        for (int l = 0; l < 32; ++l) {
            const int lo = quarter < 2 ? (L[l] & 0x0F) : (L[l] >> 4);
            const int q = (lo | (((H[l] >> (2 * quarter)) & 3) << 4)) - 32;
            (l < 16 ? s0 : s1) += q * yq[l];
        }
        const int S = s0 * sc[2 * j] + s1 * sc[2 * j + 1];
        return __fmul_rn(__fmul_rn(half_bits(load_u16(x + 208)), yd), float(S));
    }
    const bool five = type == k_q5_k;
    const uint8_t* x = w + b * (five ? 176 : 144);
    int sc, m;
    scale_min_k4(j, x + 4, &sc, &m);
    const uint8_t* q = x + (five ? 48 : 16) + 32 * (j / 2);
    int s = 0;
    for (int l = 0; l < 32; ++l) {
        int v = (j & 1) ? (q[l] >> 4) : (q[l] & 0xF);
        if (five) v += 16 * ((x[16 + l] >> j) & 1);
        s += v * yq[l];
    }
    const int16_t* bsums = reinterpret_cast<const int16_t*>(y + 260);
    const int M = (bsums[2 * j] + bsums[2 * j + 1]) * m;
    const float d = half_bits(load_u16(x)), dmin = half_bits(load_u16(x + 2));
    return __fsub_rn(__fmul_rn(__fmul_rn(d, yd), float(s * sc)), __fmul_rn(__fmul_rn(dmin, yd), float(M)));
}

// One lane's share of dot(weight row, activation row): Q4_0 / Q8_0 blocks, K-quant sub-blocks of
// 32 values (so every lane works on rows of a few blocks), every 32nd value for the float types.
__device__ __forceinline__ float lane_dot(int type, const uint8_t* wrow, const uint8_t* arow, int64_t n, int lane) {
    float acc = 0;
    if (type == k_q4_k || type == k_q5_k || type == k_q6_k) {
        for (int64_t u = lane; u < n / 32; u += 32) acc += kquant_unit_dot(type, wrow, arow, u);
    } else if (act_quantized(act_type(type))) {
        for (int64_t b = lane; b < n / 32; b += 32) acc += block_dot(type, wrow, arow, b);
    } else {
        const float* a = reinterpret_cast<const float*>(arow);
        for (int64_t i = lane; i < n; i += 32) acc = fmaf(dequant(type, wrow, i), a[i], acc);
    }
    return acc;
}

// ---------------------------------------------------------------- kernels

__global__ void k_get_rows(int type, const uint8_t* w, size_t row_bytes, const int32_t* ids, int64_t n_cols, float* out,
                           int64_t os) {
    const int64_t t = blockIdx.x;
    const uint8_t* row = w + size_t(ids[t]) * row_bytes;
    for (int64_t i = threadIdx.x; i < n_cols; i += blockDim.x) out[t * os + i] = dequant(type, row, i);
}

// out[t][r] = dot(w row r, activation row t): a warp per output row and tile of up to 8 tokens;
// each lane adds its share, then the warp adds the lanes (the same order for any batch).
constexpr int k_tok_tile = 8;
__global__ void k_matmul(int type, const uint8_t* w, size_t row_bytes, int64_t n_in, int64_t n_out, const uint8_t* act,
                         size_t arb, int64_t T, float* out, int64_t os) {
    const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= n_out) return;
    const int64_t t0 = int64_t(blockIdx.y) * k_tok_tile;
    const int nt = int(T - t0 < k_tok_tile ? T - t0 : int64_t(k_tok_tile));
    const uint8_t* row = w + size_t(r) * row_bytes;
    for (int j = 0; j < nt; ++j) {
        const float s = warp_sum(lane_dot(type, row, act + size_t(t0 + j) * arb, n_in, lane));
        if (lane == 0) out[(t0 + j) * os + r] = s;
    }
}

// The sum of every thread's v over the block (a multiple of 32 threads), returned to all of them;
// `part` holds 32 values of shared memory.
template <class T>
__device__ T block_sum(T v, T* part) {
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        T w = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : T(0);
        w = warp_sum(w);
        if (threadIdx.x == 0) part[0] = w;
    }
    __syncthreads();
    return part[0];
}

// RMS norm of each group of g columns: a block per (row, group), the sum of squares in double.
__global__ void k_rms_norm(const float* x, int64_t xs, const float* w, int64_t g, float eps, float* out, int64_t os) {
    const int64_t t = blockIdx.x, c0 = int64_t(blockIdx.y) * g;
    const float* xr = x + t * xs + c0;
    double s = 0;
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x) s += double(xr[i]) * double(xr[i]);
    __shared__ double part[32];
    const float scale = 1.0f / sqrtf(float(block_sum(s, part) / double(g)) + eps);
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x) out[t * os + c0 + i] = (xr[i] * scale) * w[i];
}

enum class Ew { add, swiglu, mul_sigmoid };
template <Ew op>
__global__ void k_elementwise(const float* a, int64_t as, const float* b, int64_t bs, float* out, int64_t os,
                              int64_t rows, int64_t cols) {
    const int64_t n = rows * cols;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / cols, c = i % cols;
        const float x = a[t * as + c], y = b[t * bs + c];
        float r;
        if constexpr (op == Ew::add)
            r = x + y;
        else if constexpr (op == Ew::swiglu)
            r = siluf(x) * y;
        else
            r = x * sigmoidf(y);
        out[t * os + c] = r;
    }
}

__global__ void k_gather_cols(const float* x, int64_t xs, int64_t group, int64_t offset, int64_t width, float* out,
                              int64_t os, int64_t rows, int64_t out_cols) {
    const int64_t n = rows * out_cols;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / out_cols, c = i % out_cols, g = c / width;
        out[t * os + c] = x[t * xs + g * group + offset + c % width];
    }
}

// out[t] = a[t] + sigmoid(dot(gv, f[t])) * b[t]: a block per row.
__global__ void k_add_gated(const float* a, int64_t as, const float* b, int64_t bs, const float* gv, const float* f,
                            int64_t fs, int64_t fc, float* out, int64_t os, int64_t cols) {
    const int64_t t = blockIdx.x;
    float s = 0;
    for (int64_t i = threadIdx.x; i < fc; i += blockDim.x) s += gv[i] * f[t * fs + i];
    __shared__ float part[32];
    const float g = sigmoidf(block_sum(s, part));
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) out[t * os + i] = a[t * as + i] + b[t * bs + i] * g;
}

// NeoX RoPE in place: a thread per (row, head, rotated pair); angles as the CPU forms them (the
// position times theta_scale, multiplied once per pair index).
__global__ void k_rope(float* x, int64_t xs, int64_t rows, int64_t n_heads, int64_t head_dim, int64_t half,
                       float theta_scale, const int64_t* pos) {
    const int64_t n = rows * n_heads * half;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / (n_heads * half), h = (i / half) % n_heads, j = i % half;
        float th = float(pos[t]);
        for (int64_t k = 0; k < j; ++k) th *= theta_scale;
        float* v = x + t * xs + h * head_dim;
        const float c = cosf(th), s = sinf(th), a = v[j], b = v[j + half];
        v[j] = a * c - b * s;
        v[j + half] = a * s + b * c;
    }
}

// Stores the batch's k and v rows into each span's cache block at their positions.
__global__ void k_kv_store(const float* k, int64_t ks, const float* v, int64_t vs, int64_t width, int64_t rows,
                           const int64_t* pos, const int32_t* row_span, const KvDev* kv) {
    const int64_t n = rows * width;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / width, c = i % width;
        const int32_t s = row_span[t];
        if (s < 0) continue;
        const KvDev& b = kv[s];
        const int64_t at = pos[t] * width + c;
        const float kk = k[t * ks + c], vv = v[t * vs + c];
        if (b.f16_k)
            static_cast<__half*>(b.k)[at] = __float2half_rn(kk);
        else
            static_cast<float*>(b.k)[at] = kk;
        if (b.f16_v)
            static_cast<__half*>(b.v)[at] = __float2half_rn(vv);
        else
            static_cast<float*>(b.v)[at] = vv;
    }
}

// Causal attention for one (row, query head): 4 warps take every 4th key from position 0 to the
// row's own; each warp keeps an online softmax (its maximum, mass and weighted values, d split
// over the lanes), and the four are merged in warp order. The query is rounded to the K cache's
// precision, as on the CPU.
constexpr int k_att_warps = 4, k_att_max_d = 256;
__global__ void k_attention(const float* q, int64_t qs, int64_t n_head, int64_t group, int64_t D, float scale,
                            const int64_t* pos, const int32_t* row_span, const KvDev* kv, float* out, int64_t os) {
    const int64_t t = blockIdx.x, h = blockIdx.y;
    const int32_t s = row_span[t];
    if (s < 0) return;
    const KvDev b = kv[s];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t width = n_head / group * D, kvh = h / group;
    constexpr int per_max = k_att_max_d / 32;
    const int per = int((D + 31) / 32);
    float qv[per_max], acc[per_max];
#pragma unroll
    for (int e = 0; e < per_max; ++e) {
        const int64_t d = lane + 32 * e;
        float x = e < per && d < D ? q[t * qs + h * D + d] : 0.0f;
        if (b.f16_k) x = __half2float(__float2half_rn(x));
        qv[e] = x;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int64_t n_keys = pos[t] + 1;
    for (int64_t j = warp; j < n_keys; j += k_att_warps) {
        float dot = 0;
#pragma unroll
        for (int e = 0; e < per_max; ++e) {
            const int64_t d = lane + 32 * e;
            if (e < per && d < D) {
                const int64_t at = j * width + kvh * D + d;
                const float kk =
                    b.f16_k ? __half2float(static_cast<const __half*>(b.k)[at]) : static_cast<const float*>(b.k)[at];
                dot = fmaf(qv[e], kk, dot);
            }
        }
        const float sc = warp_sum(dot) * scale;
        const float nm = fmaxf(m, sc);
        const float corr = expf(m - nm), p = expf(sc - nm);
        l = l * corr + p;
#pragma unroll
        for (int e = 0; e < per_max; ++e) {
            const int64_t d = lane + 32 * e;
            if (e < per && d < D) {
                const int64_t at = j * width + kvh * D + d;
                const float vv =
                    b.f16_v ? __half2float(static_cast<const __half*>(b.v)[at]) : static_cast<const float*>(b.v)[at];
                acc[e] = fmaf(p, vv, acc[e] * corr);
            }
        }
        m = nm;
    }
    __shared__ float sm[k_att_warps], sl[k_att_warps], sacc[k_att_warps][k_att_max_d];
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < per_max; ++e) {
        const int64_t d = lane + 32 * e;
        if (e < per && d < D) sacc[warp][d] = acc[e];
    }
    __syncthreads();
    if (warp != 0) return;
    float M = -INFINITY;
    for (int w = 0; w < k_att_warps; ++w) M = fmaxf(M, sm[w]);
    float L = 0;
    float f[k_att_warps];
    for (int w = 0; w < k_att_warps; ++w) {
        f[w] = sl[w] > 0 ? expf(sm[w] - M) : 0.0f;
        L += sl[w] * f[w];
    }
    const float inv = 1.0f / L;
    for (int64_t d = lane; d < D; d += 32) {
        float a = 0;
        for (int w = 0; w < k_att_warps; ++w) a += sacc[w][d] * f[w];
        out[t * os + h * D + d] = a * inv;
    }
}

// Routing: softmax over the experts, the top K (ties to the lower id), weights renormalised over
// them; a thread per token, in the CPU's order of operations.
__global__ void k_route(const float* z, int64_t zs, int64_t T, int64_t E, int64_t K, int32_t* ids, float* wts,
                        float* p_work) {
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= T) return;
    const float* zr = z + t * zs;
    float* p = p_work + t * E;
    float mx = zr[0];
    for (int64_t e = 1; e < E; ++e) mx = fmaxf(mx, zr[e]);
    double sum = 0;
    for (int64_t e = 0; e < E; ++e) {
        p[e] = expf(zr[e] - mx);
        sum += p[e];
    }
    const float inv = float(1.0 / sum);
    for (int64_t e = 0; e < E; ++e) p[e] *= inv;
    float wsum = 0;
    for (int64_t k = 0; k < K; ++k) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; ++e) {
            bool taken = false;
            for (int64_t j = 0; j < k; ++j) taken |= ids[t * K + j] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        ids[t * K + k] = int32_t(best);
        wsum += p[best];
    }
    wsum = fmaxf(wsum, 6.103515625e-5f);
    for (int64_t k = 0; k < K; ++k) wts[t * K + k] = p[ids[t * K + k]] / wsum;
}

// h[s][f] = silu(x[t] . gate_e row f) * (x[t] . up_e row f) for slot s = (t, k): a warp per f,
// on token t's activation rows for the gate's and the up's types.
__global__ void k_moe_gate_up(int tg, const uint8_t* wg, size_t rbg, size_t ebg, int tu, const uint8_t* wu, size_t rbu,
                              size_t ebu, int64_t up_off, int64_t N, int64_t F, int64_t K, const uint8_t* ag,
                              size_t agb, const uint8_t* au, size_t aub, const int32_t* ids, float* h, int64_t hs) {
    const int64_t f = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (f >= F) return;
    const int64_t s = blockIdx.y, t = s / K;
    const int64_t e = ids[s];
    const uint8_t* rg = wg + size_t(e) * ebg + size_t(f) * rbg;
    const uint8_t* ru = wu + size_t(e) * ebu + size_t(up_off + f) * rbu;
    const float g = warp_sum(lane_dot(tg, rg, ag + size_t(t) * agb, N, lane));
    const float u = warp_sum(lane_dot(tu, ru, au + size_t(t) * aub, N, lane));
    if (lane == 0) h[s * hs + f] = siluf(g) * u;
}

// y[s][n] = h[s] . down_e row n: a warp per n, on slot s's activation row.
__global__ void k_moe_down(int td, const uint8_t* wd, size_t rbd, size_t ebd, int64_t N, int64_t F, const int32_t* ids,
                           const uint8_t* ah, size_t ahb, float* y, int64_t ys) {
    const int64_t n = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (n >= N) return;
    const int64_t s = blockIdx.y, e = ids[s];
    const uint8_t* rd = wd + size_t(e) * ebd + size_t(n) * rbd;
    const float acc = warp_sum(lane_dot(td, rd, ah + size_t(s) * ahb, F, lane));
    if (lane == 0) y[s * ys + n] = acc;
}

// out[t] = sum over k, in top-k order, of w[t][k] * y[(t, k)].
__global__ void k_moe_sum(const float* y, int64_t ys, const float* wts, int64_t T, int64_t K, int64_t N, float* out,
                          int64_t os) {
    const int64_t n_all = T * N;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_all; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / N, c = i % N;
        float o = y[(t * K) * ys + c] * wts[t * K];
        for (int64_t k = 1; k < K; ++k) o += y[(t * K + k) * ys + c] * wts[t * K + k];
        out[t * os + c] = o;
    }
}

__device__ __forceinline__ int ring_slot(const RingDev& r, int64_t i) {
    return int((r.head + i) % r.n_slots);
}

// Depthwise causal conv + SiLU: a thread per (span, channel) runs the span's tokens in order,
// its window of the last K-1 inputs in registers; the last n_slots states go to the ring.
constexpr int k_conv_max = 8;
__global__ void k_ssm_conv(const float* x, int64_t xs, const float* w, int64_t C, int64_t K, const SpanDev* spans,
                           int64_t n_spans, const RingDev* rings, float* out, int64_t os) {
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i >= n_spans * C) return;
    const int64_t si = i / C, c = i % C, S = K - 1;
    const SpanDev sp = spans[si];
    const RingDev r = rings[si];
    const size_t slot_floats = size_t(C * S);
    float win[k_conv_max];
    const float* st = r.conv + size_t(ring_slot(r, 0)) * slot_floats + c * S;
#pragma unroll
    for (int j = 0; j < k_conv_max; ++j) win[j] = j < S ? st[j] : 0.0f;
    const float* wc = w + c * K;
    for (int64_t t = 0; t < sp.n_tokens; ++t) {
        const float xv = x[(sp.first + t) * xs + c];
        float y = 0;
#pragma unroll
        for (int j = 0; j < k_conv_max; ++j)
            if (j < S) y += wc[j] * win[j];
        y += wc[S] * xv;
        out[(sp.first + t) * os + c] = siluf(y);
#pragma unroll
        for (int j = 0; j + 1 < k_conv_max; ++j)
            if (j + 1 < S) win[j] = win[j + 1];
#pragma unroll
        for (int j = 0; j < k_conv_max; ++j)
            if (j == S - 1) win[j] = xv;
        if (t >= sp.n_tokens - r.n_slots) {
            float* dst = r.conv + size_t(ring_slot(r, t + 1)) * slot_floats + c * S;
#pragma unroll
            for (int j = 0; j < k_conv_max; ++j)
                if (j < S) dst[j] = win[j];
        }
    }
}

// x / max(||x||, eps) for each head of dk values of the first 2 * Hk heads (Q then K) of u's
// rows: a warp per (row, head).
__global__ void k_l2_heads(const float* u, int64_t us, int64_t rows, int64_t n_heads, int64_t dk, float eps, float* dst,
                           int64_t ds) {
    const int64_t wi = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (wi >= rows * n_heads) return;
    const int64_t t = wi / n_heads, h = wi % n_heads;
    const float* src = u + t * us + h * dk;
    double s = 0;
    for (int64_t i = lane; i < dk; i += 32) s += double(src[i]) * double(src[i]);
    s = warp_sum(s);
    const float scale = 1.0f / fmaxf(sqrtf(float(s)), eps);
    for (int64_t i = lane; i < dk; i += 32) dst[t * ds + h * dk + i] = src[i] * scale;
}

// The Gated DeltaNet recurrence for one (span, V head): a thread per value channel c holds
// column c of the state, kept in shared memory as [key][channel] (consecutive threads, consecutive
// banks); tokens run in order, the arithmetic of the CPU's gdn_step.
__global__ void k_gdn(const float* qn, const float* kn, int64_t ns, const float* u, int64_t us, const float* beta,
                      int64_t bs, const float* alpha, int64_t as, const float* dt_bias, const float* ssm_a, int64_t Hk,
                      int64_t Hv, int64_t dk, int64_t dv, float q_scale, const SpanDev* spans, const RingDev* rings,
                      float* out, int64_t os) {
    extern __shared__ float smem[];
    float* S = smem;             // [dk][dv]
    float* kq = smem + dk * dv;  // k then q of the token, dk each
    const int64_t si = blockIdx.x / Hv, h = blockIdx.x % Hv;
    const SpanDev sp = spans[si];
    const RingDev r = rings[si];
    const int c = threadIdx.x;
    const size_t head_floats = size_t(dv * dk), slot_floats = size_t(Hv) * head_floats;
    const int64_t j = h % Hk, key_dim = Hk * dk;
    const float* src = r.ssm + size_t(ring_slot(r, 0)) * slot_floats + size_t(h) * head_floats;
    if (c < dv)
        for (int64_t x = 0; x < dk; ++x) S[x * dv + c] = src[c * dk + x];
    for (int64_t t = 0; t < sp.n_tokens; ++t) {
        const int64_t row = sp.first + t;
        __syncthreads();
        for (int64_t x = threadIdx.x; x < dk; x += blockDim.x) {
            kq[x] = kn[row * ns + j * dk + x];
            kq[dk + x] = qn[row * ns + j * dk + x];
        }
        __syncthreads();
        if (c < dv) {
            const float a = alpha[row * as + h] + dt_bias[h];
            const float sp_a = a > 20.0f ? a : logf(1.0f + expf(a));
            const float decay = expf(sp_a * ssm_a[h]);
            const float b = sigmoidf(beta[row * bs + h]);
            float pred = 0;
            for (int64_t x = 0; x < dk; ++x) {
                const float w = S[x * dv + c] * decay;
                S[x * dv + c] = w;
                pred += w * kq[x];
            }
            const float delta = b * (u[row * us + 2 * key_dim + h * dv + c] - pred);
            float acc = 0;
            for (int64_t x = 0; x < dk; ++x) {
                const float w = S[x * dv + c] + kq[x] * delta;
                S[x * dv + c] = w;
                acc += w * kq[dk + x];
            }
            out[row * os + h * dv + c] = acc * q_scale;
            if (t >= sp.n_tokens - r.n_slots) {
                float* dst = r.ssm + size_t(ring_slot(r, t + 1)) * slot_floats + size_t(h) * head_floats;
                for (int64_t x = 0; x < dk; ++x) dst[c * dk + x] = S[x * dv + c];
            }
        }
    }
}

int blocks_for(int64_t n, int threads) {
    return int(std::clamp<int64_t>((n + threads - 1) / threads, 1, 65535));
}

// ---------------------------------------------------------------- the backend

class CudaBackend final : public Backend {
  public:
    explicit CudaBackend(int device) : arena_(*this) {
        CU(cudaSetDevice(device));
        CU(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        cudaDeviceProp prop{};
        CU(cudaGetDeviceProperties(&prop, device));
        name_ = prop.name;
        smem_optin_ = int(prop.sharedMemPerBlockOptin);
        CU(cudaFuncSetAttribute(k_gdn, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_optin_));
    }
    ~CudaBackend() override {
        cudaStreamSynchronize(stream_);
        arena_.release();
        for (void* p : weights_) cudaFree(p);
        cudaFree(batch_dev_);
        cudaFreeHost(staging_);
        cudaStreamDestroy(stream_);
    }

    std::string name() const override { return "CUDA"; }
    std::string device_name() const override { return name_; }
    int n_threads() const override { return 1; }
    bool supports(Op op, DType t) const override {
        if (op == Op::attention) return t == DType::F32 || t == DType::F16;
        switch (t) {
            case DType::F32:
            case DType::F16:
            case DType::BF16:
            case DType::Q4_0:
            case DType::Q8_0:
            case DType::Q4_K:
            case DType::Q5_K:
            case DType::Q6_K:
                return true;
            default:
                return false;
        }
    }
    void annotate(const char*) override {}

    Result<void> prepare_weight(Weight& w) override {
        const size_t bytes = w.row_bytes * size_t(w.ne[1] * w.ne[2] * w.ne[3]);
        void* p = alloc(bytes);
        if (!p)
            return make_error("GPU memory is full: " + w.name() + " needs " + std::to_string(bytes >> 20) + " MiB, " +
                                  std::to_string(memory_available() >> 20) + " MiB are free",
                              ErrorKind::resource_exhausted);
        CU(cudaMemcpy(p, w.data, bytes, cudaMemcpyHostToDevice));
        weights_.push_back(p);
        w.backend_data = p;
        return {};
    }

    uint64_t memory_available() const override {
        size_t free = 0, total = 0;
        if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
        return free;
    }
    void* alloc(size_t bytes) override {
        void* p = nullptr;
        if (cudaMalloc(&p, std::max<size_t>(bytes, 1)) != cudaSuccess) {
            cudaGetLastError();  // an allocation failure is not sticky; callers report it
            return nullptr;
        }
        return p;
    }
    void dealloc(void* p) override {
        if (!p) return;
        CU(cudaStreamSynchronize(stream_));
        CU(cudaFree(p));
    }
    void upload(void* dst, const void* src, size_t bytes) override {
        CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
        CU(cudaStreamSynchronize(stream_));  // the caller's host buffer may go away at once
    }
    void download(void* dst, const void* src, size_t bytes) override {
        CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
        CU(cudaStreamSynchronize(stream_));
    }
    void copy(void* dst, const void* src, size_t bytes) override {
        CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
    }
    void fill_zero(void* dst, size_t bytes) override { CU(cudaMemsetAsync(dst, 0, bytes, stream_)); }
    void synchronize() override { CU(cudaStreamSynchronize(stream_)); }
    ScratchArena& scratch_arena() override { return arena_; }

    // Uploads the batch's positions, spans and per-layer state descriptors in one copy.
    void begin_batch(const BatchState& b) override {
        CU(cudaStreamSynchronize(stream_));  // the staging buffer's last copy has run
        n_spans_ = int64_t(b.spans.size());
        int64_t rows = 0;
        for (const SeqSpan& s : b.spans) rows = std::max(rows, s.first + s.n_tokens);
        n_rows_ = rows;
        const size_t n_layers = std::max(b.kv.size(), b.rs.size());
        std::vector<uint8_t> blob;
        auto put = [&](const void* p, size_t n) {
            const size_t at = (blob.size() + 15) / 16 * 16;
            blob.resize(at + n);
            if (n) std::memcpy(blob.data() + at, p, n);
            return at;
        };
        std::vector<int64_t> pos(size_t(rows), 0);
        std::vector<int32_t> row_span(size_t(rows), -1);
        std::vector<SpanDev> spans;
        for (size_t si = 0; si < b.spans.size(); ++si) {
            const SeqSpan& s = b.spans[si];
            spans.push_back({s.first, s.n_tokens, s.pos0});
            for (int64_t i = 0; i < s.n_tokens; ++i) {
                pos[size_t(s.first + i)] = s.pos0 + i;
                row_span[size_t(s.first + i)] = int32_t(si);
            }
        }
        off_pos_ = put(pos.data(), pos.size() * sizeof(int64_t));
        off_row_span_ = put(row_span.data(), row_span.size() * sizeof(int32_t));
        off_spans_ = put(spans.data(), spans.size() * sizeof(SpanDev));
        off_kv_.assign(n_layers, SIZE_MAX);
        off_rs_.assign(n_layers, SIZE_MAX);
        for (size_t il = 0; il < n_layers; ++il) {
            if (il < b.kv.size() && !b.kv[il].empty()) {
                std::vector<KvDev> kv;
                for (const KvBlock* k : b.kv[il])
                    kv.push_back({k->k, k->v, k->type_k == DType::F16, k->type_v == DType::F16, k->capacity});
                off_kv_[il] = put(kv.data(), kv.size() * sizeof(KvDev));
            }
            if (il < b.rs.size() && !b.rs[il].empty()) {
                std::vector<RingDev> rs;
                for (const RecurrentRing* r : b.rs[il]) rs.push_back({r->conv, r->ssm, r->n_slots, r->head});
                off_rs_[il] = put(rs.data(), rs.size() * sizeof(RingDev));
            }
        }
        if (blob.size() > staging_bytes_) {
            cudaFreeHost(staging_);
            cudaFree(batch_dev_);
            staging_bytes_ = blob.size() * 2 + (size_t(1) << 16);
            CU(cudaMallocHost(&staging_, staging_bytes_));
            CU(cudaMalloc(&batch_dev_, staging_bytes_));
        }
        std::memcpy(staging_, blob.data(), blob.size());
        blob_used_ = blob.size();
        CU(cudaMemcpyAsync(batch_dev_, staging_, blob.size(), cudaMemcpyHostToDevice, stream_));
    }

    void get_rows(const Weight& emb, const int32_t* ids, int64_t n, Tensor out) override {
        if (n == 0) return;
        // token ids ride in the staging buffer after the batch descriptors
        const size_t bytes = size_t(n) * sizeof(int32_t);
        int32_t* dev_ids = nullptr;
        if (blob_used_ + bytes + 16 <= staging_bytes_) {
            const size_t at = (blob_used_ + 15) / 16 * 16;
            std::memcpy(static_cast<uint8_t*>(staging_) + at, ids, bytes);
            dev_ids = reinterpret_cast<int32_t*>(static_cast<uint8_t*>(batch_dev_) + at);
            CU(cudaMemcpyAsync(dev_ids, static_cast<uint8_t*>(staging_) + at, bytes, cudaMemcpyHostToDevice, stream_));
            blob_used_ = at + bytes;
        } else {
            Tensor tmp = scratch(1, n);
            dev_ids = reinterpret_cast<int32_t*>(tmp.data);
            upload(dev_ids, ids, bytes);
        }
        k_get_rows<<<unsigned(n), 256, 0, stream_>>>(int(emb.type), wbytes(emb), emb.row_bytes, dev_ids, emb.n_in(),
                                                     out.data, out.stride);
        CU_LAUNCHED();
    }

    void rms_norm(Tensor x, const Weight& w, float eps, Tensor out) override {
        const int64_t g = w.n_in();
        if (x.rows == 0 || x.cols < g) return;
        dim3 grid(unsigned(x.rows), unsigned(x.cols / g));
        k_rms_norm<<<grid, 256, 0, stream_>>>(x.data, x.stride, wf32(w), g, eps, out.data, out.stride);
        CU_LAUNCHED();
    }

    void matmul(const Weight& w, Tensor x, Tensor out) override {
        if (x.rows == 0) return;
        const ScratchMark mark = scratch_mark();
        size_t arb = 0;
        const uint8_t* act = activations(int(w.type), x, &arb);
        const int64_t n_out = w.n_out();
        dim3 grid(unsigned((n_out * 32 + 255) / 256), unsigned((x.rows + k_tok_tile - 1) / k_tok_tile));
        k_matmul<<<grid, 256, 0, stream_>>>(int(w.type), wbytes(w), w.row_bytes, w.n_in(), n_out, act, arb, x.rows,
                                            out.data, out.stride);
        CU_LAUNCHED();
        scratch_rewind(mark);
    }

    void add(Tensor a, Tensor b, Tensor out) override { elementwise<Ew::add>(a, b, out); }
    void swiglu(Tensor gate, Tensor up, Tensor out) override { elementwise<Ew::swiglu>(gate, up, out); }
    void mul_sigmoid(Tensor x, Tensor gate, Tensor out) override { elementwise<Ew::mul_sigmoid>(x, gate, out); }

    void gather_cols(Tensor x, int64_t group, int64_t offset, int64_t width, Tensor out) override {
        const int64_t n = x.rows * out.cols;
        if (n == 0) return;
        k_gather_cols<<<blocks_for(n, 256), 256, 0, stream_>>>(x.data, x.stride, group, offset, width, out.data,
                                                               out.stride, x.rows, out.cols);
        CU_LAUNCHED();
    }

    void add_gated(Tensor a, Tensor b, const Weight& gate_vec, Tensor f, Tensor out) override {
        if (out.rows == 0) return;
        k_add_gated<<<unsigned(out.rows), 256, 0, stream_>>>(a.data, a.stride, b.data, b.stride, wf32(gate_vec), f.data,
                                                             f.stride, f.cols, out.data, out.stride, out.cols);
        CU_LAUNCHED();
    }

    void rope_neox(Tensor x, int64_t head_dim, int64_t n_rot, float theta) override {
        const int64_t rows = std::min(x.rows, n_rows_), half = n_rot / 2, heads = x.cols / head_dim;
        const int64_t n = rows * heads * half;
        if (n == 0) return;
        const float theta_scale = std::pow(theta, -2.0f / float(n_rot));
        k_rope<<<blocks_for(n, 256), 256, 0, stream_>>>(x.data, x.stride, rows, heads, head_dim, half, theta_scale,
                                                        dev<int64_t>(off_pos_));
        CU_LAUNCHED();
    }

    void attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) override {
        const int64_t width = p.n_head_kv * p.head_dim, rows = std::min(q.rows, n_rows_);
        if (rows == 0) return;
        if (p.head_dim > k_att_max_d) {
            std::fprintf(stderr, "bigmoe: CUDA attention takes head sizes up to %d, got %lld\n", k_att_max_d,
                         (long long)p.head_dim);
            std::abort();
        }
        const KvDev* kv = dev<KvDev>(off_kv_.at(size_t(il)));
        k_kv_store<<<blocks_for(rows * width, 256), 256, 0, stream_>>>(
            k.data, k.stride, v.data, v.stride, width, rows, dev<int64_t>(off_pos_), dev<int32_t>(off_row_span_), kv);
        CU_LAUNCHED();
        dim3 grid(unsigned(rows), unsigned(p.n_head));
        k_attention<<<grid, 32 * k_att_warps, 0, stream_>>>(q.data, q.stride, p.n_head, p.n_head / p.n_head_kv,
                                                            p.head_dim, p.scale, dev<int64_t>(off_pos_),
                                                            dev<int32_t>(off_row_span_), kv, out.data, out.stride);
        CU_LAUNCHED();
    }

    void moe(Tensor x, Tensor router_logits, const MoeWeights& m, Tensor out) override {
        const int64_t T = x.rows, K = m.n_expert_used, E = m.n_expert, F = m.n_ff, N = x.cols;
        if (T == 0) return;
        const ScratchMark mark = scratch_mark();
        Tensor ids_t = scratch(T, K), w_t = scratch(T, K), p_t = scratch(T, E);
        int32_t* ids = reinterpret_cast<int32_t*>(ids_t.data);  // T * K ints fit in the rows' floats
        k_route<<<blocks_for(T, 64), 64, 0, stream_>>>(router_logits.data, router_logits.stride, T, E, K, ids, w_t.data,
                                                       p_t.data);
        CU_LAUNCHED();
        // k_route writes ids and weights densely (t * K + k), not by scratch rows
        const Weight& wg = m.gate_up ? *m.gate_up : *m.gate;
        const Weight& wu = m.gate_up ? *m.gate_up : *m.up;
        const int64_t up_off = m.gate_up ? F : 0;
        Tensor h = scratch(T * K, F), y = scratch(T * K, N);
        size_t agb = 0, aub = 0, ahb = 0;
        const uint8_t* ag = activations(int(wg.type), x, &agb);
        const uint8_t* au = act_type(int(wu.type)) == act_type(int(wg.type)) ? ag : activations(int(wu.type), x, &aub);
        if (au == ag) aub = agb;
        dim3 g1(unsigned((F * 32 + 255) / 256), unsigned(T * K));
        k_moe_gate_up<<<g1, 256, 0, stream_>>>(int(wg.type), wbytes(wg), wg.row_bytes, wg.expert_bytes, int(wu.type),
                                               wbytes(wu), wu.row_bytes, wu.expert_bytes, up_off, N, F, K, ag, agb, au,
                                               aub, ids, h.data, h.stride);
        CU_LAUNCHED();
        const uint8_t* ah = activations(int(m.down->type), h, &ahb);
        dim3 g2(unsigned((N * 32 + 255) / 256), unsigned(T * K));
        k_moe_down<<<g2, 256, 0, stream_>>>(int(m.down->type), wbytes(*m.down), m.down->row_bytes, m.down->expert_bytes,
                                            N, F, ids, ah, ahb, y.data, y.stride);
        CU_LAUNCHED();
        k_moe_sum<<<blocks_for(T * N, 256), 256, 0, stream_>>>(y.data, y.stride, w_t.data, T, K, N, out.data,
                                                               out.stride);
        CU_LAUNCHED();
        scratch_rewind(mark);
    }

    void ssm_conv(Tensor mixed, const Weight& conv_w, const GdnParams& p, int64_t il, Tensor out) override {
        const int64_t C = mixed.cols, K = p.conv_kernel;
        if (K < 2 || K > k_conv_max || n_spans_ == 0) {
            if (n_spans_ == 0) return;
            std::fprintf(stderr, "bigmoe: CUDA conv takes kernels of 2 to %d, got %lld\n", k_conv_max, (long long)K);
            std::abort();
        }
        k_ssm_conv<<<blocks_for(n_spans_ * C, 128), 128, 0, stream_>>>(
            mixed.data, mixed.stride, wf32(conv_w), C, K, dev<SpanDev>(off_spans_), n_spans_,
            dev<RingDev>(off_rs_.at(size_t(il))), out.data, out.stride);
        CU_LAUNCHED();
    }

    void gated_delta_net(Tensor u, Tensor beta, Tensor alpha, const Weight& dt_bias, const Weight& ssm_a,
                         const GdnParams& p, int64_t il, Tensor out) override {
        const int64_t Hk = p.n_k_heads, Hv = p.n_v_heads, dk = p.d_k, dv = p.d_v, rows = std::min(u.rows, n_rows_);
        if (rows == 0 || n_spans_ == 0) return;
        const ScratchMark mark = scratch_mark();
        Tensor qk = scratch(rows, 2 * Hk * dk);  // [Q heads | K heads], L2-normalised
        k_l2_heads<<<blocks_for(rows * 2 * Hk * 32, 256), 256, 0, stream_>>>(u.data, u.stride, rows, 2 * Hk, dk, p.eps,
                                                                             qk.data, qk.stride);
        CU_LAUNCHED();
        const size_t smem = size_t(dk * dv + 2 * dk) * sizeof(float);
        if (smem > size_t(smem_optin_)) {
            std::fprintf(stderr, "bigmoe: CUDA Gated DeltaNet state of %lld x %lld does not fit in shared memory\n",
                         (long long)dk, (long long)dv);
            std::abort();
        }
        const int threads = int(std::max<int64_t>(32, (dv + 31) / 32 * 32));
        k_gdn<<<unsigned(n_spans_ * Hv), threads, smem, stream_>>>(
            qk.data, qk.data + Hk * dk, qk.stride, u.data, u.stride, beta.data, beta.stride, alpha.data, alpha.stride,
            wf32(dt_bias), wf32(ssm_a), Hk, Hv, dk, dv, 1.0f / std::sqrt(float(dk)), dev<SpanDev>(off_spans_),
            dev<RingDev>(off_rs_.at(size_t(il))), out.data, out.stride);
        CU_LAUNCHED();
        scratch_rewind(mark);
    }

  private:
    // x's rows as a product with weight type `wt` reads them (*arb bytes per row), in scratch.
    const uint8_t* activations(int wt, Tensor x, size_t* arb) {
        const int at = act_type(wt);
        if (at == k_f32) {
            *arb = size_t(x.stride) * 4;
            return reinterpret_cast<const uint8_t*>(x.data);
        }
        *arb = (act_row_bytes(at, x.cols) + 63) / 64 * 64;
        Tensor buf = scratch(x.rows, int64_t(*arb / 4));
        const int64_t warps = at == k_q8_0 ? x.cols / 32 : at == k_q8_k ? x.cols / 256 : (x.cols + 31) / 32;
        dim3 grid(unsigned((warps * 32 + 255) / 256), unsigned(x.rows));
        k_quantize_act<<<grid, 256, 0, stream_>>>(at, x.data, x.stride, x.cols, reinterpret_cast<uint8_t*>(buf.data),
                                                  size_t(buf.stride) * 4);
        CU_LAUNCHED();
        *arb = size_t(buf.stride) * 4;
        return reinterpret_cast<const uint8_t*>(buf.data);
    }
    template <Ew op>
    void elementwise(Tensor a, Tensor b, Tensor out) {
        const int64_t n = out.rows * out.cols;
        if (n == 0) return;
        k_elementwise<op><<<blocks_for(n, 256), 256, 0, stream_>>>(a.data, a.stride, b.data, b.stride, out.data,
                                                                   out.stride, out.rows, out.cols);
        CU_LAUNCHED();
    }
    static const uint8_t* wbytes(const Weight& w) { return static_cast<const uint8_t*>(w.backend_data); }
    static const float* wf32(const Weight& w) { return static_cast<const float*>(w.backend_data); }
    template <class T>
    const T* dev(size_t off) const {
        return reinterpret_cast<const T*>(static_cast<const uint8_t*>(batch_dev_) + off);
    }

    std::string name_;
    int smem_optin_ = 48 << 10;
    cudaStream_t stream_ = nullptr;
    ScratchArena arena_;
    std::vector<void*> weights_;
    // the batch's descriptors: pinned host staging and its device copy
    void* staging_ = nullptr;
    void* batch_dev_ = nullptr;
    size_t staging_bytes_ = 0, blob_used_ = 0;
    size_t off_pos_ = 0, off_row_span_ = 0, off_spans_ = 0;
    std::vector<size_t> off_kv_, off_rs_;
    int64_t n_spans_ = 0, n_rows_ = 0;
};

}  // namespace

bool cuda_built() {
    return true;
}

Result<CudaDeviceInfo> cuda_device_info(int device) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (e == cudaErrorNoDevice) return make_error("no CUDA device found", ErrorKind::unsupported);
        if (e == cudaErrorInsufficientDriver)
            return make_error("no NVIDIA driver new enough for this build's CUDA " +
                                  std::to_string(CUDART_VERSION / 1000) +
                                  " runtime is loaded (no GPU, or a driver missing or too old)",
                              ErrorKind::unsupported);
        return make_error(std::string("no usable CUDA device: ") + cudaGetErrorString(e), ErrorKind::unsupported);
    }
    if (n == 0) return make_error("no CUDA device found", ErrorKind::unsupported);
    if (device < 0 || device >= n)
        return make_error("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(n) + " found)",
                          ErrorKind::bad_input);
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess)
        return make_error("cannot read CUDA device " + std::to_string(device), ErrorKind::unsupported);
    CudaDeviceInfo info;
    info.name = prop.name;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.multiprocessors = prop.multiProcessorCount;
    info.total_bytes = prop.totalGlobalMem;
    if (cudaSetDevice(device) == cudaSuccess) {
        size_t free = 0, total = 0;
        if (cudaMemGetInfo(&free, &total) == cudaSuccess) info.free_bytes = free;
    }
    return info;
}

Result<std::unique_ptr<Backend>> make_cuda_backend(int device) {
    auto info = cuda_device_info(device);
    if (!info) return info.error();
    return std::unique_ptr<Backend>(new CudaBackend(device));
}

}  // namespace bigmoe
