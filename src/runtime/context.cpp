#include "runtime/context.h"

#include <algorithm>
#include <cstring>

#include "core/memory.h"

namespace bigmoe {

SeqCheckpoint::~SeqCheckpoint() {
    for (const Part& p : parts_)
        if (p.data) p.backend->dealloc(p.data);
}

Context::MemoryNeed Context::memory_need(const HParams& hp, const ContextParams& p, int64_t n_attention,
                                         int64_t n_recurrent) {
    MemoryNeed m;
    const uint64_t n_seq = uint64_t(p.n_seq_max);
    if (n_attention < 0) n_attention = hp.n_attention_layers();
    if (n_recurrent < 0) n_recurrent = hp.n_recurrent_layers();
    m.kv = uint64_t(n_attention) * KvCache::bytes_per_position(hp.kv_width(), p.type_k, p.type_v) * uint64_t(p.n_ctx) *
           n_seq;
    m.recurrent = uint64_t(n_recurrent) * uint64_t(hp.conv_state_floats() + hp.ssm_state_floats()) * sizeof(float) *
                  uint64_t(p.rollback_depth + 1) * n_seq;
    // Working buffers of one micro-batch: the widest layer's activations (attention or Gated
    // DeltaNet, then the FFN or the experts) and the logits, doubled for the backend's own
    // buffers (quantized activations, expert groups). An estimate on the safe side.
    const int64_t nq = hp.n_head * hp.head_dim, nkv = hp.kv_width();
    const int64_t attn = 6 * nq + 3 * nkv;
    const int64_t gdn = hp.n_recurrent_layers() > 0 ? 3 * hp.conv_dim() + 3 * hp.ssm_d_inner + 2 * hp.ssm_n_v_heads : 0;
    const int64_t ffn =
        std::max<int64_t>(2 * hp.n_ff, hp.n_expert + 2 * hp.n_ff_shexp + 3 * hp.n_expert_used * hp.n_ff_exp);
    const int64_t per_token = 4 * hp.n_embd + std::max(attn, gdn) + ffn + hp.n_vocab;
    const uint64_t ubatch = uint64_t(std::min<int64_t>(p.n_ubatch, p.n_ctx * p.n_seq_max));
    m.work = 2 * ubatch * uint64_t(per_token) * sizeof(float);
    return m;
}

namespace {

Result<void> fits(const Context::MemoryNeed& m, const ContextParams& p, uint64_t available, const std::string& where) {
    if (m.total() <= available) return {};
    // The largest context that fits, with the same sequences, types and micro-batch.
    const uint64_t per_position = m.kv / uint64_t(p.n_ctx);
    const uint64_t fixed = m.recurrent + m.work;
    std::string most = "nothing fits: the weights leave too little memory";
    if (available > fixed && per_position > 0) {
        const int64_t n = int64_t((available - fixed) / per_position);
        if (n >= 8) most = "at most " + std::to_string(n) + " positions fit (-c " + std::to_string(n) + ")";
    }
    std::string parts = "KV cache " + format_bytes(m.kv);
    if (m.recurrent) parts += ", recurrent state " + format_bytes(m.recurrent);
    parts += ", working buffers " + format_bytes(m.work);
    return make_error("a context of " + std::to_string(p.n_ctx) + " positions" +
                          (p.n_seq_max > 1 ? " x " + std::to_string(p.n_seq_max) + " sequences" : "") + " needs " +
                          format_bytes(m.total()) + where + " (" + parts + "), " + format_bytes(available) +
                          " are available; " + most,
                      ErrorKind::resource_exhausted);
}

}  // namespace

Result<void> Context::check_fits(const HParams& hp, const ContextParams& p, uint64_t available) {
    return fits(memory_need(hp, p), p, available, "");
}

Result<void> Context::check_fits(const Model& model, const ContextParams& p) {
    const HParams& hp = model.hparams();
    const std::vector<Backend*> bes = model.backends();
    if (bes.size() == 1) return check_fits(hp, p, bes[0]->memory_available());
    for (Backend* be : bes) {
        int64_t n_attention = 0, n_recurrent = 0;
        for (int64_t il = 0; il < hp.n_layer; ++il)
            if (&model.backend(il) == be) ++(hp.is_recurrent(il) ? n_recurrent : n_attention);
        BM_TRY(fits(memory_need(hp, p, n_attention, n_recurrent), p, be->memory_available(),
                    " on the " + be->name() + " backend"));
    }
    return {};
}

Result<std::unique_ptr<Context>> Context::create(Model& model, const ContextParams& p) {
    if (p.n_ctx <= 0) return make_error("context size must be positive, got " + std::to_string(p.n_ctx));
    if (p.n_seq_max <= 0 || p.n_seq_max > 256)
        return make_error("number of sequences must be 1..256, got " + std::to_string(p.n_seq_max));
    if (p.n_ubatch <= 0) return make_error("micro-batch size must be positive, got " + std::to_string(p.n_ubatch));
    if (p.rollback_depth < 0 || p.rollback_depth > 1024)
        return make_error("rollback depth must be 0..1024, got " + std::to_string(p.rollback_depth));
    const HParams& hp = model.hparams();
    for (DType t : {p.type_k, p.type_v}) {
        BM_TRY(check_cache_type(hp, t));
        for (int64_t il = 0; il < hp.n_layer; ++il)
            if (!hp.is_recurrent(il) && !model.backend(il).supports(Op::attention, t))
                return make_error(std::string("KV cache type ") + traits(t).name + " is not supported by the " +
                                      model.backend(il).name() + " backend's attention",
                                  ErrorKind::unsupported);
    }
    BM_TRY(check_fits(model, p));
    std::unique_ptr<Context> c(new Context(model, p));
    // A micro-batch never holds more tokens than the sequences can.
    c->params_.n_ubatch = std::min<int64_t>(p.n_ubatch, p.n_ctx * p.n_seq_max);
    c->seqs_.resize(size_t(p.n_seq_max));
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        Backend& be = model.backend(il);
        if (hp.is_recurrent(il)) {
            auto r = RecurrentState::create(be, hp.conv_state_floats(), hp.ssm_state_floats(), p.rollback_depth + 1,
                                            p.n_seq_max);
            if (!r) return r.error();
            c->layers_.push_back(std::move(*r));
        } else {
            auto kv = KvCache::create(be, hp.kv_width(), p.n_ctx, p.n_seq_max, p.type_k, p.type_v);
            if (!kv) return kv.error();
            c->layers_.push_back(std::move(*kv));
        }
    }
    return c;
}

Context::~Context() {
    if (logits_buf_) be_.dealloc(logits_buf_);
    if (logits_kept_) be_.dealloc(logits_kept_);
}

uint64_t Context::kv_bytes_per_token(const HParams& hp, DType type_k, DType type_v) {
    return uint64_t(hp.n_attention_layers()) * KvCache::bytes_per_position(hp.kv_width(), type_k, type_v);
}

uint64_t Context::kv_bytes_per_token() const {
    return kv_bytes_per_token(model_.hparams(), params_.type_k, params_.type_v);
}

Result<void> Context::check_cache_type(const HParams& hp, DType t) {
    if (!is_cache_type(t))
        return make_error(
            std::string("KV cache type ") + traits(t).name + " is not a cache type (" + cache_type_list() + ")",
            ErrorKind::bad_input);
    if (hp.n_attention_layers() > 0 && hp.head_dim % traits(t).block_elems != 0)
        return make_error(std::string("KV cache type ") + traits(t).name + " stores blocks of " +
                              std::to_string(traits(t).block_elems) + " values, which the model's head size " +
                              std::to_string(hp.head_dim) + " is not a multiple of",
                          ErrorKind::unsupported);
    return {};
}

uint64_t Context::recurrent_bytes_per_seq() const {
    const HParams& hp = model_.hparams();
    return uint64_t(hp.n_recurrent_layers()) * uint64_t(hp.conv_state_floats() + hp.ssm_state_floats()) * 4;
}

uint64_t Context::state_bytes() const {
    uint64_t n = 0;
    for (const auto& l : layers_) n += l->bytes();
    return n;
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
    return decode(batch, logits, nullptr);
}

Result<void> Context::decode(const std::vector<BatchToken>& batch, std::vector<float>* logits,
                             std::vector<int32_t>* argmax) {
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
    if (argmax) argmax->resize(size_t(n_out));
    held_.assign(size_t(n_out), -1);
    held_last_.clear();

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
        BM_TRY(run_ubatch(tokens, spans, out_rows, out_dest, logits ? logits->data() : nullptr,
                          argmax ? argmax->data() : nullptr));
    }
    return {};
}

std::vector<BatchToken> Context::seq_batch(int seq, const std::vector<int32_t>& tokens, bool all_logits) {
    std::vector<BatchToken> b(tokens.size());
    for (size_t i = 0; i < tokens.size(); ++i) b[i] = {tokens[i], seq, all_logits || i + 1 == tokens.size()};
    return b;
}

Result<void> Context::decode_seq(int seq, const std::vector<int32_t>& tokens, bool all_logits,
                                 std::vector<float>* logits) {
    return decode(seq_batch(seq, tokens, all_logits), logits);
}

Result<void> Context::read_logits(int64_t out, std::vector<float>* logits) const {
    if (out < 0 || out >= int64_t(held_.size()) || held_[size_t(out)] < 0)
        return make_error("read_logits: output " + std::to_string(out) + " of the last decode is not held (" +
                          std::to_string(held_.size()) + " outputs, " + std::to_string(held_last_.size()) +
                          " of them in its last micro-batch)");
    const int64_t V = n_vocab();
    logits->resize(size_t(V));
    be_.download(logits->data(), static_cast<const float*>(logits_buf_) + held_[size_t(out)] * V, size_t(V) * 4);
    return {};
}

Result<int32_t> Context::decode_greedy(int seq, const std::vector<int32_t>& tokens) {
    if (tokens.empty()) return make_error("decode_greedy: no tokens");
    std::vector<int32_t> ids;
    BM_TRY(decode(seq_batch(seq, tokens, false), nullptr, &ids));
    return ids.at(0);
}

Result<void> Context::decode_greedy_chain(int seq, int32_t tok, const GreedyChain& c,
                                          const std::function<ChainNext(int32_t, int64_t)>& on_token) {
    const bool recurrent = model_.hparams().n_recurrent_layers() > 0;
    if (be_.chains_greedy() && model_.backends().size() == 1 &&
        (!c.may_drop || !recurrent || params_.rollback_depth >= 1))
        return greedy_chain_on_backend(seq, tok, c, on_token);
    int64_t steps = 1;
    int32_t id = 0;
    BM_ASSIGN(id, decode_greedy(seq, {tok}));
    for (;;) {
        const ChainNext r = on_token(id, n_past(seq));
        if (r == ChainNext::stop_dropped) return {};
        if (r == ChainNext::more && c.max_steps >= 0 && steps >= c.max_steps) return {};
        BM_ASSIGN(id, decode_greedy(seq, {id}));
        ++steps;
        if (r == ChainNext::stop_kept) return {};
    }
}

// Step k + 1 is formed and started before step k's token is read; each answer then either lets
// it stand or undoes it. At most two steps' tokens are outstanding (Backend::argmax_rows_end).
Result<void> Context::greedy_chain_on_backend(int seq, int32_t tok, const GreedyChain& c,
                                              const std::function<ChainNext(int32_t, int64_t)>& on_token) {
    const int64_t V = n_vocab();
    int64_t outstanding = 0;
    // every started step's token is read before returning, so the next chain starts clean
    auto drain = [&]() {
        for (int32_t unused = 0; outstanding > 0; --outstanding) be_.argmax_rows_end(&unused, 1);
    };
    auto start = [&](int32_t t, bool from_argmax) -> Result<void> {
        auto r = start_greedy_step(seq, t, from_argmax);
        if (r) ++outstanding;
        return r;
    };
    auto next_id = [&]() -> Result<int32_t> {
        int32_t id = -1;
        be_.argmax_rows_end(&id, 1);
        --outstanding;
        if (id < 0 || id >= V) return make_error("greedy chain: the backend gave no token for a step");
        return id;
    };
    if (c.may_drop && !logits_kept_) {
        logits_kept_ = be_.alloc(size_t(V) * 4);
        if (!logits_kept_)
            return make_error("cannot allocate " + format_bytes(uint64_t(V) * 4) + " for a greedy chain's logits",
                              ErrorKind::resource_exhausted);
    }
    if (auto r = start(tok, false); !r) return r;
    int64_t steps = 1;
    for (;;) {
        // the next step ahead of the token it takes, where the sequence has room for it
        const bool ahead = (c.max_steps < 0 || steps < c.max_steps) && n_past(seq) < params_.n_ctx;
        if (ahead) {
            if (c.may_drop) be_.copy(logits_kept_, logits_buf_, size_t(V) * 4);
            if (auto r = start(0, true); !r) {
                drain();
                return r;
            }
            ++steps;
        }
        auto id = next_id();
        if (!id) {  // the step ahead took no known token: undone where it can be
            drain();
            if (ahead && rollback_available(seq) >= 1) (void)remove_last(seq, 1);
            return id.error();
        }
        const ChainNext r = on_token(*id, n_past(seq) - (ahead ? 1 : 0));
        if (r == ChainNext::stop_dropped) {
            drain();
            if (!ahead) return {};
            if (!c.may_drop) return make_error("greedy chain: a token dropped where the caller said none would be");
            BM_TRY(remove_last(seq, 1));
            be_.copy(logits_buf_, logits_kept_, size_t(V) * 4);
            held_.assign(1, 0);
            return {};
        }
        if (!ahead) {
            if (r == ChainNext::more && c.max_steps >= 0 && steps >= c.max_steps) {
                drain();
                return {};
            }
            if (auto s = start(*id, false); !s) {  // as decode_greedy would (its error, where it has one)
                drain();
                return s;
            }
            ++steps;
        }
        if (r == ChainNext::stop_kept) {
            drain();
            return {};
        }
    }
}

Result<void> Context::start_greedy_step(int seq, int32_t tok, bool from_argmax) {
    const std::vector<BatchToken> batch = seq_batch(seq, {from_argmax ? 0 : tok}, false);
    BM_TRY(validate(batch));
    held_.assign(1, -1);
    held_last_.clear();
    const std::vector<int32_t> tokens = {batch[0].token};
    const std::vector<SeqSpan> spans = {{seq, 0, 1, n_past(seq)}};
    const std::vector<int64_t> rows = {0};
    return run_ubatch(tokens, spans, rows, rows, nullptr, nullptr, from_argmax ? 2 : 1);
}

Result<void> Context::run_ubatch(const std::vector<int32_t>& tokens, const std::vector<SeqSpan>& spans,
                                 const std::vector<int64_t>& out_rows, const std::vector<int64_t>& out_dest,
                                 float* logits_out, int32_t* argmax_out, int chain) {
    const HParams& hp = model_.hparams();
    const int64_t V = hp.n_vocab, n_out = int64_t(out_rows.size());
    ForwardBatch fb;
    fb.tokens = tokens.data();
    fb.n_tokens = int64_t(tokens.size());
    fb.out_rows = out_rows;
    BatchState st;
    st.spans = spans;
    st.argmax = (argmax_out || chain) && n_out > 0;
    st.tokens = tokens.data();
    st.n_tokens = int64_t(tokens.size());
    st.ids_from_argmax = chain == 2;
    st.kv.resize(size_t(hp.n_layer));
    st.rs.resize(size_t(hp.n_layer));
    for (int64_t il = 0; il < hp.n_layer; ++il)
        for (const SeqSpan& s : spans) layers_[size_t(il)]->bind(il, s.seq, seqs_[size_t(s.seq)].head, st);
    if (n_out > logits_rows_) {
        if (logits_buf_) be_.dealloc(logits_buf_);
        logits_buf_ = be_.alloc(size_t(n_out * V) * 4);
        logits_rows_ = logits_buf_ ? n_out : 0;
        if (!logits_buf_)
            return make_error("cannot allocate " + format_bytes(uint64_t(n_out * V) * 4) + " for " +
                                  std::to_string(n_out) + " rows of logits",
                              ErrorKind::resource_exhausted);
    }
    Tensor logits{static_cast<float*>(logits_buf_), n_out, V, V};
    fb.state = &st;
    model_.forward(fb, logits);
    for (int64_t d : held_last_) held_[size_t(d)] = -1;  // their rows are overwritten
    held_last_.clear();
    for (int64_t r = 0; r < n_out; ++r) {
        held_[size_t(out_dest[size_t(r)])] = r;
        held_last_.push_back(out_dest[size_t(r)]);
    }
    if (chain && n_out > 0) {
        be_.argmax_rows_start(logits);
    } else if (argmax_out && n_out > 0) {
        std::vector<int32_t> ids(static_cast<size_t>(n_out));
        be_.argmax_rows(logits, ids.data());
        for (int64_t r = 0; r < n_out; ++r) argmax_out[out_dest[size_t(r)]] = ids[size_t(r)];
    }
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
    return {};
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
    seqs_.at(size_t(seq)) = Seq{};
    for (auto& l : layers_) l->clear(seq);
}

size_t Context::seq_state_bytes(int64_t n_past, const Backend* on) const {
    size_t n = 0;
    for (size_t il = 0; il < layers_.size(); ++il)
        if (!on || &model_.backend(int64_t(il)) == on) n += layers_[il]->saved_bytes(n_past);
    return n;
}

Result<std::unique_ptr<SeqCheckpoint>> Context::checkpoint(int seq) {
    if (seq < 0 || seq >= int(seqs_.size())) return make_error("checkpoint: no sequence " + std::to_string(seq));
    const Seq& s = seqs_[size_t(seq)];
    std::unique_ptr<SeqCheckpoint> cp(new SeqCheckpoint());
    cp->n_past_ = s.n_past;
    cp->bytes_ = seq_state_bytes(s.n_past);
    // each backend's layers save into one allocation of that backend
    for (Backend* be : model_.backends()) {
        const size_t bytes = seq_state_bytes(s.n_past, be);
        if (bytes == 0) continue;
        void* data = be->alloc(bytes);
        if (!data)
            return make_error("checkpoint: cannot allocate " + format_bytes(bytes) + " (" +
                                  format_bytes(be->memory_available()) + " available on the " + be->name() +
                                  " backend)",
                              ErrorKind::resource_exhausted);
        cp->parts_.push_back({be, data});
        uint8_t* dst = static_cast<uint8_t*>(data);
        for (size_t il = 0; il < layers_.size(); ++il)
            if (&model_.backend(int64_t(il)) == be) {
                layers_[il]->save(seq, s.pos(), dst);
                dst += layers_[il]->saved_bytes(s.n_past);
            }
    }
    return cp;
}

Result<void> Context::restore(int seq, const SeqCheckpoint& cp) {
    if (seq < 0 || seq >= int(seqs_.size())) return make_error("restore: no sequence " + std::to_string(seq));
    // the parts checkpoint() would make here: one per backend holding saved bytes, in order
    bool same = cp.bytes_ == seq_state_bytes(cp.n_past_);
    size_t part = 0;
    for (Backend* be : model_.backends())
        if (seq_state_bytes(cp.n_past_, be) > 0)
            same = same && part < cp.parts_.size() && cp.parts_[part++].backend == be;
    if (!same || part != cp.parts_.size()) return make_error("restore: the checkpoint was made by another context");
    Seq& s = seqs_[size_t(seq)];
    const SeqPos saved{cp.n_past_, s.head};
    for (const SeqCheckpoint::Part& part : cp.parts_) {
        const uint8_t* src = static_cast<const uint8_t*>(part.data);
        for (size_t il = 0; il < layers_.size(); ++il)
            if (&model_.backend(int64_t(il)) == part.backend) {
                layers_[il]->load(seq, saved, src);
                src += layers_[il]->saved_bytes(cp.n_past_);
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
    const Seq& a = seqs_[size_t(src)];
    Seq& b = seqs_[size_t(dst)];
    for (auto& l : layers_) l->copy(src, a.pos(), dst, b.pos());
    b.n_past = a.n_past;
    b.history = 0;
    return {};
}

namespace {

// Rows [from, from + n) of one layer's part of a host buffer of `rows` rows into dst.
void slice_layer(const LayerState& l, const uint8_t* src, int64_t rows, int64_t from, int64_t n, uint8_t* dst) {
    const size_t rk = l.host_k_bytes(), rv = l.host_row_bytes() - rk;
    std::memcpy(dst, src + rk * size_t(from), rk * size_t(n));
    std::memcpy(dst + rk * size_t(n), src + rk * size_t(rows) + rv * size_t(from), rv * size_t(n));
}

}  // namespace

size_t Context::prefix_row_bytes() const {
    size_t n = 0;
    for (const auto& l : layers_) n += l->host_row_bytes();
    return n;
}

size_t Context::prefix_state_bytes() const {
    size_t n = 0;
    for (const auto& l : layers_) n += l->host_state_bytes();
    return n;
}

Result<void> Context::read_rows(int seq, int64_t from, int64_t n, uint8_t* host) const {
    if (seq < 0 || seq >= int(seqs_.size()) || from < 0 || n < 0 || from + n > seqs_[size_t(seq)].n_past)
        return make_error("read_rows: positions [" + std::to_string(from) + ", " + std::to_string(from + n) +
                          ") are not in sequence " + std::to_string(seq));
    for (const auto& l : layers_) {
        if (l->host_row_bytes() == 0) continue;
        l->read_host(seq, seqs_[size_t(seq)].pos(), from, n, host);
        host += l->host_row_bytes() * size_t(n);
    }
    return {};
}

Result<void> Context::write_rows(int seq, int64_t from, int64_t n, const uint8_t* host, int64_t rows) {
    if (seq < 0 || seq >= int(seqs_.size()) || from < 0 || n < 0 || n > rows || from + n > params_.n_ctx)
        return make_error("write_rows: positions [" + std::to_string(from) + ", " + std::to_string(from + n) +
                          ") do not fit sequence " + std::to_string(seq));
    std::vector<uint8_t> part;
    for (auto& l : layers_) {
        const size_t rb = l->host_row_bytes();
        if (rb == 0) continue;
        const uint8_t* src = host;
        if (n != rows) {  // the layer's first n K rows and first n V rows, side by side
            part.resize(rb * size_t(n));
            slice_layer(*l, host, rows, 0, n, part.data());
            src = part.data();
        }
        l->write_host(seq, seqs_[size_t(seq)].pos(), from, n, src);
        host += rb * size_t(rows);
    }
    return {};
}

void Context::slice_rows(const uint8_t* host, int64_t rows, int64_t from, int64_t n, uint8_t* dst) const {
    for (const auto& l : layers_) {
        const size_t rb = l->host_row_bytes();
        if (rb == 0) continue;
        slice_layer(*l, host, rows, from, n, dst);
        host += rb * size_t(rows);
        dst += rb * size_t(n);
    }
}

Result<void> Context::read_state(int seq, uint8_t* host) const {
    if (seq < 0 || seq >= int(seqs_.size())) return make_error("read_state: no sequence " + std::to_string(seq));
    for (const auto& l : layers_) {
        if (l->host_state_bytes() == 0) continue;
        l->read_host(seq, seqs_[size_t(seq)].pos(), 0, 0, host);
        host += l->host_state_bytes();
    }
    return {};
}

Result<void> Context::set_prefix(int seq, int64_t n_past, const uint8_t* state) {
    if (seq < 0 || seq >= int(seqs_.size()) || n_past < 0 || n_past > params_.n_ctx)
        return make_error("set_prefix: sequence " + std::to_string(seq) + " cannot hold " + std::to_string(n_past) +
                          " positions");
    if (!state && prefix_state_bytes() > 0) return make_error("set_prefix: the recurrent state is missing");
    Seq& s = seqs_[size_t(seq)];
    s = Seq{};
    s.n_past = n_past;
    for (auto& l : layers_) {
        if (l->host_state_bytes() == 0) continue;
        l->write_host(seq, s.pos(), 0, 0, state);
        state += l->host_state_bytes();
    }
    return {};
}

}  // namespace bigmoe
