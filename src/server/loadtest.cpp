#include "server/loadtest.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/stats.h"

namespace bigmoe::server {

namespace {
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

const Workload k_workloads[] = {
    {"chat", 30, 1000}, {"code", 2048, 2048}, {"summarize", 8192, 256}, {"multiturn", 1024, 64}, {"agent", 1024, 64}};

bool conversational(const std::string& w) {
    return w == "multiturn" || w == "agent";
}

Percentiles percentiles(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return {quantile_sorted(v, 0.5), quantile_sorted(v, 0.9), quantile_sorted(v, 0.99), mean(v)};
}

httplib::Headers auth(const LoadtestOptions& o) {
    if (o.api_key.empty()) return {};
    return {{"Authorization", "Bearer " + o.api_key}};
}

// A text of about n tokens of the server's tokenizer: varied words, tokenized by the server, cut
// to n tokens and turned back into text. Each request's text differs from its first words on, so
// a server's prompt cache finds nothing to reuse (these workloads time whole prompts).
Result<std::string> prompt_of(httplib::Client& c, const LoadtestOptions& o, int64_t n, int variant) {
    static const char* words[] = {"river",  "stone",  "light",  "garden", "window", "morning", "silver", "paper",
                                  "forest", "engine", "summer", "bridge", "letter", "market",  "winter", "castle"};
    std::string text = "Document " + std::to_string(variant) + ". Read this and continue:";
    for (int64_t i = 0; i < n * 2 + 8; ++i) text += std::string(" ") + words[(i * 7 + i / 16 + variant * 5) % 16];
    auto r = c.Post("/tokenize", auth(o), Json{{"content", text}}.dump(), "application/json");
    if (!r || r->status != 200)
        return make_error("loadtest: " + o.url + "/tokenize failed" + (r ? ": " + r->body : ""));
    Json toks = Json::parse(r->body)["tokens"];
    if (int64_t(toks.size()) > n) toks.erase(toks.begin() + n, toks.end());
    auto d = c.Post("/detokenize", auth(o), Json{{"tokens", toks}}.dump(), "application/json");
    if (!d || d->status != 200) return make_error("loadtest: " + o.url + "/detokenize failed");
    return Json::parse(d->body)["content"].get<std::string>();
}

struct Sample {
    bool ok = false;
    std::string error;
    double ttft_ms = 0, e2e_ms = 0;
    std::vector<double> gaps_ms;
    int64_t out_tokens = 0, in_tokens = 0, cached = 0;
    std::string text;  // what came back
    int turn = 0;
};

Sample one_request(const LoadtestOptions& o, const std::string& prompt, int64_t out, uint64_t seed) {
    Sample s;
    httplib::Client c(o.url);
    c.set_read_timeout(3600, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.headers = auth(o);
    req.set_header("Content-Type", "application/json");
    req.body = Json{{"prompt", prompt},
                    {"max_tokens", out},
                    {"ignore_eos", true},
                    {"temperature", 0.8},
                    {"seed", seed},
                    {"stream", true},
                    {"stream_options", {{"include_usage", true}}}}
                   .dump();
    std::string buf;
    const auto t0 = Clock::now();
    Clock::time_point last;
    bool first = true, finished = false;
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
        buf.append(d, n);
        size_t e;
        while ((e = buf.find("\n\n")) != std::string::npos) {
            const std::string ev = buf.substr(0, e);
            buf.erase(0, e + 2);
            if (ev.rfind("data: ", 0) != 0 || ev == "data: [DONE]") continue;
            const Json j = Json::parse(ev.substr(6), nullptr, false);
            if (!j.is_object()) {
                s.error = "a stream event that is not a JSON object: " + ev.substr(0, 200);
                return false;
            }
            if (j.contains("error")) {  // a server that fails mid-stream: the request failed
                const Json& e = j["error"];
                s.error = "an error mid-stream: " + (e.is_object() && e.contains("message") && e["message"].is_string()
                                                         ? e["message"].get<std::string>()
                                                         : e.dump());
                return false;
            }
            if (j.contains("usage") && j["usage"].is_object()) {
                s.out_tokens = j["usage"].value("completion_tokens", 0);
                s.in_tokens = j["usage"].value("prompt_tokens", 0);
                const Json& d = j["usage"].value("prompt_tokens_details", Json::object());
                if (d.is_object()) s.cached = d.value("cached_tokens", 0);
            }
            if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].empty()) continue;
            const Json& choice = j["choices"][0];
            if (choice.contains("finish_reason") && choice["finish_reason"].is_string()) finished = true;
            if (!choice.contains("text") || !choice["text"].is_string() ||
                choice["text"].get_ref<const std::string&>().empty())
                continue;
            s.text += choice["text"].get<std::string>();
            const auto now = Clock::now();
            if (first)
                s.ttft_ms = std::chrono::duration<double, std::milli>(now - t0).count();
            else
                s.gaps_ms.push_back(std::chrono::duration<double, std::milli>(now - last).count());
            first = false;
            last = now;
        }
        return true;
    };
    httplib::Response res;
    httplib::Error err;
    const bool sent = c.send(req, res, err);
    if (!s.error.empty()) return s;
    if (!sent) {
        s.error = "connection failed: " + httplib::to_string(err);
        return s;
    }
    if (res.status != 200) {
        s.error = "HTTP " + std::to_string(res.status) + " " + (res.body.empty() ? buf : res.body).substr(0, 300);
        return s;
    }
    if (!finished) {
        s.error = "the stream ended without a finish reason";
        return s;
    }
    s.e2e_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    s.ok = true;
    return s;
}
}  // namespace

bool workload_by_name(const std::string& name, Workload* out) {
    for (const Workload& w : k_workloads)
        if (name == w.name) {
            *out = w;
            return true;
        }
    return false;
}

Result<LoadtestReport> run_loadtest(const LoadtestOptions& o, const std::function<void(int, int)>& progress) {
    std::vector<Workload> mix;
    if (o.workload == "mixed") {
        mix.assign(std::begin(k_workloads), std::begin(k_workloads) + 3);
    } else {
        Workload w;
        if (!workload_by_name(o.workload, &w))
            return make_error("loadtest: unknown workload '" + o.workload +
                              "' (chat, code, summarize, mixed, multiturn, agent)");
        mix.push_back(w);
    }
    for (Workload& w : mix) {
        if (o.in_tokens > 0) w.in_tokens = o.in_tokens;
        if (o.out_tokens > 0) w.out_tokens = o.out_tokens;
    }
    httplib::Client c(o.url);
    c.set_read_timeout(60, 0);
    auto health = c.Get("/health");
    if (!health) return make_error("loadtest: no server at " + o.url, ErrorKind::not_found);
    if (health->status != 200)
        return make_error("loadtest: " + o.url + "/health answers " + std::to_string(health->status));
    std::vector<std::string> prompts;  // one per request
    for (int i = 0; i < o.requests; ++i) {
        auto p = prompt_of(c, o, mix[size_t(i) % mix.size()].in_tokens, i);
        if (!p) return p.error();
        prompts.push_back(*p);
    }
    // conversations: each request's turns run one after another, each prompt the last one, its
    // answer and what the turn adds (a user's question, or a tool's result of ~in_tokens / 4)
    const bool conv = conversational(o.workload);
    const int turns = conv ? std::max(1, o.turns) : 1;
    std::vector<std::string> additions;
    if (conv)
        for (int i = 0; i < o.requests * turns; ++i) {
            if (o.workload == "agent") {
                auto p = prompt_of(c, o, std::max<int64_t>(mix[0].in_tokens / 4, 8), 1000 + i);
                if (!p) return p.error();
                additions.push_back("\n<tool_response>\n" + *p + "\n</tool_response>\n");
            } else {
                additions.push_back("\nUser: and what about question " + std::to_string(i) + "?\nAssistant:");
            }
        }
    std::vector<Sample> samples(size_t(o.requests * turns));
    std::atomic<int> next{0}, done{0};
    std::mutex progress_mu;
    const auto t0 = Clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < std::max(1, o.concurrency); ++t)
        workers.emplace_back([&] {
            for (int i; (i = next.fetch_add(1)) < o.requests;) {
                const size_t k = size_t(i) % mix.size();
                std::string prompt = prompts[size_t(i)];
                for (int t = 0; t < turns; ++t) {
                    const size_t at = size_t(i * turns + t);
                    Sample& s = samples[at];
                    s = one_request(o, prompt, mix[k].out_tokens, o.seed + uint64_t(at));
                    s.turn = t;
                    if (!s.ok) break;
                    if (conv) prompt += s.text + additions[at];
                }
                const int d = ++done;
                if (progress) {
                    std::lock_guard<std::mutex> lock(progress_mu);
                    progress(d, o.requests);
                }
            }
        });
    for (auto& w : workers) w.join();
    LoadtestReport r;
    r.workload = o.workload;
    r.label = o.label.empty() ? o.url : o.label;
    r.url = o.url;
    r.concurrency = o.concurrency;
    r.requests = o.requests;
    r.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
    std::vector<double> ttft, itl, e2e;
    int64_t out = 0, in = 0, prompt_all = 0, cached_all = 0;
    std::vector<double> turn_sum(size_t(turns), 0.0);
    std::vector<int> turn_n(size_t(turns), 0);
    for (const Sample& s : samples) {
        if (s.ok) {
            prompt_all += s.in_tokens;
            cached_all += s.cached;
            turn_sum[size_t(s.turn)] += s.ttft_ms;
            ++turn_n[size_t(s.turn)];
        }
        if (!s.ok) {
            ++r.failed;
            if (r.errors.size() < 3) r.errors.push_back(s.error);
            continue;
        }
        ttft.push_back(s.ttft_ms);
        e2e.push_back(s.e2e_ms);
        itl.insert(itl.end(), s.gaps_ms.begin(), s.gaps_ms.end());
        out += s.out_tokens;
        in = std::max(in, s.in_tokens);
    }
    if (conv) {
        r.cache_hit_rate = prompt_all > 0 ? double(cached_all) / double(prompt_all) : 0;
        for (int t = 0; t < turns; ++t)
            r.turn_ttft_ms.push_back(turn_n[size_t(t)] ? turn_sum[size_t(t)] / turn_n[size_t(t)] : 0);
        r.requests = o.requests * turns;
    }
    r.ttft_ms = percentiles(ttft);
    r.itl_ms = percentiles(itl);
    r.e2e_ms = percentiles(e2e);
    r.in_tokens = in;
    r.out_tokens = r.requests > r.failed ? out / (r.requests - r.failed) : 0;
    r.output_tokens_per_s = r.wall_s > 0 ? double(out) / r.wall_s : 0;
    r.requests_per_s = r.wall_s > 0 ? double(r.requests - r.failed) / r.wall_s : 0;
    return r;
}

std::string loadtest_markdown(const std::vector<LoadtestReport>& rs) {
    std::string s =
        "| workload | conc. | requests | failed | in/out tokens | TTFT p50/p90/p99 ms | ITL p50/p90/p99 ms | "
        "E2E p50/p90/p99 ms | output t/s | req/s |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
        "---: |\n";
    char b[512];
    for (const auto& r : rs) {
        std::snprintf(
            b, sizeof b,
            "| %s | %d | %d | %d | %lld/%lld | %.1f / %.1f / %.1f | %.1f / %.1f / %.1f | %.0f / %.0f / %.0f | "
            "%.1f | %.3f |\n",
            r.workload.c_str(), r.concurrency, r.requests, r.failed, (long long)r.in_tokens, (long long)r.out_tokens,
            r.ttft_ms.p50, r.ttft_ms.p90, r.ttft_ms.p99, r.itl_ms.p50, r.itl_ms.p90, r.itl_ms.p99, r.e2e_ms.p50,
            r.e2e_ms.p90, r.e2e_ms.p99, r.output_tokens_per_s, r.requests_per_s);
        s += b;
    }
    for (const auto& r : rs) {
        if (r.cache_hit_rate < 0) continue;
        std::snprintf(b, sizeof b,
                      "\n%s -c %d: prompt tokens cached %.1f%%; mean TTFT by turn (ms):", r.workload.c_str(),
                      r.concurrency, 100 * r.cache_hit_rate);
        s += b;
        for (double t : r.turn_ttft_ms) {
            std::snprintf(b, sizeof b, " %.1f", t);
            s += b;
        }
        s += "\n";
    }
    return s;
}

std::string loadtest_json(const LoadtestReport& r) {
    auto pj = [](const Percentiles& p) {
        return Json{{"p50", p.p50}, {"p90", p.p90}, {"p99", p.p99}, {"mean", p.mean}};
    };
    return Json{{"label", r.label},
                {"url", r.url},
                {"workload", r.workload},
                {"concurrency", r.concurrency},
                {"requests", r.requests},
                {"failed", r.failed},
                {"in_tokens", r.in_tokens},
                {"out_tokens", r.out_tokens},
                {"ttft_ms", pj(r.ttft_ms)},
                {"itl_ms", pj(r.itl_ms)},
                {"e2e_ms", pj(r.e2e_ms)},
                {"output_tokens_per_s", r.output_tokens_per_s},
                {"requests_per_s", r.requests_per_s},
                {"wall_s", r.wall_s},
                {"cache_hit_rate", r.cache_hit_rate},
                {"turn_ttft_ms", r.turn_ttft_ms},
                {"errors", r.errors}}
        .dump();
}

}  // namespace bigmoe::server
