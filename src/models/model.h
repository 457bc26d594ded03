// The model contract: a Model owns its weights (views into the GGUF mapping, prepared by a
// backend) and computes logits for a batch given per-layer, per-sequence state. Architectures
// register a loader by GGUF architecture name; adding one = one file + one registry line.
#pragma once

#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/result.h"
#include "gguf/gguf_file.h"
#include "models/hparams.h"

namespace bigmoe {

// The tokens of one forward pass, and their sequences' spans and state, which the pass hands to
// each backend as it reaches it (Backend::begin_batch).
struct ForwardBatch {
    const int32_t* tokens = nullptr;  // [n_tokens]
    int64_t n_tokens = 0;
    std::vector<int64_t> out_rows;  // batch rows whose logits are wanted, ascending
    const BatchState* state = nullptr;
};

// Which backend runs which part of a model: the last `n_output_layers` layers (every layer when
// negative), the final norm and the LM head on `output`; the layers before them, and the token
// embedding's lookup then, on `first`. A pass moves its residual stream between the two once
// (-ngl N: the first layers on the CPU, the last N and the head on the GPU). With `experts`, the
// routed experts of the first `n_expert_layers` layers (every layer and the MTP blocks when
// negative) run there instead of on their layer's backend (--n-cpu-moe N: their weights stay in
// host memory, and each such layer sends its MoE input and router logits over and takes the sum
// back).
struct Placement {
    Backend* output = nullptr;
    Backend* first = nullptr;
    int64_t n_output_layers = -1;
    Backend* experts = nullptr;
    int64_t n_expert_layers = 0;

    static Placement on(Backend& be) { return {&be, nullptr, -1}; }
    static Placement split(Backend& first, Backend& output, int64_t n_output_layers) {
        return {&output, &first, n_output_layers};
    }
    // This placement with the routed experts of the first n layers on `be` (n < 0: all of them).
    Placement experts_on(Backend& be, int64_t n) const {
        Placement p = *this;
        p.experts = n != 0 ? &be : nullptr;
        p.n_expert_layers = n;
        return p;
    }
};

class Model {
  public:
    virtual ~Model() = default;
    const HParams& hparams() const { return hp_; }
    const gguf::GgufFile& file() const { return *file_; }
    // The backend of the LM head, where a pass's logits are.
    Backend& backend() const { return *placement_.output; }
    // The backend that runs layer il.
    Backend& backend(int64_t il) const {
        const Placement& p = placement_;
        return p.first && p.n_output_layers >= 0 && il < hp_.n_layer - p.n_output_layers ? *p.first : *p.output;
    }
    // The backend that runs layer il's routed experts (its own unless Placement::experts says).
    Backend& experts_backend(int64_t il) const {
        const Placement& p = placement_;
        return p.experts && (p.n_expert_layers < 0 || il < p.n_expert_layers) ? *p.experts : backend(il);
    }
    // Every backend the model runs on, in the order a pass enters them (layer 0's, the experts'
    // when apart, the output's).
    std::vector<Backend*> backends() const;
    const Placement& placement() const { return placement_; }

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
    // token_embd, output_norm and output (tied to token_embd when absent).
    Result<void> load_output_and_embeddings();

  protected:
    // Sets the hyper-parameters and the placement, and asks every backend whether it runs layers
    // of this model's sizes; before any load.
    Result<void> init(const gguf::GgufFile& file, HParams hp, const Placement& placement);
    // The weights loaded from now on are prepared by layer il's backend (its routed experts by
    // experts_backend(il)).
    void load_on(int64_t il) {
        loading_ = &backend(il);
        loading_experts_ = &experts_backend(il);
    }

    // Whether the weights loaded now are multiplied (Weight::multiplied): false while loading a
    // lookup table (an untied token embedding) or blocks that do not run (MTP).
    bool multiplied_ = true;
    // Whether the weights loaded now count in the model's sizes (false for a second copy).
    bool counted_ = true;
    HParams hp_;
    const gguf::GgufFile* file_ = nullptr;
    Placement placement_;
    Backend* loading_ = nullptr;          // prepares the weights loaded now
    Backend* loading_experts_ = nullptr;  // and the routed experts among them
    std::deque<Weight> weights_;
    const Weight* tok_embd_ = nullptr;  // the lookup, on layer 0's backend
    const Weight* output_norm_ = nullptr;
    const Weight* output_ = nullptr;  // on the output's backend (a second copy of a tied embedding there)
    uint64_t total_bytes_ = 0, active_bytes_ = 0;
    int64_t n_params_ = 0, n_active_params_ = 0;

    // Each layer's input norm (attn_norm), which the architectures set as they load the layers.
    std::vector<const Weight*> input_norms_;

    // The residual stream of every architecture here: h = the tokens' embeddings; per layer
    // h += body(be, il, h, norm_il(h)), with norm_il the layer's input norm (input_norms_[il]);
    // then the final norm and the LM head on the requested rows. The body runs on layer il's
    // backend `be` (h and the normed input are there) and returns what it adds to h.
    using LayerBody = std::function<Tensor(Backend& be, int64_t il, Tensor h, Tensor normed)>;
    void run_layers(const ForwardBatch& batch, const LayerBody& body, Tensor logits);

  private:
    // Begins a pass's step on `next` and moves the tensors `ts` (on `from`, or nullptr at the
    // start of the pass) into its scratch, through host memory. They are copied before the step
    // begins, so a device backend's recorded step holds only its own ops.
    void enter(Backend* from, Backend& next, const ForwardBatch& batch, std::initializer_list<Tensor*> ts);
};

using ModelLoader = std::function<Result<std::unique_ptr<Model>>(const gguf::GgufFile&, const Placement&)>;
struct ArchEntry {
    const char* name;
    ModelLoader load;
};
const std::vector<ArchEntry>& model_registry();

// Bytes of tensors prepared so far and in the file: loading (and packing) a large model takes
// seconds to minutes.
using LoadProgress = std::function<void(uint64_t done, uint64_t total)>;

// Picks the architecture from general.architecture and loads the model.
Result<std::unique_ptr<Model>> load_model(const gguf::GgufFile& file, const Placement& placement,
                                          const LoadProgress& progress = nullptr);
inline Result<std::unique_ptr<Model>> load_model(const gguf::GgufFile& file, Backend& backend,
                                                 const LoadProgress& progress = nullptr) {
    return load_model(file, Placement::on(backend), progress);
}

}  // namespace bigmoe
