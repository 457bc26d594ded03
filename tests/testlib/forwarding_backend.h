// A backend that passes every call to another one: tests derive from it to watch or change the
// few calls they care about.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bigmoe/bigmoe.h"

namespace bigmoe::testing {

class ForwardingBackend : public Backend {
  public:
    explicit ForwardingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

    std::string name() const override { return inner_->name(); }
    std::string device_name() const override { return inner_->device_name(); }
    int n_threads() const override { return inner_->n_threads(); }
    bool supports(Op op, DType t) const override { return inner_->supports(op, t); }
    Result<void> check_shapes(const OpShapes& s) const override { return inner_->check_shapes(s); }
    void annotate(const char* s) override { inner_->annotate(s); }
    Result<void> prepare_weight(Weight& w) override { return inner_->prepare_weight(w); }
    uint64_t memory_available() const override { return inner_->memory_available(); }
    void* alloc(size_t n) override { return inner_->alloc(n); }
    void dealloc(void* p) override { inner_->dealloc(p); }
    void upload(void* d, const void* s, size_t n) override { inner_->upload(d, s, n); }
    void download(void* d, const void* s, size_t n) override { inner_->download(d, s, n); }
    void copy(void* d, const void* s, size_t n) override { inner_->copy(d, s, n); }
    void fill_zero(void* d, size_t n) override { inner_->fill_zero(d, n); }
    ScratchArena& scratch_arena() override { return inner_->scratch_arena(); }
    void begin_batch(const BatchState& b) override { inner_->begin_batch(b); }
    void synchronize() override { inner_->synchronize(); }
    int64_t time_mark() override { return inner_->time_mark(); }
    double mark_seconds(int64_t a, int64_t b) override { return inner_->mark_seconds(a, b); }
    void clear_marks() override { inner_->clear_marks(); }

    void argmax_rows(Tensor x, int32_t* ids) override { inner_->argmax_rows(x, ids); }
    void get_rows(const Weight& e, const int32_t* ids, int64_t n, Tensor out) override {
        inner_->get_rows(e, ids, n, out);
    }
    void rms_norm(Tensor x, const Weight& w, float eps, Tensor out) override { inner_->rms_norm(x, w, eps, out); }
    void matmul(const Weight& w, Tensor x, Tensor out) override { inner_->matmul(w, x, out); }
    void matmuls(Tensor x, const std::vector<Product>& ps) override { inner_->matmuls(x, ps); }
    void add(Tensor a, Tensor b, Tensor out) override { inner_->add(a, b, out); }
    void add_rms_norm(Tensor h, Tensor y, const Weight& w, float eps, Tensor out) override {
        inner_->add_rms_norm(h, y, w, eps, out);
    }
    void gather_cols(Tensor x, int64_t g, int64_t o, int64_t w, Tensor out) override {
        inner_->gather_cols(x, g, o, w, out);
    }
    void swiglu(Tensor g, Tensor u, Tensor out) override { inner_->swiglu(g, u, out); }
    void rms_norm_gate(Tensor x, const Weight& w, float eps, Tensor z, Tensor out) override {
        inner_->rms_norm_gate(x, w, eps, z, out);
    }
    void mul_sigmoid(Tensor x, Tensor g, Tensor out) override { inner_->mul_sigmoid(x, g, out); }
    void add_gated(Tensor a, Tensor b, const Weight& gv, Tensor f, Tensor out) override {
        inner_->add_gated(a, b, gv, f, out);
    }
    void rope_neox(Tensor x, int64_t hd, int64_t nr, float th) override { inner_->rope_neox(x, hd, nr, th); }
    void attention_inputs(Tensor qg, Tensor k, const AttentionInputs& a, Tensor q, Tensor kn, Tensor g) override {
        inner_->attention_inputs(qg, k, a, q, kn, g);
    }
    void attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) override {
        inner_->attention(q, k, v, p, il, out);
    }
    void moe(Tensor x, Tensor logits, const MoeWeights& m, Tensor out) override { inner_->moe(x, logits, m, out); }
    void moe_shared(Tensor x, Tensor logits, const MoeWeights& m, const SharedExpert& s, Tensor out) override {
        inner_->moe_shared(x, logits, m, s, out);
    }
    void ssm_conv(Tensor m, const Weight& w, const GdnParams& p, int64_t il, Tensor out) override {
        inner_->ssm_conv(m, w, p, il, out);
    }
    void gated_delta_net(Tensor u, Tensor b, Tensor a, const Weight& dt, const Weight& sa, const GdnParams& p,
                         int64_t il, Tensor out) override {
        inner_->gated_delta_net(u, b, a, dt, sa, p, il, out);
    }

  protected:
    std::unique_ptr<Backend> inner_;
};

}  // namespace bigmoe::testing
