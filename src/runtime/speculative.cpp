#include "runtime/speculative.h"
#include "gguf/names.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>

#include "core/fast_exp.h"
#include "runtime/json_constraint.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bigmoe {

namespace {
#if defined(__SSE2__)
// fast_exp::exp in 4 lanes with the baseline instruction set: the same constants and steps, with
// separate multiplies and adds instead of fused ones and n rounded by adding and subtracting
// 1.5 * 2^23 (round-to-nearest, as std::nearbyint).
__m128 exp4(__m128 x) {
    using namespace fast_exp;
    x = _mm_min_ps(_mm_max_ps(x, _mm_set1_ps(k_min)), _mm_set1_ps(k_max));
    const __m128 big = _mm_set1_ps(12582912.0f);
    const __m128 n = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(x, _mm_set1_ps(k_log2e)), big), big);
    const __m128 r =
        _mm_sub_ps(_mm_sub_ps(x, _mm_mul_ps(n, _mm_set1_ps(k_ln2_hi))), _mm_mul_ps(n, _mm_set1_ps(k_ln2_lo)));
    __m128 p = _mm_set1_ps(k_poly[0]);
    for (int i = 1; i < 8; ++i) p = _mm_add_ps(_mm_mul_ps(p, r), _mm_set1_ps(k_poly[i]));
    const __m128i e = _mm_slli_epi32(_mm_add_epi32(_mm_cvtps_epi32(n), _mm_set1_epi32(k_bias)), 23);
    return _mm_mul_ps(_mm_mul_ps(p, _mm_castsi128_ps(e)), _mm_set1_ps(2.0f));
}
#endif
}  // namespace

// vectorized: std::exp over a 152k vocabulary took 0.86 ms per proposal (now 0.22 ms), about as
// long as a decode step of the draft
float top_probability(const float* x, int64_t n) {
    if (n <= 0) return 0;
    const float mx = x[argmax(x, n)];
    double z = 0;
    int64_t i = 0;
#if defined(__SSE2__)
    const __m128 vmx = _mm_set1_ps(mx);
    while (i + 16 <= n) {  // float sums of up to 1024 terms, added up in double
        __m128 acc[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
        for (const int64_t end = std::min(n, i + 1024); i + 16 <= end; i += 16)
            for (int j = 0; j < 4; ++j) acc[j] = _mm_add_ps(acc[j], exp4(_mm_sub_ps(_mm_loadu_ps(x + i + 4 * j), vmx)));
        alignas(16) float lanes[16];
        for (int j = 0; j < 4; ++j) _mm_store_ps(lanes + 4 * j, acc[j]);
        for (float a : lanes) z += a;
    }
#endif
    for (; i < n; ++i) z += fast_exp::exp(x[i] - mx);
    return float(1.0 / z);
}

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

int32_t speculative_draw(const Dist& d, double u) {
    double cum = 0;
    for (const auto& [t, pr] : d) {
        cum += pr;
        if (u < cum) return t;
    }
    return d.back().first;
}

static int32_t draw(const Dist& d, double u) {
    return speculative_draw(d, u);
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

void DraftGuard::record(bool drafted, double seconds, int64_t tokens) {
    if (tokens <= 0) return;
    if (!drafted) {
        // the very first step is a warm-up (cold caches, page faults): not measured
        const double per_token = seconds / double(tokens);
        if (n_plain_++ > 0) plain_ = plain_ == 0 ? per_token : 0.75 * plain_ + 0.25 * per_token;
        if (plain_left_ > 0) --plain_left_;
        if (stopped_at_ > 0 && plain_left_ > 0) {  // within a stretch: was the stop right?
            stretch_time_ += seconds;
            stretch_tokens_ += double(tokens);
            if (stretch_tokens_ >= k_recheck && stretch_time_ / stretch_tokens_ >= stopped_at_) {
                plain_left_ = 0;  // plain decoding measures no faster now: draft again
                backoff_ = k_backoff_min;
                stopped_at_ = 0;
            }
        }
        return;
    }
    draft_time_ = 0.9 * draft_time_ + seconds;
    draft_tokens_ = 0.9 * draft_tokens_ + double(tokens);
    if (++n_since_refresh_ >= k_refresh_every) {  // re-time plain steps; the drafting run goes on
        n_since_refresh_ = 0;
        plain_left_ = k_refresh_steps;
    }
    ++n_draft_run_;
    if (plain_ == 0) return;
    const double ratio = draft_time_ / draft_tokens_ / plain_;
    // judged after k_min_draft_steps, or after 3 when drafting is clearly slower
    if (n_draft_run_ < k_min_draft_steps && !(n_draft_run_ >= 3 && ratio > k_clear_loss)) return;
    if (ratio > k_margin) {  // drafting loses: plain for a while
        plain_left_ = backoff_;
        backoff_ = std::min(2 * backoff_, k_backoff_max);
        stopped_at_ = draft_time_ / draft_tokens_;
        stretch_time_ = stretch_tokens_ = 0;
        n_draft_run_ = n_since_refresh_ = 0;  // the next drafting run is measured afresh
        draft_time_ = draft_tokens_ = 0;
    } else {
        backoff_ = k_backoff_min;
    }
}

void DraftTuner::record(int drafted, int accepted, double step_s) {
    if (drafted <= 0) return;
    drafted = std::min(drafted, k_lengths - 1);
    ++steps_;
    for (int i = 1; i < k_lengths; ++i) {
        reached_[i] *= k_decay;
        accepted_[i] *= k_decay;
        time_s_[i] *= k_decay;
        time_n_[i] *= k_decay;
        if (i <= drafted && i <= accepted + 1) reached_[i] += 1;  // proposal i was judged
        if (i <= accepted) accepted_[i] += 1;
    }
    if (step_s > 0) {
        time_s_[drafted] += step_s;
        time_n_[drafted] += 1;
    }
}

double DraftTuner::acceptance(int i) const {
    i = std::clamp(i, 1, k_lengths - 1);
    const double prior = i == 1 ? 0.5 : acceptance(i - 1), weight = 2;
    return (accepted_[i] + weight * prior) / (reached_[i] + weight);
}

double DraftTuner::step_seconds(int k) const {
    k = std::clamp(k, 1, k_lengths - 1);
    auto timed = [&](int j) { return time_n_[j] > 0.05; };
    auto secs = [&](int j) { return time_s_[j] / time_n_[j]; };
    if (timed(k)) return secs(k);
    std::vector<int> ls;  // the timed lengths, ascending
    for (int j = 1; j < k_lengths; ++j)
        if (timed(j)) ls.push_back(j);
    if (ls.empty()) return 0;
    if (k > ls.back() || ls.size() == 1) {  // above every timed length: in proportion to the batch
        const int j = k > ls.back() ? ls.back() : ls.front();
        return secs(j) * double(k + 1) / double(j + 1);
    }
    // between two timed lengths, or below all: the line through the nearest two (never falling)
    const size_t hi = std::max<size_t>(size_t(std::upper_bound(ls.begin(), ls.end(), k) - ls.begin()), 1);
    const int a = ls[hi - 1], b = ls[hi];
    const double slope = std::max(secs(b) - secs(a), 0.0) / double(b - a);
    return std::max(secs(a) + slope * double(k - a), 1e-9);
}

double DraftTuner::rate(int k) const {
    const double t = step_seconds(k);
    if (t <= 0) return 0;
    double tokens = 1, p = 1;
    for (int i = 1; i <= k; ++i) tokens += p *= acceptance(i);
    return tokens / t;
}

int DraftTuner::next(int max_len) {
    if (max_len <= 1) return std::max(max_len, 1);
    // three lengths, twice: a decoder's first step at a length is not timed (record_step)
    static constexpr int k_first[k_starting] = {2, 4, 3, 2, 4, 3};
    if (steps_ < k_starting) return std::min(k_first[steps_], max_len);
    best_ = 1;
    for (int k = 2; k <= max_len; ++k)
        if (rate(k) > rate(best_)) best_ = k;
    if (steps_ % k_explore_every == k_explore_every - 1) {  // keep the neighbours' estimates current
        flip_ = !flip_;
        const int k = best_ + (flip_ ? 1 : -1);
        return std::clamp(k, 1, max_len);
    }
    return best_;
}

Result<void> check_draft_compatible(const Model& target, const Model& draft) {
    const auto* a = target.file().find(gguf::key::tokenizer_ggml_tokens);
    const auto* b = draft.file().find(gguf::key::tokenizer_ggml_tokens);
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
                                             const float* verify_logits, std::vector<float>& logits,
                                             std::vector<int32_t>& out) {
    const int64_t V = t_.n_vocab();
    const int64_t reject = int64_t(draft.size() - accepted);
    if (reject > 0) BM_TRY(t_.remove_last(seq_, reject));
    if (d_ && !draft.empty()) {
        // the draft consumed cur and draft[0..n-2]; it keeps cur and the accepted drafts
        const int64_t consumed = int64_t(draft.size()), keep = 1 + int64_t(accepted);
        if (keep < consumed)
            BM_TRY(d_->remove_last(seq_, consumed - keep));
        else if (accepted == draft.size())
            draft_pending_.push_back(draft.back());  // accepted but never fed to the draft
    }
    out.push_back(cur);
    out.insert(out.end(), draft.begin(), draft.begin() + long(accepted));
    if (verify_logits) logits.assign(verify_logits + accepted * size_t(V), verify_logits + (accepted + 1) * size_t(V));
    stats_.steps += 1;
    stats_.drafted += int64_t(draft.size());
    stats_.accepted += int64_t(accepted);
    stats_.generated += 1 + int64_t(accepted);
    return {};
}

int SpeculativeDecoder::max_draft() const {
    const int depth = int(std::min(t_.params().rollback_depth, d_ ? d_->params().rollback_depth : 1 << 20));
    const int64_t room = t_.params().n_ctx - t_.n_past(seq_) - 1;
    if (plain_step_) return 0;
    return int(std::min<int64_t>(std::min(step_len_, depth), std::max<int64_t>(room, 0)));
}

void SpeculativeDecoder::begin_step(bool guarded) {
    plain_step_ = guarded && p_.guard && guard_.plain_next();
    step_len_ = p_.draft_max;
    if (p_.adaptive && !plain_step_)
        step_len_ = std::max(tuner_.next(p_.draft_max), std::min(p_.draft_min, p_.draft_max));
}

void SpeculativeDecoder::record_step(int drafted, int accepted, double seconds, bool guarded) {
    const uint32_t bit = drafted > 0 && drafted < 32 ? uint32_t(1) << drafted : 0;
    const bool untimed = bit && !(timed_lengths_ & bit);  // the first step at this length
    timed_lengths_ |= bit;
    const bool starting = drafted > 0 && p_.adaptive && tuner_.starting();  // asked before it counts this step
    tuner_.record(drafted, accepted, untimed ? 0.0 : seconds);
    const int64_t tokens = 1 + accepted;
    if (guarded && p_.guard && !untimed && !starting) guard_.record(!plain_step_, seconds, tokens);
    if (!plain_step_) {
        stats_.drafting_steps += 1;
        stats_.drafting_tokens += tokens;
        stats_.drafting_seconds += seconds;
    }
    stats_.plain_s_per_token = guard_.plain_s_per_token();
}

Result<std::vector<std::vector<int32_t>>> SpeculativeDecoder::draft_tokens(
    const std::vector<SpeculativeDecoder*>& ds, const std::vector<int32_t>& cur,
    const std::function<int32_t(size_t, const float*, size_t)>& pick) {
    const size_t n = ds.size();
    Context& draft = *ds[0]->d_;
    const int64_t V = draft.n_vocab();
    std::vector<std::vector<int32_t>> drafts(n), feed(n);
    std::vector<char> drafting(n);
    for (size_t i = 0; i < n; ++i) {
        feed[i] = std::move(ds[i]->draft_pending_);
        ds[i]->draft_pending_.clear();
        feed[i].push_back(cur[i]);
        drafting[i] = ds[i]->max_draft() > 0;
    }
    std::vector<float> dl;
    for (;;) {
        std::vector<BatchToken> batch;
        std::vector<size_t> rows;
        for (size_t i = 0; i < n; ++i) {
            if (drafting[i] && draft.n_past(ds[i]->seq_) + int64_t(feed[i].size()) > draft.params().n_ctx)
                drafting[i] = 0;
            if (!drafting[i]) continue;
            for (size_t j = 0; j < feed[i].size(); ++j)
                batch.push_back({feed[i][j], ds[i]->seq_, j + 1 == feed[i].size()});
            feed[i].clear();
            rows.push_back(i);
        }
        if (batch.empty()) break;
        BM_TRY(draft.decode(batch, &dl));
        for (size_t r = 0; r < rows.size(); ++r) {
            const size_t i = rows[r];
            const int32_t x = pick(i, dl.data() + r * size_t(V), drafts[i].size());
            if (x < 0) {
                drafting[i] = 0;
                continue;
            }
            drafts[i].push_back(x);
            feed[i].push_back(x);
            if (int(drafts[i].size()) >= ds[i]->max_draft()) drafting[i] = 0;
        }
    }
    for (size_t i = 0; i < n; ++i)
        if (!feed[i].empty() && drafts[i].empty()) ds[i]->draft_pending_ = feed[i];  // cur never fed
    return drafts;
}

Result<void> SpeculativeDecoder::step_greedy(std::vector<float>& logits, std::vector<int32_t>& out) {
    return step_greedy_batch({this}, {&logits}, {&out});
}

Result<void> SpeculativeDecoder::step_greedy_batch(const std::vector<SpeculativeDecoder*>& ds,
                                                   const std::vector<std::vector<float>*>& logits,
                                                   const std::vector<std::vector<int32_t>*>& outs) {
    const size_t n = ds.size();
    if (n == 0) return {};
    if (logits.size() != n || outs.size() != n) return make_error("speculative: one logits and output per sequence");
    Context& target = ds[0]->t_;
    Context* draft = ds[0]->d_;
    for (const SpeculativeDecoder* d : ds)
        if (&d->t_ != &target || d->d_ != draft)
            return make_error("speculative: sequences decoded together must share the target and draft contexts");
    const int64_t V = target.n_vocab();
    const auto t_begin = std::chrono::steady_clock::now();
    for (SpeculativeDecoder* d : ds) d->begin_step(n == 1);
    std::vector<int32_t> cur(n);
    // the target's own next token, and copies of the constraints to try proposals on
    std::vector<std::unique_ptr<JsonConstraint>> tried(n);
    for (size_t i = 0; i < n; ++i) {
        JsonConstraint* c = ds[i]->cons_;
        cur[i] = c ? constrained_argmax(*c, logits[i]->data(), V, ds[i]->masked_) : argmax(logits[i]->data(), V);
        if (!c) continue;
        c->accept(cur[i]);
        tried[i] = c->clone();
    }
    // 1. proposals by prompt lookup, or by the draft model
    std::vector<std::vector<int32_t>> drafts(n);
    if (!draft) {
        for (size_t i = 0; i < n; ++i) {
            ds[i]->history_.push_back(cur[i]);
            drafts[i] = ngram_draft(ds[i]->history_, ds[i]->max_draft());
            if (!tried[i]) continue;
            size_t keep = 0;  // up to the first proposal the constraint refuses
            while (keep < drafts[i].size() && tried[i]->allows(drafts[i][keep])) tried[i]->accept(drafts[i][keep++]);
            drafts[i].resize(keep);
        }
    } else {
        BM_ASSIGN(
            drafts, draft_tokens(ds, cur, [&](size_t i, const float* row, size_t n_proposed) -> int32_t {
                const SpecParams& p = ds[i]->p_;
                if (p.draft_p_min > 0 && int(n_proposed) >= p.draft_min && top_probability(row, V) < p.draft_p_min)
                    return -1;
                if (!tried[i]) return argmax(row, V);
                const int32_t x = constrained_argmax(*tried[i], row, V, ds[i]->masked_);
                tried[i]->accept(x);
                return x;
            }));
    }
    // 2. verification: every sequence's cur + drafts in one target batch, logits for all of them;
    // without constraints, in one micro-batch: the backend's greedy tokens, then the row after
    // the accepted ones (a GPU reads back indices and a row, not 1 + drafts rows a sequence)
    std::vector<BatchToken> batch;
    std::vector<size_t> first_row(n);
    for (size_t i = 0; i < n; ++i) {
        first_row[i] = batch.size();
        batch.push_back({cur[i], ds[i]->seq_, true});
        for (int32_t t : drafts[i]) batch.push_back({t, ds[i]->seq_, true});
    }
    bool ids_only = int64_t(batch.size()) <= target.params().n_ubatch;
    for (const SpeculativeDecoder* d : ds) ids_only = ids_only && !d->cons_;
    std::vector<float> vl;
    std::vector<int32_t> ids;
    BM_TRY(ids_only ? target.decode(batch, nullptr, &ids) : target.decode(batch, &vl));
    // 3. accept the longest agreeing prefix; roll back what was rejected, on both models
    std::vector<size_t> accepted(n, 0);
    for (size_t i = 0; i < n; ++i) {
        SpeculativeDecoder& d = *ds[i];
        const float* l = ids_only ? nullptr : vl.data() + first_row[i] * size_t(V);
        size_t& a = accepted[i];
        JsonConstraint* c = d.cons_;
        auto target_token = [&](size_t j) {
            return ids_only ? ids[first_row[i] + j]
                   : c      ? constrained_argmax(*c, l + j * size_t(V), V, d.masked_)
                            : argmax(l + j * size_t(V), V);
        };
        while (a < drafts[i].size() && target_token(a) == drafts[i][a]) {
            if (c) c->accept(drafts[i][a]);
            ++a;
        }
        if (!draft) d.history_.insert(d.history_.end(), drafts[i].begin(), drafts[i].begin() + long(a));
        if (ids_only) BM_TRY(target.read_logits(int64_t(first_row[i] + a), logits[i]));
        BM_TRY(d.finish_step(cur[i], drafts[i], a, l, *logits[i], *outs[i]));
    }
    const double step_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count();
    for (size_t i = 0; i < n; ++i) ds[i]->record_step(int(drafts[i].size()), int(accepted[i]), step_s, n == 1);
    return {};
}

Result<void> SpeculativeDecoder::step_sampled(Sampler& ts, Sampler& ds, std::vector<float>& logits,
                                              std::vector<int32_t>& out) {
    if (!d_) return make_error("speculative sampling needs a draft model (prompt lookup is greedy only)");
    const int32_t V = int32_t(t_.n_vocab());
    const auto t_begin = std::chrono::steady_clock::now();
    begin_step(true);
    std::uniform_real_distribution<double> U(0.0, 1.0);
    const int32_t cur = next_ >= 0 ? next_ : draw(ts.distribution(logits.data(), V), U(rng_));
    ts.accept(cur);
    std::vector<Dist> qs;
    std::vector<std::vector<int32_t>> drafts;
    BM_ASSIGN(drafts, draft_tokens({this}, {cur}, [&](size_t, const float* row, size_t n_proposed) -> int32_t {
                  Dist q = ds.distribution(row, V);
                  if (p_.draft_p_min > 0 && int(n_proposed) >= p_.draft_min && q.front().second < p_.draft_p_min)
                      return -1;
                  const int32_t x = draw(q, U(rng_));
                  qs.push_back(std::move(q));
                  return x;
              }));
    const std::vector<int32_t>& draft = drafts[0];
    std::vector<int32_t> batch = {cur};
    batch.insert(batch.end(), draft.begin(), draft.end());
    std::vector<float> vl;
    BM_TRY(t_.decode_seq(seq_, batch, true, &vl));
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
    BM_TRY(finish_step(cur, draft, accepted, vl.data(), logits, out));
    record_step(int(draft.size()), int(accepted),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t_begin).count(), true);
    return {};
}

}  // namespace bigmoe
