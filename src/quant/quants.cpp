#include "quant/quants.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/fp16.h"
#include "core/result.h"

namespace bigmoe {

void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = uint8_t((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
        *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

void set_scale_min_k4(int j, uint8_t* q, uint8_t sc, uint8_t m) {
    if (j < 4) {
        q[j] = uint8_t((q[j] & 0xC0) | sc);
        q[j + 4] = uint8_t((q[j + 4] & 0xC0) | m);
    } else {
        q[j + 4] = uint8_t((sc & 0x0F) | ((m & 0x0F) << 4));
        q[j - 4] = uint8_t((q[j - 4] & 0x3F) | ((sc >> 4) << 6));
        q[j] = uint8_t((q[j] & 0x3F) | ((m >> 4) << 6));
    }
}

// ---------------------------------------------------------------- dequantization

static void dequant_q4_0(const BlockQ4_0* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 16; ++j) {
            y[j] = float((b[i].qs[j] & 0x0F) - 8) * d;
            y[j + 16] = float((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q8_0(const BlockQ8_0* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 32; ++j) y[j] = float(b[i].qs[j]) * d;
    }
}

static void dequant_q4_1(const BlockQ4_1* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        const float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        for (int j = 0; j < 16; ++j) {
            y[j] = float(b[i].qs[j] & 0x0F) * d + m;
            y[j + 16] = float(b[i].qs[j] >> 4) * d + m;
        }
    }
}

// The five-bit level of element j of a Q5_0 / Q5_1 block.
static int q5_level(const uint8_t* qs, const uint8_t* qh, int j) {
    const uint32_t h = uint32_t(qh[0]) | uint32_t(qh[1]) << 8 | uint32_t(qh[2]) << 16 | uint32_t(qh[3]) << 24;
    const int lo = j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4;
    return lo | int((h >> j) & 1) << 4;
}

static void dequant_q5_0(const BlockQ5_0* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 32; ++j) y[j] = float(q5_level(b[i].qs, b[i].qh, j) - 16) * d;
    }
}

static void dequant_q5_1(const BlockQ5_1* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        const float d = fp16_to_f32(b[i].d), m = fp16_to_f32(b[i].m);
        for (int j = 0; j < 32; ++j) y[j] = float(q5_level(b[i].qs, b[i].qh, j)) * d + m;
    }
}

static void dequant_iq4_nl(const BlockIQ4_NL* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 32) {
        const float d = fp16_to_f32(b[i].d);
        for (int j = 0; j < 16; ++j) {
            y[j] = d * float(k_iq4nl_values[b[i].qs[j] & 0x0F]);
            y[j + 16] = d * float(k_iq4nl_values[b[i].qs[j] >> 4]);
        }
    }
}

static void dequant_q4_k(const BlockQ4_K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
        for (int c = 0; c < 4; ++c) {
            uint8_t sc, m;
            get_scale_min_k4(2 * c, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            get_scale_min_k4(2 * c + 1, b[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            const uint8_t* q = b[i].qs + 32 * c;
            for (int l = 0; l < 32; ++l) *y++ = d1 * float(q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * float(q[l] >> 4) - m2;
        }
    }
}

static void dequant_q5_k(const BlockQ5_K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
        for (int c = 0; c < 4; ++c) {
            uint8_t sc, m;
            get_scale_min_k4(2 * c, b[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            get_scale_min_k4(2 * c + 1, b[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            const uint8_t* q = b[i].qs + 32 * c;
            for (int l = 0; l < 32; ++l) *y++ = d1 * float((q[l] & 0xF) + (((b[i].qh[l] >> (2 * c)) & 1) << 4)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * float((q[l] >> 4) + (((b[i].qh[l] >> (2 * c + 1)) & 1) << 4)) - m2;
        }
    }
}

static void dequant_q6_k(const BlockQ6_K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i) {
        const float d = fp16_to_f32(b[i].d);
        for (int n = 0; n < 2; ++n) {
            const uint8_t* L = b[i].ql + 64 * n;
            const uint8_t* H = b[i].qh + 32 * n;
            const int8_t* sc = b[i].scales + 8 * n;
            float* o = y + 128 * n;
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int q1 = int((L[l] & 0xF) | (((H[l] >> 0) & 3) << 4)) - 32;
                const int q2 = int((L[l + 32] & 0xF) | (((H[l] >> 2) & 3) << 4)) - 32;
                const int q3 = int((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32;
                const int q4 = int((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32;
                o[l] = d * float(sc[is + 0]) * float(q1);
                o[l + 32] = d * float(sc[is + 2]) * float(q2);
                o[l + 64] = d * float(sc[is + 4]) * float(q3);
                o[l + 96] = d * float(sc[is + 6]) * float(q4);
            }
        }
        y += 256;
    }
}

static void dequant_q8_k(const BlockQ8_K* b, float* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, y += 256)
        for (int j = 0; j < 256; ++j) y[j] = b[i].d * float(b[i].qs[j]);
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
    switch (t) {
        case DType::F32:
            std::memcpy(dst, src, size_t(n) * 4);
            return;
        case DType::F16: {
            const uint16_t* s = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(s[i]);
            return;
        }
        case DType::BF16: {
            const uint16_t* s = static_cast<const uint16_t*>(src);
            for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(s[i]);
            return;
        }
        case DType::Q4_0:
            return dequant_q4_0(static_cast<const BlockQ4_0*>(src), dst, n / 32);
        case DType::Q8_0:
            return dequant_q8_0(static_cast<const BlockQ8_0*>(src), dst, n / 32);
        case DType::Q4_1:
            return dequant_q4_1(static_cast<const BlockQ4_1*>(src), dst, n / 32);
        case DType::Q5_0:
            return dequant_q5_0(static_cast<const BlockQ5_0*>(src), dst, n / 32);
        case DType::Q5_1:
            return dequant_q5_1(static_cast<const BlockQ5_1*>(src), dst, n / 32);
        case DType::IQ4_NL:
            return dequant_iq4_nl(static_cast<const BlockIQ4_NL*>(src), dst, n / 32);
        case DType::Q4_K:
            return dequant_q4_k(static_cast<const BlockQ4_K*>(src), dst, n / 256);
        case DType::Q5_K:
            return dequant_q5_k(static_cast<const BlockQ5_K*>(src), dst, n / 256);
        case DType::Q6_K:
            return dequant_q6_k(static_cast<const BlockQ6_K*>(src), dst, n / 256);
        case DType::Q8_K:
            return dequant_q8_k(static_cast<const BlockQ8_K*>(src), dst, n / 256);
    }
    BM_CHECK(false && "dequantize_row: bad type");
}

// ---------------------------------------------------------------- activation quantizers

void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n) {
    for (int64_t i = 0; i < n / 32; ++i, x += 32) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
        // As the reference engine's x86 path: multiplier 127/amax, round half to even.
        const float d = amax / 127.0f;
        const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
        y[i].d = f32_to_fp16(d);
        for (int j = 0; j < 32; ++j) y[i].qs[j] = int8_t(std::nearbyint(x[j] * id));
    }
}

void quantize_row_q8_k(const float* x, BlockQ8_K* y, int64_t n) {
    for (int64_t i = 0; i < n / 256; ++i, x += 256) {
        float amax = 0, max = 0;
        for (int j = 0; j < 256; ++j) {
            const float ax = std::fabs(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            std::memset(&y[i], 0, sizeof(BlockQ8_K));
            continue;
        }
        const float iscale = -127.0f / max;
        for (int j = 0; j < 256; ++j) {
            const int v = int(std::nearbyint(iscale * x[j]));
            y[i].qs[j] = int8_t(std::min(127, v));
        }
        for (int g = 0; g < 16; ++g) {
            int s = 0;
            for (int j = 0; j < 16; ++j) s += y[i].qs[16 * g + j];
            y[i].bsums[g] = int16_t(s);
        }
        y[i].d = 1.0f / iscale;
    }
}

// ---------------------------------------------------------------- weight quantizers

// The value of a block's 32 with the largest magnitude (the first of equals).
static float signed_max(const float* x) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; ++j)
        if (std::fabs(x[j]) > amax) {
            amax = std::fabs(x[j]);
            max = x[j];
        }
    return max;
}

// A 32-value block's levels q into the layouts of dtype.h: value j's low four bits in qs[j]'s low
// nibble (j < 16) or qs[j - 16]'s high one, and (Q5_0 / Q5_1) its fifth bit in bit j of qh.
template <class Block>
static void pack_levels(const int* q, Block& b) {
    for (int j = 0; j < 16; ++j) b.qs[j] = uint8_t((q[j] & 0x0F) | (q[j + 16] & 0x0F) << 4);
    if constexpr (requires { b.qh; }) {
        uint32_t h = 0;
        for (int j = 0; j < 32; ++j) h |= uint32_t(q[j] >> 4) << j;
        for (int k = 0; k < 4; ++k) b.qh[k] = uint8_t(h >> (8 * k));
    }
}

// Q4_0 / Q5_0: the block's value of largest magnitude at level 0 (-levels after the offset), the
// rest rounded to the grid of that step.
template <class Block>
static void quant_signed(const float* x, Block* y, int64_t nb, int levels) {
    for (int64_t i = 0; i < nb; ++i, x += 32) {
        const float d = signed_max(x) / -float(levels);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        int q[32];
        for (int j = 0; j < 32; ++j) q[j] = std::min(2 * levels - 1, int(x[j] * id + (float(levels) + 0.5f)));
        pack_levels(q, y[i]);
    }
}

// Q4_1 / Q5_1: levels 0..nmax spanning [min, max] of the block.
template <class Block>
static void quant_min_max(const float* x, Block* y, int64_t nb, int nmax) {
    for (int64_t i = 0; i < nb; ++i, x += 32) {
        float lo = x[0], hi = x[0];
        for (int j = 1; j < 32; ++j) {
            lo = std::min(lo, x[j]);
            hi = std::max(hi, x[j]);
        }
        const float d = (hi - lo) / float(nmax);
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = f32_to_fp16(d);
        y[i].m = f32_to_fp16(lo);
        int q[32];
        for (int j = 0; j < 32; ++j) q[j] = std::clamp(int((x[j] - lo) * id + 0.5f), 0, nmax);
        pack_levels(q, y[i]);
    }
}

// The grid index nearest to v (k_iq4nl_values is sorted).
static int iq4nl_nearest(float v) {
    int lo = 0;
    for (int k = 1; k < 16; ++k)
        if (v > 0.5f * float(k_iq4nl_values[k - 1] + k_iq4nl_values[k])) lo = k;
    return lo;
}

// IQ4_NL: a scale search. Each candidate maps the block's largest magnitude near one end of the
// grid, takes every element's nearest grid value, and fits the scale by least squares for those
// values; the candidate with the least squared error wins.
static void quant_iq4_nl(const float* x, BlockIQ4_NL* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += 32) {
        const float max = signed_max(x);
        int best_q[32] = {};
        float best_d = 0;
        if (max != 0) {
            double best_err = INFINITY;
            for (int t = -9; t <= 9; ++t) {
                // the largest element lands on grid value (-127 + t) at this inverse scale
                const float id = float(k_iq4nl_values[0] + t) / max;
                int q[32];
                double sxv = 0, svv = 0;
                for (int j = 0; j < 32; ++j) {
                    q[j] = iq4nl_nearest(x[j] * id);
                    const double v = k_iq4nl_values[q[j]];
                    sxv += double(x[j]) * v;
                    svv += v * v;
                }
                if (svv <= 0) continue;
                const float d = float(sxv / svv);
                // the error with the scale as it is stored (fp16)
                const float dq = fp16_to_f32(f32_to_fp16(d));
                double err = 0;
                for (int j = 0; j < 32; ++j) {
                    const double e = double(x[j]) - double(dq) * k_iq4nl_values[q[j]];
                    err += e * e;
                }
                if (err < best_err) {
                    best_err = err;
                    best_d = d;
                    std::copy_n(q, 32, best_q);
                }
            }
        }
        y[i].d = f32_to_fp16(best_d);
        pack_levels(best_q, y[i]);
    }
}

// Fit one K-quant super-block with unsigned levels 0..nmax: per 32-element sub-block a scale and
// a min, both quantized to 6 bits under fp16 super-scales. Writes levels into L[256].
static void fit_k_block(const float* x, int nmax, uint16_t* d_out, uint16_t* dmin_out, uint8_t* scales12, uint8_t* L) {
    float sub_scale[8], sub_min[8];
    for (int s = 0; s < 8; ++s) {
        float lo = x[32 * s], hi = x[32 * s];
        for (int j = 0; j < 32; ++j) {
            lo = std::min(lo, x[32 * s + j]);
            hi = std::max(hi, x[32 * s + j]);
        }
        lo = std::min(lo, 0.0f);
        sub_scale[s] = (hi - lo) / float(nmax);
        sub_min[s] = -lo;
    }
    float max_scale = 0, max_min = 0;
    for (int s = 0; s < 8; ++s) {
        max_scale = std::max(max_scale, sub_scale[s]);
        max_min = std::max(max_min, sub_min[s]);
    }
    const float d = max_scale / 63.0f, dmin = max_min / 63.0f;
    *d_out = f32_to_fp16(d);
    *dmin_out = f32_to_fp16(dmin);
    const float dq = fp16_to_f32(*d_out), dminq = fp16_to_f32(*dmin_out);
    std::memset(scales12, 0, 12);
    for (int s = 0; s < 8; ++s) {
        const int sc = dq > 0 ? std::clamp(int(std::nearbyint(sub_scale[s] / dq)), 0, 63) : 0;
        const int m = dminq > 0 ? std::clamp(int(std::nearbyint(sub_min[s] / dminq)), 0, 63) : 0;
        set_scale_min_k4(s, scales12, uint8_t(sc), uint8_t(m));
        const float ds = dq * float(sc), ms = dminq * float(m);
        for (int j = 0; j < 32; ++j) {
            const int q = ds > 0 ? int(std::nearbyint((x[32 * s + j] + ms) / ds)) : 0;
            L[32 * s + j] = uint8_t(std::clamp(q, 0, nmax));
        }
    }
}

static void quant_q4_k(const float* x, BlockQ4_K* y, int64_t nb) {
    uint8_t L[256];
    for (int64_t i = 0; i < nb; ++i, x += 256) {
        fit_k_block(x, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) y[i].qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
    }
}

static void quant_q5_k(const float* x, BlockQ5_K* y, int64_t nb) {
    uint8_t L[256];
    for (int64_t i = 0; i < nb; ++i, x += 256) {
        fit_k_block(x, 31, &y[i].d, &y[i].dmin, y[i].scales, L);
        std::memset(y[i].qh, 0, 32);
        for (int c = 0; c < 4; ++c)
            for (int l = 0; l < 32; ++l) {
                const uint8_t a = L[64 * c + l], b = L[64 * c + 32 + l];
                y[i].qs[32 * c + l] = uint8_t((a & 0xF) | ((b & 0xF) << 4));
                y[i].qh[l] |= uint8_t(((a >> 4) << (2 * c)) | ((b >> 4) << (2 * c + 1)));
            }
    }
}

static void quant_q6_k(const float* x, BlockQ6_K* y, int64_t nb) {
    for (int64_t i = 0; i < nb; ++i, x += 256) {
        float gscale[16], max_abs_scale = 0;
        for (int g = 0; g < 16; ++g) {
            float amax = 0;
            for (int j = 0; j < 16; ++j) amax = std::max(amax, std::fabs(x[16 * g + j]));
            gscale[g] = amax / 31.0f;
            max_abs_scale = std::max(max_abs_scale, gscale[g]);
        }
        const float d = max_abs_scale / 127.0f;
        y[i].d = f32_to_fp16(d);
        const float dq = fp16_to_f32(y[i].d);
        int8_t L[256];
        for (int g = 0; g < 16; ++g) {
            const int sc = dq > 0 ? std::clamp(int(std::nearbyint(gscale[g] / dq)), -128, 127) : 0;
            y[i].scales[g] = int8_t(sc);
            const float ds = dq * float(sc);
            for (int j = 0; j < 16; ++j) {
                const int q = ds != 0 ? int(std::nearbyint(x[16 * g + j] / ds)) : 0;
                L[16 * g + j] = int8_t(std::clamp(q, -32, 31) + 32);
            }
        }
        for (int n = 0; n < 2; ++n) {
            uint8_t* ql = y[i].ql + 64 * n;
            uint8_t* qh = y[i].qh + 32 * n;
            const int8_t* l8 = L + 128 * n;
            for (int l = 0; l < 32; ++l) {
                const int q1 = l8[l], q2 = l8[l + 32], q3 = l8[l + 64], q4 = l8[l + 96];
                ql[l] = uint8_t((q1 & 0xF) | ((q3 & 0xF) << 4));
                ql[l + 32] = uint8_t((q2 & 0xF) | ((q4 & 0xF) << 4));
                qh[l] = uint8_t((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
            }
        }
    }
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
    switch (t) {
        case DType::F32:
            std::memcpy(dst, src, size_t(n) * 4);
            return;
        case DType::F16: {
            uint16_t* d = static_cast<uint16_t*>(dst);
            for (int64_t i = 0; i < n; ++i) d[i] = f32_to_fp16(src[i]);
            return;
        }
        case DType::BF16: {
            uint16_t* d = static_cast<uint16_t*>(dst);
            for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(src[i]);
            return;
        }
        case DType::Q4_0:
            return quant_signed(src, static_cast<BlockQ4_0*>(dst), n / 32, 8);
        case DType::Q8_0:
            return quantize_row_q8_0(src, static_cast<BlockQ8_0*>(dst), n);
        case DType::Q4_1:
            return quant_min_max(src, static_cast<BlockQ4_1*>(dst), n / 32, 15);
        case DType::Q5_0:
            return quant_signed(src, static_cast<BlockQ5_0*>(dst), n / 32, 16);
        case DType::Q5_1:
            return quant_min_max(src, static_cast<BlockQ5_1*>(dst), n / 32, 31);
        case DType::IQ4_NL:
            return quant_iq4_nl(src, static_cast<BlockIQ4_NL*>(dst), n / 32);
        case DType::Q4_K:
            return quant_q4_k(src, static_cast<BlockQ4_K*>(dst), n / 256);
        case DType::Q5_K:
            return quant_q5_k(src, static_cast<BlockQ5_K*>(dst), n / 256);
        case DType::Q6_K:
            return quant_q6_k(src, static_cast<BlockQ6_K*>(dst), n / 256);
        case DType::Q8_K:
            return quantize_row_q8_k(src, static_cast<BlockQ8_K*>(dst), n);
    }
    BM_CHECK(false && "quantize_row: bad type");
}

// ---------------------------------------------------------------- dot products

DType activation_type(DType w) {
    switch (w) {
        case DType::Q4_0:
        case DType::Q8_0:
            return DType::Q8_0;
        case DType::Q4_K:
        case DType::Q5_K:
        case DType::Q6_K:
            return DType::Q8_K;
        default:
            return w;
    }
}

void quantize_activation_row(DType w, const float* x, void* dst, int64_t n) {
    quantize_row(activation_type(w), x, dst, n);
}

static float dot_q4_k_ref(const BlockQ4_K* x, const BlockQ8_K* y, int64_t nb) {
    float sum = 0;
    for (int64_t i = 0; i < nb; ++i) {
        int32_t S = 0, M = 0;
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            get_scale_min_k4(j, x[i].scales, &sc, &m);
            int32_t s = 0;
            const uint8_t* q = x[i].qs + 32 * (j / 2);
            for (int l = 0; l < 32; ++l) s += int32_t((j & 1) ? (q[l] >> 4) : (q[l] & 0xF)) * y[i].qs[32 * j + l];
            S += s * sc;
            M += (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]) * m;
        }
        sum += fp16_to_f32(x[i].d) * y[i].d * float(S) - fp16_to_f32(x[i].dmin) * y[i].d * float(M);
    }
    return sum;
}

static float dot_q5_k_ref(const BlockQ5_K* x, const BlockQ8_K* y, int64_t nb) {
    float sum = 0;
    for (int64_t i = 0; i < nb; ++i) {
        int32_t S = 0, M = 0;
        for (int j = 0; j < 8; ++j) {
            uint8_t sc, m;
            get_scale_min_k4(j, x[i].scales, &sc, &m);
            int32_t s = 0;
            const uint8_t* q = x[i].qs + 32 * (j / 2);
            for (int l = 0; l < 32; ++l) {
                const int lo = (j & 1) ? (q[l] >> 4) : (q[l] & 0xF);
                const int hi = (x[i].qh[l] >> j) & 1;
                s += int32_t(lo + 16 * hi) * y[i].qs[32 * j + l];
            }
            S += s * sc;
            M += (y[i].bsums[2 * j] + y[i].bsums[2 * j + 1]) * m;
        }
        sum += fp16_to_f32(x[i].d) * y[i].d * float(S) - fp16_to_f32(x[i].dmin) * y[i].d * float(M);
    }
    return sum;
}

static float dot_q6_k_ref(const BlockQ6_K* x, const BlockQ8_K* y, int64_t nb) {
    float sum = 0;
    int8_t q[256];
    for (int64_t i = 0; i < nb; ++i) {
        for (int n = 0; n < 2; ++n) {
            const uint8_t* L = x[i].ql + 64 * n;
            const uint8_t* H = x[i].qh + 32 * n;
            for (int l = 0; l < 32; ++l) {
                q[128 * n + l] = int8_t(((L[l] & 0xF) | (((H[l] >> 0) & 3) << 4)) - 32);
                q[128 * n + l + 32] = int8_t(((L[l + 32] & 0xF) | (((H[l] >> 2) & 3) << 4)) - 32);
                q[128 * n + l + 64] = int8_t(((L[l] >> 4) | (((H[l] >> 4) & 3) << 4)) - 32);
                q[128 * n + l + 96] = int8_t(((L[l + 32] >> 4) | (((H[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int32_t S = 0;
        for (int g = 0; g < 16; ++g) {
            int32_t s = 0;
            for (int j = 0; j < 16; ++j) s += int32_t(q[16 * g + j]) * y[i].qs[16 * g + j];
            S += s * x[i].scales[g];
        }
        sum += fp16_to_f32(x[i].d) * y[i].d * float(S);
    }
    return sum;
}

float vec_dot_ref(DType w, const void* w_row, const void* act_row, int64_t n) {
    switch (w) {
        case DType::F32: {
            const float* a = static_cast<const float*>(w_row);
            const float* b = static_cast<const float*>(act_row);
            float s = 0;
            for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
            return s;
        }
        case DType::F16:
        case DType::BF16: {
            const uint16_t* a = static_cast<const uint16_t*>(w_row);
            const uint16_t* b = static_cast<const uint16_t*>(act_row);
            float s = 0;
            for (int64_t i = 0; i < n; ++i)
                s += w == DType::F16 ? fp16_to_f32(a[i]) * fp16_to_f32(b[i]) : bf16_to_f32(a[i]) * bf16_to_f32(b[i]);
            return s;
        }
        case DType::Q4_0: {
            const BlockQ4_0* x = static_cast<const BlockQ4_0*>(w_row);
            const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act_row);
            float s = 0;
            for (int64_t i = 0; i < n / 32; ++i) {
                int32_t acc = 0;
                for (int j = 0; j < 16; ++j)
                    acc += ((x[i].qs[j] & 0xF) - 8) * y[i].qs[j] + ((x[i].qs[j] >> 4) - 8) * y[i].qs[j + 16];
                s += float(acc) * fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d);
            }
            return s;
        }
        case DType::Q8_0: {
            const BlockQ8_0* x = static_cast<const BlockQ8_0*>(w_row);
            const BlockQ8_0* y = static_cast<const BlockQ8_0*>(act_row);
            float s = 0;
            for (int64_t i = 0; i < n / 32; ++i) {
                int32_t acc = 0;
                for (int j = 0; j < 32; ++j) acc += x[i].qs[j] * y[i].qs[j];
                s += float(acc) * (fp16_to_f32(x[i].d) * fp16_to_f32(y[i].d));
            }
            return s;
        }
        case DType::Q4_K:
            return dot_q4_k_ref(static_cast<const BlockQ4_K*>(w_row), static_cast<const BlockQ8_K*>(act_row), n / 256);
        case DType::Q5_K:
            return dot_q5_k_ref(static_cast<const BlockQ5_K*>(w_row), static_cast<const BlockQ8_K*>(act_row), n / 256);
        case DType::Q6_K:
            return dot_q6_k_ref(static_cast<const BlockQ6_K*>(w_row), static_cast<const BlockQ8_K*>(act_row), n / 256);
        case DType::Q8_K:
        case DType::Q4_1:
        case DType::Q5_0:
        case DType::Q5_1:
        case DType::IQ4_NL:
            break;
    }
    BM_CHECK(false && "vec_dot_ref: bad type");
    return 0;
}

}  // namespace bigmoe
