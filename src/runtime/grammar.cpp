#include "runtime/grammar.h"

#include <algorithm>
#include <map>

#include "tokenizer/unicode.h"

namespace bigmoe {

bool Grammar::CharClass::matches(uint32_t c) const {
    bool in = false;
    for (const auto& [lo, hi] : ranges)
        if (c >= lo && c <= hi) {
            in = true;
            break;
        }
    return in != negated;
}

bool Grammar::CharClass::meets(uint32_t lo, uint32_t hi) const {
    if (!negated) {
        for (const auto& [a, b] : ranges)
            if (a <= hi && b >= lo) return true;
        return false;
    }
    // some code point of [lo, hi] outside every range: walk up from lo past the ranges covering it
    std::vector<std::pair<uint32_t, uint32_t>> r = ranges;
    std::sort(r.begin(), r.end());
    uint32_t c = lo;
    for (const auto& [a, b] : r) {
        if (a > c) break;
        if (b >= c) {
            if (b >= hi) return false;
            c = b + 1;
        }
    }
    return c <= hi;
}

// ---------------------------------------------------------------- parsing

class GrammarParser {
  public:
    explicit GrammarParser(const std::string& text) : s_(text) {}

    Result<std::shared_ptr<const Grammar>> run() {
        space(true);
        while (i_ < s_.size()) {
            if (auto r = rule(); !r) return r.error();
            space(true);
        }
        for (size_t r = 0; r < g_->rules_.size(); ++r)
            if (!defined_[r]) return Error{"grammar: rule \"" + g_->names_[r] + "\" is used but not defined"};
        auto root = names_.find("root");
        if (root == names_.end() || !defined_[size_t(root->second)])
            return Error{"grammar: no \"root\" rule (the rule the text must derive)"};
        g_->root_ = root->second;
        if (auto r = check_left_recursion(); !r) return r.error();
        g_->find_chains();
        std::shared_ptr<const Grammar> g(std::move(g_));
        if (const int32_t wide = GrammarRecognizer::too_wide(g); wide >= 0)
            return Error{"grammar: rule \"" + g->names_[size_t(wide)] + "\" branches into more than " +
                         std::to_string(GrammarRecognizer::k_max_stacks) +
                         " derivations at once (or nests rules deeper than 512): generation follows at most that many"};
        return g;
    }

  private:
    using Element = Grammar::Element;
    using Kind = Grammar::Kind;
    // one alternative's elements while it is read
    using Seq = std::vector<Element>;

    Error bad(const std::string& what) const {
        size_t line = 1, col = 1;
        for (size_t k = 0; k < i_ && k < s_.size(); ++k) {
            if (s_[k] == '\n') {
                ++line;
                col = 1;
            } else {
                ++col;
            }
        }
        return Error{"grammar: line " + std::to_string(line) + ", column " + std::to_string(col) + ": " + what};
    }
    bool at_end() const { return i_ >= s_.size(); }
    char peek(size_t k = 0) const { return i_ + k < s_.size() ? s_[i_ + k] : '\0'; }

    // Skips spaces and comments; newlines only where a rule cannot end (`newlines`).
    void space(bool newlines) {
        while (!at_end()) {
            const char c = peek();
            if (c == '#') {
                while (!at_end() && peek() != '\n') ++i_;
            } else if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
                ++i_;
            } else {
                break;
            }
        }
    }
    static bool name_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    }
    std::string name() {
        const size_t b = i_;
        while (!at_end() && name_char(peek())) ++i_;
        return s_.substr(b, i_ - b);
    }
    int32_t rule_id(const std::string& n) {
        if (auto it = names_.find(n); it != names_.end()) return it->second;
        const int32_t id = int32_t(g_->rules_.size());
        g_->rules_.emplace_back();
        g_->names_.push_back(n);
        defined_.push_back(false);
        names_[n] = id;
        return id;
    }
    int32_t fresh_rule(const std::string& base) {
        std::string n;
        do n = base + "-" + std::to_string(++fresh_);
        while (names_.count(n));
        const int32_t id = rule_id(n);
        defined_[size_t(id)] = true;
        return id;
    }
    Result<void> define(int32_t id, const std::vector<Seq>& alts) {
        if (g_->rules_.size() > Grammar::k_max_rules) return bad("more than 4096 rules");
        for (const Seq& a : alts) {
            g_->rules_[size_t(id)].push_back(int32_t(g_->elements_.size()));
            g_->elements_.insert(g_->elements_.end(), a.begin(), a.end());
            g_->elements_.push_back({Kind::end, 0});
        }
        if (g_->elements_.size() > Grammar::k_max_elements) return bad("the grammar is too large");
        return {};
    }

    Result<void> rule() {
        const size_t at = i_;
        const std::string n = name();
        if (n.empty()) return bad("expected a rule name");
        space(false);
        if (s_.compare(i_, 3, "::=") != 0) return bad("expected \"::=\" after \"" + n + "\"");
        i_ += 3;
        const int32_t id = rule_id(n);
        if (defined_[size_t(id)]) {
            i_ = at;
            return bad("rule \"" + n + "\" is defined twice");
        }
        defined_[size_t(id)] = true;
        std::vector<Seq> alts;
        if (auto r = alternatives(n, false, alts); !r) return r.error();
        if (!at_end() && peek() != '\n' && peek() != '\r') return bad(std::string("unexpected '") + peek() + "'");
        return define(id, alts);
    }

    // alternatives separated by '|'; inside a group newlines are spaces
    Result<void> alternatives(const std::string& rule, bool nested, std::vector<Seq>& alts) {
        space(true);
        for (;;) {
            Seq seq;
            if (auto r = sequence(rule, nested, seq); !r) return r.error();
            alts.push_back(std::move(seq));
            if (peek() != '|') return {};
            ++i_;
            space(true);
        }
    }

    Result<void> sequence(const std::string& rule, bool nested, Seq& seq) {
        for (;;) {
            space(nested);
            if (++depth_ > 256) return bad("groups nested deeper than 256");
            struct Leave {
                int& d;
                ~Leave() { --d; }
            } leave{depth_};
            const size_t first = seq.size();
            const char c = peek();
            if (c == '"') {
                ++i_;
                while (peek() != '"') {
                    if (at_end() || peek() == '\n') return bad("unterminated string");
                    auto cp = character();
                    if (!cp) return cp.error();
                    seq.push_back(chars({{*cp, *cp}}, false));
                }
                ++i_;
                if (seq.size() == first) {  // "" derives the empty text: nothing to repeat
                    space(nested);
                    if (postfix_start()) return bad("a repetition of the empty string");
                    continue;
                }
            } else if (c == '[') {
                ++i_;
                bool negated = false;
                if (peek() == '^') {
                    negated = true;
                    ++i_;
                }
                std::vector<std::pair<uint32_t, uint32_t>> ranges;
                while (peek() != ']') {
                    if (at_end()) return bad("unterminated character class");
                    auto lo = character();
                    if (!lo) return lo.error();
                    uint32_t hi = *lo;
                    if (peek() == '-' && peek(1) != ']' && peek(1) != '\0') {
                        ++i_;
                        auto h = character();
                        if (!h) return h.error();
                        hi = *h;
                        if (hi < *lo) return bad("a character range whose end comes before its start");
                    }
                    ranges.push_back({*lo, hi});
                }
                ++i_;
                if (ranges.empty() && !negated) return bad("an empty character class matches nothing");
                seq.push_back(chars(std::move(ranges), negated));
            } else if (c == '.') {
                ++i_;
                seq.push_back({Kind::any, 0});
            } else if (c == '(') {
                ++i_;
                std::vector<Seq> alts;
                if (auto r = alternatives(rule, true, alts); !r) return r.error();
                if (peek() != ')') return bad("expected ')'");
                ++i_;
                const int32_t id = fresh_rule(rule);
                if (auto r = define(id, alts); !r) return r.error();
                seq.push_back({Kind::rule, id});
            } else if (name_char(c)) {
                const size_t at = i_;
                const std::string n = name();
                // a name followed by ::= starts the next rule (only where a newline ended this one)
                space(false);
                if (s_.compare(i_, 3, "::=") == 0) {
                    i_ = at;
                    return bad("expected a newline before the rule \"" + n + "\"");
                }
                i_ = at + n.size();
                seq.push_back({Kind::rule, rule_id(n)});
            } else {
                return {};  // the end of the sequence: '|', ')', a newline, the end
            }
            space(nested);
            if (postfix_start()) {
                if (auto r = repeat(rule, seq, first); !r) return r.error();
            }
        }
    }

    bool postfix_start() const { return peek() == '*' || peek() == '+' || peek() == '?' || peek() == '{'; }

    Element chars(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated) {
        Grammar::CharClass cc;
        cc.negated = negated;
        cc.ranges = std::move(ranges);
        g_->classes_.push_back(std::move(cc));
        return {Kind::chars, int32_t(g_->classes_.size() - 1)};
    }

    // The item seq[first..] followed by a postfix operator: replaced by a rule deriving the
    // repetition (x* : r ::= x r | "" ; x{m,n} : m copies, then n - m optional ones nested).
    Result<void> repeat(const std::string& rule, Seq& seq, size_t first) {
        const Seq item(seq.begin() + std::ptrdiff_t(first), seq.end());
        seq.resize(first);
        int64_t lo = 0, hi = -1;  // hi -1: unbounded
        const char op = peek();
        ++i_;
        if (op == '*') {
            lo = 0;
        } else if (op == '+') {
            lo = 1;
        } else if (op == '?') {
            hi = 1;
        } else {
            space(false);
            auto num = [&](int64_t* v) {
                if (peek() < '0' || peek() > '9') return false;
                *v = 0;
                while (peek() >= '0' && peek() <= '9') {
                    *v = *v * 10 + (peek() - '0');
                    if (*v > 10000) return false;
                    ++i_;
                }
                return true;
            };
            if (!num(&lo)) return bad("expected a count (0 to 10000) after '{'");
            space(false);
            if (peek() == ',') {
                ++i_;
                space(false);
                if (peek() != '}' && !num(&hi)) return bad("expected a count (0 to 10000) or '}'");
                space(false);
            } else {
                hi = lo;
            }
            if (peek() != '}') return bad("expected '}'");
            ++i_;
            if (hi >= 0 && hi < lo) return bad("a repetition {m,n} with n < m");
        }
        for (int64_t k = 0; k < lo; ++k) seq.insert(seq.end(), item.begin(), item.end());
        if (hi < 0) {  // r ::= item r | ""
            const int32_t r = fresh_rule(rule);
            Seq rec = item;
            rec.push_back({Kind::rule, r});
            if (auto e = define(r, {rec, Seq{}}); !e) return e.error();
            seq.push_back({Kind::rule, r});
        } else if (hi > lo) {  // r_k ::= item r_(k+1) | "" from the innermost out
            int32_t inner = -1;
            for (int64_t k = hi - lo; k > 0; --k) {
                const int32_t r = fresh_rule(rule);
                Seq opt = item;
                if (inner >= 0) opt.push_back({Kind::rule, inner});
                if (auto e = define(r, {opt, Seq{}}); !e) return e.error();
                inner = r;
            }
            seq.push_back({Kind::rule, inner});
        }
        return {};
    }

    // One character of a literal or class, escapes decoded, as a code point.
    Result<uint32_t> character() {
        const uint8_t c = uint8_t(peek());
        if (c == '\\') {
            ++i_;
            const char e = peek();
            ++i_;
            switch (e) {
                case 'n':
                    return uint32_t('\n');
                case 'r':
                    return uint32_t('\r');
                case 't':
                    return uint32_t('\t');
                case '\\':
                case '"':
                case '[':
                case ']':
                case '-':
                case '^':
                    return uint32_t(uint8_t(e));
                case 'x':
                    return hex(2);
                case 'u':
                    return hex(4);
                case 'U':
                    return hex(8);
                default:
                    --i_;
                    return bad(std::string("unknown escape \\") + e);
            }
        }
        // a UTF-8 character
        const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i_ + size_t(n) > s_.size()) return bad("invalid UTF-8");
        uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
        for (int k = 1; k < n; ++k) {
            const uint8_t b = uint8_t(s_[i_ + size_t(k)]);
            if ((b & 0xC0) != 0x80) return bad("invalid UTF-8");
            cp = (cp << 6) | (b & 0x3F);
        }
        i_ += size_t(n);
        return cp;
    }
    Result<uint32_t> hex(int digits) {
        uint32_t v = 0;
        for (int k = 0; k < digits; ++k) {
            const char h = peek();
            int d = h >= '0' && h <= '9'   ? h - '0'
                    : h >= 'a' && h <= 'f' ? h - 'a' + 10
                    : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                           : -1;
            if (d < 0) return bad("expected " + std::to_string(digits) + " hex digits");
            v = v * 16 + uint32_t(d);
            ++i_;
        }
        if (v > 0x10FFFF) return bad("a code point past U+10FFFF");
        return v;
    }

    // A rule that can reach itself before reading a character would expand forever.
    Result<void> check_left_recursion() {
        const size_t n = g_->rules_.size();
        std::vector<char> nullable(n, 0);
        for (bool changed = true; changed;) {
            changed = false;
            for (size_t r = 0; r < n; ++r) {
                if (nullable[r]) continue;
                for (int32_t a : g_->rules_[r]) {
                    bool all = true;
                    for (int32_t p = a; g_->elements_[size_t(p)].kind != Kind::end; ++p) {
                        const Element& e = g_->elements_[size_t(p)];
                        if (e.kind != Kind::rule || !nullable[size_t(e.arg)]) {
                            all = false;
                            break;
                        }
                    }
                    if (all) {
                        nullable[r] = 1;
                        changed = true;
                        break;
                    }
                }
            }
        }
        // rules each rule can start with (through nullable prefixes)
        std::vector<std::vector<int32_t>> first(n);
        for (size_t r = 0; r < n; ++r)
            for (int32_t a : g_->rules_[r])
                for (int32_t p = a; g_->elements_[size_t(p)].kind != Kind::end; ++p) {
                    const Element& e = g_->elements_[size_t(p)];
                    if (e.kind != Kind::rule) break;
                    first[r].push_back(e.arg);
                    if (!nullable[size_t(e.arg)]) break;
                }
        std::vector<uint8_t> state(n, 0);  // 0 unvisited, 1 on the path, 2 done
        std::vector<std::pair<int32_t, size_t>> stack;
        for (size_t s = 0; s < n; ++s) {
            if (state[s]) continue;
            stack.push_back({int32_t(s), 0});
            state[s] = 1;
            while (!stack.empty()) {
                auto& [r, k] = stack.back();
                if (k == first[size_t(r)].size()) {
                    state[size_t(r)] = 2;
                    stack.pop_back();
                    continue;
                }
                const int32_t next = first[size_t(r)][k++];
                if (state[size_t(next)] == 1)
                    return Error{"grammar: rule \"" + g_->names_[size_t(next)] +
                                 "\" is left-recursive (it can derive itself before any character)"};
                if (state[size_t(next)] == 0) {
                    state[size_t(next)] = 1;
                    stack.push_back({next, 0});
                }
            }
        }
        return {};
    }

    const std::string& s_;
    size_t i_ = 0;
    int depth_ = 0, fresh_ = 0;
    std::unique_ptr<Grammar> g_ = std::make_unique<Grammar>();
    std::map<std::string, int32_t> names_;
    std::vector<bool> defined_;
};

Result<std::shared_ptr<const Grammar>> Grammar::parse(const std::string& text) {
    return GrammarParser(text).run();
}

void Grammar::find_chains() {
    chain_.assign(elements_.size(), 0);
    // the class an item derives as one character: a class element, or a rule with an
    // alternative of one class element (a JSON string's `char`); -1: none
    auto single = [&](const Element& e) -> int32_t {
        if (e.kind == Kind::chars) return e.arg;
        if (e.kind != Kind::rule) return -1;
        for (int32_t a : rules_[size_t(e.arg)])
            if (elements_[size_t(a)].kind == Kind::chars && elements_[size_t(a) + 1].kind == Kind::end)
                return elements_[size_t(a)].arg;
        return -1;
    };
    // room[r]: characters rule r takes as a link (0: not a link; UINT32_MAX: being measured,
    // so a rule that leads back to itself, x*'s, is not one); cls[r]: its class
    std::vector<uint32_t> room(rules_.size(), 0);
    std::vector<int32_t> cls(rules_.size(), -1);
    std::vector<uint8_t> seen(rules_.size(), 0);
    auto measure = [&](auto&& self, int32_t r) -> uint32_t {
        if (seen[size_t(r)]) return room[size_t(r)] == UINT32_MAX ? 0 : room[size_t(r)];
        seen[size_t(r)] = 1;
        room[size_t(r)] = UINT32_MAX;
        uint32_t got = 0;
        const std::vector<int32_t>& alts = rules_[size_t(r)];
        const size_t p = alts.empty() ? 0 : size_t(alts[0]);
        const int32_t c = alts.size() == 2 && elements_[size_t(alts[1])].kind == Kind::end ? single(elements_[p]) : -1;
        if (c >= 0) {
            const Element& next = elements_[p + 1];
            if (next.kind == Kind::end) {
                got = 1;
            } else if (next.kind == Kind::rule && elements_[p + 2].kind == Kind::end) {
                const uint32_t inner = self(self, next.arg);
                if (inner > 0 && cls[size_t(next.arg)] == c) got = inner + 1;
            }
        }
        room[size_t(r)] = got;
        if (got > 0) {
            cls[size_t(r)] = c;
            // a class item is read at p itself; a rule's one-class alternative with p + 1 below
            chain_[elements_[p].kind == Kind::chars ? p : p + 1] = got;
        }
        return got;
    };
    for (size_t r = 0; r < rules_.size(); ++r) measure(measure, int32_t(r));
}

// ---------------------------------------------------------------- recognizing

GrammarRecognizer::GrammarRecognizer(std::shared_ptr<const Grammar> g)
    : g_(std::move(g)), pool_(std::make_shared<Pool>()) {
    for (int32_t a : g_->rules_[size_t(g_->root_)]) {
        const int32_t n = g_->elements_[size_t(a)].kind == Grammar::Kind::end ? -1 : push_node(a, -1);
        expand(n, tops_, 0);
    }
    dedupe(tops_);
}

int32_t GrammarRecognizer::too_wide(const std::shared_ptr<const Grammar>& g) {
    // A rule's alternatives over an empty stack: in any context its stacks are these with the
    // context below (distinct still), and more where an alternative derives the empty string.
    GrammarRecognizer r(g);
    std::vector<int32_t> out;
    for (size_t rule = 0; rule < g->rules_.size(); ++rule) {
        const size_t mark = r.mark();
        out.clear();
        bool ok = true;
        for (int32_t a : g->rules_[rule]) {
            const int32_t n = g->elements_[size_t(a)].kind == Grammar::Kind::end ? -1 : r.push_node(a, -1);
            ok = r.expand(n, out, 0) && ok;
        }
        if (ok) r.dedupe(out);
        r.release(mark);
        if (!ok || out.size() > k_max_stacks) return int32_t(rule);
    }
    return -1;
}

void GrammarRecognizer::compact() {
    if (pool_->nodes.size() < std::max(k_compact_nodes, 2 * pool_->kept)) return;
    const std::shared_ptr<Pool> old = std::move(pool_);
    pool_ = std::make_shared<Pool>();
    // each stack copied from its lowest node not yet moved upwards (stacks share their lower
    // nodes), so the new pool holds each reachable node once
    std::vector<int32_t> moved(old->nodes.size(), -1), chain;
    for (int32_t& t : tops_) {
        if (t < 0) continue;
        chain.clear();
        int32_t n = t;
        for (; n >= 0 && moved[size_t(n)] < 0; n = old->nodes[size_t(n)].below) chain.push_back(n);
        int32_t below = n < 0 ? -1 : moved[size_t(n)];
        for (size_t i = chain.size(); i-- > 0;) {
            below = push_node(old->nodes[size_t(chain[i])].pos, below);
            moved[size_t(chain[i])] = below;
        }
        t = moved[size_t(t)];
    }
    pool_->kept = pool_->nodes.size();
}

int32_t GrammarRecognizer::push_node(int32_t pos, int32_t below) const {
    std::vector<Node>& nodes = pool_->nodes;
    const uint64_t h =
        (below < 0 ? 0x9E3779B97F4A7C15ull : nodes[size_t(below)].hash) * 0x100000001B3ull ^ uint64_t(uint32_t(pos));
    int32_t& made = pool_->made[size_t((h ^ (h >> 29)) & (pool_->made.size() - 1))];
    if (made >= 0 && size_t(made) < nodes.size() && nodes[size_t(made)].pos == pos &&
        nodes[size_t(made)].below == below)
        return made;
    nodes.push_back({pos, below, h});
    made = int32_t(nodes.size() - 1);
    return made;
}

bool GrammarRecognizer::same(int32_t a, int32_t b) const {
    while (a >= 0 && b >= 0) {
        if (a == b) return true;
        const Node &x = pool_->nodes[size_t(a)], &y = pool_->nodes[size_t(b)];
        if (x.pos != y.pos || x.hash != y.hash) return false;
        a = x.below;
        b = y.below;
    }
    return a == b;
}

bool GrammarRecognizer::expand(int32_t node, std::vector<int32_t>& out, int depth) const {
    if (node < 0) {
        out.push_back(-1);
        return true;
    }
    const Node n = pool_->nodes[size_t(node)];
    const Grammar::Element& e = g_->elements_[size_t(n.pos)];
    if (e.kind != Grammar::Kind::rule) {
        out.push_back(node);
        return true;
    }
    if (depth > 512) return false;
    // Alternatives that reach the same rule make the same stacks: they are dropped before the
    // count refuses, at twice the bound, so that sorting them stays rare.
    if (out.size() > 2 * k_max_stacks) {
        dedupe(out);
        if (out.size() > k_max_stacks) return false;
    }
    // the rest of this alternative waits below the referenced rule's alternatives
    int32_t below = n.below;
    if (g_->elements_[size_t(n.pos + 1)].kind != Grammar::Kind::end) below = push_node(n.pos + 1, below);
    bool ok = true;
    for (int32_t a : g_->rules_[size_t(e.arg)]) {
        const int32_t next = g_->elements_[size_t(a)].kind == Grammar::Kind::end ? below : push_node(a, below);
        ok = expand(next, out, depth + 1) && ok;
    }
    return ok;
}

void GrammarRecognizer::dedupe(std::vector<int32_t>& tops) const {
    if (tops.size() < 2) return;
    auto key = [&](int32_t t) { return t < 0 ? uint64_t(0) : pool_->nodes[size_t(t)].hash; };
    std::sort(tops.begin(), tops.end(), [&](int32_t a, int32_t b) {
        const uint64_t ka = key(a), kb = key(b);
        return ka != kb ? ka < kb : a < b;
    });
    size_t w = 0;
    for (size_t r = 0; r < tops.size(); ++r) {
        bool dup = false;
        for (size_t k = w; k-- > 0 && key(tops[k]) == key(tops[r]);)
            if (same(tops[k], tops[r])) {
                dup = true;
                break;
            }
        if (!dup) tops[w++] = tops[r];
    }
    tops.resize(w);
}

bool GrammarRecognizer::read(uint32_t cp) {
    thread_local std::vector<int32_t> next;
    next.clear();
    for (int32_t t : tops_) {
        if (t < 0) continue;
        const Node n = pool_->nodes[size_t(t)];
        const Grammar::Element& e = g_->elements_[size_t(n.pos)];
        if (e.kind == Grammar::Kind::chars && !g_->classes_[size_t(e.arg)].matches(cp)) continue;
        int32_t below = n.below;
        if (g_->elements_[size_t(n.pos + 1)].kind != Grammar::Kind::end) below = push_node(n.pos + 1, below);
        if (!expand(below, next, 0)) return false;
    }
    if (next.empty()) return false;
    dedupe(next);
    if (next.size() > k_max_stacks) return false;
    tops_.assign(next.begin(), next.end());
    return true;
}

bool GrammarRecognizer::push(uint8_t c) {
    if (need_ == 0) {
        if (c < 0x80) return read(c);
        const int need = unicode::expected_length(c, &lo_, &hi_);
        if (need == 0) return false;
        need_ = uint8_t(need);
        cp_ = c & (0x3Fu >> need);  // the lead byte's bits: 5, 4 or 3
    } else {
        if (c < lo_ || c > hi_) return false;
        cp_ = (cp_ << 6) | (c & 0x3F);
        --need_;
        lo_ = 0x80;
        hi_ = 0xBF;
        if (need_ == 0) return read(cp_);
    }
    // a character begun: some class must take one of the code points it can still become (the
    // next byte's range bounds them: no overlong forms, surrogates or code points past U+10FFFF)
    const int rest = 6 * (need_ - 1);
    const uint32_t lo = ((cp_ << 6) | (lo_ & 0x3Fu)) << rest,
                   hi = (((cp_ << 6) | (hi_ & 0x3Fu)) << rest) | ((1u << rest) - 1);
    for (int32_t t : tops_) {
        if (t < 0) continue;
        const Grammar::Element& e = g_->elements_[size_t(pool_->nodes[size_t(t)].pos)];
        if (e.kind == Grammar::Kind::any || g_->classes_[size_t(e.arg)].meets(lo, hi)) return true;
    }
    return false;
}

bool GrammarRecognizer::loops_except(uint64_t stops[2]) const {
    if (need_ != 0) return false;
    // the classes at the stacks' tops must name ASCII characters only, so that every character
    // past ASCII meets each of them alike
    std::vector<const Grammar::CharClass*> tops;
    for (int32_t t : tops_) {
        if (t < 0) continue;
        const Grammar::Element& e = g_->elements_[size_t(pool_->nodes[size_t(t)].pos)];
        if (e.kind == Grammar::Kind::any) {
            tops.push_back(nullptr);
            continue;
        }
        const Grammar::CharClass& k = g_->classes_[size_t(e.arg)];
        for (const auto& [lo, hi] : k.ranges)
            if (hi >= 0x80) return false;
        tops.push_back(&k);
    }
    if (tops.empty()) return false;
    // one character past ASCII must lead back here; the characters that meet the same classes
    // lead to the same state
    GrammarRecognizer next = *this;
    if (!next.read(0xE9)) return false;
    std::vector<int32_t> a, b;
    signature(a);
    next.signature(b);
    if (a != b) return false;
    stops[0] = stops[1] = 0;
    for (uint32_t c = 0; c < 0x80; ++c)
        for (const Grammar::CharClass* k : tops)
            if (k && k->matches(c) != k->negated) {  // c meets k unlike the characters past ASCII
                stops[c / 64] |= uint64_t(1) << (c % 64);
                break;
            }
    return true;
}

uint32_t GrammarRecognizer::chain_room(uint64_t stops[2]) const {
    if (need_ != 0) return 0;
    uint32_t best = 0;
    const Grammar::CharClass* cls = nullptr;
    for (int32_t t : tops_) {
        if (t < 0) continue;
        const Node& n = pool_->nodes[size_t(t)];
        const size_t pos = size_t(n.pos);
        // at a link's class element, or at a one-class alternative of the rule a link's item
        // names (the link's next element below it)
        uint32_t r = g_->chain_[pos];
        if (r == 0 && g_->elements_[pos + 1].kind == Grammar::Kind::end && n.below >= 0) {
            const size_t q = size_t(pool_->nodes[size_t(n.below)].pos);
            const Grammar::Element& item = g_->elements_[q - 1];
            if (g_->chain_[q] > 0 && item.kind == Grammar::Kind::rule) {
                const std::vector<int32_t>& alts = g_->rules_[size_t(item.arg)];
                if (std::find(alts.begin(), alts.end(), int32_t(pos)) != alts.end()) r = g_->chain_[q];
            }
        }
        if (r <= best) continue;
        const Grammar::CharClass& k = g_->classes_[size_t(g_->elements_[pos].arg)];
        // a broad class, refusing some ASCII characters only (it takes most tokens, which a
        // walk would read whole; where a class is narrow, a walk ends most tokens at their first
        // byte)
        bool broad = k.negated;
        for (const auto& [lo, hi] : k.ranges) broad = broad && hi < 0x80;
        if (!broad) continue;
        best = r;
        cls = &k;
    }
    if (!cls) return 0;
    stops[0] = stops[1] = 0;
    for (uint32_t c = 0; c < 0x80; ++c)
        if (!cls->matches(c)) stops[c / 64] |= uint64_t(1) << (c % 64);
    return best;
}

void GrammarRecognizer::signature(std::vector<int32_t>& out) const {
    std::vector<std::vector<int32_t>> stacks;
    for (int32_t t : tops_) {
        std::vector<int32_t> st;
        for (int32_t n = t; n >= 0; n = pool_->nodes[size_t(n)].below) st.push_back(pool_->nodes[size_t(n)].pos);
        stacks.push_back(std::move(st));
    }
    std::sort(stacks.begin(), stacks.end());
    // the character being read only while one is (cp_ keeps the last one's bits after it)
    out.assign({need_ ? int32_t(cp_) : 0, need_, need_ ? lo_ : 0, need_ ? hi_ : 0});
    for (const auto& st : stacks) {
        out.insert(out.end(), st.begin(), st.end());
        out.push_back(-1);
    }
}

bool GrammarRecognizer::complete() const {
    return need_ == 0 && std::find(tops_.begin(), tops_.end(), -1) != tops_.end();
}

bool GrammarRecognizer::finished() const {
    return complete() && tops_.size() == 1;
}

bool GrammarRecognizer::open() const {
    return need_ > 0 || tops_.size() > size_t(complete() ? 1 : 0);
}

}  // namespace bigmoe
