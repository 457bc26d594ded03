// Dense products with weights: activation quantization, matrix products for 1..n tokens (a warp
// per row and token tile; float weights 8 rows x 8 tokens a warp; tensor-core tiles for 16+
// tokens), the products of one input for decode steps, and the token-embedding lookup. The units
// and tiles they run on are product_units.cuh's, shared with the experts' kernels (moe.cu).
#include "backend/cuda/product_units.cuh"

namespace bigmoe::cuda {

namespace {

// One warp per quantization block: rows x blocks.
__global__ void k_quantize_act(QuantizeArgs a) {
    pdl_enter();
    const int64_t blk = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    quantize_block(int(a.at), a.x + int64_t(blockIdx.y) * a.xs, a.n, blk, threadIdx.x % 32,
                   a.dst + int64_t(blockIdx.y) * a.drb);
}

// out[t][r] for a tile of 64 rows (16 per warp) and 32 tokens of one of the launch's parts.
static_assert(k_mma_rows == k_mma_part_tile);
template <int TYPE, bool FIXED>
__global__ void __launch_bounds__(128) k_matmul_mma(MatmulMmaArgs a) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    // the block's part, its fields picked in registers (a dynamic index would copy the
    // arguments to local memory)
    MmaPart p = a.p[0];
    int64_t first = 0;
#pragma unroll
    for (int k = 1; k < k_mma_parts; ++k)
        if (k < a.n_parts && blockIdx.x >= a.p[k - 1].tiles_end) {
            p = a.p[k];
            first = a.p[k - 1].tiles_end;
        }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, tq = lane % 4;
    const int64_t rtile = (int64_t(blockIdx.x) - first) * k_mma_rows;
    const int64_t r0 = rtile + warp * 16 + g, r1 = r0 + 8;
    const int64_t tok0 = int64_t(blockIdx.y) * k_mma_tokens;
    const int n_tiles = int(min(int64_t(4), (a.T - tok0 + 7) / 8));
    float acc[4][4];
    mma_tile_staged<TYPE, FIXED>(
        [&](int r) { return p.w + min(rtile + r, p.n_out - 1) * p.row_bytes; },
        [&](int j) { return tok0 + j < a.T ? a.act + (tok0 + j) * a.arb : static_cast<const uint8_t*>(nullptr); },
        a.n_in, n_tiles, sm, acc);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int64_t t = tok0 + 8 * i + 2 * tq + (e & 1), r = e < 2 ? r0 : r1;
            if (i < n_tiles && t < a.T && r < p.n_out) p.out[t * p.os + r] = acc[i][e];
        }
}

// out[t][r] = dot(w row r, activation row t): a warp per output row and tile of NT tokens.
template <int NT>
__global__ void k_matmul(MatmulArgs a) {
    pdl_enter();
    const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= a.n_out) return;
    const int64_t t0 = int64_t(blockIdx.y) * NT;
    const int nt = int(a.T - t0 < NT ? a.T - t0 : int64_t(NT));
    float acc[NT];
    row_dots<NT>(int(a.type), a.w + r * a.row_bytes, a.act + t0 * a.arb, a.arb, a.n_in, nt, lane, acc);
    if (lane == 0)
#pragma unroll
        for (int j = 0; j < NT; ++j)
            if (j < nt) a.out[(t0 + j) * a.os + r] = acc[j];
}

// Float weights against 8 tokens or more: a warp takes 8 rows x 8 tokens, so each activation value
// it loads serves 8 rows (with a warp a row, every token's activation row was read again from L2
// for every weight row: the f32 router took a quarter of a millisecond a layer at 512 tokens).
// Each (row, token) sum is lane_dots' own: lane l adds values l, l + 32, ... in order, then the
// warp's tree, so a token gets the bits of the decode kernel.
template <int TYPE>
__global__ void __launch_bounds__(256, 2) k_matmul_float(MatmulArgs a) {
    pdl_enter();
    constexpr int R = 8, NT = 8;
    const int64_t r0 = (int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32) * R;
    const int lane = threadIdx.x % 32;
    if (r0 >= a.n_out) return;
    const int64_t t0 = int64_t(blockIdx.y) * NT;
    const int nt = int(min(int64_t(NT), a.T - t0)), nr = int(min(int64_t(R), a.n_out - r0));
    float acc[R][NT];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j) acc[r][j] = 0;
    // Rows and tokens past the ends read the last ones' values (sums not stored): unconditional
    // loads can all be in flight at once, where guarded ones waited for each other.
    // (32-bit offsets from two bases: 8 + 8 pointers spilled)
    const uint8_t* wb = a.w + r0 * a.row_bytes;
    const uint8_t* xb = a.act + t0 * a.arb;
    int wo[R], xo[NT];
#pragma unroll
    for (int r = 0; r < R; ++r) wo[r] = int(min(r, nr - 1) * a.row_bytes);
#pragma unroll
    for (int j = 0; j < NT; ++j) xo[j] = int(min(j, nt - 1) * a.arb);
    for (int64_t i = lane; i < a.n_in; i += 32) {
        float x[NT], wv[R];
#pragma unroll
        for (int j = 0; j < NT; ++j) x[j] = reinterpret_cast<const float*>(xb + xo[j])[i];
#pragma unroll
        for (int r = 0; r < R; ++r) wv[r] = float_weight<TYPE>(wb + wo[r], i);
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int j = 0; j < NT; ++j) acc[r][j] = fmaf(wv[r], x[j], acc[r][j]);
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int j = 0; j < NT; ++j) {
            const float v = warp_sum(acc[r][j]);
            if (lane == 0 && r < nr && j < nt) a.out[(t0 + j) * a.os + r0 + r] = v;
        }
}

__global__ void k_get_rows(GetRowsArgs a) {
    pdl_enter();
    const int64_t t = blockIdx.x;
    const uint8_t* row = a.w + int64_t(a.ids[t]) * a.row_bytes;
    for (int64_t i = threadIdx.x; i < a.n_cols; i += blockDim.x) a.out[t * a.os + i] = dequant(int(a.type), row, i);
}

// Products of one input for 1..8 tokens: the block quantizes the input into shared memory once,
// then each warp takes output rows across the products.
template <int NT>
__global__ void __launch_bounds__(256) k_matvec(MatvecArgs a) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    for (int64_t sl = 0; sl < a.n_slots; ++sl)
        quantize_rows_in_block(int(a.slot_type[sl]), a.x, a.xs, a.T, a.n_in, sm + a.slot_off[sl], a.slot_arb[sl]);
    __syncthreads();
    int64_t total = 0;
    for (int64_t i = 0; i < a.n_products; ++i) total += a.p[i].n_out;
    for (int64_t r = int64_t(blockIdx.x) * nw + warp; r < total; r += int64_t(gridDim.x) * nw) {
        int64_t i = 0, rr = r;
        while (rr >= a.p[i].n_out) rr -= a.p[i++].n_out;
        const MatvecProduct& p = a.p[i];
        const uint8_t* act = p.slot < 0 ? reinterpret_cast<const uint8_t*>(a.x) : sm + a.slot_off[p.slot];
        const int64_t arb = p.slot < 0 ? a.xs * 4 : a.slot_arb[p.slot];
        float acc[NT];
        row_dots<NT>(int(p.type), p.w + rr * p.row_bytes, act, arb, a.n_in, int(a.T), lane, acc);
        if (lane == 0)
#pragma unroll
            for (int j = 0; j < NT; ++j)
                if (j < a.T) p.out[j * p.os + rr] = acc[j];
    }
}

// row_dots<1> as a call: the rows of other types (float, Q4_0, Q8_0, Q5_K) that k_matvec_sb takes
// now and then keep their code out of its super-block lanes' 128 registers (inlined, the 35B's
// Gated DeltaNet input product took 17.6-17.8 us under ncu on an H100; as a call, 14.1).
__device__ __noinline__ float row_dot1(int type, const uint8_t* row, const uint8_t* act, int64_t arb, int64_t n,
                                       int lane) {
    float acc[1];
    row_dots<1>(type, row, act, arb, n, 1, lane, acc);
    return acc[0];
}

// Products of one input for one token (a decode step): K-quant products' rows 32 / sb_lanes to a
// warp (sb_lanes from 1 to 32), a lane per super-block (sb_lane), other products' rows a warp
// each (lane_dots); the same bits as k_matvec<1>. Work items never straddle two products, so a
// warp's type is uniform.
__global__ void __launch_bounds__(256, 2) k_matvec_sb(MatvecArgs a) {
    pdl_enter();
    extern __shared__ __align__(16) uint8_t sm[];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
    for (int64_t sl = 0; sl < a.n_slots; ++sl)
        quantize_rows_in_block(int(a.slot_type[sl]), a.x, a.xs, 1, a.n_in, sm + a.slot_off[sl], a.slot_arb[sl]);
    __syncthreads();
    const uint8_t* q8k = sm + a.slot_off[a.sb_slot];
    uint8_t* swz = sm + a.swz_off;
    rotate_rows_in_block(q8k, 0, 1, a.n_in, swz);
    __syncthreads();
    const int L = int(a.sb_lanes), R = 32 / L;
    int64_t total = 0;
    if (a.items_end) {
        total = a.p[a.n_products - 1].items_end;
    } else {
        for (int64_t i = 0; i < a.n_products; ++i) total += sb_items(a.p[i], L);
    }
    const int64_t nsb = a.n_in / 256;
    int64_t i = 0;  // a warp's items rise, so their product's index only moves on
    for (int64_t item = int64_t(blockIdx.x) * nw + warp; item < total; item += int64_t(gridDim.x) * nw) {
        int64_t ii = item;
        if (a.items_end) {
            while (item >= a.p[i].items_end) ++i;
            if (i > 0) ii -= a.p[i - 1].items_end;
        } else {
            i = 0;
            while (ii >= sb_items(a.p[i], L)) ii -= sb_items(a.p[i++], L);
        }
        const MatvecProduct& p = a.p[i];
        if (sb_type(p.type) && L == 8) {  // fold8's shuffles unrolled
            const int s = lane % 8;
            const int64_t r = ii * 4 + lane / 8;
            const uint8_t* row = p.w + min(r, p.n_out - 1) * p.row_bytes;
            float acc = 0;
            for (int64_t b0 = 0; b0 < nsb; b0 += 8) {
                const int64_t b = b0 + s;
                fold8(acc, b < nsb ? sb_lane_any(int(p.type), row, b, q8k, swz, a.n_in) : 0.0f, lane & ~7,
                      int(min(int64_t(8), nsb - b0)));
            }
            if (s == 0 && r < p.n_out) p.out[r] = acc;
        } else if (sb_type(p.type)) {  // any other count of lanes a row: the same fold
            // lanes R L to 31 (where L does not divide 32) idle; their shuffles read lanes modulo 32
            const int rl = lane / L, s = lane - rl * L, first = rl * L;
            const bool on = rl < R;
            const int64_t r = ii * R + rl;
            const uint8_t* row = p.w + min(r, p.n_out - 1) * p.row_bytes;
            float acc = 0;
            for (int64_t b0 = 0; b0 < nsb; b0 += L) {
                const int64_t b = b0 + s;
                const float c = on && b < nsb ? sb_lane_any(int(p.type), row, b, q8k, swz, a.n_in) : 0.0f;
                const int m = int(min(int64_t(L), nsb - b0));
                for (int j = 0; j < m; ++j) acc += __shfl_sync(0xffffffffu, c, first + j);
            }
            if (on && s == 0 && r < p.n_out) p.out[r] = acc;
        } else {
            const uint8_t* act = p.slot < 0 ? reinterpret_cast<const uint8_t*>(a.x) : sm + a.slot_off[p.slot];
            const int64_t arb = p.slot < 0 ? a.xs * 4 : a.slot_arb[p.slot];
            const float acc = row_dot1(int(p.type), p.w + ii * p.row_bytes, act, arb, a.n_in, lane);
            if (lane == 0) p.out[ii] = acc;
        }
    }
}

}  // namespace

void run_op(cudaStream_t s, const QuantizeArgs& a) {
    const int64_t warps = a.at == k_q8_0 ? a.n / 32 : a.at == k_q8_k ? a.n / 256 : (a.n + 31) / 32;
    const dim3 grid(unsigned((warps * 32 + 255) / 256), unsigned(a.rows));
    launch(k_quantize_act, grid, 256, 0, s, a);
    CU_LAUNCHED();
}

template <int TYPE>
void launch_mma(cudaStream_t s, const MatmulMmaArgs& a) {
    const dim3 grid(unsigned(a.p[a.n_parts - 1].tiles_end), unsigned((a.T + k_mma_tokens - 1) / k_mma_tokens));
    if (a.stage)
        launch(k_matmul_mma<TYPE, true>, grid, 128, MmaStage<TYPE>::smem, s, a);
    else
        launch(k_matmul_mma<TYPE, false>, grid, 128, MmaStage<TYPE>::smem, s, a);
}

void run_op(cudaStream_t s, const MatmulMmaArgs& a) {
    switch (a.type) {
        case k_q4_k:
            launch_mma<k_q4_k>(s, a);
            break;
        case k_q5_k:
            launch_mma<k_q5_k>(s, a);
            break;
        case k_q6_k:
            launch_mma<k_q6_k>(s, a);
            break;
        case k_q4_0:
            launch_mma<k_q4_0>(s, a);
            break;
        default:
            launch_mma<k_q8_0>(s, a);
            break;
    }
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const MatmulArgs& a) {
    if (a.T >= 8 && (a.type == k_f32 || a.type == k_f16 || a.type == k_bf16)) {
        const dim3 grid(unsigned((a.n_out + 63) / 64), unsigned((a.T + 7) / 8));  // 8 warps of 8 rows
        if (a.type == k_f32)
            launch(k_matmul_float<k_f32>, grid, 256, 0, s, a);
        else if (a.type == k_f16)
            launch(k_matmul_float<k_f16>, grid, 256, 0, s, a);
        else
            launch(k_matmul_float<k_bf16>, grid, 256, 0, s, a);
        CU_LAUNCHED();
        return;
    }
    // the smallest token tile holding the batch, up to 8 (a decode step: 1)
    const int nt = a.T >= 8 ? 8 : a.T >= 4 ? 4 : a.T >= 2 ? 2 : 1;
    const dim3 grid(unsigned((a.n_out * 32 + 255) / 256), unsigned((a.T + nt - 1) / nt));
    switch (nt) {
        case 1:
            launch(k_matmul<1>, grid, 256, 0, s, a);
            break;
        case 2:
            launch(k_matmul<2>, grid, 256, 0, s, a);
            break;
        case 4:
            launch(k_matmul<4>, grid, 256, 0, s, a);
            break;
        default:
            launch(k_matmul<8>, grid, 256, 0, s, a);
            break;
    }
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const GetRowsArgs& a) {
    launch(k_get_rows, unsigned(a.n), 256, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const MatvecArgs& a) {
    const unsigned grid = unsigned(a.blocks);
    const size_t smem = size_t(a.smem);
    if (a.sb) {
        launch(k_matvec_sb, grid, 256, smem, s, a);
        CU_LAUNCHED();
        return;
    }
    switch (a.T) {
        case 1:
            launch(k_matvec<1>, grid, 256, smem, s, a);
            break;
        case 2:
            launch(k_matvec<2>, grid, 256, smem, s, a);
            break;
        case 3:
        case 4:
            launch(k_matvec<4>, grid, 256, smem, s, a);
            break;
        default:
            launch(k_matvec<8>, grid, 256, smem, s, a);
            break;
    }
    CU_LAUNCHED();
}

template <int TYPE>
void set_mma_smem() {
    for (auto k : {k_matmul_mma<TYPE, false>, k_matmul_mma<TYPE, true>})
        CU(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, MmaStage<TYPE>::smem));
}

void configure_products() {
    for (auto k : {k_matvec<1>, k_matvec<2>, k_matvec<4>, k_matvec<8>})
        CU(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(k_products_smem)));
    CU(cudaFuncSetAttribute(k_matvec_sb, cudaFuncAttributeMaxDynamicSharedMemorySize, int(k_products_smem)));
    set_mma_smem<k_q4_k>();
    set_mma_smem<k_q5_k>();
    set_mma_smem<k_q6_k>();
    set_mma_smem<k_q4_0>();
    set_mma_smem<k_q8_0>();
    configure_moe();
}

}  // namespace bigmoe::cuda
