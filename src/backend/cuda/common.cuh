// What every CUDA translation unit of the backend shares: error checks, the GGUF type ids the
// kernels switch on, the activation layouts the products read, small device helpers, and the
// batch descriptors kernels find in device memory.
#pragma once

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace bigmoe::cuda {

// A failed CUDA call inside an op is a bug or a lost device: there is no way to carry on, so it
// stops the process with the call and the reason (allocations report failure instead).
inline void check(cudaError_t e, const char* what, const char* file, int line) {
    if (e == cudaSuccess) return;
    std::fprintf(stderr, "bigmoe: CUDA error %s (%s) in %s at %s:%d\n", cudaGetErrorName(e), cudaGetErrorString(e),
                 what, file, line);
    std::abort();
}
#define CU(x) ::bigmoe::cuda::check((x), #x, __FILE__, __LINE__)
#define CU_LAUNCHED() ::bigmoe::cuda::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

inline unsigned blocks_for(int64_t n, int threads) {
    return unsigned(std::clamp<int64_t>((n + threads - 1) / threads, 1, 65535));
}

// GGUF type ids (quant/dtype.h's values).
constexpr int k_f32 = 0, k_f16 = 1, k_q4_0 = 2, k_q8_0 = 8, k_q4_k = 12, k_q5_k = 13, k_q6_k = 14, k_q8_k = 15,
              k_bf16 = 30;

// ---- activations as the products read them
//
// A quantized weight multiplies activations quantized first, as on the CPU and in the reference
// engine: Q8_0 values for Q4_0 / Q8_0 weights, Q8_K values for the K-quants, with the reference
// quantizers' values. The layout is this backend's own, arranged for wide aligned loads: a row of
// n values holds its n int8 quants first, then int16 sums of the quants (Q8_K: per 16 values,
// Q8_0: per block of 32), then one float scale per block (Q8_0: the half-precision scale,
// widened). Float weights meet float rows, rounded to the weight's precision.
__host__ __device__ inline int act_type(int w) {
    return (w == k_q4_0 || w == k_q8_0) ? k_q8_0 : (w == k_q4_k || w == k_q5_k || w == k_q6_k) ? k_q8_k : w;
}
__host__ __device__ inline bool act_quantized(int at) {
    return at == k_q8_0 || at == k_q8_k;
}
// Byte offsets inside an activation row of n values.
__host__ __device__ inline int64_t act_sums_at(int64_t n) {
    return n;
}
__host__ __device__ inline int64_t act_scales_at(int at, int64_t n) {
    return at == k_q8_k ? n + 2 * (n / 16) : (n + 2 * (n / 32) + 3) / 4 * 4;
}
// Bytes of one activation row of n values, rounded up to 64.
__host__ __device__ inline size_t act_row_bytes(int at, int64_t n) {
    const int64_t b = at == k_q8_0   ? act_scales_at(at, n) + 4 * (n / 32)
                      : at == k_q8_k ? act_scales_at(at, n) + 4 * (n / 256)
                                     : 4 * n;
    return size_t(b + 63) / 64 * 64;
}

// ---- device helpers

__device__ __forceinline__ uint16_t load_u16(const uint8_t* p) {
    return *reinterpret_cast<const uint16_t*>(p);
}
// Four bytes from a 2-byte aligned address (the blocks of 18, 34 and 210 bytes).
__device__ __forceinline__ int load_i32_a2(const uint8_t* p) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(p);
    return int(uint32_t(h[0]) | (uint32_t(h[1]) << 16));
}
__device__ __forceinline__ float half_bits(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
// The warp's largest / smallest int, in every lane: one instruction from sm_80 on.
__device__ __forceinline__ int warp_max_i32(int v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xffffffffu, v);
#else
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}
__device__ __forceinline__ int warp_min_i32(int v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    return __reduce_min_sync(0xffffffffu, v);
#else
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
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
// Four 8 x 8 tiles of 16-bit values, lane l giving the address of row l % 8 of tile l / 8; lane
// 4 r + c gets values 2 c and 2 c + 1 of row r of each (TRANS: of column r).
template <bool TRANS>
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(uint32_t(__cvta_generic_to_shared(p))));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(uint32_t(__cvta_generic_to_shared(p))));
#else
    r[0] = r[1] = r[2] = r[3] = 0;  // not reached: the host takes the tensor-core kernels on sm_80 and newer only
    (void)p;
#endif
}
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], const void* p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(uint32_t(__cvta_generic_to_shared(p))));
#else
    r[0] = r[1] = 0;
    (void)p;
#endif
}
// NeoX RoPE of the pair (j, j + half) of a head at angle th, without fused multiply-adds.
__device__ __forceinline__ void rope_rotate(float* v, int64_t j, int64_t half, float th) {
    const float c = cosf(th), s = sinf(th), x0 = v[j], x1 = v[j + half];
    v[j] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    v[j + half] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}
// The angle of pair j at position pos: pos times theta_scale, multiplied once per pair index (the
// CPU's order).
__device__ __forceinline__ float rope_angle(int64_t pos, int64_t j, float theta_scale) {
    float th = float(pos);
    for (int64_t k = 0; k < j; ++k) th *= theta_scale;
    return th;
}
__device__ __forceinline__ float sigmoidf(float x) {
    return 1.0f / (1.0f + expf(-x));
}
__device__ __forceinline__ float siluf(float x) {
    return x / (1.0f + expf(-x));
}
// sigmoid(dot(gv, f)) over n values, by the whole block: thread j adds the products j, j +
// blockDim.x, ... in order, then block_sum (the gated add's gate; `part` as block_sum's).
__device__ __forceinline__ float block_gate(const float* gv, const float* f, int64_t n, float* part) {
    float s = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += gv[i] * f[i];
    return sigmoidf(block_sum(s, part));
}

// ---- what a kernel needs of the batch: rows' positions and spans, and per (layer, span) the state
struct SpanDev {
    int64_t first, n_tokens, pos0;
};
// A sequence's KV block: any cache type (DType ids: 0 f32, 1 f16, 30 bf16, and the 32-element
// block types 2 q4_0, 3 q4_1, 6 q5_0, 7 q5_1, 8 q8_0, 20 iq4_nl).
struct KvDev {
    void* k;
    void* v;
    int type_k, type_v;
    int64_t capacity;
};
struct RingDev {
    float* conv;
    float* ssm;
    int n_slots, head;
};
__device__ __forceinline__ int ring_slot(const RingDev& r, int64_t i) {
    return int((r.head + i) % r.n_slots);
}

// ---- launches
//
// On sm_90 a kernel may launch while the one before it on the stream is still running
// (programmatic dependent launch): it starts as the blocks of the one before finish, and waits
// for all of them to finish and flush their writes before it reads or writes any activation or
// state. The next kernel's launch overlaps the previous one's tail: a decode step is hundreds of
// small kernels.
__device__ __forceinline__ void pdl_enter() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Whether launches ask for programmatic dependent launch (set once by the backend).
inline bool g_pdl = false;

template <class A>
void launch(void (*kernel)(A), dim3 grid, dim3 block, size_t smem, cudaStream_t s, const A& a) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = g_pdl ? 1 : 0;
    CU(cudaLaunchKernelEx(&cfg, kernel, a));
}

}  // namespace bigmoe::cuda
