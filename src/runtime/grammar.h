// GBNF grammars (llama.cpp's `grammar` request field and `--grammar` flag): generation
// restricted, token by token, to text that a grammar's `root` rule derives.
//
// Grammar::parse reads the notation llama.cpp documents: rules `name ::= alternatives`, string
// literals with escapes, character classes (`[a-z]`, `[^"\\]`), `.`, groups, and the postfix
// operators `*`, `+`, `?`, `{m}`, `{m,}`, `{m,n}`; `#` starts a comment. Repetitions become rules
// of their own. Left recursion is refused, as a reader that follows the grammar left to right
// would never stop expanding it.
//
// GrammarRecognizer follows every way the grammar can derive the text so far (a set of stacks
// of grammar positions, llama.cpp's method, up to k_max_stacks of them), reading UTF-8 a byte at
// a time, and refuses the first byte that no derivation can continue with.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/result.h"

namespace bigmoe {

class Grammar {
  public:
    // The grammar in `text`, or an error naming the line and column where it goes wrong.
    static Result<std::shared_ptr<const Grammar>> parse(const std::string& text);

    static constexpr size_t k_max_rules = 4096;
    static constexpr size_t k_max_elements = 1 << 20;

  private:
    friend class GrammarParser;
    friend class GrammarRecognizer;
    enum class Kind : uint8_t { end, chars, any, rule };
    // One element of an alternative: a character class (`arg`: its ranges), any character, a
    // rule reference (`arg`: the rule), or the alternative's end.
    struct Element {
        Kind kind;
        int32_t arg;
    };
    struct CharClass {
        bool negated = false;
        std::vector<std::pair<uint32_t, uint32_t>> ranges;  // inclusive code point ranges
        bool matches(uint32_t c) const;
        // whether some code point in [lo, hi] matches
        bool meets(uint32_t lo, uint32_t hi) const;
    };

    // Marks the optional tails of bounded repetitions of one character (x{m,n}'s links
    // r_k ::= x r_(k+1) | "", x a class or a rule with an alternative of one class): chain_ at a
    // link's class element (x a class) or at the element after its item (x a rule) holds how
    // many characters the link still takes; 0 elsewhere.
    void find_chains();

    std::vector<Element> elements_;            // alternatives, each ended by Kind::end
    std::vector<std::vector<int32_t>> rules_;  // [rule]: its alternatives' first elements
    std::vector<std::string> names_;           // [rule]
    std::vector<CharClass> classes_;
    std::vector<uint32_t> chain_;  // [element]: see find_chains
    int32_t root_ = -1;
};

class GrammarRecognizer {
  public:
    explicit GrammarRecognizer(std::shared_ptr<const Grammar> g);

    // A rule whose alternatives, read from anywhere, branch into more derivations than
    // k_max_stacks (or nest rules deeper than 512): the first such rule's index, or -1. Reading
    // into one always fails, so Grammar::parse refuses a grammar that has one.
    static int32_t too_wide(const std::shared_ptr<const Grammar>& g);

    // Takes c if some text the grammar derives continues the bytes so far with it; else false
    // (the state is then unspecified: callers keep a copy).
    bool push(uint8_t c);
    // Whether the bytes so far are a whole derivation of `root`.
    bool complete() const;
    // Whether they are one and nothing can follow (the text is finished).
    bool finished() const;
    // Whether some derivation can still read more (then tokens are worth walking).
    bool open() const;
    uint32_t plain_room() const { return 0; }
    // Whether every character returns this state to itself except the ASCII characters it
    // sets in `stops` (bit c of stops[c / 64]): inside a repetition of a class such as
    // [^"\\]*, where a token of other characters is taken whole without reading it.
    bool loops_except(uint64_t stops[2]) const;
    // Inside the optional tail of a bounded repetition of a class that refuses some ASCII
    // characters only (such as [^"\\]{0,64}, or a JSON string's characters up to a maxLength):
    // how many more characters a derivation takes there (0: elsewhere, or a narrower class), and
    // in `stops` the characters the class refuses. A token of that many whole characters or
    // fewer, none a stop, is taken without reading it.
    uint32_t chain_room(uint64_t stops[2]) const;
    // The state as values alone (each stack's positions, the stacks in order, the character
    // being read): equal exactly when two recognizers take the same texts from here on.
    void signature(std::vector<int32_t>& out) const;

    // Stack nodes made after `mark()` belong only to copies made since; `release` drops them
    // once those copies are gone (a mask's walk makes and drops thousands).
    size_t mark() const { return pool_->nodes.size(); }
    void release(size_t mark) const {
        if (mark < pool_->nodes.size()) pool_->nodes.resize(mark);
    }
    // Moves the stacks into a pool of their own nodes once the shared one holds more than twice
    // what the last move kept (and at least k_compact_nodes): a byte that leads where the text
    // has not been before (a nesting of brackets not seen yet) makes nodes, and a long answer's
    // would otherwise all stay. Copies keep the old pool. Call it where no mark is outstanding
    // (after a token is taken).
    void compact();
    static constexpr size_t k_compact_nodes = size_t(1) << 16;

    // Derivations followed at once: each one is read for every byte of every token a mask walks,
    // so a grammar that keeps thousands apart (a request's own) would stall every slot's step; a
    // character that would make more is refused.
    static constexpr size_t k_max_stacks = 128;

  private:
    // A stack of grammar positions as a linked list in a pool shared by copies: the element to
    // read next, the node below it, and a hash of the whole stack (to drop duplicates).
    struct Node {
        int32_t pos, below;
        uint64_t hash;
    };
    // The nodes, and the last node made for each (position, node below) by a hash of the two
    // (checked on use: one released since then is gone or made again): a walk over the
    // vocabulary makes the same stacks again and again, and finds them here instead.
    struct Pool {
        std::vector<Node> nodes;
        std::vector<int32_t> made = std::vector<int32_t>(size_t(1) << 14, -1);
        size_t kept = 0;  // nodes a compact() moved here
    };
    int32_t push_node(int32_t pos, int32_t below) const;
    bool same(int32_t a, int32_t b) const;
    // Adds the stacks that `node` becomes once its rule references are expanded down to a
    // character element (or to nothing: the text may end there).
    bool expand(int32_t node, std::vector<int32_t>& out, int depth) const;
    bool read(uint32_t cp);
    void dedupe(std::vector<int32_t>& tops) const;

    std::shared_ptr<const Grammar> g_;
    std::shared_ptr<Pool> pool_;
    std::vector<int32_t> tops_;      // the stacks' top nodes; -1: an empty stack (the text may end)
    uint32_t cp_ = 0;                // the code point being read
    uint8_t need_ = 0;               // its continuation bytes still due
    uint8_t lo_ = 0x80, hi_ = 0xBF;  // the next continuation byte's range
};

}  // namespace bigmoe
