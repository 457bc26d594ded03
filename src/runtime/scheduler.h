// Continuous batching over the sequences of one context: requests join and leave between steps,
// and every step is one forward pass holding the next token of each decoding request plus a
// budgeted chunk of waiting prompts (chunked prefill), so a long prompt never stops the others.
// By batch invariance a request's tokens do not depend on what else runs beside it.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "core/result.h"
#include "runtime/context.h"
#include "runtime/generator.h"
#include "runtime/json_constraint.h"
#include "runtime/prompt_cache.h"
#include "runtime/sampler.h"
#include "runtime/seq_file.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe {

struct SchedulerParams {
    int64_t prefill_budget = 512;  // prompt tokens per step, over all prefilling requests
    // Speculative decoding with a draft model's context (set_draft): tokens drafted per greedy
    // request and step (at most the contexts' rollback depth).
    int draft_max = 8;
};

// What speculative decoding has done since the scheduler started.
struct SchedulerSpecStats {
    int64_t drafted = 0, accepted = 0;
};

// What one sequence is doing, as of the last step.
struct SlotInfo {
    int seq = 0;
    int64_t request = 0;  // 0: idle
    bool prefilling = false;
    int64_t n_prompt = 0, n_prefilled = 0, n_generated = 0, n_past = 0;
    int64_t n_cached = 0;  // of the prompt, restored from the prompt cache
};

struct Request {
    std::vector<int32_t> prompt;  // at least one token
    SamplerParams sampler;
    GenerateParams gen;  // gen.constraint: such a request decodes without drafts
    PieceFn on_piece;    // on the stepping thread; false cancels the request
    // Once, on the stepping thread, when the request ends (the error set if it failed).
    std::function<void(const GenerateResult&, const Error*)> on_done;
};

class Scheduler {
  public:
    // One sequence of ctx per running request (ctx.params().n_seq_max at once); the others wait.
    Scheduler(Context& ctx, const Tokenizer& tok, const SchedulerParams& p = {});
    ~Scheduler();

    // Drafts with a smaller model's context (the same vocabulary, as many sequences as ctx, a
    // context per sequence at least as long). Greedy requests (temperature 0, no penalties) then
    // take several tokens per step: every drafting request's proposals come from one draft pass
    // per drafted position, and all are verified in the step's one target pass. By batch
    // invariance their tokens are those of plain decoding; sampled requests decode plainly
    // beside them. Call before the first step.
    Result<void> set_draft(Context* draft);
    SchedulerSpecStats spec_stats() const;
    // Steps that read back greedy tokens and no logits (every request in them plain greedy).
    int64_t argmax_steps() const { return argmax_steps_.load(); }

    // Reuses cached prefixes: a request restores the longest cached prefix of its prompt and
    // processes the rest; its state is saved at the end of its prompt with the last logits (so the
    // same prompt again processes nothing), every `checkpoint_every` positions of its prompt (0:
    // none), and when it ends. Requests drafting with a draft model do not use it.
    // Call before the first step.
    void set_prompt_cache(PromptCache* cache, int64_t checkpoint_every);

    // Queues a request (any thread); it starts at the next step with a free sequence. The error
    // says why it can never run (an empty prompt, a prompt longer than a sequence's context).
    Result<int64_t> submit(Request r);
    // Ends a request at the next step (any thread), waiting or running; its on_done sees
    // StopReason::cancelled. False when the id is unknown or already finished.
    bool cancel(int64_t id);
    // Cancels every waiting and running request (at the next step).
    void cancel_all();

    // One forward pass (on one thread); false when there was nothing to do. Calls queued with
    // between_steps run first.
    Result<bool> step();
    // Runs fn on the stepping thread before the next step's work (any thread): what needs the
    // context while no forward pass runs.
    void between_steps(std::function<void()> fn);
    // The state sequence seq holds (on the stepping thread): the running request's prompt and
    // processed tokens, or, for an idle sequence, what its last request left.
    Result<SeqState> slot_state(int seq) const;
    // Requests running and waiting (any thread).
    size_t running() const;
    size_t waiting() const;
    // Positions the running requests hold in the context, after the last step (any thread).
    int64_t positions_in_use() const { return positions_.load(); }
    // Every sequence's state after the last step (any thread).
    std::vector<SlotInfo> slots() const;

  private:
    struct Slot;
    void admit();
    void finish(Slot& s, const Error* err);
    // Whether a prompt's state is saved after its first n tokens.
    bool save_point(const Slot& s, size_t n) const;
    void save(Slot& s, std::vector<int32_t> tokens, const std::vector<float>* logits = nullptr);
    std::vector<int32_t> held_tokens(const Slot& s) const;

    Context& ctx_;
    const Tokenizer& tok_;
    SchedulerParams p_;
    mutable std::mutex mu_;  // guards queue_, cancelled_, running_ids_, next_id_
    struct Queued {
        int64_t id;
        Request r;
    };
    std::deque<Queued> queue_;
    std::vector<int64_t> cancelled_;
    std::vector<int64_t> running_ids_;  // what other threads may know of slots_
    int64_t next_id_ = 1;
    std::vector<std::unique_ptr<Slot>> slots_;  // [seq]; null: free
    std::atomic<int64_t> positions_{0};
    std::vector<SlotInfo> snapshot_;  // guarded by mu_
    std::vector<float> logits_;
    std::atomic<int64_t> argmax_steps_{0};
    std::vector<int32_t> ids_;  // each output row's greedy token, in a step that reads back no logits
    Context* draft_ = nullptr;
    PromptCache* cache_ = nullptr;
    int64_t checkpoint_every_ = 0;
    std::vector<float> draft_logits_;
    std::vector<float> masked_;                 // a constrained request's logits with the disallowed tokens at -inf
    std::vector<std::function<void()>> calls_;  // guarded by mu_
    std::vector<std::vector<int32_t>> last_tokens_;  // [seq]: what an idle sequence holds
    std::atomic<int64_t> drafted_{0}, accepted_{0};
};

}  // namespace bigmoe
