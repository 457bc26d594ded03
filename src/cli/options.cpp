#include "cli/options.h"

#include <fstream>
#include <sstream>

namespace bigmoe::cli {

Result<DType> parse_cache_type(const std::string& s, const char* which) {
    auto t = dtype_from_name(s);
    if (!t || (*t != DType::F32 && *t != DType::F16))
        return make_error(std::string(which) + ": unsupported cache type '" + s + "' (supported: f32, f16)");
    return *t;
}

Result<std::string> read_text_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) return make_error("cannot open '" + path + "'", ErrorKind::not_found);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

}  // namespace bigmoe::cli
