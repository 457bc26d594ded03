// Interleaved ("packed") layouts of Q4_K, Q6_K and Q8_0 weights for the CPU backend: 8 consecutive rows are
// stored together per super-block, so one 32-byte load holds 4 weights of each of the 8 rows and
// one multiply-accumulate instruction (u8 x s8 -> int32, dpbusd) advances all 8 dot products.
// The row-at-a-time kernels spent most of their instructions per token on shuffles, scale
// decoding and int16 pair sums; with the packed layout a token costs ~1/3 of them, so products
// of 2-4 tokens (speculative verification, prefill tiles) stay near the memory bound.
//
// A packed group of 8 rows has exactly the bytes of the 8 rows it replaces (expert strides and
// row offsets that are multiples of 8 keep their meaning); only the order inside changes. The
// scales stay 6-bit (Q4_K) or int8 (Q6_K); d and dmin stay fp16.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/dtype.h"

namespace bigmoe::cpu {

#pragma pack(push, 1)
// Q4_K, 8 rows, one super-block (256 values per row).
struct BlockQ4_Kx8 {
    uint16_t d[8], dmin[8];  // per row
    uint32_t scales[3][8];   // scales[w][r]: 32-bit word w of row r's 12 packed scale bytes
    // chunk c (values 8c .. 8c + 7) in 32 bytes; row r at bytes 4r .. 4r + 3, where byte b holds
    // value 8c + b in its low nibble and value 8c + 4 + b in its high nibble
    uint8_t qs[32][32];
};
// Where the top 2 bits of a Q6_K value 16j + 4m + b sit in its packed qh byte: 4, 6, 0, 2 for m =
// 0..3, so a kernel places them at bits 4-5 (above the low nibble) with one shift or none
// (packed_q6_k's unpacking: 13 vector operations per 16 values and 8 rows instead of 21).
constexpr int q6_top_bits_at(int m) {
    return (2 * m + 4) & 7;
}
// Q6_K, 8 rows, one super-block. Values are unsigned 6-bit (the -32 offset is applied per scale).
// The bytes of each 16-value sub-block follow each other, so a product reads one forward stream
// (three interleaved streams, low bits / high bits / scales, measured 2x slower from memory).
struct BlockQ6_Kx8 {
    uint16_t d[8];
    int8_t scales[8][8][2];  // scales[p][r] = row r's scales 2p and 2p + 1 (16 values each)
    struct Sub {
        // low 4 bits of values 16j .. 16j + 15, laid out like BlockQ4_Kx8::qs (chunks 2j, 2j + 1)
        uint8_t ql[2][32];
        // row r at bytes 4r .. 4r + 3: byte b holds the top 2 bits of value 16j + 4m + b at bits
        // q6_top_bits_at(m) and the next (m = 0..3)
        uint8_t qh[32];
    } sub[16];
};
// Q8_0, 8 rows, one block (32 values per row). Values are stored + 128 (unsigned, for u8 x s8
// products; the kernel subtracts 128 * sum(activations)).
struct BlockQ8_0x8 {
    uint16_t d[8];
    uint8_t qs[8][32];  // group g (values 4g .. 4g + 3): row r at bytes 4r .. 4r + 3
};
#pragma pack(pop)

static_assert(sizeof(BlockQ8_0x8) == 8 * 34);
static_assert(sizeof(BlockQ4_Kx8) == 8 * 144);
static_assert(sizeof(BlockQ6_Kx8) == 8 * 210);

constexpr int64_t k_pack_rows = 8;

// Whether weights of type t with rows of n_in values can be packed.
bool packable(DType t, int64_t n_in);
// Packs 8 rows (row r at src + r * row_bytes) into dst (8 * row_bytes bytes).
void pack_rows(DType t, const uint8_t* src, size_t row_bytes, int64_t n_in, uint8_t* dst);
// Row r (0..7) of a packed group back in the original block layout (row_bytes bytes).
void unpack_row(DType t, const uint8_t* group, int64_t n_in, int r, uint8_t* dst);

}  // namespace bigmoe::cpu
