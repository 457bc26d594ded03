#include <algorithm>
#include <cstdlib>
#include <thread>

#include "backend/cuda/cuda_backend.h"
#include "backend/profiler.h"
#include "bigmoe/bigmoe.h"
#include "core/cpu_info.h"
#include "core/memory.h"
#include "gguf/names.h"

namespace bigmoe {

#ifndef BIGMOE_VERSION
#define BIGMOE_VERSION "dev"
#endif

const char* version_string() {
    return BIGMOE_VERSION;
}

Result<GpuWeights> GpuWeights::of(const gguf::GgufFile& f) {
    auto arch = f.get_string(gguf::key::general_architecture);
    if (!arch) return arch.error();
    const int64_t n_all = f.get_int_or(*arch + "." + gguf::key::block_count, 0);
    const int64_t n_nextn = f.get_int_or(*arch + "." + gguf::key::nextn_predict_layers, 0);
    if (n_all <= 0 || n_nextn < 0 || n_nextn >= n_all)
        return make_error(
            f.path() + ": block_count " + std::to_string(n_all) + " with " + std::to_string(n_nextn) + " MTP blocks",
            ErrorKind::corrupt_file);
    GpuWeights g;
    g.layer_.assign(size_t(n_all - n_nextn), 0);
    g.experts_.assign(size_t(n_all - n_nextn), 0);
    const bool tied = f.tensor(gguf::tensor::output) == nullptr;
    auto is_experts = [](const std::string& name) {
        const size_t dot = name.find('.', 4);
        if (dot == std::string::npos) return false;
        const std::string t = name.substr(dot + 1);
        return t == gguf::tensor::ffn_gate_exps || t == gguf::tensor::ffn_up_exps || t == gguf::tensor::ffn_down_exps ||
               t == gguf::tensor::ffn_gate_up_exps;
    };
    for (const auto& t : f.tensors()) {
        g.all_ += t.nbytes;
        int64_t il = -1;
        if (t.name.rfind("blk.", 0) == 0) il = std::strtoll(t.name.c_str() + 4, nullptr, 10);
        const bool experts = il >= 0 && is_experts(t.name);
        if (experts) g.experts_all_ += t.nbytes;
        if (il >= 0 && il < g.n_layer()) {
            g.layer_[size_t(il)] += t.nbytes;
            if (experts) g.experts_[size_t(il)] += t.nbytes;
        } else if (t.name != gguf::tensor::token_embd || tied) {  // the lookup stays with the first layer
            g.head_ += t.nbytes;
            if (experts) g.mtp_experts_ += t.nbytes;
        }
    }
    return g;
}

uint64_t GpuWeights::bytes(int64_t n, int64_t ncm) const {
    if (n == 0) return 0;
    const int64_t L = n_layer(), first = n < 0 || n >= L ? 0 : L - n;
    uint64_t b = first == 0 ? all_ : head_;
    for (int64_t il = first; il < L && first > 0; ++il) b += layer_[size_t(il)];
    // the experts kept in host memory: those of the first ncm layers the GPU would hold (and,
    // with every layer's, the MTP blocks', which load beside the last layer)
    const bool every = ncm < 0 || ncm >= L;
    for (int64_t il = first; il < L && (every || il < ncm); ++il) b -= experts_[size_t(il)];
    if (every) b -= mtp_experts_;
    return b;
}

int64_t GpuWeights::most_layers(uint64_t budget, int64_t ncm) const {
    if (bytes(-1, ncm) <= budget) return n_layer();
    if (head_ - (ncm < 0 || ncm >= n_layer() ? mtp_experts_ : 0) > budget) return -1;
    int64_t n = 0;  // below n_layer(): all of them was checked above
    while (n + 1 < n_layer() && bytes(n + 1, ncm) <= budget) ++n;
    return n;
}

int64_t GpuWeights::fewest_cpu_moe(uint64_t budget) const {
    for (int64_t m = 0; m <= n_layer(); ++m)
        if (bytes(-1, m) <= budget) return m;
    return -1;
}

Result<std::unique_ptr<Engine>> Engine::load(const std::string& path, const LoadOptions& opts) {
    std::unique_ptr<Engine> e(new Engine());
    auto f = gguf::GgufFile::open(path);
    if (!f) return f.error();
    e->file_ = std::move(*f);
    const int threads = opts.n_threads > 0 ? opts.n_threads : physical_cores();
    bool split = false;  // layers on both backends
    if (opts.n_gpu_layers != 0) {
        auto gw = GpuWeights::of(*e->file_);
        if (!gw) return gw.error();
        auto be = make_cuda_backend(opts.gpu_device);
        if (!be)
            return make_error(
                opts.gpu_layers_flag + " " + std::to_string(opts.n_gpu_layers) + ": " + be.error().message,
                be.error().kind);
        const int64_t L = gw->n_layer(), ncm = gw->has_experts() ? opts.n_cpu_moe : 0;
        const std::string flags = opts.gpu_layers_flag + " " + std::to_string(opts.n_gpu_layers) +
                                  (ncm != 0 ? " --n-cpu-moe " + std::to_string(ncm < 0 ? L : ncm) : "");
        // refuse before uploading what cannot fit, naming the -ngl (or --n-cpu-moe) that can
        const uint64_t need = gw->bytes(opts.n_gpu_layers, ncm), free = (*be)->memory_available();
        if (need > free) {
            const int64_t most = gw->most_layers(free, ncm);
            std::string hint = most >= 1 ? opts.gpu_layers_flag + " " + std::to_string(most) + " of the " +
                                               std::to_string(L) + " layers fits (before the context's memory)"
                                         : std::string("not even the output layer fits (-ngl 0 runs on the CPU)");
            if (const int64_t m = gw->fewest_cpu_moe(free); gw->has_experts() && m > 0)
                hint += "; with every layer there, --n-cpu-moe " + std::to_string(m) +
                        " fits (those layers' routed experts in host memory)";
            return make_error(flags + ": the GPU's part of the weights needs " + format_bytes(need) + ", " +
                                  format_bytes(free) + " are free on " + (*be)->device_name() + "; " + hint,
                              ErrorKind::resource_exhausted);
        }
        e->backend_ = std::move(*be);
        // the layers that run count (a file's block count also counts Qwen3.5's MTP blocks)
        e->gpu_layers_ = L;
        if (opts.n_gpu_layers > 0 && opts.n_gpu_layers < L) e->gpu_layers_ = opts.n_gpu_layers;
        split = e->gpu_layers_ < L;
        // experts on the CPU only where a layer on the GPU would have held them
        if (ncm != 0 && (ncm < 0 || ncm > L - e->gpu_layers_)) e->cpu_moe_ = ncm < 0 || ncm >= L ? L : ncm;
        if (e->gpu_layers_ < L || e->cpu_moe_ > 0) e->host_backend_ = make_cpu_backend(threads, opts.repack);
    } else {
        e->backend_ = make_cpu_backend(threads, opts.repack);
    }
    if (opts.profile) {
        auto p = std::make_unique<ProfiledBackend>(std::move(e->backend_));
        e->profiler_ = p.get();
        e->backend_ = std::move(p);
        if (e->host_backend_)
            e->host_backend_ = std::make_unique<ProfiledBackend>(std::move(e->host_backend_), e->profiler_);
    }
    Placement placement =
        split ? Placement::split(*e->host_backend_, *e->backend_, e->gpu_layers_) : Placement::on(*e->backend_);
    if (e->cpu_moe_ > 0) placement = placement.experts_on(*e->host_backend_, e->cpu_moe_);
    auto m = load_model(*e->file_, placement, opts.progress);
    if (!m && e->gpu_layers_ > 0 && m.error().kind == ErrorKind::resource_exhausted)
        return make_error(m.error().message + " (" + opts.gpu_layers_flag + " " + std::to_string(e->gpu_layers_) +
                              ": fewer layers on the GPU leave the others on the CPU)",
                          m.error().kind);
    if (!m) return m.error();
    e->model_ = std::move(*m);
    return e;
}

std::string Engine::describe(const Context& ctx, double load_seconds) const {
    const HParams& hp = model_->hparams();
    const ContextParams& p = ctx.params();
    char params[32];
    std::snprintf(params, sizeof params, "%.2f B", double(model_->n_params()) / 1e9);
    const uint64_t kv = ctx.kv_bytes_per_token() * uint64_t(p.n_ctx) * uint64_t(p.n_seq_max);
    auto where = [](const Backend& be) {
        return be.name() + (be.device_name().empty() ? ", " + std::to_string(be.n_threads()) + " threads"
                                                     : " on " + be.device_name());
    };
    std::string placed = "backend " + where(*backend_);
    if (gpu_layers_ > 0 && hp.n_layer > gpu_layers_) {
        const int64_t n_cpu = hp.n_layer - gpu_layers_;
        placed = "layers 0-" + std::to_string(n_cpu - 1) + " on " + where(*host_backend_) + ", layers " +
                 std::to_string(n_cpu) + "-" + std::to_string(hp.n_layer - 1) + " and the output on " +
                 where(*backend_);
    }
    if (cpu_moe_ > 0)
        placed += ", the routed experts of layers 0-" + std::to_string(cpu_moe_ - 1) + " on " + where(*host_backend_);
    std::string s = "model: " + file_->path() + " (" + hp.arch + ", " + params + " params, " +
                    format_bytes(model_->total_weight_bytes()) + ") | " + placed + " | context " +
                    std::to_string(p.n_ctx) + ", KV cache " + format_bytes(kv) + " (" +
                    format_bytes(ctx.kv_bytes_per_token()) + "/token, K " + cache_type_name(p.type_k) + " V " +
                    cache_type_name(p.type_v) + ")";
    if (ctx.recurrent_bytes_per_seq() > 0) s += ", recurrent state " + format_bytes(ctx.state_bytes() - kv);
    char t[32];
    std::snprintf(t, sizeof t, " | loaded in %.2f s", load_seconds);
    return s + t;
}

}  // namespace bigmoe
