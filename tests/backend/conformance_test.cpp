// Backend conformance: every op of every backend against the float64 references
// (testlib/reference_ops.h) on fresh random inputs of odd sizes. Inputs and outputs live in the
// backend's own memory (uploaded and downloaded as a GPU backend needs); every output buffer has
// guard zones before and after it and between rows, filled with a NaN pattern that must survive,
// and every output value must be written and finite. Batch invariance (a token's result does not
// depend on its batch) is checked bit for bit. A new backend joins with one line in
// backends_under_test().
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "core/fp16.h"
#include "quant/quants.h"
#include "reference_ops.h"
#include "testlib.h"

namespace bigmoe {
namespace {

namespace ref = testing::ref;
using testing::make_weight;

struct BackendUnderTest {
    std::string name;
    std::function<std::unique_ptr<Backend>()> make;
};

std::vector<BackendUnderTest> backends_under_test() {
    std::vector<BackendUnderTest> r;
    for (const cpu::Kernels* k : cpu::available_kernels())
        r.push_back({std::string("cpu_") + k->isa, [k] { return std::make_unique<cpu::CpuBackend>(2, k); }});
    if (cuda_device_info().ok()) r.push_back({"cuda", [] { return std::move(*make_cuda_backend()); }});
    return r;
}

// Guards and row padding hold a finite value that any arithmetic on it changes (a NaN would
// survive NaN + NaN); a new tensor's values are NaN until an op writes them.
constexpr float k_guard_value = -3.25e33f;
constexpr int64_t k_guard = 64;  // floats of guard before and after a tensor

bool is_guard(float f) {
    return std::memcmp(&f, &k_guard_value, 4) == 0;
}

// A [rows][cols] f32 tensor in backend memory, rows padded to 16 floats as scratch rows are,
// with guards around it and in the padding.
class DevTensor {
  public:
    DevTensor(Backend& be, int64_t rows, int64_t cols)
        : be_(be), rows_(rows), cols_(cols), stride_((cols + 15) / 16 * 16) {
        n_ = size_t(2 * k_guard + rows * stride_);
        base_ = static_cast<float*>(be_.alloc(n_ * 4));
        std::vector<float> host(n_, k_guard_value);
        for (int64_t r = 0; r < rows; ++r)
            std::fill_n(host.data() + k_guard + r * stride_, cols, std::numeric_limits<float>::quiet_NaN());
        be_.upload(base_, host.data(), n_ * 4);
    }
    DevTensor(Backend& be, int64_t rows, int64_t cols, const std::vector<float>& values) : DevTensor(be, rows, cols) {
        set(values);
    }
    ~DevTensor() { be_.dealloc(base_); }
    DevTensor(const DevTensor&) = delete;
    DevTensor& operator=(const DevTensor&) = delete;

    Tensor t() const { return {base_ + k_guard, rows_, cols_, stride_}; }
    // One row as a tensor of its own (a batch of one token).
    Tensor row(int64_t r) const { return {base_ + k_guard + r * stride_, 1, cols_, stride_}; }
    void set(const std::vector<float>& v) {
        std::vector<float> host = download_all();
        for (int64_t r = 0; r < rows_; ++r)
            std::copy_n(v.data() + r * cols_, cols_, host.data() + k_guard + r * stride_);
        be_.upload(base_, host.data(), n_ * 4);
    }
    // The values; fails the test when a guard or padding float changed.
    std::vector<float> get() const {
        const std::vector<float> host = download_all();
        std::vector<float> out(size_t(rows_ * cols_));
        for (size_t i = 0; i < host.size(); ++i) {
            const int64_t off = int64_t(i) - k_guard;
            const bool inside = off >= 0 && off < rows_ * stride_ && off % stride_ < cols_;
            if (inside)
                out[size_t(off / stride_ * cols_ + off % stride_)] = host[i];
            else if (!is_guard(host[i])) {
                ADD_FAILURE() << "a write outside the tensor at float " << off << " (rows " << rows_ << ", cols "
                              << cols_ << ", stride " << stride_ << ")";
                break;
            }
        }
        return out;
    }

  private:
    std::vector<float> download_all() const {
        std::vector<float> host(n_);
        be_.download(host.data(), base_, n_ * 4);
        return host;
    }
    Backend& be_;
    int64_t rows_, cols_, stride_;
    size_t n_;
    float* base_;
};

// Raw backend memory holding a copy of host bytes (KV blocks, recurrent rings).
class DevBuffer {
  public:
    DevBuffer(Backend& be, const void* src, size_t bytes) : be_(be), bytes_(bytes), p_(be.alloc(bytes)) {
        be_.upload(p_, src, bytes);
    }
    ~DevBuffer() { be_.dealloc(p_); }
    DevBuffer(const DevBuffer&) = delete;
    DevBuffer& operator=(const DevBuffer&) = delete;
    void* get() const { return p_; }
    template <class T>
    std::vector<T> read() const {
        std::vector<T> v(bytes_ / sizeof(T));
        be_.download(v.data(), p_, bytes_);
        return v;
    }

  private:
    Backend& be_;
    size_t bytes_;
    void* p_;
};

// |got - want| <= atol + rtol * |want| everywhere, every value finite; reports the first miss.
void expect_close(const std::vector<float>& got, const ref::Vec& want, double atol, double rtol,
                  const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_TRUE(std::isfinite(got[i])) << what << ": value " << i << " is " << got[i] << " (not written?)";
        ASSERT_NEAR(got[i], want[i], atol + rtol * std::fabs(want[i])) << what << ": value " << i;
    }
}

std::vector<float> randoms(std::mt19937& rng, int64_t n, float lo = -1, float hi = 1) {
    return testing::random_floats(rng, size_t(n), lo, hi);
}

class Conformance : public ::testing::TestWithParam<BackendUnderTest> {
  protected:
    void SetUp() override {
        be_ = GetParam().make();
        seed_ = testing::fresh_seed();
        rng_.seed(seed_);
    }
    void TearDown() override {
        if (HasFailure()) std::fprintf(stderr, "backend %s, seed %u\n", GetParam().name.c_str(), seed_);
    }
    // A weight the backend has prepared (uploaded or repacked), as a model would load it.
    std::unique_ptr<testing::OwnedWeight> weight(DType t, int64_t n_in, int64_t n_out, int64_t n_exp = 1,
                                                 bool multiplied = true) {
        auto w = make_weight(rng_, t, n_in, n_out, n_exp);
        w->w.multiplied = multiplied;
        EXPECT_TRUE(be_->prepare_weight(w->w).ok());
        return w;
    }
    std::unique_ptr<testing::OwnedWeight> vec_weight(std::vector<float> values) {
        auto w = make_weight(rng_, DType::F32, int64_t(values.size()), 1);
        std::copy(values.begin(), values.end(), w->f32());
        EXPECT_TRUE(be_->prepare_weight(w->w).ok());
        return w;
    }
    // body() on this backend, then, for the CUDA backend, on a fresh one made under each value of
    // the environment variable var (a kernel's shape its heuristics would not pick for these sizes).
    // body() makes its own weights and tensors: each run has another backend.
    void under_each(const char* var, std::initializer_list<const char*> values, const std::function<void()>& body,
                    bool with_default = true) {
        if (with_default) body();
        if (GetParam().name != "cuda") return;
        for (const char* v : values) {
            SCOPED_TRACE(std::string(var) + "=" + v);
            ::setenv(var, v, 1);
            be_ = GetParam().make();
            ::unsetenv(var);
            body();
            if (HasFatalFailure()) break;
        }
        be_ = GetParam().make();
    }
    // The ops that follow run on a batch of these spans, with layer 0's state in kv or rs.
    void batch(std::vector<SeqSpan> spans, std::vector<KvBlock*> kv = {}, std::vector<RecurrentRing*> rs = {}) {
        batch_ = BatchState{std::move(spans), {std::move(kv)}, {std::move(rs)}};
        be_->begin_batch(batch_);
    }
    void matmul_batch_invariance();
    void prefill_products();
    void one_token_products();
    void moe_batch_invariance();
    void moe_shared_in_turn();
    BatchState batch_;
    std::unique_ptr<Backend> be_;
    uint32_t seed_ = 0;
    std::mt19937 rng_;
};

const DType k_weight_types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q4_0,
                                DType::Q8_0, DType::Q4_K, DType::Q5_K, DType::Q6_K};

int64_t n_in_for(DType t) {
    return traits(t).block_elems == 1 ? 100 : 2 * std::max<int64_t>(traits(t).block_elems, 256);
}

TEST_P(Conformance, get_rows_every_type) {
    for (DType t : k_weight_types) {
        if (!be_->supports(Op::get_rows, t)) continue;
        auto emb = weight(t, n_in_for(t), 37, 1, /*multiplied=*/false);
        const std::vector<int32_t> ids = {36, 0, 5, 5, 17};
        DevTensor out(*be_, 5, emb->w.n_in());
        be_->get_rows(emb->w, ids.data(), 5, out.t());
        expect_close(out.get(), ref::get_rows(emb->w, ids), 0, 0, std::string("get_rows ") + traits(t).name);
    }
}

TEST_P(Conformance, rms_norm_rows_and_heads) {
    const int64_t T = 3;
    for (int64_t group : {300, 60, 20}) {  // the whole row, and per head
        auto w = vec_weight(randoms(rng_, group, 0.5f, 1.5f));
        const auto x = randoms(rng_, T * 300, -3, 3);
        DevTensor dx(*be_, T, 300, x), out(*be_, T, 300);
        be_->rms_norm(dx.t(), w->w, 1e-6f, out.t());
        const std::vector<float> wv(w->f32(), w->f32() + group);
        expect_close(out.get(), ref::rms_norm(x, T, 300, wv, 1e-6), 1e-6, 1e-5,
                     "rms_norm group " + std::to_string(group));
    }
}

TEST_P(Conformance, add_rms_norm_equals_add_then_rms_norm) {
    const int64_t T = 5, C = 300;
    auto w = vec_weight(randoms(rng_, C, 0.5f, 1.5f));
    const auto h = randoms(rng_, T * C, -3, 3), y = randoms(rng_, T * C, -3, 3);
    DevTensor h1(*be_, T, C, h), h2(*be_, T, C, h), dy(*be_, T, C, y), o1(*be_, T, C), o2(*be_, T, C);
    be_->add_rms_norm(h1.t(), dy.t(), w->w, 1e-6f, o1.t());
    be_->add(h2.t(), dy.t(), h2.t());
    be_->rms_norm(h2.t(), w->w, 1e-6f, o2.t());
    EXPECT_EQ(h1.get(), h2.get()) << "the sum";
    EXPECT_EQ(o1.get(), o2.get()) << "the norm";
}

// Tolerance: the rounding of a quantized activation (8 bits per value) against the scale of
// the products' magnitudes.
double matmul_tolerance(DType t, double mag) {
    return (activation_type(t) == DType::F32 ? 1e-5 : 1e-2) * mag + 1e-6;
}

TEST_P(Conformance, matmul_every_type_odd_rows_and_tokens) {
    for (DType t : k_weight_types) {
        if (!be_->supports(Op::matmul, t)) continue;
        const int64_t n_in = n_in_for(t);
        for (int64_t n_out : {37, 40}) {
            auto w = weight(t, n_in, n_out);
            for (int64_t T : {1, 3, 17}) {
                const auto x = randoms(rng_, T * n_in, -2, 2);
                DevTensor dx(*be_, T, n_in, x), out(*be_, T, n_out);
                be_->matmul(w->w, dx.t(), out.t());
                ref::Vec want, mag;
                ref::matmul(w->w, x, T, want, mag);
                const std::vector<float> got = out.get();
                for (size_t i = 0; i < got.size(); ++i) {
                    ASSERT_TRUE(std::isfinite(got[i])) << traits(t).name << " value " << i;
                    ASSERT_NEAR(got[i], want[i], matmul_tolerance(t, mag[i]))
                        << traits(t).name << " n_out=" << n_out << " T=" << T << " value " << i;
                }
            }
        }
    }
}

// A token's product does not depend on how many tokens share the call: decode (1), verification
// (up to 16) and prefill batches (where a GPU switches kernels) give its row the same bits; on a
// GPU also with the tensor-core kernels' other way of staging their operands.
TEST_P(Conformance, matmul_is_batch_invariant) {
    under_each("BIGMOE_CUDA_STAGE", {"1"}, [&] { matmul_batch_invariance(); });
}

void Conformance::matmul_batch_invariance() {
    // 72 units of 32: two groups and a partial one; 140 tokens: CUDA's 64-token tiles, one partial
    const int64_t n_in = 2304, n_out = 70, T_all = 140;
    const auto x = randoms(rng_, T_all * n_in, -2, 2);
    for (DType t : k_weight_types) {
        if (!be_->supports(Op::matmul, t) || n_in % traits(t).block_elems != 0) continue;
        auto w = weight(t, n_in, n_out);
        DevTensor dx(*be_, T_all, n_in, x), all(*be_, T_all, n_out);
        be_->matmul(w->w, dx.t(), all.t());
        const std::vector<float> want = all.get();
        for (int64_t T : {1, 2, 5, 9, 16, 17, 33, 64, 65, 100}) {
            DevTensor part(*be_, T, n_out);
            be_->matmul(w->w, dx.t().rows_view(0, T), part.t());
            const std::vector<float> got = part.get();
            ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0)
                << traits(t).name << ": " << T << " tokens differ from the same tokens among " << T_all;
        }
    }
}

// A decode step's products of one input (a GPU takes K-quant rows L lanes a row there, other rows
// a warp each) give each row the bits of the same token in a larger batch: rows that do not fill
// a warp, rows of whole and partial rounds of L super-blocks, every kind of product in one call;
// on a GPU also with L forced to counts that do not divide 32 or a row's super-blocks.
TEST_P(Conformance, one_token_products_of_one_input_equal_a_batch) {
    under_each("BIGMOE_CUDA_SB_LANES", {"2", "3", "5", "6", "12", "32"}, [&] { one_token_products(); });
}

void Conformance::one_token_products() {
    for (int64_t n_in : {int64_t(5120), int64_t(4096), int64_t(3072), int64_t(2048), int64_t(768)}) {
        const int64_t T = 20;
        auto a = weight(DType::Q6_K, n_in, 37), b = weight(DType::Q4_K, n_in, 70), c = weight(DType::F32, n_in, 9),
             d = weight(DType::Q8_0, n_in, 13);
        const auto x = randoms(rng_, T * n_in, -2, 2);
        DevTensor dx(*be_, T, n_in, x), oa(*be_, T, 37), ob(*be_, T, 70), oc(*be_, T, 9), od(*be_, T, 13);
        be_->matmuls(dx.t(), {{&a->w, oa.t()}, {&b->w, ob.t()}, {&c->w, oc.t()}, {&d->w, od.t()}});
        for (int64_t t : {int64_t(0), int64_t(7), T - 1}) {
            DevTensor pa(*be_, 1, 37), pb(*be_, 1, 70), pc(*be_, 1, 9), pd(*be_, 1, 13);
            be_->matmuls(dx.row(t), {{&a->w, pa.t()}, {&b->w, pb.t()}, {&c->w, pc.t()}, {&d->w, pd.t()}});
            for (auto [one, all, rows] : {std::tuple{&pa, &oa, 37}, std::tuple{&pb, &ob, 70}, std::tuple{&pc, &oc, 9},
                                          std::tuple{&pd, &od, 13}}) {
                const std::vector<float> got = one->get(), want = all->get();
                ASSERT_EQ(std::memcmp(got.data(), want.data() + t * rows, size_t(rows) * 4), 0)
                    << "n_in " << n_in << ", token " << t << ", a product of " << rows << " rows";
            }
            // and the Q4_K and Q6_K products alone
            be_->matmuls(dx.row(t), {{&a->w, pa.t()}, {&b->w, pb.t()}});
            const std::vector<float> ga = pa.get(), wa = oa.get();
            ASSERT_EQ(std::memcmp(ga.data(), wa.data() + t * 37, 37 * 4), 0) << "n_in " << n_in << " alone";
        }
    }
}

TEST_P(Conformance, matmuls_of_one_input_equal_matmul_each) {
    const int64_t n_in = 512, T = 5;
    auto a = weight(DType::Q6_K, n_in, 24), b = weight(DType::Q8_0, n_in, 13), c = weight(DType::F32, n_in, 7);
    const auto x = randoms(rng_, T * n_in);
    DevTensor dx(*be_, T, n_in, x), oa(*be_, T, 24), ob(*be_, T, 13), oc(*be_, T, 7), sa(*be_, T, 24);
    be_->matmuls(dx.t(), {{&a->w, oa.t()}, {&b->w, ob.t()}, {&c->w, oc.t()}});
    be_->matmul(a->w, dx.t(), sa.t());
    EXPECT_EQ(oa.get(), sa.get()) << "matmuls and matmul differ";
    for (auto [w, o] : {std::pair{&a->w, &oa}, std::pair{&b->w, &ob}, std::pair{&c->w, &oc}}) {
        ref::Vec want, mag;
        ref::matmul(*w, x, T, want, mag);
        const std::vector<float> got = o->get();
        for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], matmul_tolerance(w->type, mag[i]));
    }
}

// A prefill's products of one input: a GPU gives those of one weight type one tensor-core launch
// (up to four a launch, parts of fewer rows than a tile among them); each product keeps the bits
// it has alone and, token by token, those of a decode step (on a GPU also with the tensor-core
// kernels' other way of staging their operands).
TEST_P(Conformance, prefill_products_of_one_input_equal_matmul_each) {
    under_each("BIGMOE_CUDA_STAGE", {"1"}, [&] { prefill_products(); });
}

void Conformance::prefill_products() {
    const int64_t n_in = 768, T = 40;
    const std::vector<std::pair<DType, int64_t>> shapes = {{DType::Q4_K, 130}, {DType::Q6_K, 70}, {DType::Q4_K, 64},
                                                           {DType::Q4_K, 40},  {DType::F32, 9},   {DType::Q6_K, 16},
                                                           {DType::Q4_K, 20},  {DType::Q4_K, 65}, {DType::Q8_0, 33}};
    const auto x = randoms(rng_, T * n_in, -2, 2);
    DevTensor dx(*be_, T, n_in, x);
    std::vector<std::unique_ptr<testing::OwnedWeight>> ws;
    std::vector<std::unique_ptr<DevTensor>> all;
    std::vector<Backend::Product> ps;
    for (auto [t, rows] : shapes) {
        ws.push_back(weight(t, n_in, rows));
        all.push_back(std::make_unique<DevTensor>(*be_, T, rows));
        ps.push_back({&ws.back()->w, all.back()->t()});
    }
    be_->matmuls(dx.t(), ps);
    for (size_t i = 0; i < shapes.size(); ++i) {
        const int64_t rows = shapes[i].second;
        const std::string what = std::string(traits(shapes[i].first).name) + " x " + std::to_string(rows);
        const std::vector<float> got = all[i]->get();
        DevTensor alone(*be_, T, rows), one(*be_, 1, rows);
        be_->matmul(ws[i]->w, dx.t(), alone.t());
        ASSERT_EQ(alone.get(), got) << what << ": among the others and alone differ";
        for (int64_t t : {int64_t(0), int64_t(21), T - 1}) {
            be_->matmul(ws[i]->w, dx.row(t), one.t());
            const std::vector<float> o = one.get();
            ASSERT_EQ(std::memcmp(o.data(), got.data() + t * rows, size_t(rows) * 4), 0) << what << ", token " << t;
        }
        ref::Vec want, mag;
        ref::matmul(ws[i]->w, x, T, want, mag);
        for (size_t k = 0; k < got.size(); ++k)
            ASSERT_NEAR(got[k], want[k], matmul_tolerance(shapes[i].first, mag[k])) << what << " value " << k;
    }
}

TEST_P(Conformance, elementwise_ops) {
    const int64_t T = 5, C = 77;
    const auto a = randoms(rng_, T * C, -4, 4), b = randoms(rng_, T * C, -4, 4);
    DevTensor da(*be_, T, C, a), db(*be_, T, C, b), out(*be_, T, C);
    be_->add(da.t(), db.t(), out.t());
    expect_close(out.get(), ref::add(a, b), 1e-6, 1e-6, "add");
    be_->swiglu(da.t(), db.t(), out.t());
    expect_close(out.get(), ref::swiglu(a, b), 1e-6, 1e-5, "swiglu");
    be_->mul_sigmoid(da.t(), db.t(), out.t());
    expect_close(out.get(), ref::mul_sigmoid(a, b), 1e-6, 1e-5, "mul_sigmoid");
    // add_gated: the gate is a dot product over another input of 33 columns
    const auto f = randoms(rng_, T * 33);
    auto gv = vec_weight(randoms(rng_, 33));
    DevTensor df(*be_, T, 33, f);
    be_->add_gated(da.t(), db.t(), gv->w, df.t(), out.t());
    const std::vector<float> g(gv->f32(), gv->f32() + 33);
    expect_close(out.get(), ref::add_gated(a, b, g, f, T, C), 1e-5, 1e-5, "add_gated");
    // in place (out aliases a), as the models call it
    DevTensor inplace(*be_, T, C, a);
    be_->add(inplace.t(), db.t(), inplace.t());
    expect_close(inplace.get(), ref::add(a, b), 1e-6, 1e-6, "add in place");
}

// Greedy sampling where the logits are, against the plain loop: rows of several of the GPU's
// chunks and of part of one, 1-16 rows (decode and verification) and more, ties, NaNs,
// infinities, signed zeros; rows padded as scratch rows are.
TEST_P(Conformance, argmax_rows_is_the_first_largest) {
    int trial = 0;
    for (int64_t cols : {int64_t(1), int64_t(77), int64_t(4096), int64_t(4097), int64_t(248320 / 8 + 3)}) {
        for (int64_t rows : {int64_t(1), int64_t(3), int64_t(16), int64_t(37)}) {
            std::vector<float> x;
            for (int64_t r = 0; r < rows; ++r) {
                const std::vector<float> row = testing::argmax_trial_values(rng_, cols, trial++);
                x.insert(x.end(), row.begin(), row.end());
            }
            DevTensor dx(*be_, rows, cols, x);
            std::vector<int32_t> got(size_t(rows), -7);
            be_->argmax_rows(dx.t(), got.data());
            for (int64_t r = 0; r < rows; ++r)
                ASSERT_EQ(got[size_t(r)], testing::first_largest(x.data() + r * cols, cols))
                    << "row " << r << " of " << rows << ", " << cols << " columns";
            dx.get();  // nothing written around the rows
        }
    }
}

TEST_P(Conformance, gather_cols_takes_a_slice_of_every_group) {
    const int64_t T = 3, group = 24, n_group = 5;
    const auto x = randoms(rng_, T * group * n_group);
    DevTensor dx(*be_, T, group * n_group, x), out(*be_, T, 11 * n_group);
    be_->gather_cols(dx.t(), group, 13, 11, out.t());
    expect_close(out.get(), ref::gather_cols(x, T, group * n_group, group, 13, 11), 0, 0, "gather_cols");
}

TEST_P(Conformance, rope_neox_partial_and_full_rotation_two_sequences) {
    const int64_t head_dim = 64, C = 3 * head_dim;
    for (int64_t n_rot : {64, 32}) {
        const auto x = randoms(rng_, 6 * C);
        DevTensor dx(*be_, 6, C, x);
        batch({{0, 0, 2, 5}, {1, 2, 4, 1000}});
        be_->rope_neox(dx.t(), head_dim, n_rot, 1e6f);
        const std::vector<float> got = dx.get();
        const ref::Vec a = ref::rope_neox({x.begin(), x.begin() + 2 * C}, 2, C, head_dim, n_rot, 1e6, 5);
        const ref::Vec b = ref::rope_neox({x.begin() + 2 * C, x.end()}, 4, C, head_dim, n_rot, 1e6, 1000);
        ref::Vec want(a);
        want.insert(want.end(), b.begin(), b.end());
        // positions near 1000 in float carry ~1e-4 of angle error
        expect_close(got, want, 2e-4, 1e-4, "rope n_rot " + std::to_string(n_rot));
    }
}

// Attention's inputs in one op equal gather_cols, rms_norm and rope_neox in turn bit for bit
// (gated and not, partial and full rotation, heads of 64 and 256 values).
TEST_P(Conformance, attention_inputs_equal_the_ops_in_turn) {
    for (int64_t D : {64, 256})
        for (int64_t n_rot : {D, D / 4})
            for (bool gated : {true, false}) {
                const int64_t Hq = 3, Hkv = 2, T = 6, qcols = (gated ? 2 : 1) * Hq * D;
                auto qw = vec_weight(randoms(rng_, D, 0.5f, 1.5f)), kw = vec_weight(randoms(rng_, D, 0.5f, 1.5f));
                const auto qg = randoms(rng_, T * qcols, -3, 3), k = randoms(rng_, T * Hkv * D, -3, 3);
                batch({{0, 0, 2, 5}, {1, 2, 4, 1000}});
                const Backend::AttentionInputs p{&qw->w, &kw->w, 1e-6f, D, n_rot, 1e6f, gated};
                DevTensor dq(*be_, T, qcols, qg), dk(*be_, T, Hkv * D, k);
                DevTensor q1(*be_, T, Hq * D), k1(*be_, T, Hkv * D), g1(*be_, T, Hq * D);
                DevTensor q2(*be_, T, Hq * D), k2(*be_, T, Hkv * D), g2(*be_, T, Hq * D);
                be_->attention_inputs(dq.t(), dk.t(), p, q1.t(), k1.t(), gated ? g1.t() : Tensor{});
                be_->Backend::attention_inputs(dq.t(), dk.t(), p, q2.t(), k2.t(), gated ? g2.t() : Tensor{});
                const std::string what =
                    "D " + std::to_string(D) + " n_rot " + std::to_string(n_rot) + (gated ? " gated" : "");
                EXPECT_EQ(q1.get(), q2.get()) << what << ": q";
                EXPECT_EQ(k1.get(), k2.get()) << what << ": k";
                if (gated) {
                    EXPECT_EQ(g1.get(), g2.get()) << what << ": gate";
                }
                // and k against float64: normalised, then rotated at the spans' positions
                const std::vector<float> kwv(kw->f32(), kw->f32() + D);
                const ref::Vec kn = ref::rms_norm(k, T, Hkv * D, kwv, 1e-6);
                const std::vector<float> knf(kn.begin(), kn.end());
                const int64_t C = Hkv * D;
                ref::Vec want = ref::rope_neox({knf.begin(), knf.begin() + 2 * C}, 2, C, D, n_rot, 1e6, 5);
                const ref::Vec b = ref::rope_neox({knf.begin() + 2 * C, knf.end()}, 4, C, D, n_rot, 1e6, 1000);
                want.insert(want.end(), b.begin(), b.end());
                expect_close(k1.get(), want, 2e-4, 1e-4, what + ": k against float64");
            }
}

// One sequence's KV block in backend memory, holding `depth` random positions, each row written
// in the cache's types.
struct KvCase {
    int64_t Hkv, D, depth, capacity;
    DType type_k, type_v;
    std::vector<float> past_k, past_v;
    std::unique_ptr<DevBuffer> k, v;
    KvCase(Backend& be, std::mt19937& rng, int64_t hkv, int64_t d, int64_t dep, int64_t cap, DType t)
        : KvCase(be, rng, hkv, d, dep, cap, t, t) {}
    KvCase(Backend& be, std::mt19937& rng, int64_t hkv, int64_t d, int64_t dep, int64_t cap, DType tk, DType tv)
        : Hkv(hkv), D(d), depth(dep), capacity(cap), type_k(tk), type_v(tv) {
        past_k = randoms(rng, depth * Hkv * D);
        past_v = randoms(rng, depth * Hkv * D);
        k = upload(be, type_k, past_k);
        v = upload(be, type_v, past_v);
    }
    std::unique_ptr<DevBuffer> upload(Backend& be, DType t, const std::vector<float>& rows) const {
        const size_t rb = row_bytes(t, Hkv * D);
        std::vector<uint8_t> bytes(rb * size_t(capacity));
        for (int64_t p = 0; p < depth; ++p)
            quantize_row(t, rows.data() + p * Hkv * D, bytes.data() + size_t(p) * rb, Hkv * D);
        return std::make_unique<DevBuffer>(be, bytes.data(), bytes.size());
    }
    KvBlock block() const { return KvBlock{k->get(), v->get(), type_k, type_v, capacity}; }
};

// What a backend's attention may add to float64's for a query over `keys` keys with values of
// magnitude up to 1: the CUDA backend's tensor-core form (f16 K and V) takes the softmax weights
// rounded to f16, each with a relative error up to 2^-11, or up to 2^-25 absolute where it falls
// among f16's subnormals, over a mass of at least 1 (the largest weight is exp(0)).
double weight_rounding(const Backend& be, DType tk, DType tv, int64_t keys) {
    const bool f16_weights = be.name() == "CUDA" && tk == DType::F16 && tv == DType::F16;
    return f16_weights ? std::ldexp(1.0, -11) + double(keys) * std::ldexp(1.0, -25) : 0.0;
}

// Short and long caches, f32 and f16, GQA groups of 1, 2, 3, 6 and 8 heads, head sizes that are
// and are not multiples of 16 up to 256, more queries of a KV head than one block holds; the new
// rows are stored in the cache too.
TEST_P(Conformance, attention_matches_float64) {
    under_each("BIGMOE_CUDA_ATT_CHUNK", {"64"}, [&] {
        struct Shape {
            int64_t H, Hkv, D, depth, T;
        };
        for (const Shape sh :
             {Shape{4, 2, 40, 3, 5}, Shape{6, 2, 24, 700, 3}, Shape{12, 2, 32, 300, 2}, Shape{4, 4, 16, 530, 41},
              Shape{2, 1, 8, 0, 9}, Shape{16, 2, 64, 100, 20}, Shape{8, 1, 256, 70, 17}}) {
            for (DType ct : {DType::F32, DType::F16}) {
                KvCase c(*be_, rng_, sh.Hkv, sh.D, sh.depth, sh.depth + sh.T, ct);
                KvBlock b = c.block();
                const auto q = randoms(rng_, sh.T * sh.H * sh.D), k = randoms(rng_, sh.T * sh.Hkv * sh.D),
                           v = randoms(rng_, sh.T * sh.Hkv * sh.D);
                DevTensor dq(*be_, sh.T, sh.H * sh.D, q), dk(*be_, sh.T, sh.Hkv * sh.D, k),
                    dv(*be_, sh.T, sh.Hkv * sh.D, v), out(*be_, sh.T, sh.H * sh.D);
                const float scale = 1.0f / std::sqrt(float(sh.D));
                batch({{0, 0, sh.T, sh.depth}}, {&b});
                be_->attention(dq.t(), dk.t(), dv.t(), {sh.H, sh.Hkv, sh.D, scale}, 0, out.t());
                be_->reset_scratch();
                // queries are rounded like the cache (f16 caches take f16 queries)
                std::vector<float> qr = q;
                if (ct == DType::F16)
                    for (float& x : qr) x = fp16_to_f32(f32_to_fp16(x));
                const ref::Vec want =
                    ref::attention(qr, k, v, c.past_k, c.past_v, sh.H, sh.Hkv, sh.D, sh.depth, sh.T, ct, ct, scale);
                expect_close(out.get(), want, 1e-5 + weight_rounding(*be_, ct, ct, sh.depth + sh.T), 0,
                             "attention H=" + std::to_string(sh.H) + " depth=" + std::to_string(sh.depth) + " " +
                                 traits(ct).name);
                // the new rows were appended to the cache
                if (ct == DType::F32) {
                    const std::vector<float> kk = c.k->read<float>();
                    for (int64_t i = 0; i < sh.T * sh.Hkv * sh.D; ++i)
                        ASSERT_EQ(kk[size_t(sh.depth * sh.Hkv * sh.D + i)], k[size_t(i)]) << "stored key " << i;
                }
            }
        }
    });
}

// Every pair of KV cache types the backend supports: the result against float64 attention over
// the values the cache holds (so the kernels read each type exactly), and against attention with
// an f32 cache within what the types' rounding costs; decode (one token) and prefill shapes.
TEST_P(Conformance, attention_every_cache_type_pair) {
    const DType types[] = {DType::F32,  DType::F16,  DType::BF16, DType::Q8_0,  DType::Q4_0,
                           DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::IQ4_NL};
    // relative RMS distance from the f32 cache's result that each type's rounding may add; a
    // decode row's distance has a long tail (a peaked head whose top keys nearly tie can swap
    // them), so each bound sits ~1.4x above the worst of 1000 seeds (Zen 5, cpu_avx2) and the
    // seed 2536382437 (cpu_avx512: K Q4_1 at 1.02x the bounds before)
    auto cost = [](DType t) {
        switch (t) {
            case DType::F32:
                return 0.0;
            case DType::F16:
                return 2e-3;
            case DType::BF16:
                return 1e-2;
            case DType::Q8_0:
                return 2e-2;
            case DType::Q5_0:
            case DType::Q5_1:
                return 0.11;
            default:
                return 0.22;
        }
    };
    struct Shape {
        int64_t H, Hkv, D, depth, T;
    };
    for (const Shape sh : {Shape{8, 2, 64, 333, 1}, Shape{4, 2, 32, 90, 11}}) {
        const auto q = randoms(rng_, sh.T * sh.H * sh.D), k = randoms(rng_, sh.T * sh.Hkv * sh.D),
                   v = randoms(rng_, sh.T * sh.Hkv * sh.D);
        const float scale = 4.0f / std::sqrt(float(sh.D));  // peaked enough that keys matter
        const uint32_t cache_seed = uint32_t(rng_());
        auto run = [&](DType tk, DType tv) {
            std::mt19937 cache_rng(cache_seed);
            KvCase c(*be_, cache_rng, sh.Hkv, sh.D, sh.depth, sh.depth + sh.T, tk, tv);
            KvBlock b = c.block();
            DevTensor dq(*be_, sh.T, sh.H * sh.D, q), dk(*be_, sh.T, sh.Hkv * sh.D, k),
                dv(*be_, sh.T, sh.Hkv * sh.D, v), out(*be_, sh.T, sh.H * sh.D);
            batch({{0, 0, sh.T, sh.depth}}, {&b});
            be_->attention(dq.t(), dk.t(), dv.t(), {sh.H, sh.Hkv, sh.D, scale}, 0, out.t());
            be_->reset_scratch();
            // the new rows hold the bytes the CPU's quantizers write
            for (auto [t, buf, rows] : {std::tuple{tk, c.k.get(), &k}, std::tuple{tv, c.v.get(), &v}}) {
                const size_t rb = row_bytes(t, sh.Hkv * sh.D);
                const std::vector<uint8_t> held = buf->read<uint8_t>();
                std::vector<uint8_t> want(rb);
                for (int64_t i = 0; i < sh.T; ++i) {
                    quantize_row(t, rows->data() + i * sh.Hkv * sh.D, want.data(), sh.Hkv * sh.D);
                    const uint8_t* got = held.data() + size_t(sh.depth + i) * rb;
                    for (size_t byte = 0; byte < rb; ++byte)
                        EXPECT_EQ(int(got[byte]), int(want[byte]))
                            << traits(t).name << " row " << i << " byte " << byte << " of " << rb;
                    if (std::memcmp(got, want.data(), rb) != 0) break;
                }
            }
            std::vector<float> qr = q;
            if (tk == DType::F16)
                for (float& x : qr) x = fp16_to_f32(f32_to_fp16(x));
            return std::pair{out.get(), ref::attention(qr, k, v, c.past_k, c.past_v, sh.H, sh.Hkv, sh.D, sh.depth, sh.T,
                                                       tk, tv, scale)};
        };
        const std::vector<float> base = run(DType::F32, DType::F32).first;
        for (DType tk : types)
            for (DType tv : types) {
                if (!be_->supports(Op::attention, tk) || !be_->supports(Op::attention, tv)) continue;
                const std::string what = std::string("attention K ") + traits(tk).name + " V " + traits(tv).name +
                                         " T=" + std::to_string(sh.T);
                const auto [got, want] = run(tk, tv);
                expect_close(got, want, 2e-5 + weight_rounding(*be_, tk, tv, sh.depth + sh.T), 1e-5, what);
                double e = 0, n = 0;
                for (size_t i = 0; i < got.size(); ++i) {
                    e += double(got[i] - base[i]) * (got[i] - base[i]);
                    n += double(base[i]) * base[i];
                }
                EXPECT_LE(std::sqrt(e / n), cost(tk) + cost(tv)) << what;
            }
    }
}

// Tokens appended one at a time give the bits of the same tokens appended together, and of the
// same tokens beside a second sequence in one call; at depth 66000 a token's split chunks (more
// than a GPU's merge holds at once) too. Head size 256 with 8 and 16 query heads a KV head: the
// Qwen3.5 models' attention (35B-A3B, 122B-A10B), more queries a tile than one prefill block holds;
// 128 and 64, the other head sizes a GPU's prefill form is built for.
TEST_P(Conformance, attention_is_batch_invariant) {
    // and with other chunk sizes (on a GPU; the chunks cut every query's keys alike), and with
    // each prefill form of the tensor-core products
    const auto body = [&] {
        struct Case {
            int64_t H, Hkv, D, depth;
        };
        for (const Case cs :
             {Case{8, 2, 32, 5}, Case{8, 2, 32, 1200}, Case{8, 2, 32, 66000}, Case{16, 2, 256, 3},
              Case{16, 2, 256, 700}, Case{32, 2, 256, 700}, Case{16, 4, 128, 700}, Case{8, 2, 64, 300}}) {
            const int64_t H = cs.H, Hkv = cs.Hkv, D = cs.D, T = 37, depth = cs.depth;
            const AttentionParams ap{H, Hkv, D, 1.0f / std::sqrt(float(D))};
            const auto q = randoms(rng_, T * H * D, -2, 2), k = randoms(rng_, T * Hkv * D, -2, 2),
                       v = randoms(rng_, T * Hkv * D, -2, 2);
            DevTensor dq(*be_, T, H * D, q), dk(*be_, T, Hkv * D, k), dv(*be_, T, Hkv * D, v);
            std::mt19937 cache_rng(seed_ + uint32_t(depth));
            KvCase c1(*be_, cache_rng, Hkv, D, depth, depth + T, DType::F16);
            KvBlock b1 = c1.block();
            DevTensor together(*be_, T, H * D), one(*be_, T, H * D);
            batch({{0, 0, T, depth}}, {&b1});
            be_->attention(dq.t(), dk.t(), dv.t(), ap, 0, together.t());
            be_->reset_scratch();
            cache_rng.seed(seed_ + uint32_t(depth));
            KvCase c2(*be_, cache_rng, Hkv, D, depth, depth + T, DType::F16);
            KvBlock b2 = c2.block();
            for (int64_t t = 0; t < T; ++t) {
                batch({{0, 0, 1, depth + t}}, {&b2});
                be_->attention(dq.row(t), dk.row(t), dv.row(t), ap, 0, one.row(t));
                be_->reset_scratch();
            }
            const std::vector<float> all = together.get();
            ASSERT_EQ(all, one.get()) << "depth " << depth;
            // the first 11 tokens beside another sequence's 20
            cache_rng.seed(seed_ + uint32_t(depth));
            KvCase c3(*be_, cache_rng, Hkv, D, depth, depth + T, DType::F16);
            KvCase c4(*be_, rng_, Hkv, D, 900, 920, DType::F16);
            KvBlock b3 = c3.block(), b4 = c4.block();
            std::vector<float> q2 = randoms(rng_, 31 * H * D), k2 = randoms(rng_, 31 * Hkv * D),
                               v2 = randoms(rng_, 31 * Hkv * D);
            std::copy_n(q.begin(), 11 * H * D, q2.begin());
            std::copy_n(k.begin(), 11 * Hkv * D, k2.begin());
            std::copy_n(v.begin(), 11 * Hkv * D, v2.begin());
            DevTensor dq2(*be_, 31, H * D, q2), dk2(*be_, 31, Hkv * D, k2), dv2(*be_, 31, Hkv * D, v2),
                out2(*be_, 31, H * D);
            batch({{0, 0, 11, depth}, {1, 11, 20, 900}}, {&b3, &b4});
            be_->attention(dq2.t(), dk2.t(), dv2.t(), ap, 0, out2.t());
            be_->reset_scratch();
            const std::vector<float> two = out2.get();
            ASSERT_TRUE(std::equal(all.begin(), all.begin() + 11 * H * D, two.begin())) << "depth " << depth;
        }
    };
    under_each("BIGMOE_CUDA_ATT_CHUNK", {"64", "128"}, body);
    if (!HasFatalFailure()) under_each("BIGMOE_CUDA_ATT_WG", {"0", "1"}, body, false);
}

// Routed experts: float and quantized stacks, separate and fused gate/up, more experts than
// tokens choose (some idle), router logits with and without exact ties (the lower id wins).
TEST_P(Conformance, moe_matches_float64_with_idle_experts) {
    const int64_t N = 256, F = 32, E = 8, K = 2, T = 3;
    for (DType t : {DType::F32, DType::Q8_0}) {
        for (int variant = 0; variant < 3; ++variant) {
            const bool fused = variant == 1, ties = variant == 2;
            auto gate = weight(t, N, F, E), up = weight(t, N, F, E), gate_up = weight(t, N, 2 * F, E),
                 down = weight(DType::F32, F, N, E);
            const MoeWeights m = fused ? MoeWeights{nullptr, nullptr, &down->w, &gate_up->w, E, K, F}
                                       : MoeWeights{&gate->w, &up->w, &down->w, nullptr, E, K, F};
            const auto x = randoms(rng_, T * N);
            auto logits = randoms(rng_, T * E, -3, 3);
            if (ties)
                for (float& v : logits) v = std::round(v / 2);  // -2 .. 2: each token's top 2 mostly tied
            DevTensor dx(*be_, T, N, x), dl(*be_, T, E, logits), out(*be_, T, N);
            be_->moe(dx.t(), dl.t(), m, out.t());
            be_->reset_scratch();
            const ref::Vec want = ref::moe(x, logits, T, m);
            double rms = 0;
            for (double w : want) rms += w * w;
            rms = std::sqrt(rms / double(want.size()));
            // quantized: 8-bit activations into gate and up, whose errors the SiLU product and the
            // down projection carry (measured up to ~3% of the output's RMS); a wrong expert or
            // weight is off by ~100%
            expect_close(out.get(), want, (t == DType::F32 ? 1e-5 : 6e-2) * rms, 1e-4,
                         std::string("moe ") + traits(t).name + (fused ? " fused" : "") + (ties ? " ties" : ""));
        }
    }
}

// A token's routed experts do not depend on the batch: decode and verification sizes (where a
// GPU runs one kernel per slot's rows) give the bits of a prefill batch (experts grouped), with
// K-quant stacks, a top-k that does and does not divide a warp's 32 lanes, and inputs of 2 and
// 12 super-blocks (the 122B's: a GPU's decode lanes take two or three each); on a GPU also with
// the gate/up kernel's lanes a row forced to 4 and 2 and the prefill kernels' other staging.
TEST_P(Conformance, moe_is_batch_invariant) {
    under_each("BIGMOE_CUDA_GATE_LANES", {"4", "2"}, [&] { moe_batch_invariance(); });
    if (!HasFatalFailure())
        under_each(
            "BIGMOE_CUDA_STAGE", {"1"}, [&] { moe_batch_invariance(); }, false);
}

void Conformance::moe_batch_invariance() {
    const int64_t F = 256, E = 16, T_all = 24;
    for (auto [N, K] : {std::pair<int64_t, int64_t>{512, 3}, {512, 8}, {3072, 8}}) {
        auto gate = weight(DType::Q4_K, N, F, E), up = weight(DType::Q4_K, N, F, E),
             down = weight(DType::Q6_K, F, N, E);
        const MoeWeights m{&gate->w, &up->w, &down->w, nullptr, E, K, F};
        const auto x = randoms(rng_, T_all * N), logits = randoms(rng_, T_all * E, -3, 3);
        DevTensor dx(*be_, T_all, N, x), dl(*be_, T_all, E, logits), all(*be_, T_all, N);
        be_->moe(dx.t(), dl.t(), m, all.t());
        be_->reset_scratch();
        const std::vector<float> want = all.get();
        for (int64_t T : {1, 2, 5, 8, 9}) {
            DevTensor part(*be_, T, N);
            be_->moe(dx.t().rows_view(0, T), dl.t().rows_view(0, T), m, part.t());
            be_->reset_scratch();
            const std::vector<float> got = part.get();
            ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0)
                << "N=" << N << " K=" << K << ": " << T << " tokens differ from the same tokens among " << T_all;
        }
    }
}

// The routed experts with Qwen3.5's gated shared expert in one op equal moe, swiglu, matmul and
// add_gated in turn bit for bit, at decode sizes (where a GPU folds the shared expert into the
// experts' down kernel) and beyond; the shared expert's width and down type differ from the
// routed experts'. On a GPU also with the gate/up kernel's lanes a row forced to 4 and 2 (its
// blocks' groups of 32 and 64 rows completing the down kernel's quantized inputs).
TEST_P(Conformance, moe_shared_equals_the_ops_in_turn) {
    under_each("BIGMOE_CUDA_GATE_LANES", {"4", "2"}, [&] { moe_shared_in_turn(); });
}

void Conformance::moe_shared_in_turn() {
    const int64_t N = 512, E = 16, T_all = 12;
    for (auto [F, K, ddt, sdt] :
         {std::tuple{256, 4, DType::Q6_K, DType::Q6_K}, std::tuple{256, 4, DType::Q6_K, DType::Q4_K},
          std::tuple{256, 4, DType::Q6_K, DType::Q8_0}, std::tuple{256, 4, DType::Q4_K, DType::F32},
          std::tuple{512, 8, DType::Q4_K, DType::Q4_K}, std::tuple{512, 5, DType::Q6_K, DType::Q6_K}}) {
        auto gate = weight(DType::Q4_K, N, F, E), up = weight(DType::Q4_K, N, F, E), down = weight(ddt, F, N, E);
        const MoeWeights m{&gate->w, &up->w, &down->w, nullptr, E, K, F};
        const int64_t Fs = 768;
        auto sdown = weight(sdt, Fs, N);
        auto gv = vec_weight(randoms(rng_, N, -0.1f, 0.1f));
        const auto x = randoms(rng_, T_all * N), logits = randoms(rng_, T_all * E, -3, 3),
                   sg = randoms(rng_, T_all * Fs, -3, 3), su = randoms(rng_, T_all * Fs, -2, 2);
        DevTensor dx(*be_, T_all, N, x), dl(*be_, T_all, E, logits);
        std::vector<float> batch;  // T_all tokens (the prefill kernels), whose rows the others must give
        for (int64_t T : {T_all, int64_t(1), int64_t(3), int64_t(8)}) {
            DevTensor g1(*be_, T_all, Fs, sg), g2(*be_, T_all, Fs, sg), du(*be_, T_all, Fs, su);
            DevTensor o1(*be_, T, N), o2(*be_, T, N);
            const Tensor xt = dx.t().rows_view(0, T), lt = dl.t().rows_view(0, T);
            be_->moe_shared(xt, lt, m, {g1.t().rows_view(0, T), du.t().rows_view(0, T), &sdown->w, &gv->w}, o1.t());
            be_->reset_scratch();
            be_->Backend::moe_shared(xt, lt, m, {g2.t().rows_view(0, T), du.t().rows_view(0, T), &sdown->w, &gv->w},
                                     o2.t());
            be_->reset_scratch();
            const std::vector<float> got = o1.get(), want = o2.get();
            ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * 4), 0)
                << "F " << F << " K " << K << " down " << traits(ddt).name << ", shared down " << traits(sdt).name
                << ", " << T << " tokens";
            for (float v : got) ASSERT_TRUE(std::isfinite(v)) << traits(sdt).name << ", " << T << " tokens";
            if (T == T_all)
                batch = got;
            else
                ASSERT_EQ(std::memcmp(got.data(), batch.data(), got.size() * 4), 0)
                    << "F " << F << " K " << K << ": " << T << " tokens differ from the same tokens among " << T_all;
        }
    }
}

// The Gated DeltaNet's gated output norm in one op equals rms_norm then swiglu bit for bit (per
// head and over whole rows), and float64.
TEST_P(Conformance, rms_norm_gate_equals_the_ops_in_turn) {
    const int64_t T = 5;
    for (int64_t g : {int64_t(128), int64_t(300)}) {
        const int64_t C = g == 128 ? 4 * g : g;
        const auto x = randoms(rng_, T * C, -3, 3), z = randoms(rng_, T * C, -4, 4);
        auto w = vec_weight(randoms(rng_, g, 0.5f, 1.5f));
        DevTensor dx(*be_, T, C, x), dz(*be_, T, C, z), o1(*be_, T, C), o2(*be_, T, C);
        be_->rms_norm_gate(dx.t(), w->w, 1e-6f, dz.t(), o1.t());
        be_->Backend::rms_norm_gate(dx.t(), w->w, 1e-6f, dz.t(), o2.t());
        const std::vector<float> got = o1.get();
        ASSERT_EQ(got, o2.get()) << "groups of " << g;
        const std::vector<float> wv(w->f32(), w->f32() + g);
        const ref::Vec n = ref::rms_norm(x, T, C, wv, 1e-6);
        expect_close(got, ref::swiglu(z, std::vector<float>(n.begin(), n.end())), 1e-5, 1e-5,
                     "groups of " + std::to_string(g));
    }
}

// A recurrent ring of n_slots snapshots in backend memory, slot `head` holding `state`.
struct RingCase {
    std::unique_ptr<DevBuffer> conv, ssm;
    RecurrentRing ring;
    RingCase(Backend& be, size_t conv_floats, size_t ssm_floats, int n_slots, int head,
             const std::vector<float>& conv_state, const std::vector<float>& ssm_state) {
        std::vector<float> c(conv_floats * size_t(n_slots), 0.0f), s(ssm_floats * size_t(n_slots), 0.0f);
        std::copy(conv_state.begin(), conv_state.end(), c.begin() + ptrdiff_t(size_t(head) * conv_floats));
        std::copy(ssm_state.begin(), ssm_state.end(), s.begin() + ptrdiff_t(size_t(head) * ssm_floats));
        conv = std::make_unique<DevBuffer>(be, c.data(), c.size() * 4);
        ssm = std::make_unique<DevBuffer>(be, s.data(), s.size() * 4);
        ring = {static_cast<float*>(conv->get()), static_cast<float*>(ssm->get()), n_slots, head};
    }
};

// Channels that are not a multiple of the CPU's 64-channel tasks, a ring whose head is not
// slot 0, more tokens than slots: outputs and the kept snapshots of the last tokens.
TEST_P(Conformance, ssm_conv_matches_float64_and_keeps_the_last_states) {
    const int64_t C = 70, K = 4, S = K - 1, T = 5;
    const int n_slots = 3, head = 1;
    auto w = weight(DType::F32, K, C);
    const std::vector<float> wv(w->f32(), w->f32() + C * K);
    const auto x = randoms(rng_, T * C), state0 = randoms(rng_, C * S);
    RingCase rc(*be_, size_t(C * S), 1, n_slots, head, state0, {0.0f});
    DevTensor dx(*be_, T, C, x), out(*be_, T, C);
    const GdnParams p{1, 1, 1, 1, K, 1e-6f};
    batch({{0, 0, T, 0}}, {}, {&rc.ring});
    be_->ssm_conv(dx.t(), w->w, p, 0, out.t());
    be_->reset_scratch();
    std::vector<double> state(state0.begin(), state0.end());
    std::vector<ref::Vec> kept;
    ref::Vec want;
    for (int64_t t = 0; t < T; ++t) {  // token by token, keeping every state
        const ref::Vec o = ref::ssm_conv({x.begin() + t * C, x.begin() + (t + 1) * C}, 1, C, wv, K, state);
        want.insert(want.end(), o.begin(), o.end());
        kept.push_back(state);
    }
    expect_close(out.get(), want, 1e-5, 1e-5, "ssm_conv");
    const std::vector<float> ring = rc.conv->read<float>();
    for (int64_t t = T - n_slots; t < T; ++t) {
        const size_t slot = size_t((head + t + 1) % n_slots);
        for (int64_t i = 0; i < C * S; ++i)
            ASSERT_NEAR(ring[slot * size_t(C * S) + size_t(i)], kept[size_t(t)][size_t(i)], 1e-6)
                << "state after token " << t;
    }
}

// Head sizes 16, 64, 128 and 256 (registers on x86; on CUDA each with its parts a channel) and 24
// (the generic loops); 72 tokens cross 16-token blocks (on a GPU, its chunks of 8 staged tokens,
// each token's output formed beside the next one's prediction). Outputs and the last 3 kept states
// against float64; then the same tokens one call each (the state updated in place, as decoding
// does) give the same bits.
TEST_P(Conformance, gated_delta_net_matches_float64_and_one_token_calls) {
    struct Shape {
        int64_t dk, dv;
    };
    for (const Shape sh : {Shape{16, 16}, Shape{24, 8}, Shape{64, 24}, Shape{128, 16}, Shape{256, 8}}) {
        const int64_t Hk = 2, Hv = 4, dk = sh.dk, dv = sh.dv, T = 72, C = 2 * Hk * dk + Hv * dv;
        const size_t slot = size_t(Hv * dv * dk);
        std::vector<float> a_vals = randoms(rng_, Hv);
        for (float& a : a_vals) a = -std::fabs(a) - 0.1f;  // ssm_a < 0
        auto dtb = vec_weight(randoms(rng_, Hv)), a = vec_weight(a_vals);
        const std::vector<float> dtv(dtb->f32(), dtb->f32() + Hv);
        const auto u = randoms(rng_, T * C), beta = randoms(rng_, T * Hv), alpha = randoms(rng_, T * Hv);
        const auto s0 = randoms(rng_, int64_t(slot), -0.5f, 0.5f);
        DevTensor du(*be_, T, C, u), db(*be_, T, Hv, beta), da(*be_, T, Hv, alpha), out(*be_, T, Hv * dv);
        RingCase rc(*be_, 1, slot, 3, 0, {0.0f}, s0);
        const GdnParams p{Hk, Hv, dk, dv, 4, 1e-6f};
        batch({{0, 0, T, 0}}, {}, {&rc.ring});
        be_->gated_delta_net(du.t(), db.t(), da.t(), dtb->w, a->w, p, 0, out.t());
        be_->reset_scratch();
        ref::Vec S(s0.begin(), s0.end());
        std::vector<ref::Vec> states;
        const ref::Vec want = ref::gated_delta_net(u, beta, alpha, dtv, a_vals, p, T, S, &states);
        const std::vector<float> got = out.get();
        expect_close(got, want, 1e-4, 0, "gdn dk=" + std::to_string(dk));
        const std::vector<float> ring = rc.ssm->read<float>();
        for (int64_t t = T - 3; t < T; ++t)  // token t's state is kept in slot (t + 1) % 3
            for (size_t i = 0; i < slot; ++i)
                ASSERT_NEAR(ring[size_t((t + 1) % 3) * slot + i], states[size_t(t)][i], 1e-4)
                    << "dk=" << dk << " kept state of token " << t;
        RingCase one(*be_, 1, slot, 1, 0, {0.0f}, s0);
        DevTensor one_out(*be_, T, Hv * dv);
        for (int64_t t = 0; t < T; ++t) {
            batch({{0, 0, 1, t}}, {}, {&one.ring});
            be_->gated_delta_net(du.row(t), db.row(t), da.row(t), dtb->w, a->w, p, 0, one_out.row(t));
            be_->reset_scratch();
        }
        ASSERT_EQ(one_out.get(), got) << "dk=" << dk;
        const std::vector<float> last = one.ssm->read<float>();
        ASSERT_TRUE(std::equal(last.begin(), last.end(), ring.begin() + ptrdiff_t(size_t(T % 3) * slot)))
            << "dk=" << dk;
    }
}

// Two sequences in one call give each sequence's bits alone (recurrent ops loop over spans).
TEST_P(Conformance, recurrent_ops_two_sequences_equal_each_alone) {
    const int64_t Hk = 1, Hv = 2, dk = 16, dv = 16, C = 2 * Hk * dk + Hv * dv, K = 4;
    const size_t slot = size_t(Hv * dv * dk), conv_floats = size_t(C * (K - 1));
    auto w = weight(DType::F32, K, C);
    auto dtb = vec_weight(randoms(rng_, Hv)), a = vec_weight({-0.5f, -1.0f});
    const GdnParams p{Hk, Hv, dk, dv, K, 1e-6f};
    const auto x = randoms(rng_, 7 * C), beta = randoms(rng_, 7 * Hv), alpha = randoms(rng_, 7 * Hv);
    const auto c0 = randoms(rng_, int64_t(conv_floats)), c1 = randoms(rng_, int64_t(conv_floats));
    const auto s0 = randoms(rng_, int64_t(slot)), s1 = randoms(rng_, int64_t(slot));
    DevTensor dx(*be_, 7, C, x), db(*be_, 7, Hv, beta), da(*be_, 7, Hv, alpha);
    // together: sequence 0 has tokens 0-2, sequence 1 tokens 3-6
    RingCase r0(*be_, conv_floats, slot, 2, 0, c0, s0), r1(*be_, conv_floats, slot, 2, 1, c1, s1);
    DevTensor conv_out(*be_, 7, C), out(*be_, 7, Hv * dv);
    const std::vector<SeqSpan> spans = {{0, 0, 3, 10}, {1, 3, 4, 20}};
    batch(spans, {}, {&r0.ring, &r1.ring});
    be_->ssm_conv(dx.t(), w->w, p, 0, conv_out.t());
    be_->gated_delta_net(conv_out.t(), db.t(), da.t(), dtb->w, a->w, p, 0, out.t());
    be_->reset_scratch();
    const std::vector<float> together = out.get();
    // alone
    RingCase q0(*be_, conv_floats, slot, 2, 0, c0, s0), q1(*be_, conv_floats, slot, 2, 1, c1, s1);
    DevTensor alone_conv(*be_, 7, C), alone(*be_, 7, Hv * dv);
    for (const auto& [span, ring] :
         {std::pair{SeqSpan{0, 0, 3, 10}, &q0.ring}, std::pair{SeqSpan{1, 3, 4, 20}, &q1.ring}}) {
        batch({span}, {}, {ring});
        be_->ssm_conv(dx.t(), w->w, p, 0, alone_conv.t());
        be_->gated_delta_net(alone_conv.t(), db.t(), da.t(), dtb->w, a->w, p, 0, alone.t());
        be_->reset_scratch();
    }
    ASSERT_EQ(alone.get(), together);
    ASSERT_EQ(q0.ssm->read<float>(), r0.ssm->read<float>());
    ASSERT_EQ(q1.conv->read<float>(), r1.conv->read<float>());
}

INSTANTIATE_TEST_SUITE_P(Backends, Conformance, ::testing::ValuesIn(backends_under_test()),
                         [](const ::testing::TestParamInfo<BackendUnderTest>& i) { return i.param.name; });

}  // namespace
}  // namespace bigmoe
