// The names a GGUF file uses, in one place for the loader, the tokenizer and synth: metadata
// keys (spec/gguf.md; keys of the architecture are suffixes after "<general.architecture>.") and
// tensor names (per-layer ones after "blk.<il>.").
#pragma once

#include <cstdint>
#include <string>

namespace bigmoe::gguf {

namespace key {
inline constexpr char general_architecture[] = "general.architecture";
inline constexpr char general_name[] = "general.name";
inline constexpr char general_alignment[] = "general.alignment";
inline constexpr char general_file_type[] = "general.file_type";
inline constexpr char general_quantization_version[] = "general.quantization_version";
inline constexpr char general_sampling_temp[] = "general.sampling.temp";
inline constexpr char general_sampling_top_k[] = "general.sampling.top_k";
inline constexpr char general_sampling_top_p[] = "general.sampling.top_p";
inline constexpr char general_sampling_min_p[] = "general.sampling.min_p";
inline constexpr char tokenizer_ggml_model[] = "tokenizer.ggml.model";
inline constexpr char tokenizer_ggml_pre[] = "tokenizer.ggml.pre";
inline constexpr char tokenizer_ggml_tokens[] = "tokenizer.ggml.tokens";
inline constexpr char tokenizer_ggml_token_type[] = "tokenizer.ggml.token_type";
inline constexpr char tokenizer_ggml_merges[] = "tokenizer.ggml.merges";
inline constexpr char tokenizer_ggml_eos_token_id[] = "tokenizer.ggml.eos_token_id";
inline constexpr char tokenizer_ggml_bos_token_id[] = "tokenizer.ggml.bos_token_id";
inline constexpr char tokenizer_ggml_padding_token_id[] = "tokenizer.ggml.padding_token_id";
inline constexpr char tokenizer_ggml_eot_token_id[] = "tokenizer.ggml.eot_token_id";
inline constexpr char tokenizer_ggml_eom_token_id[] = "tokenizer.ggml.eom_token_id";
inline constexpr char tokenizer_ggml_add_bos_token[] = "tokenizer.ggml.add_bos_token";
inline constexpr char tokenizer_ggml_add_eos_token[] = "tokenizer.ggml.add_eos_token";
inline constexpr char tokenizer_chat_template[] = "tokenizer.chat_template";
// after "<arch>."
inline constexpr char context_length[] = "context_length";
inline constexpr char embedding_length[] = "embedding_length";
inline constexpr char block_count[] = "block_count";
inline constexpr char nextn_predict_layers[] = "nextn_predict_layers";
inline constexpr char feed_forward_length[] = "feed_forward_length";
inline constexpr char vocab_size[] = "vocab_size";
inline constexpr char attention_head_count[] = "attention.head_count";
inline constexpr char attention_head_count_kv[] = "attention.head_count_kv";
inline constexpr char attention_key_length[] = "attention.key_length";
inline constexpr char attention_value_length[] = "attention.value_length";
inline constexpr char attention_layer_norm_rms_epsilon[] = "attention.layer_norm_rms_epsilon";
inline constexpr char attention_recurrent_layers[] = "attention.recurrent_layers";
inline constexpr char rope_freq_base[] = "rope.freq_base";
inline constexpr char rope_dimension_count[] = "rope.dimension_count";
inline constexpr char rope_dimension_sections[] = "rope.dimension_sections";
inline constexpr char expert_count[] = "expert_count";
inline constexpr char expert_used_count[] = "expert_used_count";
inline constexpr char expert_feed_forward_length[] = "expert_feed_forward_length";
inline constexpr char expert_shared_feed_forward_length[] = "expert_shared_feed_forward_length";
inline constexpr char ssm_conv_kernel[] = "ssm.conv_kernel";
inline constexpr char ssm_state_size[] = "ssm.state_size";
inline constexpr char ssm_group_count[] = "ssm.group_count";
inline constexpr char ssm_time_step_rank[] = "ssm.time_step_rank";
inline constexpr char ssm_inner_size[] = "ssm.inner_size";
inline constexpr char full_attention_interval[] = "full_attention_interval";
}  // namespace key

namespace tensor {
inline constexpr char token_embd[] = "token_embd.weight";
inline constexpr char output_norm[] = "output_norm.weight";
inline constexpr char output[] = "output.weight";
inline constexpr char attn_norm[] = "attn_norm.weight";
inline constexpr char post_attention_norm[] = "post_attention_norm.weight";
inline constexpr char ffn_norm[] = "ffn_norm.weight";
inline constexpr char attn_q[] = "attn_q.weight";
inline constexpr char attn_k[] = "attn_k.weight";
inline constexpr char attn_v[] = "attn_v.weight";
inline constexpr char attn_q_norm[] = "attn_q_norm.weight";
inline constexpr char attn_k_norm[] = "attn_k_norm.weight";
inline constexpr char attn_output[] = "attn_output.weight";
inline constexpr char attn_qkv[] = "attn_qkv.weight";
inline constexpr char attn_gate[] = "attn_gate.weight";
inline constexpr char ssm_beta[] = "ssm_beta.weight";
inline constexpr char ssm_alpha[] = "ssm_alpha.weight";
inline constexpr char ssm_conv1d[] = "ssm_conv1d.weight";
inline constexpr char ssm_dt_bias[] = "ssm_dt.bias";
inline constexpr char ssm_a[] = "ssm_a";
inline constexpr char ssm_norm[] = "ssm_norm.weight";
inline constexpr char ssm_out[] = "ssm_out.weight";
inline constexpr char ffn_gate[] = "ffn_gate.weight";
inline constexpr char ffn_up[] = "ffn_up.weight";
inline constexpr char ffn_down[] = "ffn_down.weight";
inline constexpr char ffn_gate_inp[] = "ffn_gate_inp.weight";
inline constexpr char ffn_gate_exps[] = "ffn_gate_exps.weight";
inline constexpr char ffn_up_exps[] = "ffn_up_exps.weight";
inline constexpr char ffn_down_exps[] = "ffn_down_exps.weight";
inline constexpr char ffn_gate_up_exps[] = "ffn_gate_up_exps.weight";
inline constexpr char ffn_gate_inp_shexp[] = "ffn_gate_inp_shexp.weight";
inline constexpr char ffn_gate_shexp[] = "ffn_gate_shexp.weight";
inline constexpr char ffn_up_shexp[] = "ffn_up_shexp.weight";
inline constexpr char ffn_down_shexp[] = "ffn_down_shexp.weight";
inline constexpr char nextn_eh_proj[] = "nextn.eh_proj.weight";
inline constexpr char nextn_embed_tokens[] = "nextn.embed_tokens.weight";
inline constexpr char nextn_enorm[] = "nextn.enorm.weight";
inline constexpr char nextn_hnorm[] = "nextn.hnorm.weight";
inline constexpr char nextn_shared_head_head[] = "nextn.shared_head_head.weight";
inline constexpr char nextn_shared_head_norm[] = "nextn.shared_head_norm.weight";

// "blk.<il>.<name>": a tensor of layer il.
inline std::string blk(int64_t il, const char* name) {
    return "blk." + std::to_string(il) + "." + name;
}
}  // namespace tensor

}  // namespace bigmoe::gguf
