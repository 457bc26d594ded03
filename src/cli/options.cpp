#include "cli/options.h"

#include "core/cpu_info.h"

#include <cstdio>
#include <fstream>
#include <sstream>

namespace bigmoe::cli {

Result<DType> parse_cache_type(const std::string& s, const char* which) {
    auto t = dtype_from_name(s);
    if (!t || (*t != DType::F32 && *t != DType::F16))
        return make_error(std::string(which) + ": unsupported cache type '" + s + "' (supported: f32, f16)");
    return *t;
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

}  // namespace bigmoe::cli
