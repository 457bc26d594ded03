// `qwen3moe`: Qwen3-MoE (Qwen3-30B-A3B): attention with q/k norm and NeoX RoPE, routed experts
// in every layer, no shared expert.
#include "gguf/names.h"
#include "models/blocks/blocks.h"
#include "models/registry.h"

namespace bigmoe {

namespace {

class Qwen3Moe : public Model {
  public:
    static Result<std::unique_ptr<Model>> create(const gguf::GgufFile& file, const Placement& placement) {
        auto hp = read_hparams(file, /*hybrid=*/false, /*moe=*/true);
        if (!hp) return hp.error();
        std::unique_ptr<Qwen3Moe> m(new Qwen3Moe());
        BM_TRY(m->init(file, std::move(*hp), placement));
        BM_TRY(m->load_output_and_embeddings());
        for (int64_t il = 0; il < m->hp_.n_layer; ++il) {
            m->load_on(il);
            Layer l;
            auto an = m->load_f32(blocks::blk(il, gguf::tensor::attn_norm), {m->hp_.n_embd});
            if (!an) return an.error();
            l.attn_norm = *an;
            m->input_norms_.push_back(l.attn_norm);
            auto fn = m->load_f32(blocks::blk(il, gguf::tensor::ffn_norm), {m->hp_.n_embd});
            if (!fn) return fn.error();
            l.ffn_norm = *fn;
            auto at = blocks::load_attention(*m, il, /*gated=*/false);
            if (!at) return at.error();
            l.attn = *at;
            auto mo = blocks::load_moe(*m, il, /*shared_expert=*/false);
            if (!mo) return mo.error();
            l.moe = *mo;
            m->layers_.push_back(l);
        }
        return std::unique_ptr<Model>(std::move(m));
    }

    void forward(const ForwardBatch& batch, Tensor logits) override {
        run_layers(
            batch,
            [&](Backend& be, int64_t il, Tensor h, Tensor a) {
                const Layer& l = layers_[size_t(il)];
                be.annotate("attention layers");
                Tensor f = be.scratch(h.rows, hp_.n_embd);
                be.add_rms_norm(h, blocks::attention(be, hp_, l.attn, a, il), *l.ffn_norm, hp_.eps, f);
                return blocks::moe(be, experts_backend(il), l.moe, f);
            },
            logits);
    }

  private:
    struct Layer {
        const Weight* attn_norm = nullptr;
        const Weight* ffn_norm = nullptr;
        blocks::Attention attn;
        blocks::Moe moe;
    };
    std::vector<Layer> layers_;
};

}  // namespace

Result<std::unique_ptr<Model>> load_qwen3moe(const gguf::GgufFile& file, const Placement& placement) {
    return Qwen3Moe::create(file, placement);
}

}  // namespace bigmoe
