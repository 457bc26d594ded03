#include "report/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace bigmoe::report {

namespace {

using Json = nlohmann::ordered_json;

const char* k_palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"};

std::string esc(const std::string& s) {
    std::string r;
    for (char c : s) {
        if (c == '<')
            r += "&lt;";
        else if (c == '>')
            r += "&gt;";
        else if (c == '&')
            r += "&amp;";
        else if (c == '"')
            r += "&quot;";
        else
            r += c;
    }
    return r;
}

std::string fmt(double v, int prec = 2) {
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", prec, v);
    return b;
}

// A `bigmoe loadtest -o jsonl` record.
bool loadtest_record(const Json& r) {
    return r.is_object() && r.contains("workload") && r.contains("concurrency") && r.contains("ttft_ms") &&
           r["ttft_ms"].is_object();
}

Result<std::vector<Json>> load(const std::string& path) {
    std::ifstream f(path);
    if (!f) return make_error("report: cannot open '" + path + "'");
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string text = ss.str();
    std::vector<Json> out;
    try {
        size_t first = text.find_first_not_of(" \t\r\n");
        if (first != std::string::npos && text[first] == '[') {
            for (auto& r : Json::parse(text)) out.push_back(r);
        } else {
            std::istringstream in(text);
            std::string line;
            while (std::getline(in, line))
                if (line.find_first_not_of(" \t\r") != std::string::npos) out.push_back(Json::parse(line));
        }
    } catch (const std::exception& e) {
        return make_error("report: '" + path + "' is not bench json/jsonl output: " + e.what());
    }
    for (const auto& r : out)
        if (!loadtest_record(r) && (!r.contains("avg_ts") || !r.contains("n_prompt") || !r.contains("n_gen")))
            return make_error("report: '" + path +
                              "' has a record that is neither bench output (avg_ts, n_prompt, n_gen) nor "
                              "loadtest output (workload, concurrency, ttft_ms)");
    return out;
}

std::string config_of(const Json& r) {
    std::string c = r.value("model_type", std::string("?")) + ", " + r.value("backends", std::string("CPU")) + ", " +
                    std::to_string(r.value("n_threads", 0)) + " threads";
    if (r.value("n_ubatch", 512) != 512) c += ", ub " + std::to_string(r.value("n_ubatch", 512));
    if (r.value("type_k", std::string("f16")) != "f16" || r.value("type_v", std::string("f16")) != "f16")
        c += ", KV " + r.value("type_k", std::string()) + "/" + r.value("type_v", std::string());
    return c;
}

struct Series {
    std::string name;
    std::vector<std::pair<double, double>> pts;  // (x, y): (depth, t/s) or (acceptance %, speed-up)
};

struct Axes {
    std::string x_label, y_label;
    std::string (*tip)(double x, double y);  // a point's tooltip
    double ref_y = 0;                        // > 0: a dashed reference line (speed-up 1x)
};

std::string depth_tip(double x, double y);
std::string speedup_tip(double x, double y);
std::string throughput_tip(double x, double y);
std::string latency_tip(double x, double y);
const Axes k_depth_axes = {"context depth (tokens)", "tokens / second", depth_tip};
const Axes k_speedup_axes = {"draft acceptance rate (%)", "speed-up over plain decoding (x)", speedup_tip, 1.0};
const Axes k_throughput_axes = {"concurrent requests", "output tokens / second, all requests", throughput_tip};
const Axes k_latency_axes = {"concurrent requests", "milliseconds", latency_tip};

// The smallest of 1, 2, 2.5, 5 x 10^k at or above v: axis ends that give round tick labels.
double nice_max(double v) {
    if (!(v > 0)) return 1;
    const double p = std::pow(10.0, std::floor(std::log10(v)));
    for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
        if (m * p >= v * (1 - 1e-9)) return m * p;
    return 10 * p;
}

std::string nice_ticks_axis(double lo, double hi, bool x, double x0, double y0, double w, double h, std::string* out) {
    (void)lo;
    const int n = 5;
    std::string s;
    for (int i = 0; i <= n; ++i) {
        const double v = hi * i / n;
        if (x) {
            const double px = x0 + w * i / n;
            s += "<line x1='" + fmt(px) + "' y1='" + fmt(y0) + "' x2='" + fmt(px) + "' y2='" + fmt(y0 + 5) +
                 "' stroke='#444'/><text x='" + fmt(px) + "' y='" + fmt(y0 + 18) + "' text-anchor='middle'>" +
                 fmt(v, v == std::floor(v) ? 0 : 1) + "</text>";
        } else {
            const double py = y0 - h * i / n;
            s += "<line x1='" + fmt(x0) + "' y1='" + fmt(py) + "' x2='" + fmt(x0 + w) + "' y2='" + fmt(py) +
                 "' stroke='#e4e4e4'/><text x='" + fmt(x0 - 6) + "' y='" + fmt(py + 4) + "' text-anchor='end'>" +
                 fmt(v, v < 10 && v != std::floor(v) ? 1 : 0) + "</text>";
        }
    }
    *out += s;
    return s;
}

std::string line_chart(const std::string& title, const std::string& id, const std::vector<Series>& series,
                       size_t color_offset, const Axes& axes = k_depth_axes) {
    const double W = 720, H = 360, L = 70, R = 20, T = 40, B = 60;
    const double pw = W - L - R, ph = H - T - B;
    double xmax = 0, ymax = 0;
    for (auto& s : series)
        for (auto& [x, y] : s.pts) {
            xmax = std::max(xmax, x);
            ymax = std::max(ymax, y);
        }
    xmax = nice_max(xmax);
    ymax = nice_max(ymax * 1.05);
    std::string svg = "<svg id='" + id + "' class='chart' viewBox='0 0 " + fmt(W, 0) + " " + fmt(H, 0) +
                      "' role='img' aria-label='" + esc(title) + "'>";
    svg += "<text x='" + fmt(W / 2) + "' y='22' text-anchor='middle' class='ct'>" + esc(title) + "</text>";
    nice_ticks_axis(0, ymax, false, L, T + ph, pw, ph, &svg);
    nice_ticks_axis(0, xmax, true, L, T + ph, pw, ph, &svg);
    svg += "<line x1='" + fmt(L) + "' y1='" + fmt(T + ph) + "' x2='" + fmt(L + pw) + "' y2='" + fmt(T + ph) +
           "' stroke='#444'/>";
    svg += "<text x='" + fmt(L + pw / 2) + "' y='" + fmt(H - 18) + "' text-anchor='middle'>" + esc(axes.x_label) +
           "</text>";
    svg += "<text x='16' y='" + fmt(T + ph / 2) + "' transform='rotate(-90 16 " + fmt(T + ph / 2) +
           ")' text-anchor='middle'>" + esc(axes.y_label) + "</text>";
    if (axes.ref_y > 0 && axes.ref_y < ymax) {
        const double y = T + ph - ph * axes.ref_y / ymax;
        svg += "<line x1='" + fmt(L) + "' y1='" + fmt(y) + "' x2='" + fmt(L + pw) + "' y2='" + fmt(y) +
               "' stroke='#666' stroke-dasharray='6 4'/><text x='" + fmt(L + pw - 4) + "' y='" + fmt(y - 6) +
               "' text-anchor='end' fill='#666'>break-even</text>";
    }
    for (size_t k = 0; k < series.size(); ++k) {
        const std::string color = series_color(k + color_offset);
        std::string pts;
        auto px = [&](double x) { return L + pw * x / xmax; };
        auto py = [&](double y) { return T + ph - ph * y / ymax; };
        for (auto& [x, y] : series[k].pts) pts += fmt(px(x)) + "," + fmt(py(y)) + " ";
        svg += "<polyline class='series' data-series='" + esc(series[k].name) + "' data-color='" + color +
               "' fill='none' stroke='" + color + "' stroke-width='4' stroke-linejoin='round' points='" + pts + "'/>";
        for (auto& [x, y] : series[k].pts)
            svg += "<circle cx='" + fmt(px(x)) + "' cy='" + fmt(py(y)) + "' r='6' fill='" + color + "'><title>" +
                   esc(series[k].name) + ": " + esc(axes.tip(x, y)) + "</title></circle>";
    }
    svg += "</svg>";
    std::string legend = "<ul class='legend'>";
    for (size_t k = 0; k < series.size(); ++k)
        legend += "<li><span class='sw' style='background:" + std::string(series_color(k + color_offset)) +
                  "'></span>" + esc(series[k].name) + "</li>";
    legend += "</ul>";
    return "<figure>" + svg + legend + "</figure>";
}

std::string depth_tip(double x, double y) {
    return fmt(y) + " t/s at depth " + fmt(x, 0);
}
std::string speedup_tip(double x, double y) {
    return fmt(y) + "x at " + fmt(x, 1) + "% acceptance";
}
std::string throughput_tip(double x, double y) {
    return fmt(y) + " t/s with " + fmt(x, 0) + " concurrent";
}
std::string latency_tip(double x, double y) {
    return fmt(y, 1) + " ms with " + fmt(x, 0) + " concurrent";
}

// A loadtest record's server and workload, e.g. "bigmoe · chat 30 in / 1000 out".
std::string load_series(const Json& r) {
    return r.value("label", r.value("url", std::string("server"))) + " · " + r.value("workload", std::string("?")) +
           " " + std::to_string(r.value("in_tokens", 0)) + " in / " + std::to_string(r.value("out_tokens", 0)) + " out";
}

// The serving section: throughput and latency percentiles against concurrency, per server and
// workload, and the table of every run.
std::string loadtest_section(const std::vector<Json>& runs, size_t color_offset) {
    std::map<std::string, Series> tput, ttft, itl;
    for (const Json& r : runs) {
        const std::string k = load_series(r);
        const double c = r.value("concurrency", 0);
        for (auto* m : {&tput, &ttft, &itl}) (*m)[k].name = k;
        tput[k].pts.emplace_back(c, r.value("output_tokens_per_s", 0.0));
        ttft[k].pts.emplace_back(c, r["ttft_ms"].value("p50", 0.0));
        itl[k].pts.emplace_back(c, r.value("itl_ms", Json::object()).value("p50", 0.0));
    }
    auto lines = [](std::map<std::string, Series>& m) {
        std::vector<Series> v;
        for (auto& [k, s] : m) {
            std::sort(s.pts.begin(), s.pts.end());
            if (s.pts.size() > 1) v.push_back(s);
        }
        return v;
    };
    std::string h = "<h2>Serving</h2>";
    const auto t = lines(tput), f = lines(ttft), i = lines(itl);
    if (!t.empty()) {
        h += line_chart("Output throughput against concurrency", "throughput", t, color_offset, k_throughput_axes);
        h += line_chart("Time to first token (p50) against concurrency", "ttft", f, color_offset, k_latency_axes);
        h += line_chart("Inter-token latency (p50) against concurrency", "itl", i, color_offset, k_latency_axes);
    }
    h += "<table><thead><tr><th>server · workload</th><th>conc.</th><th>requests</th><th>TTFT p50 / p90 / p99 "
         "ms</th><th>ITL p50 / p90 / p99 ms</th><th>E2E p50 / p90 / p99 ms</th><th>output t/s</th><th>req/s</th>"
         "</tr></thead><tbody>";
    auto pct = [](const Json& p) {
        return fmt(p.value("p50", 0.0), 1) + " / " + fmt(p.value("p90", 0.0), 1) + " / " + fmt(p.value("p99", 0.0), 1);
    };
    for (const Json& r : runs) {
        const int failed = r.value("failed", 0);
        h += "<tr><td>" + esc(load_series(r)) + "</td><td class='n'>" + std::to_string(r.value("concurrency", 0)) +
             "</td><td class='n'>" + std::to_string(r.value("requests", 0)) +
             (failed ? " (" + std::to_string(failed) + " failed)" : "") + "</td><td class='n'>" + pct(r["ttft_ms"]) +
             "</td><td class='n'>" + pct(r.value("itl_ms", Json::object())) + "</td><td class='n'>" +
             pct(r.value("e2e_ms", Json::object())) + "</td><td class='n'>" + fmt(r.value("output_tokens_per_s", 0.0)) +
             "</td><td class='n'>" + fmt(r.value("requests_per_s", 0.0), 3) + "</td></tr>";
    }
    return h + "</tbody></table>";
}

bool speculative(const Json& r) {
    return r.contains("bigmoe_draft_model");
}

std::string basename(const std::string& p) {
    const size_t s = p.find_last_of('/');
    return s == std::string::npos ? p : p.substr(s + 1);
}

// A speculative record's settings, e.g. "draft_max adaptive <= 8, guard".
std::string draft_settings(const Json& r) {
    std::string d = "draft_max " + std::string(r.value("bigmoe_spec_adaptive", false) ? "adaptive <= " : "") +
                    std::to_string(r.value("bigmoe_spec_draft_max", 0));
    if (r.value("bigmoe_spec_p_min", 0.0) > 0) d += ", p_min " + fmt(r.value("bigmoe_spec_p_min", 0.0));
    if (r.value("bigmoe_spec_guard", false)) d += ", guard";
    return d;
}

// A speculative record's draft and settings, e.g. "draft d.gguf, draft_max 3".
std::string draft_of(const Json& r) {
    return "draft " + basename(r.value("bigmoe_draft_model", std::string())) + ", " + draft_settings(r);
}

std::string test_name(const Json& r) {
    const int64_t p = r.value("n_prompt", 0), g = r.value("n_gen", 0), d = r.value("n_depth", 0);
    std::string t = g == 0   ? "pp" + std::to_string(p)
                    : p == 0 ? "tg" + std::to_string(g)
                             : "pp" + std::to_string(p) + "+tg" + std::to_string(g);
    if (d > 0) t += " @ d" + std::to_string(d);
    return t;
}

const char* op_color(const std::string& op) {
    static const std::map<std::string, const char*> c = {
        {"expert matmul", "#1f77b4"},  {"dense matmul", "#ff7f0e"},           {"attention", "#2ca02c"},
        {"gated deltanet", "#d62728"}, {"norms/rope/elementwise", "#9467bd"}, {"other", "#aaaaaa"}};
    auto it = c.find(op);
    return it == c.end() ? "#555555" : it->second;
}

}  // namespace

const char* series_color(size_t k) {
    return k_palette[k % (sizeof k_palette / sizeof k_palette[0])];
}

Result<std::string> render_html(const std::vector<std::string>& paths) {
    std::vector<Json> recs;
    for (const auto& p : paths) {
        auto r = load(p);
        if (!r) return r.error();
        // which file a record came from: the same configuration in two files is two lines
        const std::string base = p.substr(p.find_last_of('/') == std::string::npos ? 0 : p.find_last_of('/') + 1);
        for (auto& rec : *r) rec["_file"] = base;
        recs.insert(recs.end(), r->begin(), r->end());
    }
    const bool several = paths.size() > 1;
    auto source = [&](const Json& r) { return several ? " · " + r["_file"].get<std::string>() : std::string(); };
    if (recs.empty()) return make_error("report: no bench or loadtest records in the input files");
    std::vector<Json> runs;  // loadtest records, apart
    for (auto it = recs.begin(); it != recs.end();)
        if (loadtest_record(*it)) {
            runs.push_back(std::move(*it));
            it = recs.erase(it);
        } else {
            ++it;
        }
    std::map<std::string, Series> pp, tg, spec;
    // speculative points: one per (series, target, draft), averaged over repeated runs
    struct Mean {
        double x = 0, y = 0;
        int n = 0;
    };
    std::map<std::string, std::map<std::string, Mean>> spec_pts;
    for (const auto& r : recs) {
        const int64_t p = r.value("n_prompt", 0), g = r.value("n_gen", 0);
        if (speculative(r)) {
            // speed-up vs acceptance, one series per configuration and draft length
            if (!r.contains("bigmoe_spec_speedup")) continue;
            Mean& a =
                spec_pts[config_of(r) + " · " + draft_settings(r) + source(r)]
                        [r.value("model_filename", std::string()) + "|" + r.value("bigmoe_draft_model", std::string())];
            a.x += 100.0 * r.value("bigmoe_spec_acceptance", 0.0);
            a.y += r["bigmoe_spec_speedup"].get<double>();
            a.n += 1;
            continue;
        }
        if ((p > 0) == (g > 0)) continue;
        auto& m = g == 0 ? pp : tg;
        const std::string key =
            config_of(r) + (g == 0 ? " · pp" + std::to_string(p) : " · tg" + std::to_string(g)) + source(r);
        m[key].name = key;
        m[key].pts.emplace_back(double(r.value("n_depth", 0)), r["avg_ts"].get<double>());
    }
    for (auto& [key, pairs] : spec_pts) {
        spec[key].name = key;
        for (auto& [pair, a] : pairs) spec[key].pts.emplace_back(a.x / a.n, a.y / a.n);
    }
    // a depth chart needs a series with more than one depth
    auto has_depths = [](const std::map<std::string, Series>& m) {
        for (const auto& [k, s] : m) {
            std::set<double> xs;
            for (const auto& [x, y] : s.pts) xs.insert(x);
            if (xs.size() > 1) return true;
        }
        return false;
    };
    // series with one point are left to the table (a line needs two)
    auto sorted = [](std::map<std::string, Series>& m) {
        std::vector<Series> v;
        for (auto& [k, s] : m) {
            std::sort(s.pts.begin(), s.pts.end());
            if (s.pts.size() > 1) v.push_back(s);
        }
        return v;
    };
    const auto pps = sorted(pp), tgs = sorted(tg), specs = sorted(spec);
    std::string html =
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>bigmoe benchmark report</title>"
        "<style>body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:960px;color:#222;padding:0 1em}"
        "h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}"
        "figure{margin:1em 0}svg.chart{width:100%;height:auto;font-size:12px}.ct{font-size:15px;font-weight:600}"
        "ul.legend{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.3em 1.2em;font-size:13px}"
        ".sw{display:inline-block;width:14px;height:14px;margin-right:6px;vertical-align:-2px;border-radius:2px}"
        "table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #e4e4e4;padding:4px "
        "8px}"
        "td.n{text-align:right;font-variant-numeric:tabular-nums}.bar{display:flex;height:22px;border-radius:3px;"
        "overflow:hidden}"
        ".bar span{display:block;height:100%}.prof td{vertical-align:middle}td.shares,td.src{font-size:12px;color:#555}"
        "@media print{body{max-width:none;margin:0}h2{break-after:avoid}figure,table{break-inside:avoid}}"
        "</style></head><body><h1>bigmoe benchmark report</h1><p>" +
        std::to_string(recs.size() + runs.size()) + " results from " + std::to_string(paths.size()) + " file(s).</p>";
    if (!pps.empty() && has_depths(pp))
        html += "<h2>Prompt processing</h2>" + line_chart("Prefill speed vs context depth", "prefill", pps, 0);
    if (!tgs.empty() && has_depths(tg))
        html += "<h2>Generation</h2>" + line_chart("Decode speed vs context depth", "decode", tgs, pps.size());
    if (!specs.empty())
        html += "<h2>Speculative decoding</h2>" +
                line_chart("Decode speed-up vs draft acceptance", "speculative", specs, pps.size() + tgs.size(),
                           k_speedup_axes) +
                "<p>Each point is one target/draft pair and draft length, measured against the same test without "
                "a draft in the same run; the acceptance rate is the share of drafted tokens the target kept.</p>";
    if (!runs.empty()) html += loadtest_section(runs, pps.size() + tgs.size() + specs.size());
    if (recs.empty()) return html + "</body></html>\n";
    html +=
        "<h2>Results</h2><table><thead><tr><th>configuration</th><th>test</th><th>t/s</th><th>GB/s</th><th>% bw</th>"
        "<th>TFLOP/s</th><th>build, CPU, date</th></tr></thead><tbody>";
    for (const auto& r : recs) {
        const double gb = r.value("bigmoe_gbps", 0.0), bw = r.value("bigmoe_bw_pct", 0.0),
                     tf = r.value("bigmoe_tflops", 0.0);
        std::string test = test_name(r);
        if (speculative(r)) {
            test += " · " + draft_of(r) + " · " + fmt(100.0 * r.value("bigmoe_spec_acceptance", 0.0), 1) + "% accepted";
            if (r.contains("bigmoe_spec_speedup")) test += " · " + fmt(r["bigmoe_spec_speedup"].get<double>()) + "x";
        }
        html += "<tr><td>" + esc(config_of(r)) + "</td><td>" + esc(test) + "</td><td class='n'>" +
                fmt(r["avg_ts"].get<double>()) + " ± " + fmt(r.value("stddev_ts", 0.0)) + "</td><td class='n'>" +
                (gb > 0 ? fmt(gb) : "") + "</td><td class='n'>" + (bw > 0 ? fmt(bw, 1) : "") + "</td><td class='n'>" +
                (tf > 0 ? fmt(tf, 3) : "") + "</td><td class='src'>" +
                esc(r.value("build_commit", std::string("?")) + " · " + r.value("cpu_info", std::string("?")) + " · " +
                    r.value("test_time", std::string("?")) + source(r)) +
                "</td></tr>";
    }
    html += "</tbody></table>";
    bool any_prof = false;
    std::string prof = "<h2>Where the time goes</h2><table class='prof'><tbody>";
    std::map<std::string, bool> ops_seen;
    for (const auto& r : recs) {
        if (!r.contains("bigmoe_profile")) continue;
        any_prof = true;
        prof += "<tr><td>" + esc(config_of(r)) + " · " + esc(test_name(r)) + esc(source(r)) +
                "</td><td style='width:55%'><div class='bar'>";
        std::string shares;  // the shares as text too: the bar's tooltips are not on a printed page
        for (const auto& op : r["bigmoe_profile"]["ops"]) {
            const std::string name = op["op"];
            const double share = op["share"].get<double>();
            ops_seen[name] = true;
            prof += "<span style='width:" + fmt(100.0 * share, 3) + "%;background:" + op_color(name) + "' title='" +
                    esc(name) + " " + fmt(100.0 * share, 1) + "%'></span>";
            if (share >= 0.005) shares += (shares.empty() ? "" : " · ") + name + " " + fmt(100.0 * share, 1) + "%";
        }
        prof += "</div></td><td class='shares'>" + esc(shares) + "</td></tr>";
    }
    prof += "</tbody></table><ul class='legend'>";
    for (auto& [name, v] : ops_seen)
        prof +=
            "<li><span class='sw' style='background:" + std::string(op_color(name)) + "'></span>" + esc(name) + "</li>";
    prof += "</ul>";
    if (any_prof) html += prof;
    html += "</body></html>\n";
    return html;
}

}  // namespace bigmoe::report
