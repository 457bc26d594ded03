#include "models/blocks/blocks.h"

#include <cmath>

namespace bigmoe::blocks {

Result<Attention> load_attention(Model& m, int64_t il, bool gated) {
    const HParams& hp = m.hparams();
    Attention a;
    a.gated = gated;
    const int64_t q_out = (gated ? 2 : 1) * hp.n_head * hp.head_dim, kv_out = hp.n_head_kv * hp.head_dim;
    BM_ASSIGN(a.q, m.load(blk(il, gguf::tensor::attn_q), {hp.n_embd, q_out}));
    BM_ASSIGN(a.k, m.load(blk(il, gguf::tensor::attn_k), {hp.n_embd, kv_out}));
    BM_ASSIGN(a.v, m.load(blk(il, gguf::tensor::attn_v), {hp.n_embd, kv_out}));
    BM_ASSIGN(a.q_norm, m.load_f32(blk(il, gguf::tensor::attn_q_norm), {hp.head_dim}));
    BM_ASSIGN(a.k_norm, m.load_f32(blk(il, gguf::tensor::attn_k_norm), {hp.head_dim}));
    BM_ASSIGN(a.o, m.load(blk(il, gguf::tensor::attn_output), {hp.n_head * hp.head_dim, hp.n_embd}));
    return a;
}

Tensor attention(Backend& be, const HParams& hp, const Attention& w, Tensor x, int64_t il) {
    const int64_t T = x.rows, D = hp.head_dim, nq = hp.n_head * D, nkv = hp.n_head_kv * D;
    Tensor qg = be.scratch(T, w.q->n_out()), k = be.scratch(T, nkv), v = be.scratch(T, nkv);
    be.matmuls(x, {{w.q, qg}, {w.k, k}, {w.v, v}});
    Tensor gate = w.gated ? be.scratch(T, nq) : Tensor{};
    Tensor qn = be.scratch(T, nq), kn = be.scratch(T, nkv);
    be.attention_inputs(qg, k, {w.q_norm, w.k_norm, hp.eps, D, hp.n_rot, hp.rope_theta, w.gated}, qn, kn, gate);
    AttentionParams p{hp.n_head, hp.n_head_kv, D, 1.0f / std::sqrt(float(D))};
    Tensor o = be.scratch(T, nq);
    be.attention(qn, kn, v, p, il, o);
    if (w.gated) be.mul_sigmoid(o, gate, o);
    Tensor out = be.scratch(T, hp.n_embd);
    be.matmul(*w.o, o, out);
    return out;
}

Result<GatedDeltaNet> load_gdn(Model& m, int64_t il) {
    const HParams& hp = m.hparams();
    GatedDeltaNet g;
    const int64_t E = hp.n_embd, Hv = hp.ssm_n_v_heads;
    BM_ASSIGN(g.qkv, m.load(blk(il, gguf::tensor::attn_qkv), {E, hp.conv_dim()}));
    BM_ASSIGN(g.gate, m.load(blk(il, gguf::tensor::attn_gate), {E, hp.ssm_d_inner}));
    BM_ASSIGN(g.beta, m.load(blk(il, gguf::tensor::ssm_beta), {E, Hv}));
    BM_ASSIGN(g.alpha, m.load(blk(il, gguf::tensor::ssm_alpha), {E, Hv}));
    BM_ASSIGN(g.conv, m.load_f32(blk(il, gguf::tensor::ssm_conv1d), {hp.ssm_conv_kernel, hp.conv_dim()}));
    BM_ASSIGN(g.dt_bias, m.load_f32(blk(il, gguf::tensor::ssm_dt_bias), {Hv}));
    BM_ASSIGN(g.a, m.load_f32(blk(il, gguf::tensor::ssm_a), {Hv}));
    BM_ASSIGN(g.norm, m.load_f32(blk(il, gguf::tensor::ssm_norm), {hp.ssm_d_state}));
    BM_ASSIGN(g.out, m.load(blk(il, gguf::tensor::ssm_out), {hp.ssm_d_inner, E}));
    return g;
}

Tensor gated_delta_net(Backend& be, const HParams& hp, const GatedDeltaNet& w, Tensor x, int64_t il) {
    const int64_t T = x.rows, Hv = hp.ssm_n_v_heads;
    Tensor mixed = be.scratch(T, hp.conv_dim()), z = be.scratch(T, hp.ssm_d_inner);
    Tensor beta = be.scratch(T, Hv), alpha = be.scratch(T, Hv);
    be.matmuls(x, {{w.qkv, mixed}, {w.gate, z}, {w.beta, beta}, {w.alpha, alpha}});
    GdnParams p{hp.ssm_n_k_heads, Hv, hp.ssm_d_state, hp.ssm_d_state, hp.ssm_conv_kernel, hp.eps};
    Tensor u = be.scratch(T, hp.conv_dim());
    be.ssm_conv(mixed, *w.conv, p, il, u);
    Tensor o = be.scratch(T, hp.ssm_d_inner);
    be.gated_delta_net(u, beta, alpha, *w.dt_bias, *w.a, p, il, o);
    Tensor on = be.scratch(T, hp.ssm_d_inner);
    be.rms_norm_gate(o, *w.norm, hp.eps, z, on);
    Tensor out = be.scratch(T, hp.n_embd);
    be.matmul(*w.out, on, out);
    return out;
}

Result<DenseFfn> load_dense_ffn(Model& m, int64_t il, int64_t n_ff, bool shared) {
    namespace t = gguf::tensor;
    const HParams& hp = m.hparams();
    DenseFfn f;
    BM_ASSIGN(f.gate, m.load(blk(il, shared ? t::ffn_gate_shexp : t::ffn_gate), {hp.n_embd, n_ff}));
    BM_ASSIGN(f.up, m.load(blk(il, shared ? t::ffn_up_shexp : t::ffn_up), {hp.n_embd, n_ff}));
    BM_ASSIGN(f.down, m.load(blk(il, shared ? t::ffn_down_shexp : t::ffn_down), {n_ff, hp.n_embd}));
    return f;
}

// down(silu(g) * u), g and u already projected
static Tensor dense_ffn_down(Backend& be, const DenseFfn& w, Tensor g, Tensor u) {
    be.swiglu(g, u, g);
    Tensor out = be.scratch(g.rows, w.down->n_out());
    be.matmul(*w.down, g, out);
    return out;
}

Tensor dense_ffn(Backend& be, const DenseFfn& w, Tensor x) {
    const int64_t T = x.rows, F = w.gate->n_out();
    Tensor g = be.scratch(T, F), u = be.scratch(T, F);
    be.matmuls(x, {{w.gate, g}, {w.up, u}});
    return dense_ffn_down(be, w, g, u);
}

Result<Moe> load_moe(Model& m, int64_t il, bool shared_expert) {
    const HParams& hp = m.hparams();
    Moe w;
    const int64_t E = hp.n_embd, F = hp.n_ff_exp, X = hp.n_expert;
    BM_ASSIGN(w.router, m.load_f32(blk(il, gguf::tensor::ffn_gate_inp), {E, X}));
    w.experts.n_expert = X;
    w.experts.n_expert_used = hp.n_expert_used;
    w.experts.n_ff = F;
    BM_ASSIGN(w.experts.gate_up, m.load_optional(blk(il, gguf::tensor::ffn_gate_up_exps), {E, 2 * F, X}, true));
    if (!w.experts.gate_up) {
        BM_ASSIGN(w.experts.gate, m.load(blk(il, gguf::tensor::ffn_gate_exps), {E, F, X}, true));
        BM_ASSIGN(w.experts.up, m.load(blk(il, gguf::tensor::ffn_up_exps), {E, F, X}, true));
    }
    BM_ASSIGN(w.experts.down, m.load(blk(il, gguf::tensor::ffn_down_exps), {F, E, X}, true));
    if (shared_expert) {
        BM_ASSIGN(w.shared, load_dense_ffn(m, il, hp.n_ff_shexp, /*shared=*/true));
        BM_ASSIGN(w.shared_gate, m.load_f32(blk(il, gguf::tensor::ffn_gate_inp_shexp), {E}));
    }
    return w;
}

Tensor moe(Backend& be, Backend& xb, const Moe& w, Tensor x) {
    const int64_t T = x.rows;
    Tensor logits = be.scratch(T, w.experts.n_expert), g, u;
    // the router and the shared expert's projections read the same input: one job
    std::vector<Backend::Product> ps = {{w.router, logits}};
    if (w.shared_gate) {
        g = be.scratch(T, w.shared.gate->n_out());
        u = be.scratch(T, w.shared.up->n_out());
        ps.push_back({w.shared.gate, g});
        ps.push_back({w.shared.up, u});
    }
    be.matmuls(x, ps);
    Tensor out = be.scratch(T, x.cols);
    if (&xb != &be) {
        // the routed experts live on xb: their input and the router's logits go there, the
        // weighted sum comes back, and the shared expert adds to it here
        const auto mark = xb.scratch_mark();
        Tensor xs = copy_across(be, x, xb), ls = copy_across(be, logits, xb), ys = xb.scratch(T, x.cols);
        xb.moe(xs, ls, w.experts, ys);
        copy_across(xb, ys, be, out);
        xb.scratch_rewind(mark);
        if (w.shared_gate) be.add_shared_expert(x, {g, u, w.shared.down, w.shared_gate}, out);
        return out;
    }
    if (w.shared_gate)
        be.moe_shared(x, logits, w.experts, {g, u, w.shared.down, w.shared_gate}, out);
    else
        be.moe(x, logits, w.experts, out);
    return out;
}

}  // namespace bigmoe::blocks
