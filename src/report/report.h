// `bigmoe report`: one self-contained HTML page (inline SVG and CSS, no scripts, no network) from
// bench records: prefill and decode t/s against context depth (one line per configuration), a
// llama-bench-style table, and the profiler's op breakdown as stacked bars; and from loadtest
// records: throughput and latency percentiles against concurrency, per server and workload.
#pragma once

#include <string>
#include <vector>

#include "core/result.h"

namespace bigmoe::report {

// Reads .json (an array) or .jsonl files of `bench` or `loadtest -o jsonl` output.
Result<std::string> render_html(const std::vector<std::string>& paths);

// The colour of series k in the charts (the browser test looks for these pixels).
const char* series_color(size_t k);

}  // namespace bigmoe::report
