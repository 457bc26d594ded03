// Samplers: seeded determinism, and chi-square goodness of fit of the sampled frequencies to the
// expected truncated/renormalised distribution for temperature, top-k, top-p and min-p.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "runtime/sampler.h"
#include "testlib.h"

namespace bigmoe {
namespace {

// p-value upper tail of chi-square with k degrees of freedom (Wilson-Hilferty approximation).
double chi2_pvalue(double x, int k) {
    const double z = (std::cbrt(x / k) - (1 - 2.0 / (9 * k))) / std::sqrt(2.0 / (9 * k));
    return 0.5 * std::erfc(z / std::sqrt(2.0));
}

// Expected distribution computed independently from the sampler's code path.
std::vector<double> expected(const std::vector<float>& logits, const SamplerParams& p) {
    const size_t n = logits.size();
    std::vector<int> idx(n);
    for (size_t i = 0; i < n; ++i) idx[i] = int(i);
    std::sort(idx.begin(), idx.end(), [&](int a, int b) { return logits[size_t(a)] > logits[size_t(b)]; });
    std::vector<double> p1(n);
    double s = 0;
    for (size_t i = 0; i < n; ++i) s += p1[i] = std::exp(double(logits[i]));
    for (auto& x : p1) x /= s;
    std::vector<bool> keep(n, true);
    for (size_t r = 0; r < n; ++r) {
        const int t = idx[r];
        if (p.top_k > 0 && int(r) >= p.top_k) keep[size_t(t)] = false;
    }
    // top-p over the kept set, renormalised among the kept
    double kept_mass = 0;
    for (size_t i = 0; i < n; ++i)
        if (keep[i]) kept_mass += p1[i];
    double cum = 0;
    bool reached = false;
    for (size_t r = 0; r < n; ++r) {
        const int t = idx[r];
        if (!keep[size_t(t)]) continue;
        if (reached) {
            keep[size_t(t)] = false;
            continue;
        }
        cum += p1[size_t(t)] / kept_mass;
        if (p.top_p < 1 && cum >= p.top_p) reached = true;
    }
    const double best = p1[size_t(idx[0])];
    for (size_t i = 0; i < n; ++i)
        if (p.min_p > 0 && p1[i] < p.min_p * best) keep[i] = false;
    std::vector<double> q(n, 0.0);
    double z = 0;
    for (size_t i = 0; i < n; ++i)
        if (keep[i]) z += q[i] = std::exp(double(logits[i]) / p.temp);
    for (auto& x : q) x /= z;
    return q;
}

void check_fit(const SamplerParams& p) {
    const std::vector<float> logits = {2.0f, 1.5f, 1.0f, 0.7f, 0.3f, 0.0f, -0.5f, -1.0f};
    const auto want = expected(logits, p);
    Sampler s(p);
    const int draws = 200000;
    std::vector<int> hist(logits.size(), 0);
    for (int i = 0; i < draws; ++i) {
        s.reset();
        ++hist[size_t(s.sample(logits.data(), int32_t(logits.size())))];
    }
    double chi2 = 0;
    int dof = -1;
    for (size_t i = 0; i < logits.size(); ++i) {
        if (want[i] == 0) {
            EXPECT_EQ(hist[i], 0) << "token " << i << " should be filtered out";
            continue;
        }
        const double e = want[i] * draws;
        chi2 += (hist[i] - e) * (hist[i] - e) / e;
        ++dof;
    }
    ASSERT_GT(dof, 0);
    EXPECT_GT(chi2_pvalue(chi2, dof), 1e-4) << "chi2 " << chi2 << " dof " << dof;
}

TEST(Sampler, temperature_matches_distribution) {
    SamplerParams p;
    p.top_k = 0;
    p.top_p = 1;
    p.min_p = 0;
    p.temp = 0.7f;
    p.seed = testing::fresh_seed();
    check_fit(p);
}
TEST(Sampler, top_k_matches_distribution) {
    SamplerParams p;
    p.top_k = 3;
    p.top_p = 1;
    p.min_p = 0;
    p.temp = 1.3f;
    p.seed = testing::fresh_seed();
    check_fit(p);
}
TEST(Sampler, top_p_matches_distribution) {
    SamplerParams p;
    p.top_k = 0;
    p.top_p = 0.8f;
    p.min_p = 0;
    p.temp = 1.0f;
    p.seed = testing::fresh_seed();
    check_fit(p);
}
TEST(Sampler, min_p_matches_distribution) {
    SamplerParams p;
    p.top_k = 0;
    p.top_p = 1;
    p.min_p = 0.2f;
    p.temp = 0.9f;
    p.seed = testing::fresh_seed();
    check_fit(p);
}

TEST(Sampler, same_seed_same_tokens_and_greedy_is_argmax) {
    std::mt19937 rng(testing::fresh_seed());
    auto logits = testing::random_floats(rng, 1000, -5, 5);
    SamplerParams p;
    p.seed = 1234;
    Sampler a(p), b(p);
    for (int i = 0; i < 200; ++i) EXPECT_EQ(a.sample(logits.data(), 1000), b.sample(logits.data(), 1000));
    p.temp = 0;
    Sampler g(p);
    EXPECT_EQ(g.sample(logits.data(), 1000), int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin()));
}

TEST(Sampler, penalties_lower_repeated_tokens) {
    std::vector<float> logits = {1.0f, 1.0f, 1.0f};
    SamplerParams p;
    p.temp = 0;
    p.repeat_penalty = 2.0f;
    p.presence_penalty = 0.5f;
    Sampler s(p);
    s.accept(0);
    s.accept(1);
    EXPECT_EQ(s.sample(logits.data(), 3), 2);
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// The sampler chain step by step as written out in its comments (every token as a (id, logit)
// pair, the bias added, penalties on the seen tokens, sorted, softmax, top-p prefix, min-p prefix, softmax at the
// temperature): distribution() must give the same tokens in the same order and the same
// probabilities, ties included.
std::vector<std::pair<int32_t, double>> chain_reference(const std::vector<float>& l, const SamplerParams& p,
                                                        const std::vector<int32_t>& seen) {
    std::vector<std::pair<int32_t, double>> c;
    for (size_t i = 0; i < l.size(); ++i) c.push_back({int32_t(i), double(l[i])});
    for (const auto& [t, b] : p.logit_bias) c[size_t(t)].second += double(b);
    std::vector<int> times(l.size(), 0);
    for (int32_t t : seen) ++times[size_t(t)];
    for (size_t i = 0; i < l.size(); ++i) {
        if (times[i] == 0) continue;
        double& v = c[i].second;
        v = v > 0 ? v / p.repeat_penalty : v * p.repeat_penalty;
        v -= double(times[i]) * p.frequency_penalty + p.presence_penalty;
    }
    std::stable_sort(c.begin(), c.end(), [](auto& a, auto& b) { return a.second > b.second; });
    if (p.temp <= 0) return {{c[0].first, 1.0}};
    if (p.top_k > 0 && size_t(p.top_k) < c.size()) c.resize(size_t(p.top_k));
    auto softmax = [&](double t) {
        std::vector<double> q;
        double z = 0;
        for (auto& e : c) z += std::exp((e.second - c[0].second) / t);
        for (auto& e : c) q.push_back(std::exp((e.second - c[0].second) / t) / z);
        return q;
    };
    std::vector<double> q = softmax(1.0);
    double cum = 0;
    size_t keep = c.size();
    for (size_t i = 0; i < c.size() && p.top_p < 1.0f; ++i)
        if ((cum += q[i]) >= p.top_p) {
            keep = i + 1;
            break;
        }
    size_t m = 1;
    while (p.min_p > 0 && m < keep && q[m] >= p.min_p * q[0]) ++m;
    c.resize(p.min_p > 0 ? m : keep);
    q = softmax(double(p.temp));
    std::vector<std::pair<int32_t, double>> out;
    for (size_t i = 0; i < c.size(); ++i) out.push_back({c[i].first, q[i]});
    return out;
}

TEST(Sampler, distribution_matches_the_chain_step_by_step) {
    std::mt19937 rng(testing::fresh_seed());
    for (int trial = 0; trial < 60; ++trial) {
        const size_t n = 50 + rng() % 3000;
        std::vector<float> l(n);
        for (auto& v : l) v = trial % 2 ? float(int(rng() % 21) - 10) * 0.5f : float(rng() % 100000) * 1e-4f;
        SamplerParams sp;
        sp.temp = trial % 10 == 9 ? 0.0f : 0.7f;
        sp.top_k = int(std::vector<int>{0, 1, 5, 40, int(n) - 1, int(n) + 3}[size_t(trial % 6)]);
        sp.top_p = trial % 3 ? 0.9f : 1.0f;
        sp.min_p = trial % 4 ? 0.05f : 0.0f;
        std::vector<int32_t> seen;  // penalties in every other trial, on tokens seen up to 3 times
        if (trial % 2) {
            sp.repeat_penalty = 1.3f;
            sp.presence_penalty = 0.2f;
            sp.frequency_penalty = 0.1f;
            for (int j = 0; j < 30; ++j) seen.push_back(int32_t(rng() % (n / 4)));
        }
        if (trial % 3 == 1)  // a bias on tokens seen and unseen, some twice, some banned
            for (int j = 0; j < 20; ++j)
                sp.logit_bias.push_back(
                    {int32_t(rng() % (n / 2)), j % 7 == 0 ? -INFINITY : float(int(rng() % 13) - 6) * 0.5f});
        Sampler sampler(sp);
        for (int32_t t : seen) sampler.accept(t);
        const auto got = sampler.distribution(l.data(), int32_t(n));
        const auto want = chain_reference(l, sp, seen);
        ASSERT_EQ(got.size(), want.size()) << "trial " << trial << " top_k " << sp.top_k;
        for (size_t i = 0; i < got.size(); ++i) {
            ASSERT_EQ(got[i].first, want[i].first) << "trial " << trial << " rank " << i;
            ASSERT_NEAR(got[i].second, want[i].second, 1e-12) << "trial " << trial << " rank " << i;
        }
    }
}

// argmax against the plain loop for any length (several of its 2048-value chunks among them),
// with ties, the maximum in any chunk, NaNs (never the maximum, at position 0 too), infinities,
// zeros of both signs (they tie), rows of -inf only and of NaNs only.
TEST(Argmax, matches_the_first_largest) {
    std::mt19937 rng(testing::fresh_seed());
    for (int trial = 0; trial < 600; ++trial) {
        const int64_t n = 1 + int64_t(rng() % (trial % 2 ? 3000 : 12000));
        const std::vector<float> x = testing::argmax_trial_values(rng, n, trial);
        EXPECT_EQ(argmax(x.data(), n), testing::first_largest(x.data(), n)) << "n " << n << ", trial " << trial;
    }
}

// Log-probabilities against a float64 log-softmax: the chosen token's value and the n best in
// order (ties by id); a whole distribution sums to one.
TEST(TokenLogprob, matches_a_float64_log_softmax) {
    std::mt19937 rng(testing::fresh_seed());
    for (int trial = 0; trial < 50; ++trial) {
        const int32_t n = 1 + int32_t(rng() % 5000);
        std::vector<float> x(static_cast<size_t>(n));
        std::normal_distribution<float> d(0.0f, 3.0f);
        for (auto& v : x) v = trial % 3 == 0 ? float(int(rng() % 7)) : d(rng);  // some with ties
        double z = 0;
        for (float v : x) z += std::exp(double(v));
        const int32_t tok = int32_t(rng() % uint32_t(n));
        const int n_top = int(rng() % 21);
        const TokenLogprob r = token_logprob(x.data(), n, tok, n_top);
        EXPECT_EQ(r.token, tok);
        EXPECT_NEAR(r.logprob, double(x[size_t(tok)]) - std::log(z), 1e-5);
        std::vector<int32_t> order(static_cast<size_t>(n));
        for (int32_t i = 0; i < n; ++i) order[size_t(i)] = i;
        std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[size_t(a)] > x[size_t(b)]; });
        ASSERT_EQ(r.top.size(), size_t(std::min(n_top, int(n))));
        for (size_t i = 0; i < r.top.size(); ++i) {
            EXPECT_EQ(r.top[i].first, order[i]) << i;
            EXPECT_NEAR(r.top[i].second, double(x[size_t(order[i])]) - std::log(z), 1e-5);
        }
        if (r.top.size() == size_t(n)) {  // the whole distribution: it sums to one
            double total = 0;
            for (const auto& t : r.top) total += std::exp(double(t.second));
            EXPECT_NEAR(total, 1.0, 1e-5);
        }
    }
}

}  // namespace
}  // namespace bigmoe
