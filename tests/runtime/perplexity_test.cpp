// Perplexity and KL divergence against float64 computations of the same logits, and the KL base
// file's refusals.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>

#include "bigmoe/bigmoe.h"
#include "runtime/perplexity.h"
#include "testlib.h"

namespace bigmoe {
namespace {

class Perplexity : public ::testing::Test {
  protected:
    void SetUp() override {
        auto e = Engine::load(testing::fixtures_dir() + "/models/qwen35-tiny-f32.gguf",
                              {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
        ASSERT_TRUE(e.ok()) << e.error().message;
        engine = std::move(*e);
        V = engine->model().hparams().n_vocab;
        std::mt19937 rng(testing::fresh_seed());
        // a "text" with some structure: runs that repeat, so the model is not equally lost everywhere
        for (int i = 0; i < 3 * 48 + 5; ++i) tokens.push_back(int32_t(i % 7 == 0 ? rng() % V : (i * 13) % V));
    }
    std::unique_ptr<Context> context(DType t) {
        ContextParams cp;
        cp.n_ctx = 48;
        cp.type_k = cp.type_v = t;
        return std::move(*engine->new_context(cp));
    }
    // The logits of every chunk of 48, each from an empty sequence.
    std::vector<std::vector<float>> chunk_logits(DType t) {
        auto ctx = context(t);
        std::vector<std::vector<float>> out;
        for (size_t c = 0; c + 48 <= tokens.size(); c += 48) {
            std::vector<float> l;
            ctx->clear(0);
            EXPECT_TRUE(ctx->decode_seq(0, {tokens.begin() + long(c), tokens.begin() + long(c) + 48}, true, &l).ok());
            out.push_back(l);
        }
        return out;
    }
    std::vector<double> log_softmax(const float* x) const {
        double mx = -INFINITY, s = 0;
        for (int64_t i = 0; i < V; ++i) mx = std::max(mx, double(x[i]));
        for (int64_t i = 0; i < V; ++i) s += std::exp(double(x[i]) - mx);
        std::vector<double> r(static_cast<size_t>(V));
        for (int64_t i = 0; i < V; ++i) r[size_t(i)] = double(x[i]) - mx - std::log(s);
        return r;
    }
    std::string temp(const char* name) const { return ::testing::TempDir() + "/bigmoe_ppl_" + name; }

    std::unique_ptr<Engine> engine;
    int64_t V = 0;
    std::vector<int32_t> tokens;
};

TEST_F(Perplexity, equals_float64_over_the_second_half_of_each_chunk) {
    auto ctx = context(DType::F32);
    std::vector<int64_t> seen;
    auto r = perplexity(*ctx, tokens, {.n_ctx = 48}, nullptr, nullptr,
                        [&](const PerplexityChunk& c) { seen.push_back(c.index); });
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->n_chunks, 3);  // the 5 tokens after the third chunk are not a chunk
    EXPECT_EQ(r->n_scored, 3 * 23);
    EXPECT_EQ(seen, (std::vector<int64_t>{0, 1, 2}));
    double nll = 0;
    int n = 0;
    const auto logits = chunk_logits(DType::F32);
    for (size_t c = 0; c < logits.size(); ++c)
        for (int64_t j = 24; j < 47; ++j) {
            nll -= log_softmax(logits[c].data() + j * V)[size_t(tokens[c * 48 + size_t(j) + 1])];
            ++n;
        }
    EXPECT_NEAR(r->nll, nll / n, 1e-9);
    EXPECT_NEAR(r->ppl, std::exp(nll / n), 1e-9 * r->ppl);
    EXPECT_GT(r->ppl_error, 0);
    EXPECT_FALSE(r->compared);
}

// A base saved with an f32 cache: the same configuration again diverges by the 16-bit rounding
// of the saved rows only; a q4_0 cache's divergence is what float64 gives from both logits.
TEST_F(Perplexity, kl_divergence_against_a_saved_base) {
    const std::string path = temp("base");
    double f32_ppl = 0;
    {
        auto w = KlBaseWriter::create(path, V, 48, tokens);
        ASSERT_TRUE(w.ok()) << w.error().message;
        auto ctx = context(DType::F32);
        auto r = perplexity(*ctx, tokens, {.n_ctx = 48}, w->get(), nullptr);
        ASSERT_TRUE(r.ok());
        f32_ppl = r->ppl;
        ASSERT_TRUE((*w)->finish().ok());
    }
    auto compare = [&](DType t) {
        auto base = KlBaseReader::open(path, V, 48, tokens);
        EXPECT_TRUE(base.ok()) << base.error().message;
        auto ctx = context(t);
        auto r = perplexity(*ctx, tokens, {.n_ctx = 48}, nullptr, base->get());
        EXPECT_TRUE(r.ok()) << r.error().message;
        return *r;
    };
    const PerplexityResult same = compare(DType::F32);
    ASSERT_TRUE(same.compared);
    EXPECT_LT(same.kl_max, 1e-7);
    EXPECT_EQ(same.top1_agreement, 1.0);
    EXPECT_NEAR(same.base_ppl, f32_ppl, 1e-6 * f32_ppl);  // the scored tokens' log-probabilities are kept exactly
    EXPECT_NEAR(same.ppl, f32_ppl, 1e-12 * f32_ppl);

    const PerplexityResult q4 = compare(DType::Q4_0);
    const auto a = chunk_logits(DType::F32), b = chunk_logits(DType::Q4_0);
    std::vector<double> kl;
    int agree = 0;
    for (size_t c = 0; c < a.size(); ++c)
        for (int64_t j = 24; j < 47; ++j) {
            const auto p = log_softmax(a[c].data() + j * V), q = log_softmax(b[c].data() + j * V);
            double d = 0;
            for (int64_t i = 0; i < V; ++i) d += std::exp(p[size_t(i)]) * (p[size_t(i)] - q[size_t(i)]);
            kl.push_back(d);
            agree +=
                std::max_element(p.begin(), p.end()) == p.begin() + (std::max_element(q.begin(), q.end()) - q.begin());
        }
    double mean = 0;
    for (double d : kl) mean += d;
    mean /= double(kl.size());
    EXPECT_GT(q4.kl_mean, 100 * same.kl_mean + 1e-7);
    EXPECT_NEAR(q4.kl_mean, mean, 1e-3 * mean + 1e-7);
    EXPECT_NEAR(q4.kl_max, *std::max_element(kl.begin(), kl.end()), 1e-3 * q4.kl_max + 1e-7);
    EXPECT_NEAR(q4.top1_agreement, double(agree) / double(kl.size()), 1e-12);
    EXPECT_NEAR(q4.base_ppl, f32_ppl, 1e-6 * f32_ppl);
    EXPECT_LE(q4.kl_median, q4.kl_p99);
    EXPECT_LE(q4.kl_p99, q4.kl_max);
    std::remove(path.c_str());
}

TEST_F(Perplexity, bad_bases_and_short_texts_are_refused) {
    const std::string path = temp("base2");
    {
        auto w = KlBaseWriter::create(path, V, 48, tokens);
        ASSERT_TRUE(w.ok());
        auto ctx = context(DType::F16);
        ASSERT_TRUE(perplexity(*ctx, tokens, {.n_ctx = 48, .n_chunks = 1}, w->get(), nullptr).ok());
        ASSERT_TRUE((*w)->finish().ok());
    }
    std::vector<int32_t> other = tokens;
    other[3] ^= 1;
    auto expect_refused = [&](Result<std::unique_ptr<KlBaseReader>> r, const char* what) {
        ASSERT_FALSE(r.ok()) << what;
        EXPECT_NE(r.error().message.find(what), std::string::npos) << r.error().message;
    };
    expect_refused(KlBaseReader::open(path, V, 48, other), "another text");
    expect_refused(KlBaseReader::open(path, V, 32, tokens), "chunks of 48");
    expect_refused(KlBaseReader::open(path, V + 1, 48, tokens), "vocabulary");
    expect_refused(KlBaseReader::open(temp("missing"), V, 48, tokens), "cannot read");
    // more chunks than the base holds
    auto base = KlBaseReader::open(path, V, 48, tokens);
    ASSERT_TRUE(base.ok()) << base.error().message;
    auto ctx = context(DType::F16);
    auto r = perplexity(*ctx, tokens, {.n_ctx = 48}, nullptr, base->get());
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("--chunks"), std::string::npos) << r.error().message;
    // a cut file, and one that is not a base at all
    {
        std::ifstream in(path, std::ios::binary);
        std::string bytes((std::istreambuf_iterator<char>(in)), {});
        std::ofstream(path, std::ios::binary).write(bytes.data(), long(bytes.size() - 7));
    }
    expect_refused(KlBaseReader::open(path, V, 48, tokens), "truncated");
    std::ofstream(path, std::ios::binary) << "hello, not a base file at all";
    expect_refused(KlBaseReader::open(path, V, 48, tokens), "not a KL-divergence base");
    std::remove(path.c_str());
    // a text shorter than one chunk
    auto s =
        perplexity(*ctx, std::vector<int32_t>(tokens.begin(), tokens.begin() + 20), {.n_ctx = 48}, nullptr, nullptr);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.error().message.find("fewer than one chunk"), std::string::npos) << s.error().message;
}

}  // namespace
}  // namespace bigmoe
