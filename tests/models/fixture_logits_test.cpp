// The engine against the reference engine's logits for every fixture model and case, fed as one
// batch, in micro-batches of 7, and token by token; greedy_32 for the f32 models.
#include <gtest/gtest.h>

#include "bigmoe/bigmoe.h"
#include "testlib.h"

namespace bigmoe {
namespace {

using testing::fixtures_dir;

struct Case {
    std::string model_json, name;
};

std::vector<Case> all_cases() {
    std::vector<Case> r;
    for (const auto& path : testing::fixture_model_jsons()) {
        auto j = testing::read_json(path);
        for (const auto& c : j["cases"]) r.push_back({path, c["name"].get<std::string>()});
    }
    return r;
}

class FixtureLogits : public ::testing::TestWithParam<Case> {};

DType cache_type(const std::string& s) { return *dtype_from_name(s); }

void check_case(const Case& tc, int64_t ubatch, int n_threads) {
    auto j = testing::read_json(tc.model_json);
    nlohmann::json c;
    for (const auto& x : j["cases"])
        if (x["name"] == tc.name) c = x;
    const std::string model_path = fixtures_dir() + "/" + j["model"].get<std::string>();
    auto engine = Engine::load(model_path, {.n_threads = n_threads});
    ASSERT_TRUE(engine.ok()) << engine.error().message;
    std::vector<int32_t> tokens = c["tokens"].get<std::vector<int32_t>>();
    ContextParams cp;
    cp.n_ctx = int64_t(tokens.size()) + 40;
    cp.n_ubatch = ubatch;
    cp.type_k = cache_type(c["cache_type_k"]);
    cp.type_v = cache_type(c["cache_type_v"]);
    auto ctx = (*engine)->new_context(cp);
    ASSERT_TRUE(ctx.ok()) << ctx.error().message;
    std::vector<float> logits;
    if (ubatch == 1) {
        // token by token through separate decode calls
        for (size_t i = 0; i < tokens.size(); ++i) {
            std::vector<float> one;
            ASSERT_TRUE((*ctx)->decode_seq(0, {tokens[i]}, true, &one).ok());
            logits.insert(logits.end(), one.begin(), one.end());
        }
    } else {
        auto r = (*ctx)->decode_seq(0, tokens, true, &logits);
        ASSERT_TRUE(r.ok()) << r.error().message;
    }
    const auto ref = testing::read_f32(fixtures_dir() + "/" + c["logits"].get<std::string>());
    const size_t n_vocab = c["logits_shape"][1].get<size_t>();
    ASSERT_EQ(logits.size(), ref.size());
    auto rel = testing::row_rel_errors(logits.data(), ref.data(), tokens.size(), n_vocab);
    if (std::getenv("BIGMOE_VERBOSE")) std::printf("%s %s ub=%lld median %.3e p90 %.3e max %.3e\n", tc.model_json.c_str(), tc.name.c_str(), (long long)ubatch, testing::percentile(rel, 50), testing::percentile(rel, 90), testing::percentile(rel, 100));
    if (std::getenv("BIGMOE_VERBOSE2")) for (double r : rel) std::printf("%.2e ", r);
    const bool quantized = j["model"].get<std::string>().find("f32") == std::string::npos;
    if (!quantized) {
        for (size_t i = 0; i < rel.size(); ++i) EXPECT_LE(rel[i], 1e-3) << "position " << i;
    } else {
        EXPECT_LE(testing::percentile(rel, 50), 2e-2);
        EXPECT_LE(testing::percentile(rel, 90), 8e-2);
    }
    // Greedy continuation (f32 models): decode token by token after the prompt.
    if (c.contains("greedy_32") && ubatch != 1) {
        const auto greedy = c["greedy_32"].get<std::vector<int32_t>>();
        const int exact_until = c["greedy_exact_until"].get<int>();
        std::vector<float> last(logits.end() - int64_t(n_vocab), logits.end());
        for (int step = 0; step < exact_until; ++step) {
            const int32_t next = int32_t(std::max_element(last.begin(), last.end()) - last.begin());
            ASSERT_EQ(next, greedy[size_t(step)]) << "greedy step " << step;
            ASSERT_TRUE((*ctx)->decode_seq(0, {next}, false, &last).ok());
        }
    }
}

TEST_P(FixtureLogits, one_batch) { check_case(GetParam(), 512, 2); }
TEST_P(FixtureLogits, micro_batches_of_7) { check_case(GetParam(), 7, 1); }
TEST_P(FixtureLogits, token_by_token) { check_case(GetParam(), 1, 2); }

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureLogits, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                             std::string s = i.param.model_json.substr(i.param.model_json.rfind('/') + 1);
                             s = s.substr(0, s.size() - 5) + "_" + i.param.name;
                             for (auto& ch : s)
                                 if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                             return s;
                         });

}  // namespace
}  // namespace bigmoe
