// `bigmoe loadtest`: drives an OpenAI-compatible server with a workload at a fixed concurrency
// and prints latency percentiles and throughput (md, or a json record per line).
#include <unistd.h>

#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "server/loadtest.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    {"", "--url", "URL", "the server (default http://127.0.0.1:8080)"},
    {"", "--workload", "NAME",
     "chat (30 in, 1000 out), code (2K/2K), summarize (8K/256), mixed, or conversations of --turns turns: "
     "multiturn (1K, then 64 out and a question a turn) or agent (a 256-token tool result a turn) (default chat)"},
    {"", "--turns", "N", "turns per conversation (multiturn, agent; default 6)"},
    {"-c", "--concurrency", "LIST", "requests in flight at once (default 1; a list runs each in turn)"},
    {"-n", "--requests", "N", "requests per concurrency (default 8)"},
    {"", "--in-tokens", "N", "prompt length instead of the workload's"},
    {"", "--out-tokens", "N", "output length instead of the workload's"},
    {"", "--api-key", "KEY", "sent as 'Authorization: Bearer KEY'"},
    {"", "--label", "NAME", "the server's name in jsonl records and report charts (default: the URL)"},
    {"-o", "--output", "FORMAT", "md (default) or jsonl"},
    opt::help,
};
}  // namespace

int cmd_loadtest(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf("usage: bigmoe loadtest [--url URL] [--workload NAME] [-c LIST] [-n N]\n\n%s",
                    format_help(k_specs).c_str());
        return 0;
    }
    server::LoadtestOptions o;
    o.url = args->get("--url", o.url);
    o.workload = args->get("--workload", o.workload);
    o.api_key = args->get("--api-key");
    o.label = args->get("--label", o.url);
    auto n = args->get_int("--requests", 8, 1, 1 << 20);
    auto in = args->get_int("--in-tokens", 0, 0, 1 << 24);
    auto out = args->get_int("--out-tokens", 0, 0, 1 << 24);
    auto turns = args->get_int("--turns", 6, 1, 1000);
    auto conc = parse_int_list(args->get("--concurrency", "1"), "-c");
    for (auto* r : {&n, &in, &out, &turns})
        if (!*r) return fail(r->error().message);
    if (!conc) return fail(conc.error().message);
    for (int64_t c : *conc)
        if (c < 1 || c > 4096) return fail("loadtest: -c takes 1 to 4096, got " + std::to_string(c));
    const std::string fmt = args->get("--output", "md");
    if (fmt != "md" && fmt != "jsonl") return fail("loadtest: -o takes md or jsonl, got '" + fmt + "'");
    o.requests = int(*n);
    o.in_tokens = *in;
    o.out_tokens = *out;
    o.turns = int(*turns);
    std::vector<server::LoadtestReport> reports;
    for (int64_t c : *conc) {
        o.concurrency = int(c);
        Progress progress("loadtest " + o.workload + " -c " + std::to_string(c));
        auto r = server::run_loadtest(o, [&](int d, int t) { progress.count(d, t, "requests"); });
        progress.done();
        if (!r) return fail(r.error().message);
        for (const auto& e : r->errors) std::fprintf(stderr, "loadtest: a request failed: %s\n", e.c_str());
        if (fmt == "jsonl") std::printf("%s\n", server::loadtest_json(*r).c_str());
        std::fflush(stdout);
        reports.push_back(*r);
    }
    if (fmt == "md") std::printf("%s", server::loadtest_markdown(reports).c_str());
    for (const auto& r : reports)
        if (r.failed > 0) return 1;
    return 0;
}

}  // namespace bigmoe::cli
