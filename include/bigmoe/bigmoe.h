// bigmoe public API: open a GGUF model on a backend and create decoding contexts.
//
//   auto engine = bigmoe::Engine::load("model.gguf", {.n_threads = 2});
//   auto ctx = (*engine)->new_context({.n_ctx = 4096});
//   (*ctx)->decode_seq(0, tokens, /*all_logits=*/false, &logits);
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/profiler.h"
#include "core/result.h"
#include "gguf/gguf_file.h"
#include "models/model.h"
#include "runtime/context.h"

namespace bigmoe {

struct LoadOptions {
    int n_threads = 0;     // 0: the physical cores
    bool profile = false;  // wrap the backend in a ProfiledBackend
    bool repack = true;    // CPU: keep a packed copy of K-quant weights for faster products (--no-repack)
    // Layers on the GPU (-ngl): 0 runs on the CPU; the layer count or more (or -1) puts the whole
    // model on the CUDA backend; N between runs the last N layers and the LM head on the GPU and
    // the others on the CPU.
    int n_gpu_layers = 0;
    int gpu_device = 0;
    LoadProgress progress = {};  // bytes of weights prepared (uploaded or packed) so far, of the file's
};

// What the GPU holds for each -ngl: the weights of the layers that run there (the last ones), the
// LM head and output norm (a tied embedding's copy), the MTP blocks (loaded beside the last layer),
// and with every layer there, every tensor of the file.
class GpuWeights {
  public:
    static Result<GpuWeights> of(const gguf::GgufFile& f);
    int64_t n_layer() const { return int64_t(layer_.size()); }  // the layers that run (no MTP)
    // Bytes on the GPU with -ngl n (0: none; n_layer() or more, or negative: the whole file).
    uint64_t bytes(int64_t n_gpu_layers) const;
    // The largest -ngl whose weights take at most `budget` bytes: n_layer() when the whole file
    // fits, -1 when not even the head does.
    int64_t most_layers(uint64_t budget) const;

  private:
    std::vector<uint64_t> layer_;
    uint64_t head_ = 0, all_ = 0;  // head: output side and MTP blocks
};

// A draft model's -ngl: -ngld when given (ngld >= -1), otherwise the target's GPU use decides:
// the whole draft on the GPU whenever the target has layers there (a draft on the CPU would take
// longer than the target's steps it saves), else the CPU.
inline int draft_gpu_layers(int64_t ngld, int64_t target_ngl) {
    return ngld >= -1 ? int(ngld) : (target_ngl != 0 ? -1 : 0);
}

class Engine {
  public:
    static Result<std::unique_ptr<Engine>> load(const std::string& path, const LoadOptions& opts);
    Result<std::unique_ptr<Context>> new_context(const ContextParams& params) {
        return Context::create(*model_, params);
    }

    const gguf::GgufFile& file() const { return *file_; }
    Model& model() { return *model_; }
    // The backend of the LM head (the GPU's when any layer is there).
    Backend& backend() { return *backend_; }
    const Backend& backend() const { return *backend_; }
    // Whether the model runs on a GPU backend (-ngl), and how many of its layers do.
    bool on_gpu() const { return gpu_layers_ > 0; }
    int64_t gpu_layers() const { return gpu_layers_; }
    // One line for the log: model, size, parameters, backend, threads, context, KV bytes and
    // the load time.
    std::string describe(const Context& ctx, double load_seconds) const;
    // The profiler when loaded with LoadOptions::profile, else nullptr.
    ProfiledBackend* profiler() { return profiler_; }

  private:
    std::unique_ptr<gguf::GgufFile> file_;
    std::unique_ptr<Backend> backend_;
    std::unique_ptr<Backend> host_backend_;  // the CPU's layers of a model split with the GPU
    std::unique_ptr<Model> model_;
    ProfiledBackend* profiler_ = nullptr;
    int64_t gpu_layers_ = 0;
};

const char* version_string();

}  // namespace bigmoe
