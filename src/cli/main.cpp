// The `bigmoe` binary: dispatches to subcommands.
#include <cstdio>
#include <cstring>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "bigmoe/bigmoe.h"
#include "cli/commands.h"

namespace bigmoe::cli {
int fail(const std::string& msg) {
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    return 1;
}
}  // namespace bigmoe::cli

namespace {
struct Command {
    const char* name;
    int (*fn)(const std::vector<std::string>&);
    const char* help;
};
const Command k_commands[] = {
    {"run", bigmoe::cli::cmd_run, "generate text from a prompt, or chat (-cnv)"},
    {"serve", bigmoe::cli::cmd_serve, "an OpenAI-compatible HTTP server with continuous batching"},
    {"loadtest", bigmoe::cli::cmd_loadtest, "latency and throughput of a server under a workload"},
    {"perplexity", bigmoe::cli::cmd_perplexity, "perplexity of a text, and KL divergence against a saved base run"},
    {"info", bigmoe::cli::cmd_info, "show a model's architecture, hyper-parameters, tensors and memory needs"},
    {"logits", bigmoe::cli::cmd_logits, "compute the logits of every position of a token list"},
    {"bench", bigmoe::cli::cmd_bench, "benchmark prompt processing and generation (llama-bench style)"},
    {"tokenize", bigmoe::cli::cmd_tokenize, "split text into token ids with a model's tokenizer"},
    {"report", bigmoe::cli::cmd_report, "one HTML page of charts and tables from bench json/jsonl files"},
    {"synth", bigmoe::cli::cmd_synth, "write a random-weight model with real shapes and quant mixes"},
};

// On stdout when asked for (--help, help), on stderr after a mistake.
void usage(std::FILE* f) {
    std::fprintf(f, "bigmoe %s - Mixture-of-Experts inference from GGUF files\n\nusage: bigmoe <command> [options]\n\n",
                 bigmoe::version_string());
    for (const auto& c : k_commands) std::fprintf(f, "  %-10s %s\n", c.name, c.help);
    std::fprintf(f, "\n'bigmoe help <command>' or 'bigmoe <command> --help' shows a command's options.\n");
}

const Command* find_command(const char* name) {
    for (const auto& c : k_commands)
        if (std::strcmp(name, c.name) == 0) return &c;
    return nullptr;
}
}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
        (!std::strcmp(argv[1], "help") && argc == 2)) {
        usage(stdout);
        return 0;
    }
    if (!std::strcmp(argv[1], "help")) {  // bigmoe help CMD = bigmoe CMD --help
        const Command* c = find_command(argv[2]);
        if (!c) {
            std::fprintf(stderr, "error: unknown command '%s'\n\n", argv[2]);
            usage(stderr);
            return 1;
        }
        return c->fn({"--help"});
    }
    if (!std::strcmp(argv[1], "--version")) {
        std::printf("bigmoe %s\n", bigmoe::version_string());
        return 0;
    }
    std::vector<std::string> args(argv + 2, argv + argc);
    if (const Command* c = find_command(argv[1])) {
        // The library returns errors as values and checks sizes against the free memory before
        // allocating; this is the last line for a host allocation that still fails.
        try {
            return c->fn(args);
        } catch (const std::bad_alloc&) {
            return bigmoe::cli::fail(std::string(c->name) + ": out of memory");
        } catch (const std::exception& e) {
            return bigmoe::cli::fail(std::string(c->name) + ": " + e.what());
        }
    }
    std::fprintf(stderr, "error: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 1;
}
