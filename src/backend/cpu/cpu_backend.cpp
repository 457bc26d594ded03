#include "backend/cpu/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "backend/cpu/repack.h"
#include "core/argmax.h"
#include "core/memory.h"
#include "gguf/names.h"
#include "quant/quants.h"

namespace bigmoe {

std::unique_ptr<Backend> make_cpu_backend(int n_threads, bool repack) {
    auto b = std::make_unique<cpu::CpuBackend>(n_threads);
    b->set_pack_weights(repack);
    return b;
}

namespace cpu {

namespace {
constexpr size_t k_huge_page = size_t(1) << 21;

// Buffers of 2 MiB and more start on a 2 MiB boundary and ask for transparent huge pages: a
// decode step streams every weight once, and with 4 KiB pages each page start is a TLB miss the
// prefetchers do not run past (decode 100-111 -> 115-125 t/s on bench-1b, 2-core EPYC). Smaller
// buffers are 64-byte aligned.
size_t page_align(size_t bytes) {
    return bytes >= k_huge_page ? k_huge_page : 64;
}
// What alloc_pages(bytes) takes: bytes rounded up to its alignment.
size_t page_rounded(size_t bytes) {
    const size_t align = page_align(bytes);
    return (std::max<size_t>(bytes, 1) + align - 1) / align * align;
}
void* alloc_pages(size_t bytes) {
    const size_t align = page_align(bytes), size = page_rounded(bytes);
    void* p = std::aligned_alloc(align, size);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (p && align == k_huge_page) madvise(p, size, MADV_HUGEPAGE);  // advice only: ignore a refusal
#endif
    return p;
}
}  // namespace

CpuBackend::CpuBackend(int n_threads, const Kernels* k)
    : pool_(ThreadPool::shared(n_threads)), k_(k ? k : &cpu::kernels()) {}

CpuBackend::~CpuBackend() {
    arena_.release();
    for (void* p : packed_) dealloc(p);
}

// Three quarters of the memory the kernel reports available (KV cache and scratch need the
// rest); no limit when it cannot be read.
size_t CpuBackend::default_pack_budget() {
    const uint64_t avail = host_memory_available();
    return avail == UINT64_MAX ? SIZE_MAX : size_t(avail / 4 * 3);
}

uint64_t CpuBackend::memory_available() const {
    return host_memory_available();
}

bool CpuBackend::supports(Op op, DType t) const {
    switch (op) {
        case Op::get_rows:
        case Op::matmul:
        case Op::moe:
            return k_->vec_dot[int(t)] != nullptr;
        case Op::attention:
            return is_cache_type(t);
    }
    return false;
}

Result<void> CpuBackend::prepare_weight(Weight& w) {
    if (!supports(Op::matmul, w.type))
        return make_error("CPU backend: weight '" + w.name() + "' has unsupported type " + traits(w.type).name);
    // the token embedding's lookup reads rows one by one (not the MTP blocks', which do not run)
    if (!w.multiplied && w.info && w.info->name == gguf::tensor::token_embd) populate_pages(w.data, w.info->nbytes);
    if (!pack_weights_ || !w.multiplied || w.backend_data || !k_->packed_tile[int(w.type)][0] ||
        !packable(w.type, w.n_in()) || w.n_out() % k_pack_rows != 0)
        return {};
    // Products read a packed copy (repack.h); lookups keep reading the file's rows. Copies stop
    // where they would take more than the memory budget (the rest keep the file's layout).
    const int64_t groups = w.n_out() * w.ne[2] * w.ne[3] / k_pack_rows;
    const size_t group_bytes = size_t(k_pack_rows) * w.row_bytes;
    const size_t bytes = size_t(groups) * group_bytes;
    if (pack_budget_ == k_budget_unset) pack_budget_ = default_pack_budget();
    uint8_t* dst = page_rounded(bytes) <= pack_budget_ ? static_cast<uint8_t*>(alloc_pages(bytes)) : nullptr;
    if (!dst) {
        if (!pack_warned_)
            std::fprintf(stderr,
                         "bigmoe: not enough free memory to pack every weight; the rest keep the file's layout "
                         "(slower products; --no-repack skips packing)\n");
        pack_warned_ = true;
        return {};
    }
    pack_budget_ -= page_rounded(bytes);
    const uint8_t* src = static_cast<const uint8_t*>(w.data);
    pool_->parallel_for(groups, [&](int64_t b, int64_t e, int) {
        for (int64_t g = b; g < e; ++g)
            pack_rows(w.type, src + size_t(g) * group_bytes, w.row_bytes, w.n_in(), dst + size_t(g) * group_bytes);
    });
    packed_.push_back(dst);
    w.backend_data = dst;
    return {};
}

void* CpuBackend::alloc(size_t bytes) {
    return alloc_pages(bytes);
}
void CpuBackend::dealloc(void* p) {
    std::free(p);
}
void CpuBackend::upload(void* dst, const void* src, size_t n) {
    std::memcpy(dst, src, n);
}
void CpuBackend::download(void* dst, const void* src, size_t n) {
    std::memcpy(dst, src, n);
}
void CpuBackend::argmax_rows(Tensor x, int32_t* ids) {
    for (int64_t r = 0; r < x.rows; ++r) ids[r] = argmax(x.data + r * x.stride, x.cols);
}
void CpuBackend::copy(void* dst, const void* src, size_t n) {
    std::memmove(dst, src, n);
}
void CpuBackend::fill_zero(void* dst, size_t n) {
    std::memset(dst, 0, n);
}

void CpuBackend::get_rows(const Weight& emb, const int32_t* ids, int64_t n, Tensor out) {
    BM_CHECK(out.rows == n && out.cols == emb.n_in());
    const uint8_t* base = static_cast<const uint8_t*>(emb.data);
    pool_->parallel_for(n, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t) {
            BM_CHECK(ids[t] >= 0 && ids[t] < emb.n_out());
            dequantize_row(emb.type, base + size_t(ids[t]) * emb.row_bytes, out.row(t), emb.n_in());
        }
    });
}

void CpuBackend::rms_norm(Tensor x, const Weight& w, float eps, Tensor out) {
    const int64_t g = w.n_in();
    BM_CHECK(w.type == DType::F32 && x.cols % g == 0 && out.cols == x.cols && out.rows == x.rows);
    const float* wd = static_cast<const float*>(w.data);
    pool_->parallel_for(x.rows, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t) {
            const float* xr = x.row(t);
            float* yr = out.row(t);
            for (int64_t c0 = 0; c0 < x.cols; c0 += g) {
                double sum = 0;
                for (int64_t i = 0; i < g; ++i) sum += double(xr[c0 + i]) * double(xr[c0 + i]);
                const float mean = float(sum / double(g));
                const float scale = 1.0f / std::sqrt(mean + eps);
                for (int64_t i = 0; i < g; ++i) yr[c0 + i] = (xr[c0 + i] * scale) * wd[i];
            }
        }
    });
}

size_t CpuBackend::quantize_rows(DType wt, Tensor x, std::vector<uint8_t>& buf) {
    const DType at = activation_type(wt);
    const size_t rb = row_bytes(at, x.cols);
    if (buf.size() < rb * size_t(x.rows)) buf.resize(rb * size_t(x.rows));
    QuantizeFn q = k_->quantize[int(at)];
    uint8_t* dst = buf.data();
    pool_->parallel_for(x.rows, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t) q(x.row(t), dst + size_t(t) * rb, x.cols);
    });
    return rb;
}

void CpuBackend::rows_product(DType wt, bool packed, const uint8_t* w, size_t w_row_bytes, int64_t r_begin,
                              int64_t r_end, const uint8_t* qx, size_t qx_row_bytes, int64_t n_tok, int64_t n_in,
                              float* out, int64_t out_stride) const {
    if (packed) {
        if (takes_gemm(wt, packed, n_tok) && r_begin % k_pack_rows == 0 && r_end % k_pack_rows == 0) {
            k_->packed_gemm[int(wt)](w + size_t(r_begin) * w_row_bytes, size_t(k_pack_rows) * w_row_bytes,
                                     (r_end - r_begin) / k_pack_rows, qx, qx_row_bytes, n_tok, n_in, out, out_stride);
            return;
        }
        // Whole groups of 8 rows (groups start at multiples of 8 from w); rows outside the range
        // are not stored. Tokens go in blocks of k_token_block: every tile of up to 4 tokens of a
        // block passes over each group of the range before the next block, so a block's
        // activations and the range's weights stay in L1 (the weights are read from memory once).
        // Two groups a tile where the table has such tiles and the tokens are enough (the second
        // group must still meet the range). BIGMOE_CPU_PAIRS=0 keeps 8-row tiles (for A/B runs).
        static const bool pairs_off = [] {
            const char* e = std::getenv("BIGMOE_CPU_PAIRS");
            return e && std::string(e) == "0";
        }();
        const bool pairs = !pairs_off && k_->packed_tile16[int(wt)][0] != nullptr && n_tok >= k_pair_min_tokens;
        for (int64_t t0 = 0; t0 < n_tok; t0 += k_token_block)
            for (int64_t g = r_begin - r_begin % k_pack_rows; g < r_end;) {
                const int64_t span = pairs && g + k_pack_rows < r_end ? 2 * k_pack_rows : k_pack_rows;
                const int64_t lo = std::max(g, r_begin), hi = std::min(g + span, r_end);
                for (int64_t t = t0; t < std::min(n_tok, t0 + k_token_block); t += 4) {
                    const int nt = int(std::min<int64_t>(4, n_tok - t));
                    const void* rows[4];
                    for (int j = 0; j < nt; ++j) rows[j] = qx + size_t(t + j) * qx_row_bytes;
                    float res[4 * 2 * k_pack_rows];
                    const uint8_t* wg = w + size_t(g) * w_row_bytes;
                    if (span == k_pack_rows)
                        k_->packed_tile[int(wt)][nt - 1](wg, rows, n_in, res);
                    else
                        k_->packed_tile16[int(wt)][nt - 1](wg, size_t(k_pack_rows) * w_row_bytes, rows, n_in, res);
                    for (int j = 0; j < nt; ++j)
                        std::copy(res + j * span + (lo - g), res + j * span + (hi - g),
                                  out + (t + j) * out_stride + (lo - r_begin));
                }
                g += span;
            }
        return;
    }
    w += size_t(r_begin) * w_row_bytes;  // rows counted from r_begin below, like out
    const int64_t n_rows = r_end - r_begin;
    GemmRowFn gemm = n_tok >= k_gemm_min_tokens ? k_->gemm_row[int(wt)] : nullptr;
    if (gemm) {
        for (int64_t r = 0; r < n_rows; ++r)
            gemm(w + size_t(r) * w_row_bytes, qx, qx_row_bytes, n_tok, n_in, out + r, out_stride);
        return;
    }
    // Tokens in tiles of up to 4; every tile passes over a block of rows before the next block,
    // so a long range is read from memory once.
    VecDotFn dot = k_->vec_dot[int(wt)];
    for (int64_t b0 = 0; b0 < n_rows; b0 += k_rows_per_task) {
        const int64_t b1 = std::min(n_rows, b0 + k_rows_per_task);
        for (int64_t t = 0; t < n_tok;) {
            const int nt = int(std::min<int64_t>(4, n_tok - t));
            VecDotTileFn f = k_->tile[int(wt)][nt - 1];
            if (!f) {
                const uint8_t* x = qx + size_t(t) * qx_row_bytes;
                for (int64_t r = b0; r < b1; ++r) out[t * out_stride + r] = dot(w + size_t(r) * w_row_bytes, x, n_in);
                ++t;
                continue;
            }
            const void* rows[4];
            for (int j = 0; j < nt; ++j) rows[j] = qx + size_t(t + j) * qx_row_bytes;
            float* o = out + t * out_stride;
            for (int64_t r = b0; r < b1; ++r) {
                float res[4];
                f(w + size_t(r) * w_row_bytes, rows, n_in, res);
                for (int j = 0; j < nt; ++j) o[j * out_stride + r] = res[j];
            }
            t += nt;
        }
    }
}

void CpuBackend::matmul(const Weight& w, Tensor x, Tensor out) {
    matmuls(x, {{&w, out}});
}

void CpuBackend::matmuls(Tensor x, const std::vector<Product>& ps) {
    static_assert(k_rows_per_task % k_pack_rows == 0);
    if (x.rows == 0) return;
    // x quantized once per activation type; the products' row blocks numbered one after another
    struct Part {
        const Weight* w;
        Tensor out;
        DType act;
        const uint8_t* qx;
        size_t qrb;
        int64_t first_task, n_tasks, rows;  // rows: a task's rows
    };
    std::vector<Part> parts;
    parts.reserve(ps.size());
    size_t n_types = 0;
    int64_t n_tasks = 0;
    for (const Product& p : ps) {
        BM_CHECK(x.cols == p.w->n_in() && p.out.cols == p.w->n_out() && p.out.rows == x.rows);
        // the many-token kernel takes several 16-row blocks per call (the activations it loads
        // for one serve the others from L1)
        const int64_t rows =
            takes_gemm(p.w->type, p.w->backend_data != nullptr, x.rows) ? k_gemm_rows_per_task : k_rows_per_task;
        Part part{p.w, p.out, activation_type(p.w->type), nullptr, 0, n_tasks, (p.w->n_out() + rows - 1) / rows, rows};
        auto same = std::find_if(parts.begin(), parts.end(), [&](const Part& q) { return q.act == part.act; });
        if (same != parts.end()) {
            part.qx = same->qx;
            part.qrb = same->qrb;
        } else {  // (quantizing another type never moves an earlier type's buffer)
            if (qbufs_.size() <= n_types) qbufs_.resize(n_types + 1);
            part.qrb = quantize_rows(p.w->type, x, qbufs_[n_types]);
            part.qx = qbufs_[n_types++].data();
        }
        parts.push_back(part);
        n_tasks += part.n_tasks;
    }
    // tasks [b, e): the pieces of each product they cover
    auto run = [&](int64_t b, int64_t e) {
        for (const Part& part : parts) {
            const int64_t lo = std::max(b, part.first_task), hi = std::min(e, part.first_task + part.n_tasks);
            if (lo >= hi) continue;
            const Weight& w = *part.w;
            const int64_t r0 = (lo - part.first_task) * part.rows,
                          r1 = std::min(w.n_out(), (hi - part.first_task) * part.rows);
            rows_product(w.type, w.backend_data != nullptr, product_bytes(w), w.row_bytes, r0, r1, part.qx, part.qrb,
                         x.rows, w.n_in(), part.out.data + r0, part.out.stride);
        }
    };
    if (x.rows <= k_stream_max_tokens) {
        // Few tokens (decode, verification): bound by memory, so one contiguous share of the rows
        // per thread, a long forward stream the prefetchers follow (blocks handed out one at a
        // time measured 20% slower at 1 token and 2.5x slower at 5).
        pool_->parallel_for(n_tasks, [&](int64_t b, int64_t e, int) { run(b, e); });
        return;
    }
    // Many tokens: small blocks handed out one at a time, each small enough to stay in cache
    // while every token passes over it (a thread's whole share was read again per token tile).
    pool_->parallel_tasks(n_tasks, [&](int64_t task, int) { run(task, task + 1); });
}

template <class F>
static void elementwise(ThreadPool& pool, Tensor out, F f) {
    pool.parallel_for(out.rows, [&](int64_t b, int64_t e, int) {
        for (int64_t t = b; t < e; ++t) f(t);
    });
}

void CpuBackend::add(Tensor a, Tensor b, Tensor out) {
    BM_CHECK(a.cols == out.cols && b.cols == out.cols);
    elementwise(*pool_, out, [&](int64_t t) {
        const float *x = a.row(t), *y = b.row(t);
        float* o = out.row(t);
        for (int64_t i = 0; i < out.cols; ++i) o[i] = x[i] + y[i];
    });
}

void CpuBackend::gather_cols(Tensor x, int64_t group, int64_t offset, int64_t width, Tensor out) {
    BM_CHECK(x.cols % group == 0 && offset + width <= group && out.cols == x.cols / group * width);
    elementwise(*pool_, out, [&](int64_t t) {
        const float* s = x.row(t);
        float* o = out.row(t);
        for (int64_t g = 0; g < x.cols / group; ++g) std::copy_n(s + g * group + offset, width, o + g * width);
    });
}

void CpuBackend::swiglu(Tensor gate, Tensor up, Tensor out) {
    BM_CHECK(gate.cols == out.cols && up.cols == out.cols);
    elementwise(*pool_, out, [&](int64_t t) {
        const float *g = gate.row(t), *u = up.row(t);
        float* o = out.row(t);
        k_->silu_mul(g, u, o, out.cols);
    });
}

void CpuBackend::mul_sigmoid(Tensor x, Tensor gate, Tensor out) {
    BM_CHECK(gate.cols == out.cols && x.cols == out.cols);
    elementwise(*pool_, out, [&](int64_t t) {
        const float *a = x.row(t), *g = gate.row(t);
        float* o = out.row(t);
        for (int64_t i = 0; i < out.cols; ++i) o[i] = a[i] * sigmoid(g[i]);
    });
}

void CpuBackend::add_gated(Tensor a, Tensor b, const Weight& gate_vec, Tensor f, Tensor out) {
    BM_CHECK(gate_vec.type == DType::F32 && gate_vec.n_in() == f.cols);
    const float* gv = static_cast<const float*>(gate_vec.data);
    elementwise(*pool_, out, [&](int64_t t) {
        const float* fr = f.row(t);
        float s = 0;
        for (int64_t i = 0; i < f.cols; ++i) s += gv[i] * fr[i];
        const float g = sigmoid(s);
        const float *x = a.row(t), *y = b.row(t);
        float* o = out.row(t);
        for (int64_t i = 0; i < out.cols; ++i) o[i] = x[i] + y[i] * g;
    });
}

void CpuBackend::rope_neox(Tensor x, int64_t head_dim, int64_t n_rot, float theta) {
    BM_CHECK(x.cols % head_dim == 0 && n_rot <= head_dim && n_rot % 2 == 0);
    const float theta_scale = std::pow(theta, -2.0f / float(n_rot));
    const int64_t half = n_rot / 2;
    // every row of the batch in one fork-join, each at its own sequence's position
    std::vector<int64_t> pos(static_cast<size_t>(x.rows));
    for (const SeqSpan& s : batch().spans)
        for (int64_t i = 0; i < s.n_tokens; ++i) pos[size_t(s.first + i)] = s.pos0 + i;
    pool_->parallel_for(x.rows, [&](int64_t b, int64_t e, int) {
        std::vector<float> cs(static_cast<size_t>(n_rot));
        for (int64_t i = b; i < e; ++i) {
            float th = float(pos[size_t(i)]);
            for (int64_t j = 0; j < half; ++j) {
                cs[2 * j] = std::cos(th);
                cs[2 * j + 1] = std::sin(th);
                th *= theta_scale;
            }
            float* r = x.row(i);
            for (int64_t h0 = 0; h0 < x.cols; h0 += head_dim) {
                float* v = r + h0;
                for (int64_t j = 0; j < half; ++j) {
                    const float a = v[j], c = v[j + half];
                    v[j] = a * cs[2 * j] - c * cs[2 * j + 1];
                    v[j + half] = a * cs[2 * j + 1] + c * cs[2 * j];
                }
            }
        }
    });
}

}  // namespace cpu
}  // namespace bigmoe
