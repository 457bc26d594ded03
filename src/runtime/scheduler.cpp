#include "runtime/scheduler.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <random>

#include "runtime/json_constraint.h"

namespace bigmoe {

// A running request: its sequence, sampler, output and how far its prompt has been processed.
struct Scheduler::Slot {
    static constexpr uint64_t k_rng_salt = 0x9E3779B97F4A7C15ull;  // the draws apart from the sampler's
    int64_t id = 0;
    int seq = 0;
    Request r;
    Sampler sampler;
    GenerateResult res;
    std::unique_ptr<TokenSink> sink;  // reads r.gen and r.on_piece, writes res
    size_t prefilled = 0;             // prompt tokens processed
    std::vector<float> logits;        // of the last processed token (unless next >= 0)
    // Plain greedy requests without log-probabilities or a draft take their tokens from the
    // backend's argmax where the logits are (a GPU reads back an index a row, not the row);
    // next is that token after the last processed one, -1 when logits holds its row instead.
    bool greedy_on_backend = false;
    int32_t next = -1;
    bool ending = false;  // its last token is in this step's batch
    // this step: prompt tokens, or the next token (then the draft's proposals), and where its
    // logits rows start
    bool step_prefill = false;
    std::vector<int32_t> step_tokens, drafts;
    int64_t k = 0;  // proposals asked of the draft
    size_t row0 = 0;
    bool use_draft = false;  // with a draft model
    // Sampled requests draft by speculative sampling: proposals drawn from the draft's chain
    // (distributions kept in qs), each verified against the target's chain; at a rejection the
    // residual's draw is the next token (forced). Greedy ones take proposals equal to the arg-max.
    bool sampled_draft = false;
    Sampler dsampler;
    std::mt19937_64 rng;
    std::vector<Dist> qs;
    int32_t forced = -1;
    // a constrained greedy request's constraint as its proposals move it (its own is moved by
    // the tokens taken)
    std::unique_ptr<JsonConstraint> dcons;
    std::vector<int32_t> pending;  // tokens the target took that the draft has not processed
    size_t draft_fed = 0;          // prompt tokens the draft has processed (behind after a cache hit)
    Slot(int64_t i, int s, Request&& req, const Tokenizer& tok)
        : id(i), seq(s), r(std::move(req)), sampler(r.sampler), dsampler(r.sampler), rng(r.sampler.seed ^ k_rng_salt) {
        sink = std::make_unique<TokenSink>(tok, r.gen, r.on_piece, res);
    }
};

Scheduler::Scheduler(Context& ctx, const Tokenizer& tok, const SchedulerParams& p)
    : ctx_(ctx),
      tok_(tok),
      p_(p),
      slots_(size_t(ctx.params().n_seq_max)),
      last_tokens_(size_t(ctx.params().n_seq_max)) {}

void Scheduler::between_steps(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back(std::move(fn));
}

// The tokens a running request's sequence holds: its prompt as far as processed, then the
// generated tokens processed after it.
std::vector<int32_t> Scheduler::held_tokens(const Slot& s) const {
    const int64_t n = ctx_.n_past(s.seq), P = int64_t(s.r.prompt.size());
    std::vector<int32_t> t(s.r.prompt.begin(), s.r.prompt.begin() + std::min(n, P));
    if (n > P)
        t.insert(t.end(), s.res.tokens.begin(), s.res.tokens.begin() + std::min(n - P, int64_t(s.res.tokens.size())));
    return t;
}

Result<SeqState> Scheduler::slot_state(int seq) const {
    if (seq < 0 || seq >= int(slots_.size()))
        return make_error("there is no slot " + std::to_string(seq), ErrorKind::not_found);
    const Slot* s = slots_[size_t(seq)].get();
    std::vector<int32_t> tokens = s ? held_tokens(*s) : last_tokens_[size_t(seq)];
    if (tokens.empty() || int64_t(tokens.size()) != ctx_.n_past(seq))
        return make_error("slot " + std::to_string(seq) + " holds nothing to save", ErrorKind::bad_input);
    return read_seq_state(ctx_, seq, std::move(tokens));
}

Scheduler::~Scheduler() = default;

Result<void> Scheduler::set_draft(Context* draft) {
    if (draft->n_vocab() != ctx_.n_vocab())
        return make_error("the draft model's vocabulary has " + std::to_string(draft->n_vocab()) +
                              " tokens, the model's " + std::to_string(ctx_.n_vocab()),
                          ErrorKind::bad_input);
    if (draft->params().n_seq_max < ctx_.params().n_seq_max || draft->params().n_ctx < ctx_.params().n_ctx)
        return make_error("the draft context needs " + std::to_string(ctx_.params().n_seq_max) + " sequences of " +
                              std::to_string(ctx_.params().n_ctx) + " positions",
                          ErrorKind::bad_input);
    draft_ = draft;
    return {};
}

void Scheduler::set_prompt_cache(PromptCache* cache, int64_t checkpoint_every) {
    cache_ = cache;
    checkpoint_every_ = checkpoint_every;
}

bool Scheduler::save_point(const Slot& s, size_t n) const {
    if (!cache_ || n == 0 || n <= size_t(s.res.prompt_cached)) return false;
    return n == s.r.prompt.size() || (checkpoint_every_ > 0 && n % size_t(checkpoint_every_) == 0);
}

// A failed save costs later requests a hit, nothing else: the request goes on.
void Scheduler::save(Slot& s, std::vector<int32_t> tokens, const std::vector<float>* logits) {
    const int64_t evicted = cache_->evictions();
    if (auto r = cache_->save(ctx_, s.seq, tokens, logits); !r)
        std::fprintf(stderr, "bigmoe: prompt cache: %s\n", r.error().message.c_str());
    if (cache_->evictions() == evicted) return;
    const PromptCacheStats st = cache_->stats();
    std::fprintf(stderr, "bigmoe: prompt cache: evicted %lld entries to stay within %.0f MiB (%.0f MiB held)\n",
                 (long long)(st.evictions - evicted), double(st.budget) / (1 << 20), double(st.bytes) / (1 << 20));
}

SchedulerSpecStats Scheduler::spec_stats() const {
    return {drafted_.load(), accepted_.load()};
}

Result<int64_t> Scheduler::submit(Request r) {
    if (r.prompt.empty()) return make_error("the prompt is empty");
    const int64_t n_ctx = ctx_.params().n_ctx;
    if (int64_t(r.prompt.size()) + 1 > n_ctx)
        return make_error("the prompt has " + std::to_string(r.prompt.size()) + " tokens; a sequence holds " +
                          std::to_string(n_ctx) + " positions, room for " + std::to_string(n_ctx - 1) +
                          " prompt tokens and one generated token");
    for (int32_t t : r.prompt)
        if (t < 0 || t >= ctx_.n_vocab())
            return make_error("token id " + std::to_string(t) + " is out of range [0, " +
                              std::to_string(ctx_.n_vocab()) + ")");
    if (!r.on_piece) r.on_piece = [](const Piece&) { return true; };
    std::lock_guard<std::mutex> lock(mu_);
    const int64_t id = next_id_++;
    queue_.push_back({id, std::move(r)});
    return id;
}

bool Scheduler::cancel(int64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
        if (it->id == id) {
            cancelled_.push_back(id);
            return true;
        }
    if (std::find(running_ids_.begin(), running_ids_.end(), id) == running_ids_.end()) return false;
    cancelled_.push_back(id);
    return true;
}

std::vector<SlotInfo> Scheduler::slots() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (snapshot_.empty()) {
        std::vector<SlotInfo> idle(slots_.size());
        for (size_t i = 0; i < idle.size(); ++i) idle[i].seq = int(i);
        return idle;
    }
    return snapshot_;
}

void Scheduler::cancel_all() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& q : queue_) cancelled_.push_back(q.id);
    cancelled_.insert(cancelled_.end(), running_ids_.begin(), running_ids_.end());
}

size_t Scheduler::running() const {
    std::lock_guard<std::mutex> lock(mu_);
    return running_ids_.size();
}

size_t Scheduler::waiting() const {
    std::lock_guard<std::mutex> lock(mu_);
    return queue_.size();
}

void Scheduler::finish(Slot& s, const Error* err) {
    s.sink->finish();
    // what the sequence holds at the end, for a slot save and for the prompt cache
    std::vector<int32_t>& held = last_tokens_[size_t(s.seq)];
    held = held_tokens(s);
    if (int64_t(held.size()) != ctx_.n_past(s.seq)) held.clear();
    if (cache_ && !err && held.size() > s.r.prompt.size()) save(s, held);
    if (s.res.stop == StopReason::none) s.res.stop = StopReason::length;
    Request r = std::move(s.r);
    GenerateResult res = std::move(s.res);
    {
        std::lock_guard<std::mutex> lock(mu_);
        running_ids_.erase(std::find(running_ids_.begin(), running_ids_.end(), s.id));
    }
    slots_[size_t(s.seq)].reset();  // s is gone from here on
    if (r.on_done) r.on_done(res, err);
}

// Cancelled requests end; waiting ones take the free sequences in arrival order.
void Scheduler::admit() {
    std::vector<int64_t> cancelled;
    std::deque<Queued> dropped;
    {
        std::lock_guard<std::mutex> lock(mu_);
        cancelled.swap(cancelled_);
        for (int64_t id : cancelled)
            for (auto it = queue_.begin(); it != queue_.end(); ++it)
                if (it->id == id) {
                    dropped.push_back(std::move(*it));
                    queue_.erase(it);
                    break;
                }
        for (size_t seq = 0; seq < slots_.size() && !queue_.empty(); ++seq) {
            if (slots_[seq]) continue;
            ctx_.clear(int(seq));
            last_tokens_[seq].clear();
            slots_[seq] = std::make_unique<Slot>(queue_.front().id, int(seq), std::move(queue_.front().r), tok_);
            const SamplerParams& sp = slots_[seq]->r.sampler;
            // constrained requests draft when greedy (proposals and the target's choice are the
            // constrained arg-max)
            slots_[seq]->use_draft = draft_ && (!slots_[seq]->r.gen.constraint || plain_greedy(sp));
            slots_[seq]->sampled_draft = !plain_greedy(sp);
            slots_[seq]->greedy_on_backend = !slots_[seq]->use_draft && greedy_on_backend(slots_[seq]->r.gen, sp);
            if (draft_) draft_->clear(int(seq));
            Slot& s = *slots_[seq];
            // the cache holds the target's states only: after a hit a drafting request's draft
            // processes the restored part of the prompt itself (step 1)
            if (cache_) {
                auto n = cache_->restore(ctx_, int(seq), s.r.prompt, int64_t(s.r.prompt.size()) - 1, &s.logits);
                // all of it when a snapshot at its end kept the logits (in s.logits): decoding
                // then starts at once
                if (n && *n > 0) {
                    s.prefilled = size_t(*n);
                    s.res.prompt_cached = *n;
                    for (size_t k = 0; k < s.prefilled; ++k) s.sampler.accept(s.r.prompt[k]);
                }
            }
            running_ids_.push_back(slots_[seq]->id);
            queue_.pop_front();
        }
    }
    for (Queued& q : dropped) {
        GenerateResult res;
        res.stop = StopReason::cancelled;
        if (q.r.on_done) q.r.on_done(res, nullptr);
    }
    for (int64_t id : cancelled)
        for (auto& s : slots_)
            if (s && s->id == id) {
                s->sink->end(StopReason::cancelled);
                finish(*s, nullptr);
                break;
            }
}

Result<bool> Scheduler::step() {
    std::vector<std::function<void()>> calls;
    {
        std::lock_guard<std::mutex> lock(mu_);
        calls.swap(calls_);
    }
    for (auto& c : calls) c();
    admit();
    // 1. What each request adds: a chunk of its prompt, or its next token (sampled here) and,
    // for a drafting request, the draft's proposals after it (step 2).
    std::vector<Slot*> involved;     // every slot with tokens in the batch, in sequence order
    std::vector<BatchToken> dbatch;  // the draft's first pass: prompt chunks, then pending + next token
    std::vector<Slot*> drafting;
    int64_t budget = std::max<int64_t>(p_.prefill_budget, 1);
    for (auto& sp : slots_) {
        if (!sp) continue;
        Slot& s = *sp;
        s.step_tokens.clear();
        s.drafts.clear();
        s.qs.clear();
        s.k = 0;
        s.step_prefill = s.prefilled < s.r.prompt.size();
        for (; s.use_draft && s.draft_fed < s.prefilled; ++s.draft_fed)  // what the cache restored
            dbatch.push_back({s.r.prompt[s.draft_fed], s.seq, false});
        if (s.step_prefill) {  // a chunk of the prompt, ending at the next point it is saved at
            size_t n = std::min(s.r.prompt.size() - s.prefilled, size_t(budget));
            for (size_t k = 1; k < n; ++k)
                if (save_point(s, s.prefilled + k)) {
                    n = k;
                    break;
                }
            if (n == 0) continue;
            for (size_t k = 0; k < n; ++k) {
                const int32_t t = s.r.prompt[s.prefilled + k];
                s.step_tokens.push_back(t);
                s.sampler.accept(t);
                if (s.use_draft) dbatch.push_back({t, s.seq, false});
            }
            s.prefilled += n;
            if (s.use_draft) s.draft_fed = s.prefilled;
            budget -= int64_t(n);
            involved.push_back(&s);
            continue;
        }
        // decoding: the rules of Generator::generate_plain
        const GenerateParams& g = s.r.gen;
        if (g.n_predict >= 0 && int64_t(s.sink->n()) >= g.n_predict) {
            finish(s, nullptr);
            continue;
        }
        const int64_t n_past = ctx_.n_past(s.seq);
        if (n_past >= ctx_.params().n_ctx) {
            s.sink->end(StopReason::context_full);
            finish(s, nullptr);
            continue;
        }
        int32_t id = s.forced;  // drawn from the residual at the last step's rejection, if any
        const bool from_backend = s.next >= 0;
        if (id >= 0) {
            s.forced = -1;
            s.sampler.accept(id);
        } else if (from_backend) {
            id = s.next;
            s.next = -1;
            s.sampler.accept(id);  // as the sampler's greedy draw does
        } else {
            id = sample_next(s.sampler, g, s.logits, masked_);
        }
        if (s.use_draft) s.dsampler.accept(id);
        const bool go_on = from_backend ? s.sink->push(id, past_eog(g))
                                        : s.sink->push(id, past_eog(g), s.logits.data(), int32_t(s.logits.size()));
        if (!go_on || (g.n_predict >= 0 && int64_t(s.sink->n()) >= g.n_predict)) {
            finish(s, nullptr);  // the token ends the request: nothing needs its logits
            continue;
        }
        s.step_tokens.push_back(id);
        involved.push_back(&s);
        if (!s.use_draft) continue;
        // drafts fit in what is left of n_predict, the context and both rollback depths
        int64_t k = std::min<int64_t>(p_.draft_max, ctx_.params().n_ctx - n_past - 1);
        if (g.n_predict >= 0) k = std::min<int64_t>(k, g.n_predict - int64_t(s.sink->n()));
        k = std::min<int64_t>({k, ctx_.params().rollback_depth, draft_->params().rollback_depth});
        if (k <= 0) {
            s.pending.push_back(id);
            continue;
        }
        for (int32_t t : s.pending) dbatch.push_back({t, s.seq, false});
        s.pending.clear();
        dbatch.push_back({id, s.seq, true});
        s.k = k;
        if (g.constraint) s.dcons = g.constraint->clone();
        drafting.push_back(&s);
    }
    auto fail = [&](const Error& e) {  // every request in the batch fails; the others go on
        for (auto& sp : slots_)
            if (sp && std::find(involved.begin(), involved.end(), sp.get()) != involved.end()) finish(*sp, &e);
    };
    if (involved.empty()) {
        positions_ = 0;  // nothing runs (or only finished requests did)
        std::lock_guard<std::mutex> lock(mu_);
        snapshot_.assign(slots_.size(), SlotInfo{});
        for (size_t i = 0; i < snapshot_.size(); ++i) snapshot_[i].seq = int(i);
        return std::any_of(slots_.begin(), slots_.end(), [](const auto& s) { return s != nullptr; });
    }
    // 2. Drafting: one draft pass per drafted position, every drafting request in each (greedy
    // proposals: the draft's arg-max).
    const size_t V = size_t(ctx_.n_vocab());
    std::vector<Slot*> active = drafting;
    while (!dbatch.empty()) {
        if (auto r = draft_->decode(dbatch, &draft_logits_); !r) {
            fail(r.error());
            return r.error();
        }
        dbatch.clear();
        std::vector<Slot*> next;
        for (size_t i = 0; i < active.size(); ++i) {
            Slot& s = *active[i];
            const float* row = draft_logits_.data() + i * V;
            int32_t d;
            if (s.sampled_draft) {
                s.qs.push_back(s.dsampler.distribution(row, int32_t(V)));
                d = speculative_draw(s.qs.back(), std::uniform_real_distribution<double>(0.0, 1.0)(s.rng));
            } else {
                d = s.dcons ? constrained_argmax(*s.dcons, row, int64_t(V), masked_) : argmax(row, int64_t(V));
                if (s.dcons) s.dcons->accept(d);
            }
            s.drafts.push_back(d);
            if (int64_t(s.drafts.size()) < s.k) {
                dbatch.push_back({d, s.seq, true});
                next.push_back(&s);
            }
        }
        active.swap(next);
    }
    // 3. One target pass: prompt chunks (logits at a prompt's end), next tokens and proposals.
    std::vector<BatchToken> batch;
    size_t n_rows = 0;
    for (Slot* s : involved) {
        s->row0 = n_rows;
        if (s->step_prefill) {
            for (size_t i = 0; i < s->step_tokens.size(); ++i) {
                const bool last = i + 1 == s->step_tokens.size() && s->prefilled == s->r.prompt.size();
                batch.push_back({s->step_tokens[i], s->seq, last});
                n_rows += last;
            }
            continue;
        }
        batch.push_back({s->step_tokens[0], s->seq, true});
        for (int32_t d : s->drafts) batch.push_back({d, s->seq, true});
        n_rows += 1 + s->drafts.size();
    }
    // Greedy tokens only, without the logits, when no request in the step needs a row: every one
    // takes its token from the backend's argmax, and no prompt ends where the cache keeps logits.
    auto saves_logits = [&](const Slot& s) {  // its prompt ends here, at a snapshot that keeps them
        return s.step_prefill && s.prefilled == s.r.prompt.size() && save_point(s, s.prefilled);
    };
    const bool ids_only = std::all_of(involved.begin(), involved.end(),
                                      [&](const Slot* s) { return s->greedy_on_backend && !saves_logits(*s); });
    if (auto r = ids_only ? ctx_.decode(batch, nullptr, &ids_) : ctx_.decode(batch, &logits_); !r) {
        fail(r.error());
        return r.error();
    }
    argmax_steps_ += ids_only;
    auto row = [&](size_t i) { return logits_.begin() + ptrdiff_t(i * V); };
    for (Slot* s : involved)  // checkpoints inside prompts (a prompt's end is saved with its logits below)
        if (s->step_prefill && s->prefilled < s->r.prompt.size() && save_point(*s, s->prefilled))
            save(*s, {s->r.prompt.begin(), s->r.prompt.begin() + ptrdiff_t(s->prefilled)});
    for (Slot* s : involved) {
        if (s->step_prefill && s->prefilled < s->r.prompt.size()) continue;  // no logits yet
        // verification: proposals are taken while they equal the target's arg-max (so the
        // tokens are plain greedy decoding's); the target's logits after the last one taken
        // give the next token
        const GenerateParams& g = s->r.gen;
        size_t m = 0;
        for (; m < s->drafts.size() && !s->ending; ++m) {
            const float* lg = &*row(s->row0 + m);
            const int32_t d = s->drafts[m];
            if (s->sampled_draft) {
                std::uniform_real_distribution<double> U(0.0, 1.0);
                const double u1 = U(s->rng), u2 = U(s->rng);
                bool ok = false;
                const int32_t t = speculative_verify(s->sampler.distribution(lg, int32_t(V)), s->qs[m], d, u1, u2, &ok);
                if (!ok) {
                    s->forced = t;  // the next token, in the next step
                    break;
                }
            } else if ((g.constraint ? constrained_argmax(*g.constraint, lg, int64_t(V), masked_)
                                     : argmax(lg, int64_t(V))) != d) {
                break;
            }
            s->sampler.accept(d);
            s->dsampler.accept(d);
            if (g.constraint) g.constraint->accept(d);
            s->ending = !s->sink->push(d, past_eog(g), lg, int32_t(V));
        }
        drafted_ += int64_t(s->drafts.size());
        accepted_ += int64_t(m);
        if (s->ending) continue;
        if (!s->drafts.empty()) {
            // the target drops the rejected proposals; the draft processed the next token and
            // all proposals but the last
            const int64_t k = int64_t(s->drafts.size());
            Result<void> r = ctx_.remove_last(s->seq, k - int64_t(m));
            if (r && int64_t(m) < k) r = draft_->remove_last(s->seq, k - 1 - int64_t(m));
            if (int64_t(m) == k) s->pending.push_back(s->drafts.back());
            if (!r) {
                finish(*s, &r.error());
                continue;
            }
        }
        if (ids_only) {
            s->next = ids_[s->row0];
            continue;
        }
        s->logits.assign(row(s->row0 + m), row(s->row0 + m + 1));  // (next is -1: taken at the step's start)
        if (saves_logits(*s)) save(*s, s->r.prompt, &s->logits);
    }
    int64_t used = 0;
    std::vector<SlotInfo> snap(slots_.size());
    for (size_t i = 0; i < slots_.size(); ++i) {
        auto& sp = slots_[i];
        if (sp && sp->ending) finish(*sp, nullptr);
        snap[i].seq = int(i);
        if (!sp) continue;
        used += ctx_.n_past(sp->seq);
        snap[i] = {int(i),
                   sp->id,
                   sp->prefilled < sp->r.prompt.size(),
                   int64_t(sp->r.prompt.size()),
                   int64_t(sp->prefilled),
                   int64_t(sp->sink->n()),
                   ctx_.n_past(sp->seq),
                   sp->res.prompt_cached};
    }
    positions_ = used;
    std::lock_guard<std::mutex> lock(mu_);
    snapshot_ = std::move(snap);
    return true;
}

}  // namespace bigmoe
