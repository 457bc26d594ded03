// The engine against the reference engine's logits for every fixture model and case, fed as one
// batch, in micro-batches of 7, and token by token; greedy_32 for the f32 models.
#include <gtest/gtest.h>

#include <set>

#include "bigmoe/bigmoe.h"
#include "testlib.h"

namespace bigmoe {
namespace {

using testing::fixtures_dir;

// One test per (model, KV cache type, feeding mode); the cases of the model with that cache type
// are enumerated from its reference JSON.
struct Group {
    std::string model_json;
    std::string cache_type;
};

std::vector<Group> all_groups() {
    std::vector<Group> r;
    for (const auto& path : testing::fixture_model_jsons()) {
        std::set<std::string> types;
        const auto j = testing::read_json(path);
        for (const auto& c : j["cases"]) types.insert(c["cache_type_k"].get<std::string>());
        for (const auto& t : types) r.push_back({path, t});
    }
    return r;
}

class FixtureLogits : public ::testing::TestWithParam<Group> {};

DType cache_type(const std::string& s) {
    return *dtype_from_name(s);
}

std::vector<float> compute(Context& ctx, const std::vector<int32_t>& tokens, int64_t ubatch) {
    std::vector<float> logits;
    if (ubatch == 1) {  // token by token through separate decode calls
        for (int32_t t : tokens) {
            std::vector<float> one;
            EXPECT_TRUE(ctx.decode_seq(0, {t}, true, &one).ok());
            logits.insert(logits.end(), one.begin(), one.end());
        }
    } else {
        auto r = ctx.decode_seq(0, tokens, true, &logits);
        EXPECT_TRUE(r.ok()) << r.error().message;
    }
    return logits;
}

// f32 models: every position rel <= 1e-3 and greedy_32 equal up to greedy_exact_until.
// Quantized models: median rel <= 2e-2 and p90 <= 8e-2 over all positions of the model's
// prompts (the tolerance of ../shared/fixtures/README.md is stated per model).
void check_group(const Group& g, int64_t ubatch, int n_threads) {
    auto j = testing::read_json(g.model_json);
    auto engine = Engine::load(fixtures_dir() + "/" + j["model"].get<std::string>(),
                               {.n_threads = n_threads, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(engine.ok()) << engine.error().message;
    const bool quantized = j["model"].get<std::string>().find("f32") == std::string::npos;
    std::vector<double> pooled;
    for (const auto& c : j["cases"]) {
        if (c["cache_type_k"] != g.cache_type) continue;
        const auto tokens = c["tokens"].get<std::vector<int32_t>>();
        const size_t n_vocab = c["logits_shape"][1].get<size_t>();
        ContextParams cp;
        cp.n_ctx = int64_t(tokens.size()) + 40;
        cp.n_ubatch = ubatch;
        cp.type_k = cache_type(c["cache_type_k"]);
        cp.type_v = cache_type(c["cache_type_v"]);
        auto ctx = (*engine)->new_context(cp);
        ASSERT_TRUE(ctx.ok()) << ctx.error().message;
        const auto logits = compute(**ctx, tokens, ubatch);
        const auto ref = testing::read_f32(fixtures_dir() + "/" + c["logits"].get<std::string>());
        ASSERT_EQ(logits.size(), ref.size());
        const auto rel = testing::row_rel_errors(logits.data(), ref.data(), tokens.size(), n_vocab);
        if (std::getenv("BIGMOE_VERBOSE"))
            std::printf("%s %s ub=%lld median %.3e p90 %.3e max %.3e\n", g.model_json.c_str(),
                        c["name"].get<std::string>().c_str(), (long long)ubatch, testing::percentile(rel, 50),
                        testing::percentile(rel, 90), testing::percentile(rel, 100));
        pooled.insert(pooled.end(), rel.begin(), rel.end());
        if (!quantized) {
            for (size_t i = 0; i < rel.size(); ++i)
                EXPECT_LE(rel[i], 1e-3) << c["name"].get<std::string>() << " position " << i;
        }
        // Greedy continuation (f32 models): decode token by token after the prompt.
        if (c.contains("greedy_32") && ubatch != 1) {
            const auto greedy = c["greedy_32"].get<std::vector<int32_t>>();
            const int exact_until = c["greedy_exact_until"].get<int>();
            std::vector<float> last(logits.end() - int64_t(n_vocab), logits.end());
            for (int step = 0; step < exact_until; ++step) {
                const int32_t next = int32_t(std::max_element(last.begin(), last.end()) - last.begin());
                ASSERT_EQ(next, greedy[size_t(step)]) << c["name"].get<std::string>() << " greedy step " << step;
                ASSERT_TRUE((*ctx)->decode_seq(0, {next}, false, &last).ok());
            }
        }
    }
    ASSERT_FALSE(pooled.empty());
    if (quantized) {
        EXPECT_LE(testing::percentile(pooled, 50), 2e-2);
        EXPECT_LE(testing::percentile(pooled, 90), 8e-2);
    }
}

TEST_P(FixtureLogits, one_batch) {
    check_group(GetParam(), 512, 2);
}
TEST_P(FixtureLogits, micro_batches_of_7) {
    check_group(GetParam(), 7, 1);
}
TEST_P(FixtureLogits, token_by_token) {
    check_group(GetParam(), 1, 2);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FixtureLogits, ::testing::ValuesIn(all_groups()),
                         [](const ::testing::TestParamInfo<Group>& i) {
                             std::string s = i.param.model_json.substr(i.param.model_json.rfind('/') + 1);
                             s = s.substr(0, s.size() - 5) + "_kv" + i.param.cache_type;
                             for (auto& ch : s)
                                 if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                             return s;
                         });

}  // namespace
}  // namespace bigmoe
