// Subcommands of the `bigmoe` binary. Each returns the process exit code.
#pragma once

#include <string>
#include <vector>

namespace bigmoe::cli {

int cmd_info(const std::vector<std::string>& args);
int cmd_logits(const std::vector<std::string>& args);
int cmd_synth(const std::vector<std::string>& args);
int cmd_bench(const std::vector<std::string>& args);
int cmd_tokenize(const std::vector<std::string>& args);
int cmd_run(const std::vector<std::string>& args);
int cmd_report(const std::vector<std::string>& args);
int cmd_serve(const std::vector<std::string>& args);
int cmd_loadtest(const std::vector<std::string>& args);
int cmd_perplexity(const std::vector<std::string>& args);

// Prints "error: <msg>" to stderr and returns 1.
int fail(const std::string& msg);

}  // namespace bigmoe::cli
