// The ops between the products: norms, elementwise ops, rope, attention's inputs, and the Gated
// DeltaNet's causal conv and recurrence over the recurrent rings (attention itself:
// attention.cu). Each kernel computes a token's (or a (token, head)'s) result in a fixed order of
// its own, whatever its batch.
#include <cuda_pipeline.h>

#include <algorithm>
#include <cstdlib>

#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

// RMS norm of each group of g columns: a block per (row, group), the sum of squares in double.
// With VPT > 0 (groups of up to VPT * k_norm_threads values) a thread holds its values in
// registers and issues all its loads at once (a loop of loads made a chain of memory latencies:
// 10 us for one 2048-value row on the H200); VPT = 0 loops over any size. Thread j adds values
// j, j + k_norm_threads, ... in that order either way.
// 1 / sqrt(mean(x^2) + eps) over g values, the block's threads adding in the norms' order (thread
// j: values j, j + blockDim.x, ..., in double; then block_sum).
__device__ float norm_scale_block(const float* x, int64_t g, double eps, double* part) {
    double s = 0;
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x) s += double(x[i]) * double(x[i]);
    return 1.0f / sqrtf(float(block_sum(s, part) / double(g)) + float(eps));
}

template <int VPT>
__global__ void k_rms_norm(NormArgs a) {
    pdl_enter();
    const int64_t t = blockIdx.x, c0 = int64_t(blockIdx.y) * a.g, g = a.g;
    float* xr = a.x + t * a.xs + c0;
    const float* w = a.w;
    __shared__ double part[32];
    if constexpr (VPT > 0) {
        const float* yr = a.y ? a.y + t * a.ys + c0 : nullptr;
        const float* zr = a.z ? a.z + t * a.zs + c0 : nullptr;
        float v[VPT], u[VPT], wv[VPT], zv[VPT];
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const int64_t i = threadIdx.x + k * k_norm_threads;
            v[k] = i < g ? xr[i] : 0.0f;
            u[k] = yr && i < g ? yr[i] : 0.0f;
            wv[k] = i < g ? w[i] : 0.0f;
            zv[k] = zr && i < g ? zr[i] : 0.0f;
        }
        double s = 0;
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const int64_t i = threadIdx.x + k * k_norm_threads;
            if (i < g) {
                if (yr) {  // the residual add before the norm
                    v[k] = v[k] + u[k];
                    xr[i] = v[k];
                }
                s += double(v[k]) * double(v[k]);
            }
        }
        const float scale = 1.0f / sqrtf(float(block_sum(s, part) / double(g)) + float(a.eps));
#pragma unroll
        for (int k = 0; k < VPT; ++k) {
            const int64_t i = threadIdx.x + k * k_norm_threads;
            if (i < g) {
                const float r = (v[k] * scale) * wv[k];
                a.out[t * a.os + c0 + i] = zr ? siluf(zv[k]) * r : r;
            }
        }
    } else {
        if (a.y) {  // the residual add before the norm; each thread reads back only what it wrote
            const float* yr = a.y + t * a.ys + c0;
            for (int64_t i = threadIdx.x; i < g; i += blockDim.x) xr[i] = xr[i] + yr[i];
        }
        const float scale = norm_scale_block(xr, g, a.eps, part);
        const float* zr = a.z ? a.z + t * a.zs + c0 : nullptr;
        for (int64_t i = threadIdx.x; i < g; i += blockDim.x) {
            const float r = (xr[i] * scale) * w[i];
            a.out[t * a.os + c0 + i] = zr ? siluf(zr[i]) * r : r;
        }
    }
}

template <Ew op>
__global__ void k_elementwise(ElementwiseArgs a) {
    pdl_enter();
    const int64_t n = a.rows * a.cols;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / a.cols, c = i % a.cols;
        const float x = a.a[t * a.as + c], y = a.b[t * a.bs + c];
        float r;
        if constexpr (op == Ew::add)
            r = x + y;
        else if constexpr (op == Ew::swiglu)
            r = siluf(x) * y;
        else
            r = x * sigmoidf(y);
        a.out[t * a.os + c] = r;
    }
}

__global__ void k_gather_cols(GatherArgs a) {
    pdl_enter();
    const int64_t n = a.rows * a.out_cols;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / a.out_cols, c = i % a.out_cols, g = c / a.width;
        a.out[t * a.os + c] = a.x[t * a.xs + g * a.group + a.offset + c % a.width];
    }
}

// out[t] = a[t] + sigmoid(dot(gv, f[t])) * b[t]: a block per row. Rows of up to 8 * 256 values
// are held in registers, every load issued at once (as k_rms_norm); thread j adds products j,
// j + 256, ... in that order either way.
__global__ void k_add_gated(AddGatedArgs a) {
    pdl_enter();
    const int64_t t = blockIdx.x;
    __shared__ float part[32];
    constexpr int V = 8;
    if (a.fc <= V * 256 && a.cols <= V * 256) {
        float fv[V], gw[V], av[V], bv[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const int64_t i = threadIdx.x + k * 256;
            fv[k] = i < a.fc ? a.f[t * a.fs + i] : 0.0f;
            gw[k] = i < a.fc ? a.gv[i] : 0.0f;
            av[k] = i < a.cols ? a.a[t * a.as + i] : 0.0f;
            bv[k] = i < a.cols ? a.b[t * a.bs + i] : 0.0f;
        }
        float s = 0;
#pragma unroll
        for (int k = 0; k < V; ++k)
            if (threadIdx.x + k * 256 < a.fc) s += gw[k] * fv[k];
        const float g = sigmoidf(block_sum(s, part));
#pragma unroll
        for (int k = 0; k < V; ++k) {
            const int64_t i = threadIdx.x + k * 256;
            if (i < a.cols) a.out[t * a.os + i] = av[k] + bv[k] * g;
        }
        return;
    }
    const float g = block_gate(a.gv, a.f + t * a.fs, a.fc, part);
    for (int64_t i = threadIdx.x; i < a.cols; i += blockDim.x)
        a.out[t * a.os + i] = a.a[t * a.as + i] + a.b[t * a.bs + i] * g;
}

// NeoX RoPE in place: a thread per (row, head, rotated pair); angles as the CPU forms them (the
// position times theta_scale, multiplied once per pair index).
__global__ void k_rope(RopeArgs a) {
    pdl_enter();
    const int64_t half = a.half, n = a.rows * a.n_heads * half;
    const float theta_scale = float(a.theta_scale);
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / (a.n_heads * half), h = (i / half) % a.n_heads, j = i % half;
        rope_rotate(a.x + t * a.xs + h * a.head_dim, j, half, rope_angle(a.pos[t], j, theta_scale));
    }
}

// Attention's inputs (Backend::attention_inputs): a block of k_norm_threads per (row, head), the
// q heads first, then the k heads; k_rms_norm's sums, then k_rope's rotation of the normalised
// head (rows below rope_rows).
__global__ void k_attention_inputs(AttInputsArgs a) {
    pdl_enter();
    const int64_t t = blockIdx.x, D = a.D;
    const bool is_q = int64_t(blockIdx.y) < a.Hq;
    const int64_t h = is_q ? int64_t(blockIdx.y) : int64_t(blockIdx.y) - a.Hq;
    const float* src = is_q ? a.qg + t * a.qgs + h * (a.gated ? 2 * D : D) : a.k + t * a.ks + h * D;
    float* dst = is_q ? a.q + t * a.qs + h * D : a.ko + t * a.kos + h * D;
    const float* w = is_q ? a.qw : a.kw;
    if (is_q && a.gated)
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) a.gate[t * a.gs + h * D + i] = src[D + i];
    __shared__ double part[32];
    const float scale = norm_scale_block(src, D, a.eps, part);
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) dst[i] = (src[i] * scale) * w[i];
    if (t >= a.rope_rows) return;
    __syncthreads();  // the block's writes above are visible to it from here
    const float theta_scale = float(a.theta_scale);
    for (int64_t j = threadIdx.x; j < a.half; j += blockDim.x)
        rope_rotate(dst, j, a.half, rope_angle(a.pos[t], j, theta_scale));
}

// Depthwise causal conv + SiLU: a block per (span, 32 channels), its threads over (token,
// channel); the S = K - 1 inputs before a span's first token come from the ring's current state.
// Every token's window is read where it lies, so tokens run side by side. The states after the
// last n_slots tokens go to the ring once every thread has read the current one.
__global__ void k_ssm_conv(ConvArgs a) {
    pdl_enter();
    const int64_t C = a.C, K = a.K, S = K - 1, groups = (C + 31) / 32;
    const int64_t si = blockIdx.x / groups, c = (blockIdx.x % groups) * 32 + threadIdx.x % 32;
    const int64_t ty = threadIdx.x / 32, tr = blockDim.x / 32;
    const SpanDev sp = a.spans[si];
    const RingDev r = a.rings[si];
    const size_t slot_floats = size_t(C * S);
    const bool live = c < C;
    const float* st = r.conv + size_t(ring_slot(r, 0)) * slot_floats + c * S;
    const float* wc = a.w + c * K;
    // the input of the span's token tok (-S <= tok < n_tokens)
    auto in = [&](int64_t tok) { return tok >= 0 ? a.x[(sp.first + tok) * a.xs + c] : st[tok + S]; };
    if (live)
#pragma unroll 2
        for (int64_t t = ty; t < sp.n_tokens; t += tr) {
            float y = 0;
            for (int64_t j = 0; j < S; ++j) y += wc[j] * in(t - S + j);
            y += wc[S] * in(t);
            a.out[(sp.first + t) * a.os + c] = siluf(y);
        }
    // Rounds of tr tokens; only the first round (tr >= S) reads the current state.
    for (int64_t t = max(int64_t(0), sp.n_tokens - r.n_slots) + ty, round = 0; round < (r.n_slots + tr - 1) / tr;
         ++round, t += tr) {
        float win[k_conv_max];
        const bool saves = live && t < sp.n_tokens;
        if (saves)
#pragma unroll
            for (int j = 0; j < k_conv_max; ++j)
                if (j < S) win[j] = in(t + 1 - S + j);
        __syncthreads();
        if (saves) {
            float* dst = r.conv + size_t(ring_slot(r, t + 1)) * slot_floats + c * S;
#pragma unroll
            for (int j = 0; j < k_conv_max; ++j)
                if (j < S) dst[j] = win[j];
        }
    }
}

// The Gated DeltaNet recurrence. A block takes 32 value channels of one (span, V head); each
// channel's column of the state (dk keys) is split over P adjacent lanes, KPT = dk / P keys each
// (gdn_key_block: which), held in registers for the whole span. Per token a lane decays its keys and forms its share of
// the prediction and of the output; the P shares are added by shuffles in a fixed order, so a
// token's result does not depend on the span's length. Columns move between the ring
// ([channel][key]) and registers as contiguous 16-byte loads and stores. Key sizes that no P
// divides into multiples of 4 take the EXACT = false form: P = 4, up to KPT keys a lane,
// ceil(dk / 4) used, loaded one by one.
//
// A token's step is a chain of dependent sums; its inputs (the key head's q and k, the block's 32
// v values, alpha and beta) do not depend on the state, so they are copied into shared memory
// k_gdn_chunk tokens at a time, the next chunk's copies in flight while the steps of this one run.
// There a part's keys start 4 floats further on than the part before ends, so the 16-byte loads
// of a warp's parts fall in distinct banks.
constexpr int k_gdn_chunk = 8;
// staged floats of q (and of k) for P parts of kpt keys
__host__ __device__ inline int gdn_keys_floats(int kpt, int parts) {
    return parts * (kpt + 4);
}
// floats a staged token takes: q and k, 32 v values, alpha, beta; a multiple of 4
__host__ __device__ inline int gdn_token_floats(int kpt, int parts) {
    return (2 * gdn_keys_floats(kpt, parts) + 34 + 3) / 4 * 4;
}
// The sum over a channel's dk keys of a lane's terms (term(x, h): h with key x's term added, x <
// KPT), in every lane of the channel's P. The order is fixed by parts of dk / 8 keys, each the sum
// of its two halves (each in key order), the 8 parts then added by a butterfly: with P = 16 a lane
// holds a half (the other: lane ^ 8), with P = 8 a whole part, so both give the same bits and a
// launch takes either. (P = 4 adds the halves of a lane's keys, then its own butterfly.)
template <int P, int KPT, class T, class Term>
__device__ __forceinline__ T gdn_sum(Term term) {
    T h0 = 0, h1 = 0;
    if constexpr (P == 16) {
#pragma unroll
        for (int x = 0; x < KPT; ++x) h0 = term(x, h0);
        h0 += __shfl_xor_sync(0xffffffffu, h0, 8);
    } else {
#pragma unroll
        for (int x = 0; x < KPT / 2; ++x) h0 = term(x, h0);
#pragma unroll
        for (int x = KPT / 2; x < KPT; ++x) h1 = term(x, h1);
        h0 += h1;
    }
#pragma unroll
    for (int o = 1; o < (P < 8 ? P : 8); o <<= 1) h0 += __shfl_xor_sync(0xffffffffu, h0, o);
    return h0;
}
// Two of gdn_sum's sums side by side (term(x, a, p) adds key x's terms to both), each formed in
// gdn_sum's order: the same bits as two calls, with the shuffles of one in flight beside the
// other's.
template <int P, int KPT, class Term>
__device__ __forceinline__ float2 gdn_sum2(Term term) {
    float a0 = 0, a1 = 0, p0 = 0, p1 = 0;
    if constexpr (P == 16) {
#pragma unroll
        for (int x = 0; x < KPT; ++x) term(x, a0, p0);
        a0 += __shfl_xor_sync(0xffffffffu, a0, 8);
        p0 += __shfl_xor_sync(0xffffffffu, p0, 8);
    } else {
#pragma unroll
        for (int x = 0; x < KPT / 2; ++x) term(x, a0, p0);
#pragma unroll
        for (int x = KPT / 2; x < KPT; ++x) term(x, a1, p1);
        a0 += a1;
        p0 += p1;
    }
#pragma unroll
    for (int o = 1; o < (P < 8 ? P : 8); o <<= 1) {
        a0 += __shfl_xor_sync(0xffffffffu, a0, o);
        p0 += __shfl_xor_sync(0xffffffffu, p0, o);
    }
    return make_float2(a0, p0);
}
// With P = 16, lane part l holds half l / 8 of key part l % 8: key block 2 (l % 8) + l / 8 of
// dk / 16 keys. The staged keys keep lane order (block b of a lane at b (kpt + 4)).
template <int P>
__host__ __device__ inline int gdn_key_block(int part) {
    return P == 16 ? 2 * (part % 8) + part / 8 : part;
}
template <int P>
__host__ __device__ inline int gdn_lane_of_block(int kb) {
    return P == 16 ? (kb % 2) * 8 + kb / 2 : kb;
}
// 16 parts of up to 8 keys (BIGMOE_CUDA_GDN_PARTS=16): two blocks of 512 threads an SM, as the
// 8-part form's two blocks of 256 (a model with 64 value heads fills an H100 in one wave).
template <int P, int KPT, bool EXACT>
__global__ void __launch_bounds__(32 * P, P == 16 && KPT <= 8 ? 2 : 1) k_gdn(GdnArgs a) {
    static_assert(P >= 2 && P <= 16 && (P & (P - 1)) == 0 && (!EXACT || KPT % 4 == 0));
    pdl_enter();
    extern __shared__ __align__(16) float stage[];  // [2][k_gdn_chunk][gdn_token_floats]
    __shared__ float gdn_pre[k_gdn_chunk * 2];      // per token: the decay and beta
    const int64_t Hk = a.Hk, Hv = a.Hv, dk = a.dk, dv = a.dv, groups = (dv + 31) / 32;
    const int64_t si = blockIdx.x / (Hv * groups), h = (blockIdx.x / groups) % Hv, g = blockIdx.x % groups;
    const int part = int(threadIdx.x) % P;
    const int64_t cl = threadIdx.x / P, c = g * 32 + cl;
    const bool live = c < dv;
    const SpanDev sp = a.spans[si];
    const RingDev r = a.rings[si];
    const size_t head_floats = size_t(dv * dk), slot_floats = size_t(Hv) * head_floats;
    const int kpt = EXACT ? KPT : int((dk + P - 1) / P);
    const int64_t j = h % Hk, key_dim = Hk * dk, x0 = int64_t(gdn_key_block<P>(part)) * kpt;
    const int kf = gdn_keys_floats(kpt, P), tf = gdn_token_floats(kpt, P), xs = part * (kpt + 4);
    // whether key x0 + x is this lane's
    auto mine = [&](int x) { return EXACT || (x < kpt && x0 + x < dk); };
    const float q_scale = float(a.q_scale);
    const int nv = int(min(int64_t(32), dv - g * 32));
    // copies of 16 bytes where the rows allow (EXACT: a part's keys are whole groups of 4)
    const bool vec = EXACT && (reinterpret_cast<uintptr_t>(a.u) % 16 == 0) && a.us % 4 == 0 && dv % 4 == 0;
    // copies tokens [t0, t0 + k_gdn_chunk) of the span into buffer b
    auto stage_chunk = [&](int64_t t0, int b) {
        const int n = int(min(int64_t(k_gdn_chunk), sp.n_tokens - t0)), w = vec ? 4 : 1, kq = int(dk) / w;
        const int per_tok = 2 * kq + 32 / w + 2;  // q and k, v, alpha and beta
        for (int i = int(threadIdx.x); i < n * per_tok; i += int(blockDim.x)) {
            const int tt = i / per_tok, f = i - tt * per_tok;
            const int64_t row = sp.first + t0 + tt;
            float* tok = stage + (b * k_gdn_chunk + tt) * tf;
            if (f < 2 * kq) {
                const int which = f >= kq, key = (f - which * kq) * w;
                const float* src = a.u + row * a.us + which * key_dim + j * dk + key;
                float* dst = tok + which * kf + gdn_lane_of_block<P>(key / kpt) * (kpt + 4) + key % kpt;
                if (vec)
                    __pipeline_memcpy_async(dst, src, 16);
                else
                    __pipeline_memcpy_async(dst, src, 4);
            } else if (f < 2 * kq + 32 / w) {
                const int v = (f - 2 * kq) * w;
                const float* src = a.u + row * a.us + 2 * key_dim + h * dv + g * 32;
                if (vec && v + 4 <= nv)
                    __pipeline_memcpy_async(tok + 2 * kf + v, src + v, 16);
                else
                    for (int x = 0; x < w; ++x)
                        __pipeline_memcpy_async(tok + 2 * kf + v + x, src + min(v + x, nv - 1), 4);
            } else {
                const bool al = f == 2 * kq + 32 / w;
                __pipeline_memcpy_async(tok + 2 * kf + (al ? 32 : 33),
                                        al ? a.alpha + row * a.as + h : a.beta + row * a.bs + h, 4);
            }
        }
        __pipeline_commit();
    };
    float S[KPT];
#pragma unroll
    for (int x = 0; x < KPT; ++x) S[x] = 0;
    if (sp.n_tokens > 0) stage_chunk(0, 0);
    if (live && !EXACT) {
        const float* src =
            r.ssm + size_t(ring_slot(r, 0)) * slot_floats + size_t(h) * head_floats + size_t(c) * dk + x0;
#pragma unroll
        for (int x = 0; x < KPT; ++x)
            if (mine(x)) S[x] = src[x];
    } else if (live) {
        const float4* src = reinterpret_cast<const float4*>(r.ssm + size_t(ring_slot(r, 0)) * slot_floats +
                                                            size_t(h) * head_floats + size_t(c) * dk + x0);
#pragma unroll
        for (int i = 0; i < KPT / 4; ++i) {
            const float4 v = src[i];
            S[4 * i] = v.x;
            S[4 * i + 1] = v.y;
            S[4 * i + 2] = v.z;
            S[4 * i + 3] = v.w;
        }
    }
    for (int64_t t0 = 0, b = 0; t0 < sp.n_tokens; t0 += k_gdn_chunk, b ^= 1) {
        const bool more = t0 + k_gdn_chunk < sp.n_tokens;
        if (more) stage_chunk(t0 + k_gdn_chunk, int(b ^ 1));
        if (more)
            __pipeline_wait_prior(1);
        else
            __pipeline_wait_prior(0);
        __syncthreads();
        const int64_t n = min(int64_t(k_gdn_chunk), sp.n_tokens - t0);
        // What a step needs that does not depend on the state, for the chunk's tokens side by side
        // (a warp a token, 2P lanes): k (lanes [0, P)) and q (lanes [P, 2P)) of key head j
        // L2-normalised in place (x / max(||x||, eps): x times the scale, once for every channel
        // of the block), sums of squares in double in gdn_sum's order; the decay and beta.
        const int warp = int(threadIdx.x / 32), lane = int(threadIdx.x % 32);
        for (int64_t tt = warp; tt < n; tt += blockDim.x / 32) {
            float* in = stage + (b * k_gdn_chunk + tt) * tf;
            const int lp = lane % P;
            float* keys = in + (lane < P ? kf : 0) + lp * (kpt + 4);
            const int64_t kx0 = int64_t(gdn_key_block<P>(lp)) * kpt;
            auto used = [&](int x) { return lane < 2 * P && (EXACT || (x < kpt && kx0 + x < dk)); };
            const double sq = gdn_sum<P, KPT, double>(
                [&](int x, double h) { return used(x) ? fma(double(keys[x]), double(keys[x]), h) : h; });
            const float scale = 1.0f / fmaxf(sqrtf(float(sq)), float(a.eps));
#pragma unroll
            for (int x = 0; x < KPT; ++x)
                if (used(x)) keys[x] *= scale;
            float* pre = gdn_pre + tt * 2;
            if (lane == 0) {
                const float al = in[2 * kf + 32] + a.dt_bias[h];
                const float sp_a = al > 20.0f ? al : logf(1.0f + expf(al));
                pre[0] = expf(sp_a * a.ssm_a[h]);
                pre[1] = sigmoidf(in[2 * kf + 33]);
            }
        }
        __syncthreads();
        // this lane's keys of the token's normalised k (at = kf) or q (at = 0) of key head j
        auto load_keys = [&](int64_t tt, int at, float(&v)[KPT]) {
            const float* in = stage + (b * k_gdn_chunk + tt) * tf + at + xs;
            if constexpr (EXACT) {
                const float4* v4 = reinterpret_cast<const float4*>(in);
#pragma unroll
                for (int i = 0; i < KPT / 4; ++i) {
                    const float4 f = v4[i];
                    v[4 * i] = f.x;
                    v[4 * i + 1] = f.y;
                    v[4 * i + 2] = f.z;
                    v[4 * i + 3] = f.w;
                }
            } else {
#pragma unroll
                for (int x = 0; x < KPT; ++x) v[x] = mine(x) ? in[x] : 0.0f;
            }
        };
        // A token's prediction needs the state as the token before left it, its output the state
        // after its own update: the next token's prediction is formed beside this token's output,
        // two independent sums whose shuffles overlap (each value's operations as gdn_sum forms
        // them alone, so the bits do not change; BIGMOE_CUDA_GDN_PAIRED=0 forms them in turn). Each
        // token's k and q are read from shared memory once (k for the prediction before its step).
        float kr[KPT];
        load_keys(0, kf, kr);
        float pred = gdn_sum<P, KPT, float>([&](int x, float h) {
            if (!mine(x)) return h;
            S[x] *= gdn_pre[0];
            return fmaf(S[x], kr[x], h);
        });
        for (int64_t tt = 0; tt < n; ++tt) {
            const int64_t t = t0 + tt, row = sp.first + t;
            const float* in = stage + (b * k_gdn_chunk + tt) * tf;
            float qr[KPT];
            load_keys(tt, 0, qr);
            const float delta = gdn_pre[tt * 2 + 1] * ((live ? in[2 * kf + cl] : 0.0f) - pred);
#pragma unroll
            for (int x = 0; x < KPT; ++x)
                if (mine(x)) S[x] = fmaf(kr[x], delta, S[x]);
            if (live && !EXACT && t >= sp.n_tokens - r.n_slots) {
                float* dst =
                    r.ssm + size_t(ring_slot(r, t + 1)) * slot_floats + size_t(h) * head_floats + size_t(c) * dk + x0;
#pragma unroll
                for (int x = 0; x < KPT; ++x)
                    if (mine(x)) dst[x] = S[x];
            } else if (live && t >= sp.n_tokens - r.n_slots) {
                float4* dst = reinterpret_cast<float4*>(r.ssm + size_t(ring_slot(r, t + 1)) * slot_floats +
                                                        size_t(h) * head_floats + size_t(c) * dk + x0);
#pragma unroll
                for (int i = 0; i < KPT / 4; ++i)
                    dst[i] = make_float4(S[4 * i], S[4 * i + 1], S[4 * i + 2], S[4 * i + 3]);
            }
            float acc;
            if (tt + 1 < n) load_keys(tt + 1, kf, kr);  // the next token's k (this one's is used)
            if (tt + 1 < n && a.paired) {
                const float decay = gdn_pre[(tt + 1) * 2];
                const float2 ap = gdn_sum2<P, KPT>([&](int x, float& ha, float& hp) {
                    if (!mine(x)) return;
                    ha = fmaf(S[x], qr[x], ha);
                    S[x] *= decay;
                    hp = fmaf(S[x], kr[x], hp);
                });
                acc = ap.x;
                pred = ap.y;
            } else {
                acc = gdn_sum<P, KPT, float>([&](int x, float h) { return mine(x) ? fmaf(S[x], qr[x], h) : h; });
                if (tt + 1 < n) {
                    const float decay = gdn_pre[(tt + 1) * 2];
                    pred = gdn_sum<P, KPT, float>([&](int x, float h) {
                        if (!mine(x)) return h;
                        S[x] *= decay;
                        return fmaf(S[x], kr[x], h);
                    });
                }
            }
            if (live && part == 0) a.out[row * a.os + h * dv + c] = acc * q_scale;
        }
        __syncthreads();  // every step has read buffer b before the next chunk's copies go there
    }
}

// A value's key for argmax (ArgmaxArgs): 0 for a NaN, -0 as +0 (they tie, as == has them).
__device__ __forceinline__ uint64_t argmax_key(float v, int64_t i) {
    uint32_t b = __float_as_uint(v);
    if ((b & 0x7fffffffu) > 0x7f800000u) return 0;
    if (b == 0x80000000u) b = 0;
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return (uint64_t(b) << 32) | uint64_t(0xffffffffu - uint32_t(i));
}

__device__ __forceinline__ uint64_t warp_max_key(uint64_t k) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const uint64_t other = __shfl_xor_sync(0xffffffffu, k, o);
        k = other > k ? other : k;
    }
    return k;
}

// A block per (chunk of k_argmax_chunk values, row): its largest key. A thread's 16 loads are
// independent (one round of memory latency).
__global__ void __launch_bounds__(k_argmax_threads) k_argmax_chunks(ArgmaxArgs a) {
    pdl_enter();
    __shared__ uint64_t warp_best[k_argmax_threads / 32];
    const int64_t r = blockIdx.y, c0 = int64_t(blockIdx.x) * k_argmax_chunk;
    const float* x = a.x + r * a.xs;
    uint64_t best = 0;
#pragma unroll
    for (int j = 0; j < int(k_argmax_chunk / k_argmax_threads); ++j) {
        const int64_t i = c0 + j * k_argmax_threads + threadIdx.x;
        const uint64_t k = i < a.cols ? argmax_key(x[i], i) : 0;
        best = k > best ? k : best;
    }
    best = warp_max_key(best);
    if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x >> 5] = best;
    __syncthreads();
    if (threadIdx.x < 32) {
        best = warp_max_key(threadIdx.x < k_argmax_threads / 32 ? warp_best[threadIdx.x] : 0);
        if (threadIdx.x == 0) a.keys[r * a.blocks + blockIdx.x] = best;
    }
}

// A warp a row: the largest of its chunks' keys, as the position it holds (0 when only NaNs).
__global__ void k_argmax_fold(ArgmaxArgs a) {
    pdl_enter();
    const int64_t r = blockIdx.x;
    uint64_t best = 0;
    for (int64_t b = threadIdx.x; b < a.blocks; b += 32) {
        const uint64_t k = a.keys[r * a.blocks + b];
        best = k > best ? k : best;
    }
    best = warp_max_key(best);
    if (threadIdx.x == 0) a.ids[r] = best ? int32_t(0xffffffffu - uint32_t(best)) : 0;
}

// Launches the EXACT form with P parts of KPT keys when dk is P * KPT.
template <int P, int KPT>
bool launch_gdn(cudaStream_t s, const GdnArgs& a, dim3 grid) {
    if (a.dk != int64_t(P) * KPT) return false;
    const size_t smem = size_t(2 * k_gdn_chunk * gdn_token_floats(KPT, P)) * sizeof(float);
    launch(k_gdn<P, KPT, true>, grid, 32 * P, smem, s, a);
    return true;
}

}  // namespace

void run_op(cudaStream_t s, const NormArgs& a) {
    const dim3 grid(unsigned(a.rows), unsigned(a.groups));
    const int64_t vpt = (a.g + k_norm_threads - 1) / k_norm_threads;
    if (vpt <= 1)
        launch(k_rms_norm<1>, grid, k_norm_threads, 0, s, a);
    else if (vpt <= 2)
        launch(k_rms_norm<2>, grid, k_norm_threads, 0, s, a);
    else if (vpt <= 4)
        launch(k_rms_norm<4>, grid, k_norm_threads, 0, s, a);
    else if (vpt <= 8)
        launch(k_rms_norm<8>, grid, k_norm_threads, 0, s, a);
    else if (vpt <= 16)
        launch(k_rms_norm<16>, grid, k_norm_threads, 0, s, a);
    else
        launch(k_rms_norm<0>, grid, k_norm_threads, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const ArgmaxArgs& a) {
    launch(k_argmax_chunks, dim3(unsigned(a.blocks), unsigned(a.rows)), k_argmax_threads, 0, s, a);
    CU_LAUNCHED();
    launch(k_argmax_fold, unsigned(a.rows), 32, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const ElementwiseArgs& a) {
    const unsigned grid = blocks_for(a.rows * a.cols, 256);
    switch (a.op) {
        case Ew::add:
            launch(k_elementwise<Ew::add>, grid, 256, 0, s, a);
            break;
        case Ew::swiglu:
            launch(k_elementwise<Ew::swiglu>, grid, 256, 0, s, a);
            break;
        case Ew::mul_sigmoid:
            launch(k_elementwise<Ew::mul_sigmoid>, grid, 256, 0, s, a);
            break;
    }
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const GatherArgs& a) {
    launch(k_gather_cols, blocks_for(a.rows * a.out_cols, 256), 256, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const AddGatedArgs& a) {
    launch(k_add_gated, unsigned(a.rows), 256, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const AttInputsArgs& a) {
    launch(k_attention_inputs, dim3(unsigned(a.rows), unsigned(a.Hq + a.Hkv)), k_norm_threads, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const RopeArgs& a) {
    launch(k_rope, blocks_for(a.rows * a.n_heads * a.half, 256), 256, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const ConvArgs& a) {
    launch(k_ssm_conv, unsigned(a.n_spans * ((a.C + 31) / 32)), unsigned(32 * a.token_rows), 0, s, a);
    CU_LAUNCHED();
}

int64_t gdn_paired() {
    static const int64_t on = [] {
        const char* e = std::getenv("BIGMOE_CUDA_GDN_PAIRED");
        return e && std::atoi(e) == 0 ? int64_t(0) : int64_t(1);
    }();
    return on;
}

void run_op(cudaStream_t s, const GdnArgs& a) {
    const dim3 grid(unsigned(a.n_spans * a.Hv * ((a.dv + 31) / 32)));
    // 8 lanes a channel: the same bits as 16 (gdn_sum) with fewer shuffles a state value (the
    // 122B's pp512 on an H100: 4586 t/s against 4418 with 16, at depth 32768 3209 against 3150).
    // BIGMOE_CUDA_GDN_PARTS=4, 8 or 16 picks one for measuring (4: other bits).
    static const int forced = [] {
        const char* e = std::getenv("BIGMOE_CUDA_GDN_PARTS");
        const int p = e ? std::atoi(e) : 0;
        return p == 4 || p == 8 || p == 16 ? p : 0;
    }();
    const int parts = forced ? forced : 8;
    const bool done = (parts == 16 && (launch_gdn<16, 4>(s, a, grid) || launch_gdn<16, 8>(s, a, grid) ||
                                       launch_gdn<16, 16>(s, a, grid))) ||
                      (parts >= 8 && (launch_gdn<8, 4>(s, a, grid) || launch_gdn<8, 8>(s, a, grid) ||
                                      launch_gdn<8, 16>(s, a, grid) || launch_gdn<8, 32>(s, a, grid))) ||
                      launch_gdn<4, 4>(s, a, grid) || launch_gdn<4, 8>(s, a, grid) || launch_gdn<4, 16>(s, a, grid) ||
                      launch_gdn<4, 32>(s, a, grid) || launch_gdn<4, 64>(s, a, grid);
    if (!done) {
        constexpr int kpt = int(k_gdn_max_dk / 4);
        const size_t smem = size_t(2 * k_gdn_chunk * gdn_token_floats(kpt, 4)) * sizeof(float);
        launch(k_gdn<4, kpt, false>, grid, 32 * 4, smem, s, a);
    }
    CU_LAUNCHED();
}

}  // namespace bigmoe::cuda
