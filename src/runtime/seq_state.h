// Per-layer sequence state as objects: an attention layer's KV cache and a Gated DeltaNet
// layer's recurrent rings. Each knows its size and how to clear, save (checkpoint), load
// (restore) and copy one sequence's part, so Context walks the layers once per operation and a
// new kind of state (a quantized KV cache, a sliding window) is one more class.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "core/result.h"
#include "models/hparams.h"

namespace bigmoe {

// Where one sequence's state stands: its length and the ring slot of its current recurrent state.
struct SeqPos {
    int64_t n_past = 0;
    int head = 0;
};

class LayerState {
  public:
    virtual ~LayerState() = default;
    // Bytes allocated for every sequence of the layer.
    virtual uint64_t bytes() const = 0;
    // Bytes one sequence's state at `n_past` positions takes when saved.
    virtual size_t saved_bytes(int64_t n_past) const = 0;
    virtual void clear(int seq) = 0;
    // Writes saved_bytes(at.n_past) bytes to dst (backend memory).
    virtual void save(int seq, const SeqPos& at, uint8_t* dst) const = 0;
    // Reads what save wrote for `saved.n_past` positions into the sequence, whose current ring
    // slot is `saved.head`.
    virtual void load(int seq, const SeqPos& saved, const uint8_t* src) = 0;
    virtual void copy(int src, const SeqPos& from, int dst, const SeqPos& to) = 0;
    // Adds this layer's state of `seq` (current slot `head`) to the refs a forward pass reads.
    virtual void bind(int64_t il, int seq, int head, BatchState& refs) = 0;

    // Host copies for the prompt cache: an attention layer's rows of positions [from, from + n)
    // (n K rows, then n V rows: n * host_row_bytes()), or a recurrent layer's current state
    // (host_state_bytes(), whatever from and n are).
    virtual size_t host_row_bytes() const { return 0; }
    virtual size_t host_k_bytes() const { return 0; }  // of host_row_bytes(), the K row
    virtual size_t host_state_bytes() const { return 0; }
    virtual void read_host(int seq, const SeqPos& at, int64_t from, int64_t n, uint8_t* host) const = 0;
    virtual void write_host(int seq, const SeqPos& at, int64_t from, int64_t n, const uint8_t* host) = 0;
};

// An attention layer's KV cache: one block of `capacity` rows per sequence.
class KvCache final : public LayerState {
  public:
    // Allocates n_seq blocks; the error names the bytes asked for.
    static Result<std::unique_ptr<KvCache>> create(Backend& be, int64_t kv_width, int64_t capacity, int n_seq,
                                                   DType type_k, DType type_v);
    ~KvCache() override;
    // Bytes of one position (K and V rows).
    static size_t bytes_per_position(int64_t kv_width, DType type_k, DType type_v);

    uint64_t bytes() const override;
    size_t saved_bytes(int64_t n_past) const override;
    void clear(int) override {}  // positions past n_past are never read
    void save(int seq, const SeqPos& at, uint8_t* dst) const override;
    void load(int seq, const SeqPos& saved, const uint8_t* src) override;
    void copy(int src, const SeqPos& from, int dst, const SeqPos& to) override;
    void bind(int64_t il, int seq, int head, BatchState& refs) override;
    size_t host_row_bytes() const override { return row_k_ + row_v_; }
    size_t host_k_bytes() const override { return row_k_; }
    void read_host(int seq, const SeqPos& at, int64_t from, int64_t n, uint8_t* host) const override;
    void write_host(int seq, const SeqPos& at, int64_t from, int64_t n, const uint8_t* host) override;

  private:
    KvCache(Backend& be, size_t row_k, size_t row_v) : be_(be), row_k_(row_k), row_v_(row_v) {}
    Backend& be_;
    size_t row_k_, row_v_;  // bytes of one position's K row and V row
    std::vector<KvBlock> blocks_;
};

// A recurrent layer's conv and SSM states: one ring of `n_slots` snapshots per sequence
// (RecurrentRing says how rollback moves the ring's head).
class RecurrentState final : public LayerState {
  public:
    static Result<std::unique_ptr<RecurrentState>> create(Backend& be, int64_t conv_floats, int64_t ssm_floats,
                                                          int n_slots, int n_seq);
    ~RecurrentState() override;

    uint64_t bytes() const override;
    size_t saved_bytes(int64_t) const override { return conv_bytes_ + ssm_bytes_; }
    void clear(int seq) override;
    void save(int seq, const SeqPos& at, uint8_t* dst) const override;
    void load(int seq, const SeqPos& saved, const uint8_t* src) override;
    void copy(int src, const SeqPos& from, int dst, const SeqPos& to) override;
    void bind(int64_t il, int seq, int head, BatchState& refs) override;
    size_t host_state_bytes() const override { return conv_bytes_ + ssm_bytes_; }
    void read_host(int seq, const SeqPos& at, int64_t from, int64_t n, uint8_t* host) const override;
    void write_host(int seq, const SeqPos& at, int64_t from, int64_t n, const uint8_t* host) override;

  private:
    RecurrentState(Backend& be, size_t conv_bytes, size_t ssm_bytes, int n_slots)
        : be_(be), conv_bytes_(conv_bytes), ssm_bytes_(ssm_bytes), n_slots_(n_slots) {}
    uint8_t* conv_slot(int seq, int slot) const;
    uint8_t* ssm_slot(int seq, int slot) const;
    Backend& be_;
    size_t conv_bytes_, ssm_bytes_;  // one snapshot
    int n_slots_;
    std::vector<RecurrentRing> rings_;
};

}  // namespace bigmoe
