#include "models/hparams.h"
#include "gguf/names.h"

namespace bigmoe {

int64_t HParams::n_attention_layers() const {
    return n_layer - n_recurrent_layers();
}
int64_t HParams::n_recurrent_layers() const {
    int64_t n = 0;
    for (bool r : recurrent) n += r;
    return n;
}

namespace {

struct Reader {
    const gguf::GgufFile& f;
    std::string prefix;

    // A positive integer key (any integer type; a per-layer array must hold one value).
    Result<int64_t> pos_int(const std::string& key) const {
        const std::string k = prefix + key;
        const gguf::Value* v = f.find(k);
        if (!v) return make_error(f.path() + ": missing metadata key '" + k + "'", ErrorKind::corrupt_file);
        int64_t x;
        if (v->type == gguf::ValueType::ARRAY && !v->arr_i.empty()) {
            x = v->arr_i[0];
            for (int64_t y : v->arr_i)
                if (y != x)
                    return make_error(
                        f.path() + ": '" + k + "' varies per layer; bigmoe needs one value for all layers",
                        ErrorKind::corrupt_file);
        } else {
            auto r = f.get_int(k);
            if (!r) return r.error();
            x = *r;
        }
        if (x <= 0 || x > (int64_t(1) << 31))
            return make_error(f.path() + ": '" + k + "' = " + std::to_string(x) + " is out of range",
                              ErrorKind::corrupt_file);
        return x;
    }
    Result<int64_t> pos_int_or(const std::string& key, int64_t def) const {
        if (!f.find(prefix + key)) return def;
        return pos_int(key);
    }
};

}  // namespace

Result<HParams> read_hparams(const gguf::GgufFile& f, bool hybrid, bool moe) {
    HParams hp;
    auto arch = f.get_string(gguf::key::general_architecture);
    if (!arch) return arch.error();
    hp.arch = *arch;
    Reader r{f, hp.arch + "."};
    BM_ASSIGN(hp.n_embd, r.pos_int(gguf::key::embedding_length));
    BM_ASSIGN(hp.n_layer_all, r.pos_int(gguf::key::block_count));
    // Plausibility bounds keep a corrupt file from driving huge allocations before the tensor
    // checks run (the largest published models have ~100 layers, 512 experts, 128 heads).
    constexpr int64_t k_max_layers = 4096, k_max_heads = 16384, k_max_experts = 1 << 16;
    if (hp.n_layer_all > k_max_layers)
        return make_error(f.path() + ": block_count " + std::to_string(hp.n_layer_all) + " is implausible (max " +
                              std::to_string(k_max_layers) + ")",
                          ErrorKind::corrupt_file);
    hp.n_nextn = f.get_int_or(r.prefix + gguf::key::nextn_predict_layers, 0);
    if (hp.n_nextn < 0 || hp.n_nextn >= hp.n_layer_all)
        return make_error(f.path() + ": nextn_predict_layers = " + std::to_string(hp.n_nextn) +
                              " is inconsistent with block_count = " + std::to_string(hp.n_layer_all),
                          ErrorKind::corrupt_file);
    hp.n_layer = hp.n_layer_all - hp.n_nextn;
    BM_ASSIGN(hp.n_ctx_train, r.pos_int_or(gguf::key::context_length, 4096));
    BM_ASSIGN(hp.n_head, r.pos_int(gguf::key::attention_head_count));
    BM_ASSIGN(hp.n_head_kv, r.pos_int_or(gguf::key::attention_head_count_kv, hp.n_head));
    BM_ASSIGN(hp.head_dim, r.pos_int_or(gguf::key::attention_key_length, hp.n_embd / hp.n_head));
    BM_ASSIGN(hp.head_dim_v, r.pos_int_or(gguf::key::attention_value_length, hp.head_dim));
    BM_ASSIGN(hp.n_rot, r.pos_int_or(gguf::key::rope_dimension_count, hp.head_dim));
    if (hp.n_head > k_max_heads || hp.n_head_kv > k_max_heads)
        return make_error(f.path() + ": head counts " + std::to_string(hp.n_head) + "/" + std::to_string(hp.n_head_kv) +
                              " are implausible",
                          ErrorKind::corrupt_file);
    if (hp.head_dim_v != hp.head_dim)
        return make_error(f.path() + ": attention.value_length " + std::to_string(hp.head_dim_v) +
                              " differs from key_length " + std::to_string(hp.head_dim) + " (unsupported)",
                          ErrorKind::corrupt_file);
    if (hp.n_head % hp.n_head_kv != 0)
        return make_error(f.path() + ": head_count " + std::to_string(hp.n_head) +
                              " is not a multiple of head_count_kv " + std::to_string(hp.n_head_kv),
                          ErrorKind::corrupt_file);
    if (hp.n_rot > hp.head_dim || hp.n_rot % 2 != 0)
        return make_error(f.path() + ": rope.dimension_count " + std::to_string(hp.n_rot) +
                              " must be even and at most the head dim " + std::to_string(hp.head_dim),
                          ErrorKind::corrupt_file);
    auto eps = f.get_float(r.prefix + gguf::key::attention_layer_norm_rms_epsilon);
    if (!eps) return eps.error();
    hp.eps = float(*eps);
    if (!(hp.eps > 0 && hp.eps < 1))
        return make_error(f.path() + ": rms epsilon " + std::to_string(hp.eps) + " out of range",
                          ErrorKind::corrupt_file);
    hp.rope_theta = float(f.get_float_or(r.prefix + gguf::key::rope_freq_base, 10000.0));
    if (!(hp.rope_theta > 1)) return make_error(f.path() + ": rope.freq_base must be > 1", ErrorKind::corrupt_file);
    const gguf::Value* toks = f.find(gguf::key::tokenizer_ggml_tokens);
    if (toks && toks->type == gguf::ValueType::ARRAY) hp.n_vocab = int64_t(toks->array_size());
    if (hp.n_vocab == 0) hp.n_vocab = f.get_int_or(r.prefix + gguf::key::vocab_size, 0);
    if (f.find(r.prefix + gguf::key::feed_forward_length))
        BM_ASSIGN(hp.n_ff, r.pos_int(gguf::key::feed_forward_length));

    if (moe) {
        BM_ASSIGN(hp.n_expert, r.pos_int(gguf::key::expert_count));
        BM_ASSIGN(hp.n_expert_used, r.pos_int(gguf::key::expert_used_count));
        if (hp.n_expert > k_max_experts)
            return make_error(f.path() + ": expert_count " + std::to_string(hp.n_expert) + " is implausible",
                              ErrorKind::corrupt_file);
        if (hp.n_expert_used > hp.n_expert)
            return make_error(f.path() + ": expert_used_count " + std::to_string(hp.n_expert_used) +
                                  " > expert_count " + std::to_string(hp.n_expert),
                              ErrorKind::corrupt_file);
        const int64_t def_ff = hp.n_ff > 0 ? hp.n_ff / hp.n_expert_used : 0;
        BM_ASSIGN(hp.n_ff_exp, r.pos_int_or(gguf::key::expert_feed_forward_length, def_ff));
        if (hp.n_ff_exp <= 0)
            return make_error(f.path() + ": missing expert_feed_forward_length", ErrorKind::corrupt_file);
        if (hybrid) BM_ASSIGN(hp.n_ff_shexp, r.pos_int_or(gguf::key::expert_shared_feed_forward_length, hp.n_ff));
    } else if (hp.n_ff <= 0) {
        return make_error(f.path() + ": missing metadata key '" + r.prefix + "feed_forward_length'",
                          ErrorKind::corrupt_file);
    }

    hp.recurrent.assign(size_t(hp.n_layer), false);
    if (hybrid) {
        BM_ASSIGN(hp.ssm_conv_kernel, r.pos_int(gguf::key::ssm_conv_kernel));
        BM_ASSIGN(hp.ssm_d_state, r.pos_int(gguf::key::ssm_state_size));
        BM_ASSIGN(hp.ssm_n_k_heads, r.pos_int(gguf::key::ssm_group_count));
        BM_ASSIGN(hp.ssm_n_v_heads, r.pos_int(gguf::key::ssm_time_step_rank));
        BM_ASSIGN(hp.ssm_d_inner, r.pos_int(gguf::key::ssm_inner_size));
        BM_ASSIGN(hp.full_attention_interval, r.pos_int_or(gguf::key::full_attention_interval, 4));
        if (hp.ssm_conv_kernel < 2 || hp.ssm_conv_kernel > 8)
            return make_error(
                f.path() + ": ssm.conv_kernel " + std::to_string(hp.ssm_conv_kernel) + " unsupported (2..8)",
                ErrorKind::corrupt_file);
        if (hp.ssm_d_inner != hp.ssm_n_v_heads * hp.ssm_d_state)
            return make_error(
                f.path() + ": ssm.inner_size " + std::to_string(hp.ssm_d_inner) +
                    " != time_step_rank * state_size = " + std::to_string(hp.ssm_n_v_heads * hp.ssm_d_state),
                ErrorKind::corrupt_file);
        if (hp.ssm_n_v_heads % hp.ssm_n_k_heads != 0)
            return make_error(f.path() + ": ssm.time_step_rank " + std::to_string(hp.ssm_n_v_heads) +
                                  " is not a multiple of ssm.group_count " + std::to_string(hp.ssm_n_k_heads),
                              ErrorKind::corrupt_file);
        const gguf::Value* rl = f.find(r.prefix + gguf::key::attention_recurrent_layers);
        if (rl && rl->type == gguf::ValueType::ARRAY) {
            if (int64_t(rl->arr_i.size()) < hp.n_layer)
                return make_error(f.path() + ": attention.recurrent_layers has " + std::to_string(rl->arr_i.size()) +
                                      " entries, expected " + std::to_string(hp.n_layer_all),
                                  ErrorKind::corrupt_file);
            for (int64_t il = 0; il < hp.n_layer; ++il) hp.recurrent[size_t(il)] = rl->arr_i[size_t(il)] != 0;
        } else {
            for (int64_t il = 0; il < hp.n_layer; ++il)
                hp.recurrent[size_t(il)] = (il + 1) % hp.full_attention_interval != 0;
        }
    }
    return hp;
}

}  // namespace bigmoe
