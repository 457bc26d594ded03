// `bigmoe report RESULTS... -o report.html`
#include <cstdio>
#include <fstream>

#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "report/report.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    with_default(opt::output, "report.html"),
    opt::help,
};
}

int cmd_report(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs, /*positional_ok=*/true);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf("usage: bigmoe report RESULTS.json|jsonl... -o report.html\n\n%s", format_help(k_specs).c_str());
        return 0;
    }
    if (args->positional().empty()) return fail("report: give one or more bench json/jsonl files");
    auto html = report::render_html(args->positional());
    if (!html) return fail(html.error().message);
    const std::string out = args->get("--output", "report.html");
    std::ofstream f(out, std::ios::binary);
    if (!f || !(f << *html)) return fail("report: cannot write '" + out + "'");
    std::fprintf(stderr, "wrote %s\n", out.c_str());
    return 0;
}

}  // namespace bigmoe::cli
