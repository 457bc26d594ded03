// `bigmoe bench`: llama-bench-compatible benchmark (pp = prompt processing, tg = generation,
// pg = prompt then generation). Every numeric flag takes lists and ranges. Each test runs an
// uncounted warm-up; the context depth (-d) is built once per configuration and restored from a
// checkpoint before every repetition, so 131,072-token depths stay usable.
#include <unistd.h>

#include <cstdio>
#include <thread>

#include "bench/bench.h"
#include "bench/runner.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "core/memory.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    {"-m", "--model", "FILE", "model file (repeatable, or comma-separated)"},
    {"-p", "--n-prompt", "LIST", "prompt lengths (default 512)"},
    {"-n", "--n-gen", "LIST", "generation lengths (default 128)"},
    {"-pg", "--pg", "LIST", "prompt,generation pairs: -pg 512,128 (repeatable)"},
    {"-d", "--n-depth", "LIST", "context depth before each test (default 0)"},
    {"-r", "--repetitions", "N", "repetitions (default 5)"},
    {"-npl", "--n-parallel", "LIST",
     "sequences side by side, each with its own prompt and generation, one batch a step; t/s counts every "
     "sequence's tokens (llama-batched-bench's -npl; default 1)"},
    list_of(opt::threads),
    list_of(opt::batch_size),
    list_of(opt::ubatch_size),
    list_of(opt::cache_type_k),
    list_of(opt::cache_type_v),
    {"-ngl", "--n-gpu-layers", "LIST",
     "layers on the GPU: 0 (default) the CPU, 99 the whole model on CUDA, N between the last N"},
    {"-ncmoe", "--n-cpu-moe", "LIST", "with -ngl: the routed experts of the first N layers on the CPU (default 0)"},
    {"-fa", "--flash-attn", "LIST", "on, 1 or auto: bigmoe's attention is always fused (flash); 0 or off is refused"},
    {"-nr", "--no-repack", "LIST",
     "1: products on the file's row layout instead of packed weights (default 0; a list)"},
    {"-o", "--output", "FORMAT", "md (default), csv, json or jsonl"},
    {"", "--progress", "", "progress on stderr"},
    {"-v", "--verbose", "", "progress and notes on stderr"},
    {"-oe", "--output-err", "FORMAT", "a second format, printed on stderr (md, csv, json or jsonl)"},
    {"", "--no-warmup", "", "no uncounted repetition before each configuration"},
    {"", "--delay", "S", "seconds to wait before each test (default 0)"},
    {"-mmp", "--mmap", "LIST", "accepted: 1 (the default) and 0 both read the mapped file"},
    {"-embd", "--embeddings", "LIST", "0 (the default); 1 is refused (embeddings are not measured)"},
    {"-md", "--model-draft", "FILE",
     "draft models for greedy speculative decoding in generation tests; 'none' = without (the speed-up base)"},
    list_of(opt::draft_max),
    opt::draft_min,
    list_of(opt::draft_p_min),
    list_of(opt::draft_adaptive),
    list_of(opt::draft_guard),
    opt::threads_draft,
    opt::gpu_layers_draft,
    opt::profile,
    {"", "--bw", "GBPS|auto", "the machine's read bandwidth in GB/s, or auto to measure it (adds a % bw column)"},
    opt::help,
};

Result<std::vector<std::string>> list(const Args& a, const char* key, const std::string& def) {
    std::vector<std::string> out;
    for (std::string v : a.get_all(key)) {
        size_t p = 0;
        while (p <= v.size()) {
            size_t c = v.find(',', p);
            if (c == std::string::npos) c = v.size();
            if (c > p) out.push_back(v.substr(p, c - p));
            p = c + 1;
        }
    }
    if (out.empty()) out.push_back(def);
    return out;
}

Result<std::vector<int64_t>> ints(const Args& a, const char* key, const std::string& def, int64_t min) {
    std::vector<int64_t> out;
    auto vals = a.get_all(key);
    if (vals.empty()) vals.push_back(def);
    for (const auto& v : vals) {
        auto r = bench::parse_int_ranges(v, key);
        if (!r) return r.error();
        for (int64_t x : *r) {
            if (x < min)
                return make_error(std::string(key) + ": " + std::to_string(x) + " is below " + std::to_string(min));
            out.push_back(x);
        }
    }
    return out;
}

// Says before starting how much work a large matrix is: a range typed by mistake
// (-p 1-100000+1) would otherwise run for hours with no word.
void warn_if_long(const bench::Plan& p) {
    int64_t longest = 0, tokens = 0, n_tests = 0;
    for (const auto& t : p.tests) {
        longest = std::max(longest, t.n_prompt + t.n_gen);
        const int64_t rows = t.n_gen > 0 ? int64_t(p.specs.size()) : 1;
        tokens += (t.n_prompt + t.n_gen) * (p.reps + 1) * rows;
        n_tests += rows;
        for (int64_t np : p.parallel)
            if (np > 1) {
                tokens += np * (t.n_prompt + t.n_gen) * (p.reps + 1);
                n_tests += 1;
            }
    }
    int64_t per_layout = 0;
    for (const auto& c : p.configs) per_layout += c.depth + tokens;
    const int64_t runs = int64_t(p.models.size() * p.threads.size() * p.no_repack.size());
    const int64_t total = per_layout * runs;
    n_tests *= int64_t(p.configs.size()) * runs;
    // a few hundred tokens per second: prefill on a small CPU; decode is slower
    constexpr double k_tokens_per_s = 300;
    const double hours = double(total) / k_tokens_per_s / 3600;
    if (n_tests > 200 || hours > 0.5 || longest > 65536)
        std::fprintf(stderr,
                     "bench: %lld tests of %lld repetitions and a warm-up, %lld tokens to process in all (the longest "
                     "test %lld): at ~%.0f tokens/s that is roughly %.1f hours; Ctrl-C stops it\n",
                     (long long)n_tests, (long long)p.reps, (long long)total, (long long)longest, k_tokens_per_s,
                     hours);
}
}  // namespace

int cmd_bench(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf(
            "usage: bigmoe bench -m FILE [options]\n\n%s\n"
            "A LIST is values separated by commas (-p 128,512), ranges with a step (-p 128-1024+128: 128, "
            "256, ... 1024)\nor a factor (-p 128-4096*2: 128, 256, ... 4096), or a mix (-p 1,64-256*2); "
            "every combination of the lists\nis a row. -o md prints a table after the last test, csv and "
            "jsonl print each row as it finishes.\n",
            format_help(k_specs).c_str());
        return 0;
    }
    auto models = list(*args, "--model", "");
    if (!models || models->front().empty()) return fail("bench: -m/--model is required");
    auto pp = ints(*args, "--n-prompt", "512", 0);
    auto tg = ints(*args, "--n-gen", "128", 0);
    auto depth = ints(*args, "--n-depth", "0", 0);
    auto th = ints(*args, "--threads", "0", 0);
    auto nb = ints(*args, "--batch-size", "2048", 1);
    auto ub = ints(*args, "--ubatch-size", "512", 1);
    auto nrs = ints(*args, "--no-repack", "0", 0);
    auto ngls = ints(*args, "--n-gpu-layers", "0", 0);
    auto ncms = ints(*args, "--n-cpu-moe", "0", 0);
    auto npls = ints(*args, "--n-parallel", "1", 1);
    auto reps = args->get_int("--repetitions", 5, 1, 1000);
    Result<double> bw = 0.0;
    if (args->get("--bw") != "auto") bw = args->get_float("--bw", 0);
    for (auto* r : {&pp, &tg, &depth, &th, &nb, &ub, &nrs, &ngls, &ncms, &npls})
        if (!*r) return fail(r->error().message);
    for (int64_t v : *npls)
        if (v > 256) return fail("bench: --n-parallel takes 1 to 256 sequences, got " + std::to_string(v));
    for (int64_t v : *nrs)
        if (v > 1) return fail("bench: --no-repack takes 0 or 1");
    if (!reps) return fail(reps.error().message);
    if (!bw) return fail(bw.error().message);
    if (*bw < 0) return fail("bench: --bw must be positive (GB/s), or auto");
    auto fas = list(*args, "--flash-attn", "on");
    if (!fas) return fail(fas.error().message);
    const std::vector<std::string> fa_values = *fas;
    for (const auto& v : fa_values)
        if (v == "0" || v == "off")
            return fail("bench: -fa " + v +
                        ": bigmoe's attention is always fused (flash attention); there is no unfused path to measure");
        else if (v != "1" && v != "on" && v != "auto")
            return fail("bench: -fa takes on, off, auto, 1 or 0, got '" + v + "'");
    for (int64_t b : *nb)
        for (int64_t u : *ub)
            if (u > b)
                std::fprintf(stderr,
                             "warning: -ub %lld is larger than -b %lld: micro-batches hold at most %lld tokens\n",
                             (long long)u, (long long)b, (long long)b);
    auto ctks = list(*args, "--cache-type-k", "f16");
    auto ctvs = list(*args, "--cache-type-v", "f16");
    const std::string fmt = args->get("--output", "md"), fmt_err = args->get("--output-err", "");
    auto known = [](const std::string& f) { return f == "md" || f == "csv" || f == "json" || f == "jsonl"; };
    if (!known(fmt) || (!fmt_err.empty() && !known(fmt_err)))
        return fail("bench: -o and -oe take md, csv, json or jsonl, got '" + (known(fmt) ? fmt_err : fmt) + "'");
    for (const auto& v : args->get_all("--embeddings"))
        if (v != "0") return fail("bench: -embd " + v + ": embeddings are not measured (only -embd 0)");
    for (const auto& v : args->get_all("--mmap"))
        for (char c : v)
            if (c != '0' && c != '1' && c != ',') return fail("bench: -mmp takes 0 or 1, got '" + v + "'");
    auto delay = args->get_float("--delay", 0);
    if (!delay) return fail(delay.error().message);
    if (*delay < 0 || *delay > 3600) return fail("bench: --delay takes 0 to 3600 seconds");
    bench::Plan plan;
    std::vector<bench::Test>& tests = plan.tests;
    for (int64_t p : *pp)
        if (p > 0) tests.push_back({p, 0});
    for (int64_t n : *tg)
        if (n > 0) tests.push_back({0, n});
    for (const auto& v : args->get_all("--pg")) {
        auto r = parse_int_list(v, "-pg");
        if (!r || r->size() != 2 || (*r)[0] < 0 || (*r)[1] < 0) return fail("bench: -pg takes two values: -pg 512,128");
        tests.push_back({(*r)[0], (*r)[1]});
    }
    if (tests.empty()) return fail("bench: no tests (all of -p, -n are 0)");
    const bool progress = args->has("--progress") || args->has("--verbose") || (isatty(2) && fmt == "md");
    // speculative configurations: every draft x guard x adaptive x draft_max x p_min ("none": no draft)
    std::vector<bench::SpecConfig>& specs = plan.specs;
    auto drafts = list(*args, "--model-draft", "none");
    auto draft_maxes = ints(*args, "--draft-max", "8", 1);
    auto draft_min = args->get_int("--draft-min", 0, 0, 16);
    auto p_mins = list(*args, "--draft-p-min", "0");
    auto td = args->get_int("--threads-draft", 0, 0, 4096);
    auto ngld = args->get_int("--gpu-layers-draft", -2, -1, 1 << 20);
    auto adapts = ints(*args, "--draft-adaptive", "1", 0);
    auto guards = ints(*args, "--draft-guard", "1", 0);
    if (!adapts) return fail(adapts.error().message);
    if (!guards) return fail(guards.error().message);
    for (int64_t a : *adapts)
        if (a > 1) return fail("bench: --draft-adaptive takes 0 or 1");
    for (int64_t a : *guards)
        if (a > 1) return fail("bench: --draft-guard takes 0 or 1");
    if (!draft_maxes) return fail(draft_maxes.error().message);
    if (!draft_min) return fail(draft_min.error().message);
    if (!td) return fail(td.error().message);
    if (!ngld) return fail(ngld.error().message);
    for (int64_t x : *draft_maxes)
        if (x > 16) return fail("bench: --draft-max " + std::to_string(x) + " is above 16");
    for (const auto& dm : *drafts) {
        if (dm == "none") {
            specs.push_back({});
            continue;
        }
        for (int64_t gd : *guards)
            for (int64_t ad : *adapts)
                for (int64_t x : *draft_maxes)
                    for (const auto& ps : *p_mins) {
                        char* end = nullptr;
                        const double pm = std::strtod(ps.c_str(), &end);
                        if (end == ps.c_str() || *end || !(pm >= 0 && pm <= 1))
                            return fail("bench: --draft-p-min takes probabilities in [0, 1], got '" + ps + "'");
                        specs.push_back({dm, x, pm, ad == 1, gd == 1});
                    }
    }

    plan.models = *models;
    // every model opens before the first line of output
    if (auto r = bench::check_models(plan); !r) return fail(r.error().message);

    for (int64_t b : *nb)
        for (int64_t u : *ub)
            for (const auto& ctk_name : *ctks)
                for (const auto& ctv_name : *ctvs) {
                    auto ctk = parse_cache_type(ctk_name, "-ctk");
                    auto ctv = parse_cache_type(ctv_name, "-ctv");
                    if (!ctk) return fail(ctk.error().message);
                    if (!ctv) return fail(ctv.error().message);
                    for (int64_t d : *depth) plan.configs.push_back({b, u, d, *ctk, *ctv});
                }
    for (int64_t t : *th) plan.threads.push_back(resolve_threads(t));
    for (int64_t v : *nrs) plan.no_repack.push_back(v == 1);
    plan.gpu_layers = *ngls;
    plan.cpu_moe = *ncms;
    plan.reps = *reps;
    plan.parallel = *npls;
    plan.draft_min = *draft_min;
    plan.draft_threads = *td > 0 ? resolve_threads(*td) : 0;
    plan.draft_gpu_layers = *ngld;
    plan.profile = args->has("--profile");
    plan.warmup = !args->has("--no-warmup");
    plan.delay_s = *delay;
    plan.machine_gbps = *bw;
    if (args->get("--bw") == "auto") {
        plan.machine_gbps = measure_read_bandwidth(plan.threads.front());
        std::fprintf(stderr, "bench: read bandwidth %.1f GB/s (%d threads, 512 MiB)\n", plan.machine_gbps,
                     int(plan.threads.front()));
    }
    warn_if_long(plan);

    std::vector<bench::Record> all;
    // -o on stdout, -oe on stderr: csv and jsonl print each record as it finishes, json a document
    // closed at the end, md one table at the end
    struct Printer {
        std::FILE* f;
        std::string fmt;
        bool first = true;
        void begin() {
            if (fmt == "csv") std::fprintf(f, "%s\n", bench::csv_header().c_str());
            if (fmt == "json") std::fprintf(f, "[\n");
        }
        void record(const bench::Record& r) {
            if (fmt == "jsonl") std::fprintf(f, "%s\n", bench::to_json(r, false).c_str());
            if (fmt == "json") std::fprintf(f, "%s%s", first ? "" : ",\n", bench::to_json(r, true).c_str());
            if (fmt == "csv") std::fprintf(f, "%s\n", bench::to_csv(r).c_str());
            first = false;
            std::fflush(f);
        }
        void end(const std::vector<bench::Record>& all) {
            if (fmt == "json") std::fprintf(f, "\n]\n");
            if (fmt == "md") std::fprintf(f, "%s", bench::to_markdown(all).c_str());
        }
    };
    std::vector<Printer> printers = {{stdout, fmt}};
    if (!fmt_err.empty()) printers.push_back({stderr, fmt_err});
    for (auto& p : printers) p.begin();
    auto emit = [&](bench::Record r) {
        bench::link_speedup(r, all);
        for (auto& p : printers) p.record(r);
        all.push_back(r);
    };
    bench::Events ev;
    ev.record = emit;
    if (progress)
        ev.progress = [](const std::string& line) {
            if (line.empty())
                std::fprintf(stderr, "\r%*s\r", 80, "");
            else
                std::fprintf(stderr, "\rbench: %s   ", line.c_str());
        };
    ev.profile = [](const std::string& table) { std::fprintf(stderr, "\n%s\n", table.c_str()); };
    if (auto r = bench::run(plan, ev); !r) {
        for (auto& p : printers)  // the records so far stay a document
            if (p.fmt == "json") p.end(all);
        return fail(r.error().message);
    }
    for (auto& p : printers) p.end(all);
    return 0;
}

}  // namespace bigmoe::cli
