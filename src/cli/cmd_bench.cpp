// `bigmoe bench`: llama-bench-compatible benchmark (pp = prompt processing, tg = generation).
// Each test runs a warm-up that is not counted; depth (-d) is built once per configuration and
// restored from a checkpoint before every repetition.
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "bench/stats.h"
#include "bigmoe/bigmoe.h"
#include "cli/args.h"
#include "cli/commands.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    {"-m", "--model", true, "model file (repeatable)"},
    {"-p", "--n-prompt", true, "prompt lengths (default 512)"},
    {"-n", "--n-gen", true, "generation lengths (default 128)"},
    {"-d", "--n-depth", true, "context depth before each test (default 0)"},
    {"-r", "--repetitions", true, "repetitions (default 5)"},
    {"-t", "--threads", true, "threads (default: all cores)"},
    {"-ub", "--ubatch-size", true, "micro-batch size (default 512)"},
    {"-ctk", "--cache-type-k", true, "K cache type (default f16)"},
    {"-ctv", "--cache-type-v", true, "V cache type (default f16)"},
    {"-o", "--output", true, "md (default) or jsonl"},
    {"-h", "--help", false, "show this help"},
};

using Clock = std::chrono::steady_clock;

struct Result1 {
    std::string test;
    std::vector<double> ts;  // t/s per repetition
    double gbps = 0;         // decode: bytes read per token / time
};
}  // namespace

Result<DType> parse_cache_type(const std::string& s, const char* which);

int cmd_bench(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf("usage: bigmoe bench -m FILE [options]\n\n%s", format_help(k_specs).c_str());
        return 0;
    }
    if (!args->has("--model")) return fail("bench: -m/--model is required");
    auto pp = parse_int_list(args->get("--n-prompt", "512"), "-p");
    auto tg = parse_int_list(args->get("--n-gen", "128"), "-n");
    auto depth = parse_int_list(args->get("--n-depth", "0"), "-d");
    auto th = parse_int_list(args->get("--threads", std::to_string(std::thread::hardware_concurrency())), "-t");
    auto reps = args->get_int("--repetitions", 5, 1, 1000);
    auto ub = args->get_int("--ubatch-size", 512, 1, 1 << 16);
    auto ctk = parse_cache_type(args->get("--cache-type-k", "f16"), "-ctk");
    auto ctv = parse_cache_type(args->get("--cache-type-v", "f16"), "-ctv");
    for (auto* r : {&pp, &tg, &depth, &th})
        if (!*r) return fail(r->error().message);
    if (!reps) return fail(reps.error().message);
    if (!ub) return fail(ub.error().message);
    if (!ctk) return fail(ctk.error().message);
    if (!ctv) return fail(ctv.error().message);
    const bool jsonl = args->get("--output", "md") == "jsonl";

    if (!jsonl) {
        std::printf("| model | size | params | backend | threads | test | t/s | GB/s |\n");
        std::printf("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |\n");
    }
    for (const auto& path : args->get_all("--model")) {
        for (int64_t threads : *th) {
            auto engine = Engine::load(path, {.n_threads = int(threads)});
            if (!engine) return fail(engine.error().message);
            Model& model = (*engine)->model();
            const int64_t V = model.hparams().n_vocab;
            for (int64_t d : *depth) {
                int64_t max_len = 0;
                for (int64_t p : *pp) max_len = std::max(max_len, p);
                for (int64_t n : *tg) max_len = std::max(max_len, n);
                ContextParams cp;
                cp.n_ctx = d + max_len + 1;
                cp.n_ubatch = *ub;
                cp.type_k = *ctk;
                cp.type_v = *ctv;
                auto ctx = (*engine)->new_context(cp);
                if (!ctx) return fail(ctx.error().message);
                std::mt19937 rng(42);
                auto random_tokens = [&](int64_t n) {
                    std::vector<int32_t> t(static_cast<size_t>(n));
                    for (auto& x : t) x = int32_t(rng() % uint32_t(V));
                    return t;
                };
                std::vector<float> logits;
                if (d > 0) {
                    auto r = (*ctx)->decode_seq(0, random_tokens(d), false, &logits);
                    if (!r) return fail(r.error().message);
                }
                auto base = (*ctx)->checkpoint(0);
                if (!base) return fail(base.error().message);
                std::vector<Result1> results;
                for (int64_t p : *pp) {
                    if (p <= 0) continue;
                    Result1 res{"pp" + std::to_string(p), {}};
                    for (int64_t rep = -1; rep < *reps; ++rep) {  // rep -1: warm-up
                        (void)(*ctx)->restore(0, **base);
                        const auto toks = random_tokens(p);
                        const auto t0 = Clock::now();
                        auto r = (*ctx)->decode_seq(0, toks, false, &logits);
                        if (!r) return fail(r.error().message);
                        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
                        if (rep >= 0) res.ts.push_back(double(p) / s);
                    }
                    results.push_back(res);
                }
                for (int64_t n : *tg) {
                    if (n <= 0) continue;
                    Result1 res{"tg" + std::to_string(n), {}};
                    double total_s = 0;
                    for (int64_t rep = -1; rep < *reps; ++rep) {
                        (void)(*ctx)->restore(0, **base);
                        int32_t tok = int32_t(rng() % uint32_t(V));
                        const auto t0 = Clock::now();
                        for (int64_t i = 0; i < n; ++i) {
                            auto r = (*ctx)->decode_seq(0, {tok}, false, &logits);
                            if (!r) return fail(r.error().message);
                            tok = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
                        }
                        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
                        if (rep >= 0) {
                            res.ts.push_back(double(n) / s);
                            total_s += s;
                        }
                    }
                    // bytes per token: active weights + the KV cache read at the mean depth
                    const double kv = double((*ctx)->kv_bytes_per_token()) * (double(d) + double(n) / 2);
                    const double per_tok = double(model.active_weight_bytes()) + kv;
                    res.gbps = per_tok * double(n) * double(*reps) / total_s / 1e9;
                    results.push_back(res);
                }
                for (auto& r : results) {
                    const std::string test = d > 0 ? r.test + " @ d" + std::to_string(d) : r.test;
                    if (jsonl) {
                        std::printf(
                            "{\"model_filename\": \"%s\", \"n_threads\": %lld, \"test\": \"%s\", \"n_depth\": %lld, "
                            "\"avg_ts\": %.4f, \"stddev_ts\": %.4f, \"gbps\": %.3f}\n",
                            path.c_str(), (long long)threads, test.c_str(), (long long)d, bench::mean(r.ts),
                            bench::stddev(r.ts), r.gbps);
                    } else {
                        std::printf("| %s | %.2f GiB | %.2f B | CPU | %lld | %s | %.2f ± %.2f | %s |\n",
                                    model.hparams().arch.c_str(), double(model.total_weight_bytes()) / (1 << 30),
                                    double(model.n_params()) / 1e9, (long long)threads, test.c_str(), bench::mean(r.ts),
                                    bench::stddev(r.ts), r.gbps > 0 ? std::to_string(r.gbps).substr(0, 5).c_str() : "");
                    }
                    std::fflush(stdout);
                }
            }
        }
    }
    return 0;
}

}  // namespace bigmoe::cli
