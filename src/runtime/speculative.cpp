#include "runtime/speculative.h"

#include <algorithm>
#include <cmath>

namespace bigmoe {

namespace {
int32_t argmax(const float* x, int64_t n) {
    return int32_t(std::max_element(x, x + n) - x);
}

float top_probability(const float* x, int64_t n) {
    const float mx = *std::max_element(x, x + n);
    double z = 0;
    for (int64_t i = 0; i < n; ++i) z += std::exp(double(x[i] - mx));
    return float(1.0 / z);
}
}  // namespace

std::vector<int32_t> ngram_draft(const std::vector<int32_t>& h, int max_tokens, int n_max) {
    const int64_t len = int64_t(h.size());
    for (int n = std::min<int>(n_max, int(len) - 1); n >= 1; --n) {
        // latest earlier occurrence of the last n tokens
        for (int64_t start = len - n - 1; start >= 0; --start) {
            if (!std::equal(h.end() - n, h.end(), h.begin() + start)) continue;
            std::vector<int32_t> out;
            for (int64_t k = start + n; k < len && int(out.size()) < max_tokens; ++k) out.push_back(h[size_t(k)]);
            return out;
        }
    }
    return {};
}

static int32_t draw(const Dist& d, double u) {
    double cum = 0;
    for (const auto& [t, pr] : d) {
        cum += pr;
        if (u < cum) return t;
    }
    return d.back().first;
}

static double prob_of(const Dist& d, int32_t x) {
    for (const auto& [t, pr] : d)
        if (t == x) return pr;
    return 0;
}

int32_t speculative_verify(const Dist& p, const Dist& q, int32_t x, double u1, double u2, bool* accepted) {
    const double px = prob_of(p, x), qx = prob_of(q, x);
    if (qx > 0 && u1 < std::min(1.0, px / qx)) {
        *accepted = true;
        return x;
    }
    *accepted = false;
    // residual r(t) = max(0, p(t) - q(t)), drawn by inverse CDF
    double z = 0;
    for (const auto& [t, pr] : p) z += std::max(0.0, pr - prob_of(q, t));
    if (z <= 0) return p.front().first;  // p == q: cannot happen after a rejection, but stay total
    double cum = 0;
    for (const auto& [t, pr] : p) {
        cum += std::max(0.0, pr - prob_of(q, t)) / z;
        if (u2 < cum) return t;
    }
    return p.back().first;
}

Result<void> check_draft_compatible(const Model& target, const Model& draft) {
    const auto* a = target.file().find("tokenizer.ggml.tokens");
    const auto* b = draft.file().find("tokenizer.ggml.tokens");
    if (!a || !b) return make_error("speculative decoding: both models need a tokenizer");
    const size_t n = std::min(a->arr_s.size(), b->arr_s.size());
    for (size_t i = 0; i < n; ++i)
        if (a->arr_s[i] != b->arr_s[i])
            return make_error("speculative decoding: the draft's vocabulary differs from the target's at token " +
                              std::to_string(i) + " ('" + b->arr_s[i] + "' vs '" + a->arr_s[i] + "')");
    if (a->arr_s.size() != b->arr_s.size())
        return make_error("speculative decoding: vocabulary sizes differ (target " + std::to_string(a->arr_s.size()) +
                          ", draft " + std::to_string(b->arr_s.size()) + ")");
    return {};
}

Result<void> SpeculativeDecoder::finish_step(int32_t cur, const std::vector<int32_t>& draft, size_t accepted,
                                             const std::vector<float>& verify_logits, std::vector<float>& logits,
                                             std::vector<int32_t>& out) {
    const int64_t V = t_.n_vocab();
    const int64_t reject = int64_t(draft.size() - accepted);
    if (reject > 0) BM_TRY(t_.remove_last(0, reject));
    if (d_ && !draft.empty()) {
        // the draft consumed cur and draft[0..n-2]; it keeps cur and the accepted drafts
        const int64_t consumed = int64_t(draft.size()), keep = 1 + int64_t(accepted);
        if (keep < consumed)
            BM_TRY(d_->remove_last(0, consumed - keep));
        else if (accepted == draft.size())
            draft_pending_.push_back(draft.back());  // accepted but never fed to the draft
    }
    out.push_back(cur);
    out.insert(out.end(), draft.begin(), draft.begin() + long(accepted));
    logits.assign(verify_logits.begin() + long(accepted * size_t(V)),
                  verify_logits.begin() + long((accepted + 1) * size_t(V)));
    stats_.steps += 1;
    stats_.drafted += int64_t(draft.size());
    stats_.accepted += int64_t(accepted);
    stats_.generated += 1 + int64_t(accepted);
    return {};
}

Result<void> SpeculativeDecoder::step_greedy(std::vector<float>& logits, std::vector<int32_t>& out) {
    const int64_t V = t_.n_vocab();
    const int32_t cur = argmax(logits.data(), V);  // the target's own next token
    const int max_draft = std::min<int>(
        p_.draft_max, int(std::min(t_.params().rollback_depth, d_ ? d_->params().rollback_depth : 1 << 20)));
    const int64_t room = t_.params().n_ctx - t_.n_past(0) - 1;
    // 1. draft proposals: prompt lookup, or the draft model fed one token at a time
    std::vector<int32_t> draft;
    std::vector<float> dl;
    std::vector<int32_t> feed = draft_pending_;
    feed.push_back(cur);
    draft_pending_.clear();
    if (!d_) {
        history_.push_back(cur);
        draft = ngram_draft(history_, int(std::min<int64_t>(max_draft, room)));
        feed.clear();
    }
    while (d_ && int(draft.size()) < max_draft && int64_t(draft.size()) < room &&
           d_->n_past(0) + int64_t(feed.size()) < d_->params().n_ctx) {
        BM_TRY(d_->decode_seq(0, feed, false, &dl));
        feed.clear();
        const int32_t next = argmax(dl.data(), V);
        if (p_.draft_p_min > 0 && int(draft.size()) >= p_.draft_min && top_probability(dl.data(), V) < p_.draft_p_min)
            break;
        draft.push_back(next);
        feed.push_back(next);
    }
    if (!feed.empty() && draft.empty()) draft_pending_ = feed;  // the draft never consumed cur
    // 2. verification: cur + drafts in one target batch, logits for every position
    std::vector<int32_t> batch = {cur};
    batch.insert(batch.end(), draft.begin(), draft.end());
    std::vector<float> vl;
    BM_TRY(t_.decode_seq(0, batch, true, &vl));
    size_t accepted = 0;
    while (accepted < draft.size() && argmax(vl.data() + accepted * size_t(V), V) == draft[accepted]) ++accepted;
    // 3. roll back what was rejected, on both models
    if (!d_) history_.insert(history_.end(), draft.begin(), draft.begin() + long(accepted));
    BM_TRY(finish_step(cur, draft, accepted, vl, logits, out));
    return {};
}

Result<void> SpeculativeDecoder::step_sampled(Sampler& ts, Sampler& ds, std::vector<float>& logits,
                                              std::vector<int32_t>& out) {
    if (!d_) return make_error("speculative sampling needs a draft model (prompt lookup is greedy only)");
    const int32_t V = int32_t(t_.n_vocab());
    std::uniform_real_distribution<double> U(0.0, 1.0);
    const int32_t cur = next_ >= 0 ? next_ : draw(ts.distribution(logits.data(), V), U(rng_));
    ts.accept(cur);
    const int max_draft =
        std::min<int>(p_.draft_max, int(std::min(t_.params().rollback_depth, d_->params().rollback_depth)));
    const int64_t room = t_.params().n_ctx - t_.n_past(0) - 1;
    std::vector<int32_t> draft;
    std::vector<Dist> qs;
    std::vector<float> dl;
    std::vector<int32_t> feed = draft_pending_;
    feed.push_back(cur);
    draft_pending_.clear();
    while (int(draft.size()) < max_draft && int64_t(draft.size()) < room &&
           d_->n_past(0) + int64_t(feed.size()) < d_->params().n_ctx) {
        BM_TRY(d_->decode_seq(0, feed, false, &dl));
        feed.clear();
        Dist q = ds.distribution(dl.data(), V);
        if (p_.draft_p_min > 0 && int(draft.size()) >= p_.draft_min && q.front().second < p_.draft_p_min) break;
        const int32_t x = draw(q, U(rng_));
        qs.push_back(std::move(q));
        draft.push_back(x);
        feed.push_back(x);
    }
    if (!feed.empty() && draft.empty()) draft_pending_ = feed;
    std::vector<int32_t> batch = {cur};
    batch.insert(batch.end(), draft.begin(), draft.end());
    std::vector<float> vl;
    BM_TRY(t_.decode_seq(0, batch, true, &vl));
    size_t accepted = 0;
    int32_t next = -1;
    for (; accepted < draft.size(); ++accepted) {
        const Dist p = ts.distribution(vl.data() + accepted * size_t(V), V);
        bool ok = false;
        const int32_t tok = speculative_verify(p, qs[accepted], draft[accepted], U(rng_), U(rng_), &ok);
        if (!ok) {
            next = tok;  // drawn from the residual: the target's next token
            break;
        }
        ts.accept(tok);
    }
    if (next < 0) next = draw(ts.distribution(vl.data() + accepted * size_t(V), V), U(rng_));  // bonus token
    for (size_t i = 0; i < accepted; ++i) ds.accept(draft[i]);
    next_ = next;
    BM_TRY(finish_step(cur, draft, accepted, vl, logits, out));
    return {};
}

}  // namespace bigmoe
