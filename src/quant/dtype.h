// Tensor element types with their GGUF (ggml) ids and block geometry.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace bigmoe {

enum class DType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    BF16 = 30,
};

struct DTypeTraits {
    const char* name;
    int64_t block_elems;  // elements per block
    size_t block_bytes;   // bytes per block
    bool weight_type;     // may appear in model files
};

// Traits of a supported type, or nullopt for ids bigmoe does not support.
std::optional<DTypeTraits> dtype_traits(uint32_t id);
const DTypeTraits& traits(DType t);
std::string dtype_name(uint32_t id);
std::optional<DType> dtype_from_name(const std::string& name);

// Bytes of a row of n elements; n must be a multiple of the block size.
inline size_t row_bytes(DType t, int64_t n) {
    const DTypeTraits& tr = traits(t);
    return size_t(n / tr.block_elems) * tr.block_bytes;
}

constexpr int64_t k_qk_k = 256;  // K-quant super-block
constexpr int64_t k_qk8_0 = 32;  // Q8_0 / Q4_0 block

#pragma pack(push, 1)
struct BlockQ4_0 {
    uint16_t d;
    uint8_t qs[16];
};
struct BlockQ8_0 {
    uint16_t d;
    int8_t qs[32];
};
struct BlockQ4_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[128];
};
struct BlockQ5_K {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[32];
    uint8_t qs[128];
};
struct BlockQ6_K {
    uint8_t ql[128];
    uint8_t qh[64];
    int8_t scales[16];
    uint16_t d;
};
struct BlockQ8_K {
    float d;
    int8_t qs[256];
    int16_t bsums[16];
};
#pragma pack(pop)

static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

}  // namespace bigmoe
