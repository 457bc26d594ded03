// A profiling Backend: wraps any backend, forwards every op and records its wall time by op class,
// by layer kind (models annotate layer boundaries) and by phase (prefill / decode, set by the
// caller). Because it sits on the Backend interface it works for every backend: one with a clock
// of its own (a GPU's events) times each op there, without waiting between ops, and the times
// arrive when the backend next waits (the next batch, synchronize(), or reading the table); the
// others are timed on the host.
#pragma once

#include <array>
#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace bigmoe {

enum class OpClass { expert_matmul, dense_matmul, attention, gated_delta_net, elementwise, sampling, count };
const char* op_class_name(OpClass c);
// The class as an identifier (metric labels, JSON keys): "expert_matmul", ...
const char* op_class_key(OpClass c);
using OpSeconds = std::array<double, size_t(OpClass::count)>;

struct ProfileEntry {
    double seconds = 0;
    int64_t calls = 0;
    double bytes = 0;  // weight bytes read (dense matmul)
    double flops = 0;  // multiply-adds x 2 (dense matmul)
};

class ProfiledBackend : public Backend {
  public:
    // With `share`, both record into one table under one phase (a model split over backends).
    explicit ProfiledBackend(std::unique_ptr<Backend> inner, const ProfiledBackend* share = nullptr)
        : inner_(std::move(inner)), rec_(share ? share->rec_ : std::make_shared<Shared>()) {}
    ~ProfiledBackend() override { settle(); }
    ProfiledBackend(const ProfiledBackend&) = delete;
    ProfiledBackend& operator=(const ProfiledBackend&) = delete;

    // The wrapped backend's arena: its ops allocate from it too.
    ScratchArena& scratch_arena() override { return inner_->scratch_arena(); }
    void begin_batch(const BatchState& b) override {
        inner_->begin_batch(b);
        settle();  // a GPU's begin_batch has waited for the last batch: its marks are ready
    }
    void set_phase(const std::string& phase) { rec_->phase = phase; }
    // Time measured outside the backend (sampling) is added by the caller.
    void record(OpClass c, double seconds) {
        ProfileEntry& e = rec_->table[rec_->phase]["sampling"][c];
        e.seconds += seconds;
        e.calls += 1;
    }
    void annotate(const char* scope) override { scope_ = scope; }
    void clear();
    // Seconds by op class over every phase and layer kind since the last clear().
    OpSeconds seconds_by_class() const;
    // The breakdown of one phase as a table (share of wall time, ms per token, calls), with an
    // `other` row for the wall time no op accounts for; and the same as JSON.
    std::string format(const std::string& phase, double wall_seconds, int64_t n_tokens) const;
    std::string json(const std::string& phase, double wall_seconds, int64_t n_tokens) const;
    // [phase][scope][op class]
    using Table = std::map<std::string, std::map<std::string, std::map<OpClass, ProfileEntry>>>;
    const Table& table() const {
        settle();
        return rec_->table;
    }

    std::string name() const override { return inner_->name() + " + profiler"; }
    std::string device_name() const override { return inner_->device_name(); }
    int n_threads() const override { return inner_->n_threads(); }
    bool supports(Op op, DType t) const override { return inner_->supports(op, t); }
    Result<void> check_shapes(const OpShapes& s) const override { return inner_->check_shapes(s); }
    Result<void> prepare_weight(Weight& w) override { return inner_->prepare_weight(w); }
    uint64_t memory_available() const override { return inner_->memory_available(); }
    void* alloc(size_t b) override { return inner_->alloc(b); }
    void dealloc(void* p) override { inner_->dealloc(p); }
    void upload(void* d, const void* s, size_t b) override { inner_->upload(d, s, b); }
    void download(void* d, const void* s, size_t b) override { inner_->download(d, s, b); }
    void copy(void* d, const void* s, size_t b) override { inner_->copy(d, s, b); }
    void fill_zero(void* d, size_t b) override { inner_->fill_zero(d, b); }
    void synchronize() override {
        inner_->synchronize();
        settle();
    }

    void argmax_rows(Tensor x, int32_t* ids) override {
        timed(OpClass::sampling, [&] { inner_->argmax_rows(x, ids); });
    }
    void get_rows(const Weight& e, const int32_t* ids, int64_t n, Tensor out) override {
        timed(OpClass::elementwise, [&] { inner_->get_rows(e, ids, n, out); });
    }
    void rms_norm(Tensor x, const Weight& w, float eps, Tensor out) override {
        timed(OpClass::elementwise, [&] { inner_->rms_norm(x, w, eps, out); });
    }
    void matmul(const Weight& w, Tensor x, Tensor out) override { matmuls(x, {{&w, out}}); }
    void matmuls(Tensor x, const std::vector<Product>& ps) override {
        double bytes = 0, flops = 0;
        for (const Product& p : ps) {
            bytes += double(p.w->row_bytes) * double(p.w->n_out());
            flops += 2.0 * double(p.w->n_in()) * double(p.w->n_out()) * double(x.rows);
        }
        timed(
            OpClass::dense_matmul, [&] { inner_->matmuls(x, ps); }, bytes, flops);
    }
    void add(Tensor a, Tensor b, Tensor out) override {
        timed(OpClass::elementwise, [&] { inner_->add(a, b, out); });
    }
    void gather_cols(Tensor x, int64_t g, int64_t o, int64_t w, Tensor out) override {
        timed(OpClass::elementwise, [&] { inner_->gather_cols(x, g, o, w, out); });
    }
    void swiglu(Tensor g, Tensor u, Tensor out) override {
        timed(OpClass::elementwise, [&] { inner_->swiglu(g, u, out); });
    }
    void mul_sigmoid(Tensor x, Tensor g, Tensor out) override {
        timed(OpClass::elementwise, [&] { inner_->mul_sigmoid(x, g, out); });
    }
    void add_gated(Tensor a, Tensor b, const Weight& gv, Tensor f, Tensor out) override {
        timed(OpClass::elementwise, [&] { inner_->add_gated(a, b, gv, f, out); });
    }
    void rope_neox(Tensor x, int64_t hd, int64_t nr, float th) override {
        timed(OpClass::elementwise, [&] { inner_->rope_neox(x, hd, nr, th); });
    }
    void attention_inputs(Tensor qg, Tensor k, const AttentionInputs& a, Tensor q, Tensor kn, Tensor g) override {
        timed(OpClass::elementwise, [&] { inner_->attention_inputs(qg, k, a, q, kn, g); });
    }
    void attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) override {
        timed(OpClass::attention, [&] { inner_->attention(q, k, v, p, il, out); });
    }
    void moe(Tensor x, Tensor logits, const MoeWeights& m, Tensor out) override {
        timed(OpClass::expert_matmul, [&] { inner_->moe(x, logits, m, out); });
    }
    void ssm_conv(Tensor m, const Weight& w, const GdnParams& p, int64_t il, Tensor out) override {
        timed(OpClass::gated_delta_net, [&] { inner_->ssm_conv(m, w, p, il, out); });
    }
    void gated_delta_net(Tensor u, Tensor b, Tensor a, const Weight& dt, const Weight& sa, const GdnParams& p,
                         int64_t il, Tensor out) override {
        timed(OpClass::gated_delta_net, [&] { inner_->gated_delta_net(u, b, a, dt, sa, p, il, out); });
    }

  private:
    template <class F>
    void timed(OpClass c, F&& f, double bytes = 0, double flops = 0) {
        ProfileEntry& e = rec_->table[rec_->phase][scope_][c];
        e.calls += 1;
        e.bytes += bytes;
        e.flops += flops;
        if (const int64_t from = inner_->time_mark(); from >= 0) {
            f();
            rec_->pending.push_back({inner_.get(), &e, from, inner_->time_mark()});
            return;
        }
        inner_->synchronize();  // a queue's earlier ops are not this one's time
        const auto t0 = std::chrono::steady_clock::now();
        f();
        inner_->synchronize();
        e.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    // Adds the times of ops timed by marks to their entries and releases the marks.
    void settle() const;

    // An op timed between two marks of its backend, not yet read.
    struct Pending {
        Backend* backend;
        ProfileEntry* entry;  // std::map keeps entries in place
        int64_t from, to;
    };
    struct Shared {
        std::string phase = "prefill";
        Table table;
        std::vector<Pending> pending;
    };
    std::unique_ptr<Backend> inner_;
    std::shared_ptr<Shared> rec_;
    std::string scope_ = "model";
};

}  // namespace bigmoe
