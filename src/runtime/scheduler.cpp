#include "runtime/scheduler.h"

#include <algorithm>

namespace bigmoe {

// A running request: its sequence, sampler, output and how far its prompt has been processed.
struct Scheduler::Slot {
    int64_t id = 0;
    int seq = 0;
    Request r;
    Sampler sampler;
    GenerateResult res;
    std::unique_ptr<TokenSink> sink;  // reads r.gen and r.on_piece, writes res
    size_t prefilled = 0;             // prompt tokens processed
    std::vector<float> logits;        // of the last processed token
    bool ending = false;              // its last token is in this step's batch
    Slot(int64_t i, int s, Request&& req, const Tokenizer& tok) : id(i), seq(s), r(std::move(req)), sampler(r.sampler) {
        sink = std::make_unique<TokenSink>(tok, r.gen, r.on_piece, res);
    }
};

Scheduler::Scheduler(Context& ctx, const Tokenizer& tok, const SchedulerParams& p)
    : ctx_(ctx), tok_(tok), p_(p), slots_(size_t(ctx.params().n_seq_max)) {}

Scheduler::~Scheduler() = default;

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
            slots_[seq] = std::make_unique<Slot>(queue_.front().id, int(seq), std::move(queue_.front().r), tok_);
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
    admit();
    std::vector<BatchToken> batch;
    std::vector<Slot*> rows;      // the slot each logits row belongs to
    std::vector<Slot*> involved;  // every slot with a token in the batch
    int64_t budget = std::max<int64_t>(p_.prefill_budget, 1);
    for (auto& sp : slots_) {
        if (!sp) continue;
        Slot& s = *sp;
        if (s.prefilled < s.r.prompt.size()) {  // a chunk of the prompt
            const size_t n = std::min(s.r.prompt.size() - s.prefilled, size_t(budget));
            if (n == 0) continue;
            for (size_t k = 0; k < n; ++k) {
                const int32_t t = s.r.prompt[s.prefilled + k];
                const bool last = s.prefilled + k + 1 == s.r.prompt.size();
                batch.push_back({t, s.seq, last});
                s.sampler.accept(t);
                if (last) rows.push_back(&s);
            }
            s.prefilled += n;
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
        if (ctx_.n_past(s.seq) >= ctx_.params().n_ctx) {
            s.sink->end(StopReason::context_full);
            finish(s, nullptr);
            continue;
        }
        const int32_t id = s.sampler.sample(s.logits.data(), int32_t(s.logits.size()));
        std::optional<TokenLogprob> lp;
        if (g.logprobs >= 0) lp = token_logprob(s.logits.data(), int32_t(s.logits.size()), id, g.logprobs);
        const bool go_on = s.sink->push(id, g.ignore_eos, lp ? &*lp : nullptr);
        if (!go_on && tok_.is_eog(id) && !g.ignore_eos) {
            finish(s, nullptr);
            continue;
        }
        batch.push_back({id, s.seq, true});
        rows.push_back(&s);
        involved.push_back(&s);
        s.ending = !go_on;
    }
    if (batch.empty()) {
        positions_ = 0;  // nothing runs (or only finished requests did)
        std::lock_guard<std::mutex> lock(mu_);
        snapshot_.assign(slots_.size(), SlotInfo{});
        for (size_t i = 0; i < snapshot_.size(); ++i) snapshot_[i].seq = int(i);
        return std::any_of(slots_.begin(), slots_.end(), [](const auto& s) { return s != nullptr; });
    }
    if (auto r = ctx_.decode(batch, &logits_); !r) {
        // every request in the batch fails; the others go on
        for (auto& sp : slots_)
            if (sp && std::find(involved.begin(), involved.end(), sp.get()) != involved.end()) finish(*sp, &r.error());
        return r.error();
    }
    const size_t V = size_t(ctx_.n_vocab());
    for (size_t i = 0; i < rows.size(); ++i)
        rows[i]->logits.assign(logits_.begin() + ptrdiff_t(i * V), logits_.begin() + ptrdiff_t((i + 1) * V));
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
                   ctx_.n_past(sp->seq)};
    }
    positions_ = used;
    std::lock_guard<std::mutex> lock(mu_);
    snapshot_ = std::move(snap);
    return true;
}

}  // namespace bigmoe
