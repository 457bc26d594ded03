#include "runtime/regex_grammar.h"

#include <algorithm>
#include <cstdio>
#include <optional>
#include <utility>
#include <vector>

#include "tokenizer/unicode.h"

namespace bigmoe {

namespace {

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;  // inclusive code point ranges

constexpr uint32_t k_last = 0x10FFFF;
constexpr uint32_t k_no_end = UINT32_MAX;  // a count without an upper bound

// Sorted, overlapping and adjacent ranges merged.
Ranges normalized(Ranges r) {
    std::sort(r.begin(), r.end());
    Ranges out;
    for (auto [a, b] : r) {
        if (!out.empty() && a <= out.back().second + 1)
            out.back().second = std::max(out.back().second, b);
        else
            out.push_back({a, b});
    }
    return out;
}

// The code points up to k_last that normalized ranges r leave out.
Ranges complement(const Ranges& r) {
    Ranges out;
    uint32_t next = 0;
    for (auto [a, b] : r) {
        if (a > next) out.push_back({next, a - 1});
        next = b + 1;
    }
    if (next <= k_last) out.push_back({next, k_last});
    return out;
}

Ranges intersect(const Ranges& x, const Ranges& y) {
    Ranges out;
    for (size_t i = 0, j = 0; i < x.size() && j < y.size();) {
        const uint32_t a = std::max(x[i].first, y[j].first), b = std::min(x[i].second, y[j].second);
        if (a <= b) out.push_back({a, b});
        (x[i].second < y[j].second ? i : j)++;
    }
    return out;
}

bool contains(const Ranges& r, uint32_t c) {
    return std::any_of(r.begin(), r.end(), [&](const auto& p) { return p.first <= c && c <= p.second; });
}

const Ranges k_digits = {{'0', '9'}};
const Ranges k_word = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges k_space = {{'\t', '\r'},     {' ', ' '},       {0xA0, 0xA0},     {0x1680, 0x1680}, {0x2000, 0x200A},
                        {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};
// What a JSON string's text does not hold as itself: the controls, the quote and the backslash
// (written escaped), and the surrogates (which UTF-8 does not encode).
const Ranges k_escaped = {{0, 0x1F}, {'"', '"'}, {'\\', '\\'}, {0xD800, 0xDFFF}};

// One code point in a GBNF class: letters and digits as themselves, the rest escaped.
std::string class_char(uint32_t c) {
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return std::string(1, char(c));
    char buf[16];
    std::snprintf(buf, sizeof buf, c < 0x10000 ? "\\u%04X" : "\\U%08X", unsigned(c));
    return buf;
}

std::string group(const std::vector<std::string>& alts) {
    std::string out;
    for (const std::string& a : alts) out += (out.empty() ? "( " : " | ") + a;
    return out + " )";
}

class Translator {
  public:
    explicit Translator(const std::string& chr) : chr_(chr) {}

    Result<std::string> run(const std::string& pattern) {
        if (!unicode::is_valid_utf8(pattern)) return Error{"pattern: invalid UTF-8"};
        cps_ = unicode::decode_utf8(pattern);
        std::vector<std::string> alts;
        do {
            const bool start = eat('^');
            auto seq = sequence(true);
            if (!seq) return seq.error();
            const bool end = eat('$');
            if (end && !done() && peek() != '|') return bad("$ inside the pattern (only at an alternative's end)");
            alts.push_back((start ? "" : chr_ + "* ") + *seq + (end ? "" : " " + chr_ + "*"));
        } while (eat('|'));
        if (!done()) return bad("a ')' without its '('");
        return group(alts);
    }

  private:
    Error bad(const std::string& what) const {
        return Error{"pattern: " + what + " (at character " + std::to_string(i_) + ")"};
    }
    bool done() const { return i_ >= cps_.size(); }
    uint32_t peek() const { return cps_[i_]; }
    bool eat(uint32_t c) {
        if (done() || peek() != c) return false;
        ++i_;
        return true;
    }

    Result<std::string> alternation() {
        std::vector<std::string> alts;
        do {
            auto seq = sequence(false);
            if (!seq) return seq;
            alts.push_back(*seq);
        } while (eat('|'));
        return group(alts);
    }

    // Atoms, each with its count, up to a '|', a ')', or (at the top) a '$'.
    Result<std::string> sequence(bool top) {
        std::string out;
        while (!done() && peek() != '|' && peek() != ')' && !(top && peek() == '$')) {
            auto a = atom();
            if (!a) return a;
            auto q = counted(*a);
            if (!q) return q;
            out += (out.empty() ? "" : " ") + *q;
        }
        return out.empty() ? std::string("\"\"") : out;
    }

    Result<std::string> atom() {
        const uint32_t c = cps_[i_++];
        switch (c) {
            case '(': {
                if (eat('?') && !eat(':')) return bad("lookaround and named groups are not supported");
                auto a = alternation();
                if (!a) return a;
                if (!eat(')')) return bad("a '(' without its ')'");
                return a;
            }
            case '[':
                return cls();
            case '.':  // anything but a line terminator
                return set({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}}, true);
            case '\\':
                return escape();
            case '^':
            case '$':
                return bad("^ / $ inside the pattern (only at an alternative's ends)");
            case '*':
            case '+':
            case '?':
            case '{':
                return bad("nothing to repeat");
            default:
                return set({{c, c}}, false);
        }
    }

    // `a` followed by its count (*, +, ?, {m}, {m,}, {m,n}; a lazy '?' after one reads the same
    // strings).
    Result<std::string> counted(const std::string& a) {
        uint32_t lo = 1, hi = 1;
        if (eat('*')) {
            lo = 0;
            hi = k_no_end;
        } else if (eat('+')) {
            hi = k_no_end;
        } else if (eat('?')) {
            lo = 0;
        } else if (eat('{')) {
            auto m = number();
            if (!m) return m.error();
            lo = hi = *m;
            if (eat(',')) {
                hi = k_no_end;
                if (!done() && peek() != '}') {
                    auto n = number();
                    if (!n) return n.error();
                    hi = *n;
                }
            }
            if (!eat('}')) return bad("a count without its '}'");
            if (hi < lo) return bad("a count {m,n} with n below m");
        } else {
            return a;
        }
        eat('?');
        if (lo > k_regex_max_count || (hi != k_no_end && hi > k_regex_max_count))
            return bad("a count above " + std::to_string(k_regex_max_count));
        const std::string x = "( " + a + " )";
        if (hi == k_no_end) return lo == 0 ? x + "*" : lo == 1 ? x + "+" : x + "{" + std::to_string(lo) + ",}";
        if (hi == 0) return std::string("\"\"");
        if (lo == 0 && hi == 1) return x + "?";
        if (lo == hi) return x + "{" + std::to_string(lo) + "}";
        return x + "{" + std::to_string(lo) + "," + std::to_string(hi) + "}";
    }

    Result<uint32_t> number() {
        uint32_t v = 0;
        const size_t from = i_;
        while (!done() && peek() >= '0' && peek() <= '9') v = std::min<uint32_t>(v * 10 + (cps_[i_++] - '0'), 1u << 24);
        if (i_ == from) return bad("a count without digits");
        return v;
    }

    // The character an escape letter or sign e stands for (outside the class escapes).
    Result<uint32_t> escaped(uint32_t e) {
        switch (e) {
            case 't':
                return uint32_t('\t');
            case 'n':
                return uint32_t('\n');
            case 'v':
                return uint32_t('\v');
            case 'f':
                return uint32_t('\f');
            case 'r':
                return uint32_t('\r');
            case '0':
                if (!done() && peek() >= '0' && peek() <= '9') return bad("octal escapes are not supported");
                return uint32_t(0);
            case 'x':
                return hex(2);
            case 'u': {
                auto u = hex(4);
                if (!u) return u;
                // a surrogate pair written as two escapes is one character
                if (*u >= 0xD800 && *u <= 0xDBFF && i_ + 1 < cps_.size() && cps_[i_] == '\\' && cps_[i_ + 1] == 'u') {
                    const size_t at = i_;
                    i_ += 2;
                    auto low = hex(4);
                    if (low && *low >= 0xDC00 && *low <= 0xDFFF)
                        return 0x10000 + ((*u - 0xD800) << 10) + (*low - 0xDC00);
                    i_ = at;
                }
                return u;
            }
            default:
                if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z') || (e >= '1' && e <= '9'))
                    return bad("the escape \\" + std::string(1, char(e)) + " is not supported");
                return e;  // a sign as itself
        }
    }

    Result<uint32_t> hex(int digits) {
        uint32_t v = 0;
        for (int k = 0; k < digits; ++k) {
            const uint32_t h = done() ? 0 : peek();
            const int d = h >= '0' && h <= '9'   ? int(h - '0')
                          : h >= 'a' && h <= 'f' ? int(h - 'a' + 10)
                          : h >= 'A' && h <= 'F' ? int(h - 'A' + 10)
                                                 : -1;
            if (d < 0) return bad("expected " + std::to_string(digits) + " hex digits");
            v = v * 16 + uint32_t(d);
            ++i_;
        }
        return v;
    }

    Result<std::string> escape() {
        if (done()) return bad("a '\\' at the end");
        const uint32_t e = cps_[i_++];
        switch (e) {
            case 'd':
            case 'D':
                return set(k_digits, e == 'D');
            case 'w':
            case 'W':
                return set(k_word, e == 'W');
            case 's':
            case 'S':
                return set(k_space, e == 'S');
            case 'b':
            case 'B':
                return bad("word boundaries are not supported");
            case 'p':
            case 'P':
                return bad("Unicode property escapes are not supported");
            case 'k':
                return bad("backreferences are not supported");
            default: {
                if (e >= '1' && e <= '9') return bad("backreferences are not supported");
                auto c = escaped(e);
                if (!c) return c.error();
                return set({{*c, *c}}, false);
            }
        }
    }

    // One member of a class: a character (returned), or a class escape (its ranges added to r).
    Result<std::optional<uint32_t>> class_atom(Ranges& r) {
        const uint32_t c = cps_[i_++];
        if (c != '\\') return std::optional<uint32_t>(c);
        if (done()) return bad("a '\\' at the end");
        const uint32_t e = cps_[i_++];
        const Ranges* add = e == 'd' ? &k_digits : e == 'w' ? &k_word : e == 's' ? &k_space : nullptr;
        if (add) {
            r.insert(r.end(), add->begin(), add->end());
            return std::optional<uint32_t>();
        }
        if (e == 'D' || e == 'W' || e == 'S') return bad("\\D, \\W and \\S inside a class are not supported");
        if (e == 'b') return std::optional<uint32_t>(8);  // a backspace, inside a class
        if (e == '-') return std::optional<uint32_t>('-');
        auto x = escaped(e);
        if (!x) return x.error();
        return std::optional<uint32_t>(*x);
    }

    Result<std::string> cls() {
        const bool negated = eat('^');
        Ranges r;
        while (!eat(']')) {
            if (done()) return bad("a '[' without its ']'");
            auto lo = class_atom(r);
            if (!lo) return lo.error();
            if (!*lo) continue;
            if (i_ + 1 < cps_.size() && peek() == '-' && cps_[i_ + 1] != ']') {
                ++i_;
                auto hi = class_atom(r);
                if (!hi) return hi.error();
                if (!*hi) return bad("a range that ends in a class escape");
                if (**hi < **lo) return bad("a range out of order");
                r.push_back({**lo, **hi});
            } else {
                r.push_back({**lo, **lo});
            }
        }
        return set(r, negated);
    }

    // The JSON text of one character of a set (or of its complement): the characters a string
    // holds as themselves in a class, and those JSON escapes as a backslash and a letter.
    Result<std::string> set(const Ranges& r, bool negated) {
        Ranges in = normalized(r);
        if (negated) in = complement(in);
        const Ranges plain = intersect(in, complement(normalized(k_escaped)));
        std::vector<std::string> alts;
        if (!plain.empty()) {
            std::string c = "[";
            for (auto [a, b] : plain) c += a == b ? class_char(a) : class_char(a) + "-" + class_char(b);
            alts.push_back(c + "]");
        }
        std::string letters;
        for (auto [cp, letter] : {std::pair<uint32_t, char>{'"', '"'},
                                  {'\\', '\\'},
                                  {'\b', 'b'},
                                  {'\f', 'f'},
                                  {'\n', 'n'},
                                  {'\r', 'r'},
                                  {'\t', 't'}})
            if (contains(in, cp)) letters += class_char(uint32_t(uint8_t(letter)));
        if (!letters.empty()) alts.push_back("\"\\\\\" [" + letters + "]");
        if (alts.empty()) return bad("a class with no character a JSON string writes");
        return alts.size() == 1 ? alts[0] : group(alts);
    }

    const std::string chr_;
    std::vector<uint32_t> cps_;
    size_t i_ = 0;
};

}  // namespace

Result<std::string> regex_gbnf(const std::string& pattern, const std::string& chr) {
    return Translator(chr).run(pattern);
}

}  // namespace bigmoe
