// AMX (Advanced Matrix Extensions) products of packed Q4_K / Q6_K rows with many tokens.
//
// The tile unit multiplies 16 tokens x 64 activation bytes by 64 x 16 weight bytes in one
// instruction (exact int32 sums), but a K-quant scales every 32 (Q4_K) or 16 (Q6_K) values on
// its own, and scaling per group on AVX-512 costs more than the products. So the scales are
// folded into the weights as base-16 / base-8 digits, each digit times a weight fitting a byte:
//   Q4_K: sc * q = 16 (sc >> 4) q + (sc & 15) q, with (sc & 15) q <= 225 and (sc >> 4) q <= 45
//         (unsigned bytes); the mins' term sum_j m_j ysum_j is a third plane holding m_j.
//   Q6_K: sc (q - 32) = 64 d2 (q - 32) + 8 d1 (q - 32) + d0 (q - 32), digits in [-3, 4]
//         (balanced base 8), so every plane value is in [-128, 124] (signed bytes).
// A super-block is then 3 planes x 4 K = 64 products, combined by shifts: the integers S and M
// of the packed tile kernels, exactly, and then their float operations per (row, token) in their
// order, so a token's result is bit-identical to the 1-token product (the batch invariance the
// engine rests on). The planes are formed per product call from the packed rows (12 KiB a
// super-block for a block of 16 rows, up to 4 blocks at a time, reused by every token tile).
//
// Chosen only when the CPU has AMX-INT8 and the OS grants the tile state (isa/generic.cpp asks
// before any function here runs).
#include <immintrin.h>

// GCC 12 reports the _mm512_undefined_* operand inside several AVX-512 intrinsics as possibly
// uninitialized (its value is never used).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <algorithm>
#include <cstring>
#include <vector>

#include "backend/cpu/kernels.h"
#include "backend/cpu/repack.h"
#include "quant/quants.h"

namespace bigmoe::cpu::amx {

namespace {

constexpr int k_rows = 16;   // weight rows of a block: two packed groups
constexpr int k_toks = 16;   // tokens of a tile
constexpr size_t k_run = 4;  // token tiles that pass a super-block together (their sums stay in L1)
constexpr int k_blocks = 4;  // 16-row blocks a call works on together

// Tiles: activations 0 and 1 (m tokens x 64 bytes), planes 2 to 4 (16 x 64 bytes), results 5
// to 7 (m tokens x 16 rows of int32).
struct alignas(64) TileConfig {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

void configure(int m) {
    TileConfig c;
    for (int t = 0; t < 8; ++t) {
        c.rows[t] = uint8_t(t >= 2 && t <= 4 ? 16 : m);
        c.colsb[t] = 64;
    }
    _tile_loadconfig(&c);
}

inline __m512i load512(const void* p) {
    return _mm512_loadu_si512(p);
}
// Two 32-byte halves (the same part of two packed groups) as one vector: rows 0..7, then 8..15.
inline __m512i join(const void* lo, const void* hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(static_cast<const __m256i*>(lo))),
                              _mm256_loadu_si256(static_cast<const __m256i*>(hi)), 1);
}
inline __m512 h2f16(const uint16_t* lo, const uint16_t* hi) {
    const __m256i h =
        _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo))),
                                _mm_loadu_si128(reinterpret_cast<const __m128i*>(hi)), 1);
    return _mm512_cvtph_ps(h);
}

// A 16-row block's planes. Per super-block: plane p (0..2) x chunk c (64 values) x B tile
// (16 K/4-rows x 16 weight rows x 4 bytes): K/4-row r of chunk c holds values 64c + 4r .. + 3 of
// every row, as the activation tile holds them for every token.
// The tiles' rows are whole cache lines: a row split across two lines measured 2.3x slower.
struct Planes {
    static constexpr size_t k_plane = 4096, k_sb_bytes = 3 * k_plane;
    uint8_t* b = nullptr;  // 64-byte aligned, in `bytes`
    std::vector<uint8_t> bytes;
    std::vector<float> d, dmin;  // per super-block, one lane per weight row
    void size(int64_t nb) {
        const size_t want = size_t(nb) * k_sb_bytes + 64;
        if (bytes.size() < want) bytes.resize(want);
        b = bytes.data() + (64 - reinterpret_cast<uintptr_t>(bytes.data()) % 64) % 64;
        d.resize(size_t(nb) * 16);
        dmin.resize(size_t(nb) * 16);
    }
};

// Byte k of every 32-bit lane in all four of its bytes.
inline __m512i spread_byte(__m512i v, int k) {
    const __m512i base = _mm512_set4_epi32(0x0C0C0C0C, 0x08080808, 0x04040404, 0x00000000);
    return _mm512_shuffle_epi8(v, _mm512_add_epi8(base, _mm512_set1_epi8(char(k))));
}

// Q4_K groups g0 (rows 0..7) and g1 (rows 8..15; the same as g0 for a lone group, whose copies'
// results are not stored).
void prepare_q4_k(const BlockQ4_Kx8* g0, const BlockQ4_Kx8* g1, int64_t nb, Planes& p) {
    p.size(nb);
    const __m512i m4 = _mm512_set1_epi8(0x0F), lo6 = _mm512_set1_epi32(0x3f3f3f3f), lo4 = _mm512_set1_epi32(0x0f0f0f0f),
                  lo2 = _mm512_set1_epi32(0x03030303), digit16 = _mm512_set1_epi32(0x000F000F);
    for (int64_t i = 0; i < nb; ++i) {
        const BlockQ4_Kx8 &b0 = g0[i], &b1 = g1[i];
        // the 6-bit scales and mins of the 16 rows, a byte per sub-block (as packed_q4_k decodes them)
        const __m512i u0 = join(b0.scales[0], b1.scales[0]), u1 = join(b0.scales[1], b1.scales[1]),
                      u2 = join(b0.scales[2], b1.scales[2]);
        const __m512i sc[2] = {_mm512_and_si512(u0, lo6),
                               _mm512_or_si512(_mm512_and_si512(u2, lo4),
                                               _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u0, 6), lo2), 4))};
        const __m512i mn[2] = {_mm512_and_si512(u1, lo6),
                               _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(u2, 4), lo4),
                                               _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(u1, 6), lo2), 4))};
        uint8_t* dst = p.b + size_t(i) * Planes::k_sb_bytes;
        for (int j = 0; j < 8; ++j) {
            // sub-block j: the digits in both 16-bit halves of each row's lane (a byte pair times
            // a digit <= 15 keeps each byte's product, <= 225, in its byte), the min in every byte
            const __m512i s = spread_byte(sc[j / 4], j % 4);
            const __m512i dl = _mm512_and_si512(s, digit16), dh = _mm512_and_si512(_mm512_srli_epi32(s, 4), digit16);
            const __m512i dm = spread_byte(mn[j / 4], j % 4);
            // its 32 values: K/4-rows 8 (j % 2) .. + 7 of chunk j / 2, = nibble e of packed chunk
            // 4j + h for K/4-row 8 (j % 2) + 2h + e
            for (int h = 0; h < 4; ++h) {
                const int c8 = 4 * j + h;
                const __m512i v = join(b0.qs[c8], b1.qs[c8]);
                const __m512i qv[2] = {_mm512_and_si512(v, m4), _mm512_and_si512(_mm512_srli_epi16(v, 4), m4)};
                for (int e = 0; e < 2; ++e) {
                    uint8_t* row = dst + size_t(j / 2) * 1024 + size_t(8 * (j % 2) + 2 * h + e) * 64;
                    _mm512_storeu_si512(row, _mm512_mullo_epi16(qv[e], dl));
                    _mm512_storeu_si512(row + Planes::k_plane, _mm512_mullo_epi16(qv[e], dh));
                    _mm512_storeu_si512(row + 2 * Planes::k_plane, dm);
                }
            }
        }
        _mm512_storeu_ps(&p.d[size_t(i) * 16], h2f16(b0.d, b1.d));
        _mm512_storeu_ps(&p.dmin[size_t(i) * 16], h2f16(b0.dmin, b1.dmin));
    }
}

// A signed byte vector times a signed digit per 32-bit lane (in both 16-bit halves), bytewise;
// the products fit a byte. even / odd: the even and odd bytes sign-extended to 16 bits.
inline __m512i times_digit(__m512i even, __m512i odd, __m512i digit) {
    return _mm512_mask_blend_epi8(__mmask64(0xAAAAAAAAAAAAAAAAull), _mm512_mullo_epi16(even, digit),
                                  _mm512_slli_epi16(_mm512_mullo_epi16(odd, digit), 8));
}

// d0 = the balanced base-8 digit of x in [-3, 4]; returns (x - d0) / 8 (exact).
inline __m512i next_digit(__m512i x, __m512i& d0) {
    const __m512i three = _mm512_set1_epi32(3), seven = _mm512_set1_epi32(7);
    d0 = _mm512_sub_epi32(_mm512_and_si512(_mm512_add_epi32(x, three), seven), three);
    return _mm512_srai_epi32(_mm512_sub_epi32(x, d0), 3);
}
// An int32 lane value (|x| < 2^15) in both 16-bit halves.
inline __m512i both_halves(__m512i x) {
    return _mm512_or_si512(_mm512_and_si512(x, _mm512_set1_epi32(0xFFFF)), _mm512_slli_epi32(x, 16));
}

void prepare_q6_k(const BlockQ6_Kx8* g0, const BlockQ6_Kx8* g1, int64_t nb, Planes& p) {
    p.size(nb);
    const __m512i m4 = _mm512_set1_epi8(0x0F), m30 = _mm512_set1_epi8(0x30), v32 = _mm512_set1_epi8(32);
    for (int64_t i = 0; i < nb; ++i) {
        const BlockQ6_Kx8 &b0 = g0[i], &b1 = g1[i];
        uint8_t* dst = p.b + size_t(i) * Planes::k_sb_bytes;
        for (int pr = 0; pr < 8; ++pr) {
            // scales 2pr and 2pr + 1 of the 16 rows as int16 pairs, one lane per row
            const __m512i pairs = _mm512_cvtepi8_epi16(_mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b0.scales[pr]))),
                _mm_loadu_si128(reinterpret_cast<const __m128i*>(b1.scales[pr])), 1));
            for (int h = 0; h < 2; ++h) {
                const int j = 2 * pr + h;  // sub-block: 16 values, K/4-rows 4 (j % 4) .. + 3 of chunk j / 4
                const __m512i sc =
                    h == 0 ? _mm512_srai_epi32(_mm512_slli_epi32(pairs, 16), 16) : _mm512_srai_epi32(pairs, 16);
                __m512i dg[3];
                const __m512i t = next_digit(next_digit(sc, dg[0]), dg[1]);
                dg[2] = t;  // |t| <= 2 after two digits of a value in [-128, 127]
                for (__m512i& x : dg) x = both_halves(x);
                const __m512i A = join(b0.sub[j].ql[0], b1.sub[j].ql[0]);
                const __m512i B = join(b0.sub[j].ql[1], b1.sub[j].ql[1]);
                const __m512i H = join(b0.sub[j].qh, b1.sub[j].qh);
                // values 16j + 4k .. + 3 of every row (packed_q6_k's w[k]), q - 32 as signed bytes
                const __m512i w[4] = {
                    _mm512_or_si512(_mm512_and_si512(A, m4), _mm512_and_si512(H, m30)),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(A, 4), m4),
                                    _mm512_and_si512(_mm512_srli_epi16(H, 2), m30)),
                    _mm512_or_si512(_mm512_and_si512(B, m4), _mm512_and_si512(_mm512_slli_epi16(H, 4), m30)),
                    _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(B, 4), m4),
                                    _mm512_and_si512(_mm512_slli_epi16(H, 2), m30))};
                for (int k = 0; k < 4; ++k) {
                    const __m512i qs = _mm512_sub_epi8(w[k], v32);
                    const __m512i even = _mm512_srai_epi16(_mm512_slli_epi16(qs, 8), 8), odd = _mm512_srai_epi16(qs, 8);
                    uint8_t* row = dst + size_t(j / 4) * 1024 + size_t(4 * (j % 4) + k) * 64;
                    for (int d = 0; d < 3; ++d)
                        _mm512_storeu_si512(row + size_t(d) * Planes::k_plane, times_digit(even, odd, dg[d]));
                }
            }
        }
        _mm512_storeu_ps(&p.d[size_t(i) * 16], h2f16(b0.d, b1.d));
    }
}

// One chunk of 64 values: activations into tile A (0 or 1: the next chunk's load need not wait
// for this one's products), the three planes against them (DP: _tile_dpbsud for unsigned
// planes, _tile_dpbssd for signed). The tile intrinsics paste their register numbers into the
// instruction text, hence a macro.
#define BM_PLANES_CHUNK(DP, A, a, act_stride, b)       \
    do {                                               \
        _tile_loadd(A, a, act_stride);                 \
        _tile_loadd(2, b, 64);                         \
        DP(5, A, 2);                                   \
        _tile_loadd(3, (b) + Planes::k_plane, 64);     \
        DP(6, A, 3);                                   \
        _tile_loadd(4, (b) + 2 * Planes::k_plane, 64); \
        DP(7, A, 4);                                   \
    } while (0)

// Super-block i of a token tile (m rows of activations act_stride apart, the first token's Q8_K
// row at act): acc / accm (16 floats per token) += its terms, as packed_q4_k / packed_q6_k form
// them (Q6_K has no accm); the sums start at zero on super-block 0.
template <bool Q6>
inline void superblock(const Planes& p, int64_t i, const uint8_t* act, size_t act_stride, int m, float* acc,
                       float* accm) {
    alignas(64) int32_t cbuf[3][k_toks][k_rows];
    const uint8_t* a = act + size_t(i) * sizeof(BlockQ8_K) + offsetof(BlockQ8_K, qs);
    const uint8_t* b = p.b + size_t(i) * Planes::k_sb_bytes;
    _tile_zero(5);
    _tile_zero(6);
    _tile_zero(7);
    if (Q6) {
        BM_PLANES_CHUNK(_tile_dpbssd, 0, a, act_stride, b);
        BM_PLANES_CHUNK(_tile_dpbssd, 1, a + 64, act_stride, b + 1024);
        BM_PLANES_CHUNK(_tile_dpbssd, 0, a + 128, act_stride, b + 2048);
        BM_PLANES_CHUNK(_tile_dpbssd, 1, a + 192, act_stride, b + 3072);
    } else {
        BM_PLANES_CHUNK(_tile_dpbsud, 0, a, act_stride, b);
        BM_PLANES_CHUNK(_tile_dpbsud, 1, a + 64, act_stride, b + 1024);
        BM_PLANES_CHUNK(_tile_dpbsud, 0, a + 128, act_stride, b + 2048);
        BM_PLANES_CHUNK(_tile_dpbsud, 1, a + 192, act_stride, b + 3072);
    }
    _tile_stored(5, cbuf[0], 64);
    _tile_stored(6, cbuf[1], 64);
    _tile_stored(7, cbuf[2], 64);
    const __m512 d = _mm512_loadu_ps(&p.d[size_t(i) * 16]);
    const __m512 dmin = Q6 ? _mm512_setzero_ps() : _mm512_loadu_ps(&p.dmin[size_t(i) * 16]);  // (Q6_K has none)
    const bool first = i == 0;
    const auto sum = [first](const float* x) { return first ? _mm512_setzero_ps() : _mm512_loadu_ps(x); };
    for (int t = 0; t < m; ++t) {
        float yd;
        std::memcpy(&yd, act + size_t(t) * act_stride + size_t(i) * sizeof(BlockQ8_K), sizeof yd);
        const __m512 ydv = _mm512_set1_ps(yd);
        const __m512i p0 = load512(cbuf[0][t]), p1 = load512(cbuf[1][t]), p2 = load512(cbuf[2][t]);
        if (Q6) {
            const __m512i S =
                _mm512_add_epi32(_mm512_add_epi32(_mm512_slli_epi32(p2, 6), _mm512_slli_epi32(p1, 3)), p0);
            _mm512_storeu_ps(acc + 16 * t,
                             _mm512_fmadd_ps(_mm512_cvtepi32_ps(S), _mm512_mul_ps(d, ydv), sum(acc + 16 * t)));
        } else {
            const __m512i S = _mm512_add_epi32(p0, _mm512_slli_epi32(p1, 4));
            _mm512_storeu_ps(acc + 16 * t,
                             _mm512_fmadd_ps(_mm512_cvtepi32_ps(S), _mm512_mul_ps(d, ydv), sum(acc + 16 * t)));
            _mm512_storeu_ps(accm + 16 * t,
                             _mm512_fmadd_ps(_mm512_cvtepi32_ps(p2), _mm512_mul_ps(dmin, ydv), sum(accm + 16 * t)));
        }
    }
}

#undef BM_PLANES_CHUNK

// Token tiles of a product: full tiles read the activations in place; a last partial tile (when
// there is more than one tile) is copied into a zero-padded 16-row buffer, so every tile uses one
// tile configuration.
struct TokenTiles {
    struct Tile {
        const uint8_t* act;
        int m;  // tokens whose results are kept
    };
    std::vector<Tile> tiles;
    std::vector<uint8_t> pad;
    int rows = 0;  // the configured tile rows
    void plan(const uint8_t* act, size_t act_stride, int64_t n_tok) {
        tiles.clear();
        rows = int(std::min<int64_t>(k_toks, n_tok));
        int64_t t = 0;
        for (; t + k_toks <= n_tok; t += k_toks) tiles.push_back({act + size_t(t) * act_stride, k_toks});
        if (t == n_tok) return;
        if (t == 0) {
            tiles.push_back({act, int(n_tok)});
            return;
        }
        const int m = int(n_tok - t);
        pad.assign(size_t(k_toks) * act_stride, 0);
        std::memcpy(pad.data(), act + size_t(t) * act_stride, size_t(m) * act_stride);
        tiles.push_back({pad.data(), m});
    }
};

// Per k_blocks blocks of 16 rows: their planes formed once, then super-block by super-block the
// token tiles pass in runs of k_run, each tile over every block (a super-block's planes, 12 KiB a
// block, and a tile's activations stay in L1 meanwhile); each token's float sums still run in
// super-block order.
template <bool Q6>
void packed_gemm(const uint8_t* w, size_t group_bytes, int64_t n_groups, const uint8_t* act, size_t act_stride,
                 int64_t n_tok, int64_t n, float* out, int64_t out_stride) {
    using Block = std::conditional_t<Q6, BlockQ6_Kx8, BlockQ4_Kx8>;
    const int64_t nb = n / 256;
    thread_local Planes planes[k_blocks];
    thread_local TokenTiles tt;
    thread_local std::vector<float> acc;  // per (block, tile): acc then accm, 16 tokens x 16 rows each
    tt.plan(act, act_stride, n_tok);
    configure(tt.rows);
    const size_t n_tiles = tt.tiles.size(), tile_floats = size_t(k_toks) * 32;
    acc.resize(size_t(k_blocks) * n_tiles * tile_floats);
    // up to k_blocks 16-row blocks at a time: a token tile's activations, loaded for the first
    // block, are in L1 for the others
    for (int64_t g0 = 0; g0 < n_groups; g0 += 2 * k_blocks) {
        const int nblk = int(std::min<int64_t>(k_blocks, (n_groups - g0 + 1) / 2));
        for (int bl = 0; bl < nblk; ++bl) {
            const int64_t g = g0 + 2 * bl;
            const Block* b0 = reinterpret_cast<const Block*>(w + size_t(g) * group_bytes);
            const Block* b1 = g + 1 < n_groups ? reinterpret_cast<const Block*>(w + size_t(g + 1) * group_bytes) : b0;
            if constexpr (Q6)
                prepare_q6_k(b0, b1, nb, planes[bl]);
            else
                prepare_q4_k(b0, b1, nb, planes[bl]);
        }
        for (size_t k0 = 0; k0 < n_tiles; k0 += k_run)
            for (int64_t i = 0; i < nb; ++i)
                for (size_t k = k0; k < std::min(n_tiles, k0 + k_run); ++k)
                    for (int bl = 0; bl < nblk; ++bl) {
                        float* a = &acc[(size_t(bl) * n_tiles + k) * tile_floats];
                        superblock<Q6>(planes[bl], i, tt.tiles[k].act, act_stride, tt.rows, a, a + k_toks * 16);
                    }
        for (int bl = 0; bl < nblk; ++bl) {
            const int64_t g = g0 + 2 * bl;
            const __mmask16 keep = __mmask16(g + 1 < n_groups ? 0xFFFF : 0x00FF);
            for (size_t k = 0; k < n_tiles; ++k) {
                const float* a = &acc[(size_t(bl) * n_tiles + k) * tile_floats];
                for (int t = 0; t < tt.tiles[k].m; ++t) {
                    const __m512 r =
                        Q6 ? _mm512_loadu_ps(a + 16 * t)
                           : _mm512_sub_ps(_mm512_loadu_ps(a + 16 * t), _mm512_loadu_ps(a + (k_toks + t) * 16));
                    _mm512_mask_storeu_ps(out + (int64_t(k) * k_toks + t) * out_stride + 8 * g, keep, r);
                }
            }
        }
    }
    _tile_release();
}

}  // namespace

void add_kernels(Kernels& k) {
    k.isa = "amx";
    k.packed_gemm[int(DType::Q4_K)] = packed_gemm<false>;
    k.packed_gemm[int(DType::Q6_K)] = packed_gemm<true>;
}

}  // namespace bigmoe::cpu::amx
