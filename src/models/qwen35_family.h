// The Qwen3.5 hybrid stack shared by `qwen35` (dense FFN) and `qwen35moe` (routed + shared
// experts): Gated DeltaNet layers with a gated full-attention layer every few layers.
#pragma once

#include <memory>
#include <vector>

#include "models/blocks/blocks.h"
#include "models/model.h"

namespace bigmoe {

class Qwen35Family : public Model {
  public:
    static Result<std::unique_ptr<Model>> create(const gguf::GgufFile& file, const Placement& placement, bool moe);
    void forward(const ForwardBatch& batch, Tensor logits) override;

  private:
    struct Layer {
        const Weight* attn_norm = nullptr;
        const Weight* post_norm = nullptr;
        bool recurrent = false;
        blocks::Attention attn;
        blocks::GatedDeltaNet gdn;
        blocks::DenseFfn ffn;
        blocks::Moe moe;
    };
    Result<void> load_layer(int64_t il, Layer& l, bool recurrent);
    Result<void> load_mtp();

    bool moe_ = false;
    std::vector<Layer> layers_;
    std::vector<Layer> mtp_layers_;  // loaded and verified, not run in the main pass
};

}  // namespace bigmoe
