// Runtime state for one model: per-sequence KV cache and recurrent state, micro-batched
// decoding, and the state operations speculative decoding and prompt caching need:
// remove the last N positions, checkpoint/restore, and copy between sequences.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "core/result.h"
#include "models/model.h"
#include "runtime/seq_state.h"

namespace bigmoe {

struct ContextParams {
    int64_t n_ctx = 4096;  // positions per sequence
    int n_seq_max = 1;
    int64_t n_ubatch = 512;  // micro-batch size
    DType type_k = DType::F16;
    DType type_v = DType::F16;
    int rollback_depth = 16;  // how many last positions remove_last can undo on recurrent layers
};

// What a greedy chain's caller answers for each new token (Context::decode_greedy_chain).
enum class ChainNext {
    more,          // process it and go on
    stop_kept,     // process it, then stop
    stop_dropped,  // stop without it
};

struct GreedyChain {
    int64_t max_steps = -1;  // tokens processed at most, `tok` among them (-1: no limit)
    // whether on_token may answer stop_dropped: a step formed ahead is then undone, which a
    // recurrent model can only do with rollback_depth >= 1 (otherwise the steps are not chained)
    bool may_drop = true;
};

struct BatchToken {
    int32_t token = 0;
    int seq = 0;
    bool logits = false;
};

// A saved copy of one sequence's full state (KV for its positions + current recurrent state),
// held in backend memory.
class SeqCheckpoint {
  public:
    ~SeqCheckpoint();
    SeqCheckpoint(const SeqCheckpoint&) = delete;
    SeqCheckpoint& operator=(const SeqCheckpoint&) = delete;
    int64_t n_past() const { return n_past_; }
    size_t bytes() const { return bytes_; }

  private:
    friend class Context;
    SeqCheckpoint() = default;
    // One allocation on each backend that holds layers' state, in the model's backend order.
    struct Part {
        Backend* backend;
        void* data;
    };
    std::vector<Part> parts_;
    size_t bytes_ = 0;
    int64_t n_past_ = 0;
};

class Context {
  public:
    static Result<std::unique_ptr<Context>> create(Model& model, const ContextParams& params);
    ~Context();
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    // Appends the tokens to their sequences (positions follow each sequence's length) and
    // returns, in `logits`, [number of tokens with .logits][n_vocab] in batch order.
    Result<void> decode(const std::vector<BatchToken>& batch, std::vector<float>* logits);
    // The same, and in `argmax` (when not null) each output row's greedy token (core/argmax.h),
    // found by the backend where the logits are: without `logits` a GPU reads back only these.
    Result<void> decode(const std::vector<BatchToken>& batch, std::vector<float>* logits, std::vector<int32_t>* argmax);
    // Convenience: tokens for one sequence, logits for every position (all_logits) or the last.
    Result<void> decode_seq(int seq, const std::vector<int32_t>& tokens, bool all_logits, std::vector<float>* logits);
    // Tokens for one sequence; the greedy token after the last.
    Result<int32_t> decode_greedy(int seq, const std::vector<int32_t>& tokens);
    // Greedy decoding a token a step: `tok` is processed, then on_token(id, n_past) sees each
    // step's greedy token in turn, with the sequence's length before it, and answers what to do
    // with it (ChainNext). The same tokens, state and held logits as decode_greedy in a loop; on a
    // backend that chains greedy steps (Backend::chains_greedy) the step after a token is formed
    // and started before the host reads the token, so the GPU does not wait for the host between
    // steps, and a step formed past a stop_dropped is undone (remove_last, its logits restored).
    Result<void> decode_greedy_chain(int seq, int32_t tok, const GreedyChain& c,
                                     const std::function<ChainNext(int32_t id, int64_t n_past)>& on_token);
    // Output row `out` (in batch order) of the last decode's logits, read back now: for a caller
    // that took greedy tokens and then needs one row, while the backend still holds it (an error
    // for an output of an earlier micro-batch than the last, or once another decode ran).
    Result<void> read_logits(int64_t out, std::vector<float>* logits) const;

    int64_t n_past(int seq) const { return seqs_.at(size_t(seq)).n_past; }
    // Positions that remove_last can still undo for this sequence.
    int64_t rollback_available(int seq) const;
    Result<void> remove_last(int seq, int64_t n);
    void clear(int seq);
    Result<std::unique_ptr<SeqCheckpoint>> checkpoint(int seq);
    Result<void> restore(int seq, const SeqCheckpoint& cp);
    Result<void> copy_seq(int src, int dst);

    // The prompt cache's view of a sequence. Rows: per position, every attention layer's K and V
    // rows; a host buffer of n rows holds them layer by layer (the layer's n K rows, then its n
    // V rows). State: the recurrent layers' current states (0 bytes for a model without them).
    size_t prefix_row_bytes() const;
    size_t prefix_state_bytes() const;
    // Rows [from, from + n) of seq into host (n rows).
    Result<void> read_rows(int seq, int64_t from, int64_t n, uint8_t* host) const;
    // The first n of a host buffer's `rows` rows into positions [from, from + n) of seq.
    Result<void> write_rows(int seq, int64_t from, int64_t n, const uint8_t* host, int64_t rows);
    // Rows [from, from + n) of a host buffer of `rows` rows into dst (n rows).
    void slice_rows(const uint8_t* host, int64_t rows, int64_t from, int64_t n, uint8_t* dst) const;
    Result<void> read_state(int seq, uint8_t* host) const;
    // Makes seq hold n_past positions: rows written with write_rows and, for recurrent layers,
    // the state in host (prefix_state_bytes(), null when there is none). Rollback starts there.
    Result<void> set_prefix(int seq, int64_t n_past, const uint8_t* state);

    const ContextParams& params() const { return params_; }
    Model& model() { return model_; }
    const Model& model() const { return model_; }
    int64_t n_vocab() const { return model_.hparams().n_vocab; }
    // Bytes of KV cache per position (all layers) and fixed recurrent bytes per sequence.
    uint64_t kv_bytes_per_token() const;
    uint64_t recurrent_bytes_per_seq() const;
    // Bytes allocated for every sequence's state (KV caches and recurrent rings).
    uint64_t state_bytes() const;

    // What a context with these parameters takes, and whether it fits in `available` bytes;
    // the error names the bytes needed and available and the largest n_ctx that fits.
    struct MemoryNeed {
        uint64_t kv = 0, recurrent = 0, work = 0;
        uint64_t total() const { return kv + recurrent + work; }
    };
    // n_attention / n_recurrent: the layers whose state it counts (-1: all of them).
    static MemoryNeed memory_need(const HParams& hp, const ContextParams& p, int64_t n_attention = -1,
                                  int64_t n_recurrent = -1);
    static Result<void> check_fits(const HParams& hp, const ContextParams& p, uint64_t available);
    // The same on every backend of the model: each holds its layers' states and working buffers.
    static Result<void> check_fits(const Model& m, const ContextParams& p);
    // KV bytes per position (all layers) with these cache types.
    static uint64_t kv_bytes_per_token(const HParams& hp, DType type_k, DType type_v);
    // Whether t is a KV cache type this model's heads can hold (a block type's 32 values must
    // divide the head size); the error says why not.
    static Result<void> check_cache_type(const HParams& hp, DType t);

  private:
    struct Seq {
        int64_t n_past = 0;
        int64_t history = 0;  // recurrent snapshots available for rollback
        int head = 0;         // ring slot of the current recurrent state
        SeqPos pos() const { return {n_past, head}; }
    };
    Context(Model& m, const ContextParams& p) : model_(m), be_(m.backend()), params_(p) {}
    Result<void> validate(const std::vector<BatchToken>& batch) const;
    // One sequence's tokens as a batch: logits for every one (all_logits) or the last.
    static std::vector<BatchToken> seq_batch(int seq, const std::vector<int32_t>& tokens, bool all_logits);
    // Runs one micro-batch; the logits of token out_rows[r] go to row out_dest[r] of logits_out
    // and their argmax to argmax_out[out_dest[r]] (each when not null).
    // chain: 0 as said; 1 the argmax started (Backend::argmax_rows_start), not read; 2 the same,
    // the tokens being the last started argmax's (BatchState::ids_from_argmax).
    Result<void> run_ubatch(const std::vector<int32_t>& tokens, const std::vector<SeqSpan>& spans,
                            const std::vector<int64_t>& out_rows, const std::vector<int64_t>& out_dest,
                            float* logits_out, int32_t* argmax_out, int chain = 0);
    // One token of a greedy chain for seq, its argmax started (from_argmax: the token is the last
    // started argmax, `tok` unused).
    Result<void> start_greedy_step(int seq, int32_t tok, bool from_argmax);
    Result<void> greedy_chain_on_backend(int seq, int32_t tok, const GreedyChain& c,
                                         const std::function<ChainNext(int32_t, int64_t)>& on_token);
    // Bytes one sequence's saved state takes at n_past, of the layers on `on` (nullptr: all).
    size_t seq_state_bytes(int64_t n_past, const Backend* on = nullptr) const;

    Model& model_;
    Backend& be_;
    ContextParams params_;
    std::vector<Seq> seqs_;
    std::vector<std::unique_ptr<LayerState>> layers_;  // [layer]: KvCache or RecurrentState
    void* logits_buf_ = nullptr;
    int64_t logits_rows_ = 0;
    void* logits_kept_ = nullptr;  // a greedy chain's last kept row of logits (one row)
    // [output of the last decode]: its row in logits_buf_, -1 once another micro-batch's rows
    // took the buffer; held_last_: the outputs of the last micro-batch
    std::vector<int64_t> held_, held_last_;
};

}  // namespace bigmoe
