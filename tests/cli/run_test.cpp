// `bigmoe run -f PROMPT -n 32 --temp 0 --ignore-eos` on the f32 fixtures prints the text of the
// reference's greedy_32 tokens (up to greedy_exact_until).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "gguf/gguf_file.h"
#include "testlib.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe {
namespace {

std::string run_capture(const std::string& cmd) {
    std::string out;
    FILE* p = popen(cmd.c_str(), "r");
    if (!p) return out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    pclose(p);
    return out;
}

TEST(Run, greedy_text_matches_reference_on_f32_fixtures) {
    int checked = 0;
    for (const auto& path : testing::fixture_model_jsons()) {
        const auto j = testing::read_json(path);
        const std::string model = testing::fixtures_dir() + "/" + j["model"].get<std::string>();
        auto file = gguf::GgufFile::open(model);
        ASSERT_TRUE(file.ok());
        auto tok = Tokenizer::from_gguf(**file);
        ASSERT_TRUE(tok.ok());
        for (const auto& c : j["cases"]) {
            if (!c.contains("greedy_32")) continue;
            const auto greedy = c["greedy_32"].get<std::vector<int32_t>>();
            const int until = c["greedy_exact_until"].get<int>();
            const std::string prompt_file =
                (std::filesystem::temp_directory_path() / ("bigmoe_run_prompt_" + std::to_string(::getpid()))).string();
            std::ofstream(prompt_file, std::ios::binary) << c["text"].get<std::string>();
            const std::string out = run_capture(std::string(BIGMOE_BIN) + " run -m " + model + " -f " + prompt_file +
                                                " -n 32 --temp 0 --ignore-eos -t 2 2>/dev/null");
            std::filesystem::remove(prompt_file);
            TextStream ts(**tok, false);
            std::string want;
            for (int i = 0; i < until; ++i) want += ts.push(greedy[size_t(i)]);
            EXPECT_EQ(out.substr(0, want.size()), want) << path << " " << c["name"];
            EXPECT_FALSE(out.empty());
            ++checked;
        }
    }
    EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace bigmoe
