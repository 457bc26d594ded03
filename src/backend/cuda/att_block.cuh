// What the attention kernels' forms share (attention.cu, attention_wg.cu): a block's queries,
// its KV head's cache and the order of its tiles, the queries' f16 staging and the scores'
// masking. Internal linkage, as att_merge.cuh.
#pragma once

#include <cuda_fp16.h>
#include <cuda_pipeline.h>

#include <cstdint>

#include "backend/cuda/kv_rows.cuh"
#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

constexpr int k_att_kt = 64;  // keys per tile
constexpr int k_attm_q = 64;  // queries of a prefill tensor-core block (decode's: k_att_queries)

// A KV head's staging in shared memory: 16-byte copies from the 16-byte boundary at or below
// the head's first byte, so a staged row is that many bytes longer than the head's bytes. f32
// rows are not staged (the tile is read from memory as it is dequantized).
__host__ __device__ inline int64_t att_stage_stride(int t, int64_t D) {
    return t == 0 ? 0 : (kv_row_bytes(t, D) + 15) / 16 * 16 + 16;
}

// What both forms of an attention block share: its queries, its KV head's cache, and the order
// of its tiles.
struct AttBlock {
    AttTile tile;
    KvDev b;
    int D, g, group, nq, q0, last, n_chunks, c_first, c_step, ch;  // 32-bit: fewer registers in the tile loops
    int rk, rv, hk, hv, stk, stv;                                  // cache row and head bytes, staged row strides
    const uint8_t *kmem, *vmem;                                    // the head's K and V bytes in the cache's first row

    __device__ int64_t slot_row(int64_t j) const { return tile.row0 + (q0 + j) / group; }
    __device__ int64_t slot_head(int64_t j) const { return g * group + (q0 + j) % group; }
    __device__ int first_tile() const { return c_first < n_chunks ? c_first * ch : -1; }
    // The block's tiles in order: its chunks (every c_step-th in split mode), each cut at 64 keys;
    // -1 past the last.
    __device__ int next_tile(int k0) const {
        const int c = k0 / ch, n = k0 + k_att_kt;
        if (n <= last && n < (c + 1) * ch) return n;
        const int nc = c + c_step;
        return nc < n_chunks ? nc * ch : -1;
    }
    // Starts copying a tile's bytes of one of K or V for the float form (nothing for f32, or
    // past the end): a warp per row, a lane per 16 bytes from the 16-byte boundary at or below the
    // row's first byte.
    __device__ void stage(uint8_t* raw, const uint8_t* mem, int rb, int hb, int st, int k0) const {
        const int nw = int(blockDim.x) / 32, w = int(threadIdx.x) / 32, ln = int(threadIdx.x) % 32;
        if (st > 0 && k0 >= 0) {
            const int n_keys = min(k_att_kt, last + 1 - k0);
            for (int r = w; r < n_keys; r += nw) {
                const uint8_t* src = mem + int64_t(k0 + r) * rb;
                const uint8_t* base =
                    reinterpret_cast<const uint8_t*>(reinterpret_cast<uintptr_t>(src) & ~uintptr_t(15));
                const int span = int(src - base) + hb;
                for (int c16 = ln; 16 * c16 < span; c16 += 32)
                    __pipeline_memcpy_async(raw + r * st + 16 * c16, base + 16 * c16, 16);
            }
        }
        __pipeline_commit();
    }
};

__device__ __forceinline__ uint32_t half2_bits(__half2 h) {
    return *reinterpret_cast<uint32_t*>(&h);
}

// The block's bq queries as f16 in shared memory (zeros past its last query): a warp per query,
// a lane per 4 values of d (float4 loads where the rows allow them); at(j, d) is the offset in
// halves of query j's value d.
template <int NT, typename At>
__device__ __forceinline__ void att_queries_f16(const AttentionArgs& a, const AttBlock& k, int bq, int D, __half* dst,
                                                At at) {
    const int lane = int(threadIdx.x) % 32;
    const bool q4 = a.qs % 4 == 0 && reinterpret_cast<uintptr_t>(a.q) % 16 == 0;
    for (int j = int(threadIdx.x) / 32; j < bq; j += NT / 32) {
        const bool live = k.q0 + j < k.nq;
        const float* src = live ? a.q + k.slot_row(j) * a.qs + k.slot_head(j) * D : nullptr;
        for (int d = 4 * lane; d < D; d += 128) {
            float4 x = make_float4(0, 0, 0, 0);
            if (live)
                x = q4 ? *reinterpret_cast<const float4*>(src + d)
                       : make_float4(src[d], src[d + 1], src[d + 2], src[d + 3]);
            const __half2 lo = __floats2half2_rn(x.x, x.y), hi = __floats2half2_rn(x.z, x.w);
            *reinterpret_cast<uint2*>(dst + at(j, d)) = make_uint2(half2_bits(lo), half2_bits(hi));
        }
    }
}

// A warp's scores of a tile for its rows r0 (position pos0) and r1 (pos1), J key blocks of 8 a
// thread: each scaled and, unless the whole tile is at or below both positions, masked (keys
// past a row's position weigh -inf; a row of no query weighs 0, so its values stay finite);
// mx gets each row's maximum over the keys of the 4 lanes that hold the row (tq 0-3). score(j, e)
// is row (e < 2 ? r0 : r1), key key0 + 8 j + (e & 1).
template <int J, typename Score>
__device__ __forceinline__ void att_mask_scores(Score score, float scale, bool full, int key0, int pos0, int pos1,
                                                float (&mx)[2]) {
    mx[0] = mx[1] = -INFINITY;
#pragma unroll
    for (int j = 0; j < J; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int pos = e < 2 ? pos0 : pos1;
            float& r = score(j, e);
            float v = __fmul_rn(r, scale);
            if (!full) v = pos < 0 ? 0.0f : key0 + 8 * j + (e & 1) <= pos ? v : -INFINITY;
            r = v;
            mx[e >> 1] = fmaxf(mx[e >> 1], v);
        }
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 1));
        mx[rr] = fmaxf(mx[rr], __shfl_xor_sync(0xffffffffu, mx[rr], 2));
    }
}

// The tensor-core forms' last step: each of a thread's two query rows (r0 for the sums' first
// half, r1 for their second) that the block holds, as its output row and 1 / its mass, given to
// put(out, inv, rr), which writes the row's values.
template <typename Put>
__device__ __forceinline__ void att_rows_out(const AttentionArgs& a, const AttBlock& k, int64_t D, int r0, int r1,
                                             const float (&tl)[2], Put put) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        const int q = rr == 0 ? r0 : r1;
        if (k.q0 + q >= k.nq) continue;
        const float inv = __fdiv_rn(1.0f, tl[rr]);
        put(a.out + k.slot_row(q) * a.os + k.slot_head(q) * D, inv, rr);
    }
}
// Row rr's pair of a float4 of merged sums (rr 0: x, y; 1: z, w), times inv.
__device__ __forceinline__ float2 att_scaled_half(float4 v, int rr, float inv) {
    return rr == 0 ? make_float2(__fmul_rn(v.x, inv), __fmul_rn(v.y, inv))
                   : make_float2(__fmul_rn(v.z, inv), __fmul_rn(v.w, inv));
}

// The block's queries, cache and tiles; false when it has nothing to do or its span takes the
// other form of the products (a launch with spans of both forms runs both kernels).
__device__ bool att_setup(const AttentionArgs& a, bool mma, int64_t bq, int64_t passes, AttBlock& k) {
    k.D = a.D;
    k.g = blockIdx.y;
    k.group = a.n_head / a.n_head_kv;
    const int64_t D = a.D, width = a.n_head_kv * D;
    // prefill: the tiles of late rows (the most keys) first
    const int64_t bx = a.part ? blockIdx.x : gridDim.x - 1 - blockIdx.x;
    k.tile = a.tiles[bx / passes];
    k.nq = k.tile.n_rows * k.group;
    k.q0 = int(bx % passes) * int(bq);
    if (k.q0 >= k.nq) return false;
    k.b = a.kv[k.tile.span];
    const KvDev& b = k.b;
    if (att_uses_mma(a.mma, b.type_k, b.type_v, D) != mma) return false;
    k.stk = att_stage_stride(b.type_k, D);
    k.stv = att_stage_stride(b.type_v, D);
    k.rk = kv_row_bytes(b.type_k, width);
    k.rv = kv_row_bytes(b.type_v, width);
    k.hk = kv_row_bytes(b.type_k, D);
    k.hv = kv_row_bytes(b.type_v, D);
    k.kmem = static_cast<const uint8_t*>(b.k) + kv_row_bytes(b.type_k, k.g * D);
    k.vmem = static_cast<const uint8_t*>(b.v) + kv_row_bytes(b.type_v, k.g * D);
    k.last = int(a.pos[k.slot_row(min(int64_t(k.nq - k.q0), bq) - 1)]);
    k.ch = int(a.chunk);
    k.n_chunks = k.last / k.ch + 1;
    if (a.part && blockIdx.z >= k.n_chunks) return false;  // split blocks cover the longest cache's chunks
    k.c_first = a.part ? blockIdx.z : 0;
    k.c_step = a.part ? gridDim.z : 1;
    return true;
}

}  // namespace

}  // namespace bigmoe::cuda
