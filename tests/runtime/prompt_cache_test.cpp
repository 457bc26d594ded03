// The prompt cache is exact: for every architecture, the logits of the tokens processed after a
// cache hit are bit-identical to processing the whole prompt cold, for a hit at a prompt's end,
// at a checkpoint inside a prompt, after an edit in the middle of a prompt, after the tree splits
// and evicts, and from a state saved to a file and read back.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>

#include "bigmoe/bigmoe.h"
#include "runtime/prompt_cache.h"
#include "runtime/seq_file.h"
#include "testlib.h"

namespace bigmoe {
namespace {

std::vector<int32_t> tokens(int n, int salt, int64_t n_vocab) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(int32_t((i * 31 + salt * 17 + 3) % n_vocab));
    return t;
}

std::vector<int32_t> cat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

class PromptCacheExact : public ::testing::TestWithParam<std::string> {
  protected:
    void SetUp() override {
        const testing::ModelCase kv = testing::model_case(GetParam());
        auto e = Engine::load(testing::fixtures_dir() + "/models/" + kv.model,
                              {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
        ASSERT_TRUE(e.ok()) << e.error().message;
        engine = std::move(*e);
        V = engine->model().hparams().n_vocab;
        ContextParams cp;
        cp.n_ctx = 256;
        cp.n_seq_max = 2;
        cp.type_k = kv.type_k;
        cp.type_v = kv.type_v;
        auto c = engine->new_context(cp);
        ASSERT_TRUE(c.ok());
        ctx = std::move(*c);
    }
    // The logits of the tokens after the first `from` of `all`, processed cold in sequence 0.
    std::vector<float> cold(const std::vector<int32_t>& all, int64_t from) {
        ctx->clear(0);
        std::vector<float> l;
        EXPECT_TRUE(ctx->decode_seq(0, all, true, &l).ok());
        return {l.begin() + from * V, l.end()};
    }
    // Processes `t` in sequence 1 from its current state and returns every token's logits.
    std::vector<float> run(const std::vector<int32_t>& t) {
        std::vector<float> l;
        EXPECT_TRUE(ctx->decode_seq(1, t, true, &l).ok());
        return l;
    }
    // Restores the longest prefix of `all` (all but its last token at most), processes the rest
    // in sequence 1 and checks its logits against cold processing; returns the prefix length.
    int64_t hit(PromptCache& cache, const std::vector<int32_t>& all) {
        auto n = cache.restore(*ctx, 1, all, int64_t(all.size()) - 1);
        EXPECT_TRUE(n.ok()) << n.error().message;
        EXPECT_EQ(ctx->n_past(1), *n);
        const std::vector<float> got = run({all.begin() + *n, all.end()});
        const std::vector<float> want = cold(all, *n);
        EXPECT_EQ(got.size(), want.size());
        EXPECT_EQ(std::memcmp(got.data(), want.data(), std::min(got.size(), want.size()) * 4), 0)
            << "logits after a hit of " << *n << " tokens differ from cold processing";
        return *n;
    }
    // Processes `t` from scratch in sequence 1 and saves its state at the positions `at`.
    void prime(PromptCache& cache, const std::vector<int32_t>& t, const std::vector<int64_t>& at) {
        ctx->clear(1);
        int64_t done = 0;
        for (int64_t p : at) {
            run({t.begin() + done, t.begin() + p});
            ASSERT_TRUE(cache.save(*ctx, 1, {t.begin(), t.begin() + p}).ok());
            done = p;
        }
    }
    bool recurrent() const { return engine->model().hparams().n_recurrent_layers() > 0; }

    std::unique_ptr<Engine> engine;
    std::unique_ptr<Context> ctx;
    int64_t V = 0;
};

TEST_P(PromptCacheExact, hit_at_the_end_of_the_last_prompt) {
    PromptCache cache(uint64_t(1) << 30);
    const auto prompt = tokens(40, 1, V), next = tokens(9, 2, V);
    prime(cache, prompt, {40});
    EXPECT_EQ(hit(cache, cat(prompt, next)), 40);
    // the same prompt again, without its logits kept: all but its last token
    EXPECT_EQ(hit(cache, prompt), recurrent() ? 0 : 39) << "a snapshot at the end cannot give the last logits";
    const PromptCacheStats s = cache.stats();
    EXPECT_EQ(s.lookups, 2);
    EXPECT_GE(s.hits, 1);
}

TEST_P(PromptCacheExact, the_same_prompt_again_restores_everything_with_its_logits) {
    PromptCache cache(uint64_t(1) << 30);
    const auto prompt = tokens(33, 19, V);
    ctx->clear(1);
    const std::vector<float> l = run(prompt);
    const std::vector<float> last(l.end() - V, l.end());
    ASSERT_TRUE(cache.save(*ctx, 1, prompt, &last).ok());
    std::vector<float> got;
    auto n = cache.restore(*ctx, 1, prompt, int64_t(prompt.size()) - 1, &got);
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(*n, 33);
    EXPECT_EQ(ctx->n_past(1), 33);
    const std::vector<float> want = cold(prompt, 32);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0);
    // and the next token continues exactly
    const std::vector<int32_t> more = {int32_t(7 % V)};
    const std::vector<float> after = run(more);
    const std::vector<float> cold_after = cold(cat(prompt, more), 33);
    EXPECT_EQ(std::memcmp(after.data(), cold_after.data(), after.size() * 4), 0);
    // without asking for logits, all but the last token at most
    EXPECT_EQ(hit(cache, prompt), recurrent() ? 0 : 32);
}

TEST_P(PromptCacheExact, hit_at_a_checkpoint_inside_a_prompt) {
    PromptCache cache(uint64_t(1) << 30);
    const auto prompt = tokens(48, 3, V);
    prime(cache, prompt, {16, 32, 47, 48});
    auto edited = prompt;
    edited[40] = int32_t((edited[40] + 1) % V);  // an edit after the checkpoint at 32
    EXPECT_EQ(hit(cache, edited), recurrent() ? 32 : 40);
    auto early = prompt;
    early[5] = int32_t((early[5] + 7) % V);  // an edit before the first checkpoint: nothing to reuse
    EXPECT_EQ(hit(cache, early), recurrent() ? 0 : 5);
    EXPECT_EQ(hit(cache, cat(prompt, tokens(5, 4, V))), 48);
}

TEST_P(PromptCacheExact, divergent_prompts_split_the_tree_and_both_hit) {
    PromptCache cache(uint64_t(1) << 30);
    const auto a = tokens(30, 5, V);
    auto b = a;
    b.resize(20);
    b = cat(b, tokens(12, 6, V));  // shares 20 tokens with a
    prime(cache, a, {30});
    prime(cache, b, {10, 32});  // a snapshot inside the shared part, then b's end
    EXPECT_EQ(cache.stats().nodes, 3);
    EXPECT_EQ(hit(cache, cat(a, tokens(4, 7, V))), 30);
    EXPECT_EQ(hit(cache, cat(b, tokens(4, 8, V))), 32);
    auto c = a;
    c.resize(25);  // a's first 25 tokens and something new: the snapshot at 10 (or every row)
    EXPECT_EQ(hit(cache, cat(c, tokens(3, 9, V))), recurrent() ? 10 : 25);
}

TEST_P(PromptCacheExact, eviction_keeps_the_budget_and_what_is_left_is_exact) {
    const auto a = tokens(24, 10, V), b = tokens(24, 11, V), c = tokens(24, 12, V);
    PromptCache probe(uint64_t(1) << 30);
    prime(probe, a, {24});
    const uint64_t one = probe.stats().bytes;
    PromptCache cache(one * 2 + one / 2);  // room for two of the three
    prime(cache, a, {24});
    prime(cache, b, {24});
    EXPECT_EQ(hit(cache, cat(a, tokens(3, 13, V))), 24);  // a is now more recent than b
    prime(cache, c, {24});
    const PromptCacheStats s = cache.stats();
    EXPECT_LE(s.bytes, s.budget);
    EXPECT_EQ(s.evictions, 1);
    EXPECT_EQ(hit(cache, cat(b, tokens(3, 14, V))), 0) << "the least recently used entry goes first";
    EXPECT_EQ(hit(cache, cat(a, tokens(3, 15, V))), 24);
    EXPECT_EQ(hit(cache, cat(c, tokens(3, 16, V))), 24);
}

TEST_P(PromptCacheExact, a_state_saved_to_a_file_and_read_back_hits_exactly) {
    const auto prompt = tokens(28, 17, V);
    ctx->clear(1);
    run(prompt);
    auto state = read_seq_state(*ctx, 1, prompt);
    ASSERT_TRUE(state.ok()) << state.error().message;
    const std::string path = ::testing::TempDir() + "/bigmoe_seq_" + testing::model_case_name(GetParam());
    ASSERT_TRUE(write_seq_file(path, *ctx, *state).ok());
    auto back = read_seq_file(path, *ctx);
    ASSERT_TRUE(back.ok()) << back.error().message;
    EXPECT_EQ(back->tokens, prompt);
    PromptCache cache(uint64_t(1) << 30);  // a fresh cache, as in a restarted server
    ASSERT_TRUE(cache.insert(*ctx, *back).ok());
    EXPECT_EQ(hit(cache, cat(prompt, tokens(6, 18, V))), 28);
    std::remove(path.c_str());
}

INSTANTIATE_TEST_SUITE_P(Models, PromptCacheExact,
                         ::testing::Values("qwen35moe-tiny-f32.gguf", "qwen35-tiny-f32.gguf", "qwen3moe-tiny-f32.gguf",
                                           "qwen35moe-tiny-q4_k_m.gguf", "qwen3moe-tiny-q4_k_m.gguf",
                                           // quantized KV caches, K and V of different types
                                           "qwen35moe-tiny-f32.gguf|q4_0|q8_0",
                                           "qwen3moe-tiny-q4_k_m.gguf|q5_1|iq4_nl"),
                         [](const auto& info) { return testing::model_case_name(info.param); });

}  // namespace
}  // namespace bigmoe
