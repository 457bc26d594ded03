#include "reference_ops.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/fp16.h"
#include "quant/quants.h"

namespace bigmoe::testing::ref {

namespace {
double sigmoid(double x) {
    return 1 / (1 + std::exp(-x));
}
double silu(double x) {
    return x * sigmoid(x);
}
}  // namespace

std::vector<float> weight_row(const Weight& w, int64_t r) {
    std::vector<float> out(static_cast<size_t>(w.n_in()));
    dequantize_row(w.type, static_cast<const uint8_t*>(w.data) + size_t(r) * w.row_bytes, out.data(), w.n_in());
    return out;
}

std::vector<float> activation_view(DType weight_type, const float* x, int64_t n) {
    const DType at = activation_type(weight_type);
    std::vector<uint8_t> q(row_bytes(at, n));
    quantize_row(at, x, q.data(), n);
    std::vector<float> r(static_cast<size_t>(n));
    dequantize_row(at, q.data(), r.data(), n);
    return r;
}

void matmul(const Weight& w, const std::vector<float>& x, int64_t T, Vec& out, Vec& mag) {
    const int64_t N = w.n_in(), R = w.n_out();
    out.assign(size_t(T * R), 0.0);
    mag.assign(size_t(T * R), 0.0);
    for (int64_t r = 0; r < R; ++r) {
        const std::vector<float> wr = weight_row(w, r);
        for (int64_t t = 0; t < T; ++t) {
            double s = 0, m = 0;
            for (int64_t i = 0; i < N; ++i) {
                const double p = double(wr[size_t(i)]) * double(x[size_t(t * N + i)]);
                s += p;
                m += std::fabs(p);
            }
            out[size_t(t * R + r)] = s;
            mag[size_t(t * R + r)] = m;
        }
    }
}

Vec get_rows(const Weight& emb, const std::vector<int32_t>& ids) {
    Vec out;
    for (int32_t id : ids) {
        const std::vector<float> r = weight_row(emb, id);
        out.insert(out.end(), r.begin(), r.end());
    }
    return out;
}

Vec rms_norm(const std::vector<float>& x, int64_t T, int64_t cols, const std::vector<float>& w, double eps) {
    const int64_t g = int64_t(w.size());
    Vec out(x.size());
    for (int64_t t = 0; t < T; ++t)
        for (int64_t c0 = 0; c0 < cols; c0 += g) {
            double ss = 0;
            for (int64_t i = 0; i < g; ++i) ss += double(x[size_t(t * cols + c0 + i)]) * x[size_t(t * cols + c0 + i)];
            const double scale = 1 / std::sqrt(ss / double(g) + eps);
            for (int64_t i = 0; i < g; ++i)
                out[size_t(t * cols + c0 + i)] = x[size_t(t * cols + c0 + i)] * scale * w[size_t(i)];
        }
    return out;
}

Vec add(const std::vector<float>& a, const std::vector<float>& b) {
    Vec out(a.size());
    for (size_t i = 0; i < a.size(); ++i) out[i] = double(a[i]) + double(b[i]);
    return out;
}

Vec gather_cols(const std::vector<float>& x, int64_t T, int64_t cols, int64_t group, int64_t offset, int64_t width) {
    Vec out;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t g = 0; g < cols / group; ++g)
            for (int64_t i = 0; i < width; ++i) out.push_back(x[size_t(t * cols + g * group + offset + i)]);
    return out;
}

Vec swiglu(const std::vector<float>& gate, const std::vector<float>& up) {
    Vec out(gate.size());
    for (size_t i = 0; i < gate.size(); ++i) out[i] = silu(gate[i]) * up[i];
    return out;
}

Vec mul_sigmoid(const std::vector<float>& x, const std::vector<float>& gate) {
    Vec out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] * sigmoid(gate[i]);
    return out;
}

Vec add_gated(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& gate_vec,
              const std::vector<float>& f, int64_t T, int64_t cols) {
    const int64_t nf = int64_t(gate_vec.size());
    Vec out(a.size());
    for (int64_t t = 0; t < T; ++t) {
        double s = 0;
        for (int64_t i = 0; i < nf; ++i) s += double(gate_vec[size_t(i)]) * f[size_t(t * nf + i)];
        const double g = sigmoid(s);
        for (int64_t i = 0; i < cols; ++i)
            out[size_t(t * cols + i)] = a[size_t(t * cols + i)] + b[size_t(t * cols + i)] * g;
    }
    return out;
}

Vec rope_neox(const std::vector<float>& x, int64_t T, int64_t cols, int64_t head_dim, int64_t n_rot, double theta,
              int64_t pos0) {
    Vec out(x.begin(), x.end());
    const int64_t half = n_rot / 2;
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h0 = 0; h0 < cols; h0 += head_dim)
            for (int64_t j = 0; j < half; ++j) {
                const double ang = double(pos0 + t) * std::pow(theta, -2.0 * double(j) / double(n_rot));
                const double a = x[size_t(t * cols + h0 + j)], c = x[size_t(t * cols + h0 + j + half)];
                out[size_t(t * cols + h0 + j)] = a * std::cos(ang) - c * std::sin(ang);
                out[size_t(t * cols + h0 + j + half)] = a * std::sin(ang) + c * std::cos(ang);
            }
    return out;
}

Vec attention(const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v,
              const std::vector<float>& past_k, const std::vector<float>& past_v, int64_t H, int64_t Hkv, int64_t D,
              int64_t depth, int64_t T, DType type_k, DType type_v, double scale) {
    const int64_t W = Hkv * D;
    const std::vector<float> pk = as_stored(type_k, past_k, W), pv = as_stored(type_v, past_v, W),
                             nk = as_stored(type_k, k, W), nv = as_stored(type_v, v, W);
    Vec out(size_t(T * H * D), 0.0);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
            const int64_t g = h / (H / Hkv), n = depth + t + 1;
            auto at = [&](const std::vector<float>& past, const std::vector<float>& now, int64_t p, int64_t i) {
                return double(p < depth ? past[size_t(p * W + g * D + i)] : now[size_t((p - depth) * W + g * D + i)]);
            };
            Vec s(static_cast<size_t>(n));
            for (int64_t p = 0; p < n; ++p) {
                double d = 0;
                for (int64_t i = 0; i < D; ++i) d += double(q[size_t(t * H * D + h * D + i)]) * at(pk, nk, p, i);
                s[size_t(p)] = d * scale;
            }
            const double mx = *std::max_element(s.begin(), s.end());
            double sum = 0;
            for (double& x : s) sum += x = std::exp(x - mx);
            for (int64_t i = 0; i < D; ++i) {
                double o = 0;
                for (int64_t p = 0; p < n; ++p) o += s[size_t(p)] * at(pv, nv, p, i);
                out[size_t(t * H * D + h * D + i)] = o / sum;
            }
        }
    return out;
}

std::vector<float> as_stored(DType t, const std::vector<float>& rows, int64_t width) {
    std::vector<float> out(rows.size());
    std::vector<uint8_t> bytes(row_bytes(t, width));
    for (size_t r = 0; r + size_t(width) <= rows.size(); r += size_t(width)) {
        quantize_row(t, rows.data() + r, bytes.data(), width);
        dequantize_row(t, bytes.data(), out.data() + r, width);
    }
    return out;
}

Vec moe(const std::vector<float>& x, const std::vector<float>& router, int64_t T, const MoeWeights& m) {
    const int64_t N = m.gate ? m.gate->n_in() : m.gate_up->n_in(), F = m.n_ff, E = m.n_expert, K = m.n_expert_used;
    const int64_t n_out = m.down->n_out();
    Vec out(size_t(T * n_out), 0.0);
    for (int64_t t = 0; t < T; ++t) {
        Vec p(static_cast<size_t>(E));
        double mx = -1e300, sum = 0;
        for (int64_t e = 0; e < E; ++e) mx = std::max(mx, double(router[size_t(t * E + e)]));
        for (int64_t e = 0; e < E; ++e) sum += p[size_t(e)] = std::exp(double(router[size_t(t * E + e)]) - mx);
        std::vector<int64_t> idx(static_cast<size_t>(E));
        std::iota(idx.begin(), idx.end(), 0);
        std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return p[size_t(a)] > p[size_t(b)]; });
        double wsum = 0;
        for (int64_t k = 0; k < K; ++k) wsum += p[size_t(idx[size_t(k)])];
        for (int64_t k = 0; k < K; ++k) {
            const int64_t e = idx[size_t(k)];
            Vec h(static_cast<size_t>(F));
            for (int64_t f = 0; f < F; ++f) {
                const std::vector<float> g =
                    m.gate ? weight_row(*m.gate, e * F + f) : weight_row(*m.gate_up, e * 2 * F + f);
                const std::vector<float> u =
                    m.up ? weight_row(*m.up, e * F + f) : weight_row(*m.gate_up, e * 2 * F + F + f);
                double gs = 0, us = 0;
                for (int64_t i = 0; i < N; ++i) {
                    gs += double(g[size_t(i)]) * x[size_t(t * N + i)];
                    us += double(u[size_t(i)]) * x[size_t(t * N + i)];
                }
                h[size_t(f)] = silu(gs) * us;
            }
            for (int64_t o = 0; o < n_out; ++o) {
                const std::vector<float> d = weight_row(*m.down, e * n_out + o);
                double s = 0;
                for (int64_t f = 0; f < F; ++f) s += double(d[size_t(f)]) * h[size_t(f)];
                out[size_t(t * n_out + o)] += p[size_t(e)] / wsum * s;
            }
        }
    }
    return out;
}

Vec ssm_conv(const std::vector<float>& mixed, int64_t T, int64_t C, const std::vector<float>& w, int64_t K,
             std::vector<double>& state) {
    const int64_t S = K - 1;
    Vec out(static_cast<size_t>(T * C));
    for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
            double y = 0;
            for (int64_t j = 0; j < S; ++j) y += double(w[size_t(c * K + j)]) * state[size_t(c * S + j)];
            const double xin = mixed[size_t(t * C + c)];
            y += double(w[size_t(c * K + S)]) * xin;
            out[size_t(t * C + c)] = silu(y);
            for (int64_t j = 0; j + 1 < S; ++j) state[size_t(c * S + j)] = state[size_t(c * S + j + 1)];
            state[size_t(c * S + S - 1)] = xin;
        }
    return out;
}

Vec gated_delta_net(const std::vector<float>& u, const std::vector<float>& beta, const std::vector<float>& alpha,
                    const std::vector<float>& dt_bias, const std::vector<float>& ssm_a, const GdnParams& p, int64_t T,
                    Vec& S, std::vector<Vec>* states) {
    const int64_t Hk = p.n_k_heads, Hv = p.n_v_heads, dk = p.d_k, dv = p.d_v, key_dim = Hk * dk;
    const int64_t C = 2 * key_dim + Hv * dv;
    Vec out(static_cast<size_t>(T * Hv * dv));
    auto l2 = [&](const float* x) {
        double n = 0;
        for (int64_t i = 0; i < dk; ++i) n += double(x[i]) * x[i];
        Vec r(static_cast<size_t>(dk));
        for (int64_t i = 0; i < dk; ++i) r[size_t(i)] = x[i] / std::max(std::sqrt(n), double(p.eps));
        return r;
    };
    for (int64_t t = 0; t < T; ++t) {
        const float* row = u.data() + t * C;
        for (int64_t h = 0; h < Hv; ++h) {
            const int64_t j = h % Hk;  // tiled V-head order (arch-qwen35.md §7.6)
            const Vec q = l2(row + j * dk), k = l2(row + key_dim + j * dk);
            const float* v = row + 2 * key_dim + h * dv;
            const double b = sigmoid(beta[size_t(t * Hv + h)]);
            const double x = double(alpha[size_t(t * Hv + h)]) + dt_bias[size_t(h)];
            const double decay = std::exp((x > 20 ? x : std::log1p(std::exp(x))) * ssm_a[size_t(h)]);
            for (int64_t c = 0; c < dv; ++c) {
                double* r = &S[size_t((h * dv + c) * dk)];
                double pred = 0;
                for (int64_t i = 0; i < dk; ++i) pred += (r[i] *= decay) * k[size_t(i)];
                const double delta = b * (v[c] - pred);
                double o = 0;
                for (int64_t i = 0; i < dk; ++i) o += (r[i] += k[size_t(i)] * delta) * q[size_t(i)];
                out[size_t(t * Hv * dv + h * dv + c)] = o / std::sqrt(double(dk));
            }
        }
        if (states) states->push_back(S);
    }
    return out;
}

}  // namespace bigmoe::testing::ref
