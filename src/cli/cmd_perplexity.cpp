// `bigmoe perplexity -m FILE -f TEXT`: llama-perplexity's measure, and with
// --kl-divergence-base / --kl-divergence the KL divergence of one configuration against another.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bigmoe/bigmoe.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "runtime/perplexity.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    opt::model,
    {"-f", "--file", "FILE", "the text to score"},
    {"-c", "--ctx-size", "N", "tokens per chunk; the second half of each is scored (default 512)"},
    {"", "--chunks", "N", "score at most N chunks (default: all the text holds)"},
    opt::threads,
    opt::ubatch_size,
    opt::cache_type_k,
    opt::cache_type_v,
    opt::gpu_layers,
    opt::cpu_moe,
    opt::n_cpu_moe,
    opt::no_repack,
    {"", "--kl-divergence-base", "FILE",
     "save the scored distributions to FILE; with --kl-divergence, compare this run's with them"},
    {"", "--kl-divergence", "", "compare with --kl-divergence-base: KL divergence and top-token agreement"},
    {"", "--json", "", "print the result as one JSON object on stdout"},
    opt::help,
};
}  // namespace

int cmd_perplexity(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf(
            "usage: bigmoe perplexity -m FILE -f TEXT [options]\n\n%s\nKL divergence: run once with "
            "--kl-divergence-base BASE (e.g. -ctk f32 -ctv f32), then with --kl-divergence-base BASE --kl-divergence\n"
            "and the configuration to measure, over the same text and -c.\n",
            format_help(k_specs).c_str());
        return 0;
    }
    if (!args->has("--model")) return fail("perplexity: -m/--model is required");
    if (!args->has("--file")) return fail("perplexity: -f/--file (the text to score) is required");
    const bool compare = args->has("--kl-divergence");
    const std::string base_path = args->get("--kl-divergence-base");
    if (compare && base_path.empty()) return fail("perplexity: --kl-divergence needs --kl-divergence-base FILE");
    auto n_ctx = args->get_int("--ctx-size", 512, 4, 1 << 20);
    auto chunks = args->get_int("--chunks", -1, -1, int64_t(1) << 40);
    auto threads = args->get_int("--threads", 0, 0, 4096);
    auto ub = args->get_int("--ubatch-size", 512, 1, 1 << 20);
    auto ngl = args->get_int("--n-gpu-layers", 0, -1, 1 << 20);
    for (auto* r : {&n_ctx, &chunks, &threads, &ub, &ngl})
        if (!*r) return fail(r->error().message);
    auto ncm = parse_cpu_moe(*args, *ngl);
    if (!ncm) return fail(ncm.error().message);
    auto ctk = parse_cache_type(args->get("--cache-type-k", "f16"), "-ctk");
    auto ctv = parse_cache_type(args->get("--cache-type-v", "f16"), "-ctv");
    if (!ctk) return fail(ctk.error().message);
    if (!ctv) return fail(ctv.error().message);
    auto text = read_text_file(args->get("--file"));
    if (!text) return fail(text.error().message);

    auto engine = Engine::load(args->get("--model"), {.n_threads = resolve_threads(*threads),
                                                      .repack = !args->has("--no-repack"),
                                                      .n_gpu_layers = int(*ngl),
                                                      .n_cpu_moe = *ncm});
    if (!engine) return fail(engine.error().message);
    auto tok = Tokenizer::from_gguf((*engine)->file());
    if (!tok) return fail(tok.error().message);
    const std::vector<int32_t> tokens = (*tok)->encode(*text, false);
    ContextParams cp;
    cp.n_ctx = *n_ctx;
    cp.n_ubatch = *ub;
    cp.rollback_depth = 0;
    cp.type_k = *ctk;
    cp.type_v = *ctv;
    auto ctx = (*engine)->new_context(cp);
    if (!ctx) return fail(ctx.error().message);
    std::fprintf(stderr, "%s\n", (*engine)->describe(**ctx, 0).c_str());
    std::fprintf(stderr, "perplexity: %zu tokens, chunks of %lld\n", tokens.size(), (long long)*n_ctx);

    const int64_t V = (*engine)->model().hparams().n_vocab;
    std::unique_ptr<KlBaseWriter> save;
    std::unique_ptr<KlBaseReader> base;
    if (!base_path.empty() && !compare) {
        auto w = KlBaseWriter::create(base_path, V, *n_ctx, tokens);
        if (!w) return fail(w.error().message);
        save = std::move(*w);
    } else if (compare) {
        auto r = KlBaseReader::open(base_path, V, *n_ctx, tokens);
        if (!r) return fail(r.error().message);
        base = std::move(*r);
    }
    // llama-perplexity's running estimates on stdout; a progress line with the time left on a
    // terminal's stderr.
    const bool tty = isatty(2) != 0;
    double elapsed = 0;
    auto on_chunk = [&](const PerplexityChunk& c) {
        elapsed += c.seconds;
        if (!args->has("--json")) {
            std::printf("[%lld]%.4f,", (long long)c.index + 1, c.ppl);
            std::fflush(stdout);
        }
        const double left = elapsed / double(c.index + 1) * double(c.n_chunks - c.index - 1);
        char kl[48] = "";
        if (c.kl_mean >= 0) std::snprintf(kl, sizeof kl, ", KL %.6f", c.kl_mean);
        std::fprintf(stderr, "%sperplexity: chunk %lld/%lld, PPL %.4f%s, %.1f s per chunk, %.0f s left%s",
                     tty ? "\r" : "", (long long)c.index + 1, (long long)c.n_chunks, c.ppl, kl, c.seconds, left,
                     tty ? "   " : "\n");
    };
    auto r = perplexity(**ctx, tokens, {.n_ctx = *n_ctx, .n_chunks = *chunks}, save.get(), base.get(), on_chunk);
    if (tty) std::fprintf(stderr, "\n");
    if (!args->has("--json")) std::printf("\n");
    if (!r) return fail(r.error().message);
    if (save) {
        auto f = save->finish();
        if (!f) return fail(f.error().message);
    }
    if (args->has("--json")) {
        nlohmann::ordered_json j{{"model", args->get("--model")},
                                 {"type_k", cache_type_name(*ctk)},
                                 {"type_v", cache_type_name(*ctv)},
                                 {"n_ctx", *n_ctx},
                                 {"chunks", r->n_chunks},
                                 {"scored", r->n_scored},
                                 {"ppl", r->ppl},
                                 {"ppl_error", r->ppl_error}};
        if (r->compared) {
            j["base_ppl"] = r->base_ppl;
            j["kl_mean"] = r->kl_mean;
            j["kl_mean_error"] = r->kl_mean_error;
            j["kl_median"] = r->kl_median;
            j["kl_p99"] = r->kl_p99;
            j["kl_max"] = r->kl_max;
            j["top1_agreement"] = r->top1_agreement;
        }
        std::printf("%s\n", j.dump().c_str());
        return 0;
    }
    std::printf("Final estimate: PPL = %.4f +/- %.5f (%lld chunks, %lld scored tokens)\n", r->ppl, r->ppl_error,
                (long long)r->n_chunks, (long long)r->n_scored);
    if (save) std::printf("saved the scored distributions to %s\n", base_path.c_str());
    if (r->compared) {
        std::printf("base PPL:        %.4f   ln(PPL / base PPL): %+.6f\n", r->base_ppl, std::log(r->ppl / r->base_ppl));
        std::printf("Mean KLD:        %.6f +/- %.6f\n", r->kl_mean, r->kl_mean_error);
        std::printf("Median KLD:      %.6f\n", r->kl_median);
        std::printf("99.0%%   KLD:     %.6f\n", r->kl_p99);
        std::printf("Maximum KLD:     %.6f\n", r->kl_max);
        std::printf("Same top token:  %.3f %%\n", 100.0 * r->top1_agreement);
    }
    return 0;
}

}  // namespace bigmoe::cli
