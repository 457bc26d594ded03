// The CPU backend: host memory, a thread pool, and kernels from the dispatch table.
#pragma once

#include <cmath>
#include <cstdint>
#include <memory>

#include "backend/backend.h"
#include "backend/cpu/kernels.h"
#include "core/thread_pool.h"

namespace bigmoe::cpu {

inline float sigmoid(float x) {
    return 1.0f / (1.0f + std::exp(-x));
}

class CpuBackend : public Backend {
  public:
    explicit CpuBackend(int n_threads, const Kernels* k = nullptr);
    ~CpuBackend() override;

    std::string name() const override { return std::string("CPU (") + k_->isa + ")"; }
    int n_threads() const override { return pool_->size(); }
    bool supports(Op op, DType t) const override;
    void annotate(const char*) override {}
    ScratchArena& scratch_arena() override { return arena_; }
    void begin_batch(const BatchState& b) override { batch_ = &b; }
    Result<void> prepare_weight(Weight& w) override;

    uint64_t memory_available() const override;
    void* alloc(size_t bytes) override;
    void dealloc(void* p) override;
    void upload(void* dst, const void* src, size_t bytes) override;
    void download(void* dst, const void* src, size_t bytes) override;
    void copy(void* dst, const void* src, size_t bytes) override;
    void fill_zero(void* dst, size_t bytes) override;

    void argmax_rows(Tensor x, int32_t* ids) override;
    void get_rows(const Weight& emb, const int32_t* ids, int64_t n, Tensor out) override;
    void rms_norm(Tensor x, const Weight& w, float eps, Tensor out) override;
    void matmul(const Weight& w, Tensor x, Tensor out) override;
    void matmuls(Tensor x, const std::vector<Product>& products) override;
    void add(Tensor a, Tensor b, Tensor out) override;
    void gather_cols(Tensor x, int64_t group, int64_t offset, int64_t width, Tensor out) override;
    void swiglu(Tensor gate, Tensor up, Tensor out) override;
    void mul_sigmoid(Tensor x, Tensor gate, Tensor out) override;
    void add_gated(Tensor a, Tensor b, const Weight& gate_vec, Tensor f, Tensor out) override;
    void rope_neox(Tensor x, int64_t head_dim, int64_t n_rot, float theta) override;
    void attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) override;
    void moe(Tensor x, Tensor router_logits, const MoeWeights& m, Tensor out) override;
    void ssm_conv(Tensor mixed, const Weight& conv_w, const GdnParams& p, int64_t il, Tensor out) override;
    void gated_delta_net(Tensor u, Tensor beta, Tensor alpha, const Weight& dt_bias, const Weight& ssm_a,
                         const GdnParams& p, int64_t il, Tensor out) override;

    // Quantized-activation matrix product on raw rows (matmuls and the expert products), one
    // thread's share: rows [r_begin, r_end), row r's result at out[t * out_stride + r - r_begin]
    // (no parallelism inside). `packed`: the rows are in packed groups of 8 (repack.h); w is where
    // a group starts (groups of 8 rows from there), the range may cut groups.
    void rows_product(DType wt, bool packed, const uint8_t* w, size_t w_row_bytes, int64_t r_begin, int64_t r_end,
                      const uint8_t* qx, size_t qx_row_bytes, int64_t n_tok, int64_t n_in, float* out,
                      int64_t out_stride) const;
    // The bytes products read: the packed copy if there is one, else the file's rows.
    static const uint8_t* product_bytes(const Weight& w) {
        return static_cast<const uint8_t*>(w.backend_data ? w.backend_data : w.data);
    }
    // Off: weights stay in the file's layout (products use the row-at-a-time kernels). Applies to
    // weights prepared afterwards.
    void set_pack_weights(bool on) { pack_weights_ = on; }
    // Bytes of packed copies still allowed (default: 3/4 of MemAvailable when the first weight is
    // prepared); a weight that does not fit keeps the file's layout.
    void set_pack_budget(size_t bytes) { pack_budget_ = bytes; }
    // Weight rows per parallel task.
    static constexpr int64_t k_rows_per_task = 16;
    // Products of up to this many tokens split the rows statically (memory-bound), larger ones
    // hand out k_rows_per_task blocks (compute-bound).
    static constexpr int64_t k_stream_max_tokens = 16;
    // Tokens a packed product takes through a row range at a time (their activations stay in L1).
    static constexpr int64_t k_token_block = 16;
    // From this many tokens on (verification batches, 5-15 sequences side by side), packed
    // products take two groups a tile where the table has such tiles (AVX-512): half the
    // instructions, a 5-8-token product 1.4-1.5x faster; with 1-4 tokens, where bandwidth
    // bounds a product, the 8-row tile's single stream measured as fast or faster (bench-1b, 4
    // sequences, 2-core Zen 5: 289-300 t/s against 279-287).
    static constexpr int64_t k_pair_min_tokens = 5;
    // From this many tokens on, packed rows go to the many-token kernel (packed_gemm) where the
    // table has one (AMX: with 8 tokens it measured 0.6x the packed tiles, with 16 1.06-1.4x).
    static constexpr int64_t k_packed_gemm_min_tokens = 16;
    // Weight rows per parallel task for products that take the many-token kernel.
    static constexpr int64_t k_gemm_rows_per_task = 64;
    // Whether products of type t with n_tok tokens take the many-token kernel (packed rows, a
    // table entry for the type, enough tokens).
    bool takes_gemm(DType t, bool packed, int64_t n_tok) const {
        return packed && k_->packed_gemm[int(t)] && n_tok >= k_packed_gemm_min_tokens;
    }
    // From this many tokens on, a weight row is decoded once into a buffer (gemm_row).
    static constexpr int64_t k_gemm_min_tokens = 8;
    // Quantize rows of x into the activation type of weight type wt; returns row bytes.
    size_t quantize_rows(DType wt, Tensor x, std::vector<uint8_t>& buf);

    ThreadPool& pool() { return *pool_; }
    const Kernels& kernels() const { return *k_; }

  private:
    const BatchState& batch() const {
        BM_CHECK(batch_ != nullptr);
        return *batch_;
    }
    ScratchArena arena_{*this};
    const BatchState* batch_ = nullptr;
    std::shared_ptr<ThreadPool> pool_;
    const Kernels* k_;
    std::vector<std::vector<uint8_t>> qbufs_;  // matmuls: x quantized, one buffer per activation type
    static constexpr size_t k_budget_unset = SIZE_MAX - 1;
    static size_t default_pack_budget();
    bool pack_weights_ = true, pack_warned_ = false;
    size_t pack_budget_ = k_budget_unset;
    std::vector<void*> packed_;  // packed weight copies (freed with the backend)
};

}  // namespace bigmoe::cpu
