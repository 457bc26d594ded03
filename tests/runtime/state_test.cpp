// Sequence state operations and batch invariance, for every architecture: checkpoint/restore,
// remove-last-N, copy between sequences, several sequences in one batch, thread counts, and
// batch sizes must all give bit-identical logits.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "bigmoe/bigmoe.h"
#include "synth/synth.h"
#include "testlib.h"

namespace bigmoe {
namespace {

std::string synth_model(const std::string& arch, const std::string& quant) {
    return testing::small_model(arch, quant);
}

std::vector<std::string> models() {
    const std::string f = testing::fixtures_dir() + "/models/";
    return {f + "qwen35moe-tiny-f32.gguf", f + "qwen35-tiny-f32.gguf", f + "qwen3moe-tiny-f32.gguf",
            f + "qwen35moe-tiny-q4_k_m.gguf", synth_model("qwen35moe", "Q4_K_M"), synth_model("qwen35", "Q8_0"),
            synth_model("qwen3moe", "Q6_K"),
            // quantized KV caches, K and V of different types
            f + "qwen35moe-tiny-f32.gguf|q4_0|q8_0", f + "qwen3moe-tiny-q4_k_m.gguf|iq4_nl|q5_1",
            f + "qwen35moe-tiny-q4_k_m.gguf|q8_0|q4_1", f + "qwen35-tiny-f32.gguf|bf16|q5_0"};
}

std::vector<int32_t> some_tokens(int n, int salt, int64_t n_vocab) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(int32_t((i * 37 + salt * 11 + 5) % n_vocab));
    return t;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

class State : public ::testing::TestWithParam<std::string> {
  protected:
    void SetUp() override {
        kv = testing::model_case(GetParam());
        auto e = Engine::load(kv.model, {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
        ASSERT_TRUE(e.ok()) << e.error().message;
        engine = std::move(*e);
        n_vocab = engine->model().hparams().n_vocab;
    }
    std::unique_ptr<Context> context(int n_seq = 1, int64_t ubatch = 512) {
        return std::move(*engine->new_context(params(128, n_seq, ubatch)));
    }
    // A context's parameters with the case's cache types.
    ContextParams params(int64_t n_ctx, int n_seq = 1, int64_t ubatch = 512) const {
        ContextParams cp;
        cp.n_ctx = n_ctx;
        cp.n_seq_max = n_seq;
        cp.n_ubatch = ubatch;
        cp.type_k = kv.type_k;
        cp.type_v = kv.type_v;
        return cp;
    }
    std::vector<float> run(Context& c, int seq, const std::vector<int32_t>& t) {
        std::vector<float> l;
        auto r = c.decode_seq(seq, t, true, &l);
        EXPECT_TRUE(r.ok()) << r.error().message;
        return l;
    }
    testing::ModelCase kv;
    std::unique_ptr<Engine> engine;
    int64_t n_vocab = 0;
};

TEST_P(State, checkpoint_restore_gives_identical_logits) {
    auto c = context();
    const auto prompt = some_tokens(20, 1, n_vocab), more = some_tokens(9, 2, n_vocab);
    run(*c, 0, prompt);
    auto cp = c->checkpoint(0);
    ASSERT_TRUE(cp.ok());
    const auto first = run(*c, 0, more);
    run(*c, 0, some_tokens(5, 3, n_vocab));  // wander off further
    ASSERT_TRUE(c->restore(0, **cp).ok());
    EXPECT_EQ(c->n_past(0), 20);
    EXPECT_TRUE(same_bits(run(*c, 0, more), first));
}

TEST_P(State, remove_last_gives_identical_logits) {
    auto c = context();
    const auto prompt = some_tokens(20, 4, n_vocab), more = some_tokens(7, 5, n_vocab);
    run(*c, 0, prompt);
    const auto first = run(*c, 0, more);
    ASSERT_TRUE(c->remove_last(0, 7).ok());
    EXPECT_EQ(c->n_past(0), 20);
    // different tokens in between must leave no trace
    run(*c, 0, some_tokens(3, 6, n_vocab));
    ASSERT_TRUE(c->remove_last(0, 3).ok());
    EXPECT_TRUE(same_bits(run(*c, 0, more), first));
}

TEST_P(State, remove_last_past_the_depth_is_an_error) {
    auto c = context();
    run(*c, 0, some_tokens(40, 7, n_vocab));
    if (engine->model().hparams().n_recurrent_layers() > 0) {
        auto r = c->remove_last(0, 17);
        ASSERT_FALSE(r.ok());
        EXPECT_NE(r.error().message.find("at most 16"), std::string::npos) << r.error().message;
    }
    EXPECT_TRUE(c->remove_last(0, 16).ok());
    EXPECT_FALSE(c->remove_last(0, 100).ok());
}

TEST_P(State, two_sequences_in_one_batch_equal_each_alone) {
    const auto a = some_tokens(13, 8, n_vocab), b = some_tokens(9, 9, n_vocab);
    auto c1 = context();
    const auto alone_a = run(*c1, 0, a);
    c1->clear(0);
    const auto alone_b = run(*c1, 0, b);
    auto c2 = context(2);
    std::vector<BatchToken> batch;
    for (size_t i = 0; i < std::max(a.size(), b.size()); ++i) {  // interleaved
        if (i < a.size()) batch.push_back({a[i], 0, true});
        if (i < b.size()) batch.push_back({b[i], 1, true});
    }
    std::vector<float> l;
    ASSERT_TRUE(c2->decode(batch, &l).ok());
    std::vector<float> got_a, got_b;
    for (size_t i = 0; i < batch.size(); ++i) {
        auto& dst = batch[i].seq == 0 ? got_a : got_b;
        dst.insert(dst.end(), l.begin() + long(i * size_t(n_vocab)), l.begin() + long((i + 1) * size_t(n_vocab)));
    }
    EXPECT_TRUE(same_bits(got_a, alone_a));
    EXPECT_TRUE(same_bits(got_b, alone_b));
}

// (48 tokens: products of 16 or more tokens take the many-token kernels where the machine has
// them, dense and expert products alike)
TEST_P(State, batch_size_does_not_change_bits) {
    const auto t = some_tokens(48, 10, n_vocab);
    auto whole = context(1, 512);
    const auto ref = run(*whole, 0, t);
    for (int64_t ub : {1, 3, 7, 16, 20}) {
        auto c = context(1, ub);
        EXPECT_TRUE(same_bits(run(*c, 0, t), ref)) << "ubatch " << ub;
    }
    // token by token through separate calls
    auto c = context();
    std::vector<float> step;
    for (int32_t tok : t) {
        auto l = run(*c, 0, {tok});
        step.insert(step.end(), l.begin(), l.end());
    }
    EXPECT_TRUE(same_bits(step, ref));
}

// Contexts without snapshots (rollback depth 0: the recurrent state is updated in place, as in
// plain decoding) or with few compute the same bits; a checkpoint moves between them (bench's
// plain rows start from the speculative rows' state) and continues identically.
TEST_P(State, rollback_depth_does_not_change_bits) {
    const auto t = some_tokens(14, 16, n_vocab), more = some_tokens(5, 17, n_vocab);
    auto deep = context();
    const auto ref = run(*deep, 0, t);
    auto cp = deep->checkpoint(0);
    ASSERT_TRUE(cp.ok());
    const auto ref_more = run(*deep, 0, more);
    for (int depth : {0, 1}) {
        ContextParams p = params(128, 1, 3);  // several micro-batches: states carried from one to the next
        p.rollback_depth = depth;
        auto c = engine->new_context(p);
        ASSERT_TRUE(c.ok());
        EXPECT_TRUE(same_bits(run(**c, 0, t), ref)) << "depth " << depth;
        std::vector<float> step;
        for (int32_t tok : more) {
            auto l = run(**c, 0, {tok});
            step.insert(step.end(), l.begin(), l.end());
        }
        EXPECT_TRUE(same_bits(step, ref_more)) << "depth " << depth;
        if (engine->model().hparams().n_recurrent_layers() > 0) {
            EXPECT_FALSE((*c)->remove_last(0, depth + 1).ok()) << "depth " << depth;
        }
        ASSERT_TRUE((*c)->restore(0, **cp).ok());
        EXPECT_TRUE(same_bits(run(**c, 0, more), ref_more)) << "depth " << depth;
    }
}

TEST_P(State, thread_count_does_not_change_bits) {
    if (testing::test_gpu_layers() != 0) GTEST_SKIP() << "CPU threads do not apply on the GPU";
    const auto t = some_tokens(12, 11, n_vocab);
    const auto two = run(*context(), 0, t);
    auto e1 = Engine::load(kv.model, {.n_threads = 1});
    ASSERT_TRUE(e1.ok());
    auto c1 = (*e1)->new_context(params(64));
    ASSERT_TRUE(c1.ok());
    std::vector<float> one;
    ASSERT_TRUE((*c1)->decode_seq(0, t, true, &one).ok());
    EXPECT_TRUE(same_bits(one, two));
}

// The CUDA backend replays repeated decode steps as graphs; a backend that runs every op as it
// comes (BIGMOE_CUDA_GRAPHS=0) gives the same bits, step after step.
TEST_P(State, graph_replay_does_not_change_bits) {
    if (testing::test_gpu_layers() == 0) GTEST_SKIP() << "step graphs are the CUDA backend's";
    ::setenv("BIGMOE_CUDA_GRAPHS", "0", 1);
    auto plain = Engine::load(kv.model, {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    ::unsetenv("BIGMOE_CUDA_GRAPHS");
    ASSERT_TRUE(plain.ok()) << plain.error().message;
    const ContextParams cp = params(128);
    auto a = engine->new_context(cp);
    auto b = (*plain)->new_context(cp);
    ASSERT_TRUE(a.ok() && b.ok());
    const auto t = some_tokens(12, 18, n_vocab);
    for (size_t i = 0; i < t.size(); ++i) {
        // steps of one token, then of two (another recorded shape)
        const std::vector<int32_t> step = i < 6 ? std::vector<int32_t>{t[i]} : std::vector<int32_t>{t[i], t[i]};
        ASSERT_TRUE(same_bits(run(**a, 0, step), run(**b, 0, step))) << "step " << i;
    }
}

// Greedy tokens found by the backend (Context::decode with `argmax`, decode_greedy) are the argmax
// of the logits it returns otherwise: steps of one token, of a draft's four, two sequences in one
// batch, a batch over several micro-batches; steps with and without logits interleaved (a GPU
// records them apart).
TEST_P(State, greedy_tokens_are_the_argmax_of_the_logits) {
    auto a = context(2, 4), b = context(2, 4);
    const auto t = some_tokens(24, 21, n_vocab);
    size_t at = 0;
    for (int step = 0; step < 10; ++step) {
        std::vector<BatchToken> batch;
        const int n = step % 3 == 0 ? 1 : step % 3 == 1 ? 4 : 6;  // 6: two sequences, two micro-batches
        for (int i = 0; i < n; ++i) batch.push_back({t[at++ % t.size()], n == 6 ? i % 2 : 0, n != 1 || i == 0});
        std::vector<float> logits, both_logits;
        std::vector<int32_t> ids, both_ids;
        ASSERT_TRUE(a->decode(batch, &logits).ok());
        ASSERT_TRUE((step % 2 ? b->decode(batch, nullptr, &ids) : b->decode(batch, &both_logits, &ids)).ok());
        ASSERT_EQ(ids.size() * size_t(n_vocab), logits.size());
        for (size_t r = 0; r < ids.size(); ++r) {
            EXPECT_EQ(ids[r], testing::first_largest(logits.data() + r * size_t(n_vocab), n_vocab))
                << "step " << step << ", row " << r;
        }
        if (step % 2 == 0) {
            EXPECT_TRUE(same_bits(both_logits, logits)) << "step " << step;
        }
    }
    // a row read back after the greedy tokens is the row decode returns; of a batch over two
    // micro-batches, only the last one's rows are held
    std::vector<BatchToken> batch;
    for (int i = 0; i < 6; ++i) batch.push_back({t[size_t(i)], 0, true});
    std::vector<float> l, row;
    std::vector<int32_t> ids;
    ASSERT_TRUE(a->decode(batch, &l).ok());
    ASSERT_TRUE(b->decode(batch, nullptr, &ids).ok());
    for (int64_t r = 0; r < 6; ++r) {
        const auto got = b->read_logits(r, &row);
        EXPECT_EQ(got.ok(), r >= 4) << "row " << r;
        if (got.ok()) {
            EXPECT_TRUE(same_bits(row, std::vector<float>(l.begin() + r * n_vocab, l.begin() + (r + 1) * n_vocab)));
        }
    }
    EXPECT_FALSE(b->read_logits(6, &row).ok());
    ASSERT_TRUE(a->decode_seq(1, {t[3]}, false, &l).ok());
    auto g = b->decode_greedy(1, {t[3]});
    ASSERT_TRUE(g.ok()) << g.error().message;
    EXPECT_EQ(*g, testing::first_largest(l.data(), n_vocab));
    EXPECT_FALSE(b->decode_greedy(0, {}).ok());
}

// A greedy chain (Context::decode_greedy_chain; on the GPU each step starts before the host has
// read the token before it) is greedy decoding a step at a time: the same tokens, the sequence
// length each answer is given, and after each way of stopping (a token dropped, a token kept,
// the step limit, the context full) the same length, held logits and state as the steps taken
// one by one, which a second chain then continues.
TEST_P(State, greedy_chain_is_greedy_decoding_step_by_step) {
    const auto prompt = some_tokens(7, 31, n_vocab);
    const int64_t P = int64_t(prompt.size());
    const int32_t x = some_tokens(1, 33, n_vocab)[0];
    // the reference: t[i + 1] the argmax of L[i], the logits after t[i]
    std::vector<int32_t> t = {some_tokens(1, 32, n_vocab)[0]};
    std::vector<std::vector<float>> L;
    auto r = context();
    run(*r, 0, prompt);
    for (int i = 0; i < 8; ++i) {
        L.push_back(run(*r, 0, {t.back()}));
        t.push_back(testing::first_largest(L.back().data(), n_vocab));
    }
    // after `processed` of t: the three greedy tokens from x on, and the logits then held
    auto continued = [&](int64_t processed, std::vector<int32_t>& ids, std::vector<float>& held) {
        auto c = context();
        run(*c, 0, prompt);
        for (int64_t i = 0; i < processed; ++i) run(*c, 0, {t[size_t(i)]});
        ids = {testing::first_largest(run(*c, 0, {x}).data(), n_vocab)};
        for (int i = 0; i < 2; ++i) ids.push_back(testing::first_largest(run(*c, 0, {ids.back()}).data(), n_vocab));
        ASSERT_TRUE(c->read_logits(0, &held).ok());
    };
    enum Mode { dropped, kept, limit, full };
    for (Mode mode : {dropped, kept, limit, full}) {
        for (int64_t k : {1, 4}) {
            const std::string what = "mode " + std::to_string(int(mode)) + ", k " + std::to_string(k);
            auto c = std::move(*engine->new_context(params(mode == full ? P + k : 128)));
            run(*c, 0, prompt);
            std::vector<int32_t> got;
            GreedyChain gc;
            if (mode == limit) gc = {k, false};
            auto res = c->decode_greedy_chain(0, t[0], gc, [&](int32_t id, int64_t n_past) {
                EXPECT_EQ(n_past, P + int64_t(got.size()) + 1) << what;
                got.push_back(id);
                if (mode == full) return n_past >= P + k ? ChainNext::stop_dropped : ChainNext::more;
                if (mode == limit || int64_t(got.size()) < k) return ChainNext::more;
                return mode == kept ? ChainNext::stop_kept : ChainNext::stop_dropped;
            });
            ASSERT_TRUE(res.ok()) << what << ": " << res.error().message;
            const int64_t processed = mode == kept ? k + 1 : k;
            EXPECT_EQ(got, std::vector<int32_t>(t.begin() + 1, t.begin() + 1 + k)) << what;
            EXPECT_EQ(c->n_past(0), P + processed) << what;
            std::vector<float> held;
            ASSERT_TRUE(c->read_logits(0, &held).ok()) << what;
            EXPECT_TRUE(same_bits(held, L[size_t(processed - 1)])) << what;
            if (mode == full) {
                EXPECT_FALSE(c->decode_greedy_chain(0, x, {}, [](int32_t, int64_t) { return ChainNext::more; }).ok());
                continue;
            }
            std::vector<int32_t> want, chain;
            std::vector<float> want_held;
            continued(processed, want, want_held);
            res = c->decode_greedy_chain(0, x, {3, false}, [&](int32_t id, int64_t) {
                chain.push_back(id);
                return ChainNext::more;
            });
            ASSERT_TRUE(res.ok()) << what << ": " << res.error().message;
            EXPECT_EQ(chain, want) << what;
            ASSERT_TRUE(c->read_logits(0, &held).ok()) << what;
            EXPECT_TRUE(same_bits(held, want_held)) << what;
        }
    }
}

TEST_P(State, copy_sequence_continues_identically) {
    auto c = context(2);
    run(*c, 0, some_tokens(15, 12, n_vocab));
    ASSERT_TRUE(c->copy_seq(0, 1).ok());
    EXPECT_EQ(c->n_past(1), 15);
    const auto more = some_tokens(6, 13, n_vocab);
    EXPECT_TRUE(same_bits(run(*c, 1, more), run(*c, 0, more)));
}

TEST_P(State, logits_are_finite) {
    auto c = context();
    for (float x : run(*c, 0, some_tokens(10, 14, n_vocab))) ASSERT_TRUE(std::isfinite(x));
}

TEST_P(State, bad_input_is_an_error) {
    auto c = context();
    std::vector<float> l;
    EXPECT_FALSE(c->decode_seq(0, {int32_t(n_vocab)}, true, &l).ok());
    EXPECT_FALSE(c->decode_seq(0, {-1}, true, &l).ok());
    EXPECT_FALSE(c->decode({{1, 5, true}}, &l).ok());
    EXPECT_FALSE(c->decode_seq(0, std::vector<int32_t>(200, 1), true, &l).ok());  // beyond n_ctx
    EXPECT_EQ(c->n_past(0), 0);
}

INSTANTIATE_TEST_SUITE_P(Models, State, ::testing::ValuesIn(models()), [](const auto& i) {
    std::string s = testing::model_case_name(i.param);
    const size_t pid = s.find("_" + std::to_string(::getpid()));
    return pid == std::string::npos ? s : s.substr(0, pid);
});

}  // namespace
}  // namespace bigmoe
