// FNV-1a over bytes: checksums of state files, keys of step shapes, a text's identity.
#pragma once

#include <cstddef>
#include <cstdint>

namespace bigmoe {

constexpr uint64_t k_fnv_offset = 1469598103934665603ull;

// Continues the hash h over n bytes at p.
inline uint64_t fnv1a(const void* p, size_t n, uint64_t h = k_fnv_offset) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

}  // namespace bigmoe
