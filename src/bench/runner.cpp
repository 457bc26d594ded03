#include "bench/runner.h"
#include "gguf/names.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include "bigmoe/bigmoe.h"
#include "core/cpu_info.h"
#include "gguf/file_type.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"

namespace bigmoe::bench {

namespace {
using Clock = std::chrono::steady_clock;

std::string now_iso() {
    char b[32];
    const std::time_t t = std::time(nullptr);
    std::strftime(b, sizeof b, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return b;
}

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
    Context* parallel;  // -npl above 1: the context of the sequences side by side (target.base seeds each)
    int64_t n_parallel;
    const Test& test;
    int64_t test_index, reps, n_draft_min, first_rep;
    const SpecConfig& spec;
    ProfiledBackend* prof;
    const Events& ev;
    const std::string& path;
};

// One repetition of sequences side by side: each restored to the depth, given its own prompt (all
// prompts in one batch), then one token of each a step.
Result<void> run_rep_parallel(const Measure& m, int64_t rep, Record& rec) {
    Context& ctx = *m.parallel;
    const Test& t = m.test;
    const int64_t V = ctx.n_vocab(), np = m.n_parallel;
    std::vector<float> logits;
    if (m.ev.progress)
        m.ev.progress(m.path + " " + rec.test_name() + " rep " + std::to_string(rep + 1) + "/" +
                      std::to_string(m.reps));
    std::mt19937 rep_rng(uint32_t(42 + 7919 * m.test_index + 31 * rep));
    std::vector<BatchToken> prompts, step(static_cast<size_t>(np));
    for (int s = 0; s < int(np); ++s) {
        BM_TRY(ctx.restore(s, *m.target.base));
        for (int32_t tok : random_tokens(rep_rng, t.n_prompt, V)) prompts.push_back({tok, s, false});
        step[size_t(s)] = {int32_t(rep_rng() % uint32_t(V)), s, true};
    }
    const auto t0 = Clock::now();
    if (t.n_prompt > 0) BM_TRY(ctx.decode(prompts, &logits));
    std::vector<int32_t> next;
    for (int64_t i = 0; i < t.n_gen; ++i) {  // greedy, the argmax where the logits are
        BM_TRY(ctx.decode(step, nullptr, &next));
        for (int64_t s = 0; s < np; ++s) step[size_t(s)].token = next[size_t(s)];
    }
    const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    if (rep >= 0) rec.samples_ns.push_back(ns);
    return {};
}

// Runs one repetition of a test (rep -1: the warm-up, not recorded) from the checkpoints and
// adds its time to rec.samples_ns and its speculative counts to spec.
Result<void> run_rep(const Measure& m, int64_t rep, Record& rec, SpecStats& spec) {
    if (m.parallel) return run_rep_parallel(m, rep, rec);
    Context& ctx = *m.target.ctx;
    const Test& t = m.test;
    const int64_t V = ctx.n_vocab();
    std::vector<float> logits, dlogits;
    if (m.ev.progress)
        m.ev.progress(m.path + " " + rec.test_name() + " rep " + std::to_string(rep + 1) + "/" +
                      std::to_string(m.reps));
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
        const SpecConfig& sp = m.spec;
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
        // as `run --temp 0`: a greedy chain of n_gen steps
        if (t.n_gen > 0)
            BM_TRY(ctx.decode_greedy_chain(0, tok, {t.n_gen, false}, [](int32_t, int64_t) { return ChainNext::more; }));
    }
    const double ns = std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    if (rep >= 0) rec.samples_ns.push_back(ns);
    return {};
}

std::string phase_of(const Test& t) {
    return t.n_gen == 0 ? "prefill" : t.n_prompt == 0 ? "decode" : "prefill+decode";
}

// After the repetitions: the speculative fields, and the profile of this configuration alone.
void finish_record(const Measure& m, const SpecStats& spec, Record& rec) {
    if (m.ev.progress) m.ev.progress("");
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
        const int64_t toks = m.n_parallel * (m.test.n_prompt + m.test.n_gen) * m.reps;
        if (m.ev.profile)
            m.ev.profile(m.path + " " + rec.test_name() + "\n" + m.prof->format(phase_of(m.test), wall, toks));
        rec.profile_json = m.prof->json(phase_of(m.test), wall, toks);
    }
}

// All repetitions of one configuration in a row, profiled.
Result<void> measure(const Measure& m, Record& rec) {
    SpecStats spec;
    for (int64_t rep = m.first_rep; rep < m.reps; ++rep) {
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
    const ContextConfig& c;
    Prepared& target;  // for speculative rows: keeps the per-token snapshots a rollback needs
    Prepared& plain;   // for plain decoding and prompt tests: no snapshots (may be `target`)
    std::map<std::string, Prepared>& drafts;
    std::map<int64_t, std::unique_ptr<Context>>& parallel;  // -npl above 1, seeded from plain.base
    const Plan& plan;
    const Events& ev;
};

// Every test under every speculative configuration; records go to ev.record in order.
Result<void> run_tests(const Matrix& mx) {
    const Model& model = mx.engine.model();
    const Plan& plan = mx.plan;
    // what every record of this row shares
    Record row;
    row.build_commit = version_string();
    row.compiler = __VERSION__;
    row.cpu_info = cpu_model_name();
    row.backend = mx.engine.on_gpu() ? "CUDA" : "CPU";
    row.n_gpu_layers = mx.engine.gpu_layers();
    row.n_cpu_moe = mx.engine.cpu_moe_layers();
    if (mx.engine.on_gpu()) row.gpu_info = mx.engine.backend().device_name();
    row.model_filename = mx.path;
    row.model_type = model.hparams().arch + " " + mx.engine.file().get_string_or(gguf::key::general_name, "") + " " +
                     gguf::file_type_description(mx.engine.file().get_int_or(gguf::key::general_file_type, -1));
    row.model_size = model.total_weight_bytes();
    row.model_n_params = uint64_t(model.n_params());
    row.n_batch = mx.c.n_batch;
    row.n_ubatch = mx.c.n_ubatch;
    row.n_threads = mx.threads;
    row.no_repack = mx.no_repack;
    row.type_k = cache_type_name(mx.c.type_k);
    row.type_v = cache_type_name(mx.c.type_v);
    row.n_depth = mx.c.depth;
    row.machine_gbps = plan.machine_gbps;
    row.flops_per_token = 2.0 * double(model.n_active_params());
    for (size_t ti = 0; ti < plan.tests.size(); ++ti) {
        const Test& t = plan.tests[ti];
        if (plan.delay_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(plan.delay_s));
        Record base = row;
        base.n_prompt = t.n_prompt;
        base.n_gen = t.n_gen;
        base.test_time = now_iso();
        base.bytes_per_token = double(model.active_weight_bytes()) +
                               double(mx.target.ctx->kv_bytes_per_token()) * (double(mx.c.depth) + double(t.n_gen) / 2);
        // prompt-only tests do not depend on the draft: run them once
        const size_t n_specs = t.n_gen == 0 ? 1 : plan.specs.size();
        std::vector<Record> recs(n_specs, base);
        std::vector<Measure> ms;
        for (size_t si = 0; si < n_specs; ++si) {
            const SpecConfig& sp = plan.specs[si];
            Prepared* draft = t.n_gen > 0 && !sp.draft.empty() ? &mx.drafts[sp.draft] : nullptr;
            ms.push_back(Measure{draft ? mx.target : mx.plain, draft, nullptr, 1, t, int64_t(ti), plan.reps,
                                 plan.draft_min, plan.warmup ? -1 : 0, sp, mx.engine.profiler(), mx.ev, mx.path});
        }
        // sequences side by side: plain decoding only, a record each after the test's own
        for (int64_t np : plan.parallel) {
            if (np <= 1) continue;
            Record r = base;
            r.n_parallel = np;
            recs.push_back(r);
            ms.push_back(Measure{mx.plain, nullptr, mx.parallel.at(np).get(), np, t, int64_t(ti), plan.reps,
                                 plan.draft_min, plan.warmup ? -1 : 0, plan.specs.front(), mx.engine.profiler(), mx.ev,
                                 mx.path});
        }
        const size_t n_rows = ms.size();
        if (mx.engine.profiler()) {  // one profile per configuration: its repetitions in a row
            for (size_t si = 0; si < n_rows; ++si) BM_TRY(measure(ms[si], recs[si]));
        } else {
            // The configurations of a test take turns repetition by repetition, so a drift of the
            // machine's speed (10-20% over minutes on a shared VM) hits the plain row and every
            // speculative and parallel row alike.
            std::vector<SpecStats> stats(n_rows);
            for (int64_t rep = plan.warmup ? -1 : 0; rep < plan.reps; ++rep)
                for (size_t si = 0; si < n_rows; ++si) BM_TRY(run_rep(ms[si], rep, recs[si], stats[si]));
            for (size_t si = 0; si < n_rows; ++si) finish_record(ms[si], stats[si], recs[si]);
        }
        for (auto& rec : recs) mx.ev.record(std::move(rec));
    }
    return {};
}

// Prefixes a context error with the configuration it belongs to.
Error in_config(const Error& e, const std::string& path, const ContextConfig& c) {
    return make_error("bench: " + path + " at depth " + std::to_string(c.depth) + ": " + e.message, e.kind);
}

// The contexts of one configuration: the target (with snapshots when drafting), the plain one
// and every draft, all holding the same depth.
Result<void> run_config(Engine& engine, const std::string& path, int64_t threads, bool no_repack,
                        std::map<std::string, std::unique_ptr<Engine>>& draft_engines, const ContextConfig& c,
                        const Plan& plan, const Events& ev) {
    int64_t longest = 0;
    for (const auto& t : plan.tests) longest = std::max(longest, t.n_prompt + t.n_gen);
    ContextParams cp;
    cp.n_ctx = c.depth + longest + 1;
    cp.n_ubatch = std::min(c.n_ubatch, c.n_batch);
    cp.type_k = c.type_k;
    cp.type_v = c.type_v;
    // Plain decoding runs on a context without per-token snapshots, as `run` without a draft
    // does (the recurrent state is updated in place: faster), starting from the state of the
    // speculative rows' context.
    ContextParams plain_cp = cp;
    plain_cp.rollback_depth = 0;
    const ContextParams& target_cp = draft_engines.empty() ? plain_cp : cp;
    // fail before the depth's tokens are drawn when the context cannot fit
    if (auto r = Context::check_fits(engine.model(), target_cp); !r) return in_config(r.error(), path, c);
    if (ev.progress && c.depth > 0) ev.progress("building depth " + std::to_string(c.depth) + " ...");
    std::mt19937 rng(42);
    const auto depth_tokens = random_tokens(rng, c.depth, engine.model().hparams().n_vocab);
    auto target = prepare(engine, target_cp, depth_tokens);
    if (!target) return in_config(target.error(), path, c);
    Prepared plain;
    if (!draft_engines.empty()) {
        auto p = prepare_like(engine, plain_cp, *target);
        if (!p) return in_config(p.error(), path, c);
        plain = std::move(*p);
    }
    std::map<std::string, Prepared> drafts;
    for (auto& [dpath, de] : draft_engines) {
        auto p = prepare(*de, cp, depth_tokens);
        if (!p) return in_config(p.error(), dpath, c);
        drafts[dpath] = std::move(*p);
    }
    Prepared& plain_rows = draft_engines.empty() ? *target : plain;
    std::map<int64_t, std::unique_ptr<Context>> parallel;
    for (int64_t np : plan.parallel) {
        if (np <= 1 || parallel.count(np)) continue;
        ContextParams pcp = plain_cp;
        pcp.n_seq_max = int(np);
        if (auto r = Context::check_fits(engine.model(), pcp); !r) return in_config(r.error(), path, c);
        auto ctx = engine.new_context(pcp);
        if (!ctx) return in_config(ctx.error(), path, c);
        parallel[np] = std::move(*ctx);
    }
    return run_tests(Matrix{engine, path, threads, no_repack, c, *target, plain_rows, drafts, parallel, plan, ev});
}
}  // namespace

Result<void> check_models(const Plan& plan) {
    std::vector<std::string> paths = plan.models;
    for (const SpecConfig& s : plan.specs)
        if (!s.draft.empty()) paths.push_back(s.draft);
    for (const std::string& p : paths) {
        auto f = gguf::GgufFile::open(p);
        if (!f) return f.error();
    }
    return {};
}

Result<void> run(const Plan& plan, const Events& ev) {
    BM_TRY(check_models(plan));
    for (const auto& path : plan.models)
        for (int64_t ngl : plan.gpu_layers)
            for (int64_t ncm : plan.cpu_moe)
                for (int64_t threads : plan.threads)
                    for (bool no_repack : plan.no_repack) {
                        auto engine = Engine::load(path, {.n_threads = int(threads),
                                                          .profile = plan.profile,
                                                          .repack = !no_repack,
                                                          .n_gpu_layers = int(ngl),
                                                          .n_cpu_moe = int(ncm)});
                        if (!engine) return engine.error();
                        std::map<std::string, std::unique_ptr<Engine>> draft_engines;
                        for (const SpecConfig& sp : plan.specs) {
                            if (sp.draft.empty() || draft_engines.count(sp.draft)) continue;
                            const int dt = int(plan.draft_threads > 0 ? plan.draft_threads : threads);
                            auto de =
                                Engine::load(sp.draft, {.n_threads = dt,
                                                        .repack = !no_repack,
                                                        .n_gpu_layers = draft_gpu_layers(plan.draft_gpu_layers, ngl),
                                                        .gpu_layers_flag = "-ngld"});
                            if (!de) return de.error();
                            BM_TRY(check_draft_compatible((*engine)->model(), (*de)->model()));
                            draft_engines[sp.draft] = std::move(*de);
                        }
                        for (const ContextConfig& c : plan.configs)
                            BM_TRY(run_config(**engine, path, threads, no_repack, draft_engines, c, plan, ev));
                    }
    return {};
}

}  // namespace bigmoe::bench
