// Prefill attention on Hopper's warpgroup products (sm_90a): the f16-cache form that
// attention.cu's run_op launches for prefill blocks when BIGMOE_CUDA_ATT_WG asks for it.
#include <cuda_pipeline.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/async_copy.cuh"
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
// A 128-byte-swizzled operand's descriptor: rows of 128 bytes (64 halves along the 16-byte
// pieces' dimension), the pieces of row r at piece c ^ (r % 8), 8-row groups 1024 bytes apart. That
// group stride is the stride byte offset of a K-major operand and, in the values' MN-major form,
// one of the two offsets; the other (between 64-wide groups of columns) is never used by an
// n64 product, so both offsets are given 1024 and either reading of them holds.
__device__ __forceinline__ uint64_t wg_desc_sw128(const void* p) {
    const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    return uint64_t((s & 0x3FFFF) >> 4) | (uint64_t(1024 >> 4) << 16) | (uint64_t(1024 >> 4) << 32) |
           (uint64_t(1) << 62);
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
__device__ __forceinline__ void wg_commit() {
#if BIGMOE_ATT_WG
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
#endif
}
// Waits until at most N of this warp's committed groups of products are still running.
template <int N>
__device__ __forceinline__ void wg_wait() {
#if BIGMOE_ATT_WG
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
#endif
}
__device__ __forceinline__ void wg_commit_wait() {
    wg_commit();
    wg_wait<0>();
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

// attention_wg with the tiles copied by the tensor memory accelerator (a.maps): a tile of K or V
// as D / 64 boxes of 64 keys x 64 values of d, each a 128-byte-swizzled panel that the products
// read as it lands (the queries are staged the same way by hand). Two buffers each of K and V,
// refilled by one thread two tiles ahead as soon as the products that read a buffer are done, so
// up to three halves of tiles are in flight while one is computed. OVL: the next tile's scores
// are asked for before this tile's values, and their softmax runs while the values' products do
// (FlashAttention-3's overlap within a warpgroup). The arithmetic is attention_wg's, in its order.
// duo (1 + the block's rank; 0 alone): two blocks of a cluster on the same KV head share the tiles,
// each copying half of a tile's panels into both (attention_fa's COPY 2); before a buffer is
// refilled both blocks have read it (the `free` barriers, an arrival from each), and the pair
// walks the tiles to the later of its two last keys, which leaves every row's bits as they are.
template <int D, bool OVL>
__device__ void attention_wgt(const AttentionArgs& a, const AttBlock& k, int duo, uint8_t* smem_raw) {
    constexpr int NT = k_attw_threads, BQ = k_attm_q, KT = k_att_kt, NB = D / 64;
    static_assert(BQ == KT, "queries and keys share the panels' shape");
    constexpr uint32_t panel = KT * 128;         // bytes of a panel: 64 rows of 64 halves
    constexpr uint32_t tile_bytes = NB * panel;  // a tile of K or V, or the queries
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
    uint8_t* const smem =
        smem_raw + ((1024 - (static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw)) & 1023)) & 1023);
    uint8_t* const sq = smem;                                            // [NB][BQ][128 bytes]
    uint8_t* const sk = sq + tile_bytes;                                 // [2][NB][KT][128 bytes]
    uint8_t* const sv = sk + 2 * tile_bytes;                             // [2][NB][KT][128 bytes]
    float4* const tas = reinterpret_cast<float4*>(sv + 2 * tile_bytes);  // [NB * 8][NT]: the merged chunks
    int* const spos = reinterpret_cast<int*>(tas + NB * 8 * NT);         // [BQ]
    // K landed [2], V landed [2], K buffers read [2], V buffers read [2]
    uint64_t* const bars = reinterpret_cast<uint64_t*>(spos + BQ);
    if (tid == 0) {
        for (int i = 0; i < 4; ++i) mbar_init(bars + i, 1);
        for (int i = 4; i < 8; ++i) mbar_init(bars + i, 2);
        mbar_init_fence();
    }
    const float scale = float(a.scale);
    att_queries_f16<NT>(a, k, BQ, D, reinterpret_cast<__half*>(sq), [](int j, int d) {
        return (d / 64) * (BQ * 64) + j * 64 + (((d % 64) / 8) ^ (j % 8)) * 8 + d % 8;
    });
    if (tid < BQ) spos[tid] = k.q0 + tid < k.nq ? int(a.pos[k.slot_row(tid)]) : -1;
#pragma unroll
    for (int i = 0; i < NB * 8; ++i) tas[i * NT + tid] = make_float4(0, 0, 0, 0);
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the queries, for the products
    if (duo)
        cluster_sync();  // both blocks' barriers exist before either copies into the other
    else
        __syncthreads();

    const CUtensorMap* kmap = &a.maps.k[k.tile.span];
    const CUtensorMap* vmap = &a.maps.v[k.tile.span];
    auto kbuf = [&](int b) { return sk + b * tile_bytes; };
    auto vbuf = [&](int b) { return sv + b * tile_bytes; };
    uint32_t par_free = 0;  // bit i: the phase parity of free barrier i (K buffers 0, 1, V buffers 2, 3)
    // thread 0: the tile from key k0 of K or V into a buffer (nothing past the last tile); refill:
    // the buffer held a tile before, which this block has read (a block barrier), and in a duo
    // the other block must have read it too
    auto load = [&](uint8_t* dst, const CUtensorMap* map, uint64_t* bar, int k0, bool refill) {
        if (tid != 0 || k0 < 0) return;
        if (duo) {
            if (refill) {
                const int i = int(bar - bars);  // its free barrier: bars + 4 + i
                mbar_arrive_in(bars + 4 + i, 0);
                mbar_arrive_in(bars + 4 + i, 1);
                mbar_wait<true>(bars + 4 + i, (par_free >> i) & 1u);
                par_free ^= 1u << i;
            }
            mbar_expect(bar, tile_bytes);
            for (int pn = duo - 1; pn < NB; pn += 2) tma_box<true>(dst + pn * panel, map, 64 * pn, k.g, k0, bar);
            return;
        }
        mbar_expect(bar, tile_bytes);
#pragma unroll
        for (int pn = 0; pn < NB; ++pn) tma_box<false>(dst + pn * panel, map, 64 * pn, k.g, k0, bar);
    };
    uint32_t par_k = 0, par_v = 0;  // bit b: the phase parity of buffer b's barrier
    // Waits for a buffer's tile from key k0; rows past the last key become zeros (a box copies
    // whatever the cache holds there, and the products read whole steps of 16 keys).
    auto arrive = [&](uint8_t* buf, uint64_t* bar, uint32_t& par, int b, int k0) {
        mbar_wait<false>(bar, (par >> b) & 1u);
        par ^= 1u << b;
        const int n_keys = min(KT, k.last + 1 - k0);
        if (n_keys < KT) {  // the same for the whole block
            for (int i = tid; i < (KT - n_keys) * NB * 8; i += NT) {
                const int r = n_keys + i / (NB * 8), pn = i / 8 % NB;
                *reinterpret_cast<uint4*>(buf + pn * panel + r * 128 + 16 * (i % 8)) = make_uint4(0, 0, 0, 0);
            }
            asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
            __syncthreads();
        }
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

    // the scores' products of the tile in K buffer b into s, committed as one group
    auto scores = [&](float(&s)[32], int b) {
#pragma unroll
        for (int e = 0; e < 32; ++e) s[e] = 0.0f;
        wg_hold(s);
        wg_fence();
#pragma unroll
        for (int ds = 0; ds < D / 16; ++ds) {
            const uint32_t at = (ds / 4) * panel + 32 * (ds % 4);
            wg_ss(s, wg_desc_sw128(sq + at), wg_desc_sw128(kbuf(b) + at));
        }
        wg_commit();
    };
    // attention_fa's weights of the tile from key key0 (s[4 j + e]: row e < 2 ? r0 : r1, key
    // key0 + 8 j + 2 tq + (e & 1)), left in s as floats; m and l move on, corr gets the rescale
    auto weights = [&](float(&s)[32], int key0, float(&corr)[2]) {
        const bool full = key0 + KT - 1 <= wmin;  // the same for the whole warp
        float mx[2];
        att_mask_scores<8>([&](int j, int e) -> float& { return s[4 * j + e]; }, scale, full, key0 + 2 * tq, pos0, pos1,
                           mx);
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
            }
            // attention_mma's butterfly (attention_wg)
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
    };
    // the weights as f16 pairs: [key block][row r0, row r1]
    auto to_half = [&](const float(&s)[32], uint32_t(&pw)[8][2]) {
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int rr = 0; rr < 2; ++rr)
                pw[j][rr] = half2_bits(__floats2half2_rn(s[4 * j + 2 * rr], s[4 * j + 2 * rr + 1]));
    };
    // the values rescaled, then the products of the tile in V buffer b, committed as one group
    auto values = [&](const uint32_t(&pw)[8][2], const float(&corr)[2], int b) {
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
            for (int e = 0; e < 32; ++e) o[nb][e] = __fmul_rn(o[nb][e], corr[(e >> 1) & 1]);
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) wg_hold(o[nb]);
        wg_fence();
#pragma unroll
        for (int ks = 0; ks < KT / 16; ++ks) {
            const uint32_t w[4] = {pw[2 * ks][0], pw[2 * ks][1], pw[2 * ks + 1][0], pw[2 * ks + 1][1]};
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) wg_rs(o[nb], w, wg_desc_sw128(vbuf(b) + nb * panel + ks * 16 * 128));
        }
        wg_commit();
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) wg_hold(o[nb]);
    };
    // a chunk's values and its maximum and mass (cm, cl) merged into the total
    auto merge = [&](const float(&cm)[2], const float(&cl)[2]) {
        const AttMergeStep s0 = att_merge_scalars(tm[0], tl[0], cm[0], cl[0]);
        const AttMergeStep s1 = att_merge_scalars(tm[1], tl[1], cm[1], cl[1]);
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
    };
    auto next2 = [&](int k0) { return k0 >= 0 ? k.next_tile(k0) : -1; };

    int k0 = k.first_tile(), b = 0;
    load(kbuf(0), kmap, bars, k0, false);
    load(vbuf(0), vmap, bars + 2, k0, false);
    load(kbuf(1), kmap, bars + 1, next2(k0), false);
    load(vbuf(1), vmap, bars + 3, next2(k0), false);
    float s[32], corr[2];
    uint32_t pw[8][2];
    if (!OVL) {
        while (k0 >= 0) {
            const int k1 = k.next_tile(k0), k2 = next2(k1);
            const bool chunk_end = k1 < 0 || k1 / k.ch != k0 / k.ch;
            arrive(kbuf(b), bars + b, par_k, b, k0);
            scores(s, b);
            wg_wait<0>();
            wg_hold(s);
            __syncthreads();  // every warp's products have read K buffer b
            load(kbuf(b), kmap, bars + b, k2, true);
            weights(s, k0, corr);
            to_half(s, pw);
            arrive(vbuf(b), bars + 2 + b, par_v, b, k0);
            values(pw, corr, b);
            wg_wait<0>();
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) wg_hold(o[nb]);
            __syncthreads();  // and V buffer b
            load(vbuf(b), vmap, bars + 2 + b, k2, true);
            if (chunk_end) {
                merge(m, l);
                m[0] = m[1] = -INFINITY;
                l[0] = l[1] = 0.0f;
            }
            k0 = k1;
            b ^= 1;
        }
    } else if (k0 >= 0) {
        arrive(kbuf(0), bars, par_k, 0, k0);
        scores(s, 0);
        wg_wait<0>();
        wg_hold(s);
        __syncthreads();
        load(kbuf(0), kmap, bars, next2(next2(k0)), true);
        weights(s, k0, corr);
        to_half(s, pw);
        // pw, corr: tile k0's weights; m, l: its chunk's so far. The last tile is taken after
        // the loop, so that every pass has the same groups of products in flight.
        for (int k1 = k.next_tile(k0); k1 >= 0; k1 = k.next_tile(k0)) {
            const int k2 = next2(k1), k3 = next2(k2);
            const bool chunk_end = k1 / k.ch != k0 / k.ch;
            arrive(kbuf(b ^ 1), bars + (b ^ 1), par_k, b ^ 1, k1);
            scores(s, b ^ 1);
            arrive(vbuf(b), bars + 2 + b, par_v, b, k0);
            values(pw, corr, b);
            const float cm[2] = {m[0], m[1]}, cl[2] = {l[0], l[1]};
            wg_wait<1>();  // the scores (committed first)
            wg_hold(s);
            __syncthreads();  // every warp's products have read K buffer b ^ 1
            load(kbuf(b ^ 1), kmap, bars + (b ^ 1), k3, true);
            if (chunk_end) {
                m[0] = m[1] = -INFINITY;
                l[0] = l[1] = 0.0f;
            }
            weights(s, k1, corr);
            wg_wait<0>();
#pragma unroll
            for (int nb = 0; nb < NB; ++nb) wg_hold(o[nb]);
            __syncthreads();  // and V buffer b
            load(vbuf(b), vmap, bars + 2 + b, k2, true);
            if (chunk_end) merge(cm, cl);
            to_half(s, pw);
            k0 = k1;
            b ^= 1;
        }
        arrive(vbuf(b), bars + 2 + b, par_v, b, k0);
        values(pw, corr, b);
        wg_wait<0>();
#pragma unroll
        for (int nb = 0; nb < NB; ++nb) wg_hold(o[nb]);
        merge(m, l);
    }
    if (duo) cluster_sync();  // neither block leaves while the other may still signal it
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
// The same with the tiles copied by tensor maps (attention_wgt). DUO launches in clusters of two
// (x): a block pairs with the other when both have queries in the same cache (the same span's KV
// head).
template <int D, bool OVL, bool DUO>
__global__ void __launch_bounds__(k_attw_threads, 1) k_attention_wgt(const __grid_constant__ AttentionArgs a) {
    pdl_enter();
    extern __shared__ float4 smem4[];
    AttBlock k;
    const bool mine = BIGMOE_ATT_WG && att_setup(a, true, k_attm_q, a.passes_mma, k);
    int duo = 0;
    if (DUO) {
        const ClusterPlace place = cluster_place();
        AttBlock o;
        if (place.blocks == 2 && att_setup_at(a, true, k_attm_q, a.passes_mma, att_block_x(a, blockIdx.x ^ 1u), o) &&
            mine && o.kmem == k.kmem && o.vmem == k.vmem) {
            k.last = max(k.last, o.last);
            k.n_chunks = k.last / k.ch + 1;
            duo = 1 + int(place.rank);
        }
    }
    if (mine) attention_wgt<D, OVL>(a, k, duo, reinterpret_cast<uint8_t*>(smem4));
}
__global__ void k_attention_wg_present(int* out) {
    *out = BIGMOE_ATT_WG;
}

// attention_wg's: the queries, two stages of K and V, the merged chunks, positions.
size_t attention_wg_smem(int64_t D) {
    return size_t(k_attm_q * D * 2 + 4 * k_att_kt * D * 2) + size_t(k_attw_threads * D / 2 + k_attm_q) * sizeof(float);
}
// attention_wgt's: the same in 1024-byte-aligned panels, and the copies' eight barriers.
size_t attention_wgt_smem(int64_t D) {
    return 1024 + attention_wg_smem(D) + 8 * sizeof(uint64_t);
}

// Which prefill form takes f16 caches, from BIGMOE_CUDA_ATT_WG (unset: k_att_wg_default): 0
// attention_fa; 1 attention_wg; 2 attention_wgt; 3 attention_wgt with the overlap; 4 the same in
// pairs of blocks sharing the tiles. The same bits in every form. 1-4 need a GPU whose code has
// wgmma (sm_90a), 2-4 the tensor maps too (a batch without them takes attention_wg). Off by
// default: on an H100 the 122B's pp512 @ d32768 read 3271 / 3272 t/s with form 1 against 3300 /
// 3321 with form 0 (2026-12-06).
constexpr int k_att_wg_default = 0;
int g_att_wg = 0;

template <int D>
void allow_wg_smem() {
    const int wgt = int(attention_wgt_smem(D));
    CU(cudaFuncSetAttribute(k_attention_wg<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(attention_wg_smem(D))));
    CU(cudaFuncSetAttribute(k_attention_wgt<D, false, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, wgt));
    CU(cudaFuncSetAttribute(k_attention_wgt<D, true, false>, cudaFuncAttributeMaxDynamicSharedMemorySize, wgt));
    CU(cudaFuncSetAttribute(k_attention_wgt<D, true, true>, cudaFuncAttributeMaxDynamicSharedMemorySize, wgt));
}

// attention_wgt's blocks in clusters of two along x
template <int D>
void launch_duo(cudaStream_t s, const AttentionArgs& a, dim3 grid) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = dim3(k_attw_threads);
    cfg.dynamicSmemBytes = attention_wgt_smem(D);
    cfg.stream = s;
    cudaLaunchAttribute attr[2];
    int n = 0;
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 2;
    attr[n].val.clusterDim.y = 1;
    attr[n++].val.clusterDim.z = 1;
    if (g_pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    cfg.attrs = attr;
    cfg.numAttrs = unsigned(n);
    CU(cudaLaunchKernelEx(&cfg, k_attention_wgt<D, true, true>, a));
}

template <int D>
void launch_wg(cudaStream_t s, const AttentionArgs& a, dim3 grid, int form) {
    if (form == 4 && grid.x % 2 == 0)
        launch_duo<D>(s, a, grid);
    else if (form >= 3)
        launch(k_attention_wgt<D, true, false>, grid, k_attw_threads, attention_wgt_smem(D), s, a);
    else if (form == 2)
        launch(k_attention_wgt<D, false, false>, grid, k_attw_threads, attention_wgt_smem(D), s, a);
    else
        launch(k_attention_wg<D>, grid, k_attw_threads, attention_wg_smem(D), s, a);
}

}  // namespace

void configure_attention_wg() {
    const char* e = std::getenv("BIGMOE_CUDA_ATT_WG");
    const int want = e ? std::clamp(std::atoi(e), 0, 4) : k_att_wg_default;
    g_att_wg = want > 0 && gpu_code_has(k_attention_wg_present) ? want : 0;
    if (g_att_wg > 0) {
        allow_wg_smem<64>();
        allow_wg_smem<128>();
        allow_wg_smem<256>();
    }
}

bool attention_wg_takes_maps() {
    return g_att_wg >= 2;
}

bool run_attention_wg(cudaStream_t s, const AttentionArgs& a, dim3 grid) {
    if (g_att_wg == 0 || a.part || !(a.D == 64 || a.D == 128 || a.D == 256)) return false;
    const int form = g_att_wg >= 2 && a.maps.n == 0 ? 1 : g_att_wg;
    if (a.D == 256)
        launch_wg<256>(s, a, grid, form);
    else if (a.D == 128)
        launch_wg<128>(s, a, grid, form);
    else
        launch_wg<64>(s, a, grid, form);
    return true;
}

}  // namespace bigmoe::cuda
