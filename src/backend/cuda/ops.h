// The CUDA backend's kernels as the backend enqueues them: one plain struct of arguments per
// kernel and one run_op overload that launches it on a stream. The backend records (struct,
// function) pairs to replay a step or to compare it with a recorded one, so every field is 8
// bytes wide (no padding: two structs with equal fields have equal bytes) and holds everything
// the launch depends on.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/common.cuh"
#include "backend/cuda/limits.h"

namespace bigmoe::cuda {

// ---- products (products.cu)

// Activation rows of x quantized (or rounded) for a product with weight type `wt`.
struct QuantizeArgs {
    int64_t at;
    const float* x;
    int64_t xs, n, rows;
    uint8_t* dst;
    int64_t drb;
};
// out[t][r] = dot(weight row r, activation row t) for t < T (warp kernels).
struct MatmulArgs {
    int64_t type;
    const uint8_t* w;
    int64_t row_bytes, n_in, n_out;
    const uint8_t* act;
    int64_t arb, T;
    float* out;
    int64_t os;
};
// Tensor-core products of one quantized input (16 tokens or more) with up to k_mma_parts weights
// of one type in one launch, the same bits as the warp kernels: the grid's 64-row tiles are part
// 0's, then part 1's, ... A part of a few rows alone is a handful of blocks that each walk the
// whole input while most of the GPU idles (the 122B's 64-row Gated DeltaNet gates: 16 blocks);
// beside a large part its tiles are a few more blocks of a full grid.
constexpr int k_mma_parts = 4;
constexpr int64_t k_mma_part_tile = 64;  // rows a tile (product_units.cuh's k_mma_rows)
struct MmaPart {
    const uint8_t* w;
    int64_t row_bytes, n_out;
    float* out;
    int64_t os;
    int64_t tiles_end;  // the 64-row tiles of this part and those before it
};
// stage: 1 = mma_tile_staged's FIXED copies (BIGMOE_CUDA_STAGE).
struct MatmulMmaArgs {
    int64_t type, n_in;
    const uint8_t* act;
    int64_t arb, T, n_parts, stage;
    MmaPart p[k_mma_parts];
};
struct GetRowsArgs {
    int64_t type;
    const uint8_t* w;
    int64_t row_bytes;
    const int32_t* ids;
    int64_t n, n_cols;
    float* out;
    int64_t os;
};
// Routing: softmax, top-k (ties to the lower id), renormalised weights; ids/wts are T x K.
struct RouteArgs {
    const float* z;
    int64_t zs, T, E, K;
    int32_t* ids;
    float* wts;
    float* p_work;
};
// Products of one input for 1..8 tokens (decode, verification), the input quantized in shared
// memory by each block: slot i holds the T rows for activation type slot_type[i]; a product reads
// slot p.slot, or the float input itself (slot -1, f32 weights).
constexpr int k_matvec_products = 4;
struct MatvecProduct {
    int64_t type;
    const uint8_t* w;
    int64_t row_bytes, n_out;
    float* out;
    int64_t os, slot;
    // k_matvec_sb: the work items of this product and those before it, so a warp finds its
    // item's product by comparing, not by dividing row counts (a software routine on the GPU)
    int64_t items_end;
};
// The weight types the lane-per-super-block kernels take (k_matvec_sb, the experts' _sb forms).
__host__ __device__ inline bool sb_type(int64_t t) {
    return t == k_q4_k || t == k_q6_k;
}
// k_matvec_sb's work items of a product: 32 / lanes rows a warp for those types (lanes a row),
// otherwise one.
__host__ __device__ inline int64_t sb_items(const MatvecProduct& p, int64_t lanes) {
    const int64_t r = 32 / lanes;
    return sb_type(p.type) ? (p.n_out + r - 1) / r : p.n_out;
}
// With sb (one token, K-quant products of whole super-blocks): k_matvec_sb, its rotated copy of
// slot sb_slot's Q8_K row at smem offset swz_off, sb_lanes lanes a row (1 to 32).
struct MatvecArgs {
    const float* x;
    int64_t xs, n_in, T, n_products, n_slots, smem, blocks, sb, sb_slot, swz_off, sb_lanes;
    // k_matvec_sb: 1 finds an item's product by items_end, 0 by dividing (BIGMOE_CUDA_ITEMS=0,
    // for measuring; the same bits)
    int64_t items_end;
    int64_t slot_type[k_matvec_products], slot_off[k_matvec_products], slot_arb[k_matvec_products];
    MatvecProduct p[k_matvec_products];
};
// Shared memory the in-kernel quantizing products may take.
constexpr int64_t k_products_smem = 96 << 10;

// Where k_moe_down_sb's inputs lie in MoeGateUpArgs::hq, a token's:
// the K Q8_K rows of the experts' hidden rows, the shared expert's Q8_K row at sq, the rotated
// quants of all of them from rot (the K rows', then the shared row's), the shared gate at gate.
struct MoeHq {
    int64_t arb, sq, rot, gate, bytes;
};
constexpr int64_t k_moe_counters = 16384;  // super-blocks of hidden rows a decode step's gate/up counts
// Qwen3.5's gated shared expert as the experts' decode kernels take it in: its hidden row of Fs
// values, silu(sg[t]) * su[t] (the swiglu op's), and its gate, sigmoid(gv . x[t]) (add_gated's).
struct SharedExpertIn {
    const float* sg;
    int64_t sgs;
    const float* su;
    int64_t sus, Fs;
    const float* gv;
};

// h[s] = silu(x[t] . gate_e) * (x[t] . up_e) for each slot s = (t, k) of expert e. With
// route_here the kernel routes token t itself (softmax and top-k of router logits z) and writes
// ids / wts for the down kernel; otherwise it reads them. With ag == nullptr it quantizes x[t]
// in shared memory (decode); otherwise it reads activations quantized before (prefill).
struct MoeGateUpArgs {
    int64_t tg;
    const uint8_t* wg;
    int64_t rbg, ebg, tu;
    const uint8_t* wu;
    int64_t rbu, ebu, up_off, N, F, K;
    const uint8_t* ag;
    int64_t agb;
    const uint8_t* au;
    int64_t aub;
    const float* x;
    int64_t xs;
    const float* z;
    int64_t zs, E, route_here, n_slots;
    int32_t* ids;
    float* wts;
    float* h;
    int64_t hs, smem;
    // sb: k_moe_gate_up_sb (Q4_K / Q6_K rows of whole super-blocks), its rotated input at swz_off
    int64_t sb, swz_off;
    // With hq (sb only, for k_moe_down_sb): the down kernel's inputs, MoeHq's layout a token. The
    // block that completes a super-block of slot s's hidden row (cnt counts them; zero between
    // launches) quantizes it there. With se.Fs, block (t, 0) forms token t's shared expert input
    // and gate there (the slots' blocks from row 1 on).
    uint8_t* hq;
    MoeHq hq_lay;
    int* cnt;
    SharedExpertIn se;
    // sb: blocks across the rows (each takes groups of gate_up_group_rows(gl) rows gx apart; 0:
    // one a group), gl lanes a row (2, 4 or 8)
    int64_t gx, gl;
};
// The rows a block of k_moe_gate_up_sb takes at a time: 8 warps of 16 / gl rows.
__host__ __device__ inline int64_t gate_up_group_rows(int64_t gl) {
    return 8 * (16 / gl);
}
// out[t] = sum over k, in top-k order, of wts[t][k] * (h[(t, k)] . down_e): a warp per output
// row. With ah == nullptr the kernel quantizes token t's K rows of h in shared memory. With wds
// (decode only) it adds the shared expert (se) as add_gated does: + gate * (hidden row . shared
// down row), the hidden row staged as floats at smem offset sh_f and quantized at sh_q.
struct MoeDownArgs {
    int64_t td;
    const uint8_t* wd;
    int64_t rbd, ebd, N, F, K, T;
    const int32_t* ids;
    const float* wts;
    const uint8_t* ah;
    int64_t ahb;
    const float* h;
    int64_t hs, smem;
    float* out;
    int64_t os;
    SharedExpertIn se;
    int64_t tds;
    const uint8_t* wds;
    int64_t rbds;
    const float* x;
    int64_t xs, sh_f, sh_q;
    // sb: k_moe_down_sb (Q4_K / Q6_K rows of whole super-blocks), its inputs from hq (lay: MoeHq's
    // layout a token), made by k_moe_gate_up_sb
    int64_t sb;
    const uint8_t* hq;
    MoeHq lay;
};

void run_op(cudaStream_t s, const QuantizeArgs& a);
void run_op(cudaStream_t s, const MatmulArgs& a);
void run_op(cudaStream_t s, const MatmulMmaArgs& a);
void run_op(cudaStream_t s, const GetRowsArgs& a);
void run_op(cudaStream_t s, const RouteArgs& a);
void run_op(cudaStream_t s, const MoeGateUpArgs& a);
void run_op(cudaStream_t s, const MoeDownArgs& a);
// Prefill's grouped experts: lists[e][0, counts[e]) = the slots routed to expert e; then the
// (expert, 32-slot tile) pairs that have slots, in expert order, as tile_map[i] = expert << 16 |
// tile, -1 past the last (up to map_len).
struct MoeGroupArgs {
    const int32_t* ids;
    int64_t n_slots, E, per_expert;
    int32_t* counts;
    int32_t* lists;
    int32_t* tile_map;
    int64_t map_len;
};
// Per expert, a tensor-core product over its listed slots: with w2, gate (w) and up (w2 at rows
// up_off..) into out = silu(gate) * up, the activation row of slot s being token s / K's;
// without, out[s] = the product with slot s's own activation row.
struct MoeMmaArgs {
    int64_t type;
    const uint8_t* w;
    int64_t row_bytes, expert_bytes;
    const uint8_t* w2;
    int64_t row_bytes2, expert_bytes2, up_off, n_in, n_out, E, K, map_len, per_expert;
    const int32_t* counts;
    const int32_t* lists;
    const int32_t* tile_map;  // a block row per entry (MoeGroupArgs)
    const uint8_t* act;
    int64_t arb;
    float* out;
    int64_t os, stage;  // as MatmulMmaArgs'
};
// out[t] = sum over k, in top-k order, of wts[t][k] * y[(t, k)].
struct MoeSumArgs {
    const float* y;
    int64_t ys;
    const float* wts;
    int64_t T, K, N;
    float* out;
    int64_t os;
};
void run_op(cudaStream_t s, const MoeGroupArgs& a);
void run_op(cudaStream_t s, const MoeMmaArgs& a);
void run_op(cudaStream_t s, const MoeSumArgs& a);
void run_op(cudaStream_t s, const MatvecArgs& a);
// Once per device: the shared memory the products above may take (configure_products also calls
// configure_moe, the experts' part in moe.cu).
void configure_products();
void configure_moe();
void configure_attention();

// ---- the other ops (layers.cu)

// Threads of an RMS norm block (k_rms_norm, k_attention_inputs): the sum of squares is added in
// an order fixed by it (norm_scale_block).
constexpr int k_norm_threads = 256;

// out = rms_norm(x) per group of g columns; with y, x += y first (in place); with z, out =
// silu(z) * rms_norm(x) (the swiglu op's product).
struct NormArgs {
    float* x;
    int64_t xs;
    const float* w;
    int64_t g, rows, groups;
    double eps;
    float* out;
    int64_t os;
    const float* y;
    int64_t ys;
    const float* z;
    int64_t zs;
};
enum class Ew : int64_t { add, swiglu, mul_sigmoid };
struct ElementwiseArgs {
    Ew op;
    const float* a;
    int64_t as;
    const float* b;
    int64_t bs;
    float* out;
    int64_t os, rows, cols;
};
struct GatherArgs {
    const float* x;
    int64_t xs, group, offset, width;
    float* out;
    int64_t os, rows, out_cols;
};
struct AddGatedArgs {
    const float* a;
    int64_t as;
    const float* b;
    int64_t bs;
    const float* gv;
    const float* f;
    int64_t fs, fc;
    float* out;
    int64_t os, rows, cols;
};
struct RopeArgs {
    float* x;
    int64_t xs, rows, n_heads, head_dim, half;
    double theta_scale;
    const int64_t* pos;
};
// Backend::attention_inputs: q heads from qg (each [query | gate] with `gated`, the gate to
// `gate`) and k heads, normalised with weights qw / kw, rows below rope_rows rotated.
struct AttInputsArgs {
    const float* qg;
    int64_t qgs;
    const float* k;
    int64_t ks;
    const float* qw;
    const float* kw;
    int64_t D, half, Hq, Hkv, gated, rows, rope_rows;
    double eps, theta_scale;
    const int64_t* pos;
    float* q;
    int64_t qs;
    float* ko;
    int64_t kos;
    float* gate;
    int64_t gs;
};
// Stores k and v rows at their positions (in the cache's type, with the CPU's bytes), then causal
// attention for every (row, query head), reading the cache's type directly.
constexpr int64_t k_att_rows = 16;
constexpr int64_t k_att_queries = 32;  // (row, query head) pairs an attention block holds
struct AttTile {
    int32_t span, row0, n_rows, unused;
};
struct AttentionArgs {
    const float* q;
    int64_t qs;
    const float* k;
    int64_t ks;
    const float* v;
    int64_t vs;
    int64_t n_head, n_head_kv, D, rows;
    double scale;
    const int64_t* pos;
    const int32_t* row_span;
    const KvDev* kv;
    float* out;
    int64_t os;
    // Keys are cut at fixed positions into chunks of `chunk` (a multiple of 64, the same for every
    // op of a backend, so a query's bits are too); each chunk's partial softmax is
    // merged in chunk order. With `part` (decode and verification batches) the chunks run in
    // `splits` blocks side by side, each chunk's partial written to
    // part[(row * n_head + head) * max_chunks + chunk][D + 4] and merged by a second kernel;
    // without, a block runs its rows' chunks in order. The arithmetic is the same.
    float* part;
    int64_t chunk, max_chunks, splits;
    const AttTile* tiles;  // up to k_att_rows consecutive rows of one span
    int64_t n_tiles;
    int64_t passes;        // blocks per tile: its queries (rows x query heads per KV head), k_att_queries at a time
    int64_t passes_mma;    // the same for tensor-core blocks (64 queries, decode's k_att_queries)
    int64_t smem;          // a float-product block's shared memory for the batch's cache types (0: none)
    int64_t any_mma;       // whether a span takes the tensor cores (their blocks' shared memory is fixed)
    int64_t most_queries;  // the most queries a block holds
    int64_t mma;           // whether f16 caches take the tensor cores (sm_80 and newer)
};
// Whether a span's attention runs on the tensor cores: f16 K and V and head sizes that are
// multiples of 16 (the cache's head rows then start 32-byte aligned, as the fragment loads need).
__host__ __device__ inline bool att_uses_mma(int64_t mma, int type_k, int type_v, int64_t D) {
    return mma != 0 && type_k == 1 && type_v == 1 && D % 16 == 0;
}
// Shared memory of a float-product attention block for head size D and the cache types (DType ids).
size_t attention_smem(int64_t D, int type_k, int type_v);
// Keys a chunk unless BIGMOE_CUDA_ATT_CHUNK says otherwise (a multiple of 64).
constexpr int64_t k_att_chunk = 256;
// The prefill form on warpgroup products (attention_wg.cu): configure_attention_wg reads
// BIGMOE_CUDA_ATT_WG and asks the GPU's code whether it has the form; run_attention_wg launches it
// for a batch it takes (prefill, head sizes 64, 128 and 256) and says whether it did.
void configure_attention_wg();
bool run_attention_wg(cudaStream_t s, const AttentionArgs& a, dim3 grid);
struct ConvArgs {
    const float* x;
    int64_t xs;
    const float* w;
    int64_t C, K;
    const SpanDev* spans;
    int64_t n_spans;
    const RingDev* rings;
    float* out;
    int64_t os;
    int64_t token_rows;  // tokens a block runs side by side (k_conv_max .. 32)
};
// The Gated DeltaNet recurrence per (span, V head), its Q and K heads L2-normalised on the way.
struct GdnArgs {
    const float* u;
    int64_t us;
    const float* beta;
    int64_t bs;
    const float* alpha;
    int64_t as;
    const float* dt_bias;
    const float* ssm_a;
    int64_t Hk, Hv, dk, dv, rows;
    double eps, q_scale;
    const SpanDev* spans;
    int64_t n_spans;
    const RingDev* rings;
    float* out;
    int64_t os;
    int64_t paired;  // 1: a token's output formed beside the next token's prediction (k_gdn)
};
// 1 unless BIGMOE_CUDA_GDN_PAIRED=0 (for measuring the unpaired form; the same bits)
int64_t gdn_paired();

// Backend::argmax_rows: blocks of k_argmax_chunk values leave their best as one key each (the
// value's bits ordered as the floats compare, over the complement of its position: a larger key
// is a larger value, then an earlier position; 0: only NaNs), then a warp a row folds its
// blocks' keys into the row's index.
constexpr int k_argmax_threads = 256;
constexpr int64_t k_argmax_chunk = 16 * k_argmax_threads;
struct ArgmaxArgs {
    const float* x;
    int64_t xs, rows, cols, blocks;  // blocks: a row's
    uint64_t* keys;                  // [rows][blocks]
    int32_t* ids;                    // [rows]
};

void run_op(cudaStream_t s, const ArgmaxArgs& a);
void run_op(cudaStream_t s, const NormArgs& a);
void run_op(cudaStream_t s, const ElementwiseArgs& a);
void run_op(cudaStream_t s, const GatherArgs& a);
void run_op(cudaStream_t s, const AddGatedArgs& a);
void run_op(cudaStream_t s, const RopeArgs& a);
void run_op(cudaStream_t s, const AttInputsArgs& a);
void run_op(cudaStream_t s, const AttentionArgs& a);
// The second kernel of a split attention op (a.part): its chunks merged (attention_merge.cu).
void run_attention_merge(cudaStream_t s, const AttentionArgs& a);
void run_op(cudaStream_t s, const ConvArgs& a);
void run_op(cudaStream_t s, const GdnArgs& a);

// ---- copies between host staging and the device, as ops of a step
struct CopyArgs {
    void* dst;
    const void* src;
    int64_t bytes;
};
inline void run_op(cudaStream_t s, const CopyArgs& a) {
    CU(cudaMemcpyAsync(a.dst, a.src, size_t(a.bytes), cudaMemcpyDefault, s));
}

}  // namespace bigmoe::cuda
