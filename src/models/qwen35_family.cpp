#include "models/qwen35_family.h"
#include "gguf/names.h"

namespace bigmoe {

Result<std::unique_ptr<Model>> Qwen35Family::create(const gguf::GgufFile& file, const Placement& placement, bool moe) {
    auto hp = read_hparams(file, /*hybrid=*/true, moe);
    if (!hp) return hp.error();
    std::unique_ptr<Qwen35Family> m(new Qwen35Family());
    BM_TRY(m->init(file, std::move(*hp), placement));
    m->moe_ = moe;
    BM_TRY(m->load_output_and_embeddings());
    m->layers_.resize(size_t(m->hp_.n_layer));
    for (int64_t il = 0; il < m->hp_.n_layer; ++il) {
        m->load_on(il);
        BM_TRY(m->load_layer(il, m->layers_[size_t(il)], m->hp_.is_recurrent(il)));
    }
    m->load_on(m->hp_.n_layer - 1);  // MTP blocks follow the last layer
    BM_TRY(m->load_mtp());
    return std::unique_ptr<Model>(std::move(m));
}

Result<void> Qwen35Family::load_layer(int64_t il, Layer& l, bool recurrent) {
    l.recurrent = recurrent;
    BM_ASSIGN(l.attn_norm, load_f32(blocks::blk(il, gguf::tensor::attn_norm), {hp_.n_embd}));
    if (il < hp_.n_layer) input_norms_.push_back(l.attn_norm);
    BM_ASSIGN(l.post_norm, load_f32(blocks::blk(il, gguf::tensor::post_attention_norm), {hp_.n_embd}));
    if (recurrent)
        BM_ASSIGN(l.gdn, blocks::load_gdn(*this, il));
    else
        BM_ASSIGN(l.attn, blocks::load_attention(*this, il, /*gated=*/true));
    if (moe_)
        BM_ASSIGN(l.moe, blocks::load_moe(*this, il, /*shared_expert=*/true));
    else
        BM_ASSIGN(l.ffn, blocks::load_dense_ffn(*this, il, hp_.n_ff, /*shared=*/false));
    return {};
}

Result<void> Qwen35Family::load_mtp() {
    // MTP blocks are full-attention blocks plus the nextn projection; bytes are counted as
    // weights but not as active (they do not run in the main pass).
    const uint64_t active = active_bytes_;
    const int64_t active_params = n_active_params_;
    multiplied_ = false;
    for (int64_t il = hp_.n_layer; il < hp_.n_layer_all; ++il) {
        Layer l;
        BM_TRY(load_layer(il, l, false));
        const Weight* w;
        BM_ASSIGN(w, load(blocks::blk(il, gguf::tensor::nextn_eh_proj), {2 * hp_.n_embd, hp_.n_embd}));
        BM_ASSIGN(w, load(blocks::blk(il, gguf::tensor::nextn_enorm), {hp_.n_embd}));
        BM_ASSIGN(w, load(blocks::blk(il, gguf::tensor::nextn_hnorm), {hp_.n_embd}));
        BM_ASSIGN(w, load_optional(blocks::blk(il, gguf::tensor::nextn_embed_tokens), {hp_.n_embd, hp_.n_vocab}));
        BM_ASSIGN(w, load_optional(blocks::blk(il, gguf::tensor::nextn_shared_head_head), {hp_.n_embd, hp_.n_vocab}));
        BM_ASSIGN(w, load_optional(blocks::blk(il, gguf::tensor::nextn_shared_head_norm), {hp_.n_embd}));
        (void)w;
        mtp_layers_.push_back(l);
    }
    multiplied_ = true;
    active_bytes_ = active;
    n_active_params_ = active_params;
    return {};
}

void Qwen35Family::forward(const ForwardBatch& batch, Tensor logits) {
    run_layers(
        batch,
        [&](Backend& be, int64_t il, Tensor h, Tensor a) {
            const Layer& l = layers_[size_t(il)];
            be.annotate(l.recurrent ? "recurrent layers" : "attention layers");
            Tensor m = l.recurrent ? blocks::gated_delta_net(be, hp_, l.gdn, a, il)
                                   : blocks::attention(be, hp_, l.attn, a, il);
            Tensor f = be.scratch(h.rows, hp_.n_embd);
            be.add_rms_norm(h, m, *l.post_norm, hp_.eps, f);
            return moe_ ? blocks::moe(be, experts_backend(il), l.moe, f) : blocks::dense_ffn(be, l.ffn, f);
        },
        logits);
}

}  // namespace bigmoe
