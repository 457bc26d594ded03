#include "runtime/context.h"

#include <algorithm>
#include <cstring>

namespace bigmoe {

SeqCheckpoint::~SeqCheckpoint() {
    if (data_) backend_->dealloc(data_);
}

Result<std::unique_ptr<Context>> Context::create(Model& model, const ContextParams& p) {
    if (p.n_ctx <= 0) return make_error("context size must be positive, got " + std::to_string(p.n_ctx));
    if (p.n_seq_max <= 0 || p.n_seq_max > 256)
        return make_error("number of sequences must be 1..256, got " + std::to_string(p.n_seq_max));
    if (p.n_ubatch <= 0) return make_error("micro-batch size must be positive, got " + std::to_string(p.n_ubatch));
    if (p.rollback_depth < 0 || p.rollback_depth > 1024)
        return make_error("rollback depth must be 0..1024, got " + std::to_string(p.rollback_depth));
    for (DType t : {p.type_k, p.type_v})
        if (t != DType::F32 && t != DType::F16)
            return make_error(std::string("KV cache type ") + traits(t).name + " is not supported (f32, f16)");
    std::unique_ptr<Context> c(new Context(model, p));
    const HParams& hp = model.hparams();
    c->seqs_.resize(size_t(p.n_seq_max));
    c->kv_.resize(size_t(hp.n_layer));
    c->rings_.resize(size_t(hp.n_layer));
    const int slots = p.rollback_depth + 1;
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        for (int s = 0; s < p.n_seq_max; ++s) {
            if (hp.is_recurrent(il)) {
                RecurrentRing r;
                r.n_slots = slots;
                const size_t cb = size_t(hp.conv_state_floats()) * 4 * size_t(slots);
                const size_t sb = size_t(hp.ssm_state_floats()) * 4 * size_t(slots);
                r.conv = static_cast<float*>(c->be_.alloc(cb));
                r.ssm = static_cast<float*>(c->be_.alloc(sb));
                c->be_.fill_zero(r.conv, cb);
                c->be_.fill_zero(r.ssm, sb);
                c->allocations_.push_back(r.conv);
                c->allocations_.push_back(r.ssm);
                c->rings_[size_t(il)].push_back(r);
            } else {
                KvBlock b;
                b.type_k = p.type_k;
                b.type_v = p.type_v;
                b.capacity = p.n_ctx;
                b.k = c->be_.alloc(c->kv_row_bytes(p.type_k) * size_t(p.n_ctx));
                b.v = c->be_.alloc(c->kv_row_bytes(p.type_v) * size_t(p.n_ctx));
                c->allocations_.push_back(b.k);
                c->allocations_.push_back(b.v);
                c->kv_[size_t(il)].push_back(b);
            }
        }
    }
    return c;
}

Context::~Context() {
    for (void* a : allocations_) be_.dealloc(a);
    if (logits_buf_) be_.dealloc(logits_buf_);
}

size_t Context::kv_row_bytes(DType t) const {
    return row_bytes(t, model_.hparams().kv_width());
}

uint64_t Context::kv_bytes_per_token() const {
    const HParams& hp = model_.hparams();
    return uint64_t(hp.n_attention_layers()) * (kv_row_bytes(params_.type_k) + kv_row_bytes(params_.type_v));
}

uint64_t Context::recurrent_bytes_per_seq() const {
    const HParams& hp = model_.hparams();
    return uint64_t(hp.n_recurrent_layers()) * uint64_t(hp.conv_state_floats() + hp.ssm_state_floats()) * 4;
}

int64_t Context::rollback_available(int seq) const {
    const Seq& s = seqs_.at(size_t(seq));
    return model_.hparams().n_recurrent_layers() > 0 ? std::min(s.history, s.n_past) : s.n_past;
}

Result<void> Context::validate(const std::vector<BatchToken>& batch) const {
    std::vector<int64_t> add(seqs_.size(), 0);
    for (size_t i = 0; i < batch.size(); ++i) {
        const BatchToken& t = batch[i];
        if (t.seq < 0 || t.seq >= int(seqs_.size()))
            return make_error("batch token " + std::to_string(i) + ": sequence id " + std::to_string(t.seq) +
                              " is out of range (context has " + std::to_string(seqs_.size()) + " sequences)");
        if (t.token < 0 || t.token >= n_vocab())
            return make_error("batch token " + std::to_string(i) + ": token id " + std::to_string(t.token) +
                              " is out of range (vocabulary has " + std::to_string(n_vocab()) + " tokens)");
        ++add[size_t(t.seq)];
    }
    for (size_t s = 0; s < seqs_.size(); ++s)
        if (seqs_[s].n_past + add[s] > params_.n_ctx)
            return make_error("sequence " + std::to_string(s) + " would hold " +
                              std::to_string(seqs_[s].n_past + add[s]) + " tokens, more than the context size " +
                              std::to_string(params_.n_ctx) + " (raise -c/--ctx-size)");
    return {};
}

Result<void> Context::decode(const std::vector<BatchToken>& batch, std::vector<float>* logits) {
    BM_TRY(validate(batch));
    const int64_t V = n_vocab();
    // Group by sequence (stable), remembering where each requested output goes.
    std::vector<size_t> order(batch.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return batch[a].seq < batch[b].seq; });
    std::vector<int64_t> out_index(batch.size(), -1);
    int64_t n_out = 0;
    for (size_t i = 0; i < batch.size(); ++i)
        if (batch[i].logits) out_index[i] = n_out++;
    if (logits) logits->resize(size_t(n_out * V));  // every row is written below

    for (size_t start = 0; start < order.size(); start += size_t(params_.n_ubatch)) {
        const size_t end = std::min(order.size(), start + size_t(params_.n_ubatch));
        std::vector<int32_t> tokens;
        std::vector<SeqSpan> spans;
        std::vector<int64_t> out_rows, out_dest;
        std::vector<int64_t> added(seqs_.size(), 0);
        for (size_t j = start; j < end; ++j) {
            const BatchToken& t = batch[order[j]];
            if (spans.empty() || spans.back().seq != t.seq)
                spans.push_back({t.seq, int64_t(tokens.size()), 0, seqs_[size_t(t.seq)].n_past});
            ++spans.back().n_tokens;
            if (t.logits) {
                out_rows.push_back(int64_t(tokens.size()));
                out_dest.push_back(out_index[order[j]]);
            }
            tokens.push_back(t.token);
        }
        run_ubatch(tokens, spans, out_rows, out_dest, logits ? logits->data() : nullptr);
    }
    return {};
}

Result<void> Context::decode_seq(int seq, const std::vector<int32_t>& tokens, bool all_logits,
                                 std::vector<float>* logits) {
    std::vector<BatchToken> b(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) b[i] = {tokens[i], seq, all_logits || i + 1 == tokens.size()};
    return decode(b, logits);
}

void Context::run_ubatch(const std::vector<int32_t>& tokens, const std::vector<SeqSpan>& spans,
                         const std::vector<int64_t>& out_rows, const std::vector<int64_t>& out_dest,
                         float* logits_out) {
    const HParams& hp = model_.hparams();
    const int64_t V = hp.n_vocab, n_out = int64_t(out_rows.size());
    ForwardBatch fb;
    fb.tokens = tokens.data();
    fb.n_tokens = int64_t(tokens.size());
    fb.spans = spans;
    fb.out_rows = out_rows;
    StateRefs st;
    st.kv.resize(size_t(hp.n_layer));
    st.rs.resize(size_t(hp.n_layer));
    for (int64_t il = 0; il < hp.n_layer; ++il)
        for (const SeqSpan& s : spans) {
            if (hp.is_recurrent(il)) {
                RecurrentRing& r = rings_[size_t(il)][size_t(s.seq)];
                r.head = seqs_[size_t(s.seq)].head;
                st.rs[size_t(il)].push_back(&r);
            } else {
                st.kv[size_t(il)].push_back(&kv_[size_t(il)][size_t(s.seq)]);
            }
        }
    if (n_out > logits_rows_) {
        if (logits_buf_) be_.dealloc(logits_buf_);
        logits_buf_ = be_.alloc(size_t(n_out * V) * 4);
        logits_rows_ = n_out;
    }
    Tensor logits{static_cast<float*>(logits_buf_), n_out, V, V};
    model_.forward(fb, st, logits);
    if (logits_out)  // output row r goes to row out_dest[r] of the caller's logits
        for (int64_t r = 0; r < n_out; ++r)
            be_.download(logits_out + out_dest[size_t(r)] * V, static_cast<const float*>(logits_buf_) + r * V,
                         size_t(V) * 4);
    const int slots = params_.rollback_depth + 1;
    for (const SeqSpan& s : spans) {
        Seq& q = seqs_[size_t(s.seq)];
        q.n_past += s.n_tokens;
        q.head = int((q.head + s.n_tokens) % slots);
        q.history = std::min<int64_t>(q.history + s.n_tokens, params_.rollback_depth);
    }
}

Result<void> Context::remove_last(int seq, int64_t n) {
    if (seq < 0 || seq >= int(seqs_.size())) return make_error("remove_last: no sequence " + std::to_string(seq));
    Seq& s = seqs_[size_t(seq)];
    if (n < 0 || n > s.n_past)
        return make_error("remove_last: cannot remove " + std::to_string(n) + " positions from sequence " +
                          std::to_string(seq) + " of length " + std::to_string(s.n_past));
    if (n > rollback_available(seq))
        return make_error("remove_last: sequence " + std::to_string(seq) + " can roll back at most " +
                          std::to_string(rollback_available(seq)) + " positions (recurrent state depth " +
                          std::to_string(params_.rollback_depth) + " set at context creation); asked for " +
                          std::to_string(n) + ". Use a checkpoint to go further back.");
    const int slots = params_.rollback_depth + 1;
    s.n_past -= n;
    s.history -= n;
    s.head = int(((s.head - n) % slots + slots) % slots);
    return {};
}

void Context::clear(int seq) {
    Seq& s = seqs_.at(size_t(seq));
    s = Seq{};
    const HParams& hp = model_.hparams();
    for (int64_t il = 0; il < hp.n_layer; ++il)
        if (hp.is_recurrent(il)) {
            RecurrentRing& r = rings_[size_t(il)][size_t(seq)];
            be_.fill_zero(r.conv, size_t(hp.conv_state_floats()) * 4 * size_t(r.n_slots));
            be_.fill_zero(r.ssm, size_t(hp.ssm_state_floats()) * 4 * size_t(r.n_slots));
        }
}

size_t Context::seq_state_bytes(int64_t n_past) const {
    const HParams& hp = model_.hparams();
    return size_t(hp.n_attention_layers()) * size_t(n_past) *
               (kv_row_bytes(params_.type_k) + kv_row_bytes(params_.type_v)) +
           size_t(hp.n_recurrent_layers()) * size_t(hp.conv_state_floats() + hp.ssm_state_floats()) * 4;
}

Result<std::unique_ptr<SeqCheckpoint>> Context::checkpoint(int seq) {
    if (seq < 0 || seq >= int(seqs_.size())) return make_error("checkpoint: no sequence " + std::to_string(seq));
    const HParams& hp = model_.hparams();
    const Seq& s = seqs_[size_t(seq)];
    std::unique_ptr<SeqCheckpoint> cp(new SeqCheckpoint());
    cp->backend_ = &be_;
    cp->n_past_ = s.n_past;
    cp->bytes_ = seq_state_bytes(s.n_past);
    cp->data_ = be_.alloc(cp->bytes_);
    uint8_t* dst = static_cast<uint8_t*>(cp->data_);
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        if (hp.is_recurrent(il)) {
            const RecurrentRing& r = rings_[size_t(il)][size_t(seq)];
            const size_t cb = size_t(hp.conv_state_floats()) * 4, sb = size_t(hp.ssm_state_floats()) * 4;
            be_.copy(dst, reinterpret_cast<const uint8_t*>(r.conv) + size_t(s.head) * cb, cb);
            be_.copy(dst + cb, reinterpret_cast<const uint8_t*>(r.ssm) + size_t(s.head) * sb, sb);
            dst += cb + sb;
        } else {
            const KvBlock& b = kv_[size_t(il)][size_t(seq)];
            const size_t kb = kv_row_bytes(params_.type_k) * size_t(s.n_past);
            const size_t vb = kv_row_bytes(params_.type_v) * size_t(s.n_past);
            be_.copy(dst, b.k, kb);
            be_.copy(dst + kb, b.v, vb);
            dst += kb + vb;
        }
    }
    return cp;
}

Result<void> Context::restore(int seq, const SeqCheckpoint& cp) {
    if (seq < 0 || seq >= int(seqs_.size())) return make_error("restore: no sequence " + std::to_string(seq));
    if (cp.backend_ != &be_ || cp.bytes_ != seq_state_bytes(cp.n_past_))
        return make_error("restore: the checkpoint was made by another context");
    const HParams& hp = model_.hparams();
    Seq& s = seqs_[size_t(seq)];
    const uint8_t* src = static_cast<const uint8_t*>(cp.data_);
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        if (hp.is_recurrent(il)) {
            RecurrentRing& r = rings_[size_t(il)][size_t(seq)];
            const size_t cb = size_t(hp.conv_state_floats()) * 4, sb = size_t(hp.ssm_state_floats()) * 4;
            be_.copy(reinterpret_cast<uint8_t*>(r.conv) + size_t(s.head) * cb, src, cb);
            be_.copy(reinterpret_cast<uint8_t*>(r.ssm) + size_t(s.head) * sb, src + cb, sb);
            src += cb + sb;
        } else {
            const KvBlock& b = kv_[size_t(il)][size_t(seq)];
            const size_t kb = kv_row_bytes(params_.type_k) * size_t(cp.n_past_);
            const size_t vb = kv_row_bytes(params_.type_v) * size_t(cp.n_past_);
            be_.copy(b.k, src, kb);
            be_.copy(b.v, src + kb, vb);
            src += kb + vb;
        }
    }
    s.n_past = cp.n_past_;
    s.history = 0;
    return {};
}

Result<void> Context::copy_seq(int src, int dst) {
    if (src < 0 || src >= int(seqs_.size()) || dst < 0 || dst >= int(seqs_.size()))
        return make_error("copy_seq: sequence ids " + std::to_string(src) + " -> " + std::to_string(dst) +
                          " out of range");
    if (src == dst) return {};
    const HParams& hp = model_.hparams();
    const Seq& a = seqs_[size_t(src)];
    Seq& b = seqs_[size_t(dst)];
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        if (hp.is_recurrent(il)) {
            const RecurrentRing& ra = rings_[size_t(il)][size_t(src)];
            RecurrentRing& rb = rings_[size_t(il)][size_t(dst)];
            const size_t cb = size_t(hp.conv_state_floats()) * 4, sb = size_t(hp.ssm_state_floats()) * 4;
            be_.copy(reinterpret_cast<uint8_t*>(rb.conv) + size_t(b.head) * cb,
                     reinterpret_cast<const uint8_t*>(ra.conv) + size_t(a.head) * cb, cb);
            be_.copy(reinterpret_cast<uint8_t*>(rb.ssm) + size_t(b.head) * sb,
                     reinterpret_cast<const uint8_t*>(ra.ssm) + size_t(a.head) * sb, sb);
        } else {
            const KvBlock& ka = kv_[size_t(il)][size_t(src)];
            const KvBlock& kb = kv_[size_t(il)][size_t(dst)];
            be_.copy(kb.k, ka.k, kv_row_bytes(params_.type_k) * size_t(a.n_past));
            be_.copy(kb.v, ka.v, kv_row_bytes(params_.type_v) * size_t(a.n_past));
        }
    }
    b.n_past = a.n_past;
    b.history = 0;
    return {};
}

}  // namespace bigmoe
