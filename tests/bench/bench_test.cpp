// bench: list/range parsing, statistics on known inputs, and the output formats (json, jsonl,
// csv parse back to the same values; markdown has llama-bench's layout).
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench/bench.h"
#include "core/stats.h"

namespace bigmoe::bench {
namespace {

TEST(Bench, lists_and_ranges) {
    EXPECT_EQ(*parse_int_ranges("512", "-p"), (std::vector<int64_t>{512}));
    EXPECT_EQ(*parse_int_ranges("512,2048", "-p"), (std::vector<int64_t>{512, 2048}));
    EXPECT_EQ(*parse_int_ranges("512-4096*2", "-p"), (std::vector<int64_t>{512, 1024, 2048, 4096}));
    EXPECT_EQ(*parse_int_ranges("1-7+3", "-t"), (std::vector<int64_t>{1, 4, 7}));
    EXPECT_EQ(*parse_int_ranges("0,8192,32768", "-d"), (std::vector<int64_t>{0, 8192, 32768}));
    EXPECT_EQ(*parse_int_ranges("1-3,16", "-t"), (std::vector<int64_t>{1, 2, 3, 16}));
    for (const char* bad : {"", "x", "1,,2", "4-1", "1-8*1", "1-8+0", "0-8*2", "5-"}) {
        auto r = parse_int_ranges(bad, "-p");
        EXPECT_FALSE(r.ok()) << bad;
        if (!r.ok()) {
            EXPECT_NE(r.error().message.find("-p"), std::string::npos);
        }
    }
}

TEST(Bench, mean_and_sample_standard_deviation) {
    EXPECT_DOUBLE_EQ(mean({2, 4, 4, 4, 5, 5, 7, 9}), 5.0);
    EXPECT_NEAR(stddev({2, 4, 4, 4, 5, 5, 7, 9}), 2.138089935, 1e-9);  // n - 1
    EXPECT_EQ(stddev({3}), 0.0);
    EXPECT_EQ(quantile_sorted({1, 2, 3, 4, 5}, 0.5), 3.0);
    EXPECT_EQ(quantile_sorted({1, 2, 3, 4, 5}, 0.99), 5.0);
    EXPECT_EQ(quantile_sorted({1, 2, 3, 4}, 0.5), 3.0);  // rank 1.5 rounds up
    EXPECT_EQ(quantile_sorted({}, 0.5), 0.0);
    Record r;
    r.n_prompt = 512;
    r.samples_ns = {1e9, 2e9};  // 512 t/s and 256 t/s
    EXPECT_DOUBLE_EQ(r.avg_ts(), 384.0);
    EXPECT_NEAR(r.stddev_ts(), 181.019336, 1e-5);
    EXPECT_EQ(r.test_name(), "pp512");
    r.n_depth = 8192;
    EXPECT_EQ(r.test_name(), "pp512 @ d8192");
    r.n_prompt = 0;
    r.n_gen = 128;
    r.n_depth = 0;
    EXPECT_EQ(r.test_name(), "tg128");
}

Record sample() {
    Record r;
    r.build_commit = "0.1.0-abc";
    r.model_filename = "m \"q\".gguf";
    r.model_type = "qwen35moe bench-1b";
    r.model_size = 762824448;
    r.model_n_params = 1208045248;
    r.n_threads = 2;
    r.n_gen = 128;
    r.samples_ns = {1.8e9, 1.9e9, 2.0e9};
    r.bytes_per_token = 2.4e8;
    r.machine_gbps = 34.3;
    return r;
}

TEST(Bench, json_and_jsonl_round_trip) {
    const Record r = sample();
    for (bool pretty : {false, true}) {
        const auto j = nlohmann::json::parse(to_json(r, pretty));
        EXPECT_EQ(j["n_gen"], 128);
        EXPECT_EQ(j["n_prompt"], 0);
        EXPECT_EQ(j["n_depth"], 0);
        EXPECT_EQ(j["model_filename"], r.model_filename);
        EXPECT_NEAR(j["avg_ts"].get<double>(), r.avg_ts(), 1e-9);
        EXPECT_NEAR(j["stddev_ts"].get<double>(), r.stddev_ts(), 1e-9);
        EXPECT_EQ(j["samples_ns"].size(), 3u);
        EXPECT_EQ(j["samples_ts"].size(), 3u);
        EXPECT_NEAR(j["bigmoe_gbps"].get<double>(), r.gbps(), 1e-9);
    }
    EXPECT_EQ(to_json(r, false).find('\n'), std::string::npos);  // jsonl: one line per record
}

std::vector<std::string> split_csv(const std::string& line) {
    std::vector<std::string> cells;
    std::string cur;
    bool q = false;
    for (size_t i = 0; i < line.size(); ++i) {
        const char c = line[i];
        if (q && c == '"' && i + 1 < line.size() && line[i + 1] == '"') {
            cur += '"';
            ++i;
        } else if (c == '"') {
            q = !q;
        } else if (c == ',' && !q) {
            cells.push_back(cur);
            cur.clear();
        } else {
            cur += c;
        }
    }
    cells.push_back(cur);
    return cells;
}

TEST(Bench, csv_round_trips) {
    const Record r = sample();
    const auto head = split_csv(csv_header()), row = split_csv(to_csv(r));
    ASSERT_EQ(head.size(), row.size());
    std::map<std::string, std::string> m;
    for (size_t i = 0; i < head.size(); ++i) m[head[i]] = row[i];
    EXPECT_EQ(m["model_filename"], r.model_filename);
    EXPECT_EQ(m["n_gen"], "128");
    EXPECT_NEAR(std::stod(m["avg_ts"]), r.avg_ts(), 1e-6);
    EXPECT_EQ(std::count(m["samples_ns"].begin(), m["samples_ns"].end(), ';'), 2);
    // a speculative row lines up under the same header; a plain row leaves its columns empty
    Record d = r;
    d.draft_model = "draft.gguf";
    d.spec_acceptance = 0.75;
    d.spec_speedup = 1.5;
    const auto drow = split_csv(to_csv(d));
    ASSERT_EQ(head.size(), drow.size());
    std::map<std::string, std::string> dm;
    for (size_t i = 0; i < head.size(); ++i) dm[head[i]] = drow[i];
    EXPECT_EQ(dm["bigmoe_draft_model"], "draft.gguf");
    EXPECT_EQ(std::stod(dm["bigmoe_spec_speedup"]), 1.5);
    EXPECT_EQ(m["bigmoe_draft_model"], "");
    EXPECT_EQ(dm["n_gen"], "128");
}

TEST(Bench, markdown_has_llama_bench_layout) {
    Record a = sample(), b = sample();
    b.n_gen = 0;
    b.n_prompt = 512;
    b.flops_per_token = 7e8;
    const std::string md = to_markdown({a, b});
    std::istringstream in(md);
    std::string header, rule, row1, row2;
    std::getline(in, header);
    std::getline(in, rule);
    std::getline(in, row1);
    std::getline(in, row2);
    EXPECT_EQ(header, "| model | size | params | backend | threads | test | t/s | GB/s | % bw | TFLOP/s |");
    EXPECT_NE(row1.find("| tg128 |"), std::string::npos);
    EXPECT_NE(row1.find(" ± "), std::string::npos);
    EXPECT_NE(row2.find("| pp512 |"), std::string::npos);
    b.n_ubatch = 256;  // a non-default parameter gets its own column
    EXPECT_NE(to_markdown({a, b}).find("| n_ubatch |"), std::string::npos);
}

}  // namespace
}  // namespace bigmoe::bench
