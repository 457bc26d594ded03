// Attention over the KV cache: the store kernel writing each cache type with the CPU's bytes
// (kv_rows.cuh) and the attention kernels (tensor-core forms for f16 caches, a float form for
// every type); the merge of split chunks is attention_merge.cu's. A query's result has the same
// bits in any batch.
#include <cuda_pipeline.h>

#include <algorithm>
#include <type_traits>

#include "backend/cuda/att_block.cuh"
#include "backend/cuda/att_merge.cuh"
#include "backend/cuda/kv_rows.cuh"
#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

// Stores the batch's k and v rows into each span's cache block at their positions: a thread per
// (row, K or V, group of 32 values), the group being a block of the block types.
__global__ void k_kv_store(AttentionArgs a) {
    pdl_enter();
    const int64_t width = a.n_head_kv * a.D, groups = (width + 31) / 32, n = a.rows * 2 * groups;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / (2 * groups), g = i % groups;
        const bool is_v = (i / groups) % 2 == 1;
        const int32_t s = a.row_span[t];
        if (s < 0) continue;
        const KvDev& b = a.kv[s];
        const int type = is_v ? b.type_v : b.type_k;
        uint8_t* row = static_cast<uint8_t*>(is_v ? b.v : b.k) + a.pos[t] * kv_row_bytes(type, width);
        const float* src = is_v ? a.v + t * a.vs : a.k + t * a.ks;
        const int cnt = width - 32 * g < 32 ? int(width - 32 * g) : 32;
        float x[32];
        for (int j = 0; j < 32; ++j) x[j] = j < cnt ? src[32 * g + j] : 0.0f;
        kv_write(row, type, 32 * g, x, cnt);
    }
}

// ---------------------------------------------------------------- attention

// One arithmetic for every batch: a query's keys are cut at fixed positions into chunks of
// a.chunk keys (a multiple of 64, the backend's for every op), a chunk into tiles of 64. Per tile: each key's score (a
// dot product over d, times the scale), the tile's maximum, and an online-softmax update of the chunk's (maximum, mass,
// weighted values): the weights summed by a butterfly over the tile's keys, the values added in key order. The chunks
// are merged in order (att_merge). Keys past a query's position weigh exactly zero and keys past the block's last query
// are never read, so a query's bits do not depend on the rows beside it, nor on whether its chunks ran in one block or
// many.
//
// A block holds 32 queries (the tensor-core form's prefill blocks: 64): (row, query head) pairs of
// up to k_att_rows rows of one span and one KV head, in passes when the group is larger. The cache's bytes of the next
// tile are copied into shared memory (cp.async) while the current one is computed. Two forms of the products, chosen by
// the span's cache types alone (so a query takes the same one in any batch):
// - f16 K and V (att_uses_mma): the tensor cores read the staged tiles as they are. Scores are
//   f16 x f16 products (the queries rounded to f16 as the cache rounds them) added in float;
//   the weights go in rounded to f16, as FlashAttention and llama.cpp take them (a weight's
//   relative error up to 2^-11; BIGMOE_CUDA_ATT_MMA=0, the float form, keeps float weights).
//   Prefill (attention_fa) and decode (attention_mma) lay the work out differently with the
//   same operations per query.
// - any other types: each tile of K, then of V, is dequantized into floats once and read by all
//   32 queries; scores a thread per (key, 8 queries), four d at a time; values a warp per 4
//   queries, a lane per 4 (or 8) d.
constexpr int k_att_q = int(k_att_queries);
constexpr int k_att_threads = 256;
constexpr int k_att_sp = 36;   // the scores' row stride in shared memory (padded against bank conflicts)
constexpr int k_attm_sp = 68;  // its scores' row stride ([query][key])
constexpr int k_attm_ps = 72;  // its weights' row stride (f16 halves [query][key], rows 16 bytes apart modulo 128)

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float warp_sum_rn(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// A lane's values of d: float4s at lane * 4 and lane * 4 + 128.
constexpr int k_att_v4 = int(k_att_max_d / 128);

// att_merge_value over a query's values with the both-forms product only where it is taken: the
// float form's decode kernel, at 128 registers, spills 28 bytes more with the selects
__device__ __forceinline__ void att_merge(float& tm, float& tl, float4* ta, float nm, float nl, const float4* na) {
    const AttMergeStep s = att_merge_scalars(tm, tl, nm, nl);
    auto f = [&](float t, float n) { return s.mode == 0 ? t : s.mode == 1 ? n : att_merge_both(s, t, n); };
#pragma unroll
    for (int e = 0; e < k_att_v4; ++e)
        ta[e] = make_float4(f(ta[e].x, na[e].x), f(ta[e].y, na[e].y), f(ta[e].z, na[e].z), f(ta[e].w, na[e].w));
}

__device__ __forceinline__ float4 f4_scale(float4 v, float s) {
    return make_float4(__fmul_rn(v.x, s), __fmul_rn(v.y, s), __fmul_rn(v.z, s), __fmul_rn(v.w, s));
}

// The softmax weights of a tile: the scores in sp ([key][query]) become weights, each query's
// running maximum m and mass l move on, and scorr gets its values' rescale. A warp per QPW
// queries, a lane per 2 keys (keys lane and lane + 32).
template <int QPW>
__device__ __forceinline__ void att_weights(float* sp, float* scorr, int warp, int lane, float (&m)[QPW],
                                            float (&l)[QPW]) {
#pragma unroll
    for (int u = 0; u < QPW; ++u) {
        const int q = warp * QPW + u;
        const float s0 = sp[lane * k_att_sp + q], s1 = sp[(lane + 32) * k_att_sp + q];
        const float mx = warp_max(fmaxf(s0, s1));
        float corr = 1.0f, p0 = 0.0f, p1 = 0.0f;
        if (mx != -INFINITY) {  // the same for the whole warp
            const float nm = fmaxf(m[u], mx);
            corr = expf(__fsub_rn(m[u], nm));
            p0 = expf(__fsub_rn(s0, nm));
            p1 = expf(__fsub_rn(s1, nm));
            l[u] = __fadd_rn(__fmul_rn(l[u], corr), warp_sum_rn(__fadd_rn(p0, p1)));
            m[u] = nm;
        }
        sp[lane * k_att_sp + q] = p0;
        sp[(lane + 32) * k_att_sp + q] = p1;
        if (lane == 0) scorr[q] = corr;
    }
}

// ---- the tensor-core form

// att_weights for the tensor-core form: scores in sp [query][key], a lane per keys 2 lane and
// 2 lane + 1, exponentials by the hardware's exp2 (__expf), and the weights written as the f16
// pairs the values' products read ([query][key], row stride k_attm_ps).
template <int QPW>
__device__ __forceinline__ void att_weights_mma(const float* sp, uint32_t* ph, float* scorr, int warp, int lane,
                                                float (&m)[QPW], float (&l)[QPW]) {
#pragma unroll
    for (int u = 0; u < QPW; ++u) {
        const int q = warp * QPW + u;
        const float2 s = *reinterpret_cast<const float2*>(sp + q * k_attm_sp + 2 * lane);
        const float mx = warp_max(fmaxf(s.x, s.y));
        float corr = 1.0f, p0 = 0.0f, p1 = 0.0f;
        if (mx != -INFINITY) {  // the same for the whole warp
            const float nm = fmaxf(m[u], mx);
            corr = __expf(__fsub_rn(m[u], nm));
            p0 = __expf(__fsub_rn(s.x, nm));
            p1 = __expf(__fsub_rn(s.y, nm));
            l[u] = __fadd_rn(__fmul_rn(l[u], corr), warp_sum_rn(__fadd_rn(p0, p1)));
            m[u] = nm;
        }
        ph[q * (k_attm_ps / 2) + lane] = half2_bits(__floats2half2_rn(p0, p1));
        if (lane == 0) scorr[q] = corr;
    }
}

// c += a b for a 16 x 16 f16 tile a (rows g, g + 8 and columns 2 (lane % 4) .. + 1, + 8 .. + 9
// in a[0..3]) and a 16 x 8 tile b (column g, rows 2 (lane % 4) .. + 1 in b0, + 8 .. + 9 in b1);
// c[0], c[1]: row g, columns 2 (lane % 4) and + 1; c[2], c[3]: row g + 8.
__device__ __forceinline__ void mma_f16_16x8x16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    (void)c, (void)a, (void)b0, (void)b1;
#endif
}
// Copies of a tile's rows of K or V for the tensor-core forms (f16 heads start 32-byte aligned:
// no realignment); rows past the last key are zeros, as the tensor cores read whole steps of 16
// keys. When a row's 16-byte pieces divide a warp, a thread takes one piece of rows a pass of
// the block apart, so a whole tile takes a few copies a thread and no divisions (the general
// loop took ~35 instructions a copy).
template <int NT>
struct F16Stager {
    int last, pieces, my_row = 0, my_piece = 0, pass = 0;
    bool even;
    __device__ F16Stager(int D, int last_key) : last(last_key), pieces(D / 8), even(32 % (D / 8) == 0) {
        if (even) {
            my_row = int(threadIdx.x) / pieces;
            my_piece = int(threadIdx.x) % pieces;
            pass = NT / pieces;
        }
    }
    __device__ void operator()(uint8_t* raw, const uint8_t* mem, int rb, int st, int k0) const {
        if (k0 >= 0) {
            const int n_keys = min(k_att_kt, last + 1 - k0);
            const uint8_t* src = mem + int64_t(k0) * rb;
            if (even && n_keys == k_att_kt) {
                // two copies a step, each with its own addresses: a copy does not wait for the
                // one before it to read its operands
                const uint8_t* sp = src + int64_t(my_row) * rb + 16 * my_piece;
                uint8_t* dp = raw + my_row * st + 16 * my_piece;
                const int64_t sstep = int64_t(pass) * rb;
                const int dstep = pass * st;
#pragma unroll
                for (int i = 0; i < k_att_kt * 32 / NT; i += 2) {
                    if (my_row + i * pass >= k_att_kt) break;
                    __pipeline_memcpy_async(dp, sp, 16);
                    if (my_row + (i + 1) * pass < k_att_kt) __pipeline_memcpy_async(dp + dstep, sp + sstep, 16);
                    dp += 2 * dstep;
                    sp += 2 * sstep;
                }
                __pipeline_commit();
                return;
            }
            const int lane = int(threadIdx.x) % 32;
            for (int r = int(threadIdx.x) / 32; r < k_att_kt; r += NT / 32)
                for (int c = lane; c < pieces; c += 32) {
                    uint8_t* dst = raw + r * st + 16 * c;
                    if (r < n_keys)
                        __pipeline_memcpy_async(dst, src + int64_t(r) * rb + 16 * c, 16);
                    else
                        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
                }
        }
        __pipeline_commit();
    }
};

// Decode's tensor-core form: up to 8 queries (one block of 16 rows) on 8 warps. Scores: warp w
// takes key block w; weights: warp w query w; values: d in pairs of 8-column blocks, pairs w,
// w + 8. (Blocks of 9-16 queries take attention_fa: this form with a warp weighing two queries,
// two blocks an SM, ran the 122B's decode at depth 32768 2.5% slower on an H100.)
__device__ void attention_mma(const AttentionArgs& a, const AttBlock& k, uint8_t* smem) {
    constexpr int NT = 256, BQ = k_att_q, SP = k_attm_sp;
    constexpr int NP = 2;   // pairs of 8 d a warp holds (D <= 256)
    constexpr int QPW = 1;  // queries a warp weighs
    const int64_t D = k.D;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int qs = int(D) + 8;  // halves a staged query takes (rows 16 bytes apart modulo 128: no bank conflicts)
    uint8_t* rawk = smem;
    uint8_t* rawv = rawk + k_att_kt * k.stk;
    __half* sqh = reinterpret_cast<__half*>(rawv + k_att_kt * k.stv);
    float* sp = reinterpret_cast<float*>(sqh + BQ * qs);   // [BQ][SP]: scores
    __half* ph = reinterpret_cast<__half*>(sp + BQ * SP);  // [BQ][k_attm_ps]: weights
    float* scorr = reinterpret_cast<float*>(ph + BQ * k_attm_ps);
    int* spos = reinterpret_cast<int*>(scorr + BQ);
    float* sml = reinterpret_cast<float*>(spos + BQ);  // [BQ][2]: each query's chunk maximum and mass
    const float scale = float(a.scale);
    for (int64_t i = tid; i < BQ * D; i += NT) {
        const int64_t j = i / D, d = i % D;
        sqh[j * qs + d] = __float2half_rn(k.q0 + j < k.nq ? a.q[k.slot_row(j) * a.qs + k.slot_head(j) * D + d] : 0.0f);
    }
    if (tid < BQ) spos[tid] = k.q0 + tid < k.nq ? int(a.pos[k.slot_row(tid)]) : -1;
    // rows of no query are never given weights: zeros keep their products finite
    for (int i = tid; i < BQ * k_attm_ps; i += NT) ph[i] = __float2half_rn(0.0f);
    __syncthreads();

    const int kb = warp, pw = warp, pstep = 8, npairs = int(D / 16);
    const int r0 = g, r1 = r0 + 8;  // this thread's rows of values
    // f(i, h, d) for this thread's values of a row: pair pw + pstep i, 8-column block h, columns
    // d and d + 1
    auto each_value_pair = [&](auto f) {
#pragma unroll
        for (int i = 0; i < NP; ++i) {
            const int pr = pw + pstep * i;
            if (pr >= npairs) break;
#pragma unroll
            for (int h = 0; h < 2; ++h) f(i, h, 16 * pr + 8 * h + 2 * tq);
        }
    };
    const bool w_any = spos[warp * QPW] >= 0;
    float m[QPW], l[QPW];
    float o[NP][2][4], tm[2] = {-INFINITY, -INFINITY}, tl[2] = {0.0f, 0.0f};
    float ta[NP][2][4];  // the merged chunks so far
#pragma unroll
    for (int i = 0; i < NP; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[i][h][e] = ta[i][h][e] = 0.0f;
#pragma unroll
    for (int u = 0; u < QPW; ++u) {
        m[u] = -INFINITY;
        l[u] = 0.0f;
    }

    const F16Stager<NT> stage(int(D), k.last);
    int k0 = k.first_tile();
    stage(rawk, k.kmem, k.rk, k.stk, k0);
    stage(rawv, k.vmem, k.rv, k.stv, k0);
    while (k0 >= 0) {
        const int k1 = k.next_tile(k0), c = k0 / k.ch;
        const bool chunk_end = k1 < 0 || k1 / k.ch != c;
        const int n_k = min(k_att_kt, k.last + 1 - k0);
        __pipeline_wait_prior(1);  // this tile's K
        __syncthreads();
        {
            float sc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            const __half* qa = sqh + (lane & 15) * qs + (lane >> 4) * 8;
            const uint8_t* ka = rawk + (kb * 8 + (lane & 7)) * k.stk + 16 * ((lane >> 3) & 1);
#pragma unroll 4
            for (int ds = 0; ds < int(D) / 16; ++ds) {
                uint32_t af[4], bf[2];
                ldsm_x4<false>(af, qa + 16 * ds);
                ldsm_x2(bf, ka + 32 * ds);
                mma_f16_16x8x16(sc, af, bf[0], bf[1]);
            }
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = kb * 8 + 2 * tq + (e & 1), q = e < 2 ? r0 : r1;
                const int pos = spos[q];
                // a block's unused query rows weigh zero, so their values stay finite
                sp[q * SP + key] = pos < 0 ? 0.0f : k0 + key <= pos ? __fmul_rn(sc[e], scale) : -INFINITY;
            }
        }
        __syncthreads();  // scores written, K read
        stage(rawk, k.kmem, k.rk, k.stk, k1);
        if (w_any) {
            att_weights_mma<QPW>(sp, reinterpret_cast<uint32_t*>(ph), scorr, warp, lane, m, l);
            if (chunk_end && lane == 0)
#pragma unroll
                for (int u = 0; u < QPW; ++u) {
                    sml[2 * (warp * QPW + u)] = m[u];
                    sml[2 * (warp * QPW + u) + 1] = l[u];
                }
        }
        __pipeline_wait_prior(1);  // this tile's V
        __syncthreads();           // weights written, V landed
        {
            const float cr0 = scorr[r0], cr1 = scorr[r1];
#pragma unroll
            for (int i = 0; i < NP; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int e = 0; e < 4; ++e) o[i][h][e] = __fmul_rn(o[i][h][e], e < 2 ? cr0 : cr1);
#pragma unroll
            for (int ks = 0; ks < k_att_kt / 16; ++ks) {
                if (16 * ks >= n_k) break;
                uint32_t w[4];
                ldsm_x4<false>(w, ph + (lane & 15) * k_attm_ps + 16 * ks + (lane >> 4) * 8);
                const uint8_t* va = rawv + (16 * ks + (lane & 7) + ((lane >> 3) & 1) * 8) * k.stv + 16 * (lane >> 4);
#pragma unroll
                for (int i = 0; i < NP; ++i) {
                    const int pr = pw + pstep * i;
                    if (pr >= npairs) break;
                    uint32_t bf[4];
                    ldsm_x4<true>(bf, va + 32 * pr);
                    mma_f16_16x8x16(o[i][0], w, bf[0], bf[1]);
                    mma_f16_16x8x16(o[i][1], w, bf[2], bf[3]);
                }
            }
        }
        __syncthreads();  // V and the weights read
        stage(rawv, k.vmem, k.rv, k.stv, k1);
        if (chunk_end) {
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
                const int q = rr == 0 ? r0 : r1;
                if (k.q0 + q >= k.nq) continue;
                const float nm = sml[2 * q], nl = sml[2 * q + 1];
                if (a.part) {  // this chunk's partial, for k_attention_merge
                    float* out = a.part + ((k.slot_row(q) * a.n_head + k.slot_head(q)) * a.max_chunks + c) * (D + 4);
                    if (pw == 0 && tq == 0) {
                        out[0] = nm;
                        out[1] = nl;
                    }
                    each_value_pair([&](int i, int h, int d) {
                        *reinterpret_cast<float2*>(out + 4 + d) = make_float2(o[i][h][2 * rr], o[i][h][2 * rr + 1]);
                    });
                } else {
                    const AttMergeStep s = att_merge_scalars(tm[rr], tl[rr], nm, nl);
#pragma unroll
                    for (int i = 0; i < NP; ++i)
#pragma unroll
                        for (int h = 0; h < 2; ++h)
#pragma unroll
                            for (int e = 0; e < 2; ++e)
                                ta[i][h][2 * rr + e] = att_merge_value(s, ta[i][h][2 * rr + e], o[i][h][2 * rr + e]);
                }
            }
#pragma unroll
            for (int i = 0; i < NP; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int e = 0; e < 4; ++e) o[i][h][e] = 0.0f;
#pragma unroll
            for (int u = 0; u < QPW; ++u) {
                m[u] = -INFINITY;
                l[u] = 0.0f;
            }
        }
        k0 = k1;
    }
    __pipeline_wait_prior(0);
    if (a.part) return;
    att_rows_out(a, k, D, r0, r1, tl, [&](float* out, float inv, int rr) {
        each_value_pair([&](int i, int h, int d) {
            *reinterpret_cast<float2*>(out + d) =
                make_float2(__fmul_rn(ta[i][h][2 * rr], inv), __fmul_rn(ta[i][h][2 * rr + 1], inv));
        });
    });
}

// ---- the prefill tensor-core form: a warp per 16 queries over whole tiles

// attention_mma's arithmetic with two warps owning 16 queries over whole tiles (FlashAttention-2's
// layout): the scores stay in the mma accumulators, the softmax runs in registers, and the
// weights as f16 pairs are the values' A fragments as they stand. The pair splits the work: each
// warp scores half of the tile's 64 keys (8 a thread) and takes every other pair of 8-column
// blocks of d for the values (a warp holding all of d would need more than 255 registers a
// thread); the pair exchanges the rows' maxima, the key pairs' sums and the weights through
// shared memory. Each score, maximum, mass and value is formed by the same operations in the same
// order as attention_mma forms it (its butterfly sum over 32 lanes of key pairs 2 lane, 2 lane + 1
// is, here, pairs 4 j + tq folded j ^ 4 (across the pair: max and + commute, so both warps get the
// same bits), j ^ 2, j ^ 1, then across tq ^ 2, tq ^ 1), so a query has the same bits in this form
// and in decode's. Eight warps share each staged tile; the merged chunks live in shared memory
// (64 values a thread).
constexpr int k_attf_ds = 2;
constexpr int k_attf_threads = 128 * k_attf_ds;
constexpr int k_attf_pairs = int(k_att_max_d / 16);  // pairs of 8-column blocks of d
// words a lane of a warp of the pair hands the other a tile: its rows' maxima, its key pairs' sums
// (4 key blocks x 2 rows), its weights as f16 pairs (4 key blocks x 2 rows)
constexpr int k_attf_xm = 2, k_attf_xs = 8, k_attf_xp = 8;

__device__ void attention_fa(const AttentionArgs& a, const AttBlock& k, uint8_t* smem) {
    constexpr int DS = k_attf_ds, NT = k_attf_threads, BQ = k_attm_q, NP = k_attf_pairs / DS;
    const int64_t D = k.D;
    const int tid = threadIdx.x, warp = tid % 128 / 32, dh = tid / 128, lane = tid % 32, g = lane / 4, tq = lane % 4;
    const int qs = int(D) + 8;
    uint8_t* rawk = smem;
    uint8_t* rawv = rawk + k_att_kt * k.stk;
    __half* sqh = reinterpret_cast<__half*>(rawv + k_att_kt * k.stv);
    int* spos = reinterpret_cast<int*>(sqh + BQ * qs);
    float4* tas = reinterpret_cast<float4*>(spos + BQ);  // [NP][2][NT]: the merged chunks
    // what the two warps of 16 queries exchange a tile, [pair][half][...][lane]: row maxima,
    // the key pairs' sums, the weights as f16 pairs
    float* xm = reinterpret_cast<float*>(tas + NP * 2 * NT);
    float* xs = xm + 4 * 2 * k_attf_xm * 32;
    uint32_t* xp = reinterpret_cast<uint32_t*>(xs + 4 * 2 * k_attf_xs * 32);
    const float scale = float(a.scale);
    att_queries_f16<NT>(a, k, BQ, int(D), sqh, [&](int j, int d) { return j * qs + d; });
    if (tid < BQ) spos[tid] = k.q0 + tid < k.nq ? int(a.pos[k.slot_row(tid)]) : -1;
    __syncthreads();

    const int npairs = int(D / 16);
    auto pair = [&](int i) { return DS * i + dh; };  // this thread's i-th pair
    const int r0 = warp * 16 + g, r1 = r0 + 8;
    const int pos0 = spos[r0], pos1 = spos[r1];
    const bool w_any = spos[warp * 16] >= 0;
    // the earliest position of the warp's rows (-1 when a row holds no query): tiles at or below
    // it need no causal mask
    int wmin = min(pos0, pos1);
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, o));
    auto ta = [&](int i, int h) -> float4& { return tas[(i * 2 + h) * NT + tid]; };
    float o[NP][2][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    float tm[2] = {-INFINITY, -INFINITY}, tl[2] = {0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < NP; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            ta(i, h) = make_float4(0, 0, 0, 0);
#pragma unroll
            for (int e = 0; e < 4; ++e) o[i][h][e] = 0.0f;
        }

    const __half* qa = sqh + (warp * 16 + (lane & 15)) * qs + (lane >> 4) * 8;
    const uint8_t* ka = rawk + (32 * dh + (lane >> 4) * 8 + (lane & 7)) * k.stk + 16 * ((lane >> 3) & 1);
    // the pair of warps warp and warp + 4: a barrier of its own, buffers [warp][dh][word][lane]
    auto pair_sync = [&]() { asm volatile("bar.sync %0, 64;" ::"r"(1 + warp) : "memory"); };
    float* const my_xm = xm + (warp * 2 + dh) * k_attf_xm * 32 + lane;
    float* const my_xs = xs + (warp * 2 + dh) * k_attf_xs * 32 + lane;
    uint32_t* const my_xp = xp + (warp * 2 + dh) * k_attf_xp * 32 + lane;
    // from this warp's buffers to the other half's (+1 or -1; in this form the compiled code is the
    // measured one)
    const int other = (warp * 2 + (dh ^ 1)) - (warp * 2 + dh);
    const uint8_t* va = rawv + ((lane & 7) + ((lane >> 3) & 1) * 8) * k.stv + 16 * (lane >> 4);
    const F16Stager<NT> stage(int(D), k.last);
    int k0 = k.first_tile();
    stage(rawk, k.kmem, k.rk, k.stk, k0);
    stage(rawv, k.vmem, k.rv, k.stv, k0);
    while (k0 >= 0) {
        const int k1 = k.next_tile(k0), c = k0 / k.ch;
        const bool chunk_end = k1 < 0 || k1 / k.ch != c;
        const int n_k = min(k_att_kt, k.last + 1 - k0);
        __pipeline_wait_prior(1);  // this tile's K
        __syncthreads();
        // this warp's half of the tile's keys: key blocks 4 dh .. 4 dh + 3
        float sc[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) sc[j][e] = 0.0f;
        if (w_any) {
            // the next 16 d's fragments load while this step's products run
            uint32_t af[2][4], bf[2][2][4];
            auto load = [&](int ds, int b) {
                ldsm_x4<false>(af[b], qa + 16 * ds);
#pragma unroll
                for (int j = 0; j < 2; ++j) ldsm_x4<false>(bf[b][j], ka + 16 * j * k.stk + 32 * ds);
            };
            auto step = [&](int b) {
#pragma unroll
                for (int j = 0; j < 2; ++j) {
                    mma_f16_16x8x16(sc[2 * j], af[b], bf[b][j][0], bf[b][j][1]);
                    mma_f16_16x8x16(sc[2 * j + 1], af[b], bf[b][j][2], bf[b][j][3]);
                }
            };
            const int steps = int(D) / 16;
            load(0, 0);
            for (int ds = 0; ds < steps; ds += 2) {
                if (ds + 1 < steps) load(ds + 1, 1);
                step(0);
                if (ds + 1 >= steps) break;
                if (ds + 2 < steps) load(ds + 2, 0);
                step(1);
            }
        }
        __syncthreads();  // K read
        stage(rawk, k.kmem, k.rk, k.stk, k1);
        // The scores become the tile's weights in place, without branches: a row that sees none
        // of the tile's keys (maximum -inf) gets weights exp(-inf) = 0, rescale 1 and mass
        // l * 1 + 0 = l, as attention_mma leaves it. The row's maximum and the key pairs' sums
        // combine the two halves (max and + commute, so both warps get the same bits), and each
        // warp takes the other's weights for its values' products.
        const bool full = k0 + k_att_kt - 1 <= wmin;  // the same for the whole warp
        float mx[2];
        att_mask_scores<4>([&](int j, int e) -> float& { return sc[j][e]; }, scale, full, k0 + 32 * dh + 2 * tq, pos0,
                           pos1, mx);
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) my_xm[32 * rr] = mx[rr];
        pair_sync();
        float nm[2], corr[2], x[2][4];
        // the weights as f16 pairs: [key block][row g, row g + 8], this warp's keys and the other
        // warp's, then the tile's first and second halves
        uint32_t pm[4][2], po[4][2], p0[4][2], p1[4][2];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            mx[rr] = fmaxf(mx[rr], my_xm[k_attf_xm * 32 * other + 32 * rr]);
            nm[rr] = fmaxf(m[rr], mx[rr]);
            const float base = nm[rr] == -INFINITY ? 0.0f : nm[rr];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                sc[j][2 * rr] = __expf(__fsub_rn(sc[j][2 * rr], base));
                sc[j][2 * rr + 1] = __expf(__fsub_rn(sc[j][2 * rr + 1], base));
                x[rr][j] = __fadd_rn(sc[j][2 * rr], sc[j][2 * rr + 1]);
                my_xs[32 * (4 * rr + j)] = x[rr][j];
            }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            pm[j][0] = half2_bits(__floats2half2_rn(sc[j][0], sc[j][1]));
            pm[j][1] = half2_bits(__floats2half2_rn(sc[j][2], sc[j][3]));
#pragma unroll
            for (int f = 0; f < 2; ++f) my_xp[32 * (2 * j + f)] = pm[j][f];
        }
        pair_sync();
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int f = 0; f < 2; ++f) {
                po[j][f] = my_xp[k_attf_xp * 32 * other + 32 * (2 * j + f)];
                p0[j][f] = dh == 0 ? pm[j][f] : po[j][f];
                p1[j][f] = dh == 0 ? po[j][f] : pm[j][f];
            }
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
            float y[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) y[j] = __fadd_rn(x[rr][j], my_xs[k_attf_xs * 32 * other + 32 * (4 * rr + j)]);
            float sum = __fadd_rn(__fadd_rn(y[0], y[2]), __fadd_rn(y[1], y[3]));
            sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 2));
            sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 1));
            corr[rr] = mx[rr] == -INFINITY ? 1.0f : __expf(__fsub_rn(m[rr], nm[rr]));
            l[rr] = __fadd_rn(__fmul_rn(l[rr], corr[rr]), sum);
            m[rr] = nm[rr];
        }
        __pipeline_wait_prior(1);  // this tile's V
        __syncthreads();
        if (w_any) {
#pragma unroll
            for (int i = 0; i < NP; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int e = 0; e < 4; ++e) o[i][h][e] = __fmul_rn(o[i][h][e], corr[e >> 1]);
            // WHOLE: every key of the tile and every pair of d, without the bounds' branches, so
            // the fragments' loads can run ahead of the products
            auto values = [&](auto whole) {
                constexpr bool WHOLE = decltype(whole)::value;
#pragma unroll
                for (int ks = 0; ks < k_att_kt / 16; ++ks) {
                    if (!WHOLE && 16 * ks >= n_k) break;
                    // the weights as the A fragments: rows g, g + 8 of key blocks 2 ks, + 1
                    const uint32_t* wa = (ks < 2 ? p0 : p1)[2 * (ks & 1)];
                    const uint32_t* wb = (ks < 2 ? p0 : p1)[2 * (ks & 1) + 1];
                    const uint32_t w[4] = {wa[0], wa[1], wb[0], wb[1]};
#pragma unroll
                    for (int i = 0; i < NP; ++i) {
                        if (!WHOLE && pair(i) >= npairs) break;
                        uint32_t bf[4];
                        ldsm_x4<true>(bf, va + 16 * ks * k.stv + 32 * pair(i));
                        mma_f16_16x8x16(o[i][0], w, bf[0], bf[1]);
                        mma_f16_16x8x16(o[i][1], w, bf[2], bf[3]);
                    }
                }
            };
            if (n_k == k_att_kt && npairs == DS * NP)
                values(std::true_type{});
            else
                values(std::false_type{});
        }
        __syncthreads();  // V read
        stage(rawv, k.vmem, k.rv, k.stv, k1);
        if (chunk_end) {
            if (a.part) {  // this chunk's partials, for k_attention_merge
#pragma unroll
                for (int rr = 0; rr < 2; ++rr) {
                    const int q = rr == 0 ? r0 : r1;
                    if (k.q0 + q >= k.nq) continue;
                    float* out = a.part + ((k.slot_row(q) * a.n_head + k.slot_head(q)) * a.max_chunks + c) * (D + 4);
                    if (tq == 0 && dh == 0) {
                        out[0] = m[rr];
                        out[1] = l[rr];
                    }
#pragma unroll
                    for (int i = 0; i < NP; ++i) {
                        if (pair(i) >= npairs) break;
#pragma unroll
                        for (int h = 0; h < 2; ++h)
                            *reinterpret_cast<float2*>(out + 4 + 16 * pair(i) + 8 * h + 2 * tq) =
                                make_float2(o[i][h][2 * rr], o[i][h][2 * rr + 1]);
                    }
                }
            } else {  // merged into the total (rows of no query too: their values are never read)
                const AttMergeStep s0 = att_merge_scalars(tm[0], tl[0], m[0], l[0]);
                const AttMergeStep s1 = att_merge_scalars(tm[1], tl[1], m[1], l[1]);
#pragma unroll
                for (int i = 0; i < NP; ++i)
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        float4& t = ta(i, h);
                        const float4 v = t;
                        t = make_float4(att_merge_value(s0, v.x, o[i][h][0]), att_merge_value(s0, v.y, o[i][h][1]),
                                        att_merge_value(s1, v.z, o[i][h][2]), att_merge_value(s1, v.w, o[i][h][3]));
                    }
            }
#pragma unroll
            for (int i = 0; i < NP; ++i)
#pragma unroll
                for (int h = 0; h < 2; ++h)
#pragma unroll
                    for (int e = 0; e < 4; ++e) o[i][h][e] = 0.0f;
            m[0] = m[1] = -INFINITY;
            l[0] = l[1] = 0.0f;
        }
        k0 = k1;
    }
    __pipeline_wait_prior(0);
    if (a.part) return;
    att_rows_out(a, k, D, r0, r1, tl, [&](float* out, float inv, int rr) {
#pragma unroll
        for (int i = 0; i < NP; ++i) {
            if (pair(i) >= npairs) break;
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int d = 16 * pair(i) + 8 * h + 2 * tq;
                const float4 v = ta(i, h);
                *reinterpret_cast<float2*>(out + d) = att_scaled_half(v, rr, inv);
            }
        }
    });
}

// Decode's tensor-core blocks: up to 8 queries on 8 warps, two blocks an SM.
__global__ void __launch_bounds__(256, 2) k_attention_mma(AttentionArgs a) {
    pdl_enter();
    extern __shared__ float4 smem4[];
    AttBlock k;
    if (att_setup(a, true, k_att_q, a.passes_mma, k)) attention_mma(a, k, reinterpret_cast<uint8_t*>(smem4));
}

// Prefill's tensor-core blocks: 64 queries on 8 warps, one block an SM (shared memory).
__global__ void __launch_bounds__(k_attf_threads, 1) k_attention_fa(AttentionArgs a) {
    pdl_enter();
    extern __shared__ float4 smem4[];
    AttBlock k;
    if (att_setup(a, true, k_attm_q, a.passes_mma, k)) attention_fa(a, k, reinterpret_cast<uint8_t*>(smem4));
}

// QPT queries a thread for the scores and QPW a warp for the weights and values: 8 and 4 when a
// block holds up to 32 queries, 2 and 1 when it holds up to 8 (decode: every warp busy). The
// arithmetic per query is the same in both.
template <int QPT, int QPW>
__global__ void __launch_bounds__(k_att_threads) k_attention(AttentionArgs a) {
    pdl_enter();
    extern __shared__ float4 smem4[];
    AttBlock k;
    if (!att_setup(a, false, k_att_q, a.passes, k)) return;
    const int64_t D = a.D;
    const KvDev& b = k.b;
    const int64_t rk = k.rk, rv = k.rv, stk = k.stk, stv = k.stv, last = k.last;
    const uint8_t *kmem = k.kmem, *vmem = k.vmem;
    uint8_t* rawk = reinterpret_cast<uint8_t*>(smem4);             // [k_att_kt][stk]: the next K tile's bytes
    uint8_t* rawv = rawk + k_att_kt * stk;                         // [k_att_kt][stv]
    float* skv = reinterpret_cast<float*>(rawv + k_att_kt * stv);  // [k_att_kt][D + 4]: K's tile, then V's
    float* sq = skv + k_att_kt * (D + 4);                          // [32][D]
    float* sp = sq + k_att_q * D;                                  // [k_att_kt][k_att_sp]: scores, then weights
    float* scorr = sp + k_att_kt * k_att_sp;                       // [32]: each query's rescale for the tile
    int* spos = reinterpret_cast<int*>(scorr + k_att_q);           // [32]: each query's position, -1 for none
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const float scale = float(a.scale);
    const int D4 = int(D / 4);

    for (int64_t i = tid; i < k_att_q * D; i += k_att_threads) {
        const int64_t j = i / D, d = i % D;
        float x = 0;
        if (k.q0 + j < k.nq) {
            x = a.q[k.slot_row(j) * a.qs + k.slot_head(j) * D + d];
            if (b.type_k == 1) x = __half2float(__float2half_rn(x));  // as the f16 cache rounds it
        }
        sq[i] = x;
    }
    if (tid < k_att_q) spos[tid] = k.q0 + tid < k.nq ? int(a.pos[k.slot_row(tid)]) : -1;
    __syncthreads();

    // A tile's values into skv as floats, from the staged bytes (or from memory for f32); keys
    // past `last` read as zeros.
    auto dequant = [&](const uint8_t* raw, const uint8_t* mem, int type, int64_t rb, int64_t st, int64_t k0) {
        for (int i = tid; i < k_att_kt * D4; i += k_att_threads) {
            const int r = i / D4, d4 = i % D4;
            const int64_t key = k0 + r;
            float4 x = make_float4(0, 0, 0, 0);
            if (key <= last) {
                const uint8_t* src = mem + key * rb;
                const uint8_t* row = st > 0 ? raw + r * st + (reinterpret_cast<uintptr_t>(src) & 15) : src;
                x = kv_load4(row, type, 4 * d4);
            }
            *reinterpret_cast<float4*>(skv + r * (D + 4) + 4 * d4) = x;
        }
    };

    const int kk = tid % k_att_kt, qg = tid / k_att_kt;  // scores: this thread's key and QPT queries
    const bool qg_any = spos[qg * QPT] >= 0;
    const bool w_any = spos[warp * QPW] >= 0;  // weights and values: this warp's QPW queries
    float m[QPW], l[QPW], tm[QPW], tl[QPW];
    float4 acc[QPW][k_att_v4], ta[QPW][k_att_v4];
#pragma unroll
    for (int u = 0; u < QPW; ++u) {
        tm[u] = -INFINITY;
        tl[u] = 0.0f;
#pragma unroll
        for (int e = 0; e < k_att_v4; ++e) ta[u][e] = make_float4(0, 0, 0, 0);
    }
    auto reset = [&]() {
#pragma unroll
        for (int u = 0; u < QPW; ++u) {
            m[u] = -INFINITY;
            l[u] = 0.0f;
#pragma unroll
            for (int e = 0; e < k_att_v4; ++e) acc[u][e] = make_float4(0, 0, 0, 0);
        }
    };
    reset();

    int k0 = k.first_tile();
    k.stage(rawk, kmem, rk, k.hk, stk, k0);
    k.stage(rawv, vmem, rv, k.hv, stv, k0);
    while (k0 >= 0) {
        const int k1 = k.next_tile(k0);
        __pipeline_wait_prior(1);  // this tile's K
        __syncthreads();           // every thread's copies landed; the previous tile's values are read
        dequant(rawk, kmem, b.type_k, rk, stk, k0);
        __syncthreads();
        k.stage(rawk, kmem, rk, k.hk, stk, k1);
        if (qg_any) {
            float dot[QPT];
#pragma unroll
            for (int u = 0; u < QPT; ++u) dot[u] = 0.0f;
            const float* kr = skv + kk * (D + 4);
            const float* qr = sq + qg * QPT * D;
            for (int64_t d = 0; d < D; d += 4) {
                const float4 k4 = *reinterpret_cast<const float4*>(kr + d);
#pragma unroll
                for (int u = 0; u < QPT; ++u) {
                    const float4 q4 = *reinterpret_cast<const float4*>(qr + u * D + d);
                    dot[u] = fmaf(q4.x, k4.x, dot[u]);
                    dot[u] = fmaf(q4.y, k4.y, dot[u]);
                    dot[u] = fmaf(q4.z, k4.z, dot[u]);
                    dot[u] = fmaf(q4.w, k4.w, dot[u]);
                }
            }
            const int64_t key = k0 + kk;
            float s[QPT];
#pragma unroll
            for (int u = 0; u < QPT; ++u) s[u] = key <= spos[qg * QPT + u] ? __fmul_rn(dot[u], scale) : -INFINITY;
#pragma unroll
            for (int u = 0; u < QPT; u += 2)
                *reinterpret_cast<float2*>(sp + kk * k_att_sp + qg * QPT + u) = make_float2(s[u], s[u + 1]);
        }
        __pipeline_wait_prior(1);  // this tile's V
        __syncthreads();           // scores written, K read, V landed
        dequant(rawv, vmem, b.type_v, rv, stv, k0);
        if (w_any) att_weights<QPW>(sp, scorr, warp, lane, m, l);
        __syncthreads();  // weights written, V dequantized
        k.stage(rawv, vmem, rv, k.hv, stv, k1);
        if (w_any) {
            float crs[QPW];
#pragma unroll
            for (int u = 0; u < QPW; ++u) crs[u] = scorr[warp * QPW + u];
#pragma unroll
            for (int u = 0; u < QPW; ++u)
#pragma unroll
                for (int e = 0; e < k_att_v4; ++e) acc[u][e] = f4_scale(acc[u][e], crs[u]);
            const int64_t n_k = min(int64_t(k_att_kt), last + 1 - k0);
            for (int64_t r = 0; r < n_k; ++r) {
                float ps[QPW];
#pragma unroll
                for (int u = 0; u < QPW; ++u) ps[u] = sp[r * k_att_sp + warp * QPW + u];
#pragma unroll
                for (int e = 0; e < k_att_v4; ++e) {
                    const int64_t d = lane * 4 + 128 * e;
                    if (d >= D) continue;
                    const float4 v4 = *reinterpret_cast<const float4*>(skv + r * (D + 4) + d);
#pragma unroll
                    for (int u = 0; u < QPW; ++u) {
                        acc[u][e].x = fmaf(ps[u], v4.x, acc[u][e].x);
                        acc[u][e].y = fmaf(ps[u], v4.y, acc[u][e].y);
                        acc[u][e].z = fmaf(ps[u], v4.z, acc[u][e].z);
                        acc[u][e].w = fmaf(ps[u], v4.w, acc[u][e].w);
                    }
                }
            }
        }
        const int c = k0 / k.ch;
        if (k1 < 0 || k1 / k.ch != c) {  // the chunk is done
            if (w_any) {
#pragma unroll
                for (int u = 0; u < QPW; ++u) {
                    const int q = warp * QPW + u;
                    if (k.q0 + q >= k.nq) continue;
                    if (a.part) {  // this chunk's partial, for k_attention_merge
                        float* out =
                            a.part + ((k.slot_row(q) * a.n_head + k.slot_head(q)) * a.max_chunks + c) * (D + 4);
                        if (lane == 0) {
                            out[0] = m[u];
                            out[1] = l[u];
                        }
#pragma unroll
                        for (int e = 0; e < k_att_v4; ++e) {
                            const int64_t d = lane * 4 + 128 * e;
                            if (d < D) *reinterpret_cast<float4*>(out + 4 + d) = acc[u][e];
                        }
                    } else {
                        att_merge(tm[u], tl[u], ta[u], m[u], l[u], acc[u]);
                    }
                }
            }
            reset();
        }
        k0 = k1;
    }
    __pipeline_wait_prior(0);
    if (a.part || !w_any) return;
#pragma unroll
    for (int u = 0; u < QPW; ++u) {
        const int q = warp * QPW + u;
        if (k.q0 + q >= k.nq) continue;
        const float inv = __fdiv_rn(1.0f, tl[u]);
        float* out = a.out + k.slot_row(q) * a.os + k.slot_head(q) * D;
#pragma unroll
        for (int e = 0; e < k_att_v4; ++e) {
            const int64_t d = lane * 4 + 128 * e;
            if (d < D) *reinterpret_cast<float4*>(out + d) = f4_scale(ta[u][e], inv);
        }
    }
}

}  // namespace

// A decode tensor-core block's: staged tiles, f16 queries, scores, f16 weights, per-query
// scalars.
size_t attention_mma_smem(int64_t D) {
    return size_t(k_att_kt * 2 * att_stage_stride(1, D) + k_att_q * (D + 8) * 2 + k_att_q * k_attm_ps * 2) +
           size_t(k_att_q * k_attm_sp + 4 * k_att_q) * sizeof(float);
}

// attention_fa's: staged tiles, f16 queries, positions, the merged chunks.
size_t attention_fa_smem(int64_t D) {
    return size_t(k_att_kt * 2 * att_stage_stride(1, D) + k_attm_q * (D + 8) * 2) +
           size_t(k_attm_q + k_attm_q * k_att_max_d + 4 * 2 * (k_attf_xm + k_attf_xs + k_attf_xp) * 32) * sizeof(float);
}

size_t attention_smem(int64_t D, int type_k, int type_v) {
    return size_t(k_att_kt * (att_stage_stride(type_k, D) + att_stage_stride(type_v, D))) +
           size_t(k_att_kt * (D + 4) + k_att_q * D + k_att_kt * k_att_sp + 2 * k_att_q) * sizeof(float);
}

void configure_attention() {
    size_t most = 0;
    for (int tk : {0, 1, 2, 3, 6, 7, 8, 20, 30})
        for (int tv : {0, 1, 2, 3, 6, 7, 8, 20, 30}) most = std::max(most, attention_smem(k_att_max_d, tk, tv));
    CU(cudaFuncSetAttribute(k_attention<8, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(most)));
    CU(cudaFuncSetAttribute(k_attention<2, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(most)));
    CU(cudaFuncSetAttribute(k_attention_mma, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            int(attention_mma_smem(k_att_max_d))));
    CU(cudaFuncSetAttribute(k_attention_fa, cudaFuncAttributeMaxDynamicSharedMemorySize,
                            int(attention_fa_smem(k_att_max_d))));
    configure_attention_wg();
}

void run_op(cudaStream_t s, const AttentionArgs& a) {
    launch(k_kv_store, blocks_for(a.rows * 2 * ((a.n_head_kv * a.D + 31) / 32), 128), 128, 0, s, a);
    CU_LAUNCHED();
    const dim3 grid(unsigned(a.n_tiles * a.passes), unsigned(a.n_head_kv), unsigned(a.part ? a.splits : 1));
    if (a.smem > 0) {
        if (a.most_queries <= 8)
            launch(k_attention<2, 1>, grid, k_att_threads, size_t(a.smem), s, a);
        else
            launch(k_attention<8, 4>, grid, k_att_threads, size_t(a.smem), s, a);
        CU_LAUNCHED();
    }
    if (a.any_mma) {
        const dim3 gm(unsigned(a.n_tiles * a.passes_mma), grid.y, grid.z);
        if (a.most_queries <= 8)
            launch(k_attention_mma, gm, 256, attention_mma_smem(a.D), s, a);
        else if (!run_attention_wg(s, a, gm))
            launch(k_attention_fa, gm, k_attf_threads, attention_fa_smem(a.D), s, a);
        CU_LAUNCHED();
    }
    if (a.part) {
        run_attention_merge(s, a);
    }
}

}  // namespace bigmoe::cuda
