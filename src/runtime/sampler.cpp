#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace bigmoe {

TokenLogprob token_logprob(const float* logits, int32_t n, int32_t token, int n_top) {
    // log p = l - (max + log sum exp(l - max)), the sum in double in token order so the value
    // depends on the logits alone
    float mx = logits[argmax(logits, n)];
    double sum = 0;
    for (int32_t i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - double(mx));
    const double log_z = double(mx) + std::log(sum);
    TokenLogprob r;
    r.token = token;
    r.logprob = float(double(logits[token]) - log_z);
    const int k = std::clamp(n_top, 0, int(n));
    if (k > 0) {
        std::vector<int32_t> ids(static_cast<size_t>(n));
        for (int32_t i = 0; i < n; ++i) ids[size_t(i)] = i;
        std::partial_sort(ids.begin(), ids.begin() + k, ids.end(),
                          [&](int32_t a, int32_t b) { return logits[a] != logits[b] ? logits[a] > logits[b] : a < b; });
        for (int i = 0; i < k; ++i) r.top.push_back({ids[size_t(i)], float(double(logits[ids[size_t(i)]]) - log_z)});
    }
    return r;
}

bool plain_greedy(const SamplerParams& p) {
    return p.temp <= 0.0f && p.repeat_penalty == 1.0f && p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f &&
           p.logit_bias.empty();
}

std::vector<std::pair<int32_t, double>> Sampler::distribution(const float* logits, int32_t n) const {
    const bool penalties =
        !history_.empty() && (p_.repeat_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f);
    if (p_.temp <= 0.0f && !penalties && p_.logit_bias.empty()) return {{argmax(logits, n), 1.0}};
    // 0. bias, then 1. penalties: the adjusted logits of the tokens biased or seen, in token order
    // (the others keep theirs)
    std::vector<std::pair<int32_t, double>> adjusted;
    if (penalties || !p_.logit_bias.empty()) {
        std::map<int32_t, std::pair<double, int>> touched;  // token -> (bias, times seen)
        for (const auto& [tok, b] : p_.logit_bias)
            if (tok >= 0 && tok < n) touched[tok].first += double(b);
        if (penalties)
            for (int32_t t : history_)
                if (t >= 0 && t < n) ++touched[t].second;
        for (const auto& [tok, bs] : touched) {
            double l = double(logits[tok]) + bs.first;
            if (bs.second > 0) {
                l = l > 0 ? l / p_.repeat_penalty : l * p_.repeat_penalty;
                l -= double(bs.second) * p_.frequency_penalty + p_.presence_penalty;
            }
            adjusted.push_back({tok, l});
        }
    }
    // 2. greedy is 3. with k = 1. 3. top-k: the k best by logit, ties by token id (a stable sort's
    // order), in one pass over the logits with a heap of the k best so far, its worst on top
    // (152k logits, k = 40: 0.16 ms; building every (token, logit) pair and a partial sort took
    // 0.45 ms), then sorted; all tokens, sorted, when top-k is off.
    auto before = [](const std::pair<int32_t, double>& a, const std::pair<int32_t, double>& b) {
        return a.second > b.second || (a.second == b.second && a.first < b.first);
    };
    const int32_t k = p_.temp <= 0.0f ? 1 : p_.top_k > 0 && p_.top_k < n ? p_.top_k : n;
    std::vector<std::pair<int32_t, double>> c;
    c.reserve(size_t(k));
    double worst = -INFINITY;  // the heap's worst logit once it holds k tokens
    auto adj = adjusted.begin();
    int32_t adj_id = adj == adjusted.end() ? n : adj->first;  // the next token with a penalty
    for (int32_t i = 0; i < n; ++i) {
        double v = logits[i];
        if (i == adj_id) {
            v = adj->second;
            adj_id = ++adj == adjusted.end() ? n : adj->first;
        }
        if (v < worst) continue;  // (most tokens, once the heap is full)
        if (int32_t(c.size()) < k) {
            c.push_back({i, v});
            if (int32_t(c.size()) < k || k == n) continue;
            std::make_heap(c.begin(), c.end(), before);
        } else if (before({i, v}, c.front())) {
            std::pop_heap(c.begin(), c.end(), before);
            c.back() = {i, v};
            std::push_heap(c.begin(), c.end(), before);
        } else {
            continue;
        }
        worst = c.front().second;
    }
    std::sort(c.begin(), c.end(), before);
    if (p_.temp <= 0.0f) return {{c.front().first, 1.0}};
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
