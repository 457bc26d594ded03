#include "core/argmax.h"

#include <algorithm>
#include <bit>
#include <cmath>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace bigmoe {

int32_t argmax(const float* x, int64_t n) {
    if (n <= 0) return -1;
    // One pass: each chunk's maximum in 16 lanes, then the first chunk holding the largest, then
    // the first position there holding it (two passes over 248k logits took ~65 us on a Zen 5,
    // 2% of a GPU decode token).
    constexpr int64_t C = 2048, L = 16;
    float best = -INFINITY;
    int64_t best_c = 0;
    for (int64_t c = 0; c < n; c += C) {
        const int64_t e = std::min(n, c + C);
        float m[L];
        for (float& v : m) v = -INFINITY;
        int64_t i = c;
        for (; i + L <= e; i += L)
            for (int j = 0; j < L; ++j) m[j] = x[i + j] > m[j] ? x[i + j] : m[j];
        float cm = m[0];
        for (int j = 1; j < L; ++j) cm = m[j] > cm ? m[j] : cm;
        for (; i < e; ++i) cm = x[i] > cm ? x[i] : cm;
        if (cm > best) {
            best = cm;
            best_c = c;
        }
    }
    if (best == -INFINITY) {  // no chunk's maximum told where the first -inf is
        for (int64_t i = 0; i < n; ++i)
            if (x[i] == -INFINITY) return int32_t(i);
        return 0;  // every value is NaN
    }
    const int64_t end = std::min(n, best_c + C);
    int64_t k = best_c;
#if defined(__SSE2__)
    const __m128 v = _mm_set1_ps(best);
    for (; k + 16 <= end; k += 16) {
        int mask = 0;
        for (int q = 0; q < 4; ++q) mask |= _mm_movemask_ps(_mm_cmpeq_ps(_mm_loadu_ps(x + k + 4 * q), v)) << (4 * q);
        if (mask) return int32_t(k + std::countr_zero(unsigned(mask)));
    }
#endif
    for (; k < end; ++k)
        if (x[k] == best) return int32_t(k);
    return 0;  // not reached: chunk best_c holds best
}

}  // namespace bigmoe
