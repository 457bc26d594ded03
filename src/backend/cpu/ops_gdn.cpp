// Gated DeltaNet on the CPU: the short causal convolution and the sequential delta-rule
// recurrence (arch-qwen35.md §7). State for each head is carried through the batch in a local
// buffer; only the snapshots a rollback can need (the last n_slots states) are written back.
#include <algorithm>
#include <cmath>
#include <vector>

#include "backend/cpu/cpu_backend.h"

namespace bigmoe::cpu {

namespace {
inline float softplus(float x) {
    return x > 20.0f ? x : std::log(1.0f + std::exp(x));
}

int slot_of(const RecurrentRing& r, int64_t i) {
    return int((r.head + i) % r.n_slots);
}

// Rows of L2-normalised heads: x / max(||x||, eps), the sum of squares in double.
void l2_normalize_heads(const float* src, float* dst, int64_t n_heads, int64_t d, float eps) {
    for (int64_t h = 0; h < n_heads; ++h) {
        double sum = 0;
        for (int64_t i = 0; i < d; ++i) sum += double(src[h * d + i]) * double(src[h * d + i]);
        const float scale = 1.0f / std::max(std::sqrt(float(sum)), eps);
        for (int64_t i = 0; i < d; ++i) dst[h * d + i] = src[h * d + i] * scale;
    }
}
}  // namespace

void CpuBackend::ssm_conv(Tensor mixed, const Weight& conv_w, const GdnParams& p, int64_t il, Tensor out) {
    const std::vector<SeqSpan>& spans = batch().spans;
    const std::vector<RecurrentRing*>& rings = batch().rs.at(size_t(il));
    const int64_t C = mixed.cols, K = p.conv_kernel, S = K - 1;
    BM_CHECK(conv_w.type == DType::F32 && conv_w.n_in() == K && conv_w.n_out() == C && out.cols == C);
    BM_CHECK(K >= 2 && K <= 8);
    const float* w = static_cast<const float*>(conv_w.data);
    // Tasks are (sequence, block of channels), all sequences in one fork-join: decoding several
    // sequences costs one wake-up of the pool, not one per sequence. Tokens run inside a task so
    // rows are read contiguously.
    constexpr int64_t k_chunk = 64;
    const int64_t n_blocks = (C + k_chunk - 1) / k_chunk;
    const size_t slot_floats = size_t(C * S);
    // Within a task the weights are transposed (wt[j][c]) and the window is kept as rows (win[j][c]),
    // so each step is a few loops over contiguous channels, each channel's sum in tap order.
    pool_->parallel_for(int64_t(spans.size()) * n_blocks, [&](int64_t tb, int64_t te, int) {
        std::vector<float> win(static_cast<size_t>(S * k_chunk)), wt(static_cast<size_t>(K * k_chunk));
        for (int64_t task = tb; task < te; ++task) {
            const SeqSpan& s = spans[size_t(task / n_blocks)];
            RecurrentRing& ring = *rings[size_t(task / n_blocks)];
            const float* st = ring.conv + size_t(slot_of(ring, 0)) * slot_floats;
            const int64_t c0 = (task % n_blocks) * k_chunk, c1 = std::min(C, c0 + k_chunk), nc = c1 - c0;
            // win[j][c]: the last S inputs of channel c, oldest first
            for (int64_t c = 0; c < nc; ++c) {
                for (int64_t j = 0; j < S; ++j) win[size_t(j * nc + c)] = st[(c0 + c) * S + j];
                for (int64_t j = 0; j < K; ++j) wt[size_t(j * nc + c)] = w[(c0 + c) * K + j];
            }
            for (int64_t i = 0; i < s.n_tokens; ++i) {
                const float* x = mixed.row(s.first + i) + c0;
                float* o = out.row(s.first + i) + c0;
                for (int64_t c = 0; c < nc; ++c) o[c] = 0.0f;
                for (int64_t j = 0; j < S; ++j) {
                    const float* wj = wt.data() + j * nc;
                    const float* vj = win.data() + j * nc;
                    for (int64_t c = 0; c < nc; ++c) o[c] += wj[c] * vj[c];
                }
                const float* ws = wt.data() + S * nc;
                for (int64_t c = 0; c < nc; ++c) o[c] += ws[c] * x[c];
                std::copy(win.begin() + nc, win.begin() + S * nc, win.begin());
                std::copy(x, x + nc, win.begin() + (S - 1) * nc);
                k_->silu_mul(o, nullptr, o, nc);
                if (i >= s.n_tokens - ring.n_slots) {
                    float* dst = ring.conv + size_t(slot_of(ring, i + 1)) * slot_floats;
                    for (int64_t c = 0; c < nc; ++c)
                        for (int64_t j = 0; j < S; ++j) dst[(c0 + c) * S + j] = win[size_t(j * nc + c)];
                }
            }
        }
    });
}

void CpuBackend::gated_delta_net(Tensor u, Tensor beta, Tensor alpha, const Weight& dt_bias, const Weight& ssm_a,
                                 const GdnParams& p, int64_t il, Tensor out) {
    const std::vector<SeqSpan>& spans = batch().spans;
    const std::vector<RecurrentRing*>& rings = batch().rs.at(size_t(il));
    const int64_t Hk = p.n_k_heads, Hv = p.n_v_heads, dk = p.d_k, dv = p.d_v;
    const int64_t key_dim = Hk * dk;
    BM_CHECK(u.cols == 2 * key_dim + Hv * dv && out.cols == Hv * dv && beta.cols == Hv && alpha.cols == Hv);
    const float* dtb = static_cast<const float*>(dt_bias.data);
    const float* A = static_cast<const float*>(ssm_a.data);
    const float q_scale = 1.0f / std::sqrt(float(dk));
    const size_t head_floats = size_t(dv * dk), slot_floats = size_t(Hv) * head_floats;
    const int64_t n_rows = u.rows;
    Tensor qn = scratch(n_rows, key_dim), kn = scratch(n_rows, key_dim);
    pool_->parallel_for(n_rows, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) {
            l2_normalize_heads(u.row(i), qn.row(i), Hk, dk, p.eps);
            l2_normalize_heads(u.row(i) + key_dim, kn.row(i), Hk, dk, p.eps);
        }
    });
    // Tasks are (sequence, V head, block of state rows), all sequences in one fork-join: a row
    // of a head's state ([d_v][d_k]) evolves on its own (its prediction, update and output read
    // only that row and the token's q, k), so a head splits into row blocks with the same bits,
    // and a model with few heads still keeps every thread busy. Each token's new state goes
    // straight to its ring slot when it must be kept (the last n_slots tokens), else nowhere (the
    // kernel carries it); slot 0, the state before the batch, is only read (unless the last
    // token's slot wraps onto it).
    const int64_t heads = int64_t(spans.size()) * Hv;
    int64_t n_blk = 1;
    while (heads * n_blk < 2 * int64_t(pool_->size()) && dv / (2 * n_blk) >= 16 && dv % (2 * n_blk) == 0) n_blk *= 2;
    const int64_t blk_rows = dv / n_blk;
    pool_->parallel_for(heads * n_blk, [&](int64_t tb, int64_t te, int) {
        std::vector<float> work;  // only for tokens whose state is not kept: never in decoding or verification
        std::vector<GdnToken> toks;
        for (int64_t task = tb; task < te; ++task) {
            const int64_t sh = task / n_blk, r0 = (task % n_blk) * blk_rows;
            const SeqSpan& s = spans[size_t(sh / Hv)];
            RecurrentRing& ring = *rings[size_t(sh / Hv)];
            const int64_t h = sh % Hv;
            if (s.n_tokens > ring.n_slots) work.resize(size_t(blk_rows * dk));
            toks.resize(size_t(s.n_tokens));
            const int64_t j = h % Hk;  // tiled V-head order (arch-qwen35.md §7.6)
            const size_t rows_off = size_t(h) * head_floats + size_t(r0 * dk);
            for (int64_t i = 0; i < s.n_tokens; ++i) {
                const int64_t row = s.first + i;
                GdnToken& g = toks[size_t(i)];
                g.q = qn.row(row) + j * dk;
                g.k = kn.row(row) + j * dk;
                g.v = u.row(row) + 2 * key_dim + h * dv + r0;
                g.beta = sigmoid(beta.row(row)[h]);
                g.decay = std::exp(softplus(alpha.row(row)[h] + dtb[h]) * A[h]);
                g.out = out.row(row) + h * dv + r0;
                g.state = i >= s.n_tokens - ring.n_slots
                              ? ring.ssm + size_t(slot_of(ring, i + 1)) * slot_floats + rows_off
                              : nullptr;
            }
            const float* src = ring.ssm + size_t(slot_of(ring, 0)) * slot_floats + rows_off;
            k_->gdn_steps(src, toks.data(), s.n_tokens, q_scale, dk, blk_rows, work.data());
        }
    });
}

}  // namespace bigmoe::cpu
