#include "bench/bench.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/stats.h"

namespace bigmoe::bench {

Result<std::vector<int64_t>> parse_int_ranges(const std::string& s, const std::string& flag) {
    std::vector<int64_t> out;
    size_t pos = 0;
    auto num = [&](const std::string& t) -> Result<int64_t> {
        char* end = nullptr;
        errno = 0;
        const long long v = std::strtoll(t.c_str(), &end, 10);
        if (t.empty() || *end != '\0' || errno != 0) return make_error(flag + ": '" + t + "' is not an integer");
        return int64_t(v);
    };
    while (pos <= s.size()) {
        size_t comma = s.find(',', pos);
        if (comma == std::string::npos) comma = s.size();
        const std::string item = s.substr(pos, comma - pos);
        pos = comma + 1;
        if (item.empty()) return make_error(flag + ": empty value in '" + s + "'");
        const size_t dash = item.find('-', 1);
        if (dash == std::string::npos) {
            auto v = num(item);
            if (!v) return v.error();
            out.push_back(*v);
            continue;
        }
        const size_t op = item.find_first_of("*+", dash);
        auto first = num(item.substr(0, dash));
        auto last = num(item.substr(dash + 1, op == std::string::npos ? std::string::npos : op - dash - 1));
        if (!first) return first.error();
        if (!last) return last.error();
        const char kind = op == std::string::npos ? '+' : item[op];
        int64_t step = 1;
        if (op != std::string::npos) {
            auto st = num(item.substr(op + 1));
            if (!st) return st.error();
            step = *st;
        }
        if ((kind == '+' && step <= 0) || (kind == '*' && step <= 1) || *last < *first)
            return make_error(flag + ": bad range '" + item + "' (first-last+step or first-last*factor)");
        if (kind == '*' && *first <= 0) return make_error(flag + ": a multiplied range must start above 0");
        for (int64_t v = *first; v <= *last; v = kind == '+' ? v + step : v * step) {
            out.push_back(v);
            if (out.size() > 100000) return make_error(flag + ": range '" + item + "' is too long");
        }
    }
    return out;
}

std::vector<double> Record::samples_ts() const {
    std::vector<double> r;
    const double tokens = double(n_parallel * (n_prompt + n_gen));
    for (double ns : samples_ns) r.push_back(tokens * 1e9 / ns);
    return r;
}
double Record::avg_ts() const {
    return mean(samples_ts());
}
double Record::stddev_ts() const {
    return stddev(samples_ts());
}
double Record::avg_ns() const {
    return mean(samples_ns);
}
double Record::stddev_ns() const {
    return stddev(samples_ns);
}

std::string Record::test_name() const {
    std::string t;
    if (n_prompt > 0 && n_gen == 0)
        t = "pp" + std::to_string(n_prompt);
    else if (n_gen > 0 && n_prompt == 0)
        t = "tg" + std::to_string(n_gen);
    else
        t = "pp" + std::to_string(n_prompt) + "+tg" + std::to_string(n_gen);
    if (n_parallel > 1) t += " x" + std::to_string(n_parallel);
    if (n_depth > 0) t += " @ d" + std::to_string(n_depth);
    return t;
}

double Record::gbps() const {
    // (with a draft the target reads its weights once per verified batch, and sequences side by
    // side share some of theirs: no single byte count)
    return n_gen > 0 && n_prompt == 0 && draft_model.empty() && n_parallel == 1 ? bytes_per_token * avg_ts() / 1e9 : 0;
}
double Record::tflops() const {
    return n_prompt > 0 && n_gen == 0 ? flops_per_token * avg_ts() / 1e12 : 0;
}

static nlohmann::ordered_json json_of(const Record& r) {
    nlohmann::ordered_json j;
    j["build_commit"] = r.build_commit;
    j["build_number"] = 0;
    j["cpu_info"] = r.cpu_info;
    j["gpu_info"] = r.gpu_info;
    j["backends"] = r.backend;
    j["compiler"] = r.compiler;
    j["model_filename"] = r.model_filename;
    j["model_type"] = r.model_type;
    j["model_size"] = r.model_size;
    j["model_n_params"] = r.model_n_params;
    j["n_batch"] = r.n_batch;
    j["n_ubatch"] = r.n_ubatch;
    j["n_threads"] = r.n_threads;
    j["type_k"] = r.type_k;
    j["type_v"] = r.type_v;
    j["n_gpu_layers"] = r.n_gpu_layers;
    j["n_cpu_moe"] = r.n_cpu_moe;
    j["flash_attn"] = r.flash_attn;
    j["no_repack"] = r.no_repack;
    j["n_prompt"] = r.n_prompt;
    j["n_gen"] = r.n_gen;
    j["n_depth"] = r.n_depth;
    j["test_time"] = r.test_time;
    j["avg_ns"] = uint64_t(r.avg_ns());
    j["stddev_ns"] = uint64_t(r.stddev_ns());
    j["avg_ts"] = r.avg_ts();
    j["stddev_ts"] = r.stddev_ts();
    j["samples_ns"] = r.samples_ns;
    j["samples_ts"] = r.samples_ts();
    j["bigmoe_gbps"] = r.gbps();
    j["bigmoe_bw_pct"] = r.machine_gbps > 0 ? 100.0 * r.gbps() / r.machine_gbps : 0.0;
    j["bigmoe_tflops"] = r.tflops();
    j["bigmoe_bytes_per_token"] = r.bytes_per_token;
    j["bigmoe_n_parallel"] = r.n_parallel;
    if (!r.profile_json.empty()) j["bigmoe_profile"] = nlohmann::ordered_json::parse(r.profile_json);
    if (!r.draft_model.empty()) {
        j["bigmoe_draft_model"] = r.draft_model;
        j["bigmoe_spec_acceptance"] = r.spec_acceptance;
        j["bigmoe_spec_mean_accepted"] = r.spec_mean_accepted;
        j["bigmoe_spec_draft_max"] = r.spec_draft_max;
        j["bigmoe_spec_draft_min"] = r.spec_draft_min;
        j["bigmoe_spec_p_min"] = r.spec_p_min;
        j["bigmoe_spec_adaptive"] = r.spec_adaptive;
        j["bigmoe_spec_guard"] = r.spec_guard;
        if (r.spec_speedup > 0) j["bigmoe_spec_speedup"] = r.spec_speedup;
    }
    return j;
}

std::string to_json(const Record& r, bool pretty) {
    return json_of(r).dump(pretty ? 2 : -1);
}

// The CSV columns: every field a record can have but the profile (a nested object, JSON only),
// so rows with and without a draft line up under one header.
static std::vector<std::string> csv_keys() {
    Record all;
    all.draft_model = "-";
    all.spec_speedup = 1;
    const auto j = json_of(all);  // a named object: items() refers to it
    std::vector<std::string> keys;
    for (auto& [k, v] : j.items()) keys.push_back(k);
    return keys;
}

std::string csv_header() {
    std::string h;
    for (const std::string& k : csv_keys()) h += (h.empty() ? "" : ",") + k;
    return h;
}

std::string to_csv(const Record& r) {
    std::string line;
    bool first = true;
    const auto j = json_of(r);
    for (const std::string& k : csv_keys()) {
        const nlohmann::ordered_json v = j.contains(k) ? j[k] : nlohmann::ordered_json("");
        std::string cell;
        if (v.is_string()) {
            cell = "\"";
            for (char c : v.get<std::string>()) cell += c == '"' ? std::string("\"\"") : std::string(1, c);
            cell += "\"";
        } else if (v.is_array()) {
            cell = "\"";
            for (size_t i = 0; i < v.size(); ++i) cell += (i ? ";" : "") + v[i].dump();
            cell += "\"";
        } else {
            cell = v.dump();
        }
        line += (first ? "" : ",") + cell;
        first = false;
    }
    return line;
}

static std::string human_size(uint64_t b) {
    char buf[32];
    if (b >= (uint64_t(1) << 30))
        std::snprintf(buf, sizeof buf, "%.2f GiB", double(b) / double(1 << 30));
    else
        std::snprintf(buf, sizeof buf, "%.2f MiB", double(b) / double(1 << 20));
    return buf;
}

std::string to_markdown(const std::vector<Record>& rs) {
    const Record def;
    struct Col {
        std::string name;
        bool right;
        std::string (*get)(const Record&);
    };
    std::vector<Col> cols = {
        {"model", false, [](const Record& r) { return r.model_type; }},
        {"size", true, [](const Record& r) { return human_size(r.model_size); }},
        {"params", true,
         [](const Record& r) {
             char b[32];
             std::snprintf(b, sizeof b, "%.2f B", double(r.model_n_params) / 1e9);
             return std::string(b);
         }},
        {"backend", false, [](const Record& r) { return r.backend; }},
        {"threads", true, [](const Record& r) { return std::to_string(r.n_threads); }},
    };
    bool ub = false, tk = false, tv = false, nb = false, md = false, nr = false, gpu = false, ncm = false;
    for (const auto& r : rs) {
        gpu |= r.n_gpu_layers != 0;
        ncm |= r.n_cpu_moe != 0;
        md |= !r.draft_model.empty();
        ub |= r.n_ubatch != def.n_ubatch;
        nb |= r.n_batch != def.n_batch;
        tk |= r.type_k != def.type_k;
        tv |= r.type_v != def.type_v;
        nr |= r.no_repack != def.no_repack;
    }
    // as llama-bench: GPU rows carry the layers offloaded
    if (gpu) cols.push_back({"ngl", true, [](const Record& r) { return std::to_string(r.n_gpu_layers); }});
    if (ncm) cols.push_back({"n_cpu_moe", true, [](const Record& r) { return std::to_string(r.n_cpu_moe); }});
    if (nb) cols.push_back({"n_batch", true, [](const Record& r) { return std::to_string(r.n_batch); }});
    if (ub) cols.push_back({"n_ubatch", true, [](const Record& r) { return std::to_string(r.n_ubatch); }});
    if (tk) cols.push_back({"type_k", false, [](const Record& r) { return r.type_k; }});
    if (tv) cols.push_back({"type_v", false, [](const Record& r) { return r.type_v; }});
    if (nr) cols.push_back({"no_repack", true, [](const Record& r) { return std::to_string(int(r.no_repack)); }});
    if (md) {
        cols.push_back({"draft", false, [](const Record& r) {
                            if (r.draft_model.empty()) return std::string("-");
                            const size_t slash = r.draft_model.find_last_of('/');
                            return slash == std::string::npos ? r.draft_model : r.draft_model.substr(slash + 1);
                        }});
        cols.push_back({"draft_max", true, [](const Record& r) {
                            if (r.draft_model.empty()) return std::string();
                            return (r.spec_adaptive ? "adaptive <= " : "") + std::to_string(r.spec_draft_max) +
                                   (r.spec_guard ? ", guard" : "");
                        }});
        cols.push_back({"p_min", true, [](const Record& r) {
                            if (r.draft_model.empty()) return std::string();
                            char b[32];
                            std::snprintf(b, sizeof b, "%.2f", r.spec_p_min);
                            return std::string(b);
                        }});
        cols.push_back({"draft accept", true, [](const Record& r) {
                            if (r.spec_acceptance < 0) return std::string();
                            char b[64];
                            std::snprintf(b, sizeof b, "%.1f%% (%.2f/step)", 100.0 * r.spec_acceptance,
                                          r.spec_mean_accepted);
                            return std::string(b);
                        }});
        cols.push_back({"speed-up", true, [](const Record& r) {
                            if (r.spec_speedup <= 0) return std::string();
                            char b[32];
                            std::snprintf(b, sizeof b, "%.2fx", r.spec_speedup);
                            return std::string(b);
                        }});
    }
    cols.push_back({"test", true, [](const Record& r) { return r.test_name(); }});
    cols.push_back({"t/s", true, [](const Record& r) {
                        char b[64];
                        std::snprintf(b, sizeof b, "%.2f ± %.2f", r.avg_ts(), r.stddev_ts());
                        return std::string(b);
                    }});
    cols.push_back({"GB/s", true, [](const Record& r) {
                        if (r.gbps() <= 0) return std::string();
                        char b[64];
                        std::snprintf(b, sizeof b, "%.2f", r.gbps());
                        return std::string(b);
                    }});
    if (std::any_of(rs.begin(), rs.end(), [](const Record& r) { return r.machine_gbps > 0; }))
        cols.push_back({"% bw", true, [](const Record& r) {
                            if (r.gbps() <= 0 || r.machine_gbps <= 0) return std::string();
                            char b[64];
                            std::snprintf(b, sizeof b, "%.1f", 100.0 * r.gbps() / r.machine_gbps);
                            return std::string(b);
                        }});
    cols.push_back({"TFLOP/s", true, [](const Record& r) {
                        if (r.tflops() <= 0) return std::string();
                        char b[64];
                        std::snprintf(b, sizeof b, "%.3f", r.tflops());
                        return std::string(b);
                    }});
    std::string out = "|";
    for (auto& c : cols) out += " " + c.name + " |";
    out += "\n|";
    for (auto& c : cols) out += c.right ? " ---: |" : " --- |";
    out += "\n";
    for (const auto& r : rs) {
        out += "|";
        for (auto& c : cols) out += " " + c.get(r) + " |";
        out += "\n";
    }
    return out;
}

void link_speedup(Record& r, const std::vector<Record>& earlier) {
    if (r.draft_model.empty() || r.n_gen == 0) return;
    for (const Record& b : earlier)
        if (b.draft_model.empty() && b.model_filename == r.model_filename && b.n_threads == r.n_threads &&
            b.n_prompt == r.n_prompt && b.n_gen == r.n_gen && b.n_depth == r.n_depth && b.type_k == r.type_k &&
            b.type_v == r.type_v && b.n_ubatch == r.n_ubatch && b.n_batch == r.n_batch && b.no_repack == r.no_repack &&
            b.avg_ts() > 0)
            r.spec_speedup = r.avg_ts() / b.avg_ts();
}

}  // namespace bigmoe::bench
