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
    // With layers on the GPU: the routed experts of the first N layers stay in host memory and
    // run on the CPU (--n-cpu-moe N; the layer count or more, or negative (--cpu-moe): every
    // layer's, the MTP blocks' too).
    int n_cpu_moe = 0;
    int gpu_device = 0;
    LoadProgress progress = {};  // bytes of weights prepared (uploaded or packed) so far, of the file's
    // How messages name the -ngl given (a draft model's is -ngld).
    std::string gpu_layers_flag = "-ngl";
};

// What the GPU holds for each -ngl: the weights of the layers that run there (the last ones), the
// LM head and output norm (a tied embedding's copy), the MTP blocks (loaded beside the last layer),
// and with every layer there, every tensor of the file; less the routed experts --n-cpu-moe
// keeps in host memory.
class GpuWeights {
  public:
    static Result<GpuWeights> of(const gguf::GgufFile& f);
    int64_t n_layer() const { return int64_t(layer_.size()); }  // the layers that run (no MTP)
    // Bytes on the GPU with -ngl n (0: none; n_layer() or more, or negative: the whole file) and
    // --n-cpu-moe m (n_layer() or more, or negative: every layer's experts and the MTP blocks').
    uint64_t bytes(int64_t n_gpu_layers, int64_t n_cpu_moe = 0) const;
    // The largest -ngl whose weights take at most `budget` bytes with --n-cpu-moe m: n_layer()
    // when every layer fits, -1 when not even the head does.
    int64_t most_layers(uint64_t budget, int64_t n_cpu_moe = 0) const;
    // The fewest --n-cpu-moe that fits `budget` with every layer on the GPU: 0 when the whole
    // file fits, n_layer() when only every expert in host memory does, -1 when not even that.
    int64_t fewest_cpu_moe(uint64_t budget) const;
    bool has_experts() const { return experts_all_ > 0; }

  private:
    std::vector<uint64_t> layer_, experts_;  // [layer]: all its tensors, its routed experts
    uint64_t head_ = 0, all_ = 0;            // head: output side and MTP blocks
    uint64_t experts_all_ = 0, mtp_experts_ = 0;
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
    // The layers (from the first) whose routed experts run on the CPU beside GPU layers
    // (--n-cpu-moe; the layer count for every layer's).
    int64_t cpu_moe_layers() const { return cpu_moe_; }
    // One line for the log: model, size, parameters, backend, threads, context, KV bytes and
    // the load time.
    std::string describe(const Context& ctx, double load_seconds) const;
    // The profiler when loaded with LoadOptions::profile, else nullptr.
    ProfiledBackend* profiler() { return profiler_; }

  private:
    std::unique_ptr<gguf::GgufFile> file_;
    std::unique_ptr<Backend> backend_;
    std::unique_ptr<Backend> host_backend_;  // the CPU's layers and experts of a model split with the GPU
    std::unique_ptr<Model> model_;
    ProfiledBackend* profiler_ = nullptr;
    int64_t gpu_layers_ = 0;
    int64_t cpu_moe_ = 0;
};

const char* version_string();

}  // namespace bigmoe
