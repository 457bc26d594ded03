// `bigmoe bench`: llama-bench-compatible benchmark (pp = prompt processing, tg = generation,
// pg = prompt then generation). Every numeric flag takes lists and ranges. Each test runs an
// uncounted warm-up; the context depth (-d) is built once per configuration and restored from a
// checkpoint before every repetition, so 131,072-token depths stay usable.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "bench/bench.h"
#include "bigmoe/bigmoe.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "runtime/speculative.h"

namespace bigmoe::cli {

Result<DType> parse_cache_type(const std::string& s, const char* which);

namespace {
const std::vector<OptionSpec> k_specs = {
    {"-m", "--model", true, "model file (repeatable, or comma-separated)"},
    {"-p", "--n-prompt", true, "prompt lengths (default 512)"},
    {"-n", "--n-gen", true, "generation lengths (default 128)"},
    {"-pg", "--pg", true, "prompt,generation pairs: -pg 512,128 (repeatable)"},
    {"-d", "--n-depth", true, "context depth before each test (default 0)"},
    {"-r", "--repetitions", true, "repetitions (default 5)"},
    {"-t", "--threads", true, "threads (default: all cores)"},
    {"-b", "--batch-size", true, "logical batch size (default 2048)"},
    {"-ub", "--ubatch-size", true, "micro-batch size (default 512)"},
    {"-ctk", "--cache-type-k", true, "K cache types (default f16)"},
    {"-ctv", "--cache-type-v", true, "V cache types (default f16)"},
    {"-ngl", "--n-gpu-layers", true, "accepted for compatibility (the CPU backend ignores it)"},
    {"-fa", "--flash-attn", true, "accepted for compatibility (always on)"},
    {"-nr", "--no-repack", true, "1: products on the file's row layout instead of packed weights (default 0; a list)"},
    {"-o", "--output", true, "md (default), csv, json or jsonl"},
    {"", "--progress", false, "progress on stderr"},
    {"-md", "--model-draft", true,
     "draft models for greedy speculative decoding in generation tests; 'none' = without (the speed-up base)"},
    {"", "--draft-max", true, "tokens drafted per step with -md (default 8; a list)"},
    {"", "--draft-min", true, "drafted tokens before --draft-p-min may stop drafting (default 0)"},
    {"", "--draft-p-min", true, "stop drafting below this draft top probability (default 0; a list)"},
    {"", "--draft-adaptive", true, "1: measured draft length up to --draft-max (default), 0: fixed (a list)"},
    {"", "--draft-guard", true, "1: no drafts while drafting measures slower than plain (default), 0: off (a list)"},
    {"-td", "--threads-draft", true, "threads for the draft (default: as -t)"},
    {"-ngld", "--gpu-layers-draft", true, "accepted for compatibility (the CPU backend ignores it)"},
    {"", "--profile", false, "time per op class and layer kind (printed to stderr, in json records)"},
    {"", "--bw", true, "the machine's measured read bandwidth in GB/s (adds a % bw column)"},
    {"-h", "--help", false, "show this help"},
};

using Clock = std::chrono::steady_clock;

std::string cpu_name() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown";
}

std::string now_iso() {
    char b[32];
    const std::time_t t = std::time(nullptr);
    std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return b;
}

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

// llama.cpp's names of the common file types (general.file_type).
std::string ftype_name(int64_t ft) {
    switch (ft) {
        case 0:
            return "all F32";
        case 1:
            return "F16";
        case 2:
            return "Q4_0";
        case 7:
            return "Q8_0";
        case 14:
            return "Q4_K - Small";
        case 15:
            return "Q4_K - Medium";
        case 17:
            return "Q5_K - Medium";
        case 18:
            return "Q6_K";
        case 32:
            return "BF16";
        default:
            return ft < 0 ? "?" : "ftype " + std::to_string(ft);
    }
}

struct Test {
    int64_t n_prompt, n_gen;
};

// A speculative configuration of generation tests (draft empty: no draft).
struct Spec {
    std::string draft;
    int64_t draft_max = 0;
    double p_min = 0;
    bool adaptive = false;
    bool guard = false;
};

// The context parameters of one row of the matrix (-b x -ub x -ctk x -ctv x -d).
struct Config {
    int64_t n_batch, n_ubatch, depth;
    std::string ctk, ctv;
};

std::vector<int32_t> random_tokens(std::mt19937& rng, int64_t n, int64_t n_vocab) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (auto& x : t) x = int32_t(rng() % uint32_t(n_vocab));
    return t;
}

// A context (target or draft) holding `depth` random tokens and a checkpoint of that state.
struct Prepared {
    std::unique_ptr<Context> ctx;
    std::unique_ptr<SeqCheckpoint> base;
};
Result<Prepared> prepare(Engine& e, const ContextParams& cp, const std::vector<int32_t>& depth_tokens) {
    Prepared p;
    BM_ASSIGN(p.ctx, e.new_context(cp));
    std::vector<float> logits;
    if (!depth_tokens.empty()) BM_TRY(p.ctx->decode_seq(0, depth_tokens, false, &logits));
    BM_ASSIGN(p.base, p.ctx->checkpoint(0));
    return p;
}
// A context with other parameters holding the state of `from` (no second prefill of the depth).
Result<Prepared> prepare_like(Engine& e, const ContextParams& cp, const Prepared& from) {
    Prepared p;
    BM_ASSIGN(p.ctx, e.new_context(cp));
    BM_TRY(p.ctx->restore(0, *from.base));
    BM_ASSIGN(p.base, p.ctx->checkpoint(0));
    return p;
}

// What one measurement needs; `draft` is null for plain decoding and prompt tests.
struct Measure {
    Prepared& target;
    Prepared* draft;
    const Test& test;
    int64_t test_index, reps, n_draft_min;
    const Spec& spec;
    ProfiledBackend* prof;
    bool progress;
    const std::string& path;
};

// Runs one repetition of a test (rep -1: the warm-up, not recorded) from the checkpoints and
// adds its time to rec.samples_ns and its speculative counts to spec.
Result<void> run_rep(const Measure& m, int64_t rep, bench::Record& rec, SpecStats& spec) {
    Context& ctx = *m.target.ctx;
    const Test& t = m.test;
    const int64_t V = ctx.n_vocab();
    std::vector<float> logits, dlogits;
    if (m.progress)
        std::fprintf(stderr, "\rbench: %s %s rep %lld/%lld   ", m.path.c_str(), rec.test_name().c_str(),
                     (long long)(rep + 1), (long long)m.reps);
    BM_TRY(ctx.restore(0, *m.target.base));
    // The same prompt and first token for every configuration of this test and repetition:
    // with and without a draft, the same text.
    std::mt19937 rep_rng(uint32_t(42 + 7919 * m.test_index + 31 * rep));
    const std::vector<int32_t> prompt = random_tokens(rep_rng, t.n_prompt, V);
    int32_t tok = int32_t(rep_rng() % uint32_t(V));
    const auto t0 = Clock::now();
    if (t.n_prompt > 0) BM_TRY(ctx.decode_seq(0, prompt, false, &logits));
    if (m.draft) {
        // speculative: prompt and first token on both models, then draft/verify steps
        Context& dctx = *m.draft->ctx;
        BM_TRY(dctx.restore(0, *m.draft->base));
        if (t.n_prompt > 0) BM_TRY(dctx.decode_seq(0, prompt, false, &dlogits));
        BM_TRY(ctx.decode_seq(0, {tok}, false, &logits));
        BM_TRY(dctx.decode_seq(0, {tok}, false, &dlogits));
        const Spec& sp = m.spec;
        SpeculativeDecoder sd(ctx, dctx,
                              {int(sp.draft_max), int(m.n_draft_min), float(sp.p_min), sp.adaptive, sp.guard});
        std::vector<int32_t> out = {tok};
        while (int64_t(out.size()) < t.n_gen) BM_TRY(sd.step_greedy(logits, out));
        if (rep >= 0) {
            spec.drafted += sd.stats().drafted;
            spec.accepted += sd.stats().accepted;
            spec.drafting_steps += sd.stats().drafting_steps;
        }
    } else {
        for (int64_t i = 0; i < t.n_gen; ++i) {
            BM_TRY(ctx.decode_seq(0, {tok}, false, &logits));
            const auto ts0 = Clock::now();
            tok = argmax(logits.data(), int64_t(logits.size()));
            if (m.prof) m.prof->record(OpClass::sampling, std::chrono::duration<double>(Clock::now() - ts0).count());
        }
    }
    const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    if (rep >= 0) rec.samples_ns.push_back(ns);
    return {};
}

std::string phase_of(const Test& t) {
    return t.n_gen == 0 ? "prefill" : t.n_prompt == 0 ? "decode" : "prefill+decode";
}

// After the repetitions: the speculative fields, and the profile of this configuration alone.
void finish_record(const Measure& m, const SpecStats& spec, bench::Record& rec) {
    if (m.progress) std::fprintf(stderr, "\r%*s\r", 80, "");
    if (m.draft) {
        rec.draft_model = m.spec.draft;
        rec.spec_draft_max = m.spec.draft_max;
        rec.spec_draft_min = m.n_draft_min;
        rec.spec_p_min = m.spec.p_min;
        rec.spec_adaptive = m.spec.adaptive;
        rec.spec_guard = m.spec.guard;
        rec.spec_acceptance = spec.acceptance();
        rec.spec_mean_accepted = spec.mean_accepted();
    }
    if (m.prof) {
        double wall = 0;
        for (double ns : rec.samples_ns) wall += ns / 1e9;
        const int64_t toks = (m.test.n_prompt + m.test.n_gen) * m.reps;
        std::fprintf(stderr, "\n%s %s\n%s\n", m.path.c_str(), rec.test_name().c_str(),
                     m.prof->format(phase_of(m.test), wall, toks).c_str());
        rec.profile_json = m.prof->json(phase_of(m.test), wall, toks);
    }
}

// All repetitions of one configuration in a row, profiled.
Result<void> measure(const Measure& m, bench::Record& rec) {
    SpecStats spec;
    for (int64_t rep = -1; rep < m.reps; ++rep) {
        if (rep == 0) m.prof->clear();  // the warm-up is not profiled
        m.prof->set_phase(phase_of(m.test));
        BM_TRY(run_rep(m, rep, rec, spec));
    }
    finish_record(m, spec, rec);
    return {};
}

// One row of the benchmark matrix: a loaded target at one configuration, prepared contexts.
struct Matrix {
    Engine& engine;
    const std::string& path;
    int64_t threads;
    bool no_repack;
    const Config& c;
    Prepared& target;  // for speculative rows: keeps the per-token snapshots a rollback needs
    Prepared& plain;   // for plain decoding and prompt tests: no snapshots (may be `target`)
    std::map<std::string, Prepared>& drafts;
    int64_t reps, draft_min;
    double bw;
    bool progress;
};

// Every test under every speculative configuration; records go to emit in order.
Result<void> run_tests(const Matrix& mx, const std::vector<Test>& tests, const std::vector<Spec>& specs,
                       const std::function<void(bench::Record)>& emit) {
    const Model& model = mx.engine.model();
    // what every record of this row shares
    bench::Record row;
    row.build_commit = version_string();
    row.compiler = __VERSION__;
    row.cpu_info = cpu_name();
    row.backend = "CPU";
    row.model_filename = mx.path;
    row.model_type = model.hparams().arch + " " + mx.engine.file().get_string_or("general.name", "") + " " +
                     ftype_name(mx.engine.file().get_int_or("general.file_type", -1));
    row.model_size = model.total_weight_bytes();
    row.model_n_params = uint64_t(model.n_params());
    row.n_batch = mx.c.n_batch;
    row.n_ubatch = mx.c.n_ubatch;
    row.n_threads = mx.threads;
    row.no_repack = mx.no_repack;
    row.type_k = mx.c.ctk;
    row.type_v = mx.c.ctv;
    row.n_depth = mx.c.depth;
    row.machine_gbps = mx.bw;
    row.flops_per_token = 2.0 * double(model.n_active_params());
    for (size_t ti = 0; ti < tests.size(); ++ti) {
        const Test& t = tests[ti];
        bench::Record base = row;
        base.n_prompt = t.n_prompt;
        base.n_gen = t.n_gen;
        base.test_time = now_iso();
        base.bytes_per_token = double(model.active_weight_bytes()) +
                               double(mx.target.ctx->kv_bytes_per_token()) * (double(mx.c.depth) + double(t.n_gen) / 2);
        // prompt-only tests do not depend on the draft: run them once
        const size_t n_specs = t.n_gen == 0 ? 1 : specs.size();
        std::vector<bench::Record> recs(n_specs, base);
        std::vector<Measure> ms;
        for (size_t si = 0; si < n_specs; ++si) {
            const Spec& sp = specs[si];
            Prepared* draft = t.n_gen > 0 && !sp.draft.empty() ? &mx.drafts[sp.draft] : nullptr;
            ms.push_back(Measure{draft ? mx.target : mx.plain, draft, t, int64_t(ti), mx.reps, mx.draft_min, sp,
                                 mx.engine.profiler(), mx.progress, mx.path});
        }
        if (mx.engine.profiler()) {  // one profile per configuration: its repetitions in a row
            for (size_t si = 0; si < n_specs; ++si) BM_TRY(measure(ms[si], recs[si]));
        } else {
            // The configurations of a test take turns repetition by repetition, so a drift of the
            // machine's speed (10-20% over minutes on a shared VM) hits the plain row and every
            // speculative row alike.
            std::vector<SpecStats> stats(n_specs);
            for (int64_t rep = -1; rep < mx.reps; ++rep)
                for (size_t si = 0; si < n_specs; ++si) BM_TRY(run_rep(ms[si], rep, recs[si], stats[si]));
            for (size_t si = 0; si < n_specs; ++si) finish_record(ms[si], stats[si], recs[si]);
        }
        for (auto& rec : recs) emit(std::move(rec));
    }
    return {};
}
}  // namespace

int cmd_bench(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf("usage: bigmoe bench -m FILE [options]\n\n%s", format_help(k_specs).c_str());
        return 0;
    }
    auto models = list(*args, "--model", "");
    if (!models || models->front().empty()) return fail("bench: -m/--model is required");
    auto pp = ints(*args, "--n-prompt", "512", 0);
    auto tg = ints(*args, "--n-gen", "128", 0);
    auto depth = ints(*args, "--n-depth", "0", 0);
    auto th = ints(*args, "--threads", std::to_string(std::thread::hardware_concurrency()), 1);
    auto nb = ints(*args, "--batch-size", "2048", 1);
    auto ub = ints(*args, "--ubatch-size", "512", 1);
    auto nrs = ints(*args, "--no-repack", "0", 0);
    auto reps = args->get_int("--repetitions", 5, 1, 1000);
    auto bw = args->get_float("--bw", 0);
    for (auto* r : {&pp, &tg, &depth, &th, &nb, &ub, &nrs})
        if (!*r) return fail(r->error().message);
    for (int64_t v : *nrs)
        if (v > 1) return fail("bench: --no-repack takes 0 or 1");
    if (!reps) return fail(reps.error().message);
    if (!bw) return fail(bw.error().message);
    auto ctks = list(*args, "--cache-type-k", "f16");
    auto ctvs = list(*args, "--cache-type-v", "f16");
    const std::string fmt = args->get("--output", "md");
    if (fmt != "md" && fmt != "csv" && fmt != "json" && fmt != "jsonl")
        return fail("bench: -o must be md, csv, json or jsonl, got '" + fmt + "'");
    std::vector<Test> tests;
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
    const bool progress = args->has("--progress") || (isatty(2) && fmt == "md");
    // speculative configurations: every draft x guard x adaptive x draft_max x p_min ("none": no draft)
    std::vector<Spec> specs;
    auto drafts = list(*args, "--model-draft", "none");
    auto draft_maxes = ints(*args, "--draft-max", "8", 1);
    auto draft_min = args->get_int("--draft-min", 0, 0, 16);
    auto p_mins = list(*args, "--draft-p-min", "0");
    auto td = args->get_int("--threads-draft", 0, 0, 1024);
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
                        if (end == ps.c_str() || *end || pm < 0 || pm > 1)
                            return fail("bench: --draft-p-min takes probabilities in [0, 1], got '" + ps + "'");
                        specs.push_back({dm, x, pm, ad == 1, gd == 1});
                    }
    }

    std::vector<bench::Record> all;
    bool first_json = true;
    if (fmt == "csv") std::printf("%s\n", bench::csv_header().c_str());
    if (fmt == "json") std::printf("[\n");
    auto emit = [&](bench::Record r) {
        bench::link_speedup(r, all);
        if (fmt == "jsonl") std::printf("%s\n", bench::to_json(r, false).c_str());
        if (fmt == "json") std::printf("%s%s", first_json ? "" : ",\n", bench::to_json(r, true).c_str());
        if (fmt == "csv") std::printf("%s\n", bench::to_csv(r).c_str());
        first_json = false;
        std::fflush(stdout);
        all.push_back(r);
    };
    std::vector<Config> configs;
    for (int64_t b : *nb)
        for (int64_t u : *ub)
            for (const auto& ctk : *ctks)
                for (const auto& ctv : *ctvs)
                    for (int64_t d : *depth) configs.push_back({b, u, d, ctk, ctv});
    int64_t longest = 0;
    for (const auto& t : tests) longest = std::max(longest, t.n_prompt + t.n_gen);
    for (const auto& path : *models) {
        for (int64_t threads : *th)
            for (int64_t no_repack : *nrs) {
                auto engine = Engine::load(
                    path, {.n_threads = int(threads), .profile = args->has("--profile"), .repack = no_repack == 0});
                if (!engine) return fail(engine.error().message);
                Model& model = (*engine)->model();
                std::map<std::string, std::unique_ptr<Engine>> draft_engines;
                for (const Spec& sp : specs) {
                    if (sp.draft.empty() || draft_engines.count(sp.draft)) continue;
                    auto de =
                        Engine::load(sp.draft, {.n_threads = int(*td > 0 ? *td : threads), .repack = no_repack == 0});
                    if (!de) return fail(de.error().message);
                    if (auto r = check_draft_compatible(model, (*de)->model()); !r) return fail(r.error().message);
                    draft_engines[sp.draft] = std::move(*de);
                }
                for (const Config& c : configs) {
                    auto ctk = parse_cache_type(c.ctk, "-ctk");
                    auto ctv = parse_cache_type(c.ctv, "-ctv");
                    if (!ctk) return fail(ctk.error().message);
                    if (!ctv) return fail(ctv.error().message);
                    ContextParams cp;
                    cp.n_ctx = c.depth + longest + 1;
                    cp.n_ubatch = std::min(c.n_ubatch, c.n_batch);
                    cp.type_k = *ctk;
                    cp.type_v = *ctv;
                    // the target and every draft at the same depth (the same random tokens)
                    if (progress && c.depth > 0)
                        std::fprintf(stderr, "bench: building depth %lld ...\n", (long long)c.depth);
                    std::mt19937 rng(42);
                    const auto depth_tokens = random_tokens(rng, c.depth, model.hparams().n_vocab);
                    // Plain decoding runs on a context without per-token snapshots, as `run` without
                    // a draft does (the recurrent state is updated in place: faster), starting from
                    // the state of the speculative rows' context.
                    ContextParams plain_cp = cp;
                    plain_cp.rollback_depth = 0;
                    auto target = prepare(**engine, draft_engines.empty() ? plain_cp : cp, depth_tokens);
                    if (!target) return fail(target.error().message);
                    Result<Prepared> plain =
                        draft_engines.empty() ? Prepared{} : prepare_like(**engine, plain_cp, *target);
                    if (!plain) return fail(plain.error().message);
                    std::map<std::string, Prepared> drafts;
                    for (auto& [dpath, de] : draft_engines) {
                        auto p = prepare(*de, cp, depth_tokens);
                        if (!p) return fail(p.error().message);
                        drafts[dpath] = std::move(*p);
                    }
                    Prepared& plain_rows = draft_engines.empty() ? *target : *plain;
                    const Matrix mx{**engine,   path,   threads, no_repack == 1, c,   *target,
                                    plain_rows, drafts, *reps,   *draft_min,     *bw, progress};
                    if (auto r = run_tests(mx, tests, specs, emit); !r) return fail(r.error().message);
                }
            }
    }
    if (fmt == "json") std::printf("\n]\n");
    if (fmt == "md") std::printf("%s", bench::to_markdown(all).c_str());
    return 0;
}

}  // namespace bigmoe::cli
