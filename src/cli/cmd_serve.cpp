// `bigmoe serve`: llama-server's flags for an OpenAI-compatible server (docs/serving.md). Binds
// first (so a busy port fails at once), loads the model while /health answers 503, and stops
// cleanly on Ctrl-C or SIGTERM.
#include <csignal>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bigmoe/bigmoe.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "runtime/grammar.h"
#include "runtime/json_schema.h"
#include "server/server.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    opt::model,
    {"", "--host", "ADDR", "address to listen on (default 127.0.0.1)"},
    {"", "--port", "N", "port (default 8080; 0: any free port, printed)"},
    with_default(opt::ctx_size, "4096; the total, split across the slots"),
    {"-np", "--parallel", "N", "slots: requests decoding at once (default 1)"},
    opt::threads,
    opt::ubatch_size,
    opt::cache_type_k,
    opt::cache_type_v,
    {"", "--api-key", "KEY", "require 'Authorization: Bearer KEY' on every endpoint but /health"},
    {"-a", "--alias", "NAME", "the model's name in /v1/models (default: the file name)"},
    {"", "--queue", "N", "requests that may wait for a slot; more get 503 with Retry-After (default 64)"},
    opt::no_repack,
    opt::gpu_layers,
    opt::cpu_moe,
    opt::n_cpu_moe,
    {"-md", "--model-draft", "FILE",
     "draft model (same vocabulary): greedy requests are decoded speculatively, all slots in the same steps"},
    opt::draft_max,
    opt::threads_draft,
    opt::gpu_layers_draft,
    {"", "--no-webui", "", "no chat page at / and no dashboard at /dashboard"},
    {"", "--profile", "",
     "time every op by class: GET /profile and the dashboard show where the last seconds went (a GPU "
     "synchronizes after each op)"},
    {"", "--slot-save-path", "DIR", "where POST /slots/{id}?action=save|restore keeps its files"},
    {"-j", "--json-schema", "SCHEMA", "the JSON Schema of every answer whose request sets no constraint of its own"},
    {"", "--json-schema-file", "FILE", "the same, the schema read from a file"},
    {"", "--grammar", "GBNF", "the GBNF grammar of every answer whose request sets no constraint of its own"},
    {"", "--grammar-file", "FILE", "the same, the grammar read from a file"},
    {"", "--cache-ram", "MiB",
     "host memory for the prompt cache, shared by all slots and past requests (default 8192; 0: off)"},
    {"", "--cache-checkpoint-every", "N",
     "also keep the recurrent state every N tokens inside long prompts (default 2048; 0: only at prompt and "
     "generation ends)"},
    opt::help,
};

server::Server* g_server = nullptr;
void on_signal(int) {
    if (g_server) g_server->stop();
}
}  // namespace

int cmd_serve(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf(
            "usage: bigmoe serve -m FILE [options]\n\n%s\nEndpoints: /v1/chat/completions, /v1/completions, "
            "/completion, /v1/models, /health, /props, /metrics, /profile, /slots, /tokenize, /detokenize; the chat "
            "page at / and a dashboard at /dashboard.\n",
            format_help(k_specs).c_str());
        return 0;
    }
    if (!args->has("--model")) return fail("serve: -m/--model is required");
    server::ServeOptions o;
    o.model = args->get("--model");
    o.host = args->get("--host", "127.0.0.1");
    auto port = args->get_int("--port", 8080, 0, 65535);
    auto ctx = args->get_int("--ctx-size", 4096, 8, int64_t(1) << 31);
    auto np = args->get_int("--parallel", 1, 1, 256);
    auto th = args->get_int("--threads", 0, 0, 4096);
    auto ub = args->get_int("--ubatch-size", 512, 1, 1 << 20);
    auto queue = args->get_int("--queue", 64, 0, 1 << 20);
    auto dmax = args->get_int("--draft-max", 8, 1, 16);
    auto td = args->get_int("--threads-draft", 0, 0, 4096);
    auto ngl = args->get_int("--n-gpu-layers", 0, -1, 1 << 20);
    auto ngld = args->get_int("--gpu-layers-draft", -2, -1, 1 << 20);
    auto cram = args->get_int("--cache-ram", 8192, 0, int64_t(1) << 30);
    auto cevery = args->get_int("--cache-checkpoint-every", 2048, 0, int64_t(1) << 31);
    for (auto* r : {&port, &ctx, &np, &th, &ub, &queue, &dmax, &td, &ngl, &ngld, &cram, &cevery})
        if (!*r) return fail(r->error().message);
    auto ctk = parse_cache_type(args->get("--cache-type-k", "f16"), "-ctk");
    auto ctv = parse_cache_type(args->get("--cache-type-v", "f16"), "-ctv");
    if (!ctk) return fail(ctk.error().message);
    if (!ctv) return fail(ctv.error().message);
    o.port = int(*port);
    o.n_ctx = *ctx;
    o.slots = int(*np);
    o.threads = resolve_threads(*th);
    o.n_ubatch = *ub;
    o.queue = size_t(*queue);
    o.type_k = *ctk;
    o.type_v = *ctv;
    o.cache_ram_mib = *cram;
    o.cache_checkpoint_every = *cevery;
    o.slot_save_path = args->get("--slot-save-path");
    o.webui = !args->has("--no-webui");
    o.profile = args->has("--profile");
    o.api_key = args->get("--api-key");
    o.alias = args->get("--alias");
    o.repack = !args->has("--no-repack");
    // default constraints, checked before the model loads
    auto schema_text = text_or_file(*args, "--json-schema", "--json-schema-file", "serve");
    if (!schema_text) return fail(schema_text.error().message);
    if (args->has("--json-schema") || args->has("--json-schema-file")) {
        const nlohmann::json j = nlohmann::json::parse(*schema_text, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded()) return fail("serve: the JSON schema is not valid JSON");
        auto s = JsonSchema::compile(j, /*lenient=*/true);
        if (!s) return fail("serve: " + s.error().message);
        for (const std::string& k : (*s)->ignored())
            std::fprintf(stderr, "warning: JSON schema: not enforced: %s\n", k.c_str());
        o.json_schema = *s;
    }
    auto grammar_text = text_or_file(*args, "--grammar", "--grammar-file", "serve");
    if (!grammar_text) return fail(grammar_text.error().message);
    if (args->has("--grammar") || args->has("--grammar-file")) {
        if (o.json_schema) return fail("serve: give either a grammar or a JSON schema");
        auto g = Grammar::parse(*grammar_text);
        if (!g) return fail("serve: " + g.error().message);
        o.grammar = *g;
    }
    o.n_gpu_layers = int(*ngl);
    auto ncm = parse_cpu_moe(*args, *ngl);
    if (!ncm) return fail(ncm.error().message);
    o.n_cpu_moe = *ncm;
    o.draft_model = args->get("--model-draft");
    o.draft_max = int(*dmax);
    o.draft_threads = *td > 0 ? resolve_threads(*td) : 0;
    o.draft_gpu_layers = bigmoe::draft_gpu_layers(*ngld, *ngl);
    if (o.draft_model.empty())
        for (const char* flag : {"--draft-max", "--threads-draft", "--gpu-layers-draft"})
            if (args->has(flag)) std::fprintf(stderr, "warning: %s has no effect without -md\n", flag);
    if (o.host != "127.0.0.1" && o.host != "localhost" && o.api_key.empty())
        std::fprintf(stderr, "warning: listening on %s without --api-key: anyone who reaches it can use it\n",
                     o.host.c_str());
    auto srv = server::Server::start(o);
    if (!srv) return fail("serve: " + srv.error().message);
    std::fprintf(stderr, "serve: listening on http://%s:%d (loading %s)\n", o.host.c_str(), (*srv)->port(),
                 o.model.c_str());
    g_server = srv->get();
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    if (auto r = (*srv)->load(); !r) {
        (*srv)->stop();
        return fail("serve: " + r.error().message);
    }
    std::fprintf(stderr, "serve: ready, %d slot(s) of %lld positions\n", o.slots, (long long)(o.n_ctx / o.slots));
    (*srv)->wait();
    g_server = nullptr;
    std::fprintf(stderr, "serve: stopped\n");
    return 0;
}

}  // namespace bigmoe::cli
