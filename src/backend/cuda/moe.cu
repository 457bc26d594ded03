// The routed experts on the GPU: routing (softmax, top-k), the grouping of slots by expert, the
// experts' gate/up and down products (a warp per row for decode steps, tensor-core tiles per
// expert and 32 of its slots for prefill) and the weighted top-k sum. The units and tiles are
// product_units.cuh's, so an expert's rows give the dense kernels' bits.
#include "backend/cuda/product_units.cuh"

namespace bigmoe::cuda {

namespace {

__global__ void k_moe_group(MoeGroupArgs a) {
    pdl_enter();
    const int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (s >= a.n_slots) return;
    const int32_t e = a.ids[s];
    const int32_t at = atomicAdd(a.counts + e, 1);
    a.lists[int64_t(e) * a.per_expert + at] = int32_t(s);
}
// tile_map from the counts: a thread per run of experts, their tile counts' prefix across the block.
__global__ void __launch_bounds__(256) k_moe_tiles(MoeGroupArgs a) {
    pdl_enter();
    __shared__ int32_t part[256];
    const int t = int(threadIdx.x);
    const int64_t per = (a.E + 255) / 256, e0 = min(a.E, t * per), e1 = min(a.E, e0 + per);
    int32_t n = 0;
    for (int64_t e = e0; e < e1; ++e) n += (a.counts[e] + k_mma_tokens - 1) / k_mma_tokens;
    part[t] = n;
    __syncthreads();
    for (int o = 1; o < 256; o <<= 1) {  // inclusive prefix sums
        const int32_t v = t >= o ? part[t - o] : 0;
        __syncthreads();
        part[t] += v;
        __syncthreads();
    }
    int32_t at = part[t] - n;
    for (int64_t e = e0; e < e1; ++e) {
        const int32_t tiles = (a.counts[e] + k_mma_tokens - 1) / k_mma_tokens;
        for (int32_t k = 0; k < tiles; ++k) a.tile_map[at + k] = int32_t(e) << 16 | k;
        at += tiles;
    }
    for (int64_t i = part[255] + t; i < a.map_len; i += 256) a.tile_map[i] = -1;
}
__global__ void k_zero_counts(MoeGroupArgs a) {
    pdl_enter();
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < a.E; e += int64_t(gridDim.x) * blockDim.x)
        a.counts[e] = 0;
}

// Expert e's rows against 32 of its slots: gate and up (GU: h = silu(g) * u, the activation row
// of slot s being token s / K's) for a tile of 32 rows, warps 0-1 on the gate rows and 2-3 on the
// same rows of up, one pass over the inputs (two passes kept both results' registers: 3 blocks an
// SM instead of 4); or down (y, slot s's own row) for a tile of 64.
template <int TYPE, bool GU, bool FIXED>
__global__ void __launch_bounds__(128, 4) k_moe_mma(MoeMmaArgs a) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int32_t m = a.tile_map[blockIdx.y];
    if (m < 0) return;
    const int64_t e = m >> 16, j0 = int64_t(m & 0xFFFF) * k_mma_tokens;
    const int64_t count = a.counts[e];
    constexpr int rows = GU ? k_mma_rows / 2 : k_mma_rows;
    const int64_t rtile = int64_t(blockIdx.x) * rows;
    if (j0 >= count || rtile >= a.n_out) return;
    const int32_t* list = a.lists + e * a.per_expert + j0;
    const int64_t in_tile = min(int64_t(k_mma_tokens), count - j0);
    const int n_tiles = int((in_tile + 7) / 8);
    auto act_of = [&](int j) {
        return j < in_tile ? a.act + int64_t(GU ? list[j] / a.K : list[j]) * a.arb
                           : static_cast<const uint8_t*>(nullptr);
    };
    const uint8_t* base = a.w + e * a.expert_bytes;
    const uint8_t* ub = GU ? a.w2 + e * a.expert_bytes2 : nullptr;
    float acc[4][4];
    mma_tile_staged<TYPE, FIXED>(
        [&](int r) {
            if (GU && r >= rows) return ub + (a.up_off + min(rtile + r - rows, a.n_out - 1)) * a.row_bytes2;
            return base + min(rtile + r, a.n_out - 1) * a.row_bytes;
        },
        act_of, a.n_in, n_tiles, sm, acc);
    if constexpr (GU) {                              // the gate warps hand their sums to the up warps of the same rows
        float* gate = reinterpret_cast<float*>(sm);  // [warp 0-1][lane][16]; the tile is done with sm
        if (warp < 2)
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int q = 0; q < 4; ++q) gate[(warp * 32 + lane) * 16 + 4 * i + q] = acc[i][q];
        __syncthreads();
        if (warp < 2) return;
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][q] = siluf(gate[((warp - 2) * 32 + lane) * 16 + 4 * i + q]) * acc[i][q];
    }
    const int64_t r0 = rtile + (warp % (rows / 16)) * 16 + g, r1 = r0 + 8;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            const int64_t jj = 8 * i + 2 * tq + (q & 1), r = q < 2 ? r0 : r1;
            if (i >= n_tiles || jj >= in_tile || r >= a.n_out) continue;
            a.out[list[jj] * a.os + r] = acc[i][q];
        }
}

// out[t] = sum over k, in top-k order, of wts[t][k] * y[(t, k)] (the down kernel's own sum).
__global__ void k_moe_sum(MoeSumArgs a) {
    pdl_enter();
    const int64_t n_all = a.T * a.N, K = a.K;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n_all; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / a.N, c = i % a.N;
        float o = 0;
        for (int64_t k = 0; k < K; ++k) {
            const float y = a.y[(t * K + k) * a.ys + c], w = a.wts[t * K + k];
            o = k == 0 ? __fmul_rn(y, w) : __fadd_rn(o, __fmul_rn(y, w));
        }
        a.out[t * a.os + c] = o;
    }
}

// Routing for many experts (more than k_route_warp_max): a thread per token, in the CPU's order of
// operations.
__global__ void k_route_serial(RouteArgs a) {
    pdl_enter();
    const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (t >= a.T) return;
    const int64_t E = a.E, K = a.K;
    const float* zr = a.z + t * a.zs;
    float* p = a.p_work + t * E;
    int32_t* ids = a.ids + t * K;
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
            for (int64_t j = 0; j < k; ++j) taken |= ids[j] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        ids[k] = int32_t(best);
        wsum += p[best];
    }
    wsum = fmaxf(wsum, 6.103515625e-5f);
    for (int64_t k = 0; k < K; ++k) a.wts[t * K + k] = p[ids[k]] / wsum;
}

// Routing of one token by one warp: lane l holds the probabilities of experts l, l + 32, ...;
// the softmax's sum in double over the lanes in a fixed order, then K rounds of a warp-wide arg
// max (ties to the lower id). Lane k < K gets the k-th expert and its renormalised weight.
//
// The rounds compare the probabilities' bits as ints (they are >= 0, so the ints order as the
// floats do; -1 marks an expert taken, absent or NaN, none of which a round picks): the warp's
// largest and then the lowest id holding it are one reduction each, and each lane's 16 candidates
// are compared side by side rather than in a chain of shuffles (the experts' gate/up kernel waits
// on this warp).
constexpr int k_route_per_lane = 16;
constexpr int64_t k_route_warp_max = 32 * k_route_per_lane;
__device__ void route_warp(const float* zr, int64_t E, int64_t K, int lane, int32_t* id, float* weight) {
    float p[k_route_per_lane];
    float mx = -INFINITY;
#pragma unroll
    for (int i = 0; i < k_route_per_lane; ++i) {
        const int64_t e = lane + 32 * i;
        p[i] = e < E ? zr[e] : -INFINITY;
        mx = fmaxf(mx, p[i]);
    }
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    double sum = 0;
#pragma unroll
    for (int i = 0; i < k_route_per_lane; ++i) {
        p[i] = lane + 32 * i < E ? expf(p[i] - mx) : 0.0f;
        sum += p[i];
    }
    const float inv = float(1.0 / warp_sum(sum));
    int key[k_route_per_lane];
#pragma unroll
    for (int i = 0; i < k_route_per_lane; ++i) {
        p[i] *= inv;
        key[i] = lane + 32 * i < E && p[i] == p[i] ? __float_as_int(p[i]) : -1;
    }
    float wsum = 0, mine_w = 0;
    int32_t mine_id = 0;
    for (int64_t k = 0; k < K; ++k) {
        int m[k_route_per_lane / 2];
#pragma unroll
        for (int i = 0; i < k_route_per_lane / 2; ++i) m[i] = max(key[i], key[i + k_route_per_lane / 2]);
#pragma unroll
        for (int w = k_route_per_lane / 4; w > 0; w /= 2)
#pragma unroll
            for (int i = 0; i < w; ++i) m[i] = max(m[i], m[i + w]);
        const int top = warp_max_i32(m[0]);
        int lowest = INT32_MAX;
#pragma unroll
        for (int i = k_route_per_lane - 1; i >= 0; --i)
            if (key[i] == top) lowest = lane + 32 * i;
        const int32_t best_id = top < 0 ? INT32_MAX : warp_min_i32(lowest);
        const float best = top < 0 ? -1.0f : __int_as_float(top);
#pragma unroll
        for (int i = 0; i < k_route_per_lane; ++i)
            if (lane + 32 * i == best_id) key[i] = -1;
        if (k == lane) {
            mine_w = best;
            mine_id = best_id;
        }
        wsum += best;
    }
    wsum = fmaxf(wsum, 6.103515625e-5f);
    *id = mine_id;
    *weight = mine_w / wsum;
}

__global__ void k_route(RouteArgs a) {
    pdl_enter();
    const int64_t t = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (t >= a.T) return;
    int32_t id;
    float w;
    route_warp(a.z + t * a.zs, a.E, a.K, lane, &id, &w);
    if (lane < a.K) {
        a.ids[t * a.K + lane] = id;
        a.wts[t * a.K + lane] = w;
    }
}

// Slot s's expert into *slot_expert (shared memory; callers wait at a barrier): with route_here
// warp 0 routes token s / K (block x 0 of the token's first slot also writes its ids and weights
// for the down kernel), otherwise thread 0 reads it.
__device__ __forceinline__ void slot_expert_of(const MoeGateUpArgs& a, int64_t s, int warp, int lane,
                                               int32_t* slot_expert) {
    const int64_t t = s / a.K, k = s % a.K;
    if (a.route_here) {
        if (warp == 0) {
            int32_t id;
            float w;
            route_warp(a.z + t * a.zs, a.E, a.K, lane, &id, &w);
            if (lane == k) *slot_expert = id;
            if (blockIdx.x == 0 && k == 0 && lane < a.K) {
                a.ids[t * a.K + lane] = id;
                a.wts[t * a.K + lane] = w;
            }
        }
    } else if (threadIdx.x == 0) {
        *slot_expert = a.ids[s];
    }
}

// The shared expert's hidden row of token t into hs (shared memory) and its gate, by the whole
// block; the gate's barriers publish hs.
__device__ __forceinline__ float shared_hidden_and_gate(const SharedExpertIn& se, const float* xt, int64_t N, int64_t t,
                                                        float* hs) {
    __shared__ float part[32];
    for (int64_t i = threadIdx.x; i < se.Fs; i += blockDim.x)
        hs[i] = siluf(se.sg[t * se.sgs + i]) * se.su[t * se.sus + i];
    return block_gate(se.gv, xt, N, part);
}

// The shared expert's hidden row of token t (staged at sh_f), then its activations (at sh_q, type
// at), quantized by the block after a barrier; returns its gate.
__device__ __forceinline__ float shared_expert_in(const MoeDownArgs& a, int64_t t, int at, uint8_t* sm) {
    float* hs = reinterpret_cast<float*>(sm + a.sh_f);
    const float gate = shared_hidden_and_gate(a.se, a.x + t * a.xs, a.N, t, hs);
    quantize_rows_in_block(at, hs, 0, 1, a.se.Fs, sm + a.sh_q, 0);
    return gate;
}

// A warp per (slot, row f of the expert's gate and up).
__global__ void __launch_bounds__(256) k_moe_gate_up(MoeGateUpArgs a) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t s = blockIdx.y, t = s / a.K;
    int32_t* slot_expert = reinterpret_cast<int32_t*>(sm);
    const int ag_t = act_type(int(a.tg)), au_t = act_type(int(a.tu));
    const uint8_t *ag, *au;
    if (a.ag) {
        ag = a.ag + t * a.agb;
        au = a.au + t * a.aub;
    } else {
        // warp 0 routes (below) while the others quantize
        const int qw = a.route_here ? 1 : 0;
        uint8_t* q = sm + 16;
        quantize_rows_in_block(ag_t, a.x + t * a.xs, 0, 1, a.N, q, 0, qw);
        ag = au = q;
        if (au_t != ag_t) {
            uint8_t* q2 = q + act_row_bytes(ag_t, a.N);
            quantize_rows_in_block(au_t, a.x + t * a.xs, 0, 1, a.N, q2, 0, qw);
            au = q2;
        }
    }
    slot_expert_of(a, s, warp, lane, slot_expert);
    __syncthreads();
    const int64_t f = int64_t(blockIdx.x) * 8 + warp;
    if (f >= a.F) return;
    const int64_t e = *slot_expert;
    const uint8_t* rg = a.wg + e * a.ebg + f * a.rbg;
    const uint8_t* ru = a.wu + e * a.ebu + (a.up_off + f) * a.rbu;
    float g[1], u[1];
    row_dots<1>(int(a.tg), rg, ag, 0, a.N, 1, lane, g);
    row_dots<1>(int(a.tu), ru, au, 0, a.N, 1, lane, u);
    if (lane == 0) a.h[s * a.hs + f] = siluf(g[0]) * u[0];
}

// A warp per (token t, row n of the down products): its K experts' rows in top-k order.
__global__ void __launch_bounds__(256) k_moe_down(MoeDownArgs a) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t = blockIdx.y, K = a.K;
    const int at = act_type(int(a.td));
    const uint8_t* hq = a.ah ? a.ah + t * K * a.ahb : sm;
    const int64_t arb = a.ah ? a.ahb : int64_t(act_row_bytes(at, a.F));
    if (!a.ah) quantize_rows_in_block(at, a.h + t * K * a.hs, a.hs, K, a.F, sm, arb);
    const float shared_gate = a.wds ? shared_expert_in(a, t, act_type(int(a.tds)), sm) : 0.0f;
    __syncthreads();
    const int64_t n = int64_t(blockIdx.x) * 8 + warp;
    if (n >= a.N) return;
    const int32_t* ids = a.ids + t * K;
    const float* wts = a.wts + t * K;
    float o = 0;
    fold_rows_any(
        int(a.td), K, a.F, lane, [&](int64_t k) { return a.wd + ids[k] * a.ebd + n * a.rbd; },
        [&](int64_t k) { return hq + k * arb; },
        [&](int64_t k, float y) { o = k == 0 ? __fmul_rn(y, wts[k]) : __fadd_rn(o, __fmul_rn(y, wts[k])); });
    if (a.wds) {
        float y[1];
        row_dots<1>(int(a.tds), a.wds + n * a.rbds, sm + a.sh_q, 0, a.se.Fs, 1, lane, y);
        o = o + y[0] * shared_gate;  // k_add_gated's a + b * g
    }
    if (lane == 0) a.out[t * a.os + n] = o;
}

// The blocks of 128 / gl rows that form a super-block of slot s's hidden row count themselves in
// a.cnt; the last quantizes it into hq (its Q8_K block, then its rotated quants) and sets the
// count back to zero. The bits are quantize_rows_in_block's and rotate_rows_in_block's.
__device__ __forceinline__ void quantize_when_complete(const MoeGateUpArgs& a, int64_t s, int64_t grp, int warp,
                                                       int lane) {
    __shared__ int last;
    const int per_sb = int(256 / gate_up_group_rows(a.gl));
    const int64_t j = grp / per_sb, nsb = a.F / 256, t = s / a.K, k = s % a.K;
    int* c = a.cnt + s * nsb + j;
    __threadfence();  // this block's rows of h before its count
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(c, 1) == per_sb - 1;
    __syncthreads();
    if (!last || warp != 0) return;
    __threadfence();  // the other blocks' rows, counted before ours
    const MoeHq& l = a.hq_lay;
    uint8_t* dst = a.hq + t * l.bytes;
    quantize_block(k_q8_k, a.h + s * a.hs, a.F, j, lane, dst + k * l.arb);
    __syncwarp();
    if (lane < 16)
        *reinterpret_cast<int4*>(dst + l.rot + k * a.F + swz_at(j, lane, k * nsb)) =
            *reinterpret_cast<const int4*>(dst + k * l.arb + 256 * j + 16 * lane);
    if (lane == 0) *c = 0;
}

// Token t's shared expert input into hq: its hidden row as the swiglu op forms it (staged in
// shared memory), quantized and rotated, and its gate as k_add_gated forms it. A whole block.
__device__ __forceinline__ void shared_expert_hq(const MoeGateUpArgs& a, int64_t t, uint8_t* sm) {
    const MoeHq& l = a.hq_lay;
    uint8_t* dst = a.hq + t * l.bytes;
    float* hs = reinterpret_cast<float*>(sm);
    const float gate = shared_hidden_and_gate(a.se, a.x + t * a.xs, a.N, t, hs);
    quantize_rows_in_block(k_q8_k, hs, 0, 1, a.se.Fs, dst + l.sq, 0);
    __syncthreads();
    rotate_rows_in_block(dst + l.sq, 0, 1, a.se.Fs, dst + l.rot + a.K * a.F);
    if (threadIdx.x == 0) *reinterpret_cast<float*>(dst + l.gate) = gate;
}

// k_moe_gate_up for a decode step a lane per super-block (sb_lane): a warp takes 16 / gl rows of
// slot s's expert, gl lanes a row (8: lanes 0-7 / 16-23 on rows f / f + 1's gate super-blocks, 8-15
// / 24-31 on their up rows', 8 at a time), each row folded in super-block order: k_moe_gate_up's
// bits. The rotated copy of the quantized input lies at swz_off. A block takes groups of 128 / gl
// rows gridDim.x apart, quantizing and routing once for all of them.
__global__ void __launch_bounds__(256, 2) k_moe_gate_up_sb(MoeGateUpArgs a) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    // with the shared expert, row 0 forms its input (block x for token x): scheduled first, not in
    // a second wave after the slots' blocks (H200, 35B tg128: 315 t/s against 310)
    const int64_t lead = a.hq && a.se.Fs ? 1 : 0;
    if (blockIdx.y < lead) {
        for (int64_t t = blockIdx.x; t < a.n_slots / a.K; t += gridDim.x) {
            if (t > blockIdx.x) __syncthreads();  // the staged row is read before the next takes its place
            shared_expert_hq(a, t, sm);
        }
        return;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t s = blockIdx.y - lead, t = s / a.K, N = a.N;
    int32_t* slot_expert = reinterpret_cast<int32_t*>(sm);
    uint8_t* q = sm + 16;
    quantize_rows_in_block(k_q8_k, a.x + t * a.xs, 0, 1, N, q, 0, a.route_here ? 1 : 0);
    slot_expert_of(a, s, warp, lane, slot_expert);
    __syncthreads();
    uint8_t* swz = sm + a.swz_off;
    rotate_rows_in_block(q, 0, 1, N, swz);
    __syncthreads();
    const int G = int(a.gl), gi = lane / G, first = gi * G;  // group gi: row gi / 2's gate (even) or up
    const bool up = gi & 1;
    const int64_t e = *slot_expert, nsb = N / 256, rows = gate_up_group_rows(G), rw = 16 / G;
    const int type = int(up ? a.tu : a.tg);
    for (int64_t grp = blockIdx.x; grp * rows < a.F; grp += gridDim.x) {
        const int64_t f = (grp * 8 + warp) * rw + gi / 2, ff = min(f, a.F - 1);
        const uint8_t* row = up ? a.wu + e * a.ebu + (a.up_off + ff) * a.rbu : a.wg + e * a.ebg + ff * a.rbg;
        float acc = 0;
        if (G == 8) {  // fold8's shuffles unrolled
            for (int64_t b0 = 0; b0 < nsb; b0 += 8) {
                const int64_t b = b0 + lane % 8;
                fold8(acc, b < nsb ? sb_lane_any(type, row, b, q, swz, N) : 0.0f, first,
                      int(min(int64_t(8), nsb - b0)));
            }
        } else {
            for (int64_t b0 = 0; b0 < nsb; b0 += G) {
                const int64_t b = b0 + (lane - first);
                const float c = b < nsb ? sb_lane_any(type, row, b, q, swz, N) : 0.0f;
                const int m = int(min(int64_t(G), nsb - b0));
                for (int j = 0; j < m; ++j) acc += __shfl_sync(0xffffffffu, c, first + j);
            }
        }
        const float u = __shfl_sync(0xffffffffu, acc, first + G);
        if (lane == first && !up && f < a.F) a.h[s * a.hs + f] = siluf(acc) * u;
        if (a.hq) quantize_when_complete(a, s, grp, warp, lane);
    }
}

// k_moe_down for a decode step a lane per super-block (sb_lane): token t's K expert rows of
// F / 256 super-blocks each on K F / 256 adjacent lanes, 32 / (K F / 256) output rows a warp.
// Each expert's row folds in super-block order, the experts in top-k order, then the shared
// expert: k_moe_down's bits. Its inputs, quantized and rotated by k_moe_gate_up_sb, are read where
// they lie, L1 serving a block's warps (copied into shared memory first: the same speed).
__global__ void __launch_bounds__(256, 2) k_moe_down_sb(MoeDownArgs a) {
    pdl_enter();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t t = blockIdx.y, K = a.K, F = a.F, nsb = F / 256;
    const MoeHq& l = a.lay;
    const uint8_t* in = a.hq + t * l.bytes;
    const int64_t arb = l.arb;
    const float shared_gate = a.wds ? *reinterpret_cast<const float*>(in + l.gate) : 0.0f;
    const uint8_t *swz = in + l.rot, *swz_s = swz + K * F;
    const int per_row = int(K * nsb), rl = lane / per_row, li = lane % per_row, k = li / int(nsb), first = rl * per_row;
    const int64_t n = (int64_t(blockIdx.x) * 8 + warp) * (32 / per_row) + rl, nn = min(n, a.N - 1);
    const int32_t* ids = a.ids + t * K;
    const float* wts = a.wts + t * K;
    const float c =
        sb_lane_any(int(a.td), a.wd + ids[k] * a.ebd + nn * a.rbd, li % nsb, in + k * arb, swz + k * F, F, k * nsb);
    // each lane folds its own expert's super-blocks and weighs them, then the experts fold in top-k
    // order: nsb + K shuffles a lane instead of K nsb, the same operations in the same order
    float y = 0;
    for (int64_t b = 0; b < nsb; ++b) y += __shfl_sync(0xffffffffu, c, first + int(k * nsb + b));
    const float yw = __fmul_rn(y, wts[k]);
    float o = 0;
    for (int64_t kk = 0; kk < K; ++kk) {
        const float v = __shfl_sync(0xffffffffu, yw, first + int(kk * nsb));
        o = kk == 0 ? v : __fadd_rn(o, v);
    }
    if (a.wds) {
        const int64_t nsbs = a.se.Fs / 256;
        float y = 0;
        for (int64_t b0 = 0; b0 < nsbs; b0 += per_row) {
            const int64_t b = b0 + li;
            const float cs =
                b < nsbs ? sb_lane_any(int(a.tds), a.wds + nn * a.rbds, b, in + l.sq, swz_s, a.se.Fs, 0) : 0.0f;
            const int64_t m = min(int64_t(per_row), nsbs - b0);
            for (int64_t j = 0; j < m; ++j) y += __shfl_sync(0xffffffffu, cs, first + int(j));
        }
        o = o + y * shared_gate;  // k_add_gated's a + b * g
    }
    if (li == 0 && n < a.N) a.out[t * a.os + n] = o;
}
}  // namespace

void run_op(cudaStream_t s, const RouteArgs& a) {
    if (a.E <= k_route_warp_max && a.K <= 32)
        launch(k_route, blocks_for(a.T * 32, 128), 128, 0, s, a);
    else
        launch(k_route_serial, blocks_for(a.T, 64), 64, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const MoeGroupArgs& a) {
    launch(k_zero_counts, blocks_for(a.E, 256), 256, 0, s, a);
    CU_LAUNCHED();
    launch(k_moe_group, blocks_for(a.n_slots, 256), 256, 0, s, a);
    CU_LAUNCHED();
    launch(k_moe_tiles, 1, 256, 0, s, a);
    CU_LAUNCHED();
}

template <int TYPE, bool GU>
void launch_moe_mma(dim3 grid, cudaStream_t s, const MoeMmaArgs& a) {
    if (a.stage)
        launch(k_moe_mma<TYPE, GU, true>, grid, 128, MmaStage<TYPE>::smem, s, a);
    else
        launch(k_moe_mma<TYPE, GU, false>, grid, 128, MmaStage<TYPE>::smem, s, a);
}

template <bool GU>
void moe_mma(cudaStream_t s, const MoeMmaArgs& a) {
    constexpr int rows = GU ? k_mma_rows / 2 : k_mma_rows;  // k_moe_mma's tiles
    const dim3 grid(unsigned((a.n_out + rows - 1) / rows), unsigned(a.map_len));
    switch (a.type) {
        case k_q4_k:
            launch_moe_mma<k_q4_k, GU>(grid, s, a);
            break;
        case k_q5_k:
            launch_moe_mma<k_q5_k, GU>(grid, s, a);
            break;
        case k_q6_k:
            launch_moe_mma<k_q6_k, GU>(grid, s, a);
            break;
        case k_q4_0:
            launch_moe_mma<k_q4_0, GU>(grid, s, a);
            break;
        default:
            launch_moe_mma<k_q8_0, GU>(grid, s, a);
            break;
    }
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const MoeMmaArgs& a) {
    if (a.w2)
        moe_mma<true>(s, a);
    else
        moe_mma<false>(s, a);
}

void run_op(cudaStream_t s, const MoeSumArgs& a) {
    launch(k_moe_sum, blocks_for(a.T * a.N, 256), 256, 0, s, a);
    CU_LAUNCHED();
}

template <int TYPE>
void set_moe_mma_smem() {
    for (auto k : {k_moe_mma<TYPE, true, false>, k_moe_mma<TYPE, false, false>, k_moe_mma<TYPE, true, true>,
                   k_moe_mma<TYPE, false, true>})
        CU(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, MmaStage<TYPE>::smem));
}

void configure_moe() {
    const int bytes = int(k_products_smem);
    CU(cudaFuncSetAttribute(k_moe_gate_up, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CU(cudaFuncSetAttribute(k_moe_down, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CU(cudaFuncSetAttribute(k_moe_down_sb, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    CU(cudaFuncSetAttribute(k_moe_gate_up_sb, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
    set_moe_mma_smem<k_q4_k>();
    set_moe_mma_smem<k_q5_k>();
    set_moe_mma_smem<k_q6_k>();
    set_moe_mma_smem<k_q4_0>();
    set_moe_mma_smem<k_q8_0>();
}

void run_op(cudaStream_t s, const MoeGateUpArgs& a) {
    if (a.sb) {
        const int64_t rows = a.n_slots + (a.hq && a.se.Fs ? 1 : 0);  // the shared expert's row first
        const int64_t rg = gate_up_group_rows(a.gl), gx = a.gx > 0 ? a.gx : (a.F + rg - 1) / rg;
        launch(k_moe_gate_up_sb, dim3(unsigned(gx), unsigned(rows)), 256, size_t(a.smem), s, a);
        CU_LAUNCHED();
        return;
    }
    launch(k_moe_gate_up, dim3(unsigned((a.F + 7) / 8), unsigned(a.n_slots)), 256, size_t(a.smem), s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const MoeDownArgs& a) {
    if (a.sb) {
        const int64_t rows = 8 * (32 / (a.K * (a.F / 256)));  // a block's
        launch(k_moe_down_sb, dim3(unsigned((a.N + rows - 1) / rows), unsigned(a.T)), 256, 0, s, a);
        CU_LAUNCHED();
        return;
    }
    launch(k_moe_down, dim3(unsigned((a.N + 7) / 8), unsigned(a.T)), 256, size_t(a.smem), s, a);
    CU_LAUNCHED();
}

}  // namespace bigmoe::cuda
