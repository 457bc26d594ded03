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
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_backend_impl.h"
#include "core/hash.h"

namespace bigmoe {
namespace cuda {

CudaBackend::CudaBackend(int device) : arena_(*this) {
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

CudaBackend::~CudaBackend() {
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

bool CudaBackend::supports(Op op, DType t) const {
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

Result<void> CudaBackend::prepare_weight(Weight& w) {
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

void* CudaBackend::alloc(size_t bytes) {
    void* p = nullptr;
    // whole 16-byte units: attention stages cache rows by 16-byte copies from the boundary
    // below each head's bytes, which may reach past a row that ends a buffer
    if (cudaMalloc(&p, (std::max<size_t>(bytes, 1) + 15) / 16 * 16) != cudaSuccess) {
        cudaGetLastError();  // an allocation failure is not sticky; callers report it
        return nullptr;
    }
    return p;
}

void CudaBackend::download(void* dst, const void* src, size_t bytes) {
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

int64_t CudaBackend::time_mark() {
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

double CudaBackend::mark_seconds(int64_t from, int64_t to) {
    if (from < 0 || to >= n_marks_ || from > to) return 0;
    CU(cudaEventSynchronize(marks_[size_t(to)]));
    float ms = 0;
    CU(cudaEventElapsedTime(&ms, marks_[size_t(from)], marks_[size_t(to)]));
    return double(ms) / 1000.0;
}

void CudaBackend::begin_batch(const BatchState& b) {
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
            for (const KvBlock* k : b.kv[il]) kv.push_back({k->k, k->v, int(k->type_k), int(k->type_v), k->capacity});
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
        CU(cudaMemcpyAsync(static_cast<uint8_t*>(batch_dev_) + off_ids_, argmax_dev_, size_t(rows) * sizeof(int32_t),
                           cudaMemcpyDeviceToDevice, stream_));
    else if (!ids_given)
        batch_tokens_ = nullptr;  // get_rows sends its ids itself
    start_step(fnv1a(&descriptors, sizeof descriptors, shape));
}

void CudaBackend::argmax_rows(Tensor x, int32_t* ids) {
    if (x.rows == 0) return;
    if (!argmax_) return Backend::argmax_rows(x, ids);
    const ScratchMark mark = scratch_mark();
    download(ids, enqueue_argmax(x), size_t(x.rows) * sizeof(int32_t));
    scratch_rewind(mark);
}

int32_t* CudaBackend::enqueue_argmax(Tensor x) {
    const int64_t blocks = (x.cols + k_argmax_chunk - 1) / k_argmax_chunk;
    const bool room_kept = x.rows <= argmax_cap_;
    // the keys and indices in the floats' room (scratch rows start 64-byte aligned)
    float* room = scratch(1, x.rows * (2 * blocks + (room_kept ? 0 : 1))).data;
    uint64_t* keys = reinterpret_cast<uint64_t*>(room);
    int32_t* dev_ids = room_kept ? argmax_dev_ : reinterpret_cast<int32_t*>(room + 2 * x.rows * blocks);
    enqueue(ArgmaxArgs{x.data, x.stride, x.rows, x.cols, blocks, keys, dev_ids});
    return dev_ids;
}

void CudaBackend::argmax_rows_start(Tensor x) {
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

void CudaBackend::argmax_rows_end(int32_t* ids, int64_t n) {
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

void CudaBackend::get_rows(const Weight& emb, const int32_t* ids, int64_t n, Tensor out) {
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

void CudaBackend::rms_norm_gate(Tensor x, const Weight& w, float eps, Tensor z, Tensor out) {
    const int64_t g = w.n_in();
    if (!fuse_) return Backend::rms_norm_gate(x, w, eps, z, out);
    if (x.rows == 0 || x.cols < g) return;
    enqueue(NormArgs{x.data, x.stride, wf32(w), g, x.rows, x.cols / g, double(eps), out.data, out.stride, nullptr, 0,
                     z.data, z.stride});
}

void CudaBackend::add_rms_norm(Tensor h, Tensor y, const Weight& w, float eps, Tensor out) {
    const int64_t g = w.n_in();
    if (h.rows == 0) return;
    if (g != h.cols) return Backend::add_rms_norm(h, y, w, eps, out);
    enqueue(NormArgs{h.data, h.stride, wf32(w), g, h.rows, 1, double(eps), out.data, out.stride, y.data, y.stride,
                     nullptr, 0});
}

void CudaBackend::attention_inputs(Tensor qg, Tensor k, const AttentionInputs& p, Tensor q_out, Tensor k_out,
                                   Tensor gate_out) {
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

void CudaBackend::attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) {
    const int64_t rows = std::min(q.rows, n_rows_);
    if (rows == 0) return;
    // check_shapes refuses such models as they load: these three checks guard against bugs
    if (p.head_dim > k_att_max_d || p.head_dim % 4 != 0) {
        std::fprintf(stderr, "bigmoe: CUDA attention takes head sizes that are multiples of 4 up to %lld, got %lld\n",
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

void CudaBackend::ssm_conv(Tensor mixed, const Weight& conv_w, const GdnParams& p, int64_t il, Tensor out) {
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

void CudaBackend::gated_delta_net(Tensor u, Tensor beta, Tensor alpha, const Weight& dt_bias, const Weight& ssm_a,
                                  const GdnParams& p, int64_t il, Tensor out) {
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

void CudaBackend::start_step(uint64_t shape) {
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

void CudaBackend::finish_step() {
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

void CudaBackend::abandon_replay() {
    mode_ = Mode::eager;
    for (size_t i = 0; i < issued_; ++i) rec_->ops[i](stream_);
    rec_->forget();
    rec_->seen = 0;
    ++rec_->misses;
    rec_ = nullptr;
}

}  // namespace cuda

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
    return std::unique_ptr<Backend>(new cuda::CudaBackend(device));
}

}  // namespace bigmoe
