// Model hyper-parameters, read and validated from GGUF metadata. Architecture differences are
// data here, not branches in the runtime.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/result.h"
#include "gguf/gguf_file.h"

namespace bigmoe {

struct HParams {
    std::string arch;
    int64_t n_vocab = 0;
    int64_t n_embd = 0;
    int64_t n_layer = 0;      // main stack
    int64_t n_layer_all = 0;  // block_count, including MTP blocks
    int64_t n_nextn = 0;
    int64_t n_ctx_train = 0;
    int64_t n_head = 0, n_head_kv = 0, head_dim = 0, head_dim_v = 0, n_rot = 0;
    float eps = 1e-6f;
    float rope_theta = 10000.0f;
    // FFN
    int64_t n_ff = 0, n_expert = 0, n_expert_used = 0, n_ff_exp = 0, n_ff_shexp = 0;
    // Gated DeltaNet
    int64_t ssm_conv_kernel = 0, ssm_d_state = 0, ssm_n_k_heads = 0, ssm_n_v_heads = 0, ssm_d_inner = 0;
    int64_t full_attention_interval = 0;
    std::vector<bool> recurrent;  // per main-stack layer: true = GDN layer

    bool is_moe() const { return n_expert > 0; }
    bool is_recurrent(int64_t il) const { return !recurrent.empty() && recurrent[size_t(il)]; }
    int64_t n_attention_layers() const;
    int64_t n_recurrent_layers() const;
    // Per-sequence state sizes (in elements).
    int64_t kv_width() const { return n_head_kv * head_dim; }
    int64_t conv_dim() const { return 2 * ssm_n_k_heads * ssm_d_state + ssm_d_inner; }
    int64_t conv_state_floats() const { return (ssm_conv_kernel - 1) * conv_dim(); }
    int64_t ssm_state_floats() const { return ssm_d_inner * ssm_d_state; }
};

// Reads the common keys and the architecture-specific ones. `hybrid` selects the qwen35 family
// (GDN keys required), `moe` requires the expert keys.
Result<HParams> read_hparams(const gguf::GgufFile& f, bool hybrid, bool moe);

}  // namespace bigmoe
