#include "runtime/prompt_cache.h"

#include <algorithm>
#include <cstring>

namespace bigmoe {

PromptCache::~PromptCache() = default;

uint64_t PromptCache::Node::bytes() const {
    uint64_t b = tokens.size() * sizeof(int32_t) + rows.size();
    for (const auto& [pos, s] : snaps) b += s.state.size() + s.logits.size() * sizeof(float);
    return b;
}

PromptCache::Walk PromptCache::walk(const std::vector<int32_t>& tokens) const {
    Walk w;
    const Node* n = &root_;
    size_t pos = 0;
    while (pos < tokens.size()) {
        auto it = n->kids.find(tokens[pos]);
        if (it == n->kids.end()) break;
        Node* c = it->second.get();
        size_t k = 0;
        while (k < c->tokens.size() && pos + k < tokens.size() && c->tokens[k] == tokens[pos + k]) ++k;
        w.path.push_back(c);
        w.matched = int64_t(pos + k);
        if (k < c->tokens.size()) break;
        pos += k;
        n = c;
    }
    return w;
}

int64_t PromptCache::best(const Walk& w, bool recurrent, int64_t max_len, int64_t len, bool want_full) const {
    const int64_t limit = std::min(w.matched, max_len);
    int64_t p = recurrent ? 0 : std::max<int64_t>(limit, 0);
    for (const Node* n : w.path)
        for (const auto& [pos, s] : n->snaps) {
            if (recurrent && pos <= limit) p = std::max(p, pos);
            if (want_full && pos == len && w.matched == len && !s.logits.empty()) return len;
        }
    return p;
}

int64_t PromptCache::match(const Context& ctx, const std::vector<int32_t>& tokens, int64_t max_len) const {
    std::lock_guard<std::mutex> lock(mu_);
    return best(walk(tokens), ctx.prefix_state_bytes() > 0, max_len, int64_t(tokens.size()), false);
}

Result<int64_t> PromptCache::restore(Context& ctx, int seq, const std::vector<int32_t>& tokens, int64_t max_len,
                                     std::vector<float>* logits) {
    std::lock_guard<std::mutex> lock(mu_);
    ++counters_.lookups;
    const bool recurrent = ctx.prefix_state_bytes() > 0;
    const Walk w = walk(tokens);
    const int64_t p = best(w, recurrent, max_len, int64_t(tokens.size()), logits != nullptr);
    ctx.clear(seq);
    if (p == 0) return int64_t(0);
    const uint8_t* state = nullptr;
    for (Node* n : w.path) {
        if (n->start >= p) break;
        const int64_t m = std::min(n->end(), p) - n->start;
        BM_TRY(ctx.write_rows(seq, n->start, m, n->rows.data(), int64_t(n->tokens.size())));
        if (n->start < p && p <= n->end() && n->snaps.count(p)) {
            const Node::Snap& s = n->snaps.at(p);
            if (recurrent) state = s.state.data();
            if (logits && p == int64_t(tokens.size())) *logits = s.logits;
        }
        n->used = ++clock_;
    }
    if (auto r = ctx.set_prefix(seq, p, state); !r) {
        ctx.clear(seq);
        return r.error();
    }
    ++counters_.hits;
    counters_.tokens_reused += p;
    return p;
}

void PromptCache::split(const Context& ctx, Node& n, int64_t keep) {
    auto tail = std::make_unique<Node>();
    const int64_t N = int64_t(n.tokens.size());
    tail->tokens.assign(n.tokens.begin() + keep, n.tokens.end());
    tail->start = n.start + keep;
    tail->parent = &n;
    tail->used = n.used;
    const size_t rb = ctx.prefix_row_bytes();
    tail->rows.resize(rb * size_t(N - keep));
    ctx.slice_rows(n.rows.data(), N, keep, N - keep, tail->rows.data());
    std::vector<uint8_t> head(rb * size_t(keep));
    ctx.slice_rows(n.rows.data(), N, 0, keep, head.data());
    n.rows.swap(head);
    for (auto it = n.snaps.begin(); it != n.snaps.end();) {
        if (it->first > tail->start) {
            tail->snaps.insert(std::move(*it));
            it = n.snaps.erase(it);
        } else {
            ++it;
        }
    }
    tail->kids.swap(n.kids);
    for (auto& [t, k] : tail->kids) k->parent = tail.get();
    n.tokens.resize(size_t(keep));
    const int32_t first = tail->tokens[0];
    n.kids[first] = std::move(tail);
}

Result<void> PromptCache::save(Context& ctx, int seq, const std::vector<int32_t>& tokens,
                               const std::vector<float>* logits) {
    const int64_t n = int64_t(tokens.size());
    if (n == 0 || n != ctx.n_past(seq))
        return make_error("prompt cache: sequence " + std::to_string(seq) + " holds " +
                          std::to_string(ctx.n_past(seq)) + " positions, not the " + std::to_string(n) + " given");
    return add(
        ctx, tokens, [&](int64_t from, int64_t m, uint8_t* dst) { return ctx.read_rows(seq, from, m, dst); },
        [&](uint8_t* dst) { return ctx.read_state(seq, dst); }, logits);
}

Result<void> PromptCache::insert(const Context& ctx, const SeqState& s) {
    const int64_t n = int64_t(s.tokens.size());
    if (n == 0 || s.rows.size() != ctx.prefix_row_bytes() * size_t(n) || s.state.size() != ctx.prefix_state_bytes())
        return make_error("prompt cache: a sequence state of the wrong size");
    return add(
        ctx, s.tokens,
        [&](int64_t from, int64_t m, uint8_t* dst) -> Result<void> {
            ctx.slice_rows(s.rows.data(), n, from, m, dst);
            return {};
        },
        [&](uint8_t* dst) -> Result<void> {
            std::memcpy(dst, s.state.data(), s.state.size());
            return {};
        },
        nullptr);
}

template <class Rows, class State>
Result<void> PromptCache::add(const Context& ctx, const std::vector<int32_t>& tokens, Rows rows, State state,
                              const std::vector<float>* logits) {
    const int64_t n = int64_t(tokens.size());
    std::lock_guard<std::mutex> lock(mu_);
    Walk w = walk(tokens);
    Node* at = nullptr;  // the node whose tokens end at or run past position n
    if (w.matched == n) {
        for (Node* p : w.path)
            if (p->start < n && n <= p->end()) at = p;
    } else {
        Node* parent = w.path.empty() ? &root_ : w.path.back();
        if (!w.path.empty() && w.matched < parent->end()) split(ctx, *parent, w.matched - parent->start);
        auto node = std::make_unique<Node>();
        node->tokens.assign(tokens.begin() + w.matched, tokens.end());
        node->start = w.matched;
        node->parent = parent;
        node->rows.resize(ctx.prefix_row_bytes() * size_t(n - w.matched));
        BM_TRY(rows(w.matched, n - w.matched, node->rows.data()));
        bytes_ += node->bytes();
        at = node.get();
        parent->kids[tokens[size_t(w.matched)]] = std::move(node);
    }
    // a snapshot: the recurrent state (none for a model without recurrent layers, whose rows
    // alone restore), and the logits when given
    const bool recurrent = ctx.prefix_state_bytes() > 0;
    if ((recurrent || logits) && !at->snaps.count(n)) {
        Node::Snap s;
        s.state.resize(ctx.prefix_state_bytes());
        if (recurrent) BM_TRY(state(s.state.data()));
        bytes_ += s.state.size();
        at->snaps[n] = std::move(s);
    }
    if (logits && at->snaps[n].logits.empty()) {
        at->snaps[n].logits = *logits;
        bytes_ += logits->size() * sizeof(float);
    }
    for (Node* p = at; p && p != &root_; p = p->parent) p->used = ++clock_;
    ++counters_.saves;
    evict_to_budget();
    return {};
}

void PromptCache::evict_to_budget() {
    while (bytes_ > budget_) {
        // the least recently used leaf
        Node* victim = nullptr;
        std::vector<Node*> stack = {&root_};
        while (!stack.empty()) {
            Node* n = stack.back();
            stack.pop_back();
            for (auto& [t, k] : n->kids) stack.push_back(k.get());
            if (n != &root_ && n->kids.empty() && (!victim || n->used < victim->used)) victim = n;
        }
        if (!victim) break;
        bytes_ -= victim->bytes();
        ++counters_.evictions;
        victim->parent->kids.erase(victim->tokens[0]);
    }
}

void PromptCache::count(const Node& n, PromptCacheStats& s) const {
    for (const auto& [t, k] : n.kids) {
        ++s.nodes;
        s.snapshots += int64_t(k->snaps.size());
        count(*k, s);
    }
}

int64_t PromptCache::evictions() const {
    std::lock_guard<std::mutex> lock(mu_);
    return counters_.evictions;
}

PromptCacheStats PromptCache::stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    PromptCacheStats s = counters_;
    s.bytes = bytes_;
    s.budget = budget_;
    count(root_, s);
    return s;
}

void PromptCache::clear() {
    std::lock_guard<std::mutex> lock(mu_);
    root_.kids.clear();
    bytes_ = 0;
}

}  // namespace bigmoe
