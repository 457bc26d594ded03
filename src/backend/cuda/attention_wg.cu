// Prefill attention on Hopper's warpgroup products (sm_90a): the f16-cache form that
// attention.cu's run_op launches for prefill blocks when BIGMOE_CUDA_ATT_WG asks for it.
#include <cuda_pipeline.h>

#include <cstdlib>
#include <cstring>

#include "backend/cuda/att_block.cuh"
#include "backend/cuda/att_merge.cuh"
#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

// One warpgroup (4 warps) per 64 queries: attention_fa's arithmetic with each product a wgmma
// reading its operands from shared memory (scores: queries and keys; values: the weights from
// registers, the values from shared memory), so no warp loads fragments and the 64 queries share
// every read of a staged tile. A wgmma's k16 step gives the bits of mma.sync's m16n8k16 for the
// same operands (measured on an H100: scores and values, every bit of 20480 products), and each
// accumulator takes its k16 steps in attention_fa's order, so a query's bits do not change.
// Warp w holds rows 16 w + g and + 8 of every product, as attention_fa's warp w does, and all of
// a tile's 64 keys: the weights' sums fold in attention_mma's butterfly order in registers.
// Tiles are staged into the operands' core-matrix layout (8 rows x 16 bytes, 128 bytes apart
// along d, 16 D bytes apart along rows), one tile ahead of the one computed.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define BIGMOE_ATT_WG 1
#else
#define BIGMOE_ATT_WG 0
#endif
constexpr int k_attw_threads = 128;

// A no-swizzle wgmma operand descriptor: start address, the byte offsets between core matrices
// along the two directions (which one is which depends on the operand's major-ness).
__device__ __forceinline__ uint64_t wg_desc(const void* p, uint32_t lbo, uint32_t sbo) {
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    return uint64_t((s & 0x3FFFF) >> 4) | (uint64_t((lbo >> 4) & 0x3FFF) << 16) | (uint64_t((sbo >> 4) & 0x3FFF) << 32);
}
// Keeps the compiler from moving accumulator reads and writes across the asynchronous products.
template <int N>
__device__ __forceinline__ void wg_hold(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ void wg_fence() {
#if BIGMOE_ATT_WG
    asm volatile("wgmma.fence.sync.aligned;" ::: "memory");
#endif
}
__device__ __forceinline__ void wg_commit_wait() {
#if BIGMOE_ATT_WG
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory");
#endif
}
#define BIGMOE_WG_ACC(d)                                                                                        \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), \
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),  \
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define BIGMOE_WG_D                                                                                               \
    "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%25,%26,%27,%28," \
    "%29,%30,%31}"
// d (64 x 64) += a b, a and b from shared memory, both K-major (d along the rows' 16 bytes)
__device__ __forceinline__ void wg_ss(float (&d)[32], uint64_t a, uint64_t b) {
#if BIGMOE_ATT_WG
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " BIGMOE_WG_D ", %32, %33, 1, 1, 1, 0, 0;"
                 : BIGMOE_WG_ACC(d)
                 : "l"(a), "l"(b));
#else
    (void)d, (void)a, (void)b;
#endif
}
// d (64 x 64) += a b, a from registers (mma.sync's A fragments), b from shared memory MN-major
__device__ __forceinline__ void wg_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t b) {
#if BIGMOE_ATT_WG
    asm volatile("wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " BIGMOE_WG_D
                 ", {%32,%33,%34,%35}, %36, 1, 1, 1, 1;"
                 : BIGMOE_WG_ACC(d)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
#else
    (void)d, (void)a, (void)b;
#endif
}
#undef BIGMOE_WG_ACC
#undef BIGMOE_WG_D

// Element (r, c) of a [rows][D] f16 operand in core-matrix layout, in halves.
template <int D>
__device__ __forceinline__ int wg_at(int r, int c) {
    return ((r / 8) * (D / 8) + c / 8) * 64 + (r % 8) * 8 + c % 8;
}

template <int D>
__device__ void attention_wg(const AttentionArgs& a, const AttBlock& k, uint8_t* smem) {
    constexpr int NT = k_attw_threads, BQ = k_attm_q, KT = k_att_kt, NB = D / 64;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
    __half* sq = reinterpret_cast<__half*>(smem);              // [BQ][D]
    __half* sk = sq + BQ * D;                                  // [2][KT][D]
    __half* sv = sk + 2 * KT * D;                              // [2][KT][D]
    float4* tas = reinterpret_cast<float4*>(sv + 2 * KT * D);  // [NB * 8][NT]: the merged chunks
    int* spos = reinterpret_cast<int*>(tas + NB * 8 * NT);     // [BQ]
    const float scale = float(a.scale);
    att_queries_f16<NT>(a, k, BQ, D, sq, [](int j, int d) { return wg_at<D>(j, d); });
    if (tid < BQ) spos[tid] = k.q0 + tid < k.nq ? int(a.pos[k.slot_row(tid)]) : -1;
#pragma unroll
    for (int i = 0; i < NB * 8; ++i) tas[i * NT + tid] = make_float4(0, 0, 0, 0);
    __syncthreads();

    // A tile's K and V rows into buffer `buf`: 16-byte piece i lands at byte 16 i (eight
    // consecutive pieces fill one core matrix: rows i % 8 of a group of 8 keys); rows past the
    // last key are zeros, as the products read whole steps of 16 keys.
    auto stage = [&](int buf, int k0) {
        if (k0 >= 0) {
            const int n_keys = min(KT, k.last + 1 - k0);
            uint8_t* dk = reinterpret_cast<uint8_t*>(sk + buf * KT * D);
            uint8_t* dv = reinterpret_cast<uint8_t*>(sv + buf * KT * D);
#pragma unroll 4
            for (int i = tid; i < KT * D / 8; i += NT) {
                const int key = i / D * 8 + i % 8, c8 = i / 8 % (D / 8);
                if (key < n_keys) {
                    __pipeline_memcpy_async(dk + 16 * i, k.kmem + int64_t(k0 + key) * k.rk + 16 * c8, 16);
                    __pipeline_memcpy_async(dv + 16 * i, k.vmem + int64_t(k0 + key) * k.rv + 16 * c8, 16);
                } else {
                    *reinterpret_cast<uint4*>(dk + 16 * i) = make_uint4(0, 0, 0, 0);
                    *reinterpret_cast<uint4*>(dv + 16 * i) = make_uint4(0, 0, 0, 0);
                }
            }
        }
        __pipeline_commit();
    };

    const int r0 = warp * 16 + g, r1 = r0 + 8;
    const int pos0 = spos[r0], pos1 = spos[r1];
    int wmin = min(pos0, pos1);
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, o));
    float o[NB][32], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float tm[2] = {-INFINITY, -INFINITY}, tl[2] = {0.0f, 0.0f};
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
        for (int e = 0; e < 32; ++e) o[nb][e] = 0.0f;

    constexpr uint32_t rows8 = 16 * D;  // bytes between core matrices 8 rows apart
    int k0 = k.first_tile(), buf = 0;
    stage(0, k0);
    while (k0 >= 0) {
        const int k1 = k.next_tile(k0), c = k0 / k.ch;
        const bool chunk_end = k1 < 0 || k1 / k.ch != c;
        __pipeline_wait_prior(0);  // this tile's K and V
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        __syncthreads();  // landed for every thread; the other buffer's tile is done with
        stage(buf ^ 1, k1);
        const __half* kb = sk + buf * KT * D;
        const __half* vb = sv + buf * KT * D;
        float s[32];
#pragma unroll
        for (int e = 0; e < 32; ++e) s[e] = 0.0f;
        wg_hold(s);
        wg_fence();
#pragma unroll
        for (int ds = 0; ds < D / 16; ++ds)
            wg_ss(s, wg_desc(sq + 128 * ds, 128, rows8), wg_desc(kb + 128 * ds, 128, rows8));
        wg_commit_wait();
        wg_hold(s);
        // attention_fa's weights: s[4 j + e] is row (e < 2 ? r0 : r1), key k0 + 8 j + 2 tq + (e & 1)
        const bool full = k0 + KT - 1 <= wmin;  // the same for the whole warp
        float mx[2];
        att_mask_scores<8>([&](int j, int e) -> float& { return s[4 * j + e]; }, scale, full, k0 + 2 * tq, pos0, pos1,
                           mx);
        float corr[2];
        uint32_t pw[8][2];  // the weights as f16 pairs: [key block][row r0, row r1]
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            const float nm = fmaxf(m[rr], mx[rr]);
            const float base = nm == -INFINITY ? 0.0f : nm;
            float x[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                s[4 * j + 2 * rr] = __expf(__fsub_rn(s[4 * j + 2 * rr], base));
                s[4 * j + 2 * rr + 1] = __expf(__fsub_rn(s[4 * j + 2 * rr + 1], base));
                x[j] = __fadd_rn(s[4 * j + 2 * rr], s[4 * j + 2 * rr + 1]);
                pw[j][rr] = half2_bits(__floats2half2_rn(s[4 * j + 2 * rr], s[4 * j + 2 * rr + 1]));
            }
            // key pair 4 j + tq is attention_mma's lane: its butterfly folds j ^ 4, j ^ 2, j ^ 1,
            // then tq ^ 2, tq ^ 1
            float y[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) y[j] = __fadd_rn(x[j], x[j + 4]);
            float sum = __fadd_rn(__fadd_rn(y[0], y[2]), __fadd_rn(y[1], y[3]));
            sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 2));
            sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 1));
            corr[rr] = mx[rr] == -INFINITY ? 1.0f : __expf(__fsub_rn(m[rr], nm));
            l[rr] = __fadd_rn(__fmul_rn(l[rr], corr[rr]), sum);
            m[rr] = nm;
        }
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 32; ++e) o[nb][e] = __fmul_rn(o[nb][e], corr[(e >> 1) & 1]);
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) wg_hold(o[nb]);
        wg_fence();
        // steps past the tile's last key (attention_fa skips them) add products of zero weights
        // and zero rows: +0 to sums that are never -0, the same bits
#pragma unroll
        for (int ks = 0; ks < KT / 16; ++ks) {
            const uint32_t w[4] = {pw[2 * ks][0], pw[2 * ks][1], pw[2 * ks + 1][0], pw[2 * ks + 1][1]};
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) wg_rs(o[nb], w, wg_desc(vb + wg_at<D>(16 * ks, 64 * nb), rows8, 128));
        }
        wg_commit_wait();
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) wg_hold(o[nb]);
        if (chunk_end) {  // merged into the total (rows of no query too: their values are never read)
            const AttMergeStep s0 = att_merge_scalars(tm[0], tl[0], m[0], l[0]);
            const AttMergeStep s1 = att_merge_scalars(tm[1], tl[1], m[1], l[1]);
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int j = 0; j < 8; ++j) {
                    float4& t = tas[(nb * 8 + j) * NT + tid];
                    const float4 v = t;
                    const float* n = o[nb] + 4 * j;
                    t = make_float4(att_merge_value(s0, v.x, n[0]), att_merge_value(s0, v.y, n[1]),
                                    att_merge_value(s1, v.z, n[2]), att_merge_value(s1, v.w, n[3]));
                }
#pragma unroll
            for (int nb = 0; nb < NB; ++nb)
#pragma unroll
                for (int e = 0; e < 32; ++e) o[nb][e] = 0.0f;
            m[0] = m[1] = -INFINITY;
            l[0] = l[1] = 0.0f;
        }
        k0 = k1;
        buf ^= 1;
    }
    __pipeline_wait_prior(0);
    att_rows_out(a, k, D, r0, r1, tl, [&](float* out, float inv, int rr) {
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int j = 0; j < 8; ++j)
                *reinterpret_cast<float2*>(out + 64 * nb + 8 * j + 2 * tq) =
                    att_scaled_half(tas[(nb * 8 + j) * NT + tid], rr, inv);
    });
}

// Prefill's warpgroup blocks: 64 queries on 4 warps, one block an SM (shared memory). Compiled
// empty where the target has no wgmma; k_attention_wg_present says which.
template <int D>
__global__ void __launch_bounds__(k_attw_threads, 1) k_attention_wg(AttentionArgs a) {
    pdl_enter();
    extern __shared__ float4 smem4[];
    AttBlock k;
    if (BIGMOE_ATT_WG && att_setup(a, true, k_attm_q, a.passes_mma, k))
        attention_wg<D>(a, k, reinterpret_cast<uint8_t*>(smem4));
}
__global__ void k_attention_wg_present(int* out) {
    *out = BIGMOE_ATT_WG;
}

// attention_wg's: the queries, two stages of K and V, the merged chunks, positions.
size_t attention_wg_smem(int64_t D) {
    return size_t(k_attm_q * D * 2 + 4 * k_att_kt * D * 2) + size_t(k_attw_threads * D / 2 + k_attm_q) * sizeof(float);
}

// Whether prefill takes attention_wg: a GPU whose code has wgmma (sm_90a), and
// BIGMOE_CUDA_ATT_WG=1 or, unset, k_att_wg_default (0: attention_fa; the same bits either way).
// Off by default: on an H100 the 122B's pp512 @ d32768 read 3271 / 3272 t/s with it against
// 3300 / 3321 without (2026-12-06): both forms wait on the tiles' copies, not the products.
constexpr bool k_att_wg_default = false;
bool g_att_wg = false;

}  // namespace

void configure_attention_wg() {
    const char* e = std::getenv("BIGMOE_CUDA_ATT_WG");
    g_att_wg = false;
    if (e ? std::strcmp(e, "0") != 0 : k_att_wg_default) {
        int* flag = nullptr;
        int present = 0;
        CU(cudaMalloc(&flag, sizeof(int)));
        k_attention_wg_present<<<1, 1>>>(flag);
        CU_LAUNCHED();
        CU(cudaMemcpy(&present, flag, sizeof(int), cudaMemcpyDeviceToHost));
        CU(cudaFree(flag));
        g_att_wg = present != 0;
    }
    if (g_att_wg) {
        CU(cudaFuncSetAttribute(k_attention_wg<64>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                int(attention_wg_smem(64))));
        CU(cudaFuncSetAttribute(k_attention_wg<128>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                int(attention_wg_smem(128))));
        CU(cudaFuncSetAttribute(k_attention_wg<256>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                int(attention_wg_smem(256))));
    }
}

bool run_attention_wg(cudaStream_t s, const AttentionArgs& a, dim3 grid) {
    if (!g_att_wg || a.part || !(a.D == 64 || a.D == 128 || a.D == 256)) return false;
    if (a.D == 256)
        launch(k_attention_wg<256>, grid, k_attw_threads, attention_wg_smem(256), s, a);
    else if (a.D == 128)
        launch(k_attention_wg<128>, grid, k_attw_threads, attention_wg_smem(128), s, a);
    else
        launch(k_attention_wg<64>, grid, k_attw_threads, attention_wg_smem(64), s, a);
    return true;
}

}  // namespace bigmoe::cuda
