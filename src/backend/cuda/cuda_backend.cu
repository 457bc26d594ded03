// The CUDA backend: weights, caches, recurrent rings and activations in GPU memory, every op a
// kernel on one stream (products.cu, layers.cu), no host synchronisation inside a forward pass
// except where the interface hands data back.
//
// Decode steps repeat: the same ops on the same buffers, only the data in the batch descriptors
// changes. The backend records a step's ops as (arguments, launcher) pairs while capturing them
// into a CUDA graph, and when a step with the same shape comes again it compares each op with the
// recording instead of launching it, then launches the whole graph at once: the GPU runs a step
// without the gaps of ~400 separate launches. An op that differs from the recording ends the
// replay: the ops matched so far run as they are, and so does the rest of the step.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/ops.h"
#include "backend/cuda/step_recording.h"
#include "core/hash.h"

namespace bigmoe {

namespace {

using namespace cuda;

class CudaBackend final : public Backend {
  public:
    explicit CudaBackend(int device) : arena_(*this) {
        CU(cudaSetDevice(device));
        CU(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        cudaDeviceProp prop{};
        CU(cudaGetDeviceProperties(&prop, device));
        name_ = prop.name;
        sm_count_ = prop.multiProcessorCount;
        configure_products();
        configure_attention();
        CU(cudaMalloc(&moe_counts_, k_moe_counters * sizeof(int)));
        CU(cudaMemset(moe_counts_, 0, k_moe_counters * sizeof(int)));
        const char* pdl = std::getenv("BIGMOE_CUDA_PDL");
        g_pdl = prop.major >= 9 && !(pdl && std::strcmp(pdl, "0") == 0);
        mma_ = prop.major >= 8;  // the int8 tensor-core products need sm_80 or newer
        const char* m = std::getenv("BIGMOE_CUDA_MMA");
        if (m && std::strcmp(m, "0") == 0) mma_ = false;
        att_mma_ = prop.major >= 8;  // f16 tensor-core attention (BIGMOE_CUDA_ATT_MMA=0: float products)
        const char* am = std::getenv("BIGMOE_CUDA_ATT_MMA");
        if (am && std::strcmp(am, "0") == 0) att_mma_ = false;
        const char* g = std::getenv("BIGMOE_CUDA_GRAPHS");
        graphs_ = !(g && std::strcmp(g, "0") == 0);
        if (const char* e = std::getenv("BIGMOE_CUDA_ATT_CHUNK")) {
            const int64_t c = std::atoll(e);
            if (c >= 64 && c % 64 == 0 && c <= (int64_t(1) << 20)) att_chunk_ = c;
        }
        const char* am2 = std::getenv("BIGMOE_CUDA_ARGMAX");  // 0: the rows read back (for measuring)
        argmax_ = !(am2 && std::strcmp(am2, "0") == 0);
        const char* f = std::getenv("BIGMOE_CUDA_FUSE");
        fuse_ = !(f && std::strcmp(f, "0") == 0);
        const char* sb = std::getenv("BIGMOE_CUDA_SB");
        sb_ = !(sb && std::strcmp(sb, "0") == 0);
        sb_moe_ = sb_ && !(sb && std::strcmp(sb, "2") == 0);
        const char* sbb = std::getenv("BIGMOE_CUDA_SB_BLOCKS");
        if (sbb && std::atoi(sbb) > 0) sb_blocks_ = std::atoi(sbb);
        if (const char* e = std::getenv("BIGMOE_CUDA_SB_LANES")) sb_lanes_ = std::max(0, std::atoi(e));
        if (const char* e = std::getenv("BIGMOE_CUDA_ITEMS")) items_end_ = std::strcmp(e, "0") != 0;
        if (const char* e = std::getenv("BIGMOE_CUDA_CHAIN")) chain_ = std::strcmp(e, "0") != 0;
        if (const char* e = std::getenv("BIGMOE_CUDA_MMA_GROUP")) group_mma_ = std::strcmp(e, "0") != 0;
        if (const char* e = std::getenv("BIGMOE_CUDA_STAGE")) stage_fixed_ = std::strcmp(e, "1") == 0 ? 1 : 0;
        if (const char* e = std::getenv("BIGMOE_CUDA_GATE_LANES")) {
            const int v = std::atoi(e);
            gate_lanes_ = v == 8 || v == 4 || v == 2 ? v : 0;
        }
    }
    ~CudaBackend() override {
        finish_step();
        cudaStreamSynchronize(stream_);
        drop_recordings();
        arena_.release();
        for (void* p : weights_) cudaFree(p);
        cudaFree(batch_dev_);
        cudaFree(moe_counts_);
        cudaFree(argmax_dev_);
        for (int i = 0; i < 2; ++i) {
            cudaFreeHost(staging_[i]);
            if (staging_ev_[i]) cudaEventDestroy(staging_ev_[i]);
            if (chain_ev_[i]) cudaEventDestroy(chain_ev_[i]);
        }
        cudaFreeHost(chain_host_);
        cudaFreeHost(pinned_);
        for (cudaEvent_t e : marks_) cudaEventDestroy(e);
        cudaStreamDestroy(stream_);
    }

    std::string name() const override { return "CUDA"; }
    std::string device_name() const override { return name_; }
    int n_threads() const override { return 1; }
    Result<void> check_shapes(const OpShapes& s) const override { return cuda_check_shapes(s); }
    bool supports(Op op, DType t) const override {
        if (op == Op::attention) return is_cache_type(t);
        switch (t) {
            case DType::F32:
            case DType::F16:
            case DType::BF16:
            case DType::Q4_0:
            case DType::Q8_0:
            case DType::Q4_K:
            case DType::Q5_K:
            case DType::Q6_K:
                return true;
            default:
                return false;
        }
    }
    void annotate(const char*) override {}

    Result<void> prepare_weight(Weight& w) override {
        finish_step();
        const size_t bytes = w.row_bytes * size_t(w.ne[1] * w.ne[2] * w.ne[3]);
        // 16 bytes to spare: a Q6_K super-block is read through the 16-byte aligned window around
        // it (sb_lane), up to 14 bytes past the last one
        void* p = alloc(bytes + 16);
        if (!p)
            return make_error("GPU memory is full: " + w.name() + " needs " + std::to_string(bytes >> 20) + " MiB, " +
                                  std::to_string(memory_available() >> 20) + " MiB are free",
                              ErrorKind::resource_exhausted);
        CU(cudaMemcpy(p, w.data, bytes, cudaMemcpyHostToDevice));
        weights_.push_back(p);
        w.backend_data = p;
        return {};
    }

    uint64_t memory_available() const override {
        size_t free = 0, total = 0;
        if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
        return free;
    }
    void* alloc(size_t bytes) override {
        void* p = nullptr;
        // whole 16-byte units: attention stages cache rows by 16-byte copies from the boundary
        // below each head's bytes, which may reach past a row that ends a buffer
        if (cudaMalloc(&p, (std::max<size_t>(bytes, 1) + 15) / 16 * 16) != cudaSuccess) {
            cudaGetLastError();  // an allocation failure is not sticky; callers report it
            return nullptr;
        }
        return p;
    }
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
    void download(void* dst, const void* src, size_t bytes) override {
        finish_step();
        constexpr size_t k_min = size_t(64) << 10, k_chunk = size_t(4) << 20;
        if (bytes >= k_min && !pinned_) {
            if (cudaMallocHost(&pinned_, k_chunk) != cudaSuccess) {
                cudaGetLastError();
                pinned_ = nullptr;
            }
        }
        if (bytes < k_min || !pinned_) {
            CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
            CU(cudaStreamSynchronize(stream_));
            return;
        }
        for (size_t off = 0; off < bytes; off += k_chunk) {
            const size_t n = std::min(k_chunk, bytes - off);
            CU(cudaMemcpyAsync(pinned_, static_cast<const uint8_t*>(src) + off, n, cudaMemcpyDeviceToHost, stream_));
            CU(cudaStreamSynchronize(stream_));
            std::memcpy(static_cast<uint8_t*>(dst) + off, pinned_, n);
        }
    }
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
    int64_t time_mark() override {
        if (graphs_) {
            graphs_ = false;
            finish_step();  // a step being recorded or replayed runs its ops so far
            CU(cudaStreamSynchronize(stream_));
            drop_recordings();
        }
        if (size_t(n_marks_) == marks_.size()) {
            cudaEvent_t e = nullptr;
            CU(cudaEventCreate(&e));
            marks_.push_back(e);
        }
        CU(cudaEventRecord(marks_[size_t(n_marks_)], stream_));
        return n_marks_++;
    }
    double mark_seconds(int64_t from, int64_t to) override {
        if (from < 0 || to >= n_marks_ || from > to) return 0;
        CU(cudaEventSynchronize(marks_[size_t(to)]));
        float ms = 0;
        CU(cudaEventElapsedTime(&ms, marks_[size_t(from)], marks_[size_t(to)]));
        return double(ms) / 1000.0;
    }
    void clear_marks() override { n_marks_ = 0; }
    ScratchArena& scratch_arena() override { return arena_; }

    // Uploads the batch's positions, spans, per-layer state descriptors and token ids in one copy
    // ahead of the step's ops (so a recording never holds the staging buffer's address: the two
    // buffers take turns, and a chained step's upload may still be queued behind the step before);
    // a chained step's ids are copied from the last argmax instead. Then decides whether the step
    // is recorded, replayed or run as it comes.
    void begin_batch(const BatchState& b) override {
        finish_step();
        if (!b.ids_from_argmax) CU(cudaStreamSynchronize(stream_));
        n_spans_ = int64_t(b.spans.size());
        int64_t rows = 0;
        for (const SeqSpan& s : b.spans) rows = std::max(rows, s.first + s.n_tokens);
        n_rows_ = rows;
        const size_t n_layers = std::max(b.kv.size(), b.rs.size());
        std::vector<uint8_t> blob;
        auto put = [&](const void* p, size_t n) {
            const size_t at = (blob.size() + 15) / 16 * 16;
            blob.resize(at + n);
            if (n && p) std::memcpy(blob.data() + at, p, n);
            return at;
        };
        std::vector<int64_t> pos(size_t(rows), 0);
        std::vector<int32_t> row_span(size_t(rows), -1);
        std::vector<SpanDev> spans;
        const uint8_t argmax = b.argmax ? 1 : 0;
        uint64_t shape = fnv1a(&argmax, 1, fnv1a(&rows, sizeof rows));
        for (size_t si = 0; si < b.spans.size(); ++si) {
            const SeqSpan& s = b.spans[si];
            spans.push_back({s.first, s.n_tokens, s.pos0});
            shape = fnv1a(&s.n_tokens, sizeof s.n_tokens, fnv1a(&s.first, sizeof s.first, shape));
            for (int64_t i = 0; i < s.n_tokens; ++i) {
                pos[size_t(s.first + i)] = s.pos0 + i;
                row_span[size_t(s.first + i)] = int32_t(si);
            }
        }
        off_pos_ = put(pos.data(), pos.size() * sizeof(int64_t));
        off_row_span_ = put(row_span.data(), row_span.size() * sizeof(int32_t));
        off_spans_ = put(spans.data(), spans.size() * sizeof(SpanDev));
        std::vector<AttTile> tiles;
        att_tile_rows_ = 0;
        for (size_t si = 0; si < b.spans.size(); ++si)
            for (int64_t r = 0; r < b.spans[si].n_tokens; r += k_att_rows) {
                const int64_t n = std::min(k_att_rows, b.spans[si].n_tokens - r);
                tiles.push_back({int32_t(si), int32_t(b.spans[si].first + r), int32_t(n), 0});
                att_tile_rows_ = std::max(att_tile_rows_, n);
            }
        off_att_tiles_ = put(tiles.data(), tiles.size() * sizeof(AttTile));
        n_att_tiles_ = int64_t(tiles.size());
        off_kv_.assign(n_layers, SIZE_MAX);
        kv_capacity_.assign(n_layers, 0);
        kv_types_.assign(n_layers, {});
        off_rs_.assign(n_layers, SIZE_MAX);
        for (size_t il = 0; il < n_layers; ++il) {
            if (il < b.kv.size() && !b.kv[il].empty()) {
                std::vector<KvDev> kv;
                for (const KvBlock* k : b.kv[il])
                    kv.push_back({k->k, k->v, int(k->type_k), int(k->type_v), k->capacity});
                off_kv_[il] = put(kv.data(), kv.size() * sizeof(KvDev));
                for (const KvBlock* k : b.kv[il]) {
                    kv_capacity_[il] = std::max(kv_capacity_[il], k->capacity);
                    const std::pair<int, int> t{int(k->type_k), int(k->type_v)};
                    if (std::find(kv_types_[il].begin(), kv_types_[il].end(), t) == kv_types_[il].end())
                        kv_types_[il].push_back(t);
                }
            }
            if (il < b.rs.size() && !b.rs[il].empty()) {
                std::vector<RingDev> rs;
                for (const RecurrentRing* r : b.rs[il]) rs.push_back({r->conv, r->ssm, r->n_slots, r->head});
                off_rs_[il] = put(rs.data(), rs.size() * sizeof(RingDev));
            }
        }
        const size_t descriptors = blob.size();
        const bool ids_given = b.tokens && b.n_tokens == rows && !b.ids_from_argmax;
        off_ids_ = put(ids_given ? b.tokens : nullptr, size_t(rows) * sizeof(int32_t));
        ids_cap_ = rows;
        batch_tokens_ = b.tokens && b.n_tokens == rows ? b.tokens : nullptr;
        if (blob.size() > staging_bytes_ || (b.argmax && rows > argmax_cap_)) {
            CU(cudaStreamSynchronize(stream_));
            drop_recordings();  // they read the buffers replaced here
            if (blob.size() > staging_bytes_) {
                cudaFree(batch_dev_);
                staging_bytes_ = blob.size() * 2 + (size_t(1) << 16);
                CU(cudaMalloc(&batch_dev_, staging_bytes_));
                for (void*& p : staging_) {
                    cudaFreeHost(p);
                    CU(cudaMallocHost(&p, staging_bytes_));
                }
            }
            if (b.argmax && rows > argmax_cap_) {
                cudaFree(argmax_dev_);
                argmax_cap_ = std::max<int64_t>(rows, k_graph_max_rows);
                CU(cudaMalloc(&argmax_dev_, size_t(argmax_cap_) * sizeof(int32_t)));
            }
        }
        if (b.argmax && !chain_host_) {  // before any recording starts
            CU(cudaMallocHost(&chain_host_, 2 * k_chain_rows * sizeof(int32_t)));
            for (cudaEvent_t& e : chain_ev_) CU(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        }
        stage_ ^= 1;
        if (!staging_ev_[stage_]) CU(cudaEventCreateWithFlags(&staging_ev_[stage_], cudaEventDisableTiming));
        CU(cudaEventSynchronize(staging_ev_[stage_]));  // this buffer's last copy has run
        const size_t bytes = ids_given ? blob.size() : descriptors;
        std::memcpy(staging_[stage_], blob.data(), bytes);
        CU(cudaMemcpyAsync(batch_dev_, staging_[stage_], bytes, cudaMemcpyHostToDevice, stream_));
        CU(cudaEventRecord(staging_ev_[stage_], stream_));
        if (b.ids_from_argmax && batch_tokens_ && rows <= argmax_cap_)
            CU(cudaMemcpyAsync(static_cast<uint8_t*>(batch_dev_) + off_ids_, argmax_dev_,
                               size_t(rows) * sizeof(int32_t), cudaMemcpyDeviceToDevice, stream_));
        else if (!ids_given)
            batch_tokens_ = nullptr;  // get_rows sends its ids itself
        start_step(fnv1a(&descriptors, sizeof descriptors, shape));
    }

    // Two kernels of the step, then the indices read back: a 35B decode token's 1 MB of logits
    // otherwise crosses to the host, is copied out of the pinned buffer (45 us on the H200
    // machine) and scanned there (41 us on the Zen 5 VM).
    void argmax_rows(Tensor x, int32_t* ids) override {
        if (x.rows == 0) return;
        if (!argmax_) return Backend::argmax_rows(x, ids);
        const ScratchMark mark = scratch_mark();
        download(ids, enqueue_argmax(x), size_t(x.rows) * sizeof(int32_t));
        scratch_rewind(mark);
    }
    // The indices land in argmax_dev_ (where a chained step's ids are copied from) when the
    // batch made room for them, otherwise in scratch.
    int32_t* enqueue_argmax(Tensor x) {
        const int64_t blocks = (x.cols + k_argmax_chunk - 1) / k_argmax_chunk;
        const bool room_kept = x.rows <= argmax_cap_;
        // the keys and indices in the floats' room (scratch rows start 64-byte aligned)
        float* room = scratch(1, x.rows * (2 * blocks + (room_kept ? 0 : 1))).data;
        uint64_t* keys = reinterpret_cast<uint64_t*>(room);
        int32_t* dev_ids = room_kept ? argmax_dev_ : reinterpret_cast<int32_t*>(room + 2 * x.rows * blocks);
        enqueue(ArgmaxArgs{x.data, x.stride, x.rows, x.cols, blocks, keys, dev_ids});
        return dev_ids;
    }

    // Greedy chains: the step's graph launches here, and its ids come back into pinned memory
    // behind an event while the host forms the next step (which copies them on the GPU).
    bool chains_greedy() const override { return argmax_ && chain_; }
    void argmax_rows_start(Tensor x) override {
        const int slot = int(chain_started_++ % 2);
        chain_rows_[slot] = -1;
        if (x.rows < 1 || x.rows > argmax_cap_ || x.rows > k_chain_rows || !argmax_ || !chain_host_) {
            finish_step();
            return;
        }
        const ScratchMark mark = scratch_mark();
        enqueue_argmax(x);
        scratch_rewind(mark);
        finish_step();
        CU(cudaMemcpyAsync(chain_host_ + slot * k_chain_rows, argmax_dev_, size_t(x.rows) * sizeof(int32_t),
                           cudaMemcpyDeviceToHost, stream_));
        CU(cudaEventRecord(chain_ev_[slot], stream_));
        chain_rows_[slot] = x.rows;
    }
    void argmax_rows_end(int32_t* ids, int64_t n) override {
        const int slot = int(chain_ended_ % 2);
        if (chain_ended_ == chain_started_ || chain_rows_[slot] < n) {
            std::fill(ids, ids + n, -1);
            if (chain_ended_ < chain_started_) ++chain_ended_;
            return;
        }
        ++chain_ended_;
        CU(cudaEventSynchronize(chain_ev_[slot]));
        std::memcpy(ids, chain_host_ + slot * k_chain_rows, size_t(n) * sizeof(int32_t));
    }

    void get_rows(const Weight& emb, const int32_t* ids, int64_t n, Tensor out) override {
        if (n == 0) return;
        const int32_t* dev_ids = nullptr;
        const size_t bytes = size_t(n) * sizeof(int32_t);
        if (ids == batch_tokens_ && n == ids_cap_) {  // begin_batch sent them (or a chained step's)
            dev_ids = dev<int32_t>(off_ids_);
        } else if (n <= ids_cap_) {  // the ids ride in the room begin_batch left after the descriptors
            uint8_t* st = static_cast<uint8_t*>(staging_[stage_]);
            std::memcpy(st + off_ids_, ids, bytes);
            dev_ids = dev<int32_t>(off_ids_);
            enqueue(CopyArgs{static_cast<uint8_t*>(batch_dev_) + off_ids_, st + off_ids_, int64_t(bytes)});
        } else {
            Tensor tmp = scratch(1, n);
            upload(tmp.data, ids, bytes);
            dev_ids = reinterpret_cast<const int32_t*>(tmp.data);
        }
        enqueue(GetRowsArgs{int64_t(emb.type), wbytes(emb), int64_t(emb.row_bytes), dev_ids, n, emb.n_in(), out.data,
                            out.stride});
    }

    void rms_norm(Tensor x, const Weight& w, float eps, Tensor out) override {
        const int64_t g = w.n_in();
        if (x.rows == 0 || x.cols < g) return;
        enqueue(NormArgs{x.data, x.stride, wf32(w), g, x.rows, x.cols / g, double(eps), out.data, out.stride, nullptr,
                         0, nullptr, 0});
    }

    void rms_norm_gate(Tensor x, const Weight& w, float eps, Tensor z, Tensor out) override {
        const int64_t g = w.n_in();
        if (!fuse_) return Backend::rms_norm_gate(x, w, eps, z, out);
        if (x.rows == 0 || x.cols < g) return;
        enqueue(NormArgs{x.data, x.stride, wf32(w), g, x.rows, x.cols / g, double(eps), out.data, out.stride, nullptr,
                         0, z.data, z.stride});
    }

    void add_rms_norm(Tensor h, Tensor y, const Weight& w, float eps, Tensor out) override {
        const int64_t g = w.n_in();
        if (h.rows == 0) return;
        if (g != h.cols) return Backend::add_rms_norm(h, y, w, eps, out);
        enqueue(NormArgs{h.data, h.stride, wf32(w), g, h.rows, 1, double(eps), out.data, out.stride, y.data, y.stride,
                         nullptr, 0});
    }

    void matmul(const Weight& w, Tensor x, Tensor out) override { matmuls(x, {{&w, out}}); }

    // A layer's projections of one input. Up to 8 tokens: up to 4 products in one kernel that
    // quantizes the input itself; more: the input quantized once per activation type, then the
    // tensor-core products of each weight type in one launch (k_mma_parts at a time), and a
    // kernel for each other product.
    void matmuls(Tensor x, const std::vector<Product>& products) override {
        if (x.rows == 0) return;
        size_t done = 0;
        while (x.rows <= k_matvec_max_tokens && done < products.size()) {
            const size_t n = std::min(products.size() - done, size_t(k_matvec_products));
            if (!matvec(x, products.data() + done, n)) break;
            done += n;
        }
        if (done == products.size()) return;
        const ScratchMark mark = scratch_mark();
        int kept[4] = {-1, -1, -1, -1};
        const uint8_t* acts[4] = {};
        int64_t arbs[4] = {};
        // Tensor-core launches being filled, one a weight type. A product of fewer rows than a
        // tile joins one whose type has a product of a tile or more (a few blocks more there,
        // where alone it would be a launch of its own).
        std::vector<MatmulMmaArgs> groups;
        auto mma_ok = [&](const Product& p) { return use_mma(x.rows) && act_quantized(act_type(int(p.w->type))); };
        auto joins_mma = [&](const Product& p) {
            if (!mma_ok(p)) return false;
            if (p.w->n_out() >= k_mma_min_rows) return true;
            if (!group_mma_) return false;
            for (size_t j = done; j < products.size(); ++j)
                if (products[j].w->type == p.w->type && products[j].w->n_out() >= k_mma_min_rows) return true;
            return false;
        };
        for (size_t i = done; i < products.size(); ++i) {
            const Product& p = products[i];
            const int at = act_type(int(p.w->type));
            int k = 0;
            while (k < 4 && kept[k] != -1 && kept[k] != at) ++k;
            int64_t arb = 0;
            const uint8_t* act = nullptr;
            if (k == 4) {
                act = activations(int(p.w->type), x, &arb);  // more types than kept: for this one alone
            } else {
                if (kept[k] == -1) {
                    acts[k] = activations(int(p.w->type), x, &arbs[k]);
                    kept[k] = at;
                }
                act = acts[k];
                arb = arbs[k];
            }
            if (!joins_mma(p)) {
                enqueue(MatmulArgs{int64_t(p.w->type), wbytes(*p.w), int64_t(p.w->row_bytes), p.w->n_in(), p.w->n_out(),
                                   act, arb, x.rows, p.out.data, p.out.stride});
                continue;
            }
            MatmulMmaArgs* g = nullptr;
            for (MatmulMmaArgs& c : groups)
                if (group_mma_ && c.type == int64_t(p.w->type) && c.act == act && c.n_parts < k_mma_parts) g = &c;
            if (!g) {
                groups.push_back(MatmulMmaArgs{int64_t(p.w->type), p.w->n_in(), act, arb, x.rows, 0, stage_fixed_, {}});
                g = &groups.back();
            }
            const int64_t before = g->n_parts ? g->p[g->n_parts - 1].tiles_end : 0;
            g->p[g->n_parts++] = MmaPart{wbytes(*p.w), int64_t(p.w->row_bytes),
                                         p.w->n_out(), p.out.data,
                                         p.out.stride, before + (p.w->n_out() + k_mma_part_tile - 1) / k_mma_part_tile};
        }
        for (const MatmulMmaArgs& g : groups) enqueue(g);
        scratch_rewind(mark);
    }

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
                          Tensor gate_out) override {
        const int64_t D = p.head_dim, Hq = q_out.cols / D, Hkv = k_out.cols / D;
        if (q_out.rows == 0) return;
        if (!fuse_ || p.q_norm->n_in() != D || p.k_norm->n_in() != D || p.n_rot > D)
            return Backend::attention_inputs(qg, k, p, q_out, k_out, gate_out);
        const float theta_scale = std::pow(p.theta, -2.0f / float(p.n_rot));
        enqueue(AttInputsArgs{qg.data,
                              qg.stride,
                              k.data,
                              k.stride,
                              wf32(*p.q_norm),
                              wf32(*p.k_norm),
                              D,
                              p.n_rot / 2,
                              Hq,
                              Hkv,
                              p.gated,
                              q_out.rows,
                              std::min(q_out.rows, n_rows_),
                              double(p.eps),
                              double(theta_scale),
                              dev<int64_t>(off_pos_),
                              q_out.data,
                              q_out.stride,
                              k_out.data,
                              k_out.stride,
                              gate_out.data,
                              gate_out.stride});
    }

    void attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) override {
        const int64_t rows = std::min(q.rows, n_rows_);
        if (rows == 0) return;
        // check_shapes refuses such models as they load: these three checks guard against bugs
        if (p.head_dim > k_att_max_d || p.head_dim % 4 != 0) {
            std::fprintf(stderr,
                         "bigmoe: CUDA attention takes head sizes that are multiples of 4 up to %lld, got %lld\n",
                         (long long)k_att_max_d, (long long)p.head_dim);
            std::abort();
        }
        // Decode and verification split every row's keys into chunks run side by side; the chunk
        // count covers the longest block, so a growing context keeps the same step graph.
        const int64_t tile_queries = att_tile_rows_ * (p.n_head / p.n_head_kv);
        const int64_t passes = (tile_queries + k_att_queries - 1) / k_att_queries;
        size_t smem = 0;
        bool any_mma = false;
        for (auto [tk, tv] : kv_types_.at(size_t(il))) {
            if (att_uses_mma(att_mma_, tk, tv, p.head_dim))
                any_mma = true;
            else
                smem = std::max(smem, attention_smem(p.head_dim, tk, tv));
        }
        const ScratchMark mark = scratch_mark();
        float* part = nullptr;
        int64_t max_chunks = 0, splits = 1;
        if (rows <= 16) {
            max_chunks = (kv_capacity_.at(size_t(il)) + att_chunk_ - 1) / att_chunk_;
            part = scratch(rows * p.n_head * max_chunks, p.head_dim + 4).data;
            // enough blocks to fill the GPU about four times over; blocks past a row's last chunk
            // return at once
            const int64_t blocks = n_att_tiles_ * passes * p.n_head_kv;
            splits = std::clamp((4 * sm_count_ + blocks - 1) / blocks, int64_t(1), max_chunks);
        }
        enqueue(AttentionArgs{q.data,
                              q.stride,
                              k.data,
                              k.stride,
                              v.data,
                              v.stride,
                              p.n_head,
                              p.n_head_kv,
                              p.head_dim,
                              rows,
                              double(p.scale),
                              dev<int64_t>(off_pos_),
                              dev<int32_t>(off_row_span_),
                              dev<KvDev>(off_kv_.at(size_t(il))),
                              out.data,
                              out.stride,
                              part,
                              att_chunk_,
                              max_chunks,
                              splits,
                              dev<AttTile>(off_att_tiles_),
                              n_att_tiles_,
                              passes,
                              tile_queries <= 8 ? passes : (tile_queries + 63) / 64,
                              int64_t(smem),
                              any_mma ? 1 : 0,
                              std::min(k_att_queries, tile_queries),
                              att_mma_ ? 1 : 0});
        scratch_rewind(mark);
    }

    void moe(Tensor x, Tensor router_logits, const MoeWeights& m, Tensor out) override {
        routed_experts(x, router_logits, m, nullptr, out);
    }

    void moe_shared(Tensor x, Tensor router_logits, const MoeWeights& m, const SharedExpert& s, Tensor out) override {
        if (!routed_experts(x, router_logits, m, fuse_ ? &s : nullptr, out)) add_shared_expert(x, s, out);
    }

    // Whether the down kernel took in the shared expert too: decode-sized batches (its gate
    // and up projections' swiglu, its down product and the gated add inside the kernel that sums
    // the routed experts' rows: three kernels a layer fewer).
    bool routed_experts(Tensor x, Tensor router_logits, const MoeWeights& m, const SharedExpert* shared, Tensor out) {
        const int64_t T = x.rows, K = m.n_expert_used, E = m.n_expert, F = m.n_ff, N = x.cols;
        if (T == 0) return true;
        const ScratchMark mark = scratch_mark();
        const Weight& wg = m.gate_up ? *m.gate_up : *m.gate;
        const Weight& wu = m.gate_up ? *m.gate_up : *m.up;
        const int ag_t = act_type(int(wg.type)), au_t = act_type(int(wu.type)), ad_t = act_type(int(m.down->type));
        // Decode-sized batches: routing inside the gate/up kernel and every activation quantized
        // in shared memory (two kernels); larger batches: routing and quantization once, before.
        const int64_t gu_smem =
            16 + int64_t(act_row_bytes(ag_t, N)) + (au_t != ag_t ? int64_t(act_row_bytes(au_t, N)) : 0);
        const int64_t dn_smem = K * int64_t(act_row_bytes(ad_t, F));
        const bool small = T <= k_matvec_max_tokens && gu_smem <= k_products_smem && dn_smem <= k_products_smem;
        // the shared expert's hidden row in floats, then quantized for its down product
        const int64_t Fs = shared ? shared->down->n_in() : 0, sh_f = (dn_smem + 15) / 16 * 16,
                      sh_q = sh_f + (Fs * 4 + 15) / 16 * 16,
                      sh_end = shared ? sh_q + int64_t(act_row_bytes(act_type(int(shared->down->type)), Fs)) : 0;
        if (!small || sh_end > k_products_smem || (shared && shared->gate_inp->n_in() != N)) shared = nullptr;
        const bool route_here = small && E <= 32 * 16 && K <= 32;
        // ids and weights densely (t * K + k), not by scratch rows; T * K ints fit in the floats
        Tensor ids_t = scratch(T, K), w_t = scratch(T, K);
        int32_t* ids = reinterpret_cast<int32_t*>(ids_t.data);
        if (!route_here) {
            Tensor p_t = scratch(T, E);
            enqueue(RouteArgs{router_logits.data, router_logits.stride, T, E, K, ids, w_t.data, p_t.data});
        }
        if (!small && mma_ && wg.type == wu.type && act_quantized(ag_t) && act_quantized(ad_t)) {
            grouped_experts(x, m, ids, w_t.data, T, out);
            scratch_rewind(mark);
            return false;
        }
        Tensor h = scratch(T * K, F);
        MoeGateUpArgs g{};
        g.tg = int64_t(wg.type);
        g.wg = wbytes(wg);
        g.rbg = int64_t(wg.row_bytes);
        g.ebg = int64_t(wg.expert_bytes);
        g.tu = int64_t(wu.type);
        g.wu = wbytes(wu);
        g.rbu = int64_t(wu.row_bytes);
        g.ebu = int64_t(wu.expert_bytes);
        g.up_off = m.gate_up ? F : 0;
        g.N = N;
        g.F = F;
        g.K = K;
        g.x = x.data;
        g.xs = x.stride;
        g.z = router_logits.data;
        g.zs = router_logits.stride;
        g.E = E;
        g.route_here = route_here;
        g.n_slots = T * K;
        g.ids = ids;
        g.wts = w_t.data;
        g.h = h.data;
        g.hs = h.stride;
        // a lane per super-block: K-quant rows of whole super-blocks (gate/up), a row's experts
        // within a warp (down, whose inputs the gate/up kernel quantizes)
        const int64_t swz_off = (gu_smem + 15) / 16 * 16, per_row = K * (F / 256), fs = shared ? Fs : 0;
        const bool gu_sb =
            small && sb_moe_ && sb_type(g.tg) && sb_type(g.tu) && N % 256 == 0 && swz_off + N <= k_products_smem;
        const SharedExpertIn se =
            shared ? SharedExpertIn{shared->gate.data,      shared->gate.stride, shared->up.data, shared->up.stride, Fs,
                                    wf32(*shared->gate_inp)}
                   : SharedExpertIn{};
        MoeHq lay{};
        lay.arb = int64_t(act_row_bytes(k_q8_k, F));
        lay.sq = (K * lay.arb + 15) / 16 * 16;
        lay.rot = (lay.sq + (shared ? int64_t(act_row_bytes(k_q8_k, Fs)) : 0) + 15) / 16 * 16;
        lay.gate = lay.rot + K * F + fs;
        lay.bytes = lay.gate + 16;
        const bool dn_sb =
            gu_sb && sb_type(int64_t(m.down->type)) && F % 256 == 0 && per_row > 0 && 32 % per_row == 0 &&
            (!shared || (sb_type(int64_t(shared->down->type)) && Fs % 256 == 0 && Fs * 4 <= k_products_smem)) &&
            lay.bytes <= k_products_smem && T * K * (F / 256) <= k_moe_counters;
        if (small) {
            g.smem = gu_smem;
            if (gu_sb) {
                g.sb = 1;
                g.swz_off = swz_off;
                g.smem = swz_off + N;
            }
        } else {
            g.smem = 16;
            g.ag = activations(int(wg.type), x, &g.agb);
            g.au = g.ag;
            g.aub = g.agb;
            if (au_t != ag_t) g.au = activations(int(wu.type), x, &g.aub);
        }
        // the experts' decode gate/up blocks: as few rounds of a group of rows a block as fit those
        // at work (the shared expert's leading row is one a token) in the blocks the GPU holds at
        // once (two an SM), not a second and third wave (the 122B's 8 x 64 groups of 16 rows; H200
        // tg128 173.9 / 173.7 against 171.0 / 172.7; the down kernel's 384 blocks the same way gave
        // nothing). Lanes a row: 8, or 4 or 2 where a lane then walks fewer super-blocks (rounds of
        // groups times rounds of a row's super-blocks): the 122B's 12 super-block rows take 3 on 4
        // lanes (one group a block) where 8 lanes took 2 x 2 with a third of the second round idle.
        if (gu_sb) {
            const int64_t resident = 2 * sm_count_, lead = dn_sb && shared ? T : 0, nsb = N / 256;
            int64_t best_walk = 0;
            for (int64_t G : {8, 4, 2}) {
                if (gate_lanes_ > 0 && G != gate_lanes_) continue;
                const int64_t rg = gate_up_group_rows(G), groups = (F + rg - 1) / rg,
                              rounds = (groups * T * K + lead + resident - 1) / resident,
                              walk = rounds * ((nsb + G - 1) / G);
                if (best_walk == 0 || walk < best_walk) {
                    best_walk = walk;
                    g.gl = G;
                    g.gx = (groups + rounds - 1) / rounds;
                }
            }
        }
        if (dn_sb) {
            g.hq = reinterpret_cast<uint8_t*>(scratch(1, T * lay.bytes / 4).data);
            g.hq_lay = lay;
            g.cnt = moe_counts_;
            if (shared) {
                g.se = se;
                g.smem = std::max(g.smem, Fs * 4);  // the hidden row staged as floats
            }
        }
        enqueue(g);
        MoeDownArgs d{};
        d.td = int64_t(m.down->type);
        d.wd = wbytes(*m.down);
        d.rbd = int64_t(m.down->row_bytes);
        d.ebd = int64_t(m.down->expert_bytes);
        d.N = N;
        d.F = F;
        d.K = K;
        d.T = T;
        d.ids = ids;
        d.wts = w_t.data;
        d.h = h.data;
        d.hs = h.stride;
        d.out = out.data;
        d.os = out.stride;
        if (small)
            d.smem = dn_smem;
        else
            d.ah = activations(int(m.down->type), h, &d.ahb);
        if (shared) {
            d.se = se;
            d.tds = int64_t(shared->down->type);
            d.wds = wbytes(*shared->down);
            d.rbds = int64_t(shared->down->row_bytes);
            d.x = x.data;
            d.xs = x.stride;
            d.sh_f = sh_f;
            d.sh_q = sh_q;
            d.smem = sh_end;
        }
        if (dn_sb) {
            d.sb = 1;
            d.hq = g.hq;
            d.lay = lay;
        }
        enqueue(d);
        scratch_rewind(mark);
        return shared != nullptr;
    }

    void ssm_conv(Tensor mixed, const Weight& conv_w, const GdnParams& p, int64_t il, Tensor out) override {
        const int64_t C = mixed.cols, K = p.conv_kernel;
        if (n_spans_ == 0) return;
        if (K < 2 || K > k_conv_max) {
            std::fprintf(stderr, "bigmoe: CUDA conv takes kernels of 2 to %lld, got %lld\n", (long long)k_conv_max,
                         (long long)K);
            std::abort();
        }
        int64_t token_rows = k_conv_max;
        while (token_rows < 32 && token_rows < n_rows_) token_rows *= 2;
        enqueue(ConvArgs{mixed.data, mixed.stride, wf32(conv_w), C, K, dev<SpanDev>(off_spans_), n_spans_,
                         dev<RingDev>(off_rs_.at(size_t(il))), out.data, out.stride, token_rows});
    }

    void gated_delta_net(Tensor u, Tensor beta, Tensor alpha, const Weight& dt_bias, const Weight& ssm_a,
                         const GdnParams& p, int64_t il, Tensor out) override {
        const int64_t Hk = p.n_k_heads, Hv = p.n_v_heads, dk = p.d_k, dv = p.d_v, rows = std::min(u.rows, n_rows_);
        if (rows == 0 || n_spans_ == 0) return;
        if (!gdn_supported(dk)) {
            std::fprintf(stderr, "bigmoe: CUDA Gated DeltaNet takes key sizes up to 256, got %lld\n", (long long)dk);
            std::abort();
        }
        enqueue(GdnArgs{u.data,
                        u.stride,
                        beta.data,
                        beta.stride,
                        alpha.data,
                        alpha.stride,
                        wf32(dt_bias),
                        wf32(ssm_a),
                        Hk,
                        Hv,
                        dk,
                        dv,
                        rows,
                        double(p.eps),
                        double(1.0f / std::sqrt(float(dk))),
                        dev<SpanDev>(off_spans_),
                        n_spans_,
                        dev<RingDev>(off_rs_.at(size_t(il))),
                        out.data,
                        out.stride,
                        gdn_paired()});
    }

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

    void start_step(uint64_t shape) {
        mode_ = Mode::eager;
        rec_ = nullptr;
        if (!graphs_ || n_rows_ == 0 || n_rows_ > k_graph_max_rows) return;
        if (recs_.size() >= k_graph_max_recordings && !recs_.count(shape)) drop_recordings();
        Recording& r = recs_[shape];
        if (r.exec) {
            mode_ = Mode::replay;
            rec_ = &r;
            issued_ = 0;
        } else if (r.misses < k_graph_max_misses && ++r.seen >= 2) {  // a shape seen twice is worth recording
            r.forget();
            rec_ = &r;
            mode_ = Mode::capture;
            CU(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
        }
    }

    // Ends the step's recording or replay: launches the graph, or runs what was held back.
    void finish_step() {
        if (mode_ == Mode::capture) {
            mode_ = Mode::eager;
            cudaGraph_t g = nullptr;
            cudaGraphExec_t x = nullptr;
            cudaError_t e = cudaStreamEndCapture(stream_, &g);
            if (e == cudaSuccess) e = cudaGraphInstantiate(&x, g, 0);
            if (g) cudaGraphDestroy(g);
            if (e != cudaSuccess) {
                // captured ops have not run: run them now, and stop recording on this device
                cudaGetLastError();
                graphs_ = false;
                for (auto& op : rec_->ops) op(stream_);
                rec_ = nullptr;
                drop_recordings();
                return;
            }
            rec_->exec = x;
            CU(cudaGraphLaunch(x, stream_));
        } else if (mode_ == Mode::replay) {
            if (issued_ == rec_->starts.size()) {
                mode_ = Mode::eager;
                CU(cudaGraphLaunch(rec_->exec, stream_));
            } else {
                abandon_replay();  // the step ended early
            }
        }
        rec_ = nullptr;
    }

    // The step left its recording: the ops matched so far run now, the rest as they come, and
    // the shape is recorded again when it repeats.
    void abandon_replay() {
        mode_ = Mode::eager;
        for (size_t i = 0; i < issued_; ++i) rec_->ops[i](stream_);
        rec_->forget();
        rec_->seen = 0;
        ++rec_->misses;
        rec_ = nullptr;
    }

    void drop_recordings() {
        for (auto& [shape, r] : recs_) r.forget();
        recs_.clear();
    }

    // ---- helpers

    // Prefill's experts on the tensor cores: the slots grouped by expert, gate and up per expert
    // over its slots, down likewise, then each token's weighted sum in top-k order (the bits of
    // the decode kernels: every product in unit order, the same sum).
    void grouped_experts(Tensor x, const MoeWeights& m, const int32_t* ids, const float* wts, int64_t T, Tensor out) {
        const int64_t K = m.n_expert_used, E = m.n_expert, F = m.n_ff, N = x.cols;
        const Weight& wg = m.gate_up ? *m.gate_up : *m.gate;
        const Weight& wu = m.gate_up ? *m.gate_up : *m.up;
        Tensor counts_t = scratch(1, E), lists_t = scratch(E, T);  // int32s in the floats' room
        int32_t* counts = reinterpret_cast<int32_t*>(counts_t.data);
        int32_t* lists = reinterpret_cast<int32_t*>(lists_t.data);
        const int64_t per_expert = lists_t.stride;
        // (expert, 32-slot tile) pairs: at most one part-filled tile an expert with slots. The map
        // packs an expert (under 2^15) and its tile (under 2^16: ubatches under 2M tokens).
        const int64_t map_len = std::min(E * ((T + 31) / 32), (T * K + 31) / 32 + std::min(E, T * K));
        Tensor map_t = scratch(1, map_len);
        int32_t* tile_map = reinterpret_cast<int32_t*>(map_t.data);
        enqueue(MoeGroupArgs{ids, T * K, E, per_expert, counts, lists, tile_map, map_len});
        Tensor h = scratch(T * K, F), y = scratch(T * K, N);
        MoeMmaArgs a{};
        a.type = int64_t(wg.type);
        a.w = wbytes(wg);
        a.row_bytes = int64_t(wg.row_bytes);
        a.expert_bytes = int64_t(wg.expert_bytes);
        a.w2 = wbytes(wu);
        a.row_bytes2 = int64_t(wu.row_bytes);
        a.expert_bytes2 = int64_t(wu.expert_bytes);
        a.up_off = m.gate_up ? F : 0;
        a.n_in = N;
        a.n_out = F;
        a.E = E;
        a.K = K;
        a.map_len = map_len;
        a.per_expert = per_expert;
        a.counts = counts;
        a.lists = lists;
        a.tile_map = tile_map;
        a.act = activations(int(wg.type), x, &a.arb);
        a.out = h.data;
        a.os = h.stride;
        a.stage = stage_fixed_;
        enqueue(a);
        MoeMmaArgs d = a;
        d.type = int64_t(m.down->type);
        d.w = wbytes(*m.down);
        d.row_bytes = int64_t(m.down->row_bytes);
        d.expert_bytes = int64_t(m.down->expert_bytes);
        d.w2 = nullptr;
        d.row_bytes2 = d.expert_bytes2 = d.up_off = 0;
        d.n_in = F;
        d.n_out = N;
        d.act = activations(int(m.down->type), h, &d.arb);
        d.out = y.data;
        d.os = y.stride;
        enqueue(d);
        enqueue(MoeSumArgs{y.data, y.stride, wts, T, K, N, out.data, out.stride});
    }

    // Every block of a products-of-one-input launch quantizes the input again before its rows: no
    // more blocks than fill the GPU once (4 blocks of 256 threads an SM, k_matvec_sb's 128
    // registers 2), a warp taking several rows.
    int64_t sb_launch_blocks(int64_t items, bool sb) const {
        return std::min<int64_t>((items + 7) / 8, (sb ? sb_blocks_ : 4) * sm_count_);
    }
    // k_matvec_sb's lanes a row for a product launch whose rows hold nsb super-blocks: the count
    // whose lanes walk the fewest super-blocks one after another (a warp's rounds of rows times a
    // row's rounds of super-blocks), ties to as many lanes as a row's super-blocks (8, 16 or 32).
    // The 122B's 12 super-block rows on 16 lanes left a quarter of them idle; on 6 lanes (5 rows a
    // warp, two rounds) its Gated DeltaNet inputs' 20608 rows take 4 super-blocks a lane, not 5.
    // BIGMOE_CUDA_SB_LANES=L (1-32) takes L lanes for every launch, =0 the tie's count.
    int64_t sb_lanes(const MatvecArgs& a, int64_t nsb) const {
        if (sb_lanes_ > 0) return std::min<int64_t>(sb_lanes_, 32);
        const int64_t rule = nsb <= 8 ? 8 : nsb <= 16 ? 16 : 32;
        if (sb_lanes_ == 0) return rule;
        const auto walk = [&](int64_t L) {
            int64_t items = 0;
            for (int64_t i = 0; i < a.n_products; ++i) items += sb_items(a.p[i], L);
            const int64_t warps = sb_launch_blocks(items, true) * 8;
            return (items + warps - 1) / warps * ((nsb + L - 1) / L);
        };
        // the choice per launch shape, remembered: this runs for every product of every step, on
        // the host between one token's logits and the next step's graph launch
        LaneKey key{};
        key[0] = nsb;
        for (int64_t i = 0; i < a.n_products; ++i) key[size_t(1 + i)] = a.p[i].n_out * 64 + a.p[i].type;
        for (const auto& [k, L] : lane_choices_)
            if (k == key) return L;
        int64_t best = rule, best_walk = walk(best);
        for (int64_t L = 32; L >= 2; --L) {
            const int64_t w = walk(L);
            if (w < best_walk) best = L, best_walk = w;
        }
        if (lane_choices_.size() < 64) lane_choices_.emplace_back(key, best);
        return best;
    }
    using LaneKey = std::array<int64_t, 1 + k_matvec_products>;
    mutable std::vector<std::pair<LaneKey, int64_t>> lane_choices_;

    // Products of one input for up to k_matvec_max_tokens tokens as one in-kernel-quantizing
    // kernel; false (nothing enqueued) when their activations do not fit in its shared memory.
    static constexpr int64_t k_matvec_max_tokens = 8;
    bool matvec(Tensor x, const Product* ps, size_t n) {
        MatvecArgs a{};
        a.x = x.data;
        a.xs = x.stride;
        a.n_in = x.cols;
        a.T = x.rows;
        a.n_products = int64_t(n);
        int64_t rows = 0;
        for (size_t i = 0; i < n; ++i) {
            const Weight& w = *ps[i].w;
            const int at = act_type(int(w.type));
            int64_t slot = -1;
            if (at != k_f32) {
                for (int64_t s = 0; s < a.n_slots; ++s)
                    if (a.slot_type[s] == at) slot = s;
                if (slot < 0) {
                    slot = a.n_slots++;
                    a.slot_type[slot] = at;
                    a.slot_arb[slot] = int64_t(act_row_bytes(at, x.cols));
                    a.slot_off[slot] = a.smem;
                    a.smem += a.slot_arb[slot] * x.rows;
                }
            }
            a.p[i] = {
                int64_t(w.type), wbytes(w), int64_t(w.row_bytes), w.n_out(), ps[i].out.data, ps[i].out.stride, slot, 0};
            rows += w.n_out();
        }
        // One token: the K-quant products a lane per super-block (k_matvec_sb), 32 / sb_lanes rows
        // a warp.
        int64_t items = rows;
        if (sb_ && x.rows == 1 && x.cols % 256 == 0) {
            for (size_t i = 0; i < n; ++i) {
                if (sb_type(a.p[i].type)) {
                    a.sb = 1;
                    for (int64_t s = 0; s < a.n_slots; ++s)
                        if (a.slot_type[s] == k_q8_k) a.sb_slot = s;
                }
            }
            if (a.sb) {
                a.sb_lanes = sb_lanes(a, x.cols / 256);
                items = 0;
                for (size_t i = 0; i < n; ++i) a.p[i].items_end = items += sb_items(a.p[i], a.sb_lanes);
                a.items_end = items_end_ ? 1 : 0;
                a.swz_off = a.smem;
                a.smem += x.cols;
            }
        }
        if (a.smem > k_products_smem) return false;
        a.blocks = sb_launch_blocks(items, a.sb != 0);
        enqueue(a);
        return true;
    }

    // Batches of this many tokens or more take the tensor-core products (the same bits; faster
    // once a weight tile serves enough tokens).
    static constexpr int64_t k_mma_min_tokens = 16;
    // A product with fewer rows than a tensor-core tile leaves most of each tile idle: alone, such
    // products (the 35B's Gated DeltaNet beta and alpha) take the warp kernels (the same bits).
    static constexpr int64_t k_mma_min_rows = 64;
    int64_t use_mma(int64_t rows) const { return mma_ && rows >= k_mma_min_tokens; }

    // x's rows as a product with weight type `wt` reads them (*arb bytes per row), in scratch.
    const uint8_t* activations(int wt, Tensor x, int64_t* arb) {
        const int at = act_type(wt);
        if (at == k_f32) {
            *arb = x.stride * 4;
            return reinterpret_cast<const uint8_t*>(x.data);
        }
        Tensor buf = scratch(x.rows, int64_t(act_row_bytes(at, x.cols) / 4));
        *arb = buf.stride * 4;
        enqueue(QuantizeArgs{at, x.data, x.stride, x.cols, x.rows, reinterpret_cast<uint8_t*>(buf.data), *arb});
        return reinterpret_cast<const uint8_t*>(buf.data);
    }
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

}  // namespace

bool cuda_built() {
    return true;
}

Result<CudaDeviceInfo> cuda_device_info(int device) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (e == cudaErrorNoDevice) return make_error("no CUDA device found", ErrorKind::unsupported);
        if (e == cudaErrorInsufficientDriver)
            return make_error("no NVIDIA driver new enough for this build's CUDA " +
                                  std::to_string(CUDART_VERSION / 1000) +
                                  " runtime is loaded (no GPU, or a driver missing or too old)",
                              ErrorKind::unsupported);
        return make_error(std::string("no usable CUDA device: ") + cudaGetErrorString(e), ErrorKind::unsupported);
    }
    if (n == 0) return make_error("no CUDA device found", ErrorKind::unsupported);
    if (device < 0 || device >= n)
        return make_error("CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(n) + " found)",
                          ErrorKind::bad_input);
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, device) != cudaSuccess)
        return make_error("cannot read CUDA device " + std::to_string(device), ErrorKind::unsupported);
    CudaDeviceInfo info;
    info.name = prop.name;
    info.compute_major = prop.major;
    info.compute_minor = prop.minor;
    info.multiprocessors = prop.multiProcessorCount;
    info.total_bytes = prop.totalGlobalMem;
    if (cudaSetDevice(device) == cudaSuccess) {
        size_t free = 0, total = 0;
        if (cudaMemGetInfo(&free, &total) == cudaSuccess) info.free_bytes = free;
    }
    return info;
}

Result<std::unique_ptr<Backend>> make_cuda_backend(int device) {
    auto info = cuda_device_info(device);
    if (!info) return info.error();
    return std::unique_ptr<Backend>(new CudaBackend(device));
}

}  // namespace bigmoe
