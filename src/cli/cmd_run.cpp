// `bigmoe run`: text generation with llama.cpp-style flags. `-p` continues raw text; `-cnv`
// chats with the model's template (conversation state is kept between turns: each turn feeds
// only its new tokens); `-st` answers one turn and exits. Text streams to stdout as generated,
// speeds go to stderr, Ctrl-C stops generation cleanly.
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "bigmoe/bigmoe.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "gguf/names.h"
#include "runtime/chat_session.h"
#include "runtime/generator.h"
#include "runtime/grammar.h"
#include "runtime/json_schema.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe::cli {

namespace {

const std::vector<OptionSpec> k_specs = {
    opt::model,
    {"-p", "--prompt", "TEXT", "prompt (raw text; the first user message with -cnv/-st)"},
    opt::file,
    {"-n", "--n-predict", "N", "tokens to generate (default 256, -1: until end of generation)", "--predict"},
    with_default(opt::ctx_size, "4096"),
    opt::threads,
    opt::batch_size,
    opt::ubatch_size,
    opt::cache_type_k,
    opt::cache_type_v,
    {"", "--temp", "T", "temperature (default: the file's general.sampling.temp or 0.8; 0 = greedy)", "--temperature"},
    {"", "--top-k", "N", "top-k (default 40)"},
    {"", "--top-p", "P", "top-p (default 0.95)"},
    {"", "--min-p", "P", "min-p (default 0.05)"},
    {"", "--repeat-penalty", "X", "repetition penalty (default 1.0 = off)"},
    {"", "--repeat-last-n", "N", "tokens the penalties look back (default 64)"},
    {"", "--presence-penalty", "X", "presence penalty (default 0)"},
    {"", "--frequency-penalty", "X", "frequency penalty (default 0)"},
    {"-l", "--logit-bias", "ID(+|-)BIAS",
     "add BIAS to token ID's logit before the penalties (repeatable; e.g. 15043+1, 15043-inf: never)"},
    {"-s", "--seed", "N", "sampling seed (default and -1: random, printed)"},
    {"-j", "--json-schema", "SCHEMA",
     "the answer is an instance of this JSON Schema (an object; '{}': any JSON object); see docs/serving.md"},
    {"", "--json-schema-file", "FILE", "the same, the schema read from a file"},
    {"", "--grammar", "GBNF", "the answer is text this GBNF grammar's root rule derives (llama.cpp's notation)"},
    {"", "--grammar-file", "FILE", "the same, the grammar read from a file"},
    {"", "--ignore-eos", "", "keep generating past end-of-generation tokens"},
    {"", "--special", "", "print control tokens"},
    {"-sys", "--system-prompt", "TEXT", "system message (chat)"},
    {"-sysf", "--system-prompt-file", "FILE", "system message from a file (chat)"},
    {"-e", "--escape", "", "process \\n, \\t, \\\\, \\\" and \\' in -p and -sys (the default)"},
    {"", "--no-escape", "", "take -p and -sys literally"},
    {"-r", "--reverse-prompt", "TEXT", "stop generating at this text (repeatable); in -cnv the turn goes back to you"},
    {"-cnv", "--conversation", "", "interactive chat with the model's chat template"},
    {"", "--chat", "", "same as -cnv"},
    {"-st", "--single-turn", "", "chat: answer one turn, then exit"},
    {"", "--reasoning", "on|off", "on|off: off renders the template with enable_thinking = false"},
    {"", "--show-thinking", "on|off", "on|off: print the <think>...</think> part (default on)"},
    {"", "--chat-template", "NAME", "chatml: use ChatML instead of the file's Jinja template"},
    {"", "--chat-template-file", "FILE", "a Jinja chat template to use instead of the file's"},
    {"", "--jinja", "", "render the chat with the Jinja template (the default)"},
    {"", "--no-jinja", "", "render the chat with the built-in ChatML template"},
    {"", "--verbose-prompt", "", "print the prompt's tokens (raw) or the rendered chat text before generating"},
    {"", "--context-shift", "", "chat: when the context is full, drop the oldest turns instead of stopping"},
    {"-md", "--model-draft", "FILE", "draft model for speculative decoding (same vocabulary)"},
    {"", "--draft-ngram", "", "speculative decoding with prompt-lookup drafts (no draft model; greedy)"},
    opt::draft_max,
    opt::draft_min,
    opt::draft_p_min,
    opt::draft_adaptive,
    opt::draft_guard,
    opt::threads_draft,
    opt::gpu_layers_draft,
    opt::gpu_layers,
    opt::cpu_moe,
    opt::n_cpu_moe,
    {"-fa", "--flash-attn", "on|off|auto", "on or auto: attention is always fused (flash); off is refused"},
    {"", "--no-mmap", "", "accepted: the weights are read from the mapped file, or packed into memory at load"},
    {"", "--mlock", "", "keep the model's memory resident (mlockall; a warning if the system refuses)"},
    {"", "--no-warmup", "", "accepted: run does no warm-up pass"},
    {"", "--perf", "", "print the timings (always printed on stderr)"},
    {"-v", "--log-verbose", "", "more on stderr: the load line's details, each turn's stop reason"},
    opt::profile,
    opt::no_repack,
    opt::help,
};

std::atomic<bool> g_interrupt{false};
void on_sigint(int) {
    g_interrupt.store(true);
}

using Clock = std::chrono::steady_clock;

// Prints each piece as it comes; reasoning only with --show-thinking; stops on Ctrl-C.
PieceFn printer(bool show_thinking) {
    return [show_thinking](const Piece& pc) {
        if (show_thinking || !pc.reasoning) {
            std::fwrite(pc.text.data(), 1, pc.text.size(), stdout);
            std::fflush(stdout);
        }
        return !g_interrupt.load();
    };
}

void print_stop(const GenerateResult& r, const Context& ctx) {
    if (r.stop == StopReason::context_full)
        std::fprintf(stderr, "\n[context full: %lld tokens]\n", (long long)ctx.params().n_ctx);
}

// llama.cpp's --logit-bias TOKEN_ID(+|-)BIAS: a finite amount, or -inf to ban the token.
Result<std::pair<int32_t, float>> logit_bias(const std::string& v, int32_t n_vocab) {
    const auto bad = [&] {
        return make_error("run: --logit-bias takes ID+BIAS or ID-BIAS (e.g. 15043+1, 15043-inf), got '" + v + "'");
    };
    const size_t sign = v.find_first_of("+-");
    if (sign == 0 || sign == std::string::npos || sign > 10) return bad();
    const std::string id_text = v.substr(0, sign), amount_text = v.substr(sign);
    if (!std::all_of(id_text.begin(), id_text.end(), [](char c) { return c >= '0' && c <= '9'; })) return bad();
    const int64_t id = std::stoll(id_text);
    if (id >= n_vocab)
        return make_error("run: --logit-bias token " + id_text + " is not an id in [0, " + std::to_string(n_vocab) +
                          ")");
    if (amount_text == "-inf") return std::pair<int32_t, float>{int32_t(id), -INFINITY};
    char* end = nullptr;
    const double amount = std::strtod(amount_text.c_str(), &end);
    if (end != amount_text.c_str() + amount_text.size() || !std::isfinite(amount) || amount_text.size() < 2)
        return bad();
    return std::pair<int32_t, float>{int32_t(id), float(amount)};
}

Result<SamplerParams> sampler_params(const Args& a, const gguf::GgufFile& f, int32_t n_vocab) {
    SamplerParams p;
    p.temp = float(f.get_float_or(gguf::key::general_sampling_temp, p.temp));
    p.top_k = int32_t(f.get_int_or(gguf::key::general_sampling_top_k, p.top_k));
    p.top_p = float(f.get_float_or(gguf::key::general_sampling_top_p, p.top_p));
    p.min_p = float(f.get_float_or(gguf::key::general_sampling_min_p, p.min_p));
    auto fl = [&](const char* k, float* dst) -> Result<void> {
        auto v = a.get_float(k, *dst);
        if (!v) return v.error();
        *dst = float(*v);
        return {};
    };
    BM_TRY(fl("--temp", &p.temp));
    BM_TRY(fl("--top-p", &p.top_p));
    BM_TRY(fl("--min-p", &p.min_p));
    BM_TRY(fl("--repeat-penalty", &p.repeat_penalty));
    BM_TRY(fl("--presence-penalty", &p.presence_penalty));
    BM_TRY(fl("--frequency-penalty", &p.frequency_penalty));
    auto k = a.get_int("--top-k", p.top_k, -1, 1 << 30);
    if (!k) return k.error();
    p.top_k = int32_t(*k);
    auto ln = a.get_int("--repeat-last-n", p.penalty_last_n, 0, 1 << 20);
    if (!ln) return ln.error();
    p.penalty_last_n = int32_t(*ln);
    auto seed = a.get_int("--seed", -1, -1, INT64_MAX);
    if (!seed) return seed.error();
    if (*seed < 0) {  // llama.cpp's -s -1: a random seed, printed so the run can be repeated
        p.seed = uint64_t(std::random_device{}()) & 0x7fffffff;
        std::fprintf(stderr, "seed: %llu\n", (unsigned long long)p.seed);
    } else {
        p.seed = uint64_t(*seed);
    }
    for (const std::string& v : a.get_all("--logit-bias")) {
        auto b = logit_bias(v, n_vocab);
        if (!b) return b.error();
        p.logit_bias.push_back(*b);
    }
    if (p.temp < 0 || p.top_p <= 0 || p.top_p > 1 || p.min_p < 0 || p.min_p > 1 || p.repeat_penalty <= 0)
        return make_error(
            "run: sampling values out of range (temp >= 0, 0 < top-p <= 1, 0 <= min-p <= 1, repeat-penalty > 0)");
    return p;
}

// llama.cpp's escapes in -p and -sys: \n \r \t \\ \" \'; any other backslash stays.
std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '\\' || i + 1 == s.size()) {
            out += s[i];
            continue;
        }
        const char c = s[++i];
        switch (c) {
            case 'n':
                out += '\n';
                break;
            case 'r':
                out += '\r';
                break;
            case 't':
                out += '\t';
                break;
            case '\\':
            case '"':
            case '\'':
                out += c;
                break;
            default:
                out += '\\';
                out += c;
        }
    }
    return out;
}

Result<bool> on_off(const Args& a, const char* key, bool def) {
    if (!a.has(key)) return def;
    const std::string v = a.get(key);
    if (v == "on" || v == "1" || v == "true") return true;
    if (v == "off" || v == "0" || v == "false") return false;
    return make_error(std::string(key) + ": expected on or off, got '" + v + "'");
}

}  // namespace

int cmd_run(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf(
            "usage: bigmoe run -m FILE (-p TEXT | -f FILE | -cnv | -st) [options]\n\n%s\n"
            "In a conversation (-cnv): /exit or /quit ends it, /clear starts over, an empty line is not "
            "sent.\n-st without -p or -f reads the message from standard input.\n",
            format_help(k_specs).c_str());
        return 0;
    }
    if (!args->has("--model")) return fail("run: -m/--model is required");
    const bool chat = args->has("--conversation") || args->has("--chat") || args->has("--single-turn");
    if (!chat && !args->has("--prompt") && !args->has("--file"))
        return fail("run: give -p/--prompt, -f/--file or -cnv");
    if (args->has("--prompt") && args->has("--file")) return fail("run: give only one of -p and -f");
    const bool escape = !args->has("--no-escape");
    std::string prompt = escape ? unescape(args->get("--prompt")) : args->get("--prompt");
    if (args->has("--file")) {
        auto t = read_text_file(args->get("--file"));
        if (!t) return fail(t.error().message);
        prompt = *t;
    }
    const bool single = args->has("--single-turn");
    if (args->has("--system-prompt") && args->has("--system-prompt-file"))
        return fail("run: give only one of -sys and -sysf");
    std::string system = escape ? unescape(args->get("--system-prompt")) : args->get("--system-prompt");
    if (args->has("--system-prompt-file")) {
        auto t = read_text_file(args->get("--system-prompt-file"));
        if (!t) return fail(t.error().message);
        system = *t;
    }
    std::string template_source;  // empty: the file's own
    if (args->has("--chat-template") + args->has("--chat-template-file") + args->has("--no-jinja") > 1)
        return fail("run: give only one of --chat-template, --chat-template-file and --no-jinja");
    if (args->has("--chat-template")) {
        if (args->get("--chat-template") != "chatml")
            return fail(
                "run: --chat-template takes 'chatml' (the file's own template is the default; "
                "--chat-template-file reads another Jinja template)");
        template_source = "chatml";
    }
    if (args->has("--no-jinja")) template_source = "chatml";
    if (args->has("--chat-template-file")) {
        auto t = read_text_file(args->get("--chat-template-file"));
        if (!t) return fail(t.error().message);
        if (t->empty()) return fail("run: the chat template file '" + args->get("--chat-template-file") + "' is empty");
        template_source = *t;
    }
    // a schema is checked before the model loads
    std::shared_ptr<const JsonSchema> schema;
    auto schema_text = text_or_file(*args, "--json-schema", "--json-schema-file", "run");
    if (!schema_text) return fail(schema_text.error().message);
    if (args->has("--json-schema") || args->has("--json-schema-file")) {
        const char* flag = args->has("--json-schema-file") ? "--json-schema-file" : "--json-schema";
        const nlohmann::json j = nlohmann::json::parse(*schema_text, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded()) return fail(std::string("run: ") + flag + " is not valid JSON");
        auto s = JsonSchema::compile(j, /*lenient=*/true);
        if (!s) return fail(std::string("run: ") + flag + ": " + s.error().message);
        for (const std::string& k : (*s)->ignored())
            std::fprintf(stderr, "warning: %s: not enforced: %s\n", flag, k.c_str());
        schema = *s;
    }
    std::shared_ptr<const Grammar> grammar;
    auto grammar_text = text_or_file(*args, "--grammar", "--grammar-file", "run");
    if (!grammar_text) return fail(grammar_text.error().message);
    if (args->has("--grammar") || args->has("--grammar-file")) {
        if (schema) return fail("run: give either a grammar or a JSON schema");
        auto g = Grammar::parse(*grammar_text);
        if (!g) return fail("run: " + g.error().message);
        grammar = *g;
    }
    if (args->has("--flash-attn")) {
        const std::string fa = args->get("--flash-attn");
        if (fa == "off" || fa == "0")
            return fail("run: -fa " + fa + ": bigmoe's attention is always fused (flash attention)");
        if (fa != "on" && fa != "1" && fa != "auto") return fail("run: -fa takes on, off or auto, got '" + fa + "'");
    }
    auto ngl = args->get_int("--n-gpu-layers", 0, -1, 1 << 20);
    if (!ngl) return fail(ngl.error().message);
    auto ncm = parse_cpu_moe(*args, *ngl);
    if (!ncm) return fail(ncm.error().message);
    if (args->has("--mlock") && mlockall(MCL_CURRENT | MCL_FUTURE) != 0)
        std::fprintf(stderr, "warning: --mlock: the system refused to lock the memory (%s); running without\n",
                     std::strerror(errno));
    if (single && !args->has("--prompt") && !args->has("--file")) {
        std::stringstream in;
        in << std::cin.rdbuf();
        prompt = in.str();
        while (!prompt.empty() && (prompt.back() == '\n' || prompt.back() == '\r')) prompt.pop_back();
        if (prompt.empty()) return fail("run: -st needs a message: -p TEXT, -f FILE or text on standard input");
    }
    if (!chat)
        for (const char* o : {"--system-prompt", "--system-prompt-file", "--reasoning", "--chat-template",
                              "--chat-template-file", "--no-jinja", "--context-shift"})
            if (args->has(o))
                std::fprintf(
                    stderr, "warning: %s has no effect without -cnv or -st (the prompt is continued as raw text)\n", o);
    auto n_predict = args->get_int("--n-predict", 256, -1, int64_t(1) << 31);
    auto n_ctx = args->get_int("--ctx-size", 4096, 8, int64_t(1) << 31);
    auto threads = args->get_int("--threads", 0, 0, 4096);
    auto batch = args->get_int("--batch-size", 2048, 1, 1 << 20);
    auto ub = args->get_int("--ubatch-size", 512, 1, 1 << 20);
    for (auto* r : {&n_predict, &n_ctx, &threads, &batch, &ub})
        if (!*r) return fail(r->error().message);
    auto ctk = parse_cache_type(args->get("--cache-type-k", "f16"), "-ctk");
    auto ctv = parse_cache_type(args->get("--cache-type-v", "f16"), "-ctv");
    if (!ctk) return fail(ctk.error().message);
    if (!ctv) return fail(ctv.error().message);
    auto reasoning = on_off(*args, "--reasoning", true);
    auto show = on_off(*args, "--show-thinking", true);
    if (!reasoning) return fail(reasoning.error().message);
    if (!show) return fail(show.error().message);

    const bool repack = !args->has("--no-repack");
    const auto load_t0 = Clock::now();
    Progress loading("loading " + args->get("--model"));
    auto engine =
        Engine::load(args->get("--model"), {.n_threads = resolve_threads(*threads),
                                            .profile = args->has("--profile"),
                                            .repack = repack,
                                            .n_gpu_layers = int(*ngl),
                                            .n_cpu_moe = *ncm,
                                            .progress = [&](uint64_t d, uint64_t t) { loading.bytes(d, t); }});
    loading.done();
    if (!engine) return fail(engine.error().message);
    const double load_s = std::chrono::duration<double>(Clock::now() - load_t0).count();
    auto tok = Tokenizer::from_gguf((*engine)->file());
    if (!tok) return fail(tok.error().message);
    auto sp = sampler_params(*args, (*engine)->file(), (*tok)->n_vocab());
    if (!sp) return fail(sp.error().message);
    if (args->has("--draft-ngram") && sp->temp > 0)
        std::fprintf(stderr,
                     "warning: --draft-ngram drafts greedily only: at --temp %g it decodes without drafts (--temp 0 "
                     "drafts)\n",
                     double(sp->temp));
    ContextParams cp;
    cp.n_ctx = *n_ctx;
    cp.n_ubatch = std::min(*ub, *batch);
    const bool speculative = args->has("--model-draft") || args->has("--draft-ngram");
    // Without drafting nothing is rolled back: no per-token recurrent snapshots (the state is
    // updated in place: faster decode, and 16 fewer copies of the recurrent state in memory),
    // except the one a greedy chain undoes at a stop where the backend chains greedy steps.
    if (!speculative) cp.rollback_depth = (*engine)->model().backend().chains_greedy() ? 1 : 0;
    cp.type_k = *ctk;
    cp.type_v = *ctv;
    auto ctx = (*engine)->new_context(cp);
    if (!ctx) return fail(ctx.error().message);
    std::fprintf(stderr, "%s\n", (*engine)->describe(**ctx, load_s).c_str());
    std::signal(SIGINT, on_sigint);
    std::unique_ptr<Engine> draft_engine;
    std::unique_ptr<Context> draft_ctx;
    SpecParams spec;
    if (speculative) {
        auto gd = args->get_int("--draft-guard", 1, 0, 1);
        if (!gd) return fail(gd.error().message);
        auto dmax = args->get_int("--draft-max", 8, 1, 16);
        auto dmin = args->get_int("--draft-min", 0, 0, 16);
        auto pmin = args->get_float("--draft-p-min", 0.0);
        if (!dmax) return fail(dmax.error().message);
        if (!dmin) return fail(dmin.error().message);
        if (!pmin) return fail(pmin.error().message);
        auto adapt = args->get_int("--draft-adaptive", 1, 0, 1);
        if (!adapt) return fail(adapt.error().message);
        if (*pmin < 0 || *pmin > 1) return fail("run: --draft-p-min must be in [0, 1]");
        spec = {int(*dmax), int(*dmin), float(*pmin), *adapt == 1, *gd == 1};
    }
    if (args->has("--model-draft")) {
        auto td = args->get_int("--threads-draft", *threads, 0, 4096);
        if (!td) return fail(td.error().message);
        auto ngld = args->get_int("--gpu-layers-draft", -2, -1, 1 << 20);
        if (!ngld) return fail(ngld.error().message);
        auto de = Engine::load(args->get("--model-draft"), {.n_threads = resolve_threads(*td),
                                                            .repack = repack,
                                                            .n_gpu_layers = draft_gpu_layers(*ngld, *ngl),
                                                            .gpu_layers_flag = "-ngld"});
        if (!de) return fail(de.error().message);
        if (auto r = check_draft_compatible((*engine)->model(), (*de)->model()); !r) return fail(r.error().message);
        draft_engine = std::move(*de);
        auto dc = draft_engine->new_context(cp);
        if (!dc) return fail(dc.error().message);
        draft_ctx = std::move(*dc);
    }

    Generator g(**ctx, **tok, *sp);
    if (draft_ctx) g.set_draft(draft_ctx.get(), spec);
    if (args->has("--draft-ngram")) g.set_prompt_lookup(spec);
    g.set_profiler((*engine)->profiler());
    GenerateParams gp;
    gp.n_predict = *n_predict;
    gp.ignore_eos = args->has("--ignore-eos");
    gp.special = args->has("--special");
    gp.stop = args->get_all("--reverse-prompt");
    std::shared_ptr<const JsonVocabulary> json_vocab;
    if (schema || grammar) json_vocab = std::make_shared<const JsonVocabulary>(**tok);
    // a fresh constraint for each answer (a chat turn moves it to the turn's end)
    auto constrain = [&] {
        if (schema) gp.constraint = std::make_shared<JsonConstraint>(json_vocab, -1, schema);
        if (grammar) gp.constraint = std::make_shared<JsonConstraint>(json_vocab, -1, grammar);
    };
    const bool verbose = args->has("--log-verbose");
    const PieceFn print = printer(*show);
    auto report = [&] {
        const GenerationStats& gs = g.stats();
        std::fprintf(
            stderr, "\n\nprompt: %lld tokens in %.2f s (%.2f t/s) | generation: %lld tokens in %.2f s (%.2f t/s)\n",
            (long long)gs.prompt_tokens, gs.prompt_s, gs.prompt_s > 0 ? double(gs.prompt_tokens) / gs.prompt_s : 0.0,
            (long long)gs.gen_tokens, gs.gen_s, gs.gen_s > 0 ? double(gs.gen_tokens) / gs.gen_s : 0.0);
        if (ProfiledBackend* prof = (*engine)->profiler()) {
            std::fprintf(stderr, "\n%s\n%s", prof->format("prefill", gs.prompt_s, gs.prompt_tokens).c_str(),
                         prof->format("decode", gs.gen_s, gs.gen_tokens).c_str());
        }
        const SpecStats& st = g.spec_stats();
        if (g.speculative() && st.steps > 0) {
            std::fprintf(stderr,
                         "speculative: %lld drafted, %lld accepted (%.1f%%), mean accepted length %.2f per drafting "
                         "step (%lld of %lld steps drafted)",
                         (long long)st.drafted, (long long)st.accepted, 100.0 * st.acceptance(), st.mean_accepted(),
                         (long long)st.drafting_steps, (long long)st.steps);
            const double drafting = st.drafting_seconds > 0 ? double(st.drafting_tokens) / st.drafting_seconds : 0;
            if (drafting > 0) std::fprintf(stderr, "; drafting steps %.2f t/s", drafting);
            // the guard timed plain steps; a few drafting steps (each draft length's first one runs
            // a new batch shape, cold) would make a speed-up of a short run mean nothing
            constexpr int64_t k_min_drafting_steps = 8;
            if (drafting > 0 && st.plain_s_per_token > 0) {
                if (st.drafting_steps >= k_min_drafting_steps)
                    std::fprintf(stderr, ", plain steps %.2f t/s: speed-up %.2fx", 1.0 / st.plain_s_per_token,
                                 drafting * st.plain_s_per_token);
                else
                    std::fprintf(stderr, " (too few steps for a speed-up)");
            }
            std::fprintf(stderr, "\n");
        }
    };

    if (!chat) {
        const auto tokens = (*tok)->encode(prompt, /*parse_special=*/true, /*add_special=*/true);
        if (tokens.empty()) return fail("run: the prompt is empty");
        if (args->has("--verbose-prompt")) {
            std::fprintf(stderr, "prompt: %zu tokens:", tokens.size());
            for (int32_t t : tokens) std::fprintf(stderr, " %d", t);
            std::fprintf(stderr, "\n");
        }
        if (int64_t(tokens.size()) >= cp.n_ctx)
            return fail("run: the prompt has " + std::to_string(tokens.size()) + " tokens, the context only " +
                        std::to_string(cp.n_ctx) + " (raise -c)");
        if (auto r = g.feed(tokens); !r) return fail(r.error().message);
        constrain();
        auto out = g.generate(gp, print);
        if (!out) return fail(out.error().message);
        print_stop(*out, **ctx);
        report();
        return 0;
    }

    const bool shift = args->has("--context-shift");
    ChatOptions opt;
    opt.enable_thinking = *reasoning;
    auto session = ChatSession::create(g, template_source, opt);
    if (!session) return fail(session.error().message);
    if (session->builtin_chatml()) std::fprintf(stderr, "note: the model has no chat template; using ChatML\n");
    if (!system.empty()) session->add_system(system);
    if (args->has("--verbose-prompt"))
        session->set_on_feed(
            [](const std::string& text) { std::fprintf(stderr, "[prompt]%s[/prompt]\n", text.c_str()); });
    bool first = true;
    for (;;) {
        std::string user;
        if (first && !prompt.empty()) {
            user = prompt;
        } else {
            if (single) break;
            std::fprintf(stderr, "\n> ");
            if (!std::getline(std::cin, user)) break;
            if (user == "/exit" || user == "/quit") break;
            if (user == "/clear") {
                session->clear();
                std::fprintf(stderr, "[the conversation starts over]\n");
                continue;
            }
            if (user.find_first_not_of(" \t\r") == std::string::npos) continue;
        }
        first = false;
        g_interrupt.store(false);
        constrain();
        auto out = session->send(user, gp, print);
        while (!out && out.error().kind == ErrorKind::resource_exhausted && shift && session->drop_oldest_turn()) {
            std::fprintf(stderr, "[context full: the oldest turn is dropped]\n");
            constrain();
            out = session->send(user, gp, print);
        }
        if (!out) {
            if (out.error().kind != ErrorKind::resource_exhausted || single) return fail(out.error().message);
            std::fprintf(stderr, "[context full: %s. /clear starts over%s]\n", out.error().message.c_str(),
                         shift ? "" : "; --context-shift drops the oldest turns instead");
            continue;
        }
        print_stop(*out, **ctx);
        if (verbose) std::fprintf(stderr, "\n[stop: %s]\n", stop_reason_name(out->stop));
        if (single) break;
    }
    report();
    return 0;
}

}  // namespace bigmoe::cli
