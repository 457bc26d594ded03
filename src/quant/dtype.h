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
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ4_NL = 20,
    BF16 = 30,
};

struct DTypeTraits {
    const char* name;
    int64_t block_elems;  // elements per block
    size_t block_bytes;   // bytes per block
    bool weight_type;     // may appear in model files
};

// The KV cache's types (-ctk / -ctv), the reference engine's set: f32, f16, bf16, q8_0, q4_0,
// q4_1, q5_0, q5_1, iq4_nl.
bool is_cache_type(DType t);
const char* cache_type_list();  // "f32, f16, ..." for messages
// A type in lower case, as -ctk and llama-bench spell it ("f16", "q8_0").
std::string cache_type_name(DType t);

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
// x = q * d + m (q 0..15: element j in qs[j]'s low nibble, element j + 16 in its high nibble)
struct BlockQ4_1 {
    uint16_t d, m;
    uint8_t qs[16];
};
// x = (q - 16) * d with q's fifth bit for element j in bit j of qh (little-endian)
struct BlockQ5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[16];
};
// x = q * d + m, q 0..31 as Q5_0's
struct BlockQ5_1 {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[16];
};
// x = d * k_iq4nl_values[q] (q 0..15 packed as Q4_0's): a non-uniform 4-bit grid
struct BlockIQ4_NL {
    uint16_t d;
    uint8_t qs[16];
};
inline constexpr int8_t k_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
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
static_assert(sizeof(BlockQ4_1) == 20);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockIQ4_NL) == 18);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);
static_assert(sizeof(BlockQ8_K) == 292);

}  // namespace bigmoe
