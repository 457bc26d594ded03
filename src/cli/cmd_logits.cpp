// `bigmoe logits -m FILE --tokens 1,2,3 -o FILE`: logits of every position as little-endian
// float32 [n_tokens][n_vocab]. Tests and external checks compare engines with it.
#include <cstdio>

#include "bigmoe/bigmoe.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    opt::model,        {"", "--tokens", "LIST", "comma-separated token ids"},
    opt::output,       with_default(opt::ctx_size, "the number of tokens"),
    opt::ubatch_size,  opt::threads,
    opt::no_repack,    opt::cache_type_k,
    opt::cache_type_v, opt::gpu_layers,
    opt::cpu_moe,      opt::n_cpu_moe,
    opt::help,
};
}  // namespace

int cmd_logits(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf("usage: bigmoe logits -m FILE --tokens 1,2,3 -o FILE [options]\n\n%s",
                    format_help(k_specs).c_str());
        return 0;
    }
    if (!args->has("--model")) return fail("logits: -m/--model is required");
    if (!args->has("--tokens")) return fail("logits: --tokens is required");
    if (!args->has("--output")) return fail("logits: -o/--output is required");
    auto toks = parse_int_list(args->get("--tokens"), "--tokens");
    if (!toks) return fail(toks.error().message);
    if (toks->empty()) return fail("logits: --tokens is empty");
    auto ub = args->get_int("--ubatch-size", 512, 1, 1 << 20);
    auto th = args->get_int("--threads", 0, 0, 4096);
    auto ctx = args->get_int("--ctx-size", int64_t(toks->size()), 1, int64_t(1) << 31);
    auto ctk = parse_cache_type(args->get("--cache-type-k", "f16"), "-ctk");
    auto ctv = parse_cache_type(args->get("--cache-type-v", "f16"), "-ctv");
    for (auto* r : {&ub, &th, &ctx})
        if (!*r) return fail(r->error().message);
    if (!ctk) return fail(ctk.error().message);
    if (!ctv) return fail(ctv.error().message);

    auto ngl = args->get_int("--n-gpu-layers", 0, -1, 1 << 20);
    if (!ngl) return fail(ngl.error().message);
    auto ncm = parse_cpu_moe(*args, *ngl);
    if (!ncm) return fail(ncm.error().message);
    Progress loading("loading " + args->get("--model"));
    auto engine =
        Engine::load(args->get("--model"), {.n_threads = resolve_threads(*th),
                                            .repack = !args->has("--no-repack"),
                                            .n_gpu_layers = int(*ngl),
                                            .n_cpu_moe = *ncm,
                                            .progress = [&](uint64_t d, uint64_t t) { loading.bytes(d, t); }});
    loading.done();
    if (!engine) return fail(engine.error().message);
    ContextParams cp;
    if (*ctx < int64_t(toks->size()))
        return fail("logits: " + std::to_string(toks->size()) + " tokens do not fit in -c " + std::to_string(*ctx) +
                    " (raise -c, or leave it out: the default is the number of tokens)");
    cp.n_ctx = *ctx;
    cp.n_ubatch = *ub;
    cp.type_k = *ctk;
    cp.type_v = *ctv;
    auto c = (*engine)->new_context(cp);
    if (!c) return fail(c.error().message);
    std::vector<int32_t> tokens;
    for (int64_t t : *toks) {
        if (t < 0 || t >= (*c)->n_vocab())
            return fail("token id " + std::to_string(t) + " is out of range [0, " + std::to_string((*c)->n_vocab()) +
                        ")");
        tokens.push_back(int32_t(t));
    }
    // in micro-batch sized pieces, for a progress line on long inputs (the same logits: batch
    // invariance)
    std::vector<float> logits, part;
    Progress progress("logits");
    const size_t step = size_t(std::max<int64_t>(cp.n_ubatch, 1));
    for (size_t i = 0; i < tokens.size(); i += step) {
        const std::vector<int32_t> piece(tokens.begin() + ptrdiff_t(i),
                                         tokens.begin() + ptrdiff_t(std::min(tokens.size(), i + step)));
        auto r = (*c)->decode_seq(0, piece, true, &part);
        if (!r) return fail(r.error().message);
        logits.insert(logits.end(), part.begin(), part.end());
        progress.count(int64_t(i + piece.size()), int64_t(tokens.size()), "tokens");
    }
    progress.done();
    const std::string out = args->get("--output");
    std::FILE* f = std::fopen(out.c_str(), "wb");
    if (!f) return fail("cannot create '" + out + "'");
    const size_t n = std::fwrite(logits.data(), 4, logits.size(), f);
    if (std::fclose(f) != 0 || n != logits.size()) return fail("writing '" + out + "' failed");
    std::fprintf(stderr, "wrote %zu x %lld logits to %s\n", tokens.size(), (long long)(*c)->n_vocab(), out.c_str());
    return 0;
}

}  // namespace bigmoe::cli
