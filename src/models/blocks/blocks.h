// Building blocks shared by the architectures: attention (plain and gated), Gated DeltaNet,
// dense SwiGLU FFN, routed experts and the gated shared expert. Each has a loader that checks
// shapes and a compute function that only calls Backend ops.
#pragma once

#include <string>

#include "backend/backend.h"
#include "gguf/names.h"
#include "models/model.h"

namespace bigmoe::blocks {

using gguf::tensor::blk;

// Softmax attention with per-head q/k RMS norm and NeoX RoPE. Gated (Qwen3.5): attn_q yields
// [query | gate] per head and the output is multiplied by sigmoid(gate) before attn_output.
struct Attention {
    const Weight *q = nullptr, *k = nullptr, *v = nullptr, *q_norm = nullptr, *k_norm = nullptr, *o = nullptr;
    bool gated = false;
};
Result<Attention> load_attention(Model& m, int64_t il, bool gated);
// Layer il of the batch (its KV blocks are the batch's kv[il]).
Tensor attention(Backend& be, const HParams& hp, const Attention& w, Tensor x, int64_t il);

struct GatedDeltaNet {
    const Weight *qkv = nullptr, *gate = nullptr, *beta = nullptr, *alpha = nullptr, *conv = nullptr,
                 *dt_bias = nullptr, *a = nullptr, *norm = nullptr, *out = nullptr;
};
Result<GatedDeltaNet> load_gdn(Model& m, int64_t il);
Tensor gated_delta_net(Backend& be, const HParams& hp, const GatedDeltaNet& w, Tensor x, int64_t il);

struct DenseFfn {
    const Weight *gate = nullptr, *up = nullptr, *down = nullptr;
};
// Loads ffn_{gate,up,down}<suffix> with width n_ff.
// shared: the MoE layer's shared expert (ffn_*_shexp) instead of a dense FFN (ffn_*)
Result<DenseFfn> load_dense_ffn(Model& m, int64_t il, int64_t n_ff, bool shared);
Tensor dense_ffn(Backend& be, const DenseFfn& w, Tensor x);

struct Moe {
    const Weight* router = nullptr;
    MoeWeights experts;
    // Qwen3.5 shared expert (absent for qwen3moe)
    DenseFfn shared;
    const Weight* shared_gate = nullptr;
};
Result<Moe> load_moe(Model& m, int64_t il, bool shared_expert);
// The routed experts run on xb (Model::experts_backend), the rest on be.
Tensor moe(Backend& be, Backend& xb, const Moe& w, Tensor x);

}  // namespace bigmoe::blocks
