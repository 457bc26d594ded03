// llama-bench-compatible benchmarking: parameter lists and ranges, the test matrix, and output
// as markdown / csv / json / jsonl with llama-bench's field names plus bigmoe's own.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/result.h"

namespace bigmoe::bench {

// "512", "512,2048", "512-4096*2" (multiply), "1-8+2" (add), or a mix of them.
Result<std::vector<int64_t>> parse_int_ranges(const std::string& s, const std::string& flag);

struct Record {
    // identity
    std::string build_commit, compiler, cpu_info, gpu_info, backend = "CPU", model_filename, model_type;
    uint64_t model_size = 0, model_n_params = 0;
    // parameters
    int64_t n_batch = 2048, n_ubatch = 512, n_threads = 0, n_gpu_layers = 0;
    int64_t n_cpu_moe = 0;  // layers whose routed experts run on the CPU beside GPU layers
    std::string type_k = "f16", type_v = "f16";
    bool no_repack = false;  // CPU: products on the file's row layout (llama-bench's no_repack)
    bool flash_attn = true;
    int64_t n_prompt = 0, n_gen = 0, n_depth = 0;
    int64_t n_parallel = 1;  // sequences side by side (-npl); t/s counts every sequence's tokens
    // results
    std::string test_time;
    std::vector<double> samples_ns;
    // bigmoe's own
    double bytes_per_token = 0;  // decode: weights + KV read per token
    double flops_per_token = 0;  // prefill: 2 x active params
    double machine_gbps = 0;     // measured read bandwidth, 0 = unknown
    std::string profile_json;    // --profile: the op breakdown (ProfiledBackend::json)
    std::string draft_model;     // -md: speculative decoding with this draft (generation tests)
    int64_t spec_draft_max = 0, spec_draft_min = 0;
    double spec_p_min = 0;
    bool spec_adaptive = false;  // draft length adapts up to spec_draft_max
    bool spec_guard = false;     // DraftGuard: plain steps while drafting measures slower
    double spec_acceptance = -1, spec_mean_accepted = 0;
    double spec_speedup = 0;  // t/s over the same test without a draft in the same run (0: none ran)

    std::vector<double> samples_ts() const;
    double avg_ts() const;
    double stddev_ts() const;
    double avg_ns() const;
    double stddev_ns() const;
    std::string test_name() const;  // pp512, tg128, pp512+tg128, "pp512 @ d8192", "tg128 x4"
    double gbps() const;            // decode only
    double tflops() const;          // prefill only
};

std::string to_json(const Record& r, bool pretty);
std::string csv_header();
std::string to_csv(const Record& r);
// Markdown table in llama-bench's layout; columns for parameters that differ from the defaults
// of any record are added (as llama-bench does), then bigmoe's GB/s, % of bandwidth and TFLOP/s.
std::string to_markdown(const std::vector<Record>& rs);
// Sets r.spec_speedup when r is speculative and the same test ran without a draft in `earlier`.
void link_speedup(Record& r, const std::vector<Record>& earlier);

}  // namespace bigmoe::bench
