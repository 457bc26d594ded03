// The benchmark runner behind `bigmoe bench`: loads each model at each thread count and weight
// layout, prepares every context configuration (the depth built once and restored from a
// checkpoint before each repetition), runs an uncounted warm-up, then the repetitions with the
// configurations of a test taking turns, and hands finished records over in order.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench.h"
#include "core/result.h"
#include "quant/dtype.h"

namespace bigmoe::bench {

struct Test {
    int64_t n_prompt = 0, n_gen = 0;
};

// A speculative configuration of generation tests; an empty draft is plain decoding.
struct SpecConfig {
    std::string draft;
    int64_t draft_max = 0;
    double p_min = 0;
    bool adaptive = false;
    bool guard = false;
};

// The context parameters of one row of the matrix (-b x -ub x -ctk x -ctv x -d).
struct ContextConfig {
    int64_t n_batch = 2048, n_ubatch = 512, depth = 0;
    DType type_k = DType::F16, type_v = DType::F16;
};

struct Plan {
    std::vector<std::string> models;
    std::vector<int64_t> threads;
    std::vector<bool> no_repack;
    std::vector<int64_t> gpu_layers = {0};  // -ngl: 0 the CPU, the layer count (or 99) the GPU
    std::vector<int64_t> cpu_moe = {0};     // --n-cpu-moe (LoadOptions::n_cpu_moe)
    std::vector<ContextConfig> configs;
    std::vector<Test> tests;
    std::vector<SpecConfig> specs;  // at least one (plain: {})
    // -npl: sequences decoded side by side, each with its own prompt and generation, one batch a
    // step (llama-batched-bench's parallel sequences); 1 is the single-sequence test.
    std::vector<int64_t> parallel = {1};
    int64_t reps = 5;
    int64_t draft_min = 0;
    int64_t draft_threads = 0;      // 0: as the target
    int64_t draft_gpu_layers = -2;  // -ngld; -2: the GPU's whole draft when the row's -ngl uses the GPU
    bool profile = false;
    bool warmup = true;       // an uncounted repetition before each configuration's first
    double delay_s = 0;       // pause before each test (lets a laptop cool down, as llama-bench's --delay)
    double machine_gbps = 0;  // 0: unknown
};

struct Events {
    std::function<void(Record)> record;                     // each finished record, in order
    std::function<void(const std::string&)> progress;       // a status line; "" clears it (may be empty)
    std::function<void(const std::string& table)> profile;  // a configuration's profile (with --profile)
};

// Checks that every model (and draft) opens before the first test, so a bad path never ends a
// run halfway through its output.
Result<void> check_models(const Plan& plan);
Result<void> run(const Plan& plan, const Events& ev);

}  // namespace bigmoe::bench
