// Token samplers. The chain runs in a fixed, documented order:
//   0. logit bias: a fixed amount added to chosen tokens' logits (-infinity bans a token)
//   1. repetition / presence / frequency penalties over the last `penalty_last_n` tokens
//   2. greedy (temperature <= 0) returns the arg-max here
//   3. top-k  4. top-p  5. min-p   (on the probabilities at temperature 1)
//   6. temperature  7. draw from the renormalised distribution with the seeded RNG
// Same seed and same logits give the same tokens on any thread count.
#pragma once

#include <cstdint>
#include <deque>
#include <random>
#include <utility>
#include <vector>

#include "core/argmax.h"

namespace bigmoe {

struct SamplerParams {
    float temp = 0.8f;
    int32_t top_k = 40;   // <= 0: off
    float top_p = 0.95f;  // >= 1: off
    float min_p = 0.05f;  // <= 0: off
    float repeat_penalty = 1.0f;
    float presence_penalty = 0.0f;
    float frequency_penalty = 0.0f;
    int32_t penalty_last_n = 64;
    uint64_t seed = 0xB16B00B5;
    // (token, amount) pairs in any order; a token listed twice gets both amounts; ids outside the
    // vocabulary are ignored (callers refuse them first)
    std::vector<std::pair<int32_t, float>> logit_bias;
};

// Whether the chain is the arg-max of the raw logits (temperature 0, no penalty, no bias): the
// only chain greedy speculative decoding may verify by arg-max alone.
bool plain_greedy(const SamplerParams& p);

// A token's log-probability under the model's own distribution (the softmax of the raw logits,
// before penalties, truncation and temperature: what OpenAI's and vLLM's `logprobs` report) and
// the n most likely tokens with theirs, best first, ties by token id.
struct TokenLogprob {
    int32_t token = -1;
    float logprob = 0.0f;
    std::vector<std::pair<int32_t, float>> top;
};
TokenLogprob token_logprob(const float* logits, int32_t n_vocab, int32_t token, int n_top);

class Sampler {
  public:
    explicit Sampler(const SamplerParams& p) : p_(p), rng_(p.seed) {}
    // Picks a token from logits[n_vocab] and remembers it for the penalties.
    int32_t sample(const float* logits, int32_t n_vocab);
    // The candidate distribution after steps 1-6 (tests check it): (token, probability) pairs.
    std::vector<std::pair<int32_t, double>> distribution(const float* logits, int32_t n_vocab) const;
    void accept(int32_t token);
    void reset() { history_.clear(); }
    const SamplerParams& params() const { return p_; }

  private:
    SamplerParams p_;
    std::mt19937_64 rng_;
    std::deque<int32_t> history_;
};

}  // namespace bigmoe
