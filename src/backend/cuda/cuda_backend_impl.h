// The CUDA backend's class, for the files that define its members: cuda_backend.cu (memory, steps
// and their recording, the ops other than products) and product_plan.cu (which kernels a layer's
// products and routed experts take, and their launch shapes).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/step_recording.h"

namespace bigmoe::cuda {

class CudaBackend final : public Backend {
  public:
    explicit CudaBackend(int device);
    ~CudaBackend() override;

    std::string name() const override { return "CUDA"; }
    std::string device_name() const override { return name_; }
    int n_threads() const override { return 1; }
    Result<void> check_shapes(const OpShapes& s) const override { return cuda_check_shapes(s); }
    bool supports(Op op, DType t) const override;
    void annotate(const char*) override {}

    Result<void> prepare_weight(Weight& w) override;

    uint64_t memory_available() const override {
        size_t free = 0, total = 0;
        if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
        return free;
    }
    void* alloc(size_t bytes) override;
    void dealloc(void* p) override {
        if (!p) return;
        finish_step();
        CU(cudaStreamSynchronize(stream_));
        CU(cudaFree(p));
    }
    void upload(void* dst, const void* src, size_t bytes) override {
        finish_step();
        CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
        CU(cudaStreamSynchronize(stream_));  // the caller's host buffer may go away at once
    }
    // Downloads of 64 KiB or more pass through a pinned buffer, 4 MiB at a time: into pageable
    // memory the driver stages the copy itself, which took a 35B decode token's 1 MB of logits
    // ~4% of the token (H100 tg128: 330.5 / 324.7 t/s through the buffer, 315.9 / 314.2 not).
    void download(void* dst, const void* src, size_t bytes) override;
    // Device copies are ops of the step (the model's selection of output rows is one).
    void copy(void* dst, const void* src, size_t bytes) override { enqueue(CopyArgs{dst, src, int64_t(bytes)}); }
    void fill_zero(void* dst, size_t bytes) override {
        finish_step();
        CU(cudaMemsetAsync(dst, 0, bytes, stream_));
    }
    void synchronize() override {
        finish_step();
        CU(cudaStreamSynchronize(stream_));
    }
    // Events between ops, which a graph replay would not record: once a caller times ops (the
    // profiler), steps run as they come. Their launches then cost host time the graphs save,
    // which the GPU's times between events mostly do not see.
    int64_t time_mark() override;
    double mark_seconds(int64_t from, int64_t to) override;
    void clear_marks() override { n_marks_ = 0; }
    ScratchArena& scratch_arena() override { return arena_; }

    // Uploads the batch's positions, spans, per-layer state descriptors and token ids in one copy
    // ahead of the step's ops (so a recording never holds the staging buffer's address: the two
    // buffers take turns, and a chained step's upload may still be queued behind the step before);
    // a chained step's ids are copied from the last argmax instead. Then decides whether the step
    // is recorded, replayed or run as it comes.
    void begin_batch(const BatchState& b) override;

    // Two kernels of the step, then the indices read back: a 35B decode token's 1 MB of logits
    // otherwise crosses to the host, is copied out of the pinned buffer (45 us on the H200
    // machine) and scanned there (41 us on the Zen 5 VM).
    void argmax_rows(Tensor x, int32_t* ids) override;
    // The indices land in argmax_dev_ (where a chained step's ids are copied from) when the
    // batch made room for them, otherwise in scratch.
    int32_t* enqueue_argmax(Tensor x);

    // Greedy chains: the step's graph launches here, and its ids come back into pinned memory
    // behind an event while the host forms the next step (which copies them on the GPU).
    bool chains_greedy() const override { return argmax_ && chain_; }
    void argmax_rows_start(Tensor x) override;
    void argmax_rows_end(int32_t* ids, int64_t n) override;

    void get_rows(const Weight& emb, const int32_t* ids, int64_t n, Tensor out) override;

    void rms_norm(Tensor x, const Weight& w, float eps, Tensor out) override {
        const int64_t g = w.n_in();
        if (x.rows == 0 || x.cols < g) return;
        enqueue(NormArgs{x.data, x.stride, wf32(w), g, x.rows, x.cols / g, double(eps), out.data, out.stride, nullptr,
                         0, nullptr, 0});
    }

    void rms_norm_gate(Tensor x, const Weight& w, float eps, Tensor z, Tensor out) override;

    void add_rms_norm(Tensor h, Tensor y, const Weight& w, float eps, Tensor out) override;

    void matmul(const Weight& w, Tensor x, Tensor out) override { matmuls(x, {{&w, out}}); }

    // A layer's projections of one input. Up to 8 tokens: up to 4 products in one kernel that
    // quantizes the input itself; more: the input quantized once per activation type, then the
    // tensor-core products of each weight type in one launch (k_mma_parts at a time), and a
    // kernel for each other product.
    void matmuls(Tensor x, const std::vector<Product>& products) override;

    void add(Tensor a, Tensor b, Tensor out) override { elementwise(Ew::add, a, b, out); }
    void swiglu(Tensor gate, Tensor up, Tensor out) override { elementwise(Ew::swiglu, gate, up, out); }
    void mul_sigmoid(Tensor x, Tensor gate, Tensor out) override { elementwise(Ew::mul_sigmoid, x, gate, out); }

    void gather_cols(Tensor x, int64_t group, int64_t offset, int64_t width, Tensor out) override {
        if (x.rows * out.cols == 0) return;
        enqueue(GatherArgs{x.data, x.stride, group, offset, width, out.data, out.stride, x.rows, out.cols});
    }

    void add_gated(Tensor a, Tensor b, const Weight& gate_vec, Tensor f, Tensor out) override {
        if (out.rows == 0) return;
        enqueue(AddGatedArgs{a.data, a.stride, b.data, b.stride, wf32(gate_vec), f.data, f.stride, f.cols, out.data,
                             out.stride, out.rows, out.cols});
    }

    void rope_neox(Tensor x, int64_t head_dim, int64_t n_rot, float theta) override {
        const int64_t rows = std::min(x.rows, n_rows_), half = n_rot / 2, heads = x.cols / head_dim;
        if (rows * heads * half == 0) return;
        const float theta_scale = std::pow(theta, -2.0f / float(n_rot));
        enqueue(RopeArgs{x.data, x.stride, rows, heads, head_dim, half, double(theta_scale), dev<int64_t>(off_pos_)});
    }

    void attention_inputs(Tensor qg, Tensor k, const AttentionInputs& p, Tensor q_out, Tensor k_out,
                          Tensor gate_out) override;

    void attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) override;

    void moe(Tensor x, Tensor router_logits, const MoeWeights& m, Tensor out) override {
        routed_experts(x, router_logits, m, nullptr, out);
    }

    void moe_shared(Tensor x, Tensor router_logits, const MoeWeights& m, const SharedExpert& s, Tensor out) override {
        if (!routed_experts(x, router_logits, m, fuse_ ? &s : nullptr, out)) add_shared_expert(x, s, out);
    }

    void ssm_conv(Tensor mixed, const Weight& conv_w, const GdnParams& p, int64_t il, Tensor out) override;

    void gated_delta_net(Tensor u, Tensor beta, Tensor alpha, const Weight& dt_bias, const Weight& ssm_a,
                         const GdnParams& p, int64_t il, Tensor out) override;

  private:
    // ---- recording and replaying steps

    enum class Mode { eager, capture, replay };

    template <class A>
    void enqueue(const A& a) {
        if (mode_ == Mode::replay) {
            if (rec_->is(issued_, a)) {
                ++issued_;
                return;
            }
            abandon_replay();
        } else if (mode_ == Mode::capture) {
            rec_->add(a);
            rec_->ops.push_back([a](cudaStream_t s) { run_op(s, a); });
        }
        run_op(stream_, a);
    }

    void start_step(uint64_t shape);

    // Ends the step's recording or replay: launches the graph, or runs what was held back.
    void finish_step();

    // The step left its recording: the ops matched so far run now, the rest as they come, and
    // the shape is recorded again when it repeats.
    void abandon_replay();

    void drop_recordings() {
        for (auto& [shape, r] : recs_) r.forget();
        recs_.clear();
    }

    // ---- products (product_plan.cu)

    // Whether the down kernel took in the shared expert too: decode-sized batches (its gate
    // and up projections' swiglu, its down product and the gated add inside the kernel that sums
    // the routed experts' rows: three kernels a layer fewer).
    bool routed_experts(Tensor x, Tensor router_logits, const MoeWeights& m, const SharedExpert* shared, Tensor out);

    // Prefill's experts on the tensor cores: the slots grouped by expert, gate and up per expert
    // over its slots, down likewise, then each token's weighted sum in top-k order (the bits of
    // the decode kernels: every product in unit order, the same sum).
    void grouped_experts(Tensor x, const MoeWeights& m, const int32_t* ids, const float* wts, int64_t T, Tensor out);

    // Every block of a products-of-one-input launch quantizes the input again before its rows: no
    // more blocks than fill the GPU once (4 blocks of 256 threads an SM, k_matvec_sb's 128
    // registers 2), a warp taking several rows.
    int64_t sb_launch_blocks(int64_t items, bool sb) const;
    // k_matvec_sb's lanes a row for a product launch whose rows hold nsb super-blocks: the count
    // whose lanes walk the fewest super-blocks one after another (a warp's rounds of rows times a
    // row's rounds of super-blocks), ties to as many lanes as a row's super-blocks (8, 16 or 32).
    // The 122B's 12 super-block rows on 16 lanes left a quarter of them idle; on 6 lanes (5 rows a
    // warp, two rounds) its Gated DeltaNet inputs' 20608 rows take 4 super-blocks a lane, not 5.
    // BIGMOE_CUDA_SB_LANES=L (1-32) takes L lanes for every launch, =0 the tie's count.
    int64_t sb_lanes(const MatvecArgs& a, int64_t nsb) const;
    using LaneKey = std::array<int64_t, 1 + k_matvec_products>;
    mutable std::vector<std::pair<LaneKey, int64_t>> lane_choices_;

    // Products of one input for up to k_matvec_max_tokens tokens as one in-kernel-quantizing
    // kernel; false (nothing enqueued) when their activations do not fit in its shared memory.
    static constexpr int64_t k_matvec_max_tokens = 8;
    bool matvec(Tensor x, const Product* ps, size_t n);

    // Batches of this many tokens or more take the tensor-core products (the same bits; faster
    // once a weight tile serves enough tokens).
    static constexpr int64_t k_mma_min_tokens = 16;
    // A product with fewer rows than a tensor-core tile leaves most of each tile idle: alone, such
    // products (the 35B's Gated DeltaNet beta and alpha) take the warp kernels (the same bits).
    static constexpr int64_t k_mma_min_rows = 64;
    int64_t use_mma(int64_t rows) const { return mma_ && rows >= k_mma_min_tokens; }

    // x's rows as a product with weight type `wt` reads them (*arb bytes per row), in scratch.
    const uint8_t* activations(int wt, Tensor x, int64_t* arb);

    // ---- helpers

    void elementwise(Ew op, Tensor a, Tensor b, Tensor out) {
        if (out.rows * out.cols == 0) return;
        enqueue(ElementwiseArgs{op, a.data, a.stride, b.data, b.stride, out.data, out.stride, out.rows, out.cols});
    }
    static const uint8_t* wbytes(const Weight& w) { return static_cast<const uint8_t*>(w.backend_data); }
    static const float* wf32(const Weight& w) { return static_cast<const float*>(w.backend_data); }
    template <class T>
    const T* dev(size_t off) const {
        return reinterpret_cast<const T*>(static_cast<const uint8_t*>(batch_dev_) + off);
    }

    std::string name_;
    cudaStream_t stream_ = nullptr;
    ScratchArena arena_;
    std::vector<void*> weights_;
    // the batch's descriptors: pinned host staging (two, taking turns; the event after each
    // one's last copy) and their device copy
    void* staging_[2] = {nullptr, nullptr};
    cudaEvent_t staging_ev_[2] = {nullptr, nullptr};
    int stage_ = 0;
    void* batch_dev_ = nullptr;
    size_t staging_bytes_ = 0;
    const int32_t* batch_tokens_ = nullptr;  // the batch's ids, sent by begin_batch (or chained)
    // the last argmax's indices on the GPU (room for argmax_cap_ rows), and greedy chains' ids
    // read back: two slots of k_chain_rows in pinned memory taking turns, each behind an event
    int32_t* argmax_dev_ = nullptr;
    int64_t argmax_cap_ = 0;
    static constexpr int64_t k_chain_rows = 16;
    int32_t* chain_host_ = nullptr;
    cudaEvent_t chain_ev_[2] = {nullptr, nullptr};
    int64_t chain_rows_[2] = {-1, -1};
    int64_t chain_started_ = 0, chain_ended_ = 0;
    bool chain_ = true;          // BIGMOE_CUDA_CHAIN=0: greedy steps wait for the host (for measuring)
    int* moe_counts_ = nullptr;  // MoeGateUpArgs::cnt, zero between launches
    size_t off_pos_ = 0, off_row_span_ = 0, off_spans_ = 0, off_ids_ = 0;
    std::vector<size_t> off_kv_, off_rs_;
    std::vector<int64_t> kv_capacity_;                        // [layer]: the batch's longest KV block, in positions
    std::vector<std::vector<std::pair<int, int>>> kv_types_;  // [layer]: the batch's (K, V) cache types
    size_t off_att_tiles_ = 0;
    int64_t n_att_tiles_ = 0, att_tile_rows_ = 0;  // attention's tiles of rows, the longest tile
    int64_t sm_count_ = 1;
    int64_t n_spans_ = 0, n_rows_ = 0, ids_cap_ = 0;
    // step recordings by shape
    // fuse_: attention's inputs as one kernel (BIGMOE_CUDA_FUSE=0: the ops one by one)
    // sb_: one-token products of K-quant rows a lane per super-block (BIGMOE_CUDA_SB=0: a warp a row)
    // (BIGMOE_CUDA_SB=2: the dense products only, the experts' kernels a warp a row)
    int64_t att_chunk_ = k_att_chunk;
    bool graphs_ = true, mma_ = false, att_mma_ = false, fuse_ = true, argmax_ = true, sb_ = true, sb_moe_ = true;
    bool items_end_ = true;  // k_matvec_sb finds an item's product by MatvecProduct::items_end
    // a matmuls call's tensor-core products of one weight type share a launch
    // (BIGMOE_CUDA_MMA_GROUP=0: a launch each, for measuring)
    bool group_mma_ = true;
    // the tensor-core products' staging copies with a fixed row or token a thread
    // (BIGMOE_CUDA_STAGE=1; mma_tile_staged's FIXED, not yet measured on a GPU)
    int64_t stage_fixed_ = 0;
    // blocks an SM for k_matvec_sb launches (BIGMOE_CUDA_SB_BLOCKS): 2 are resident at its 128
    // registers, and a block past them waits, then quantizes its input again (H200, 35B tg128:
    // 304.0 / 304.7 t/s with 2, 292.5 / 292.7 with 4)
    int64_t sb_blocks_ = 2;
    // k_matvec_sb's lanes a row for every launch (BIGMOE_CUDA_SB_LANES; 0: 8, 16 or 32, as many as
    // a row's super-blocks); -1: sb_lanes() picks per launch
    int64_t sb_lanes_ = -1;
    // the experts' decode gate/up kernel's lanes a row for every launch (BIGMOE_CUDA_GATE_LANES: 8,
    // 4 or 2); 0: picked per launch
    int64_t gate_lanes_ = 0;
    void* pinned_ = nullptr;  // download's bounce buffer (4 MiB, made at the first large download)
    Mode mode_ = Mode::eager;
    std::vector<cudaEvent_t> marks_;  // time_mark's events, the first n_marks_ recorded
    int64_t n_marks_ = 0;
    std::unordered_map<uint64_t, Recording> recs_;
    Recording* rec_ = nullptr;
    size_t issued_ = 0;
};

}  // namespace bigmoe::cuda
