// Float64 references of the backend ops (spec/arch-qwen35.md, arch-qwen3moe.md), written for
// clarity, shared by the conformance suite and the kernel tests. Matrices are row-major
// std::vector<float> inputs of [rows][cols]; results are float64 of the same layout.
#pragma once

#include <cstdint>
#include <vector>

#include "backend/backend.h"

namespace bigmoe::testing::ref {

using Vec = std::vector<double>;

// Row r of a weight (expert stacks: experts one after another), dequantized.
std::vector<float> weight_row(const Weight& w, int64_t r);
// x as a kernel that quantizes its activations to the weight type's activation type sees it.
std::vector<float> activation_view(DType weight_type, const float* x, int64_t n);

// out[t][r] = dot(w row r, x[t]); mag[t][r] = sum |w x| (the scale of the rounding error).
void matmul(const Weight& w, const std::vector<float>& x, int64_t T, Vec& out, Vec& mag);
Vec get_rows(const Weight& emb, const std::vector<int32_t>& ids);
// RMS norm over groups of w.size() columns, times w.
Vec rms_norm(const std::vector<float>& x, int64_t T, int64_t cols, const std::vector<float>& w, double eps);
Vec add(const std::vector<float>& a, const std::vector<float>& b);
Vec gather_cols(const std::vector<float>& x, int64_t T, int64_t cols, int64_t group, int64_t offset, int64_t width);
Vec swiglu(const std::vector<float>& gate, const std::vector<float>& up);
Vec mul_sigmoid(const std::vector<float>& x, const std::vector<float>& gate);
Vec add_gated(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& gate_vec,
              const std::vector<float>& f, int64_t T, int64_t cols);
// x: [T][n_heads * head_dim]; token t of the span at position pos0 + t.
Vec rope_neox(const std::vector<float>& x, int64_t T, int64_t cols, int64_t head_dim, int64_t n_rot, double theta,
              int64_t pos0);
// Causal attention of T new tokens after `depth` cached positions; K/V rows (cached and new)
// are rounded through the cache types (any KV cache type, a row of Hkv * D at a time) as the
// cache stores them. Returns [T][H * D].
Vec attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
              const std::vector<float>& past_k, const std::vector<float>& past_v, int64_t H, int64_t Hkv, int64_t D,
              int64_t depth, int64_t T, DType type_k, DType type_v, double scale);
// Rows of `width` values as a cache of type t holds them (written, then read back).
std::vector<float> as_stored(DType t, const std::vector<float>& rows, int64_t width);
// Routed experts: softmax, top-k, renormalised, SwiGLU experts (gate / up / down stacks).
Vec moe(const std::vector<float>& x, const std::vector<float>& router, int64_t T, const MoeWeights& m);
// Depthwise causal conv then SiLU; state: [C][K-1] oldest first, updated to the last inputs.
Vec ssm_conv(const std::vector<float>& mixed, int64_t T, int64_t C, const std::vector<float>& w, int64_t K,
             std::vector<double>& state);
// Gated DeltaNet recurrence; S: [Hv][dv][dk], updated; states[t] (if not null) gets S after
// token t.
Vec gated_delta_net(const std::vector<float>& u, const std::vector<float>& beta, const std::vector<float>& alpha,
                    const std::vector<float>& dt_bias, const std::vector<float>& ssm_a, const GdnParams& p, int64_t T,
                    Vec& S, std::vector<Vec>* states = nullptr);

}  // namespace bigmoe::testing::ref
