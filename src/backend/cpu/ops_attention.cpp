// Causal attention over each sequence's KV block (any cache type). Every (token, head) pair is
// computed independently in a fixed order over key positions, so a token's result does not
// depend on the batch it came in.
//
// f32 and f16 caches are read directly by the kernels, and Q8_0 caches by the x86 tables' (the
// same bits as through a tile). The other types (bf16 and the other 32-element block types) are
// dequantized a tile at a time: a tile's rows of one KV head, into f32 that every query of the
// task then reads; the cache is never converted as a whole. Values are quantized as
// they are written, each row on its own, so a row's bytes do not depend on the batch either.
//
// With an f16 cache the query is rounded to f16, as the reference engine does. Softmax and the
// V accumulation stay in f32 for every batch size: the reference's CPU kernel accumulates V in
// f16 for small batches (decode), which measurably drifts at long context (> 1e-3 relative on
// the 297-token fixture prompt), so bigmoe does not copy it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/fast_exp.h"
#include "core/fp16.h"
#include "quant/quants.h"

namespace bigmoe::cpu {

namespace {

void store_row(DType type, void* base, int64_t pos, const float* src, int64_t width) {
    uint8_t* dst = static_cast<uint8_t*>(base) + size_t(pos) * row_bytes(type, width);
    if (type == DType::F32) {
        std::memcpy(dst, src, size_t(width) * 4);
    } else if (type == DType::F16) {
        uint16_t* d = reinterpret_cast<uint16_t*>(dst);
        for (int64_t i = 0; i < width; ++i) d[i] = f32_to_fp16(src[i]);
    } else {
        quantize_row(type, src, dst, width);
    }
}

// Types whose rows are stored by a copy or a conversion per value; the others are quantized.
bool stored_plainly(DType t) {
    return t == DType::F32 || t == DType::F16;
}

}  // namespace

void CpuBackend::attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) {
    const std::vector<SeqSpan>& spans = batch().spans;
    const std::vector<KvBlock*>& kv = batch().kv.at(size_t(il));
    const int64_t D = p.head_dim, width = p.n_head_kv * D;
    BM_CHECK(q.cols == p.n_head * D && k.cols == width && v.cols == width && out.cols == p.n_head * D);
    BM_CHECK(kv.size() == spans.size());
    std::vector<std::pair<size_t, int64_t>> rows;  // (span, token): the rows to write
    for (size_t si = 0; si < spans.size(); ++si) {
        BM_CHECK(spans[si].pos0 + spans[si].n_tokens <= kv[si]->capacity);
        BM_CHECK(width % traits(kv[si]->type_k).block_elems == 0 && D % traits(kv[si]->type_k).block_elems == 0);
        BM_CHECK(width % traits(kv[si]->type_v).block_elems == 0 && D % traits(kv[si]->type_v).block_elems == 0);
        for (int64_t i = 0; i < spans[si].n_tokens; ++i) rows.emplace_back(si, i);
    }
    // quantizing is per row, so rows can be written by any thread
    const bool quantized = std::any_of(kv.begin(), kv.end(), [](const KvBlock* b) {
        return !stored_plainly(b->type_k) || !stored_plainly(b->type_v);
    });
    auto store = [&](int64_t rb, int64_t re, int) {
        for (int64_t r = rb; r < re; ++r) {
            const auto [si, i] = rows[size_t(r)];
            const SeqSpan& s = spans[si];
            const KvBlock& b = *kv[si];
            store_row(b.type_k, b.k, s.pos0 + i, k.row(s.first + i), width);
            store_row(b.type_v, b.v, s.pos0 + i, v.row(s.first + i), width);
        }
    };
    if (quantized && rows.size() > 1)
        pool_->parallel_for(int64_t(rows.size()), store);
    else
        store(0, int64_t(rows.size()), 0);
    // Flash attention. A query's keys are cut at fixed absolute positions into chunks of
    // k_kv_chunk; each chunk gives a partial softmax (its maximum, mass and weighted values, by an
    // online softmax over tiles of k_kv_tile keys), and the partials are merged in chunk order.
    // Tasks are (sequence, block of k_q_tile tokens) with every head: a tile's K/V rows are read
    // whole (all KV heads; the heads of a KV group share each row they load). With few tasks
    // (decode, verification) the chunks of a task are work items of their own, merged afterwards,
    // so long contexts use every thread; otherwise a task runs its chunks in order. Either way a
    // query's arithmetic depends only on its own position, never on the batch around it.
    constexpr int64_t k_q_tile = 8, k_kv_tile = 64, k_kv_chunk = 256;
    const int64_t group = p.n_head / p.n_head_kv;
    struct Task {
        size_t span;
        int64_t t0, t1, n_chunks;
    };
    std::vector<Task> tasks;
    int64_t max_chunks = 0, max_q = 0;  // max_q: the most queries (tokens x heads) of a task
    for (size_t si = 0; si < spans.size(); ++si)
        for (int64_t t0 = 0; t0 < spans[si].n_tokens; t0 += k_q_tile) {
            const int64_t t1 = std::min(spans[si].n_tokens, t0 + k_q_tile);
            const int64_t n_chunks = (spans[si].pos0 + t1 - 1) / k_kv_chunk + 1;
            tasks.push_back({si, t0, t1, n_chunks});
            max_chunks = std::max(max_chunks, n_chunks);
            max_q = std::max(max_q, (t1 - t0) * p.n_head);
        }
    if (tasks.empty()) return;
    // Few tasks (decode, verification): each (task, chunk) is a work item, and with fewer of
    // those than threads each KV head's queries are one (a query's arithmetic is its head's loop
    // either way): a decode step before its first full chunk was one item, every head on one
    // thread (~1 ms a token of the 35B's at 16 threads).
    const bool few = int64_t(tasks.size()) < 2 * int64_t(pool_->size());
    const int64_t head_parts =
        few && int64_t(tasks.size()) * max_chunks < int64_t(pool_->size()) ? p.n_head_kv : int64_t(1);
    const bool split = few && (max_chunks > 1 || head_parts > 1);

    // A task's queries: KV head g's block holds (token i, head g * group + h) at row
    // g * (n_tokens * group) + i * group + h. A partial result of the task over one chunk is
    // [m (max_q)][l (max_q)][acc (max_q x D)]: each query's running maximum score, softmax mass
    // and weighted values.
    const int64_t part_floats = max_q * (D + 2);
    // Query j of a task: its token (0 .. t1 - t0 - 1) and its head.
    auto query = [&](const Task& task, int64_t j) {
        const int64_t nqg = (task.t1 - task.t0) * group, g = j / nqg, r = j % nqg;
        return std::pair<int64_t, int64_t>{r / group, g * group + r % group};
    };
    auto n_queries = [&](const Task& task) { return (task.t1 - task.t0) * p.n_head; };
    // Every task's queries, rounded once (each of its chunks reads them).
    Tensor qv = scratch(int64_t(tasks.size()), max_q * D);  // task ti's query j at row ti + j * D
    pool_->parallel_for(int64_t(tasks.size()), [&](int64_t tb, int64_t te, int) {
        for (int64_t ti = tb; ti < te; ++ti) {
            const Task& task = tasks[size_t(ti)];
            const SeqSpan& s = spans[task.span];
            const bool f16k = kv[task.span]->type_k == DType::F16;
            for (int64_t j = 0; j < n_queries(task); ++j) {
                const auto [i, head] = query(task, j);
                const float* qr = q.row(s.first + task.t0 + i) + head * D;
                float* dst = qv.row(ti) + j * D;
                // The reference engine rounds the query to the cache precision for the K·Q product.
                for (int64_t d = 0; d < D; ++d) dst[d] = f16k ? fp16_to_f32(f32_to_fp16(qr[d])) : qr[d];
            }
        }
    });
    struct Scratch {
        std::vector<float> s, pr;
        std::vector<int64_t> n_of;
        std::vector<float> kt, vt;  // a tile of one KV head's keys / values, dequantized
        Scratch(int64_t max_q, int64_t D)
            : s(size_t(max_q * k_kv_tile)),
              pr(s.size()),
              n_of(size_t(max_q)),
              kt(size_t(k_kv_tile * D)),
              vt(kt.size()) {}
    };
    // The partial softmax of chunk c for the task's queries of KV heads g0 .. g1 - 1.
    auto chunk = [&](int64_t ti, int64_t c, Scratch& w, float* part, int64_t g0, int64_t g1) {
        const Task& task = tasks[size_t(ti)];
        const SeqSpan& s = spans[task.span];
        const float* qt = qv.row(ti);
        const KvBlock& b = *kv[task.span];
        // the kernels reading a type in place; none: its rows go through a dequantized tile
        const KvScoresFn scores = b.type_k == DType::F32    ? k_->kv_scores_f32
                                  : b.type_k == DType::F16  ? k_->kv_scores_f16
                                  : b.type_k == DType::Q8_0 ? k_->kv_scores_q8_0
                                                            : nullptr;
        const KvAccumFn accum = b.type_v == DType::F32    ? k_->kv_accum_f32
                                : b.type_v == DType::F16  ? k_->kv_accum_f16
                                : b.type_v == DType::Q8_0 ? k_->kv_accum_q8_0
                                                          : nullptr;
        const bool direct_k = scores != nullptr, direct_v = accum != nullptr;
        // a row's bytes, and where KV head g starts in it
        const size_t k_row = row_bytes(b.type_k, width), v_row = row_bytes(b.type_v, width);
        const size_t k_head = row_bytes(b.type_k, D), v_head = row_bytes(b.type_v, D);
        const int64_t nqg = (task.t1 - task.t0) * group, qa = g0 * nqg, qb = g1 * nqg;
        const int64_t c0 = c * k_kv_chunk, c1 = std::min(c0 + k_kv_chunk, s.pos0 + task.t1);
        float *m = part, *l = part + max_q, *acc = part + 2 * max_q;
        std::fill(m + qa, m + qb, -INFINITY);
        std::fill(l + qa, l + qb, 0.0f);
        std::fill(acc + qa * D, acc + qb * D, 0.0f);
        const int64_t n_keys = s.pos0 + task.t1;  // the task's keys: what exists to prefetch
        for (int64_t kt = c0; kt < c1; kt += k_kv_tile) {
            const int64_t n = std::min(k_kv_tile, c1 - kt);
            // At depth the cache is read from memory, and the rows (one head's part of each) are
            // too far apart for the hardware prefetchers (decode at depth 8192 spent ~half its
            // attention time waiting on those loads): the kernels prefetch the next tile's rows
            // (those of the task's keys) as they read this one's.
            static_assert(k_kv_tile == k_kv_prefetch_rows, "the kernels prefetch the next tile");
            for (int64_t g = g0; g < g1; ++g) {
                const int64_t j0 = g * nqg;
                const uint8_t* kp = static_cast<const uint8_t*>(b.k) + size_t(kt) * k_row + size_t(g) * k_head;
                if (direct_k) {
                    scores(qt + j0 * D, nqg, kp, width, n, D, p.scale, w.s.data() + j0 * k_kv_tile, k_kv_tile,
                           n_keys - kt);
                } else {
                    k_->kv_tile[int(b.type_k)](kp, k_row, n, D, w.kt.data(), n_keys - kt);
                    k_->kv_scores_f32(qt + j0 * D, nqg, w.kt.data(), D, n, D, p.scale, w.s.data() + j0 * k_kv_tile,
                                      k_kv_tile, 0);
                }
                for (int64_t j = j0; j < j0 + nqg; ++j) {
                    const int64_t pos = s.pos0 + task.t0 + (j - j0) / group;  // query j's position
                    const int64_t nj = std::clamp<int64_t>(pos + 1 - kt, 0, n);
                    w.n_of[size_t(j)] = nj;
                    if (nj == 0) continue;
                    const float* sj = w.s.data() + j * k_kv_tile;
                    const float tile_max = *std::max_element(sj, sj + nj);
                    if (tile_max > m[j]) {
                        if (l[j] > 0) {  // rescale what the earlier tiles gathered
                            const float corr = fast_exp::exp(m[j] - tile_max);
                            l[j] *= corr;
                            for (int64_t d = 0; d < D; ++d) acc[j * D + d] *= corr;
                        }
                        m[j] = tile_max;
                    }
                    float* pj = w.pr.data() + j * k_kv_tile;
                    l[j] += k_->exp_shift(sj, m[j], pj, nj);
                }
                const uint8_t* vp = static_cast<const uint8_t*>(b.v) + size_t(kt) * v_row + size_t(g) * v_head;
                if (direct_v) {
                    accum(w.pr.data() + j0 * k_kv_tile, k_kv_tile, w.n_of.data() + j0, nqg, vp, width, D, acc + j0 * D,
                          n_keys - kt);
                } else {
                    // only the keys some query of the task sees
                    const int64_t nv = *std::max_element(w.n_of.data() + j0, w.n_of.data() + j0 + nqg);
                    k_->kv_tile[int(b.type_v)](vp, v_row, nv, D, w.vt.data(), n_keys - kt);
                    k_->kv_accum_f32(w.pr.data() + j0 * k_kv_tile, k_kv_tile, w.n_of.data() + j0, nqg, w.vt.data(), D,
                                     D, acc + j0 * D, 0);
                }
            }
        }
    };
    // total += next (the partial of the following chunk), for nq queries.
    auto merge = [&](float* total, const float* next, int64_t nq) {
        for (int64_t j = 0; j < nq; ++j) {
            const float nm = next[j], nl = next[max_q + j];
            float &tm = total[j], &tl = total[max_q + j];
            float* ta = total + 2 * max_q + j * D;
            const float* na = next + 2 * max_q + j * D;
            if (nl == 0) continue;  // the chunk held none of this query's keys
            if (tl == 0) {
                tm = nm;
                tl = nl;
                std::copy_n(na, D, ta);
                continue;
            }
            const float mx = std::max(tm, nm);
            const float a = fast_exp::exp(tm - mx), b = fast_exp::exp(nm - mx);
            tm = mx;
            tl = tl * a + nl * b;
            for (int64_t d = 0; d < D; ++d) ta[d] = ta[d] * a + na[d] * b;
        }
    };
    auto finish = [&](const Task& task, const float* total) {
        const SeqSpan& s = spans[task.span];
        for (int64_t j = 0; j < n_queries(task); ++j) {
            const auto [i, head] = query(task, j);
            const float* a = total + 2 * max_q + j * D;
            float* o = out.row(s.first + task.t0 + i) + head * D;
            const float inv = 1.0f / total[max_q + j];
            for (int64_t d = 0; d < D; ++d) o[d] = a[d] * inv;
        }
    };

    if (!split) {
        // Causal prefill: a later tile reads more keys (the last ones all of them), so tasks are
        // handed out one at a time, longest first; contiguous ranges left the thread with the
        // last tiles doing ~2x the average at 16 threads.
        struct Work {
            Scratch w;
            std::vector<float> total, next;
            Work(int64_t max_q, int64_t D, int64_t part) : w(max_q, D), total(size_t(part)), next(size_t(part)) {}
        };
        std::vector<std::unique_ptr<Work>> works(static_cast<size_t>(pool_->size()));
        const int64_t n_tasks = int64_t(tasks.size());
        pool_->parallel_tasks(n_tasks, [&](int64_t k, int thread) {
            auto& slot = works[size_t(thread)];
            if (!slot) slot = std::make_unique<Work>(max_q, D, part_floats);
            Work& wk = *slot;
            const int64_t ti = n_tasks - 1 - k;
            const Task& task = tasks[size_t(ti)];
            chunk(ti, 0, wk.w, wk.total.data(), 0, p.n_head_kv);
            for (int64_t c = 1; c < task.n_chunks; ++c) {
                chunk(ti, c, wk.w, wk.next.data(), 0, p.n_head_kv);
                merge(wk.total.data(), wk.next.data(), n_queries(task));
            }
            finish(task, wk.total.data());
        });
        return;
    }
    // One work item per (task, chunk[, KV head]), merged per task in chunk order afterwards.
    std::vector<int64_t> first(tasks.size() + 1, 0);
    for (size_t i = 0; i < tasks.size(); ++i) first[i + 1] = first[i] + tasks[i].n_chunks;
    Tensor parts = scratch(first.back(), part_floats);
    pool_->parallel_for(first.back() * head_parts, [&](int64_t b0, int64_t e0, int) {
        Scratch w(max_q, D);
        for (int64_t it = b0; it < e0; ++it) {
            const int64_t item = it / head_parts, g0 = head_parts == 1 ? 0 : it % head_parts;
            const int64_t g1 = head_parts == 1 ? p.n_head_kv : g0 + 1;
            const int64_t ti = std::upper_bound(first.begin(), first.end(), item) - first.begin() - 1;
            chunk(ti, item - first[size_t(ti)], w, parts.row(item), g0, g1);
        }
    });
    pool_->parallel_for(int64_t(tasks.size()), [&](int64_t tb, int64_t te, int) {
        for (int64_t ti = tb; ti < te; ++ti) {
            const Task& task = tasks[size_t(ti)];
            float* total = parts.row(first[size_t(ti)]);
            for (int64_t c = 1; c < task.n_chunks; ++c) merge(total, parts.row(first[size_t(ti)] + c), n_queries(task));
            finish(task, total);
        }
    });
}

}  // namespace bigmoe::cpu
