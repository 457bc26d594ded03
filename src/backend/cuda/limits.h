// The sizes the CUDA kernels are written for. Plain C++: the backend's host code, the kernels and
// the tests share them.
#pragma once

#include <cstdint>

namespace bigmoe::cuda {

constexpr int64_t k_att_max_d = 256;   // attention: head sizes that are multiples of 4 up to this
constexpr int64_t k_conv_max = 8;      // the causal conv: kernels of 2 up to this
constexpr int64_t k_gdn_max_dk = 256;  // the Gated DeltaNet: key sizes up to this

inline bool gdn_supported(int64_t dk) {
    return dk >= 1 && dk <= k_gdn_max_dk;
}

}  // namespace bigmoe::cuda
