// Speculative decoding is exact: with greedy sampling, output with a draft model is identical to
// plain decoding for every fixture architecture as target (the dense qwen35 fixture drafts), for
// every draft_max in 1..16 and across micro-batch sizes; after every step the target's logits
// equal, bit for bit, those of a run that never saw the rejected tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <random>

#include "bigmoe/bigmoe.h"
#include "runtime/generator.h"
#include "runtime/grammar.h"
#include "runtime/json_constraint.h"
#include "runtime/scheduler.h"
#include "runtime/speculative.h"
#include "synth/synth.h"
#include "testlib.h"

namespace bigmoe {
namespace {

std::string model(const std::string& name) {
    return testing::fixtures_dir() + "/models/" + name;
}

std::vector<int32_t> prompt() {
    auto j = testing::read_json(testing::fixtures_dir() + "/ref/qwen35-tiny-f32.json");
    return j["cases"][2]["tokens"].get<std::vector<int32_t>>();  // the chat prompt
}

struct Plain {
    std::vector<int32_t> tokens;
    std::vector<std::vector<float>> logits;  // logits before each generated token
};

Plain plain_greedy(Engine& e, const std::vector<int32_t>& p, int n, int64_t ub) {
    ContextParams cp;
    cp.n_ctx = 256;
    cp.n_ubatch = ub;
    auto c = e.new_context(cp);
    EXPECT_TRUE(c.ok());
    Plain r;
    std::vector<float> l;
    EXPECT_TRUE((*c)->decode_seq(0, p, false, &l).ok());
    for (int i = 0; i < n; ++i) {
        r.logits.push_back(l);
        const int32_t t = int32_t(std::max_element(l.begin(), l.end()) - l.begin());
        r.tokens.push_back(t);
        EXPECT_TRUE((*c)->decode_seq(0, {t}, false, &l).ok());
    }
    return r;
}

// A target and a draft context (n_ctx 256, micro-batch ub) both holding the prompt p; `logits`
// are the target's for the position after it.
struct Prefilled {
    std::unique_ptr<Context> target, draft;
    std::vector<float> logits;
};

Prefilled prefilled(Engine& target, Engine& draft, const std::vector<int32_t>& p, int64_t ub = 512) {
    ContextParams cp;
    cp.n_ctx = 256;
    cp.n_ubatch = ub;
    auto tc = target.new_context(cp);
    auto dc = draft.new_context(cp);
    Prefilled r;
    if (!tc.ok() || !dc.ok()) return r;
    r.target = std::move(*tc);
    r.draft = std::move(*dc);
    std::vector<float> dl;
    if (!r.target->decode_seq(0, p, false, &r.logits).ok() || !r.draft->decode_seq(0, p, false, &dl).ok())
        r.target.reset();
    return r;
}

class Speculative : public ::testing::TestWithParam<std::string> {};

TEST_P(Speculative, greedy_output_identical_for_every_draft_max) {
    auto target = Engine::load(model(GetParam()), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    auto draft =
        Engine::load(model("qwen35-tiny-f32.gguf"), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(target.ok() && draft.ok());
    ASSERT_TRUE(check_draft_compatible((*target)->model(), (*draft)->model()).ok());
    const auto p = prompt();
    const int n = 40;
    for (int64_t ub : {int64_t(512), int64_t(3)}) {
        const Plain want = plain_greedy(**target, p, n, ub);
        // every fixed draft length, then adaptive lengths (capped at 4 and at 16)
        for (int run = 1; run <= 18; ++run) {
            const int dmax = run <= 16 ? run : run == 17 ? 4 : 16;
            const bool adaptive = run > 16;
            Prefilled s = prefilled(**target, **draft, p, ub);
            ASSERT_TRUE(s.target);
            std::vector<float>& logits = s.logits;
            SpeculativeDecoder sd(*s.target, *s.draft, {dmax, 0, 0.0f, adaptive});
            std::vector<int32_t> got;
            while (int(got.size()) < n) {
                // rollback check: the logits for the next position are those of the plain run
                if (got.size() < want.logits.size()) {
                    ASSERT_EQ(std::memcmp(logits.data(), want.logits[got.size()].data(), logits.size() * 4), 0)
                        << "draft_max " << dmax << (adaptive ? " adaptive" : "") << " position " << got.size();
                }
                ASSERT_TRUE(sd.step_greedy(logits, got).ok());
            }
            got.resize(size_t(n));
            EXPECT_EQ(got, want.tokens) << GetParam() << " draft_max " << dmax << (adaptive ? " adaptive" : "")
                                        << " ubatch " << ub;
            EXPECT_GT(sd.stats().steps, 0);
        }
    }
}

// Two sequences decoding with a draft at once: every step drafts for both in shared draft
// batches and verifies both in one target batch; each sequence's output and logits are those of
// plain decoding of its own prompt, though the sequences accept different numbers of tokens.
TEST_P(Speculative, two_sequences_at_once_identical) {
    auto target = Engine::load(model(GetParam()), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    auto draft =
        Engine::load(model("qwen35-tiny-f32.gguf"), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(target.ok() && draft.ok());
    auto j = testing::read_json(testing::fixtures_dir() + "/ref/qwen35-tiny-f32.json");
    const std::vector<std::vector<int32_t>> prompts = {prompt(), j["cases"][0]["tokens"].get<std::vector<int32_t>>()};
    const int n = 32;
    std::vector<Plain> want;
    for (const auto& p : prompts) want.push_back(plain_greedy(**target, p, n, 512));
    for (int64_t ub : {int64_t(512), int64_t(5)}) {
        for (int dmax : {1, 3, 8}) {
            ContextParams cp;
            cp.n_ctx = 256;
            cp.n_seq_max = 2;
            cp.n_ubatch = ub;
            auto tc = (*target)->new_context(cp);
            auto dc = (*draft)->new_context(cp);
            ASSERT_TRUE(tc.ok() && dc.ok());
            std::vector<std::vector<float>> logits(2);
            std::vector<std::vector<int32_t>> got(2);
            std::vector<SpeculativeDecoder> sds;
            for (int s = 0; s < 2; ++s) {
                std::vector<float> dl;
                ASSERT_TRUE((*tc)->decode_seq(s, prompts[size_t(s)], false, &logits[size_t(s)]).ok());
                ASSERT_TRUE((*dc)->decode_seq(s, prompts[size_t(s)], false, &dl).ok());
                sds.emplace_back(**tc, **dc, SpecParams{dmax, 0, 0.0f}, s);
            }
            while (int(got[0].size()) < n || int(got[1].size()) < n) {
                for (size_t s = 0; s < 2; ++s) {
                    if (got[s].size() < want[s].logits.size()) {
                        ASSERT_EQ(
                            std::memcmp(logits[s].data(), want[s].logits[got[s].size()].data(), logits[s].size() * 4),
                            0)
                            << "sequence " << s << " draft_max " << dmax << " position " << got[s].size();
                    }
                }
                ASSERT_TRUE(SpeculativeDecoder::step_greedy_batch({&sds[0], &sds[1]}, {&logits[0], &logits[1]},
                                                                  {&got[0], &got[1]})
                                .ok());
            }
            for (size_t s = 0; s < 2; ++s) {
                got[s].resize(size_t(n));
                EXPECT_EQ(got[s], want[s].tokens) << GetParam() << " sequence " << s << " draft_max " << dmax;
            }
        }
    }
}

INSTANTIATE_TEST_SUITE_P(Targets, Speculative,
                         ::testing::Values("qwen35moe-tiny-f32.gguf", "qwen3moe-tiny-f32.gguf", "qwen35-tiny-f32.gguf",
                                           "qwen35moe-tiny-q4_k_m.gguf"),
                         [](const auto& i) {
                             std::string s = i.param.substr(0, i.param.size() - 5);
                             for (auto& c : s)
                                 if (!isalnum(static_cast<unsigned char>(c))) c = '_';
                             return s;
                         });

// --draft-p-min's measure against a float64 softmax, on rows of every length mod 16 (vector body
// and scalar tail), with -inf entries and a vocabulary-sized row.
TEST(SpeculativeConfidence, top_probability_matches_float64) {
    const uint32_t seed = testing::fresh_seed();
    std::mt19937 rng(seed);
    EXPECT_EQ(top_probability(nullptr, 0), 0.0f);
    for (int64_t n : {1, 5, 16, 17, 47, 151936}) {
        for (float spread : {0.5f, 4.0f, 40.0f}) {
            auto x = testing::random_floats(rng, size_t(n), -spread, spread);
            if (n > 3) x[2] = -INFINITY;
            double mx = -INFINITY, z = 0;
            for (float v : x) mx = std::max(mx, double(v));
            for (float v : x) z += std::exp(double(v) - mx);
            EXPECT_NEAR(top_probability(x.data(), n), 1 / z, 2e-6 / z) << "n=" << n << " seed=" << seed;
        }
    }
}

// A draft whose confidence never reaches --draft-p-min drafts nothing (every step is plain), one
// that always does drafts as without it; the output is the plain run's either way.
TEST(SpeculativeConfidence, draft_p_min_stops_drafting) {
    auto target =
        Engine::load(model("qwen35moe-tiny-q8_0.gguf"), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    auto draft =
        Engine::load(model("qwen35-tiny-f32.gguf"), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(target.ok() && draft.ok());
    const auto p = prompt();
    const int n = 24;
    const Plain want = plain_greedy(**target, p, n, 512);
    for (float p_min : {0.0f, 1e-9f, 1.01f}) {
        Prefilled s = prefilled(**target, **draft, p);
        ASSERT_TRUE(s.target);
        SpeculativeDecoder sd(*s.target, *s.draft, {4, 0, p_min, false});
        std::vector<int32_t> got;
        while (int(got.size()) < n) ASSERT_TRUE(sd.step_greedy(s.logits, got).ok());
        got.resize(size_t(n));
        EXPECT_EQ(got, want.tokens) << "p_min " << p_min;
        if (p_min > 1)
            EXPECT_EQ(sd.stats().drafted, 0);
        else
            EXPECT_EQ(sd.stats().drafted, 4 * sd.stats().steps) << "p_min " << p_min;
    }
}

TEST(SpeculativeCompat, different_vocabularies_are_a_clear_error) {
    auto a = Engine::load(model("qwen35-tiny-f32.gguf"), {.n_threads = 1, .n_gpu_layers = testing::test_gpu_layers()});
    auto b =
        Engine::load(model("qwen3moe-tiny-f32.gguf"), {.n_threads = 1, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(check_draft_compatible((*a)->model(), (*b)->model()).ok());  // the same 512-token vocabulary
    synth::Spec s;
    s.arch = "qwen35";
    s.n_embd = 256;
    s.n_layer = 2;
    s.vocab = synth::byte_vocab();  // 261 tokens
    const std::string path =
        (std::filesystem::temp_directory_path() / ("bigmoe_spec_" + std::to_string(::getpid()) + ".gguf")).string();
    ASSERT_TRUE(synth::write_file(s, path).ok());
    auto c = Engine::load(path, {.n_threads = 1, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(c.ok());
    auto r = check_draft_compatible((*a)->model(), (*c)->model());
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("vocabulary"), std::string::npos) << r.error().message;
    std::filesystem::remove(path);
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// Speculative sampling keeps the target's distribution: draft x ~ q, verify with the rule, and the
// output tokens follow p (chi-square over 300,000 draws on a 6-token vocabulary).
TEST(SpeculativeSampling, verify_rule_preserves_the_target_distribution) {
    std::mt19937_64 rng(testing::fresh_seed());
    std::uniform_real_distribution<double> U(0.0, 1.0);
    const Dist p = {{0, 0.35}, {1, 0.25}, {2, 0.2}, {3, 0.1}, {4, 0.07}, {5, 0.03}};
    const Dist q = {{0, 0.1}, {1, 0.4}, {2, 0.05}, {3, 0.3}, {5, 0.15}};  // token 4 never drafted
    const int n = 300000;
    std::vector<int> hist(6, 0);
    int accepted_count = 0;
    for (int i = 0; i < n; ++i) {
        double u = U(rng), cum = 0;
        int32_t x = q.back().first;
        for (auto& [t, pr] : q) {
            cum += pr;
            if (u < cum) {
                x = t;
                break;
            }
        }
        bool acc = false;
        ++hist[size_t(speculative_verify(p, q, x, U(rng), U(rng), &acc))];
        accepted_count += acc;
    }
    double chi2 = 0;
    for (auto& [t, pr] : p) chi2 += (hist[size_t(t)] - pr * n) * (hist[size_t(t)] - pr * n) / (pr * n);
    // 5 degrees of freedom: p = 1e-4 at chi2 = 25.7
    EXPECT_LT(chi2, 25.7) << "chi2 " << chi2;
    // the acceptance rate is sum_t min(p, q) = 0.1 + 0.25 + 0.05 + 0.1 + 0 + 0.03 = 0.53
    EXPECT_NEAR(double(accepted_count) / n, 0.53, 0.01);
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// Sampled speculative decoding runs with rollbacks and keeps both contexts consistent.
TEST(SpeculativeSampling, decoder_keeps_state_consistent) {
    auto target =
        Engine::load(model("qwen35moe-tiny-f32.gguf"), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    auto draft =
        Engine::load(model("qwen35-tiny-f32.gguf"), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(target.ok() && draft.ok());
    const auto p = prompt();
    Prefilled s = prefilled(**target, **draft, p);
    ASSERT_TRUE(s.target);
    SamplerParams sp;
    sp.temp = 1.5f;
    sp.top_k = 0;
    sp.top_p = 1;
    sp.min_p = 0;
    Sampler ts(sp), ds(sp);
    SpeculativeDecoder sd(*s.target, *s.draft, {4, 0, 0.0f});
    std::vector<int32_t> out;
    while (out.size() < 40) {
        ASSERT_TRUE(sd.step_sampled(ts, ds, s.logits, out).ok());
        // the target holds exactly the prompt and the emitted tokens
        EXPECT_EQ(s.target->n_past(0), int64_t(p.size() + out.size()));
    }
    for (int32_t t : out) EXPECT_TRUE(t >= 0 && t < 512);
    EXPECT_GT(sd.stats().drafted, 0);
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// Sampled requests run to the end through one scheduler of 16 sequences (with a draft when given).
std::vector<GenerateResult> run_sampled(Engine& target, const Tokenizer& tok, Engine* draft,
                                        const std::vector<Request>& reqs) {
    auto ctx = target.new_context({.n_ctx = 64, .n_seq_max = 16});
    EXPECT_TRUE(ctx.ok());
    std::unique_ptr<Context> dctx;
    Scheduler sched(**ctx, tok, {.prefill_budget = 64, .draft_max = 1});
    if (draft) {
        auto d = draft->new_context({.n_ctx = 64, .n_seq_max = 16});
        EXPECT_TRUE(d.ok());
        dctx = std::move(*d);
        EXPECT_TRUE(sched.set_draft(dctx.get()).ok());
    }
    std::vector<GenerateResult> got(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
        Request r = reqs[i];
        r.on_done = [&got, i](const GenerateResult& res, const Error*) { got[i] = res; };
        EXPECT_TRUE(sched.submit(std::move(r)).ok());
    }
    for (;;) {
        auto busy = sched.step();
        EXPECT_TRUE(busy.ok());
        if (!busy.ok() || (!*busy && sched.waiting() == 0)) break;
    }
    return got;
}

Request sampled_request(const Tokenizer& tok, uint64_t seed) {
    Request r;
    r.prompt = tok.encode("Hello", true);
    r.sampler.temp = 1.5f;
    r.sampler.seed = seed;
    r.gen.n_predict = 2;
    r.gen.ignore_eos = true;
    return r;
}

// Speculative sampling in the scheduler keeps the target's distribution: the first two tokens
// of many sampled requests (top-k 2: four outcomes) drafted by the target's weights quantized
// (proposals taken and refused, the residual drawn) against the same requests decoded plainly.
// Resampling instead of drawing the residual puts the total variation at ~0.11 here, taking
// every proposal at ~0.76; the sampling noise of 1500 requests is ~0.01-0.03.
TEST(SpeculativeSampling, the_scheduler_keeps_the_distribution) {
    struct {
        std::unique_ptr<Engine> engine;
        std::unique_ptr<Tokenizer> tok;
    } l;
    auto target = Engine::load(model("qwen35moe-tiny-f32.gguf"), {.n_threads = 2});
    ASSERT_TRUE(target.ok());
    l.engine = std::move(*target);
    auto tok = Tokenizer::from_gguf(l.engine->file());
    ASSERT_TRUE(tok.ok());
    l.tok = std::move(*tok);
    // the target's weights quantized: proposals are often, not always, what the target draws
    auto other = Engine::load(model("qwen35moe-tiny-q4_k_m.gguf"), {.n_threads = 2});
    ASSERT_TRUE(other.ok());
    constexpr int n = 1500;
    std::vector<Request> reqs;
    for (int i = 0; i < n; ++i) {
        reqs.push_back(sampled_request(*l.tok, uint64_t(1000 + i)));
        reqs.back().sampler.top_k = 2;
        reqs.back().sampler.top_p = 1.0f;
        reqs.back().sampler.min_p = 0.0f;
    }
    auto histogram = [](const std::vector<GenerateResult>& rs) {
        std::map<std::pair<int32_t, int32_t>, double> h;
        for (const GenerateResult& r : rs) {
            EXPECT_EQ(r.tokens.size(), 2u);
            if (r.tokens.size() == 2) h[{r.tokens[0], r.tokens[1]}] += 1.0 / double(rs.size());
        }
        return h;
    };
    const auto plain = histogram(run_sampled(*l.engine, *l.tok, nullptr, reqs));
    const auto drafted = histogram(run_sampled(*l.engine, *l.tok, other->get(), reqs));
    double tv = 0;
    std::map<std::pair<int32_t, int32_t>, double> all = plain;
    for (const auto& [k, v] : drafted) all[k] += 0;
    for (const auto& [k, v] : all) {
        const double a = plain.count(k) ? plain.at(k) : 0, b = drafted.count(k) ? drafted.at(k) : 0;
        tv += std::abs(a - b) / 2;
    }
    std::printf("total variation %.4f over %zu outcomes\n", tv, all.size());
    EXPECT_LE(all.size(), 4u);
    EXPECT_LT(tv, 0.07) << "total variation between plain and drafted sampling";
}

TEST(PromptLookup, proposes_what_followed_the_last_ngram) {
    EXPECT_EQ(ngram_draft({1, 2, 3, 4, 5, 9, 2, 3}, 3), (std::vector<int32_t>{4, 5, 9}));  // "2 3" seen before
    EXPECT_EQ(ngram_draft({7, 8, 1, 2, 7, 8, 3, 1, 2}, 2), (std::vector<int32_t>{7, 8}));  // latest "1 2"
    EXPECT_EQ(ngram_draft({5, 6, 7}, 4), (std::vector<int32_t>{}));                        // nothing repeats
    EXPECT_EQ(ngram_draft({4, 1, 2, 4}, 8), (std::vector<int32_t>{1, 2, 4}));              // unigram fallback
}

// Prompt-lookup drafting is exact too: greedy output identical to plain decoding.
TEST(PromptLookup, greedy_output_identical) {
    for (const char* m : {"qwen35moe-tiny-f32.gguf", "qwen3moe-tiny-q4_k_m.gguf"}) {
        auto target = Engine::load(model(m), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
        ASSERT_TRUE(target.ok());
        auto p = prompt();
        const auto rep = p;
        p.insert(p.end(), rep.begin(), rep.end());  // repetitive prompt: lookups find matches
        const Plain want = plain_greedy(**target, p, 40, 512);
        for (int dmax : {1, 4, 16}) {
            ContextParams cp;
            cp.n_ctx = 256;
            auto tc = (*target)->new_context(cp);
            ASSERT_TRUE(tc.ok());
            std::vector<float> logits;
            ASSERT_TRUE((*tc)->decode_seq(0, p, false, &logits).ok());
            SpeculativeDecoder sd(**tc, p, {dmax, 0, 0.0f});
            std::vector<int32_t> got;
            while (got.size() < 40) ASSERT_TRUE(sd.step_greedy(logits, got).ok());
            got.resize(40);
            EXPECT_EQ(got, want.tokens) << m << " draft_max " << dmax;
            EXPECT_GT(sd.stats().drafted, 0) << "the repeated prompt offers lookups";
        }
    }
}

// Constrained greedy decoding drafts too (a draft model, prompt lookup): the tokens are those of
// plain constrained greedy decoding, under a grammar whose state matters (nested brackets) and
// under JSON mode.
TEST(SpeculativeConstrained, greedy_output_identical) {
    auto target =
        Engine::load(model("qwen35moe-tiny-q4_k_m.gguf"), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    auto draft =
        Engine::load(model("qwen35-tiny-f32.gguf"), {.n_threads = 2, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(target.ok() && draft.ok());
    auto tk = Tokenizer::from_gguf((*target)->file());
    ASSERT_TRUE(tk.ok());
    const Tokenizer& tok = **tk;
    auto vocab = std::make_shared<const JsonVocabulary>(tok);
    auto grammar = Grammar::parse("root ::= item+\nitem ::= [a-z]+ \" \" | \"(\" item* \")\" | [0-9]{1,3} \",\"");
    ASSERT_TRUE(grammar.ok());
    auto p = prompt();
    const auto rep = p;
    p.insert(p.end(), rep.begin(), rep.end());  // lookups find matches
    for (int c = 0; c < 2; ++c) {
        auto run = [&](int how, SpecStats* stats) {
            auto tc = (*target)->new_context({.n_ctx = 256});
            auto dc = (*draft)->new_context({.n_ctx = 256});
            EXPECT_TRUE(tc.ok() && dc.ok());
            SamplerParams sp;
            sp.temp = 0.0f;
            Generator g(**tc, tok, sp);
            if (how == 1) g.set_draft(dc->get(), {4, 0, 0.0f});
            if (how == 2) g.set_prompt_lookup({4, 0, 0.0f});
            EXPECT_TRUE(g.feed(p).ok());
            GenerateParams gp;
            gp.n_predict = 48;
            gp.constraint = c == 0 ? std::make_shared<JsonConstraint>(vocab, -1, *grammar)
                                   : std::make_shared<JsonConstraint>(vocab);
            auto r = g.generate(gp, [](const Piece&) { return true; });
            EXPECT_TRUE(r.ok());
            if (stats) *stats = g.spec_stats();
            return r.ok() ? r->tokens : std::vector<int32_t>{};
        };
        const std::vector<int32_t> want = run(0, nullptr);
        ASSERT_FALSE(want.empty());
        SpecStats drafted, looked_up;
        EXPECT_EQ(run(1, &drafted), want) << (c ? "JSON mode" : "grammar");
        EXPECT_EQ(run(2, &looked_up), want) << (c ? "JSON mode" : "grammar");
        EXPECT_GT(drafted.drafted, 0);
        EXPECT_GT(looked_up.drafted, 0);
        std::printf("%s: %zu tokens, %lld of %lld proposals taken\n", c ? "JSON mode" : "grammar", want.size(),
                    (long long)drafted.accepted, (long long)drafted.drafted);
    }
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// DraftTuner on simulated steps: each drafted token is accepted with probability a (until the
// first rejection), drafts cost t_draft each and a verification batch of n tokens c0 + c1 n.
// Returns how often each length was chosen over the last 100 of 160 steps.
std::vector<int> simulate_tuner(double a, double t_draft, double c0, double c1, int max_len) {
    DraftTuner tuner;
    std::mt19937 rng(7);
    std::bernoulli_distribution ok(a);
    std::vector<int> chosen(size_t(max_len + 1), 0);
    for (int step = 0; step < 160; ++step) {
        const int k = tuner.next(max_len);
        EXPECT_GE(k, 1);
        EXPECT_LE(k, max_len);
        int accepted = 0;
        while (accepted < k && ok(rng)) ++accepted;
        tuner.record(k, accepted, k * t_draft + c0 + c1 * (k + 1) + 0.0002);
        if (step >= 60) ++chosen[size_t(k)];
    }
    return chosen;
}
int most_chosen(const std::vector<int>& c) {
    return int(std::max_element(c.begin(), c.end()) - c.begin());
}

// Cheap verification (a GPU: a batch costs about one step) and a good draft: long drafts. The
// 2-core CPU's costs (a plain step 8 ms, +2.5 ms per verified token, 1.3 ms per draft token):
// one token at 50% agreement, longer as agreement rises, never shorter.
TEST(DraftTuner, drafts_long_when_verification_is_cheap_and_short_when_it_is_not) {
    EXPECT_EQ(most_chosen(simulate_tuner(0.95, 0.0002, 0.010, 0.0001, 8)), 8);
    EXPECT_EQ(most_chosen(simulate_tuner(0.5, 0.0013, 0.0055, 0.0025, 8)), 1);
    int prev = 1;
    for (double a : {0.5, 0.7, 0.8, 0.9, 0.97}) {
        const int k = most_chosen(simulate_tuner(a, 0.0013, 0.0055, 0.0025, 8));
        EXPECT_GE(k, prev) << "agreement " << a;
        prev = k;
    }
    EXPECT_GE(prev, 3);
    // the neighbours of the best length are tried now and then
    const auto c = simulate_tuner(0.8, 0.0013, 0.0055, 0.0025, 8);
    const int best = most_chosen(c);
    EXPECT_GT(c[size_t(best + 1)] + (best > 1 ? c[size_t(best - 1)] : 0), 0);
}

// In a decoder, the tuner times real steps: it starts by trying three lengths twice (the first
// step at a length is a warm-up, not timed), with every proposal of a draft that is the target
// itself accepted. Which length it settles on then is a timing result (for this draft the
// lengths' rates differ by under 1% on the CPU and not at all on a GPU), so it is not asserted:
// DraftTuner's choice on measured rates is tested on its own above.
TEST(DraftTuner, times_real_steps) {
    auto target =
        Engine::load(model("qwen35-tiny-f32.gguf"), {.n_threads = 1, .n_gpu_layers = testing::test_gpu_layers()});
    ASSERT_TRUE(target.ok());
    Prefilled s = prefilled(**target, **target, prompt());
    ASSERT_TRUE(s.target);
    std::vector<float>& logits = s.logits;
    SpeculativeDecoder sd(*s.target, *s.draft, {6, 0, 0.0f, true});
    std::vector<int32_t> got;
    std::vector<int64_t> drafted;
    for (int step = 0; step < 15; ++step) {
        const int64_t before = sd.stats().drafted;
        ASSERT_TRUE(sd.step_greedy(logits, got).ok());
        drafted.push_back(sd.stats().drafted - before);
    }
    EXPECT_EQ(std::vector<int64_t>(drafted.begin(), drafted.begin() + 6), (std::vector<int64_t>{2, 4, 3, 2, 4, 3}));
    EXPECT_EQ(sd.stats().accepted, sd.stats().drafted);
    for (size_t i = 6; i < drafted.size(); ++i) EXPECT_TRUE(drafted[i] >= 1 && drafted[i] <= 6) << i;
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// The guard starts with plain steps, keeps drafting while drafting steps cost less per token than
// plain ones, and decodes plainly for a while (16 steps, then 32) once drafting measures slower.
TEST(DraftGuard, drafts_only_while_faster) {
    auto run = [](double draft_s_per_token, int steps, int* plain_steps) {
        DraftGuard g;
        *plain_steps = 0;
        for (int i = 0; i < steps; ++i) {
            if (g.plain_next()) {
                ++*plain_steps;
                g.record(false, 0.010, 1);  // a plain step: 10 ms per token
            } else {
                g.record(true, draft_s_per_token * 3, 3);  // a drafting step: 3 tokens
            }
        }
        return g.plain_s_per_token();
    };
    int plain = 0;
    EXPECT_DOUBLE_EQ(run(0.007, 200, &plain), 0.010);
    EXPECT_GE(plain, 3);  // the first plain steps, then 1 in every 32 drafting steps
    EXPECT_LE(plain, 3 + 200 / 32);
    run(0.013, 200, &plain);  // drafting is 30% slower: mostly plain
    EXPECT_GT(plain, 150);
    run(0.0105, 100, &plain);  // within the 8% margin: keeps drafting
    EXPECT_LE(plain, 3 + 100 / 32);
    // twice as slow: stopped after 3 drafting steps each time, not 8
    const int steps = 3 + 3 + 16 + 3;
    run(0.020, steps, &plain);
    EXPECT_EQ(steps - plain, 6);
}

// The machine slows down by 60% while drafting (a drifting VM): drafting, compared with the plain
// estimate from before, looks slower and is stopped, but the plain steps that follow measure
// slower still, so the stretch ends after 4 of them instead of running 16.
TEST(DraftGuard, a_stop_the_plain_steps_contradict_is_ended_early) {
    DraftGuard g;
    int plain_fast = 0, plain_slow = 0;
    for (int i = 0; i < 400; ++i) {
        const double f = i < 100 ? 1.0 : 1.6;  // the machine's slowdown from step 100 on
        if (g.plain_next()) {
            ++(i < 100 ? plain_fast : plain_slow);
            g.record(false, 0.010 * f, 1);
        } else {
            g.record(true, 3 * 0.008 * f, 3);  // drafting: 20% faster per token throughout
        }
    }
    EXPECT_LE(plain_fast, 3 + 100 / 32);
    // the false stop costs at most k_recheck plain steps, then refreshes only
    EXPECT_LE(plain_slow, 4 + 300 / 32 + 1);
    // without the check the stretch would have been 16 steps
    EXPECT_GE(plain_slow, 1);
}

}  // namespace
}  // namespace bigmoe
