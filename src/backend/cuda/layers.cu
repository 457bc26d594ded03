// The ops between the products: norms, elementwise ops, rope, attention over the KV cache, and
// the Gated DeltaNet's causal conv and recurrence over the recurrent rings. Each kernel computes
// a token's (or a (token, head)'s) result in a fixed order of its own, whatever its batch.
#include "backend/cuda/ops.h"

namespace bigmoe::cuda {

namespace {

// RMS norm of each group of g columns: a block per (row, group), the sum of squares in double.
__global__ void k_rms_norm(NormArgs a) {
    pdl_enter();
    const int64_t t = blockIdx.x, c0 = int64_t(blockIdx.y) * a.g, g = a.g;
    float* xr = a.x + t * a.xs + c0;
    const float* w = a.w;
    if (a.y) {  // the residual add before the norm; each thread reads back only what it wrote
        const float* yr = a.y + t * a.ys + c0;
        for (int64_t i = threadIdx.x; i < g; i += blockDim.x) xr[i] = xr[i] + yr[i];
    }
    double s = 0;
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x) s += double(xr[i]) * double(xr[i]);
    __shared__ double part[32];
    const float scale = 1.0f / sqrtf(float(block_sum(s, part) / double(g)) + float(a.eps));
    for (int64_t i = threadIdx.x; i < g; i += blockDim.x) a.out[t * a.os + c0 + i] = (xr[i] * scale) * w[i];
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

// out[t] = a[t] + sigmoid(dot(gv, f[t])) * b[t]: a block per row.
__global__ void k_add_gated(AddGatedArgs a) {
    pdl_enter();
    const int64_t t = blockIdx.x;
    float s = 0;
    for (int64_t i = threadIdx.x; i < a.fc; i += blockDim.x) s += a.gv[i] * a.f[t * a.fs + i];
    __shared__ float part[32];
    const float g = sigmoidf(block_sum(s, part));
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
        float th = float(a.pos[t]);
        for (int64_t k = 0; k < j; ++k) th *= theta_scale;
        float* v = a.x + t * a.xs + h * a.head_dim;
        const float c = cosf(th), s = sinf(th), x0 = v[j], x1 = v[j + half];
        v[j] = x0 * c - x1 * s;
        v[j + half] = x0 * s + x1 * c;
    }
}

// Stores the batch's k and v rows into each span's cache block at their positions.
__global__ void k_kv_store(AttentionArgs a) {
    pdl_enter();
    const int64_t width = a.n_head_kv * a.D, n = a.rows * width;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = i / width, c = i % width;
        const int32_t s = a.row_span[t];
        if (s < 0) continue;
        const KvDev& b = a.kv[s];
        const int64_t at = a.pos[t] * width + c;
        const float kk = a.k[t * a.ks + c], vv = a.v[t * a.vs + c];
        if (b.f16_k)
            static_cast<__half*>(b.k)[at] = __float2half_rn(kk);
        else
            static_cast<float*>(b.k)[at] = kk;
        if (b.f16_v)
            static_cast<__half*>(b.v)[at] = __float2half_rn(vv);
        else
            static_cast<float*>(b.v)[at] = vv;
    }
}

// Causal attention for one (row, query head): 4 warps take every 4th key from position 0 to the
// row's own; each warp keeps an online softmax (its maximum, mass and weighted values, d split
// over the lanes), and the four are merged in warp order. The query is rounded to the K cache's
// precision, as on the CPU.
constexpr int k_att_warps = 4;
__global__ void k_attention(AttentionArgs a) {
    pdl_enter();
    const int64_t t = blockIdx.x, h = blockIdx.y, D = a.D;
    const int32_t s = a.row_span[t];
    if (s < 0) return;
    const KvDev b = a.kv[s];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t group = a.n_head / a.n_head_kv, width = a.n_head_kv * D, kvh = h / group;
    const float scale = float(a.scale);
    constexpr int per_max = k_att_max_d / 32;
    const int per = int((D + 31) / 32);
    float qv[per_max], acc[per_max];
#pragma unroll
    for (int e = 0; e < per_max; ++e) {
        const int64_t d = lane + 32 * e;
        float x = e < per && d < D ? a.q[t * a.qs + h * D + d] : 0.0f;
        if (b.f16_k) x = __half2float(__float2half_rn(x));
        qv[e] = x;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int64_t n_keys = a.pos[t] + 1;
    for (int64_t j = warp; j < n_keys; j += k_att_warps) {
        float dot = 0;
#pragma unroll
        for (int e = 0; e < per_max; ++e) {
            const int64_t d = lane + 32 * e;
            if (e < per && d < D) {
                const int64_t at = j * width + kvh * D + d;
                const float kk =
                    b.f16_k ? __half2float(static_cast<const __half*>(b.k)[at]) : static_cast<const float*>(b.k)[at];
                dot = fmaf(qv[e], kk, dot);
            }
        }
        const float sc = warp_sum(dot) * scale;
        const float nm = fmaxf(m, sc);
        const float corr = expf(m - nm), p = expf(sc - nm);
        l = l * corr + p;
#pragma unroll
        for (int e = 0; e < per_max; ++e) {
            const int64_t d = lane + 32 * e;
            if (e < per && d < D) {
                const int64_t at = j * width + kvh * D + d;
                const float vv =
                    b.f16_v ? __half2float(static_cast<const __half*>(b.v)[at]) : static_cast<const float*>(b.v)[at];
                acc[e] = fmaf(p, vv, acc[e] * corr);
            }
        }
        m = nm;
    }
    __shared__ float sm[k_att_warps], sl[k_att_warps], sacc[k_att_warps][k_att_max_d];
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < per_max; ++e) {
        const int64_t d = lane + 32 * e;
        if (e < per && d < D) sacc[warp][d] = acc[e];
    }
    __syncthreads();
    if (warp != 0) return;
    float M = -INFINITY;
    for (int w = 0; w < k_att_warps; ++w) M = fmaxf(M, sm[w]);
    float L = 0;
    float f[k_att_warps];
    for (int w = 0; w < k_att_warps; ++w) {
        f[w] = sl[w] > 0 ? expf(sm[w] - M) : 0.0f;
        L += sl[w] * f[w];
    }
    const float inv = 1.0f / L;
    for (int64_t d = lane; d < D; d += 32) {
        float acc_d = 0;
        for (int w = 0; w < k_att_warps; ++w) acc_d += sacc[w][d] * f[w];
        a.out[t * a.os + h * D + d] = acc_d * inv;
    }
}

// Depthwise causal conv + SiLU: a thread per (span, channel) runs the span's tokens in order,
// its window of the last K-1 inputs in registers; the last n_slots states go to the ring.
__global__ void k_ssm_conv(ConvArgs a) {
    pdl_enter();
    const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const int64_t C = a.C, K = a.K;
    if (i >= a.n_spans * C) return;
    const int64_t si = i / C, c = i % C, S = K - 1;
    const SpanDev sp = a.spans[si];
    const RingDev r = a.rings[si];
    const size_t slot_floats = size_t(C * S);
    float win[k_conv_max];
    const float* st = r.conv + size_t(ring_slot(r, 0)) * slot_floats + c * S;
#pragma unroll
    for (int j = 0; j < k_conv_max; ++j) win[j] = j < S ? st[j] : 0.0f;
    const float* wc = a.w + c * K;
    for (int64_t t = 0; t < sp.n_tokens; ++t) {
        const float xv = a.x[(sp.first + t) * a.xs + c];
        float y = 0;
#pragma unroll
        for (int j = 0; j < k_conv_max; ++j)
            if (j < S) y += wc[j] * win[j];
        y += wc[S] * xv;
        a.out[(sp.first + t) * a.os + c] = siluf(y);
#pragma unroll
        for (int j = 0; j + 1 < k_conv_max; ++j)
            if (j + 1 < S) win[j] = win[j + 1];
#pragma unroll
        for (int j = 0; j < k_conv_max; ++j)
            if (j == S - 1) win[j] = xv;
        if (t >= sp.n_tokens - r.n_slots) {
            float* dst = r.conv + size_t(ring_slot(r, t + 1)) * slot_floats + c * S;
#pragma unroll
            for (int j = 0; j < k_conv_max; ++j)
                if (j < S) dst[j] = win[j];
        }
    }
}

// The Gated DeltaNet recurrence. A block takes 32 value channels of one (span, V head); each
// channel's column of the state (dk keys) is split over 4 adjacent lanes, KPT = dk / 4 keys each,
// held in registers for the whole span. Per token a lane decays its keys and forms its share of
// the prediction and of the output; the 4 shares are added by shuffles in a fixed order, so a
// token's result does not depend on the span's length. Columns move between the ring
// ([channel][key]) and registers as contiguous 16-byte loads and stores. Key sizes other than
// 16..256 in powers of two take the EXACT = false form: up to KPT keys a lane, ceil(dk / 4) used,
// loaded one by one.
constexpr int k_gdn_parts = 4;
template <int KPT, bool EXACT>
__global__ void k_gdn(GdnArgs a) {
    pdl_enter();
    const int64_t Hk = a.Hk, Hv = a.Hv, dk = a.dk, dv = a.dv, groups = (dv + 31) / 32;
    const int64_t si = blockIdx.x / (Hv * groups), h = (blockIdx.x / groups) % Hv, g = blockIdx.x % groups;
    const int part = threadIdx.x % k_gdn_parts;
    const int64_t c = g * 32 + threadIdx.x / k_gdn_parts;
    const bool live = c < dv;
    const SpanDev sp = a.spans[si];
    const RingDev r = a.rings[si];
    const size_t head_floats = size_t(dv * dk), slot_floats = size_t(Hv) * head_floats;
    const int kpt = EXACT ? KPT : int((dk + k_gdn_parts - 1) / k_gdn_parts);
    const int64_t j = h % Hk, key_dim = Hk * dk, x0 = int64_t(part) * kpt;
    // whether key x0 + x is this lane's
    auto mine = [&](int x) { return EXACT || (x < kpt && x0 + x < dk); };
    const float q_scale = float(a.q_scale);
    float S[KPT];
#pragma unroll
    for (int x = 0; x < KPT; ++x) S[x] = 0;
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
    for (int64_t t = 0; t < sp.n_tokens; ++t) {
        const int64_t row = sp.first + t;
        // the token's k and q of key head j, L2-normalised: a lane's share of the sums of squares
        // in double, the 4 shares added by shuffles (x / max(||x||, eps))
        const float* kraw = a.u + row * a.us + key_dim + j * dk + x0;
        const float* qraw = a.u + row * a.us + j * dk + x0;
        float kr[KPT], qr[KPT];
        double ks = 0, qs = 0;
#pragma unroll
        for (int x = 0; x < KPT; ++x) {
            kr[x] = mine(x) ? kraw[x] : 0.0f;
            qr[x] = mine(x) ? qraw[x] : 0.0f;
            ks += double(kr[x]) * double(kr[x]);
            qs += double(qr[x]) * double(qr[x]);
        }
        ks += __shfl_xor_sync(0xffffffffu, ks, 1);
        ks += __shfl_xor_sync(0xffffffffu, ks, 2);
        qs += __shfl_xor_sync(0xffffffffu, qs, 1);
        qs += __shfl_xor_sync(0xffffffffu, qs, 2);
        const float kscale = 1.0f / fmaxf(sqrtf(float(ks)), float(a.eps));
        const float qscale = 1.0f / fmaxf(sqrtf(float(qs)), float(a.eps));
#pragma unroll
        for (int x = 0; x < KPT; ++x) {
            kr[x] *= kscale;
            qr[x] *= qscale;
        }
        const float al = a.alpha[row * a.as + h] + a.dt_bias[h];
        const float sp_a = al > 20.0f ? al : logf(1.0f + expf(al));
        const float decay = expf(sp_a * a.ssm_a[h]);
        const float b = sigmoidf(a.beta[row * a.bs + h]);
        float pred = 0;
#pragma unroll
        for (int x = 0; x < KPT; ++x)
            if (mine(x)) {
                S[x] *= decay;
                pred += S[x] * kr[x];
            }
        pred += __shfl_xor_sync(0xffffffffu, pred, 1);
        pred += __shfl_xor_sync(0xffffffffu, pred, 2);
        const float delta = b * ((live ? a.u[row * a.us + 2 * key_dim + h * dv + c] : 0.0f) - pred);
        float acc = 0;
#pragma unroll
        for (int x = 0; x < KPT; ++x)
            if (mine(x)) {
                S[x] += kr[x] * delta;
                acc += S[x] * qr[x];
            }
        acc += __shfl_xor_sync(0xffffffffu, acc, 1);
        acc += __shfl_xor_sync(0xffffffffu, acc, 2);
        if (live && part == 0) a.out[row * a.os + h * dv + c] = acc * q_scale;
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
            for (int i = 0; i < KPT / 4; ++i) dst[i] = make_float4(S[4 * i], S[4 * i + 1], S[4 * i + 2], S[4 * i + 3]);
        }
    }
}

}  // namespace

void run_op(cudaStream_t s, const NormArgs& a) {
    launch(k_rms_norm, dim3(unsigned(a.rows), unsigned(a.groups)), 256, 0, s, a);
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

void run_op(cudaStream_t s, const RopeArgs& a) {
    launch(k_rope, blocks_for(a.rows * a.n_heads * a.half, 256), 256, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const AttentionArgs& a) {
    launch(k_kv_store, blocks_for(a.rows * a.n_head_kv * a.D, 256), 256, 0, s, a);
    CU_LAUNCHED();
    launch(k_attention, dim3(unsigned(a.rows), unsigned(a.n_head)), 32 * k_att_warps, 0, s, a);
    CU_LAUNCHED();
}

void run_op(cudaStream_t s, const ConvArgs& a) {
    launch(k_ssm_conv, blocks_for(a.n_spans * a.C, 128), 128, 0, s, a);
    CU_LAUNCHED();
}

bool gdn_supported(int64_t dk) {
    return dk >= 1 && dk <= 256;
}

void run_op(cudaStream_t s, const GdnArgs& a) {
    const dim3 grid(unsigned(a.n_spans * a.Hv * ((a.dv + 31) / 32)));
    const int threads = 32 * k_gdn_parts;
    switch (a.dk) {
        case 16:
            launch(k_gdn<4, true>, grid, threads, 0, s, a);
            break;
        case 32:
            launch(k_gdn<8, true>, grid, threads, 0, s, a);
            break;
        case 64:
            launch(k_gdn<16, true>, grid, threads, 0, s, a);
            break;
        case 128:
            launch(k_gdn<32, true>, grid, threads, 0, s, a);
            break;
        case 256:
            launch(k_gdn<64, true>, grid, threads, 0, s, a);
            break;
        default:
            launch(k_gdn<64, false>, grid, threads, 0, s, a);
            break;
    }
    CU_LAUNCHED();
}

}  // namespace bigmoe::cuda
