// Continuous batching: requests that join at different steps, with chunked prefill beside
// decoding ones, give each request the tokens it gets alone (batch invariance); a long prompt
// does not stop the decoding requests; cancellation frees the sequence; bad requests are refused.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "bigmoe/bigmoe.h"
#include "runtime/generator.h"
#include "runtime/scheduler.h"
#include "testlib.h"

namespace bigmoe {
namespace {

struct Loaded {
    std::unique_ptr<Engine> engine;
    std::unique_ptr<Tokenizer> tok;
};

Loaded load() {
    Loaded l;
    auto e = Engine::load(testing::fixtures_dir() + "/models/qwen35moe-tiny-f32.gguf", {.n_threads = 2});
    EXPECT_TRUE(e.ok());
    l.engine = std::move(*e);
    auto t = Tokenizer::from_gguf(l.engine->file());
    EXPECT_TRUE(t.ok());
    l.tok = std::move(*t);
    return l;
}

Request make_request(const Tokenizer& tok, const std::string& text, float temp, uint64_t seed, int64_t n) {
    Request r;
    r.prompt = tok.encode(text, true);
    r.sampler.temp = temp;
    r.sampler.seed = seed;
    r.gen.n_predict = n;
    r.gen.ignore_eos = true;
    return r;
}

// The request's tokens alone, through Generator.
std::vector<int32_t> alone(Loaded& l, const Request& r) {
    auto ctx = l.engine->new_context({.n_ctx = 256});
    EXPECT_TRUE(ctx.ok());
    Generator g(**ctx, *l.tok, r.sampler);
    EXPECT_TRUE(g.feed(r.prompt).ok());
    auto res = g.generate(r.gen, [](const Piece&) { return true; });
    EXPECT_TRUE(res.ok());
    return res.ok() ? res->tokens : std::vector<int32_t>{};
}

TEST(Scheduler, requests_joining_at_any_step_equal_each_alone) {
    Loaded l = load();
    std::vector<Request> reqs;
    const char* texts[] = {"The quick brown fox",
                           "Hello",
                           "A much longer prompt about the sea, the sky and the stars",
                           "x",
                           "Once upon a time",
                           "1 2 3 4 5 6 7 8 9",
                           "Why?",
                           "The end"};
    for (int i = 0; i < 8; ++i)
        reqs.push_back(make_request(*l.tok, texts[i], i % 3 == 0 ? 0.0f : 0.9f, uint64_t(100 + i), 6 + 3 * i));
    std::vector<std::vector<int32_t>> want;
    for (const Request& r : reqs) want.push_back(alone(l, r));

    // 4 sequences for 8 requests (half wait), prompts cut into chunks of 5 tokens, requests
    // submitted over the first steps
    auto ctx = l.engine->new_context({.n_ctx = 256, .n_seq_max = 4});
    ASSERT_TRUE(ctx.ok());
    Scheduler sched(**ctx, *l.tok, {.prefill_budget = 5});
    std::vector<std::vector<int32_t>> got(8);
    std::vector<int> done(8, 0);
    size_t next = 0;
    for (int steps = 0; steps < 2000; ++steps) {
        if (next < reqs.size() && steps % 2 == 0) {
            Request r = reqs[next];
            const size_t i = next++;
            r.on_done = [&, i](const GenerateResult& res, const Error* err) {
                EXPECT_EQ(err, nullptr);
                got[i] = res.tokens;
                ++done[i];
            };
            ASSERT_TRUE(sched.submit(std::move(r)).ok());
        }
        auto busy = sched.step();
        ASSERT_TRUE(busy.ok()) << busy.error().message;
        if (!*busy && next == reqs.size() && sched.waiting() == 0) break;
    }
    for (size_t i = 0; i < 8; ++i) {
        EXPECT_EQ(done[i], 1) << "request " << i;
        EXPECT_EQ(got[i], want[i]) << "request " << i;
    }
}

// Speculative decoding in the scheduler: greedy requests drafted by another model (few proposals
// accepted), by the target's weights quantized (some), or by the target's own weights (all, so
// whole drafts are taken), beside
// sampled ones, at several draft lengths: each request's tokens and log-probabilities equal the
// request alone, decoded plainly.
// Runs requests to the end through one scheduler (with a draft when given); results by request.
// (argmax_steps: where to put Scheduler::argmax_steps at the end, when not null)
std::vector<GenerateResult> run_all(Loaded& l, Engine* draft, int draft_max, const std::vector<Request>& reqs,
                                    int n_seq = 3, int64_t* argmax_steps = nullptr) {
    auto ctx = l.engine->new_context({.n_ctx = 256, .n_seq_max = n_seq});
    EXPECT_TRUE(ctx.ok());
    std::unique_ptr<Context> dctx;
    if (draft) {
        auto d = draft->new_context({.n_ctx = 256, .n_seq_max = n_seq});
        EXPECT_TRUE(d.ok());
        dctx = std::move(*d);
    }
    Scheduler sched(**ctx, *l.tok, {.prefill_budget = 5, .draft_max = draft_max});
    if (dctx) {
        EXPECT_TRUE(sched.set_draft(dctx.get()).ok());
    }
    std::vector<GenerateResult> got(reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
        Request r = reqs[i];
        r.on_done = [&got, i](const GenerateResult& res, const Error* err) {
            EXPECT_EQ(err, nullptr);
            got[i] = res;
        };
        EXPECT_TRUE(sched.submit(std::move(r)).ok());
    }
    for (int steps = 0; steps < 100000; ++steps) {
        auto busy = sched.step();
        EXPECT_TRUE(busy.ok());
        if (!busy.ok() || (!*busy && sched.waiting() == 0)) break;
    }
    if (argmax_steps) *argmax_steps = sched.argmax_steps();
    return got;
}

GenerateResult run_alone(Loaded& l, Engine& draft, int draft_max, const Request& r) {
    return run_all(l, &draft, draft_max, {r})[0];
}

// Plain greedy requests take their tokens from the backend's argmax in steps where no request
// needs logits (without log-probabilities or a sampled neighbour): the same tokens as alone and
// as the same requests asking for log-probabilities (every step reading logits), beside sampled
// requests too.
TEST(Scheduler, greedy_tokens_from_the_backend_equal_those_from_the_logits) {
    Loaded l = load();
    const char* texts[] = {"The quick brown fox", "Hello", "A longer prompt about the sea and the sky", "x", "1 2 3"};
    std::vector<Request> plain, logprobs, mixed;
    for (int i = 0; i < 5; ++i) {
        plain.push_back(make_request(*l.tok, texts[i], 0.0f, uint64_t(30 + i), 4 + 3 * i));
        logprobs.push_back(plain.back());
        logprobs.back().gen.logprobs = 1;
        mixed.push_back(i == 2 ? make_request(*l.tok, texts[i], 0.8f, 5, 4 + 3 * i) : plain.back());
    }
    int64_t n_plain = 0, n_logprobs = 0, n_mixed = 0;
    const std::vector<GenerateResult> a = run_all(l, nullptr, 0, plain, 3, &n_plain),
                                      b = run_all(l, nullptr, 0, logprobs, 3, &n_logprobs),
                                      c = run_all(l, nullptr, 0, mixed, 3, &n_mixed);
    EXPECT_GT(n_plain, 0);
    EXPECT_EQ(n_logprobs, 0);
    EXPECT_GT(n_mixed, 0);  // once the sampled request is done
    for (size_t i = 0; i < plain.size(); ++i) {
        const std::vector<int32_t> want = alone(l, plain[i]);
        ASSERT_EQ(want.size(), size_t(plain[i].gen.n_predict));
        EXPECT_EQ(a[i].tokens, want) << "request " << i;
        EXPECT_EQ(b[i].tokens, want) << "request " << i;
        EXPECT_EQ(b[i].logprobs.size(), want.size()) << "request " << i;
        EXPECT_TRUE(a[i].logprobs.empty());
        if (i != 2) {
            EXPECT_EQ(c[i].tokens, want) << "request " << i;
        }
    }
    EXPECT_EQ(c[2].tokens, alone(l, mixed[2]));
}

TEST(Scheduler, drafting_requests_equal_each_alone) {
    Loaded l = load();
    auto other = Engine::load(testing::fixtures_dir() + "/models/qwen35-tiny-f32.gguf", {.n_threads = 2});
    ASSERT_TRUE(other.ok());
    // the same weights quantized: agrees often, not always
    auto quantized = Engine::load(testing::fixtures_dir() + "/models/qwen35moe-tiny-q4_k_m.gguf", {.n_threads = 2});
    ASSERT_TRUE(quantized.ok());
    std::vector<Request> reqs;
    const char* texts[] = {"The quick brown fox", "Hello",      "A longer prompt about the sea and the sky", "x",
                           "Once upon a time",    "1 2 3 4 5 6"};
    for (int i = 0; i < 6; ++i) {
        reqs.push_back(make_request(*l.tok, texts[i], i % 3 == 2 ? 0.9f : 0.0f, uint64_t(7 + i), 5 + 4 * i));
        if (i % 2 == 0) reqs.back().gen.logprobs = 2;
    }
    std::vector<GenerateResult> want;
    for (const Request& r : reqs) {
        auto ctx = l.engine->new_context({.n_ctx = 256});
        ASSERT_TRUE(ctx.ok());
        Generator g(**ctx, *l.tok, r.sampler);
        ASSERT_TRUE(g.feed(r.prompt).ok());
        auto res = g.generate(r.gen, [](const Piece&) { return true; });
        ASSERT_TRUE(res.ok());
        want.push_back(*res);
    }
    const std::pair<Engine*, const char*> drafts[] = {
        {l.engine.get(), "own weights"}, {other->get(), "another model"}, {quantized->get(), "quantized"}};
    for (const auto& [draft_engine, what] : drafts)
        for (int draft_max : {1, 3, 8}) {
            SCOPED_TRACE(std::string(what) + ", draft_max " + std::to_string(draft_max));
            auto ctx = l.engine->new_context({.n_ctx = 256, .n_seq_max = 3});
            auto dctx = draft_engine->new_context({.n_ctx = 256, .n_seq_max = 3});
            ASSERT_TRUE(ctx.ok() && dctx.ok());
            Scheduler sched(**ctx, *l.tok, {.prefill_budget = 5, .draft_max = draft_max});
            ASSERT_TRUE(sched.set_draft(dctx->get()).ok());
            std::vector<GenerateResult> got(reqs.size());
            for (size_t i = 0; i < reqs.size(); ++i) {
                Request r = reqs[i];
                r.on_done = [&, i](const GenerateResult& res, const Error* err) {
                    EXPECT_EQ(err, nullptr);
                    got[i] = res;
                };
                ASSERT_TRUE(sched.submit(std::move(r)).ok());
                ASSERT_TRUE(sched.step().ok());
            }
            for (int steps = 0; steps < 1000; ++steps) {
                auto busy = sched.step();
                ASSERT_TRUE(busy.ok()) << busy.error().message;
                if (!*busy && sched.waiting() == 0) break;
            }
            for (size_t i = 0; i < reqs.size(); ++i) {
                // a sampled request drafts by speculative sampling: its tokens are those it gets
                // alone with the same draft (its draws do not depend on the other requests)
                const GenerateResult w =
                    reqs[i].sampler.temp > 0 ? run_alone(l, *draft_engine, draft_max, reqs[i]) : want[i];
                EXPECT_EQ(got[i].tokens, w.tokens) << "request " << i;
                ASSERT_EQ(got[i].logprobs.size(), w.logprobs.size()) << "request " << i;
                for (size_t t = 0; t < w.logprobs.size(); ++t) {
                    EXPECT_EQ(got[i].logprobs[t].logprob, w.logprobs[t].logprob) << i << " " << t;
                    EXPECT_EQ(got[i].logprobs[t].top, w.logprobs[t].top) << i << " " << t;
                }
            }
            const SchedulerSpecStats st = sched.spec_stats();
            EXPECT_GT(st.drafted, 0);
            if (draft_engine == l.engine.get()) {
                EXPECT_EQ(st.accepted, st.drafted);  // the same logits
            }
        }
}

TEST(Scheduler, a_long_prompt_does_not_stop_decoding_requests) {
    Loaded l = load();
    auto ctx = l.engine->new_context({.n_ctx = 512, .n_seq_max = 2});
    ASSERT_TRUE(ctx.ok());
    Scheduler sched(**ctx, *l.tok, {.prefill_budget = 8});
    int pieces = 0;
    Request a = make_request(*l.tok, "hi", 0, 1, 40);
    a.on_piece = [&](const Piece&) { return ++pieces, true; };
    ASSERT_TRUE(sched.submit(std::move(a)).ok());
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(sched.step().ok());  // a is decoding
    std::string text;
    for (int i = 0; i < 40; ++i) text += "word ";
    const size_t n_prompt = l.tok->encode(text, true).size();
    ASSERT_GT(n_prompt, 64u);
    ASSERT_TRUE(sched.submit(make_request(*l.tok, text, 0, 2, 4)).ok());
    // while the long prompt is prefilled 8 tokens a step, a gets a token every step
    const int before = pieces;
    for (int i = 0; i < 6; ++i) ASSERT_TRUE(sched.step().ok());
    EXPECT_EQ(pieces - before, 6);
    EXPECT_EQ(sched.running(), 2u);
}

TEST(Scheduler, cancel_frees_the_sequence_and_bad_requests_are_refused) {
    Loaded l = load();
    auto ctx = l.engine->new_context({.n_ctx = 64, .n_seq_max = 1});
    ASSERT_TRUE(ctx.ok());
    Scheduler sched(**ctx, *l.tok);
    StopReason first = StopReason::none, second = StopReason::none;
    Request a = make_request(*l.tok, "hi", 0, 1, 1000);
    a.on_done = [&](const GenerateResult& r, const Error*) { first = r.stop; };
    Request b = make_request(*l.tok, "there", 0, 1, 3);
    b.on_done = [&](const GenerateResult& r, const Error*) { second = r.stop; };
    auto ida = sched.submit(std::move(a));
    ASSERT_TRUE(ida.ok());
    ASSERT_TRUE(sched.submit(std::move(b)).ok());
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(sched.step().ok());
    EXPECT_EQ(sched.waiting(), 1u);  // b waits for the one sequence
    EXPECT_TRUE(sched.cancel(*ida));
    for (int i = 0; i < 20 && second == StopReason::none; ++i) ASSERT_TRUE(sched.step().ok());
    EXPECT_EQ(first, StopReason::cancelled);
    EXPECT_EQ(second, StopReason::length);
    EXPECT_FALSE(sched.cancel(*ida));
    // refused before they run
    EXPECT_FALSE(sched.submit(Request{}).ok());
    Request too_long = make_request(*l.tok, std::string(200, 'a'), 0, 1, 1);
    auto r = sched.submit(std::move(too_long));
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("a sequence holds 64 positions"), std::string::npos) << r.error().message;
    Request bad_token = make_request(*l.tok, "hi", 0, 1, 1);
    bad_token.prompt[0] = 1 << 30;
    EXPECT_FALSE(sched.submit(std::move(bad_token)).ok());
    // a callback that returns false cancels its request
    Request c = make_request(*l.tok, "hi", 0, 1, 50);
    StopReason third = StopReason::none;
    int n = 0;
    c.on_piece = [&](const Piece&) { return ++n < 4; };
    c.on_done = [&](const GenerateResult& res, const Error*) { third = res.stop; };
    ASSERT_TRUE(sched.submit(std::move(c)).ok());
    for (int i = 0; i < 30 && third == StopReason::none; ++i) ASSERT_TRUE(sched.step().ok());
    EXPECT_EQ(third, StopReason::cancelled);
    EXPECT_EQ(n, 4);
    EXPECT_EQ(sched.running(), 0u);
}

// Requests submitted and cancelled from another thread while one thread steps, as a server does.
TEST(Scheduler, submit_and_cancel_from_another_thread) {
    Loaded l = load();
    auto ctx = l.engine->new_context({.n_ctx = 128, .n_seq_max = 3});
    ASSERT_TRUE(ctx.ok());
    Scheduler sched(**ctx, *l.tok, {.prefill_budget = 7});
    std::mutex mu;
    std::condition_variable cv;
    std::map<int64_t, GenerateResult> results;
    std::atomic<bool> stop{false};
    std::thread stepper([&] {
        while (!stop.load()) {
            auto busy = sched.step();
            ASSERT_TRUE(busy.ok());
            if (!*busy) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        }
    });
    std::vector<Request> reqs;
    std::vector<int64_t> ids;
    for (int i = 0; i < 6; ++i) {
        Request r = make_request(*l.tok, "request number " + std::to_string(i), i % 2 ? 0.8f : 0.0f, uint64_t(i), 12);
        reqs.push_back(r);
        auto id = std::make_shared<int64_t>(0);
        r.on_done = [&, id](const GenerateResult& res, const Error* err) {
            EXPECT_EQ(err, nullptr);
            std::lock_guard<std::mutex> lock(mu);
            results[*id] = res;
            cv.notify_all();
        };
        // the id is known only after submit; the callback runs later, on the stepper, after the lock
        std::lock_guard<std::mutex> lock(mu);
        auto got = sched.submit(std::move(r));
        ASSERT_TRUE(got.ok());
        *id = *got;
        ids.push_back(*got);
    }
    sched.cancel(ids[5]);
    {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait_for(lock, std::chrono::seconds(60), [&] { return results.size() == ids.size(); });
    }
    stop.store(true);
    stepper.join();
    ASSERT_EQ(results.size(), ids.size());
    for (int i = 0; i < 5; ++i) EXPECT_EQ(results[ids[size_t(i)]].tokens, alone(l, reqs[size_t(i)])) << i;
    EXPECT_EQ(results[ids[5]].stop, StopReason::cancelled);
    EXPECT_EQ(sched.running() + sched.waiting(), 0u);
}

}  // namespace
}  // namespace bigmoe
