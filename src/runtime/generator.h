// Text generation on one sequence of a Context: prompt tokens in; tokens and text pieces out
// through a callback, with the sampler chain, stop strings, end-of-generation, reasoning
// (`<think>`) separation, optional speculative decoding (a draft model or prompt lookup) and the
// reason it stopped. `run`, `bench` and the server call this; none of them loops over tokens.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/profiler.h"
#include "core/result.h"
#include "runtime/context.h"
#include "runtime/json_constraint.h"
#include "runtime/sampler.h"
#include "runtime/speculative.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe {

enum class StopReason { none, eog, length, stop_string, context_full, cancelled };
// OpenAI-style names: "stop" (end of generation or a stop string), "length", ...
const char* stop_reason_name(StopReason r);

struct GenerateParams {
    int64_t n_predict = -1;         // tokens to generate; -1: until end of generation or a full context
    bool ignore_eos = false;        // keep generating past end-of-generation tokens
    std::vector<std::string> stop;  // generation ends before the first occurrence of any of these
    bool special = false;           // pieces carry the text of control tokens
    bool in_reasoning = false;      // the prompt opened <think> (a template's generation prompt)
    // >= 0: each token's log-probability and that many alternatives (plain decoding and the
    // Scheduler; Generator's speculative path reports none)
    int logprobs = -1;
    // Restricts each token to what the constraint allows (JSON mode, a JSON Schema); it is
    // moved on by each token generated. Such a generation decodes without drafts.
    std::shared_ptr<JsonConstraint> constraint;
};

// One generated token and the text it completes (whole UTF-8 characters only; text that may be
// the start of a stop string is held back until it is known not to be).
struct Piece {
    int32_t token = -1;  // -1: text released at the end of generation
    std::string text;
    bool reasoning = false;               // inside <think> ... </think>, the tags included
    std::optional<TokenLogprob> logprob;  // the token's, when GenerateParams::logprobs asks
};

// Return false to stop generating (the result's reason is `cancelled`).
using PieceFn = std::function<bool(const Piece&)>;

struct GenerateResult {
    std::vector<int32_t> tokens;         // every generated token (those after a stop string included)
    std::string content;                 // text outside <think> ... </think>, up to a stop string
    std::string reasoning;               // text inside, without the tags
    std::vector<TokenLogprob> logprobs;  // one per token, when GenerateParams::logprobs asks
    StopReason stop = StopReason::none;
    int64_t prompt_cached = 0;  // prompt tokens restored from a prompt cache, not processed
};

struct GenerationStats {
    int64_t prompt_tokens = 0, gen_tokens = 0;
    double prompt_s = 0, gen_s = 0;
};

// Holds text back while it may be the start of a stop string.
class StopMatcher {
  public:
    explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
    // Adds text; returns what can be released. `matched` turns true when a stop string appeared
    // (the text before it is released, the rest dropped).
    std::string push(const std::string& text, bool* matched);
    // What is held back, at the end of generation.
    std::string flush();

  private:
    std::vector<std::string> stops_;
    std::string held_;
};

// Turns generated tokens into pieces for a callback: whole UTF-8 characters, reasoning marked,
// text that may start a stop string held back; fills a GenerateResult and says when to stop.
class TokenSink {
  public:
    TokenSink(const Tokenizer& tok, const GenerateParams& p, const PieceFn& fn, GenerateResult& res);
    // Takes one token and the logits it was chosen from (its log-probability is reported when
    // GenerateParams::logprobs asks; nullptr: none); false when generation ends with it (the
    // result says why).
    bool push(int32_t id, bool ignore_eos, const float* logits = nullptr, int32_t n_vocab = 0);
    // Records why generation ended (the first reason given stands); returns false.
    bool end(StopReason r);
    // Releases what the text stream and the stop matcher hold.
    void finish();
    size_t n() const { return res_.tokens.size(); }

  private:
    const Tokenizer& tok_;
    TextStream ts_;
    StopMatcher stop_;
    const PieceFn& fn_;
    GenerateResult& res_;
    bool in_think_, stopped_ = false;
    int n_logprobs_;
    int32_t think_open_ = -1, think_close_ = -1;
};

// The next token: drawn from the logits the constraint allows when p has one (the constraint then
// moves on by it), else from the logits as they are. `scratch` holds the masked copy.
int32_t sample_next(Sampler& sampler, const GenerateParams& p, const std::vector<float>& logits,
                    std::vector<float>& scratch);
// Whether generation goes on past an end-of-generation token: ignore_eos, unless a constrained
// object is whole (only its end can follow; else end tokens would come until n_predict).
bool past_eog(const GenerateParams& p);
// Whether a request's tokens can be the backend's argmax, with no logits read back: plain greedy
// sampling, no constraint, no log-probabilities.
bool greedy_on_backend(const GenerateParams& p, const SamplerParams& s);

class Generator {
  public:
    Generator(Context& ctx, const Tokenizer& tok, const SamplerParams& sampler, int seq = 0);

    // Speculative decoding with a draft model's context (greedy: token-identical to plain greedy
    // decoding; sampling: speculative sampling, distributed as the sampler chain).
    void set_draft(Context* draft, const SpecParams& p);
    // Speculative decoding with drafts looked up in the tokens already in the context (greedy).
    void set_prompt_lookup(const SpecParams& p);
    // Times sampling and marks the prefill / decode phases on a profiler.
    void set_profiler(ProfiledBackend* prof) { prof_ = prof; }

    // Forgets the sequence (target and draft): the next feed starts at position 0.
    void reset();
    // Processes tokens (a prompt, or the text closing a chat turn) on the target and the draft.
    Result<void> feed(const std::vector<int32_t>& tokens);
    // Generates after what was fed; on_piece sees every token. Needs a fed token first.
    Result<GenerateResult> generate(const GenerateParams& p, const PieceFn& on_piece);

    Context& context() { return ctx_; }
    const Tokenizer& tokenizer() const { return tok_; }
    int seq() const { return seq_; }
    bool speculative() const { return draft_ != nullptr || ngram_; }
    const GenerationStats& stats() const { return stats_; }
    const SpecStats& spec_stats() const { return spec_stats_; }

  private:
    Result<void> generate_plain(const GenerateParams& p, TokenSink& out);
    Result<void> generate_speculative(const GenerateParams& p, TokenSink& out);

    Context& ctx_;
    const Tokenizer& tok_;
    Sampler sampler_;
    int seq_;
    std::vector<float> logits_;  // of the last processed token
    std::vector<float> masked_;  // logits_ under a constraint
    Context* draft_ = nullptr;
    bool ngram_ = false;
    SpecParams spec_;
    SpecStats spec_stats_;
    ProfiledBackend* prof_ = nullptr;
    GenerationStats stats_;
    std::vector<int32_t> history_;  // every token in the target context (prompt lookup)
};

}  // namespace bigmoe
