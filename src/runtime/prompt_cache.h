// An exact prompt cache for every architecture, hybrid ones included: a tree over token
// sequences shared by all sequences of a context and by past requests. Each node holds the
// attention layers' KV rows of its tokens once; recurrent (conv + SSM) states are kept as
// snapshots at chosen positions (a recurrent state cannot be cut back to a shorter prefix). A new
// prompt restores the longest cached prefix that ends at a snapshot (any cached prefix for a
// model without recurrent layers) and processes only the rest; a snapshot at the end of a prompt
// also keeps the prompt's last logits, so the same prompt again processes nothing. By batch
// invariance the restored state is the one processing the prefix would compute, bit for bit.
//
// Memory is host memory with a budget; the least recently used leaves go first.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "core/result.h"
#include "runtime/context.h"
#include "runtime/seq_file.h"

namespace bigmoe {

struct PromptCacheStats {
    uint64_t bytes = 0, budget = 0;
    int64_t nodes = 0, snapshots = 0;
    int64_t lookups = 0, hits = 0, tokens_reused = 0, saves = 0, evictions = 0;
};

class PromptCache {
  public:
    explicit PromptCache(uint64_t budget_bytes) : budget_(budget_bytes) {}
    ~PromptCache();
    PromptCache(const PromptCache&) = delete;
    PromptCache& operator=(const PromptCache&) = delete;

    // Restores into seq the longest cached prefix of `tokens` that can be restored, at most
    // max_len tokens, or all of them when `logits` is given and a snapshot there kept the last
    // token's logits (then in *logits); returns its length (0: nothing; seq is then cleared).
    Result<int64_t> restore(Context& ctx, int seq, const std::vector<int32_t>& tokens, int64_t max_len,
                            std::vector<float>* logits = nullptr);
    // Saves seq's state after `tokens` (all it holds: tokens.size() == ctx.n_past(seq)): the KV
    // rows the tree lacks and a snapshot of the recurrent state at that position, with the last
    // token's logits when given.
    Result<void> save(Context& ctx, int seq, const std::vector<int32_t>& tokens,
                      const std::vector<float>* logits = nullptr);
    // Adds a sequence's state kept elsewhere (a slot's file) as if save had seen it.
    Result<void> insert(const Context& ctx, const SeqState& s);
    // The longest cached prefix restore would take, without restoring it.
    int64_t match(const Context& ctx, const std::vector<int32_t>& tokens, int64_t max_len) const;

    // Counters and sizes; stats() also walks the tree to count nodes and snapshots.
    PromptCacheStats stats() const;
    int64_t evictions() const;
    void clear();

  private:
    struct Node {
        std::vector<int32_t> tokens;  // positions [start, start + tokens.size())
        int64_t start = 0;
        std::vector<uint8_t> rows;  // their KV rows (Context's host layout)
        struct Snap {
            std::vector<uint8_t> state;  // the recurrent layers' (empty for a model without them)
            std::vector<float> logits;   // of the token before the position, when kept
        };
        std::map<int64_t, Snap> snaps;                  // by position, in (start, end]
        std::map<int32_t, std::unique_ptr<Node>> kids;  // by first token
        Node* parent = nullptr;
        uint64_t used = 0;
        int64_t end() const { return start + int64_t(tokens.size()); }
        uint64_t bytes() const;
    };
    // The path of nodes tokens[0, n) runs through and how far it matches (prefix length).
    struct Walk {
        std::vector<Node*> path;
        int64_t matched = 0;
    };
    Walk walk(const std::vector<int32_t>& tokens) const;
    // The longest prefix restore may take: up to max_len, or all len tokens when want_full and a
    // snapshot at len kept logits.
    int64_t best(const Walk& w, bool recurrent, int64_t max_len, int64_t len, bool want_full) const;
    // Splits n so that its first `keep` tokens stay in it; the rest moves to a child.
    void split(const Context& ctx, Node& n, int64_t keep);
    void evict_to_budget();
    // save and insert: the tree gains tokens' path, its missing rows from rows(from, n, dst), and
    // the snapshot at its end from state(dst).
    template <class Rows, class State>
    Result<void> add(const Context& ctx, const std::vector<int32_t>& tokens, Rows rows, State state,
                     const std::vector<float>* logits);
    void count(const Node& n, PromptCacheStats& s) const;

    mutable std::mutex mu_;  // guards everything below (stats read from other threads)
    uint64_t budget_;
    Node root_;
    uint64_t bytes_ = 0, clock_ = 0;
    PromptCacheStats counters_;
};

}  // namespace bigmoe
