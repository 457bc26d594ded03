#include "runtime/seq_state.h"

#include "core/memory.h"
#include "models/model.h"

namespace bigmoe {

namespace {
// Allocates `bytes` on the backend, or says how much could not be had.
Result<void*> alloc_state(Backend& be, size_t bytes, const char* what) {
    void* p = be.alloc(bytes);
    if (!p)
        return make_error(std::string("cannot allocate ") + format_bytes(bytes) + " for the " + what + " (" +
                              format_bytes(be.memory_available()) + " available)",
                          ErrorKind::resource_exhausted);
    return p;
}
}  // namespace

size_t KvCache::bytes_per_position(int64_t kv_width, DType type_k, DType type_v) {
    return row_bytes(type_k, kv_width) + row_bytes(type_v, kv_width);
}

Result<std::unique_ptr<KvCache>> KvCache::create(Backend& be, int64_t kv_width, int64_t capacity, int n_seq,
                                                 DType type_k, DType type_v) {
    std::unique_ptr<KvCache> c(new KvCache(be, row_bytes(type_k, kv_width), row_bytes(type_v, kv_width)));
    for (int s = 0; s < n_seq; ++s) {
        KvBlock b;
        b.type_k = type_k;
        b.type_v = type_v;
        b.capacity = capacity;
        // pushed first so that the destructor frees what was allocated before a failure
        c->blocks_.push_back(b);
        BM_ASSIGN(c->blocks_.back().k, alloc_state(be, c->row_k_ * size_t(capacity), "KV cache"));
        BM_ASSIGN(c->blocks_.back().v, alloc_state(be, c->row_v_ * size_t(capacity), "KV cache"));
    }
    return c;
}

KvCache::~KvCache() {
    for (KvBlock& b : blocks_) {
        if (b.k) be_.dealloc(b.k);
        if (b.v) be_.dealloc(b.v);
    }
}

uint64_t KvCache::bytes() const {
    uint64_t n = 0;
    for (const KvBlock& b : blocks_) n += uint64_t(row_k_ + row_v_) * uint64_t(b.capacity);
    return n;
}

size_t KvCache::saved_bytes(int64_t n_past) const {
    return (row_k_ + row_v_) * size_t(n_past);
}

void KvCache::save(int seq, const SeqPos& at, uint8_t* dst) const {
    const KvBlock& b = blocks_[size_t(seq)];
    be_.copy(dst, b.k, row_k_ * size_t(at.n_past));
    be_.copy(dst + row_k_ * size_t(at.n_past), b.v, row_v_ * size_t(at.n_past));
}

void KvCache::load(int seq, const SeqPos& saved, const uint8_t* src) {
    const KvBlock& b = blocks_[size_t(seq)];
    be_.copy(b.k, src, row_k_ * size_t(saved.n_past));
    be_.copy(b.v, src + row_k_ * size_t(saved.n_past), row_v_ * size_t(saved.n_past));
}

void KvCache::copy(int src, const SeqPos& from, int dst, const SeqPos&) {
    const KvBlock &a = blocks_[size_t(src)], &b = blocks_[size_t(dst)];
    be_.copy(b.k, a.k, row_k_ * size_t(from.n_past));
    be_.copy(b.v, a.v, row_v_ * size_t(from.n_past));
}

void KvCache::read_host(int seq, const SeqPos&, int64_t from, int64_t n, uint8_t* host) const {
    const KvBlock& b = blocks_[size_t(seq)];
    be_.download(host, static_cast<const uint8_t*>(b.k) + row_k_ * size_t(from), row_k_ * size_t(n));
    be_.download(host + row_k_ * size_t(n), static_cast<const uint8_t*>(b.v) + row_v_ * size_t(from),
                 row_v_ * size_t(n));
}

void KvCache::write_host(int seq, const SeqPos&, int64_t from, int64_t n, const uint8_t* host) {
    const KvBlock& b = blocks_[size_t(seq)];
    be_.upload(static_cast<uint8_t*>(b.k) + row_k_ * size_t(from), host, row_k_ * size_t(n));
    be_.upload(static_cast<uint8_t*>(b.v) + row_v_ * size_t(from), host + row_k_ * size_t(n), row_v_ * size_t(n));
}

void KvCache::bind(int64_t il, int seq, int, BatchState& refs) {
    refs.kv[size_t(il)].push_back(&blocks_[size_t(seq)]);
}

Result<std::unique_ptr<RecurrentState>> RecurrentState::create(Backend& be, int64_t conv_floats, int64_t ssm_floats,
                                                               int n_slots, int n_seq) {
    std::unique_ptr<RecurrentState> r(
        new RecurrentState(be, size_t(conv_floats) * sizeof(float), size_t(ssm_floats) * sizeof(float), n_slots));
    for (int s = 0; s < n_seq; ++s) {
        r->rings_.push_back(RecurrentRing{nullptr, nullptr, n_slots, 0});
        RecurrentRing& ring = r->rings_.back();
        void* conv = nullptr;
        void* ssm = nullptr;
        BM_ASSIGN(conv, alloc_state(be, r->conv_bytes_ * size_t(n_slots), "recurrent state"));
        ring.conv = static_cast<float*>(conv);
        BM_ASSIGN(ssm, alloc_state(be, r->ssm_bytes_ * size_t(n_slots), "recurrent state"));
        ring.ssm = static_cast<float*>(ssm);
        r->clear(s);
    }
    return r;
}

RecurrentState::~RecurrentState() {
    for (RecurrentRing& ring : rings_) {
        if (ring.conv) be_.dealloc(ring.conv);
        if (ring.ssm) be_.dealloc(ring.ssm);
    }
}

uint64_t RecurrentState::bytes() const {
    return uint64_t(conv_bytes_ + ssm_bytes_) * uint64_t(n_slots_) * uint64_t(rings_.size());
}

uint8_t* RecurrentState::conv_slot(int seq, int slot) const {
    return reinterpret_cast<uint8_t*>(rings_[size_t(seq)].conv) + size_t(slot) * conv_bytes_;
}

uint8_t* RecurrentState::ssm_slot(int seq, int slot) const {
    return reinterpret_cast<uint8_t*>(rings_[size_t(seq)].ssm) + size_t(slot) * ssm_bytes_;
}

void RecurrentState::clear(int seq) {
    be_.fill_zero(conv_slot(seq, 0), conv_bytes_ * size_t(n_slots_));
    be_.fill_zero(ssm_slot(seq, 0), ssm_bytes_ * size_t(n_slots_));
}

void RecurrentState::save(int seq, const SeqPos& at, uint8_t* dst) const {
    be_.copy(dst, conv_slot(seq, at.head), conv_bytes_);
    be_.copy(dst + conv_bytes_, ssm_slot(seq, at.head), ssm_bytes_);
}

void RecurrentState::load(int seq, const SeqPos& saved, const uint8_t* src) {
    be_.copy(conv_slot(seq, saved.head), src, conv_bytes_);
    be_.copy(ssm_slot(seq, saved.head), src + conv_bytes_, ssm_bytes_);
}

void RecurrentState::copy(int src, const SeqPos& from, int dst, const SeqPos& to) {
    be_.copy(conv_slot(dst, to.head), conv_slot(src, from.head), conv_bytes_);
    be_.copy(ssm_slot(dst, to.head), ssm_slot(src, from.head), ssm_bytes_);
}

void RecurrentState::read_host(int seq, const SeqPos& at, int64_t, int64_t, uint8_t* host) const {
    be_.download(host, conv_slot(seq, at.head), conv_bytes_);
    be_.download(host + conv_bytes_, ssm_slot(seq, at.head), ssm_bytes_);
}

void RecurrentState::write_host(int seq, const SeqPos& at, int64_t, int64_t, const uint8_t* host) {
    be_.upload(conv_slot(seq, at.head), host, conv_bytes_);
    be_.upload(ssm_slot(seq, at.head), host + conv_bytes_, ssm_bytes_);
}

void RecurrentState::bind(int64_t il, int seq, int head, BatchState& refs) {
    RecurrentRing& r = rings_[size_t(seq)];
    r.head = head;
    refs.rs[size_t(il)].push_back(&r);
}

}  // namespace bigmoe
