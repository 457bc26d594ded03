// `bigmoe loadtest`: the workloads people time against an OpenAI-compatible server (chat: 30
// tokens in, 1000 out; code: 2K in, 2K out; summarize: 8K in, 256 out; mixed), sent with a fixed
// concurrency, streamed, and measured per request: time to first token, the gaps between tokens,
// end-to-end latency; then percentiles and throughput. Two conversation workloads time what a
// prompt cache saves: multiturn (a chat growing turn by turn) and agent (each turn appends a
// tool's result); each "request" is then a conversation of several turns, and the report adds
// the share of prompt tokens the server reported cached and the time to first token per turn.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/result.h"

namespace bigmoe::server {

struct Workload {
    std::string name;
    int64_t in_tokens = 0, out_tokens = 0;
};
// chat, code, summarize; false if the name is unknown ("mixed" is handled by the runner).
bool workload_by_name(const std::string& name, Workload* out);

struct LoadtestOptions {
    std::string url = "http://127.0.0.1:8080";
    std::string workload = "chat";  // chat, code, summarize or mixed
    int concurrency = 1;
    int requests = 8;
    int64_t in_tokens = 0, out_tokens = 0;  // > 0: override the workload's lengths
    int turns = 6;                          // per conversation (multiturn, agent)
    std::string api_key;
    std::string label;  // names the server in records (default: the URL)
    uint64_t seed = 1;
};

struct Percentiles {
    double p50 = 0, p90 = 0, p99 = 0, mean = 0;
};

struct LoadtestReport {
    std::string label, url, workload;
    int concurrency = 0, requests = 0, failed = 0;
    int64_t in_tokens = 0, out_tokens = 0;  // per request, as built
    Percentiles ttft_ms, itl_ms, e2e_ms;
    // conversation workloads: cached / prompt tokens over all turns, and mean TTFT by turn
    double cache_hit_rate = -1;
    std::vector<double> turn_ttft_ms;
    double output_tokens_per_s = 0, requests_per_s = 0, wall_s = 0;
    std::vector<std::string> errors;  // the first few
};

// progress(done, total) after each request.
Result<LoadtestReport> run_loadtest(const LoadtestOptions& o, const std::function<void(int, int)>& progress);

std::string loadtest_markdown(const std::vector<LoadtestReport>& rs);
std::string loadtest_json(const LoadtestReport& r);

}  // namespace bigmoe::server
