// `bigmoe tokenize -m FILE (-p TEXT | -f FILE) [--ids] [--no-parse-special]`
#include <cstdio>
#include <fstream>
#include <sstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "gguf/gguf_file.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    opt::model,
    {"-p", "--prompt", "TEXT", "text to tokenize"},
    opt::file,
    {"", "--ids", "", "print only the list of ids: [id, id, ...]"},
    {"", "--no-parse-special", "", "treat control-token text in the input as plain text"},
    opt::help,
};
}  // namespace

int cmd_tokenize(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf("usage: bigmoe tokenize -m FILE (-p TEXT | -f FILE) [--ids]\n\n%s", format_help(k_specs).c_str());
        return 0;
    }
    if (!args->has("--model")) return fail("tokenize: -m/--model is required");
    if (args->has("--prompt") == args->has("--file"))
        return fail("tokenize: give exactly one of -p/--prompt or -f/--file");
    std::string text = args->get("--prompt");
    if (args->has("--file")) {
        auto t = read_text_file(args->get("--file"));
        if (!t) return fail(t.error().message);
        text = *t;
    }
    auto file = gguf::GgufFile::open(args->get("--model"));
    if (!file) return fail(file.error().message);
    auto tok = Tokenizer::from_gguf(**file);
    if (!tok) return fail(tok.error().message);
    const auto ids = (*tok)->encode(text, !args->has("--no-parse-special"));
    if (args->has("--ids")) {
        std::printf("[");
        for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? ", " : "", ids[i]);
        std::printf("]\n");
        return 0;
    }
    for (int32_t id : ids) {
        std::string piece = (*tok)->token_bytes(id, true);
        std::printf("%6d -> '%s'\n", id, piece.c_str());
    }
    std::fprintf(stderr, "%zu tokens\n", ids.size());
    return 0;
}

}  // namespace bigmoe::cli
