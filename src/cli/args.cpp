#include "cli/args.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

namespace bigmoe::cli {

Result<Args> Args::parse(const std::vector<std::string>& argv, const std::vector<OptionSpec>& specs,
                         bool positional_ok) {
    Args a;
    for (size_t i = 0; i < argv.size(); ++i) {
        std::string arg = argv[i];
        if (arg.size() < 2 || arg[0] != '-') {
            if (!positional_ok)
                return make_error("unexpected argument '" + arg + "' (options start with '-'; see --help)");
            a.positional_.push_back(arg);
            continue;
        }
        std::string inline_value;
        bool has_inline = false;
        if (arg.rfind("--", 0) == 0) {
            const size_t eq = arg.find('=');
            if (eq != std::string::npos) {
                inline_value = arg.substr(eq + 1);
                arg = arg.substr(0, eq);
                has_inline = true;
            }
        }
        const OptionSpec* spec = nullptr;
        for (const auto& s : specs)
            if (arg == s.long_name || (!s.short_name.empty() && arg == s.short_name) ||
                (!s.alias.empty() && arg == s.alias))
                spec = &s;
        if (!spec) return make_error("unknown option '" + arg + "' (see --help)");
        if (!spec->takes_value()) {
            if (has_inline) return make_error("option '" + spec->long_name + "' takes no value");
            a.values_.emplace(spec->long_name, "1");
            continue;
        }
        if (has_inline) {
            a.values_.emplace(spec->long_name, inline_value);
        } else {
            if (i + 1 >= argv.size()) return make_error("option '" + arg + "' needs a value");
            a.values_.emplace(spec->long_name, argv[++i]);
        }
    }
    return a;
}

std::string Args::get(const std::string& name, const std::string& def) const {
    auto range = values_.equal_range(name);
    if (range.first == range.second) return def;
    auto last = range.second;
    --last;
    return last->second;
}

std::vector<std::string> Args::get_all(const std::string& name) const {
    std::vector<std::string> r;
    auto range = values_.equal_range(name);
    for (auto it = range.first; it != range.second; ++it) r.push_back(it->second);
    return r;
}

Result<int64_t> Args::get_int(const std::string& name, int64_t def, int64_t min, int64_t max) const {
    if (!has(name)) return def;
    const std::string s = get(name);
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0)
        return make_error("option '" + name + "': '" + s + "' is not an integer");
    if (v < min || v > max)
        return make_error("option '" + name + "': " + s + " is out of range [" + std::to_string(min) + ", " +
                          std::to_string(max) + "]");
    return int64_t(v);
}

Result<double> Args::get_float(const std::string& name, double def) const {
    if (!has(name)) return def;
    const std::string s = get(name);
    char* end = nullptr;
    errno = 0;
    const double v = std::strtod(s.c_str(), &end);
    if (s.empty() || *end != '\0' || errno != 0)
        return make_error("option '" + name + "': '" + s + "' is not a number");
    if (!std::isfinite(v)) return make_error("option '" + name + "': '" + s + "' is not a finite number");
    return v;
}

OptionSpec with_default(OptionSpec o, const std::string& def) {
    o.help += " (default " + def + ")";
    return o;
}

OptionSpec list_of(OptionSpec o) {
    o.value = "LIST";
    o.help += "; a list";
    return o;
}

std::string format_help(const std::vector<OptionSpec>& specs) {
    std::string out;
    for (const auto& s : specs) {
        std::string names = s.short_name.empty() ? s.long_name : s.short_name + ", " + s.long_name;
        if (s.takes_value()) names += " " + s.value;
        out += "  " + names;
        out += std::string(names.size() < 34 ? 34 - names.size() : 1, ' ') + s.help + "\n";
    }
    return out;
}

Result<std::vector<int64_t>> parse_int_list(const std::string& s, const std::string& what) {
    std::vector<int64_t> r;
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t comma = s.find(',', pos);
        if (comma == std::string::npos) comma = s.size();
        std::string item = s.substr(pos, comma - pos);
        while (!item.empty() && (item.front() == ' ' || item.front() == '[')) item.erase(item.begin());
        while (!item.empty() && (item.back() == ' ' || item.back() == ']' || item.back() == '\n')) item.pop_back();
        if (!item.empty()) {
            char* end = nullptr;
            errno = 0;
            const long long v = std::strtoll(item.c_str(), &end, 10);
            if (*end != '\0' || errno != 0) return make_error(what + ": '" + item + "' is not an integer");
            r.push_back(v);
        }
        pos = comma + 1;
    }
    return r;
}

}  // namespace bigmoe::cli
