// The CPU kernel table: one function per (op, type), chosen once at start-up for the best
// instruction set the machine has. Every entry has a portable version in isa/generic.
#pragma once

#include <cstdint>
#include <vector>

#include "core/fast_exp.h"
#include "quant/dtype.h"

namespace bigmoe::cpu {

// Dot product of a weight row of type t with an activation row in activation_type(t).
using VecDotFn = float (*)(const void* w_row, const void* act_row, int64_t n);
// NT (1..4) dot products of one weight row with NT activation rows, the row decoded once; per
// token exactly the arithmetic of VecDotFn (so tiles do not change results).
using VecDotTileFn = void (*)(const void* w_row, const void* const* act_rows, int64_t n, float* out);
// One weight row against n_tok activation rows (stride act_stride bytes): out[t * out_stride].
// Per token bit-identical to VecDotFn; faster for many tokens (the row is decoded once).
using GemmRowFn = void (*)(const void* w_row, const uint8_t* act, size_t act_stride, int64_t n_tok, int64_t n,
                           float* out, int64_t out_stride);
// 8 packed weight rows (backend/cpu/repack.h) against NT (1..4) activation rows: out[t * 8 + r].
// A token's results are the same whatever NT is.
using PackedTileFn = void (*)(const void* group, const void* const* act_rows, int64_t n, float* out);
// Two adjacent packed groups (the second group_bytes after the first) against NT (1..4)
// activation rows: out[t * 16 + r]; each (row, token) bit-identical to packed_tile.
using PackedTile16Fn = void (*)(const void* group, size_t group_bytes, const void* const* act_rows, int64_t n,
                                float* out);
// n_groups packed groups of 8 rows (group_bytes apart) against n_tok activation rows (act_stride
// bytes apart): row r's result for token t at out[t * out_stride + r]. Per token bit-identical to
// packed_tile; for products of many tokens (prefill).
using PackedGemmFn = void (*)(const uint8_t* w, size_t group_bytes, int64_t n_groups, const uint8_t* act,
                              size_t act_stride, int64_t n_tok, int64_t n, float* out, int64_t out_stride);
// Convert an f32 row into an activation type.
using QuantizeFn = void (*)(const float* x, void* dst, int64_t n);

// Gated DeltaNet for one head over a run of tokens, from state S_in ([d_v][d_k], key index
// fastest). Per token: S = decay * S; pred = S^T k; S += k (beta (v - pred))^T; out = scale * S^T q.
// A token's new state is written to its `state` (when set: the snapshots a rollback can need;
// the last token's must be set, and may be S_in itself); `work` (d_v * d_k floats) carries the
// state where it is not kept. A token's arithmetic does not depend on the run it is in.
struct GdnToken {
    const float *q, *k, *v;  // this head's query, key (d_k) and value (d_v)
    float beta, decay;
    float* out;    // d_v outputs
    float* state;  // this token's new state, or nullptr
};
using GdnStepsFn = void (*)(const float* S_in, const GdnToken* tok, int64_t n_tok, float scale, int64_t d_k,
                            int64_t d_v, float* work);
// Attention over cached key/value rows (f32 or f16; row t at t * stride elements from the base):
// scores s[j * s_stride + t] = scale * (query j . key t) for nq queries of D floats (contiguous)
// and n keys; and acc[j * D + d] += sum over t < n_of[j] of p[j * p_stride + t] * value t [d],
// added in key order. A (query, key) score and a (query, element) sum do not depend on nq or n.
// Rows [0, pf_end) exist: while a kernel reads row t it may prefetch row t + k_kv_prefetch_rows
// below pf_end (0: nothing to prefetch). At depth the cache streams from memory, and a tile's
// prefetches issued together ahead of it stalled the thread until they were under way (one
// 32768-position layer of bench-1b's heads, one token, Zen 5 VM: 1.4-1.6 ms; spread over the
// rows as they are read, 0.9-1.1 ms).
constexpr int64_t k_kv_prefetch_rows = 64;
using KvScoresFn = void (*)(const float* q, int64_t nq, const void* k, int64_t k_stride, int64_t n, int64_t D,
                            float scale, float* s, int64_t s_stride, int64_t pf_end);
using KvAccumFn = void (*)(const float* p, int64_t p_stride, const int64_t* n_of, int64_t nq, const void* v,
                           int64_t v_stride, int64_t D, float* acc, int64_t pf_end);
// Rows [0, n) of one KV head (D values from `head`, rows row_bytes apart) of a cache type the
// kv_scores / kv_accum kernels do not read in place, as f32 [n][D]; exactly dequantize_row's values.
// Rows [0, pf_end) exist, prefetched as the kernels above do.
using KvTileFn = void (*)(const uint8_t* head, size_t row_bytes, int64_t n, int64_t D, float* out, int64_t pf_end);
// y[i] = fast_exp::exp(x[i] - m); returns their sum (in an order fixed by n alone).
using ExpShiftFn = float (*)(const float* x, float m, float* y, int64_t n);

// out[i] = silu(g[i]) * u[i] (u == nullptr: silu(g[i])), silu(x) = x / (1 + fast_exp::exp(-x)).
// Every table gives the same bits (vector lanes and scalar tails run fast_exp's arithmetic).
using SiluMulFn = void (*)(const float* g, const float* u, float* out, int64_t n);

inline float silu_poly(float x) {
    return x / (1.0f + fast_exp::exp(-x));
}

struct Kernels {
    const char* isa = "generic";
    VecDotFn vec_dot[32] = {};                 // indexed by weight DType id
    VecDotTileFn tile[32][4] = {};             // optional: tile[t][j] handles j + 1 tokens (nullptr: vec_dot)
    GemmRowFn gemm_row[32] = {};               // optional many-token row products
    PackedTileFn packed_tile[32][4] = {};      // optional: products on packed rows (weights get packed)
    PackedTile16Fn packed_tile16[32][4] = {};  // optional: two groups at once (512-bit vectors)
    PackedGemmFn packed_gemm[32] = {};         // optional: packed rows with many tokens
    QuantizeFn quantize[32] = {};              // indexed by activation DType id
    GdnStepsFn gdn_steps = nullptr;
    KvScoresFn kv_scores_f32 = nullptr, kv_scores_f16 = nullptr;
    KvAccumFn kv_accum_f32 = nullptr, kv_accum_f16 = nullptr;
    // optional: Q8_0 rows read in place (the bits of kv_tile then the f32 kernels)
    KvScoresFn kv_scores_q8_0 = nullptr;
    KvAccumFn kv_accum_q8_0 = nullptr;
    KvTileFn kv_tile[32] = {};  // indexed by cache DType id: bf16 and the block types
    ExpShiftFn exp_shift = nullptr;
    SiluMulFn silu_mul = nullptr;
};

const Kernels& kernels();
// Every table this machine can run (generic first), for tests.
std::vector<const Kernels*> available_kernels();
namespace avx2 {
const Kernels& kernels();
}
namespace avx2vnni {
const Kernels& kernels();
}
namespace avx512 {
const Kernels& kernels();
}
namespace amx {
// Adds the AMX products to a table (the avx512 one); call only where amx_usable() said yes.
void add_kernels(Kernels& k);
}  // namespace amx
// Whether the CPU has AMX-INT8 (and AVX-512) and the OS lets this process use the tile state.
bool amx_usable();
// The generic table, always available (tests compare every variant against the reference).
const Kernels& generic_kernels();

}  // namespace bigmoe::cpu
