// The model contract: a Model owns its weights (views into the GGUF mapping, prepared by a
// backend) and computes logits for a batch given per-layer, per-sequence state. Architectures
// register a loader by GGUF architecture name; adding one = one file + one registry line.
#pragma once

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/result.h"
#include "gguf/gguf_file.h"
#include "models/hparams.h"

namespace bigmoe {

// The tokens of one forward pass. Their sequences' spans and state are the backend's
// BatchState, handed over before the pass (Backend::begin_batch).
struct ForwardBatch {
    const int32_t* tokens = nullptr;  // [n_tokens]
    int64_t n_tokens = 0;
    std::vector<int64_t> out_rows;  // batch rows whose logits are wanted, ascending
};

class Model {
  public:
    virtual ~Model() = default;
    const HParams& hparams() const { return hp_; }
    const gguf::GgufFile& file() const { return *file_; }
    Backend& backend() const { return *backend_; }

    // logits: [out_rows.size()][n_vocab] in backend memory.
    virtual void forward(const ForwardBatch& batch, Tensor logits) = 0;

    // Bytes of weights a decode step reads in the average case (dense weights + n_expert_used
    // experts per MoE layer); used by bench for GB/s.
    uint64_t active_weight_bytes() const { return active_bytes_; }
    uint64_t total_weight_bytes() const { return total_bytes_; }
    int64_t n_params() const { return n_params_; }
    int64_t n_active_params() const { return n_active_params_; }

    // Looks a tensor up, checks its shape (padded to 4 dims) and that the backend supports it.
    Result<const Weight*> load(const std::string& name, std::vector<int64_t> shape, bool expert = false);
    Result<const Weight*> load_optional(const std::string& name, std::vector<int64_t> shape, bool expert = false);
    // A tensor the ops read as plain floats (norm weights, conv taps, gates): must be F32.
    Result<const Weight*> load_f32(const std::string& name, std::vector<int64_t> shape);
    // Whether the backend runs layers of this model's sizes (Backend::check_shapes); before any load.
    Result<void> check_shapes() const;
    // token_embd, output_norm and output (tied to token_embd when absent).
    Result<void> load_output_and_embeddings();

  protected:
    // Whether the weights loaded now are multiplied (Weight::multiplied): false while loading a
    // lookup table (an untied token embedding) or blocks that do not run (MTP).
    bool multiplied_ = true;
    HParams hp_;
    const gguf::GgufFile* file_ = nullptr;
    Backend* backend_ = nullptr;
    std::deque<Weight> weights_;
    const Weight* tok_embd_ = nullptr;
    const Weight* output_norm_ = nullptr;
    const Weight* output_ = nullptr;
    uint64_t total_bytes_ = 0, active_bytes_ = 0;
    int64_t n_params_ = 0, n_active_params_ = 0;

    // Final norm + LM head on the requested rows of h.
    void compute_logits(Tensor h, const ForwardBatch& batch, Tensor logits);

    friend Result<std::unique_ptr<Model>> load_model(const gguf::GgufFile&, Backend&);
};

using ModelLoader = std::function<Result<std::unique_ptr<Model>>(const gguf::GgufFile&, Backend&)>;
struct ArchEntry {
    const char* name;
    ModelLoader load;
};
const std::vector<ArchEntry>& model_registry();

// Bytes of tensors prepared so far and in the file: loading (and packing) a large model takes
// seconds to minutes.
using LoadProgress = std::function<void(uint64_t done, uint64_t total)>;

// Picks the architecture from general.architecture and loads the model.
Result<std::unique_ptr<Model>> load_model(const gguf::GgufFile& file, Backend& backend,
                                          const LoadProgress& progress = nullptr);

}  // namespace bigmoe
