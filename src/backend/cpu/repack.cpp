#include "backend/cpu/repack.h"

#include <cstring>

#include "core/result.h"

namespace bigmoe::cpu {

namespace {

// A block's 256 quantized values in output order (Q4_K: 0..15, Q6_K: 0..63) written back.
void set_values_q4_k(BlockQ4_K& b, const uint8_t* q) {
    for (int c = 0; c < 4; ++c)
        for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = uint8_t(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
}

void set_values_q6_k(BlockQ6_K& b, const uint8_t* q) {
    for (int n = 0; n < 2; ++n) {
        uint8_t* L = b.ql + 64 * n;
        uint8_t* H = b.qh + 32 * n;
        const uint8_t* v = q + 128 * n;
        for (int l = 0; l < 32; ++l) {
            L[l] = uint8_t((v[l] & 0xF) | ((v[l + 64] & 0xF) << 4));
            L[l + 32] = uint8_t((v[l + 32] & 0xF) | ((v[l + 96] & 0xF) << 4));
            H[l] = uint8_t((v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) | ((v[l + 96] >> 4) << 6));
        }
    }
}

// Values of n_chunks packed chunks of one row (chunk c, byte b = v[8c + b] low | v[8c + 4 + b] high).
void get_nibbles(const uint8_t (*src)[32], int r, uint8_t* v, int n_chunks = 32) {
    for (int c = 0; c < n_chunks; ++c)
        for (int b = 0; b < 4; ++b) {
            v[8 * c + b] = src[c][4 * r + b] & 0xF;
            v[8 * c + 4 + b] = src[c][4 * r + b] >> 4;
        }
}

// Packing works on 4 bytes at a time (a model is packed at load: ~1 GB/s per core this way,
// 7x the byte-by-byte loop).
inline uint32_t ld4(const uint8_t* p) {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}
inline void st4(uint8_t* p, uint32_t v) {
    std::memcpy(p, &v, 4);
}
constexpr uint32_t k_lo4 = 0x0F0F0F0F, k_lo2 = 0x03030303;

// Chunk of 8 values whose 4-bit parts are nibbles (at shift) of bytes p[0..3] (values 0..3) and
// p[4..7] (values 4..7): byte b = value b | value 4 + b << 4.
inline uint32_t nibble_chunk(const uint8_t* p, int shift) {
    return ((ld4(p) >> shift) & k_lo4) | (((ld4(p + 4) >> shift) & k_lo4) << 4);
}

void pack_q4_k(const uint8_t* src, size_t row_bytes, int64_t nb, BlockQ4_Kx8* dst) {
    for (int64_t i = 0; i < nb; ++i)
        for (int r = 0; r < 8; ++r) {
            const BlockQ4_K& b = reinterpret_cast<const BlockQ4_K*>(src + size_t(r) * row_bytes)[i];
            dst[i].d[r] = b.d;
            dst[i].dmin[r] = b.dmin;
            for (int w = 0; w < 3; ++w) std::memcpy(&dst[i].scales[w][r], b.scales + 4 * w, 4);
            // sub-block j: low (j even) or high (j odd) nibbles of qs[32 (j / 2) ..]
            for (int j = 0; j < 8; ++j)
                for (int c = 0; c < 4; ++c)
                    st4(&dst[i].qs[4 * j + c][4 * r], nibble_chunk(b.qs + 32 * (j / 2) + 8 * c, 4 * (j & 1)));
        }
}

void pack_q6_k(const uint8_t* src, size_t row_bytes, int64_t nb, BlockQ6_Kx8* dst) {
    for (int64_t i = 0; i < nb; ++i)
        for (int r = 0; r < 8; ++r) {
            const BlockQ6_K& b = reinterpret_cast<const BlockQ6_K*>(src + size_t(r) * row_bytes)[i];
            dst[i].d[r] = b.d;
            for (int p = 0; p < 8; ++p) {
                dst[i].scales[p][r][0] = b.scales[2 * p];
                dst[i].scales[p][r][1] = b.scales[2 * p + 1];
            }
            // sub-block j = values 128 n + 32 qq + l0 .. + 15 (values_q6_k's quarters): low bits
            // from ql[64 n + 32 (qq & 1) + l0 + i] (high nibble for qq >= 2), top bits at 2 qq of
            // qh[32 n + l0 + i], stored at q6_top_bits_at(m) of their byte
            for (int j = 0; j < 16; ++j) {
                const int n = j / 8, qq = (j % 8) / 2, l0 = 16 * (j % 2);
                const uint8_t* L = b.ql + 64 * n + 32 * (qq & 1) + l0;
                const uint8_t* H = b.qh + 32 * n + l0;
                BlockQ6_Kx8::Sub& s = dst[i].sub[j];
                st4(&s.ql[0][4 * r], nibble_chunk(L, qq >= 2 ? 4 : 0));
                st4(&s.ql[1][4 * r], nibble_chunk(L + 8, qq >= 2 ? 4 : 0));
                uint32_t h = 0;
                for (int m = 0; m < 4; ++m) h |= ((ld4(H + 4 * m) >> (2 * qq)) & k_lo2) << q6_top_bits_at(m);
                st4(&s.qh[4 * r], h);
            }
        }
}

void pack_q8_0(const uint8_t* src, size_t row_bytes, int64_t nb, BlockQ8_0x8* dst) {
    for (int64_t i = 0; i < nb; ++i)
        for (int r = 0; r < 8; ++r) {
            const BlockQ8_0& b = reinterpret_cast<const BlockQ8_0*>(src + size_t(r) * row_bytes)[i];
            dst[i].d[r] = b.d;
            for (int g = 0; g < 8; ++g)
                st4(&dst[i].qs[g][4 * r], ld4(reinterpret_cast<const uint8_t*>(b.qs) + 4 * g) ^ 0x80808080u);
        }
}

}  // namespace

bool packable(DType t, int64_t n_in) {
    if (t == DType::Q8_0) return n_in > 0 && n_in % 32 == 0;
    return (t == DType::Q4_K || t == DType::Q6_K) && n_in > 0 && n_in % 256 == 0;
}

void pack_rows(DType t, const uint8_t* src, size_t row_bytes, int64_t n_in, uint8_t* dst) {
    BM_CHECK(packable(t, n_in));
    if (t == DType::Q4_K) return pack_q4_k(src, row_bytes, n_in / 256, reinterpret_cast<BlockQ4_Kx8*>(dst));
    if (t == DType::Q8_0) return pack_q8_0(src, row_bytes, n_in / 32, reinterpret_cast<BlockQ8_0x8*>(dst));
    pack_q6_k(src, row_bytes, n_in / 256, reinterpret_cast<BlockQ6_Kx8*>(dst));
}

void unpack_row(DType t, const uint8_t* group, int64_t n_in, int r, uint8_t* dst) {
    BM_CHECK(packable(t, n_in) && r >= 0 && r < 8);
    if (t == DType::Q8_0) {
        for (int64_t i = 0; i < n_in / 32; ++i) {
            const BlockQ8_0x8& g = reinterpret_cast<const BlockQ8_0x8*>(group)[i];
            BlockQ8_0& b = reinterpret_cast<BlockQ8_0*>(dst)[i];
            b.d = g.d[r];
            for (int k = 0; k < 32; ++k) b.qs[k] = int8_t(g.qs[k / 4][4 * r + k % 4] - 128);
        }
        return;
    }
    uint8_t v[256];
    for (int64_t i = 0; i < n_in / 256; ++i) {
        if (t == DType::Q4_K) {
            const BlockQ4_Kx8& g = reinterpret_cast<const BlockQ4_Kx8*>(group)[i];
            BlockQ4_K& b = reinterpret_cast<BlockQ4_K*>(dst)[i];
            b.d = g.d[r];
            b.dmin = g.dmin[r];
            for (int w = 0; w < 3; ++w) std::memcpy(b.scales + 4 * w, &g.scales[w][r], 4);
            get_nibbles(g.qs, r, v);
            set_values_q4_k(b, v);
        } else {
            const BlockQ6_Kx8& g = reinterpret_cast<const BlockQ6_Kx8*>(group)[i];
            BlockQ6_K& b = reinterpret_cast<BlockQ6_K*>(dst)[i];
            b.d = g.d[r];
            for (int p = 0; p < 8; ++p) {
                b.scales[2 * p] = g.scales[p][r][0];
                b.scales[2 * p + 1] = g.scales[p][r][1];
            }
            for (int j = 0; j < 16; ++j) {
                const BlockQ6_Kx8::Sub& s = g.sub[j];
                get_nibbles(s.ql, r, v + 16 * j, 2);
                for (int b4 = 0; b4 < 4; ++b4)
                    for (int m = 0; m < 4; ++m)
                        v[16 * j + 4 * m + b4] =
                            uint8_t(v[16 * j + 4 * m + b4] | (((s.qh[4 * r + b4] >> q6_top_bits_at(m)) & 3) << 4));
            }
            set_values_q6_k(b, v);
        }
    }
}

}  // namespace bigmoe::cpu
