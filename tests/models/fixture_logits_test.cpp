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
    auto engine = Engine::load(
        fixtures_dir() + "/" + j["model"].get<std::string>(),
        {.n_threads = n_threads, .n_gpu_layers = testing::test_gpu_layers(), .n_cpu_moe = testing::test_cpu_moe()});
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

// A q8_0 K and V cache against f16, on every fixture model's prompts, and the same bits fed in one
// batch or in micro-batches of 7 (values are quantized a row at a time, so the cache's bytes do
// not depend on the batch). Models with f32 weights: the 90th percentile of the positions within
// rel 1e-2 (beyond it a router's top-k may flip at a near-tie). Quantized models quantize their
// activations, so any change of a value moves their logits by about 1e-2 (an f32 cache against
// the f16 cache already does): there the q8_0 cache's median is at most twice the f32 cache's,
// and the 90th percentile within the fixtures' tolerance for quantized models (8e-2).
class QuantizedKv : public ::testing::TestWithParam<std::string> {};

TEST_P(QuantizedKv, q8_0_logits_within_1e_2_of_f16) {
    auto j = testing::read_json(GetParam());
    auto engine = Engine::load(
        fixtures_dir() + "/" + j["model"].get<std::string>(),
        {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers(), .n_cpu_moe = testing::test_cpu_moe()});
    ASSERT_TRUE(engine.ok()) << engine.error().message;
    if (!(*engine)->backend().supports(Op::attention, DType::Q8_0)) GTEST_SKIP() << "no q8_0 cache on this backend";
    const bool quantized = j["model"].get<std::string>().find("f32") == std::string::npos;
    std::set<std::vector<int32_t>> seen;
    for (const auto& c : j["cases"]) {
        const auto tokens = c["tokens"].get<std::vector<int32_t>>();
        if (!seen.insert(tokens).second) continue;  // each prompt once
        const size_t n_vocab = c["logits_shape"][1].get<size_t>();
        const std::string name = c["name"];
        auto run = [&](DType t, int64_t ubatch) {
            ContextParams cp;
            cp.n_ctx = int64_t(tokens.size());
            cp.n_ubatch = ubatch;
            cp.type_k = cp.type_v = t;
            auto ctx = (*engine)->new_context(cp);
            EXPECT_TRUE(ctx.ok()) << ctx.error().message;
            return ctx.ok() ? compute(**ctx, tokens, ubatch) : std::vector<float>{};
        };
        const auto f16 = run(DType::F16, 512), q8 = run(DType::Q8_0, 512);
        ASSERT_EQ(q8.size(), f16.size());
        const auto rel = testing::row_rel_errors(q8.data(), f16.data(), tokens.size(), n_vocab);
        const double median = testing::percentile(rel, 50), p90 = testing::percentile(rel, 90);
        if (std::getenv("BIGMOE_VERBOSE"))
            std::printf("%s %s q8_0 vs f16: median %.3e p90 %.3e max %.3e\n", GetParam().c_str(), name.c_str(), median,
                        p90, testing::percentile(rel, 100));
        if (!quantized) {
            EXPECT_LE(p90, 1e-2) << name;
        } else {
            const auto f32 = run(DType::F32, 512);
            const auto floor = testing::row_rel_errors(f32.data(), f16.data(), tokens.size(), n_vocab);
            EXPECT_LE(median, 2 * testing::percentile(floor, 50)) << name;
            EXPECT_LE(p90, 8e-2) << name;
        }
        EXPECT_EQ(run(DType::Q8_0, 7), q8) << name << ": micro-batches of 7 changed the bits";
    }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, QuantizedKv, ::testing::ValuesIn(testing::fixture_model_jsons()),
                         [](const ::testing::TestParamInfo<std::string>& i) {
                             std::string s = i.param.substr(i.param.rfind('/') + 1);
                             s = s.substr(0, s.size() - 5);
                             for (auto& ch : s)
                                 if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                             return s;
                         });

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
