#include "cli/options.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "core/cpu_info.h"
#include "core/memory.h"

namespace bigmoe::cli {

Result<DType> parse_cache_type(const std::string& s, const char* which) {
    auto t = dtype_from_name(s);
    if (!t || !is_cache_type(*t))
        return make_error(std::string(which) + ": unknown cache type '" + s + "' (one of " + cache_type_list() + ")");
    return *t;
}

Progress::Progress(std::string label) : label_(std::move(label)), on_(isatty(2) != 0) {}

void Progress::draw(double fraction, const std::string& detail) {
    if (!on_) return;
    const auto now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    if (fraction < 1 && now - last_ < 0.2) return;
    last_ = now;
    std::fprintf(stderr, "\r%s: %3.0f%% %s   ", label_.c_str(), 100.0 * fraction, detail.c_str());
    drawn_ = true;
}

void Progress::bytes(uint64_t done, uint64_t total) {
    if (total == 0) return;
    draw(double(done) / double(total), "(" + format_bytes(done) + " of " + format_bytes(total) + ")");
}

void Progress::count(int64_t done, int64_t total, const char* unit) {
    if (total <= 0) return;
    draw(double(done) / double(total), "(" + std::to_string(done) + " of " + std::to_string(total) + " " + unit + ")");
}

void Progress::done() {
    if (drawn_) std::fprintf(stderr, "\r%*s\r", int(label_.size()) + 48, "");
    drawn_ = false;
}

Result<int> parse_cpu_moe(const Args& args, int64_t n_gpu_layers) {
    auto n = args.get_int("--n-cpu-moe", 0, 0, 1 << 20);
    if (!n) return n.error();
    const int ncm = args.has("--cpu-moe") ? -1 : int(*n);
    if (ncm != 0 && n_gpu_layers == 0)
        std::fprintf(stderr, "warning: %s has no effect without -ngl (every layer runs on the CPU)\n",
                     args.has("--cpu-moe") ? "--cpu-moe" : "--n-cpu-moe");
    return ncm;
}

int resolve_threads(int64_t asked) {
    if (asked <= 0) return physical_cores();
    static bool warned = false;
    const int hw = hardware_threads();
    if (asked > hw && !warned) {
        warned = true;
        std::fprintf(stderr,
                     "warning: -t %lld is more than the %d hardware threads of this machine: every op waits for "
                     "threads that are not running (decode measured ~70x slower at -t 4 on 2 cores); -t %d or "
                     "less is fastest\n",
                     (long long)asked, hw, physical_cores());
    }
    return int(asked);
}

Result<std::string> read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return make_error("cannot open '" + path + "'", ErrorKind::not_found);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

Result<std::string> text_or_file(const Args& args, const char* flag, const char* file_flag, const char* cmd) {
    if (args.has(flag) && args.has(file_flag))
        return make_error(std::string(cmd) + ": give either " + flag + " or " + file_flag);
    if (args.has(file_flag)) return read_text_file(args.get(file_flag));
    return args.has(flag) ? args.get(flag) : std::string();
}

}  // namespace bigmoe::cli
