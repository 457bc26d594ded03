// A model split over two backends (-ngl N: the first layers on the CPU, the last N and the LM
// head on the GPU) computes what it computes on one. Here both parts are CPU backends behind a
// wall: each acts as a device with its own memory, and every op, copy and state reference it
// gets must point into memory it handed out and at weights it prepared, so a tensor or a state
// left on the wrong side of the split is caught even though host memory would let it pass. With
// CPU kernels on both sides the logits and state operations must match one backend bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <set>

#include "bigmoe/bigmoe.h"
#include "testlib.h"

namespace bigmoe {
namespace {

class WalledBackend : public Backend {
  public:
    explicit WalledBackend(std::string label) : inner_(make_cpu_backend(1)), label_(std::move(label)) {}
    ~WalledBackend() override { arena_.release(); }

    // What crossed the wall, one line each; empty when nothing did.
    const std::vector<std::string>& breaches() const { return breaches_; }
    int64_t ops() const { return ops_; }
    // Bytes of the file's tensors prepared here.
    uint64_t prepared_bytes() const {
        uint64_t b = 0;
        for (const gguf::TensorInfo* t : prepared_) b += t->nbytes;
        return b;
    }

    std::string name() const override { return label_; }
    int n_threads() const override { return inner_->n_threads(); }
    bool supports(Op op, DType t) const override { return inner_->supports(op, t); }
    Result<void> check_shapes(const OpShapes& s) const override { return inner_->check_shapes(s); }
    void annotate(const char* s) override { inner_->annotate(s); }
    Result<void> prepare_weight(Weight& w) override {
        prepared_.insert(w.info);
        return inner_->prepare_weight(w);
    }
    uint64_t memory_available() const override { return inner_->memory_available(); }
    void* alloc(size_t bytes) override {
        void* p = inner_->alloc(bytes);
        if (p) owned_[reinterpret_cast<uintptr_t>(p)] = bytes;
        return p;
    }
    void dealloc(void* p) override {
        owned_.erase(reinterpret_cast<uintptr_t>(p));
        inner_->dealloc(p);
    }
    void upload(void* dst, const void* src, size_t n) override {
        mine(dst, n, "upload's destination");
        inner_->upload(dst, src, n);
    }
    void download(void* dst, const void* src, size_t n) override {
        mine(src, n, "download's source");
        inner_->download(dst, src, n);
    }
    void copy(void* dst, const void* src, size_t n) override {
        mine(dst, n, "copy's destination");
        mine(src, n, "copy's source");
        inner_->copy(dst, src, n);
    }
    void fill_zero(void* dst, size_t n) override {
        mine(dst, n, "fill_zero");
        inner_->fill_zero(dst, n);
    }
    ScratchArena& scratch_arena() override { return arena_; }
    void begin_batch(const BatchState& b) override {
        batch_ = &b;
        inner_->reset_scratch();  // what the inner ops took in the last pass is dead
        inner_->begin_batch(b);
    }

    void get_rows(const Weight& e, const int32_t* ids, int64_t n, Tensor out) override {
        op({out}, {&e});
        inner_->get_rows(e, ids, n, out);
    }
    void rms_norm(Tensor x, const Weight& w, float eps, Tensor out) override {
        op({x, out}, {&w});
        inner_->rms_norm(x, w, eps, out);
    }
    void matmul(const Weight& w, Tensor x, Tensor out) override {
        op({x, out}, {&w});
        inner_->matmul(w, x, out);
    }
    void matmuls(Tensor x, const std::vector<Product>& ps) override {
        for (const Product& p : ps) op({x, p.out}, {p.w});
        inner_->matmuls(x, ps);
    }
    void add(Tensor a, Tensor b, Tensor out) override {
        op({a, b, out}, {});
        inner_->add(a, b, out);
    }
    void add_rms_norm(Tensor h, Tensor y, const Weight& w, float eps, Tensor out) override {
        op({h, y, out}, {&w});
        inner_->add_rms_norm(h, y, w, eps, out);
    }
    void gather_cols(Tensor x, int64_t g, int64_t o, int64_t w, Tensor out) override {
        op({x, out}, {});
        inner_->gather_cols(x, g, o, w, out);
    }
    void swiglu(Tensor g, Tensor u, Tensor out) override {
        op({g, u, out}, {});
        inner_->swiglu(g, u, out);
    }
    void rms_norm_gate(Tensor x, const Weight& w, float eps, Tensor z, Tensor out) override {
        op({x, z, out}, {&w});
        inner_->rms_norm_gate(x, w, eps, z, out);
    }
    void mul_sigmoid(Tensor x, Tensor g, Tensor out) override {
        op({x, g, out}, {});
        inner_->mul_sigmoid(x, g, out);
    }
    void add_gated(Tensor a, Tensor b, const Weight& gv, Tensor f, Tensor out) override {
        op({a, b, f, out}, {&gv});
        inner_->add_gated(a, b, gv, f, out);
    }
    void rope_neox(Tensor x, int64_t hd, int64_t nr, float th) override {
        op({x}, {});
        inner_->rope_neox(x, hd, nr, th);
    }
    void attention_inputs(Tensor qg, Tensor k, const AttentionInputs& a, Tensor q, Tensor kn, Tensor g) override {
        op({qg, k, q, kn, g}, {a.q_norm, a.k_norm});
        inner_->attention_inputs(qg, k, a, q, kn, g);
    }
    void attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) override {
        op({q, k, v, out}, {});
        state(il);
        inner_->attention(q, k, v, p, il, out);
    }
    void moe(Tensor x, Tensor logits, const MoeWeights& m, Tensor out) override {
        op({x, logits, out}, {m.gate, m.up, m.down, m.gate_up});
        inner_->moe(x, logits, m, out);
    }
    void moe_shared(Tensor x, Tensor logits, const MoeWeights& m, const SharedExpert& s, Tensor out) override {
        op({x, logits, s.gate, s.up, out}, {m.gate, m.up, m.down, m.gate_up, s.down, s.gate_inp});
        inner_->moe_shared(x, logits, m, s, out);
    }
    void ssm_conv(Tensor m, const Weight& w, const GdnParams& p, int64_t il, Tensor out) override {
        op({m, out}, {&w});
        state(il);
        inner_->ssm_conv(m, w, p, il, out);
    }
    void gated_delta_net(Tensor u, Tensor b, Tensor a, const Weight& dt, const Weight& sa, const GdnParams& p,
                         int64_t il, Tensor out) override {
        op({u, b, a, out}, {&dt, &sa});
        state(il);
        inner_->gated_delta_net(u, b, a, dt, sa, p, il, out);
    }

  private:
    void mine(const void* p, size_t n, const char* what) {
        if (n == 0) return;
        const auto at = reinterpret_cast<uintptr_t>(p);
        auto it = owned_.upper_bound(at);
        if (it != owned_.begin()) {
            --it;
            if (at + n <= it->first + it->second) return;
        }
        breaches_.push_back(label_ + ": " + what + " outside its memory");
    }
    void op(std::initializer_list<Tensor> ts, std::initializer_list<const Weight*> ws) {
        ++ops_;
        for (const Tensor& t : ts)
            if (t.rows > 0) mine(t.data, size_t((t.rows - 1) * t.stride + t.cols) * 4, "a tensor");
        for (const Weight* w : ws)
            if (w && !prepared_.count(w->info))
                breaches_.push_back(label_ + ": weight " + w->name() + " not prepared here");
    }
    void state(int64_t il) {
        for (const KvBlock* k : batch_->kv[size_t(il)]) {
            mine(k->k, 1, "a K cache");
            mine(k->v, 1, "a V cache");
        }
        for (const RecurrentRing* r : batch_->rs[size_t(il)]) {
            mine(r->conv, 1, "a conv state");
            mine(r->ssm, 1, "an SSM state");
        }
    }

    std::unique_ptr<Backend> inner_;
    std::string label_;
    ScratchArena arena_{*this};
    std::map<uintptr_t, size_t> owned_;
    std::set<const gguf::TensorInfo*> prepared_;
    const BatchState* batch_ = nullptr;
    std::vector<std::string> breaches_;
    int64_t ops_ = 0;
};

std::vector<int32_t> some_tokens(int n, int salt, int64_t n_vocab) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i) t.push_back(int32_t((i * 41 + salt * 13 + 3) % n_vocab));
    return t;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
}

// What the tests below do to a context, each step's logits and host copies of the state kept.
std::vector<std::vector<float>> workout(Model& m) {
    ContextParams p;
    p.n_ctx = 64;
    p.n_seq_max = 2;
    p.n_ubatch = 7;  // several micro-batches per prompt
    auto c = Context::create(m, p);
    EXPECT_TRUE(c.ok()) << c.error().message;
    if (!c.ok()) return {};
    Context& ctx = **c;
    const int64_t V = m.hparams().n_vocab;
    std::vector<std::vector<float>> out;
    auto step = [&](const std::vector<BatchToken>& b) {
        std::vector<float> l;
        auto r = ctx.decode(b, &l);
        EXPECT_TRUE(r.ok()) << r.error().message;
        out.push_back(l);
    };
    // two prompts interleaved in one batch, then decode steps of both
    std::vector<BatchToken> batch;
    const auto a = some_tokens(15, 1, V), b = some_tokens(11, 2, V);
    for (size_t i = 0; i < a.size(); ++i) {
        batch.push_back({a[i], 0, true});
        if (i < b.size()) batch.push_back({b[i], 1, i + 1 == b.size()});
    }
    step(batch);
    for (int i = 0; i < 3; ++i) step({{int32_t((7 * i + 1) % V), 0, true}, {int32_t((5 * i + 2) % V), 1, true}});
    // checkpoint, wander off, restore, continue
    auto cp = ctx.checkpoint(0);
    EXPECT_TRUE(cp.ok()) << cp.error().message;
    if (!cp.ok()) return out;
    step({{9, 0, true}, {10, 0, true}});
    EXPECT_TRUE(ctx.restore(0, **cp).ok());
    step({{11, 0, true}, {15, 0, true}});
    // roll one position back, copy sequence 0 to 1, continue both
    EXPECT_TRUE(ctx.remove_last(0, 1).ok());
    EXPECT_TRUE(ctx.copy_seq(0, 1).ok());
    step({{12, 0, true}, {13, 1, true}});
    // the host copies the prompt cache keeps
    const int64_t n = ctx.n_past(0);
    std::vector<uint8_t> rows(ctx.prefix_row_bytes() * size_t(n)), st(ctx.prefix_state_bytes());
    EXPECT_TRUE(ctx.read_rows(0, 0, n, rows.data()).ok());
    EXPECT_TRUE(ctx.read_state(0, st.data()).ok());
    std::vector<float> host((rows.size() + st.size() + 3) / 4);
    if (!rows.empty()) std::memcpy(host.data(), rows.data(), rows.size());
    if (!st.empty()) std::memcpy(reinterpret_cast<uint8_t*>(host.data()) + rows.size(), st.data(), st.size());
    out.push_back(host);
    // and put back into a cleared sequence, which then continues as the original
    ctx.clear(1);
    EXPECT_TRUE(ctx.write_rows(1, 0, n, rows.data(), n).ok());
    EXPECT_TRUE(ctx.set_prefix(1, n, st.empty() ? nullptr : st.data()).ok());
    step({{14, 1, true}});
    return out;
}

// A small Qwen3.5 whose LM head is its token embedding (as Qwen3.5-0.8B's), which no fixture is.
std::string tied_model() {
    return testing::small_model("qwen35", "Q4_K_M", /*tied=*/true);
}

// The parameter's model and what one CPU backend computes on it.
class SplitModel : public ::testing::TestWithParam<std::string> {
  protected:
    void SetUp() override {
        const std::string path =
            GetParam() == "tied" ? tied_model() : testing::fixtures_dir() + "/models/" + GetParam();
        auto f = gguf::GgufFile::open(path);
        ASSERT_TRUE(f.ok()) << f.error().message;
        file_ = std::move(*f);
        if (GetParam() == "tied") {
            ASSERT_EQ(file_->tensor("output.weight"), nullptr);
        }
        auto cpu = make_cpu_backend(1);
        auto whole = load_model(*file_, *cpu);
        ASSERT_TRUE(whole.ok()) << whole.error().message;
        hp_ = (*whole)->hparams();
        ref_ = workout(**whole);
        ASSERT_FALSE(ref_.empty());
    }
    std::unique_ptr<gguf::GgufFile> file_;
    HParams hp_;
    std::vector<std::vector<float>> ref_;
};

TEST_P(SplitModel, computes_what_one_backend_does) {
    const auto& ref = ref_;
    const int64_t L = hp_.n_layer;
    for (int64_t n_out : {int64_t(1), L / 2, L - 1}) {
        WalledBackend first("first"), second("second");
        auto split = load_model(*file_, Placement::split(first, second, n_out));
        ASSERT_TRUE(split.ok()) << split.error().message;
        EXPECT_EQ(&(*split)->backend(0), &first);
        EXPECT_EQ(&(*split)->backend(L - 1), &second);
        const auto got = workout(**split);
        ASSERT_EQ(got.size(), ref.size());
        for (size_t i = 0; i < ref.size(); ++i)
            EXPECT_TRUE(same_bits(got[i], ref[i])) << "step " << i << ", " << n_out << " layers on the second";
        for (const auto* be : {&first, &second}) {
            EXPECT_GT(be->ops(), 0) << be->name() << " ran nothing";
            const auto& b = be->breaches();
            EXPECT_TRUE(b.empty()) << b.size() << " breaches, the first: " << (b.empty() ? "" : b[0]);
        }
    }
}

// --n-cpu-moe: the routed experts of the first layers on another backend than their layer's
// (the whole model on the second, or split), the MTP blocks' with every layer's.
TEST_P(SplitModel, experts_on_another_backend_compute_what_one_backend_does) {
    const auto& ref = ref_;
    const int64_t L = hp_.n_layer;
    const bool moe = hp_.n_expert > 0;
    struct Case {
        int64_t n_output, n_experts;
    };
    for (Case c : {Case{-1, 1}, Case{-1, -1}, Case{L / 2, L - 1}, Case{L / 2, L}}) {
        WalledBackend first("first"), second("second");
        const Placement base = c.n_output < 0 ? Placement::on(second) : Placement::split(first, second, c.n_output);
        auto split = load_model(*file_, base.experts_on(first, c.n_experts));
        ASSERT_TRUE(split.ok()) << split.error().message;
        const auto got = workout(**split);
        ASSERT_EQ(got.size(), ref.size());
        const std::string where = std::to_string(c.n_output) + " layers on the second, experts of " +
                                  std::to_string(c.n_experts) + " on the first";
        for (size_t i = 0; i < ref.size(); ++i) EXPECT_TRUE(same_bits(got[i], ref[i])) << "step " << i << ", " << where;
        if (moe) {
            EXPECT_GT(first.ops(), 0) << where;
        } else if (c.n_output < 0) {
            EXPECT_EQ(first.ops(), 0) << where;
        }
        for (const auto* be : {&first, &second}) {
            const auto& b = be->breaches();
            EXPECT_TRUE(b.empty()) << where << ": " << b.size() << " breaches, the first: " << (b.empty() ? "" : b[0]);
        }
    }
}

// "tied": the LM head gets its own copy of the embedding on the second backend while the first
// looks the tokens up in it.
INSTANTIATE_TEST_SUITE_P(Fixtures, SplitModel,
                         ::testing::Values("qwen35moe-tiny-f32.gguf", "qwen35-tiny-f32.gguf", "qwen3moe-tiny-f32.gguf",
                                           "qwen35moe-tiny-q4_k_m.gguf", "tied"),
                         [](const auto& info) {
                             std::string s = info.param;
                             for (char& ch : s)
                                 if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                             return s;
                         });

// Context sizes are checked against each backend's memory for the layers it holds.
TEST(Placement, context_fits_per_backend) {
    auto file = gguf::GgufFile::open(testing::fixtures_dir() + "/models/qwen35moe-tiny-f32.gguf");
    ASSERT_TRUE(file.ok());
    WalledBackend first("first"), second("second");
    auto m = load_model(**file, Placement::split(first, second, 2));
    ASSERT_TRUE(m.ok()) << m.error().message;
    ContextParams p;
    p.n_ctx = int64_t(1) << 40;  // more than any machine has
    auto r = Context::check_fits(**m, p);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.error().kind, ErrorKind::resource_exhausted);
    EXPECT_NE(r.error().message.find("backend"), std::string::npos) << r.error().message;
}

// The GPU's share of a file's weights for each -ngl, and the most layers a budget holds.
TEST(Placement, gpu_weights_per_layer_count) {
    for (const std::string& path : {testing::fixtures_dir() + "/models/qwen35moe-tiny-q4_k_m.gguf", tied_model()}) {
        auto file = gguf::GgufFile::open(path);
        ASSERT_TRUE(file.ok()) << file.error().message;
        const gguf::GgufFile& f = **file;
        auto gw = GpuWeights::of(f);
        ASSERT_TRUE(gw.ok()) << gw.error().message;
        auto cpu = make_cpu_backend(1);
        auto m = load_model(f, *cpu);
        ASSERT_TRUE(m.ok());
        const int64_t L = (*m)->hparams().n_layer;
        ASSERT_EQ(gw->n_layer(), L);
        uint64_t all = 0;
        for (const auto& t : f.tensors()) all += t.nbytes;
        EXPECT_EQ(gw->bytes(-1), all);
        EXPECT_EQ(gw->bytes(L), all);
        EXPECT_EQ(gw->bytes(0), 0u);
        const bool tied = f.tensor("output.weight") == nullptr;
        for (int64_t n = 1; n < L; ++n) {
            // what the split's second backend prepares: its layers, the MTP blocks, the head
            uint64_t want = 0;
            for (const auto& t : f.tensors()) {
                const bool head = t.name == "output.weight" || t.name == "output_norm.weight" ||
                                  (tied && t.name == "token_embd.weight");
                bool layer = false;
                for (int64_t il = L - n; il < (*m)->hparams().n_layer_all; ++il)
                    layer = layer || t.name.rfind("blk." + std::to_string(il) + ".", 0) == 0;
                if (head || layer) want += t.nbytes;
            }
            EXPECT_EQ(gw->bytes(n), want) << n;
            EXPECT_LT(gw->bytes(n - 1), gw->bytes(n));
            EXPECT_EQ(gw->most_layers(gw->bytes(n)), n);
            EXPECT_EQ(gw->most_layers(gw->bytes(n) - 1), n - 1);
        }
        EXPECT_EQ(gw->most_layers(all), L);
        EXPECT_EQ(gw->most_layers(all - 1), L - 1);
        EXPECT_EQ(gw->most_layers(gw->bytes(1) - 1), 0);
    }
}

// With --n-cpu-moe, the GPU's share is what the second backend of that placement prepares; and
// the fewest --n-cpu-moe a budget holds is the first that fits.
TEST(Placement, gpu_weights_with_experts_in_host_memory) {
    for (const char* name : {"qwen35moe-tiny-q4_k_m.gguf", "qwen3moe-tiny-f32.gguf"}) {
        auto file = gguf::GgufFile::open(testing::fixtures_dir() + "/models/" + name);
        ASSERT_TRUE(file.ok()) << file.error().message;
        auto gw = GpuWeights::of(**file);
        ASSERT_TRUE(gw.ok()) << gw.error().message;
        ASSERT_TRUE(gw->has_experts());
        const int64_t L = gw->n_layer();
        for (int64_t n : {int64_t(1), L / 2, L})
            for (int64_t m : {int64_t(0), int64_t(1), L / 2, L - 1, L, int64_t(-1)}) {
                WalledBackend first("first"), second("second");
                const Placement base = n == L ? Placement::on(second) : Placement::split(first, second, n);
                auto model = load_model(**file, base.experts_on(first, m));
                ASSERT_TRUE(model.ok()) << model.error().message;
                EXPECT_EQ(gw->bytes(n, m), second.prepared_bytes()) << name << " -ngl " << n << " --n-cpu-moe " << m;
            }
        EXPECT_LT(gw->bytes(-1, L), gw->bytes(-1, 1));
        EXPECT_EQ(gw->bytes(-1, L), gw->bytes(-1, -1));
        for (int64_t m = 0; m <= L; ++m) {
            const uint64_t budget = gw->bytes(-1, m);
            const int64_t fewest = gw->fewest_cpu_moe(budget);
            EXPECT_LE(fewest, m);
            EXPECT_LE(gw->bytes(-1, fewest), budget);
            if (fewest > 0) {
                EXPECT_GT(gw->bytes(-1, fewest - 1), budget);
            }
            EXPECT_GE(gw->most_layers(budget, m), L);
        }
        EXPECT_EQ(gw->fewest_cpu_moe(gw->bytes(-1, -1) - 1), -1);
    }
}

}  // namespace
}  // namespace bigmoe
