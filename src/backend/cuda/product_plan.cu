// Which kernels a layer's products and routed experts take, and their launch shapes: the
// one-input products of up to 8 tokens as one in-kernel-quantizing kernel, larger batches as
// tensor-core launches of one weight type, the experts' decode kernels or their grouped prefill.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "backend/cuda/cuda_backend_impl.h"

namespace bigmoe::cuda {

void CudaBackend::matmuls(Tensor x, const std::vector<Product>& products) {
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
    auto joins_mma = [&](const Product& p) {
        if (!use_mma(x.rows) || !act_quantized(act_type(int(p.w->type)))) return false;
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
        if (group_mma_)
            for (MatmulMmaArgs& c : groups)
                if (c.type == int64_t(p.w->type) && c.act == act && c.n_parts < k_mma_parts) g = &c;
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

bool CudaBackend::routed_experts(Tensor x, Tensor router_logits, const MoeWeights& m, const SharedExpert* shared,
                                 Tensor out) {
    const int64_t T = x.rows, K = m.n_expert_used, E = m.n_expert, F = m.n_ff, N = x.cols;
    if (T == 0) return true;
    const ScratchMark mark = scratch_mark();
    const Weight& wg = m.gate_up ? *m.gate_up : *m.gate;
    const Weight& wu = m.gate_up ? *m.gate_up : *m.up;
    const int ag_t = act_type(int(wg.type)), au_t = act_type(int(wu.type)), ad_t = act_type(int(m.down->type));
    // Decode-sized batches: routing inside the gate/up kernel and every activation quantized
    // in shared memory (two kernels); larger batches: routing and quantization once, before.
    const int64_t gu_smem = 16 + int64_t(act_row_bytes(ag_t, N)) + (au_t != ag_t ? int64_t(act_row_bytes(au_t, N)) : 0);
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

void CudaBackend::grouped_experts(Tensor x, const MoeWeights& m, const int32_t* ids, const float* wts, int64_t T,
                                  Tensor out) {
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

int64_t CudaBackend::sb_launch_blocks(int64_t items, bool sb) const {
    return std::min<int64_t>((items + 7) / 8, (sb ? sb_blocks_ : 4) * sm_count_);
}

int64_t CudaBackend::sb_lanes(const MatvecArgs& a, int64_t nsb) const {
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

bool CudaBackend::matvec(Tensor x, const Product* ps, size_t n) {
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

const uint8_t* CudaBackend::activations(int wt, Tensor x, int64_t* arb) {
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

}  // namespace bigmoe::cuda
