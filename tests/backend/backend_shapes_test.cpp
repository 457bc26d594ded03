// Layer sizes a backend's kernels do not take are refused with a message when the model loads,
// before any weight is read: the CUDA backend's limits, and the check's path through a model
// load (a backend that refuses, wrapped in the profiler too).
#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "backend/cpu/cpu_backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/profiler.h"
#include "gguf/gguf_file.h"
#include "models/model.h"
#include "testlib.h"

namespace bigmoe {
namespace {

TEST(CudaLimits, refuses_sizes_its_kernels_do_not_take) {
    EXPECT_TRUE(cuda_check_shapes({}).ok());
    EXPECT_TRUE(cuda_check_shapes({256, 4, 128}).ok());  // Qwen3.5's sizes
    EXPECT_TRUE(cuda_check_shapes({40, 2, 256}).ok());
    EXPECT_TRUE(cuda_check_shapes({128, 0, 0}).ok());  // attention only (Qwen3-MoE)
    struct Bad {
        OpShapes s;
        const char* says;
    };
    for (const Bad& b : {Bad{{512, 0, 0}, "head size 512"}, Bad{{42, 0, 0}, "head size 42"},
                         Bad{{128, 9, 128}, "conv kernel of 9"}, Bad{{128, 4, 384}, "key size 384"}}) {
        const auto r = cuda_check_shapes(b.s);
        ASSERT_FALSE(r.ok()) << b.says;
        EXPECT_EQ(r.error().kind, ErrorKind::unsupported) << b.says;
        EXPECT_NE(r.error().message.find(b.says), std::string::npos) << r.error().message;
    }
}

// The CPU backend, refusing one head size and noting what it was asked.
class RefusingBackend : public cpu::CpuBackend {
  public:
    explicit RefusingBackend(int64_t refused) : cpu::CpuBackend(1), refused_(refused) {}
    Result<void> check_shapes(const OpShapes& s) const override {
        asked = s;
        ++n_asked;
        if (s.head_dim == refused_) return make_error("head size refused here", ErrorKind::unsupported);
        return {};
    }
    Result<void> prepare_weight(Weight& w) override {
        ++n_prepared;
        return cpu::CpuBackend::prepare_weight(w);
    }
    mutable OpShapes asked;
    mutable int n_asked = 0;
    int n_prepared = 0;

  private:
    int64_t refused_;
};

TEST(BackendShapes, a_model_load_asks_the_backend_first) {
    for (const char* name : {"qwen35-tiny-f32.gguf", "qwen3moe-tiny-f32.gguf"}) {
        auto file = gguf::GgufFile::open(testing::fixtures_dir() + "/models/" + name);
        ASSERT_TRUE(file.ok()) << file.error().message;
        // accepted: the sizes asked are the model's
        RefusingBackend accepting(-1);
        auto model = load_model(**file, accepting);
        ASSERT_TRUE(model.ok()) << model.error().message;
        const HParams& hp = (*model)->hparams();
        EXPECT_EQ(accepting.n_asked, 1) << name;
        EXPECT_EQ(accepting.asked.head_dim, hp.head_dim) << name;
        EXPECT_EQ(accepting.asked.conv_kernel, hp.n_recurrent_layers() > 0 ? hp.ssm_conv_kernel : 0) << name;
        EXPECT_EQ(accepting.asked.ssm_d_k, hp.n_recurrent_layers() > 0 ? hp.ssm_d_state : 0) << name;
        // refused, directly and through the profiler: an error, no weight prepared
        auto inner = std::make_unique<RefusingBackend>(hp.head_dim);
        RefusingBackend* seen = inner.get();
        ProfiledBackend profiled(std::move(inner));
        for (Backend* be : {static_cast<Backend*>(seen), static_cast<Backend*>(&profiled)}) {
            auto refused = load_model(**file, *be);
            ASSERT_FALSE(refused.ok()) << name;
            EXPECT_EQ(refused.error().kind, ErrorKind::unsupported) << name;
            EXPECT_NE(refused.error().message.find("head size refused here"), std::string::npos)
                << refused.error().message;
        }
        EXPECT_EQ(seen->n_asked, 2) << name;
        EXPECT_EQ(seen->n_prepared, 0) << name;
        EXPECT_GT(accepting.n_prepared, 0) << name;
    }
}

}  // namespace
}  // namespace bigmoe
