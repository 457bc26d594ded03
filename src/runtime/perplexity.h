// Perplexity over a token stream, llama-perplexity's way: the text is cut into chunks of n_ctx
// tokens, each processed from an empty sequence, and the second half of each chunk is scored
// (every position there predicts the next token with at least n_ctx / 2 tokens of context).
//
// KL divergence: one run saves the scored positions' distributions to a file (the base, e.g. an
// f32 KV cache); a later run over the same tokens (another cache type, weight type or kernel)
// compares its distributions with the base's: mean, median, 99th percentile and largest KL
// divergence, and how often the two agree on the most likely token.
#pragma once

#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/result.h"
#include "runtime/context.h"

namespace bigmoe {

struct PerplexityParams {
    int64_t n_ctx = 512;    // tokens per chunk (the context must hold them)
    int64_t n_chunks = -1;  // -1: every whole chunk the text holds
};

// What one chunk adds, for a progress line.
struct PerplexityChunk {
    int64_t index = 0, n_chunks = 0;
    double ppl = 0;       // the estimate over the chunks so far
    double seconds = 0;   // this chunk's time
    double kl_mean = -1;  // with a base: the mean KL divergence so far
};

struct PerplexityResult {
    int64_t n_chunks = 0, n_scored = 0;
    double ppl = 0, ppl_error = 0;  // exp(mean NLL) and its standard error (delta method)
    double nll = 0;                 // mean negative log-likelihood of the scored tokens
    // With a base (kl_base set): the base's perplexity over the same tokens and the comparison.
    bool compared = false;
    double base_ppl = 0;
    double kl_mean = 0, kl_mean_error = 0, kl_median = 0, kl_p99 = 0, kl_max = 0;
    double top1_agreement = 0;  // share of positions where both put the same token first
};

// The distributions of a base run, saved by positions as they are scored: for each, the
// log-probabilities over the vocabulary as 16-bit levels over the 40 nats below the row's largest
// (a step of 6e-4 nats; the divergence, computed after renormalizing, moves only at second order)
// and the scored token's log-probability exactly (for the base's perplexity).
class KlBaseWriter {
  public:
    static Result<std::unique_ptr<KlBaseWriter>> create(const std::string& path, int64_t n_vocab, int64_t n_ctx,
                                                        const std::vector<int32_t>& tokens);
    ~KlBaseWriter();
    // A scored position: its log-probabilities over the vocabulary and its next token.
    Result<void> add(const std::vector<double>& logp, int32_t next);
    Result<void> finish();

  private:
    KlBaseWriter() = default;
    std::FILE* f_ = nullptr;
    std::string path_;
    int64_t n_vocab_ = 0;
    std::vector<uint16_t> row_;
};

class KlBaseReader {
  public:
    // Refuses a file that is damaged or was made for another vocabulary, chunk size or text.
    static Result<std::unique_ptr<KlBaseReader>> open(const std::string& path, int64_t n_vocab, int64_t n_ctx,
                                                      const std::vector<int32_t>& tokens);
    ~KlBaseReader();
    // The next position: its log-probabilities (normalized again after the 16-bit rounding),
    // the same as probabilities, and the scored token's log-probability.
    Result<void> next(std::vector<double>& logp, std::vector<double>& prob, double& next_logp);
    int64_t positions() const { return n_positions_; }

  private:
    KlBaseReader() = default;
    std::FILE* f_ = nullptr;
    std::string path_;
    int64_t n_vocab_ = 0, n_positions_ = 0, read_ = 0;
    std::vector<uint16_t> row_;
};

// Scores `tokens` in sequence 0 of ctx (which must hold n_ctx positions). With `save` the scored
// distributions go to that file; with `base` they are compared with it (the base's positions
// must be these). on_chunk is called after every chunk.
Result<PerplexityResult> perplexity(Context& ctx, const std::vector<int32_t>& tokens, const PerplexityParams& p,
                                    KlBaseWriter* save, KlBaseReader* base,
                                    const std::function<void(const PerplexityChunk&)>& on_chunk = {});

}  // namespace bigmoe
