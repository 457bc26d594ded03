// Small statistics helpers for benchmarks: mean and sample standard deviation.
#pragma once

#include <cmath>
#include <vector>

namespace bigmoe::bench {

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

}  // namespace bigmoe::bench
