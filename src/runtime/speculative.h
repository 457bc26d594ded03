// Speculative decoding with a draft model: the draft proposes up to draft_max tokens, the target
// verifies them in one batch, the longest agreeing prefix is accepted plus the target's own next
// token, and both models roll back past the rejected tokens with Context::remove_last (KV cells and
// Gated DeltaNet conv/SSM state together: the recurrent rings keep per-token snapshots, so a
// rollback is a pointer move, no recomputation). Greedy output is token-identical to plain
// decoding because a token's logits do not depend on the batch it is verified in.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/result.h"
#include "runtime/context.h"
#include "runtime/sampler.h"

#include <random>

namespace bigmoe {

class JsonConstraint;

struct SpecParams {
    int draft_max = 8;      // tokens proposed per step (<= the contexts' rollback depth)
    int draft_min = 0;      // drafted tokens before draft_p_min may stop drafting (and adaptive's floor)
    float draft_p_min = 0;  // stop drafting when the draft's top probability falls below this
    // Adaptive draft length: each step drafts the number of tokens (<= draft_max) that measures
    // best (DraftTuner). (Off here; the CLI turns it on by default: the best fixed length went
    // from 1 at 50% agreement to 4+ at 97% on the 2-core CPU, and a fixed 8 lost 10-50% below 90%.)
    bool adaptive = false;
    // Time every step and decode without drafts while drafting measures slower (DraftGuard).
    // (Off here; the CLI turns it on by default.)
    bool guard = false;
};

struct SpecStats {
    int64_t steps = 0, drafted = 0, accepted = 0, generated = 0;
    // steps that drafted (the rest were plain steps of the guard), their tokens and wall time
    int64_t drafting_steps = 0, drafting_tokens = 0;
    double drafting_seconds = 0;
    double plain_s_per_token = 0;  // the guard's measure of plain steps (0: none measured)
    double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0; }
    // accepted tokens per step that drafted
    double mean_accepted() const { return drafting_steps ? double(accepted) / double(drafting_steps) : 0; }
};

// Keeps speculative decoding from running slower than plain decoding on the machine at hand:
// it times steps with and without drafts (seconds per generated token: a moving average for
// plain steps, token-weighted sums decayed by 0.9 per step for drafting) and, once drafting has
// run 8 steps and measures more than 8% slower (a smaller margin stopped winning runs on timing
// noise), or 3 steps and 30% slower, decodes plainly for a stretch that doubles each time
// drafting loses again (16 steps up to 128), then tries drafting again. A machine's speed can
// drift by more than the margin within seconds (the 2-core VM: +-20%), so a comparison with an
// older plain estimate can be wrong: while drafting wins, one plain step in every 32 keeps the
// estimate current, and a stretch is ended after 4 plain steps when they measure no faster than
// the drafting that was stopped (the backoff then starts over). The first steps are plain (they
// give the plain estimate). Only the step structure changes: greedy output stays identical.
// SpeculativeDecoder runs one when SpecParams::guard is set.
class DraftGuard {
  public:
    // Whether the next step should decode without drafts.
    bool plain_next() const { return plain_left_ > 0; }
    // Reports the step just taken: whether it drafted, its wall seconds and tokens generated.
    void record(bool drafted, double seconds, int64_t tokens);
    double plain_s_per_token() const { return plain_; }

  private:
    static constexpr int k_first_plain = 3, k_min_draft_steps = 8, k_backoff_min = 16, k_backoff_max = 128;
    static constexpr int k_refresh_every = 32, k_refresh_steps = 1;  // re-time plain steps now and then
    static constexpr int k_recheck = 4;             // plain steps of a stretch before it may be ended early
    static constexpr double k_margin = 1.08;        // drafting must be this much slower to be stopped
    static constexpr double k_clear_loss = 1.3;     // ... and is stopped after 3 steps when this much slower
    double plain_ = 0;                              // moving average, seconds per token (0: none yet)
    double draft_time_ = 0, draft_tokens_ = 0;      // this drafting run, decayed by 0.9 per step
    double stopped_at_ = 0;                         // drafting's seconds per token when it was last stopped
    double stretch_time_ = 0, stretch_tokens_ = 0;  // the plain steps of the stretch since then
    int64_t n_plain_ = 0, n_draft_run_ = 0, n_since_refresh_ = 0;
    int plain_left_ = k_first_plain, backoff_ = k_backoff_min;
};

// Chooses each step's draft length from what it measures: the draft's acceptance per position
// (a_i: how often the i-th proposal is accepted once the ones before it were; agreement comes in
// runs, so a_2 is usually above a_1 and a single rate undervalues longer drafts) and the wall
// time of a whole step (draft, verification, rollback) for each length it used. A step of k
// drafts yields 1 + a_1 + a_1 a_2 + ... + a_1...a_k tokens on average; the tuner picks the k in
// [1, max] with the most tokens per second. A length not timed yet is costed on the line through
// the nearest timed ones (above all timed lengths: in proportion to the batch, the cautious guess;
// exploration times it soon). The first six steps try three lengths twice (a decoder does not
// time its first step at a length), every 8th step tries a
// neighbour of the best one, and everything decays by 3% per step, so the choice follows the
// text and the machine. On a GPU, where a batch costs about one step, the same rule drafts long.
class DraftTuner {
  public:
    // The draft length of the next step, in [1, max_len].
    int next(int max_len);
    // A step that proposed `drafted` tokens, `accepted` of them accepted, in step_s seconds
    // (<= 0: not timed).
    void record(int drafted, int accepted, double step_s);
    // a_i (i >= 1): smoothed towards a_(i-1) where position i was rarely reached.
    double acceptance(int i) const;
    // Predicted seconds of a step drafting k (0 before any step was timed).
    double step_seconds(int k) const;
    // Predicted tokens per second drafting k (0 before any step was timed).
    double rate(int k) const;
    // Whether the next step is one of the first six, which try fixed lengths.
    bool starting() const { return steps_ < k_starting; }

  private:
    static constexpr double k_decay = 0.97;
    static constexpr int k_explore_every = 8;
    static constexpr int k_lengths = 17;
    static constexpr int k_starting = 6;
    double reached_[k_lengths] = {}, accepted_[k_lengths] = {};  // per position (index 1..16)
    double time_s_[k_lengths] = {}, time_n_[k_lengths] = {};     // per draft length
    int steps_ = 0, best_ = 1;
    bool flip_ = false;
};

class SpeculativeDecoder {
  public:
    // Both contexts use sequence `seq` and must already hold the same prompt there. Vocabularies
    // must match (checked by the caller).
    SpeculativeDecoder(Context& target, Context& draft, const SpecParams& p, int seq = 0)
        : t_(target), d_(&draft), p_(p), seq_(seq) {}
    // Prompt-lookup drafting (no draft model): proposals are the tokens that followed the latest
    // earlier occurrence of the last few tokens. `history` is the prompt already in the target.
    SpeculativeDecoder(Context& target, std::vector<int32_t> history, const SpecParams& p, int seq = 0)
        : t_(target), d_(nullptr), p_(p), seq_(seq), history_(std::move(history)) {}

    // Greedy: appends at least one token (at most draft_max + 1) to `out`; `logits` holds the
    // target's logits for the next position and is updated.
    Result<void> step_greedy(std::vector<float>& logits, std::vector<int32_t>& out);
    // Greedy steps under constraint c: each token is the constrained arg-max (the arg-max when c
    // allows it, else the best token it allows), c moves on by the tokens appended; the draft's
    // proposals are its own constrained arg-max (prompt lookup's end where c refuses one).
    void constrain(JsonConstraint* c) { cons_ = c; }
    // One greedy step for several sequences of the same target (and draft) contexts at once: each
    // drafting round decodes every still-drafting sequence in one draft batch, and one target
    // batch verifies all sequences' drafts. Per sequence the result is that of step_greedy. The
    // guard (SpecParams::guard) acts on a lone sequence only: a batch's time is not one sequence's.
    static Result<void> step_greedy_batch(const std::vector<SpeculativeDecoder*>& decoders,
                                          const std::vector<std::vector<float>*>& logits,
                                          const std::vector<std::vector<int32_t>*>& outs);
    // Sampling (temperature > 0): drafts are drawn from the draft's distribution q, verified with
    // speculative_verify against the target's p (both after each Sampler's chain), so the output is
    // distributed exactly as the target's. `logits` are the target's logits after the prompt.
    Result<void> step_sampled(Sampler& target, Sampler& draft, std::vector<float>& logits, std::vector<int32_t>& out);
    const SpecStats& stats() const { return stats_; }

  private:
    // Rolls both models back past the rejected drafts and records the step.
    // `verify_logits` holds the target's logits for cur and each drafted token (null: `logits`
    // already holds the row after the accepted ones).
    Result<void> finish_step(int32_t cur, const std::vector<int32_t>& draft, size_t accepted,
                             const float* verify_logits, std::vector<float>& logits, std::vector<int32_t>& out);
    int max_draft() const;
    // Proposals of the draft model for sequences sharing one draft context: each round decodes
    // every sequence still drafting (pending tokens, then its last proposal) in one batch, and
    // pick(i, logits, n_proposed) gives sequence i's next proposal (-1: stop). Stops at max_draft() or a full
    // context; a sequence whose cur never reached the draft keeps it pending.
    static Result<std::vector<std::vector<int32_t>>> draft_tokens(
        const std::vector<SpeculativeDecoder*>& ds, const std::vector<int32_t>& cur,
        const std::function<int32_t(size_t, const float*, size_t)>& pick);
    // Prepares the step about to run: whether it drafts (the guard's choice, when `guarded`) and
    // step_len_ (the tuner's choice with SpecParams::adaptive).
    void begin_step(bool guarded);
    // Records a finished step that drafted `drafted` tokens and had `accepted` of them accepted, in
    // `seconds`: the stats, the tuner and (when `guarded`) the guard. A decoder's first step at a
    // draft length is not timed: it runs a batch shape the contexts may not have run before
    // (buffers grow, pages are touched: the first 5-token verification measured 48 ms instead of
    // ~25), and one slow first step could stop drafting for 16 steps. Nor does the guard judge
    // drafting by the tuner's starting steps, which try lengths on purpose.
    void record_step(int drafted, int accepted, double seconds, bool guarded);
    uint32_t timed_lengths_ = 0;  // bit k: a step verifying k drafts was timed
    int step_len_ = 0;            // this step's draft length before the depth and context limits
    DraftTuner tuner_;
    DraftGuard guard_;
    bool plain_step_ = false;  // this step decodes without drafts (the guard's choice)

    Context& t_;
    Context* d_;
    SpecParams p_;
    int seq_ = 0;
    SpecStats stats_;
    std::vector<int32_t> draft_pending_;  // accepted tokens the draft has not consumed yet
    JsonConstraint* cons_ = nullptr;      // constrain()'s
    std::vector<float> masked_;           // a constrained arg-max's masked logits
    int32_t next_ = -1;                   // sampling: the target's next token, drawn at the end of a step
    std::mt19937_64 rng_{0x5EC0DE};
    std::vector<int32_t> history_;  // prompt-lookup mode: every token in the target
};

// A sparse distribution: (token, probability) pairs summing to 1 (Sampler::distribution's output).
using Dist = std::vector<std::pair<int32_t, double>>;

// The speculative-sampling rule for one drafted token x drawn from the draft's q: accept with
// probability min(1, p(x) / q(x)); otherwise draw from the normalised residual max(0, p - q).
// The returned token is distributed exactly as p. `u1`, `u2` are uniform in [0, 1).
int32_t speculative_verify(const Dist& p, const Dist& q, int32_t x, double u1, double u2, bool* accepted);
// The token at cumulative probability u in [0, 1) of d.
int32_t speculative_draw(const Dist& d, double u);

// Prompt lookup: the tokens that followed the most recent earlier occurrence of the last n
// tokens of `history` (longest n in [1, n_max] that matches), at most max_tokens of them.
std::vector<int32_t> ngram_draft(const std::vector<int32_t>& history, int max_tokens, int n_max = 3);

// The largest softmax probability of the logits x (--draft-p-min), to ~1e-6 relative; 0 for n <= 0.
float top_probability(const float* x, int64_t n);

// Clear error when two models cannot be paired (different vocabularies).
Result<void> check_draft_compatible(const Model& target, const Model& draft);

}  // namespace bigmoe
