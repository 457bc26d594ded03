// The index of a row's largest value, as greedy sampling picks a token: the first position
// holding it on ties; NaNs are never the largest (0 when every value is NaN); -0 ties with +0.
// Backends that find it where the logits are (Backend::argmax_rows) give the same index.
#pragma once

#include <cstdint>

namespace bigmoe {

int32_t argmax(const float* x, int64_t n);

}  // namespace bigmoe
