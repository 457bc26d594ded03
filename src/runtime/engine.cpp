#include <thread>

#include "backend/profiler.h"
#include "bigmoe/bigmoe.h"
#include "core/cpu_info.h"

namespace bigmoe {

#ifndef BIGMOE_VERSION
#define BIGMOE_VERSION "dev"
#endif

const char* version_string() {
    return BIGMOE_VERSION;
}

Result<std::unique_ptr<Engine>> Engine::load(const std::string& path, const LoadOptions& opts) {
    std::unique_ptr<Engine> e(new Engine());
    auto f = gguf::GgufFile::open(path);
    if (!f) return f.error();
    e->file_ = std::move(*f);
    const int threads = opts.n_threads > 0 ? opts.n_threads : physical_cores();
    e->backend_ = make_cpu_backend(threads, opts.repack);
    if (opts.profile) {
        auto p = std::make_unique<ProfiledBackend>(std::move(e->backend_));
        e->profiler_ = p.get();
        e->backend_ = std::move(p);
    }
    auto m = load_model(*e->file_, *e->backend_);
    if (!m) return m.error();
    e->model_ = std::move(*m);
    return e;
}

}  // namespace bigmoe
