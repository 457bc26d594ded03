// Options that several commands take, declared once: one spelling (llama.cpp's) and one help
// text everywhere. A command whose default differs adds it with with_default().
#pragma once

#include <cstdint>
#include <string>

#include "cli/args.h"
#include "core/result.h"
#include "quant/dtype.h"

namespace bigmoe::cli::opt {

inline const OptionSpec model{"-m", "--model", "FILE", "model file (GGUF)"};
inline const OptionSpec prompt{"-p", "--prompt", "TEXT", "prompt text"};
inline const OptionSpec file{"-f", "--file", "FILE", "read the prompt from a file"};
inline const OptionSpec output{"-o", "--output", "FILE", "output file", "--out"};
inline const OptionSpec threads{"-t", "--threads", "N", "threads (default and 0: the physical cores)"};
inline const OptionSpec ctx_size{"-c", "--ctx-size", "N", "context size in positions"};
inline const OptionSpec batch_size{"-b", "--batch-size", "N", "logical batch size (default 2048)"};
inline const OptionSpec ubatch_size{"-ub", "--ubatch-size", "N", "micro-batch size (default 512)"};
inline const OptionSpec cache_type_k{
    "-ctk", "--cache-type-k", "TYPE",
    "K cache type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl (default f16)"};
inline const OptionSpec cache_type_v{"-ctv", "--cache-type-v", "TYPE", "V cache type: as -ctk (default f16)"};
inline const OptionSpec no_repack{"-nr", "--no-repack", "",
                                  "products on the file's row layout (no packed copy of the weights)"};
inline const OptionSpec gpu_layers{
    "-ngl", "--n-gpu-layers", "N",
    "layers on the GPU: 0 (default) runs on the CPU; 99 (or the layer count) the whole model on the CUDA backend; "
    "N between: the last N layers and the output on the GPU, the others on the CPU"};
inline const OptionSpec cpu_moe{"-cmoe", "--cpu-moe", "",
                                "with -ngl: every layer's routed experts stay in host memory and run on the CPU"};
inline const OptionSpec n_cpu_moe{
    "-ncmoe", "--n-cpu-moe", "N",
    "with -ngl: the routed experts of the first N layers stay in host memory and run on the CPU (a MoE model larger "
    "than the GPU: attention, the shared expert and the other layers' experts stay on the GPU)"};
inline const OptionSpec profile{"", "--profile", "", "time per op class and layer kind (printed to stderr)"};
inline const OptionSpec help{"-h", "--help", "", "show this help"};
// speculative decoding (run, bench)
inline const OptionSpec draft_max{"", "--draft-max", "N", "tokens drafted per step (default 8, at most 16)"};
inline const OptionSpec draft_min{"", "--draft-min", "N",
                                  "drafted tokens before --draft-p-min may stop drafting (default 0)"};
inline const OptionSpec draft_p_min{"", "--draft-p-min", "P",
                                    "stop drafting when the draft's top probability is below this (default 0)"};
inline const OptionSpec draft_adaptive{
    "", "--draft-adaptive", "0|1",
    "1 (default): each step drafts the length (up to --draft-max) that measures most tokens per second, from the "
    "acceptance per draft position and the timed steps; 0: always --draft-max"};
inline const OptionSpec draft_guard{
    "", "--draft-guard", "0|1",
    "1 (default): decode without drafts while drafting measures slower than plain decoding; 0: always draft"};
inline const OptionSpec threads_draft{"-td", "--threads-draft", "N", "threads for the draft model (default: as -t)"};
inline const OptionSpec gpu_layers_draft{
    "-ngld", "--gpu-layers-draft", "N",
    "the draft's layers on the GPU, as -ngl (default: all of them when -ngl puts any on the GPU, else 0)"};

}  // namespace bigmoe::cli::opt

namespace bigmoe::cli {

// A -ctk / -ctv value ("f16"); `which` names the flag in the error.
Result<DType> parse_cache_type(const std::string& s, const char* which);
// --cpu-moe / --n-cpu-moe N as LoadOptions::n_cpu_moe: -1 for every layer, N, or 0 when neither;
// with a warning when -ngl (`n_gpu_layers`) puts nothing on the GPU, where they change nothing.
Result<int> parse_cpu_moe(const Args& args, int64_t n_gpu_layers);
// A -t value: 0 is the physical cores; more than the machine's hardware threads is allowed with
// a warning (once per process) saying what it costs.
int resolve_threads(int64_t asked);
// A progress line on stderr when it is a terminal ("loading: 45% (1.20 GiB of 2.67 GiB)"),
// redrawn at most a few times a second and erased by done().
class Progress {
  public:
    explicit Progress(std::string label);
    void bytes(uint64_t done, uint64_t total);
    void count(int64_t done, int64_t total, const char* unit);
    void done();
    ~Progress() { done(); }

  private:
    void draw(double fraction, const std::string& detail);
    std::string label_;
    bool on_, drawn_ = false;
    double last_ = -1;
};
// The whole file (a prompt, a text to tokenize).
Result<std::string> read_text_file(const std::string& path);
// The text of `flag` or the file named by `file_flag` (a schema, a grammar): "" when neither is
// given, an error when both are or the file cannot be read (`cmd` names the command).
Result<std::string> text_or_file(const Args& args, const char* flag, const char* file_flag, const char* cmd);

}  // namespace bigmoe::cli
