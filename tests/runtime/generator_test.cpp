// Generator and ChatSession: stop strings (split across tokens, held back while they may
// start), cancellation, length and full-context stops, reasoning separation, and that the
// pieces a caller sees add up to the result.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "bigmoe/bigmoe.h"
#include "runtime/chat_session.h"
#include "runtime/generator.h"
#include "runtime/scheduler.h"
#include "testlib.h"

namespace bigmoe {
namespace {

TEST(StopMatcher, releases_text_that_cannot_start_a_stop_string) {
    StopMatcher m({"</end>", "STOP"});
    bool hit = false;
    EXPECT_EQ(m.push("hello <", &hit), "hello ");  // "<" may start "</end>"
    EXPECT_FALSE(hit);
    EXPECT_EQ(m.push("/e", &hit), "");
    EXPECT_EQ(m.push("x", &hit), "</ex");  // no longer a prefix
    EXPECT_EQ(m.push(" ST", &hit), " ");
    EXPECT_EQ(m.push("OP and more", &hit), "");
    EXPECT_TRUE(hit);
}

TEST(StopMatcher, finds_the_earliest_stop_and_flushes_the_rest) {
    StopMatcher m({"bc", "ab"});
    bool hit = false;
    EXPECT_EQ(m.push("xxabc", &hit), "xx");
    EXPECT_TRUE(hit);
    StopMatcher n({"zz"});
    EXPECT_EQ(n.push("az", &hit), "a");
    EXPECT_FALSE(hit);
    EXPECT_EQ(n.flush(), "z");
    StopMatcher none({});
    EXPECT_EQ(none.push("<anything", &hit), "<anything");
}

struct Fixture {
    std::unique_ptr<Engine> engine;
    std::unique_ptr<Tokenizer> tok;
    std::unique_ptr<Context> ctx;
};

Fixture load(int64_t n_ctx = 256) {
    Fixture f;
    auto e = Engine::load(testing::fixtures_dir() + "/models/qwen35moe-tiny-f32.gguf", {.n_threads = 2});
    EXPECT_TRUE(e.ok());
    f.engine = std::move(*e);
    auto t = Tokenizer::from_gguf(f.engine->file());
    EXPECT_TRUE(t.ok());
    f.tok = std::move(*t);
    ContextParams cp;
    cp.n_ctx = n_ctx;
    auto c = f.engine->new_context(cp);
    EXPECT_TRUE(c.ok());
    f.ctx = std::move(*c);
    return f;
}

SamplerParams greedy() {
    SamplerParams p;
    p.temp = 0;
    return p;
}

// Generates from a fresh context; the pieces' text is collected into *seen.
GenerateResult generate(const GenerateParams& gp, std::string* seen, int64_t n_ctx = 256,
                        const std::function<bool(const Piece&)>& also = nullptr) {
    Fixture f = load(n_ctx);
    Generator g(*f.ctx, *f.tok, greedy());
    EXPECT_TRUE(g.feed(f.tok->encode("The quick brown fox", true)).ok());
    auto r = g.generate(gp, [&](const Piece& pc) {
        *seen += pc.text;
        return also ? also(pc) : true;
    });
    EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
    return r.ok() ? *r : GenerateResult{};
}

TEST(Generator, length_stop_and_pieces_add_up) {
    GenerateParams gp;
    gp.n_predict = 24;
    gp.ignore_eos = true;
    std::string seen;
    const GenerateResult r = generate(gp, &seen);
    EXPECT_EQ(r.tokens.size(), 24u);
    EXPECT_EQ(r.stop, StopReason::length);
    EXPECT_STREQ(stop_reason_name(r.stop), "length");
    EXPECT_EQ(seen, r.content + r.reasoning);
}

TEST(Generator, stop_string_cuts_the_content_where_it_first_appears) {
    GenerateParams gp;
    gp.n_predict = 32;
    gp.ignore_eos = true;
    std::string seen;
    const GenerateResult full = generate(gp, &seen);
    ASSERT_GE(full.content.size(), 8u) << "the fixture's greedy text is too short for this test";
    // a stop string that spans bytes from the middle of the text (often two tokens)
    const std::string stop = full.content.substr(full.content.size() / 2, 3);
    const std::string want = full.content.substr(0, full.content.find(stop));
    gp.stop = {stop};
    std::string seen2;
    const GenerateResult cut = generate(gp, &seen2);
    EXPECT_EQ(cut.stop, StopReason::stop_string);
    EXPECT_EQ(cut.content, want);
    EXPECT_EQ(seen2, want);
    EXPECT_LT(cut.tokens.size(), full.tokens.size());
}

TEST(Generator, callback_cancels_and_full_context_stops) {
    GenerateParams gp;
    gp.n_predict = 50;
    gp.ignore_eos = true;
    std::string seen;
    int n = 0;
    const GenerateResult c = generate(gp, &seen, 256, [&](const Piece&) { return ++n < 3; });
    EXPECT_EQ(c.stop, StopReason::cancelled);
    EXPECT_EQ(c.tokens.size(), 3u);
    const int64_t n_prompt = int64_t(load().tok->encode("The quick brown fox", true).size());
    const GenerateResult full = generate(gp, &seen, n_prompt + 5);
    EXPECT_EQ(full.stop, StopReason::context_full);
    EXPECT_EQ(full.tokens.size(), 5u);
    EXPECT_STREQ(stop_reason_name(full.stop), "length");
}

TEST(Generator, reasoning_opened_by_the_prompt_goes_to_reasoning) {
    GenerateParams gp;
    gp.n_predict = 16;
    gp.ignore_eos = true;
    std::string seen;
    const GenerateResult plain = generate(gp, &seen);
    gp.in_reasoning = true;
    std::string seen2;
    const GenerateResult r = generate(gp, &seen2);
    EXPECT_EQ(r.tokens, plain.tokens);
    Fixture f = load();
    for (int32_t id : plain.tokens)
        if (id == f.tok->find("<think>") || id == f.tok->find("</think>")) GTEST_SKIP() << "the model wrote a tag";
    EXPECT_TRUE(r.content.empty());
    EXPECT_EQ(r.reasoning, plain.content);
    EXPECT_EQ(seen2, seen);
}

// Greedy decoding with penalties or a logit bias is exact with a draft model too (its steps are
// verified as sampled ones whose distributions are single tokens, not by the raw arg-max), and
// the penalties and the bias do change what greedy decoding writes.
TEST(Generator, greedy_with_penalties_or_bias_is_exact_with_a_draft) {
    auto draft_engine = Engine::load(testing::fixtures_dir() + "/models/qwen35-tiny-f32.gguf", {.n_threads = 2});
    ASSERT_TRUE(draft_engine.ok());
    auto run = [&](const SamplerParams& sp, bool drafted) {
        Fixture f = load();
        std::unique_ptr<Context> dc;
        Generator g(*f.ctx, *f.tok, sp);
        if (drafted) {
            ContextParams cp;
            cp.n_ctx = 256;
            auto c = (*draft_engine)->new_context(cp);
            EXPECT_TRUE(c.ok());
            if (!c.ok()) return std::vector<int32_t>{};
            dc = std::move(*c);
            g.set_draft(dc.get(), SpecParams{.draft_max = 4});
        }
        EXPECT_TRUE(g.feed(f.tok->encode("hello world, the", true)).ok());  // greedy repeats tokens
        GenerateParams gp;
        gp.n_predict = 32;
        gp.ignore_eos = true;
        auto r = g.generate(gp, [](const Piece&) { return true; });
        EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
        return r.ok() ? r->tokens : std::vector<int32_t>{};
    };
    const std::vector<int32_t> plain = run(greedy(), false);
    ASSERT_EQ(plain.size(), 32u);
    EXPECT_EQ(run(greedy(), true), plain);
    SamplerParams penalised = greedy();
    penalised.repeat_penalty = 1.5f;
    penalised.presence_penalty = 0.25f;
    SamplerParams biased = greedy();
    biased.logit_bias = {{plain[3], -INFINITY}, {plain[10], -2.0f}, {int32_t(plain[0] + 1) % 500, 3.0f}};
    for (const SamplerParams* sp : {&penalised, &biased}) {
        const std::vector<int32_t> want = run(*sp, false);
        EXPECT_NE(want, plain);
        EXPECT_EQ(run(*sp, true), want);
    }
    const std::vector<int32_t> banned = run(biased, false);
    EXPECT_EQ(std::count(banned.begin(), banned.end(), plain[3]), 0);
}

// Plain greedy decoding takes its tokens from the backend's argmax; asking for log-probabilities
// reads every token's logits back instead: the same tokens, the same stops. Where generation ends
// (an end-of-generation token among them) the last processed token's logits are read back: a
// later call samples from them either way (the end token again, then, ignoring it, the same text).
TEST(Generator, greedy_from_the_backend_equals_greedy_from_the_logits) {
    int ended = 0;
    for (const char* prompt : {"Hello", "Once upon a time", "The quick brown fox"}) {
        SCOPED_TRACE(prompt);
        Fixture a = load(512), b = load(512);
        Generator ga(*a.ctx, *a.tok, greedy()), gb(*b.ctx, *b.tok, greedy());
        ASSERT_TRUE(ga.feed(a.tok->encode(prompt, true)).ok());
        ASSERT_TRUE(gb.feed(b.tok->encode(prompt, true)).ok());
        GenerateParams backend;
        backend.n_predict = 300;
        GenerateParams logits = backend;
        logits.logprobs = 0;
        const auto none = [](const Piece&) { return true; };
        auto ra = ga.generate(backend, none), rb = gb.generate(logits, none);
        ASSERT_TRUE(ra.ok() && rb.ok());
        EXPECT_EQ(ra->tokens, rb->tokens);
        EXPECT_EQ(ra->stop, rb->stop);
        EXPECT_EQ(rb->logprobs.size(), rb->tokens.size());
        ended += ra->stop == StopReason::eog;
        // a's logits are made anew, b's next token comes from the backend
        backend.n_predict = logits.n_predict = 3;
        ra = ga.generate(logits, none);
        rb = gb.generate(backend, none);
        ASSERT_TRUE(ra.ok() && rb.ok());
        EXPECT_EQ(ra->tokens, rb->tokens);
        EXPECT_EQ(ra->logprobs.size(), ra->tokens.size());
        backend.ignore_eos = logits.ignore_eos = true;
        backend.n_predict = logits.n_predict = 12;
        ra = ga.generate(backend, none);
        rb = gb.generate(logits, none);
        ASSERT_TRUE(ra.ok() && rb.ok());
        EXPECT_EQ(ra->tokens, rb->tokens);
        EXPECT_EQ(a.ctx->n_past(0), b.ctx->n_past(0));
    }
    EXPECT_GT(ended, 0) << "no prompt's greedy text ended: the stale logits were not tried";
}

TEST(Generator, needs_a_fed_prompt) {
    Fixture f = load();
    Generator g(*f.ctx, *f.tok, greedy());
    auto r = g.generate({}, [](const Piece&) { return true; });
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("feed"), std::string::npos);
}

// Three sequences stepped together in one context (the Scheduler) give each sequence's result alone: greedy and
// seeded sampling, different prompt lengths, one stopping early on its length.
TEST(Generator, sequences_together_equal_each_alone) {
    auto e = Engine::load(testing::fixtures_dir() + "/models/qwen35moe-tiny-f32.gguf", {.n_threads = 2});
    ASSERT_TRUE(e.ok());
    auto tok = Tokenizer::from_gguf((*e)->file());
    ASSERT_TRUE(tok.ok());
    const std::vector<std::string> prompts = {"The quick brown fox", "Hello", "A longer prompt about the sea and sky"};
    std::vector<SamplerParams> sps(3);
    sps[0].temp = 0;
    sps[1].temp = 0.9f;
    sps[1].seed = 11;
    sps[2].temp = 0.7f;
    sps[2].seed = 5;
    std::vector<GenerateParams> gps(3);
    for (auto& gp : gps) {
        gp.n_predict = 20;
        gp.ignore_eos = true;
    }
    gps[1].n_predict = 7;
    auto noop = [](const Piece&) { return true; };
    std::vector<GenerateResult> alone;
    for (int i = 0; i < 3; ++i) {
        auto ctx = (*e)->new_context({.n_ctx = 128});
        ASSERT_TRUE(ctx.ok());
        Generator g(**ctx, **tok, sps[size_t(i)]);
        ASSERT_TRUE(g.feed((*tok)->encode(prompts[size_t(i)], true)).ok());
        auto r = g.generate(gps[size_t(i)], noop);
        ASSERT_TRUE(r.ok());
        alone.push_back(*r);
    }
    // the same three through the Scheduler, one forward pass per step
    auto ctx = (*e)->new_context({.n_ctx = 128, .n_seq_max = 3});
    ASSERT_TRUE(ctx.ok());
    Scheduler sched(**ctx, **tok);
    std::vector<GenerateResult> together(3);
    for (size_t i = 0; i < 3; ++i) {
        Request r;
        r.prompt = (*tok)->encode(prompts[i], true);
        r.sampler = sps[i];
        r.gen = gps[i];
        r.on_done = [&together, i](const GenerateResult& res, const Error*) { together[i] = res; };
        ASSERT_TRUE(sched.submit(std::move(r)).ok());
    }
    for (int step = 0; step < 1000; ++step) {
        auto busy = sched.step();
        ASSERT_TRUE(busy.ok());
        if (!*busy) break;
    }
    for (size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(together[i].tokens, alone[i].tokens) << "sequence " << i;
        EXPECT_EQ(together[i].content, alone[i].content) << "sequence " << i;
        EXPECT_EQ(together[i].stop, alone[i].stop) << "sequence " << i;
    }
    EXPECT_EQ(together[1].tokens.size(), 7u);
}

// With a template that renders earlier turns the same way (ChatML), a second turn feeds only
// its new text: every token fed or generated is in the context once.
TEST(ChatSession, second_turn_feeds_only_the_new_text) {
    Fixture f = load(512);
    Generator g(*f.ctx, *f.tok, greedy());
    auto s = ChatSession::create(g, "chatml", {});
    ASSERT_TRUE(s.ok()) << s.error().message;
    GenerateParams gp;
    gp.n_predict = 6;
    gp.ignore_eos = true;
    auto noop = [](const Piece&) { return true; };
    ASSERT_TRUE(s->send("hello", gp, noop).ok());
    const int64_t after_first = f.ctx->n_past(0);
    auto second = s->send("and again", gp, noop);
    ASSERT_TRUE(second.ok());
    EXPECT_EQ(s->messages().size(), 4u);
    EXPECT_EQ(g.stats().prompt_tokens + g.stats().gen_tokens, f.ctx->n_past(0)) << "every token is in the context";
    EXPECT_GT(f.ctx->n_past(0), after_first);
}

// The Qwen3.5 template drops the last turn's reasoning once a new user message follows, so the
// rendered history no longer starts with what the context holds: the context starts over with
// the whole conversation (not the whole conversation appended after the old one).
TEST(ChatSession, re_rendered_history_starts_the_context_over) {
    Fixture f = load(1024);
    Generator g(*f.ctx, *f.tok, greedy());
    auto s = ChatSession::create(g, "", {});
    ASSERT_TRUE(s.ok()) << s.error().message;
    GenerateParams gp;
    gp.n_predict = 6;
    gp.ignore_eos = true;
    auto noop = [](const Piece&) { return true; };
    ASSERT_TRUE(s->send("hello", gp, noop).ok());
    std::vector<std::string> fed;
    s->set_on_feed([&](const std::string& t) { fed.push_back(t); });
    ASSERT_TRUE(s->send("and again", gp, noop).ok());
    ASSERT_FALSE(fed.empty());
    EXPECT_EQ(fed[0].rfind("<|im_start|>user\nhello", 0), 0u) << "the whole conversation again: " << fed[0];
    int64_t n = 6;  // the generated tokens
    for (const auto& t : fed) n += int64_t(f.tok->encode(t, true).size());
    EXPECT_EQ(f.ctx->n_past(0), n) << "the context holds the second turn's feeds and reply only";
}

}  // namespace
}  // namespace bigmoe
