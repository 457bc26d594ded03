// Small statistics helpers (benchmarks, load tests, perplexity): mean, sample standard deviation
// and nearest-rank quantiles.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace bigmoe {

inline double mean(const std::vector<double>& v) {
    if (v.empty()) return 0;
    double s = 0;
    for (double x : v) s += x;
    return s / double(v.size());
}

// Sample standard deviation (n - 1 in the denominator); 0 for fewer than two samples.
inline double stddev(const std::vector<double>& v) {
    if (v.size() < 2) return 0;
    const double m = mean(v);
    double s = 0;
    for (double x : v) s += (x - m) * (x - m);
    return std::sqrt(s / double(v.size() - 1));
}

// The q quantile (0..1) of sorted values: the one at rank q * (n - 1), rounded; 0 when empty.
inline double quantile_sorted(const std::vector<double>& sorted, double q) {
    if (sorted.empty()) return 0;
    return sorted[std::min(sorted.size() - 1, size_t(q * double(sorted.size() - 1) + 0.5))];
}

}  // namespace bigmoe
