#include "backend/profiler.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <nlohmann/json.hpp>
#include <vector>

namespace bigmoe {

namespace {
// Each class's name for tables and its identifier for metric labels and JSON, in OpClass order.
constexpr struct {
    const char* name;
    const char* key;
} k_classes[] = {
    {"expert matmul", "expert_matmul"},   {"dense matmul", "dense_matmul"},          {"attention", "attention"},
    {"gated deltanet", "gated_deltanet"}, {"norms/rope/elementwise", "elementwise"}, {"sampling", "sampling"}};
static_assert(std::size(k_classes) == size_t(OpClass::count));
}  // namespace

const char* op_class_name(OpClass c) {
    return c < OpClass::count ? k_classes[size_t(c)].name : "?";
}

const char* op_class_key(OpClass c) {
    return c < OpClass::count ? k_classes[size_t(c)].key : "?";
}

void ProfiledBackend::settle() const {
    if (rec_->pending.empty()) return;
    std::vector<Backend*> marked;
    for (const Pending& p : rec_->pending) {
        p.entry->seconds += p.backend->mark_seconds(p.from, p.to);
        if (std::find(marked.begin(), marked.end(), p.backend) == marked.end()) marked.push_back(p.backend);
    }
    rec_->pending.clear();
    for (Backend* b : marked) b->clear_marks();
}

void ProfiledBackend::clear() {
    settle();  // the marks are released and the entries they point into outlive the wait
    rec_->table.clear();
}

OpSeconds ProfiledBackend::seconds_by_class() const {
    settle();
    OpSeconds s{};
    for (const auto& [phase, scopes] : rec_->table)
        for (const auto& [scope, classes] : scopes)
            for (const auto& [c, e] : classes) s[size_t(c)] += e.seconds;
    return s;
}

namespace {
struct Row {
    std::string name;
    double seconds = 0;
    int64_t calls = 0;
    double bytes = 0, flops = 0;
};

std::vector<Row> rows_of(const std::map<std::string, std::map<OpClass, ProfileEntry>>& scopes, bool by_scope) {
    std::map<std::string, Row> acc;
    for (const auto& [scope, classes] : scopes)
        for (const auto& [c, e] : classes) {
            const std::string key = by_scope ? scope + " / " + op_class_name(c) : op_class_name(c);
            Row& r = acc[key];
            r.name = key;
            r.seconds += e.seconds;
            r.calls += e.calls;
            r.bytes += e.bytes;
            r.flops += e.flops;
        }
    std::vector<Row> rows;
    for (auto& [k, r] : acc) rows.push_back(r);
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.seconds > b.seconds; });
    return rows;
}
}  // namespace

std::string ProfiledBackend::format(const std::string& phase, double wall, int64_t n_tokens) const {
    settle();
    auto it = rec_->table.find(phase);
    if (it == rec_->table.end() || wall <= 0) return "";
    std::string out =
        "| " + phase +
        ": op | share | ms/token | calls | GB/s | TFLOP/s |\n| --- | ---: | ---: | ---: | ---: | ---: |\n";
    double sum = 0;
    char buf[256];
    auto row = [&](const std::string& name, double sec, int64_t calls, double bytes, double flops) {
        char gb[32] = "", tf[32] = "";
        if (bytes > 0 && sec > 0) std::snprintf(gb, sizeof gb, "%.2f", bytes / sec / 1e9);
        if (flops > 0 && sec > 0) std::snprintf(tf, sizeof tf, "%.3f", flops / sec / 1e12);
        std::snprintf(buf, sizeof buf, "| %s | %.1f%% | %.3f | %lld | %s | %s |\n", name.c_str(), 100.0 * sec / wall,
                      1000.0 * sec / double(std::max<int64_t>(1, n_tokens)), (long long)calls, gb, tf);
        out += buf;
    };
    for (const Row& r : rows_of(it->second, false)) {
        row(r.name, r.seconds, r.calls, r.bytes, r.flops);
        sum += r.seconds;
    }
    row("other (not in an op)", std::max(0.0, wall - sum), 0, 0, 0);
    std::snprintf(buf, sizeof buf, "| **wall** | 100.0%% | %.3f | |\n",
                  1000.0 * wall / double(std::max<int64_t>(1, n_tokens)));
    out += buf;
    out += "\n| " + phase + ": layer kind / op | share |\n| --- | ---: |\n";
    for (const Row& r : rows_of(it->second, true)) {
        std::snprintf(buf, sizeof buf, "| %s | %.1f%% |\n", r.name.c_str(), 100.0 * r.seconds / wall);
        out += buf;
    }
    return out;
}

std::string ProfiledBackend::json(const std::string& phase, double wall, int64_t n_tokens) const {
    settle();
    nlohmann::ordered_json j;
    j["phase"] = phase;
    j["wall_s"] = wall;
    j["n_tokens"] = n_tokens;
    double sum = 0;
    nlohmann::ordered_json ops = nlohmann::ordered_json::array();
    auto it = rec_->table.find(phase);
    if (it != rec_->table.end()) {
        for (const Row& r : rows_of(it->second, false)) {
            ops.push_back({{"op", r.name},
                           {"seconds", r.seconds},
                           {"calls", r.calls},
                           {"share", wall > 0 ? r.seconds / wall : 0}});
            sum += r.seconds;
        }
        nlohmann::ordered_json layers = nlohmann::ordered_json::array();
        for (const Row& r : rows_of(it->second, true))
            layers.push_back({{"name", r.name}, {"seconds", r.seconds}, {"share", wall > 0 ? r.seconds / wall : 0}});
        j["by_layer_kind"] = layers;
    }
    ops.push_back({{"op", "other"},
                   {"seconds", std::max(0.0, wall - sum)},
                   {"calls", 0},
                   {"share", wall > 0 ? std::max(0.0, wall - sum) / wall : 0}});
    j["ops"] = ops;
    return j.dump();
}

}  // namespace bigmoe
