#include "runtime/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <unordered_map>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bigmoe {

int32_t argmax(const float* x, int64_t n) {
    if (n <= 0) return -1;
    constexpr int L = 16;
    float m[L];
    for (float& v : m) v = x[0];
    int64_t i = 0;
    for (; i + L <= n; i += L)
        for (int j = 0; j < L; ++j) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
    float mx = m[0];
    for (int j = 1; j < L; ++j) mx = m[j] > mx ? m[j] : mx;
    for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
    int64_t k = 0;
#if defined(__SSE2__)
    // the first position holding the maximum, 16 at a time (a scalar search took half of the
    // ~60 us an argmax over 152k logits cost)
    const __m128 v = _mm_set1_ps(mx);
    for (; k + 16 <= n; k += 16) {
        int mask = 0;
        for (int q = 0; q < 4; ++q) mask |= _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + k + 4 * q), v)) << (4 * q);
        if (mask) return int32_t(k + std::countr_zero(unsigned(mask)));
    }
#endif
    for (; k < n; ++k)
        if (x[k] == mx) return int32_t(k);
    return 0;  // NaNs only
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(const float* logits, int32_t n) const {
    const bool penalties =
        !history_.empty() && (p_.repeat_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f);
    if (p_.temp <= 0.0f && !penalties) return {{argmax(logits, n), 1.0}};
    // by logit, ties by token id (a stable sort's order); with top-k only the first k are sorted
    auto before = [](const std::pair<int32_t, double>& a, const std::pair<int32_t, double>& b) {
        return a.second > b.second || (a.second == b.second && a.first < b.first);
    };
    std::vector<std::pair<int32_t, double>> c;
    if (!penalties && p_.top_k > 0 && p_.top_k < n) {
        // top-k in one pass over the logits: a heap of the k best so far, its worst on top (the
        // same k as sorting every token; 152k logits, k = 40: 0.45 -> 0.16 ms)
        const size_t k = size_t(p_.top_k);
        c.reserve(k);
        for (int32_t i = 0; i < n; ++i) {
            if (c.size() == k) {
                if (double(logits[i]) < c.front().second) continue;
                const std::pair<int32_t, double> cand{i, double(logits[i])};
                if (!before(cand, c.front())) continue;
                std::pop_heap(c.begin(), c.end(), before);
                c.back() = cand;
            } else {
                c.push_back({i, double(logits[i])});
            }
            std::push_heap(c.begin(), c.end(), before);
        }  // (sorted in step 3)
    } else {
        c.resize(static_cast<size_t>(n));
        for (int32_t i = 0; i < n; ++i) c[size_t(i)] = {i, double(logits[i])};
    }
    // 1. penalties
    if (penalties) {
        std::unordered_map<int32_t, int> count;
        for (int32_t t : history_) ++count[t];
        for (auto& [tok, n_seen] : count) {
            if (tok < 0 || tok >= n) continue;
            double& l = c[size_t(tok)].second;
            l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
            l -= double(n_seen) * p_.frequency_penalty + p_.presence_penalty;
        }
    }
    // 2. greedy
    if (p_.temp <= 0.0f) {
        auto best = std::max_element(c.begin(), c.end(), [](auto& a, auto& b) { return a.second < b.second; });
        return {{best->first, 1.0}};
    }
    // 3. top-k (done above without penalties)
    if (p_.top_k > 0 && size_t(p_.top_k) < c.size()) {
        std::partial_sort(c.begin(), c.begin() + p_.top_k, c.end(), before);
        c.resize(size_t(p_.top_k));
    } else {
        std::sort(c.begin(), c.end(), before);
    }
    auto softmax = [](std::vector<std::pair<int32_t, double>>& v, double t) {
        const double mx = v.front().second;
        double sum = 0;
        std::vector<double> p(v.size());
        for (size_t i = 0; i < v.size(); ++i) sum += p[i] = std::exp((v[i].second - mx) / t);
        for (size_t i = 0; i < v.size(); ++i) p[i] /= sum;
        return p;
    };
    std::vector<double> prob = softmax(c, 1.0);
    // 4. top-p: the smallest prefix whose mass reaches top_p
    if (p_.top_p < 1.0f) {
        double cum = 0;
        size_t keep = c.size();
        for (size_t i = 0; i < c.size(); ++i) {
            cum += prob[i];
            if (cum >= p_.top_p) {
                keep = i + 1;
                break;
            }
        }
        c.resize(keep);
        prob.resize(keep);
    }
    // 5. min-p: drop tokens below min_p times the best probability
    if (p_.min_p > 0.0f) {
        size_t keep = 1;
        while (keep < c.size() && prob[keep] >= p_.min_p * prob[0]) ++keep;
        c.resize(keep);
    }
    // 6. temperature
    prob = softmax(c, double(p_.temp));
    std::vector<std::pair<int32_t, double>> out(c.size());
    for (size_t i = 0; i < c.size(); ++i) out[i] = {c[i].first, prob[i]};
    return out;
}

int32_t Sampler::sample(const float* logits, int32_t n_vocab) {
    const auto d = distribution(logits, n_vocab);
    int32_t tok = d.front().first;
    if (d.size() > 1) {
        // 7. draw: 53 random bits, then walk the cumulative distribution
        const double u = double(rng_() >> 11) * (1.0 / 9007199254740992.0);
        double cum = 0;
        tok = d.back().first;
        for (const auto& [t, p] : d) {
            cum += p;
            if (u < cum) {
                tok = t;
                break;
            }
        }
    }
    accept(tok);
    return tok;
}

void Sampler::accept(int32_t token) {
    history_.push_back(token);
    while (int32_t(history_.size()) > std::max(0, p_.penalty_last_n)) history_.pop_front();
}

}  // namespace bigmoe
