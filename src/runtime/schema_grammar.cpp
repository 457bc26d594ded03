#include "runtime/schema_grammar.h"

#include <algorithm>
#include <functional>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "tokenizer/unicode.h"

namespace bigmoe {

namespace {

// The string formats the grammar enforces, indexed by JsonSchema::Format: the name "format"
// gives and the rules that derive their texts, rule fmt-<name> first. RFC 3339's full-date,
// full-time, date-time and duration (month 01-12, day 01-31: the calendar is not checked); RFC
// 4122's UUID; RFC 791's dotted quad; host names of RFC 1123 labels (their total length not
// checked); e-mail addresses of the common shape (letters, digits and ._%+- before the @, then
// two or more labels).
struct FormatRules {
    const char* name;
    const char* rules;
};
constexpr FormatRules k_formats[] = {
    {"", ""},
    {"date",
     "fmt-date ::= [0-9]{4} \"-\" ( \"0\" [1-9] | \"1\" [0-2] ) \"-\" ( \"0\" [1-9] | [12] [0-9] | \"3\" [01] )\n"},
    {"time",
     "fmt-time ::= ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] \":\" ( [0-5] [0-9] | \"60\" ) "
     "( \".\" [0-9]{1,9} )? ( [zZ] | [+-] ( [01] [0-9] | \"2\" [0-3] ) \":\" [0-5] [0-9] )\n"},
    {"date-time", "fmt-date-time ::= fmt-date [tT] fmt-time\n"},
    {"duration",
     "fmt-duration ::= \"P\" ( ( [0-9]+ \"Y\" ( [0-9]+ \"M\" ( [0-9]+ \"D\" )? )? | [0-9]+ \"M\" ( [0-9]+ \"D\" )? | "
     "[0-9]+ \"D\" ) fmt-duration-t? | fmt-duration-t | [0-9]+ \"W\" )\n"
     "fmt-duration-t ::= \"T\" ( [0-9]+ \"H\" ( [0-9]+ \"M\" ( [0-9]+ \"S\" )? )? | [0-9]+ \"M\" ( [0-9]+ \"S\" )? | "
     "[0-9]+ \"S\" )\n"},
    {"uuid", "fmt-uuid ::= [0-9a-fA-F]{8} ( \"-\" [0-9a-fA-F]{4} ){3} \"-\" [0-9a-fA-F]{12}\n"},
    {"ipv4",
     "fmt-ipv4 ::= fmt-ipv4-o \".\" fmt-ipv4-o \".\" fmt-ipv4-o \".\" fmt-ipv4-o\n"
     "fmt-ipv4-o ::= \"25\" [0-5] | \"2\" [0-4] [0-9] | \"1\" [0-9] [0-9] | [1-9] [0-9] | [0-9]\n"},
    {"hostname",
     "fmt-hostname ::= fmt-hostname-l ( \".\" fmt-hostname-l )*\n"
     "fmt-hostname-l ::= [a-zA-Z0-9] ( [a-zA-Z0-9-]{0,61} [a-zA-Z0-9] )?\n"},
    {"email", "fmt-email ::= [a-zA-Z0-9._%+-]+ \"@\" [a-zA-Z0-9-]+ ( \".\" [a-zA-Z0-9-]+ )+\n"},
};
static_assert(std::size(k_formats) == JsonSchema::f_count);

// Alternatives as one GBNF group.
std::string any_of(const std::vector<std::string>& alts) {
    if (alts.size() == 1) return alts[0];
    std::string out;
    for (const std::string& a : alts) out += (out.empty() ? "( " : " | ") + a;
    return out + " )";
}

// GBNF for the decimal texts of the numbers from x to y, both written with as many digits: a
// first digit they share, else the numbers from x to the end of its first digit, those of the
// first digits between, and those from the start of y's first digit to y.
std::string same_length(const std::string& x, const std::string& y) {
    if (x.empty()) return "";
    const size_t rest = x.size() - 1;
    auto digit = [](char d) { return "\"" + std::string(1, d) + "\""; };
    if (x[0] == y[0]) {
        const std::string tail = same_length(x.substr(1), y.substr(1));
        return tail.empty() ? digit(x[0]) : digit(x[0]) + " " + tail;
    }
    const bool from_start = x.find_first_not_of('0', 1) == std::string::npos;  // x0 00..0
    const bool to_end = y.find_first_not_of('9', 1) == std::string::npos;      // y0 99..9
    std::vector<std::string> alts;
    if (!from_start) alts.push_back(digit(x[0]) + " " + same_length(x.substr(1), std::string(rest, '9')));
    const char a = from_start ? x[0] : char(x[0] + 1), b = to_end ? y[0] : char(y[0] - 1);
    if (a <= b) {
        const std::string first = a == b ? digit(a) : "[" + std::string(1, a) + "-" + std::string(1, b) + "]";
        alts.push_back(rest ? first + " [0-9]{" + std::to_string(rest) + "}" : first);
    }
    if (!to_end) alts.push_back(digit(y[0]) + " " + same_length(std::string(rest, '0'), y.substr(1)));
    return any_of(alts);
}

// GBNF for the decimal texts (no leading zero) of the integers from a to b; b == UINT64_MAX: no end.
std::string magnitudes(uint64_t a, uint64_t b) {
    const std::string lo = std::to_string(a);
    std::vector<std::string> alts;
    if (b == UINT64_MAX) {
        alts.push_back(same_length(lo, std::string(lo.size(), '9')));
        alts.push_back("[1-9] [0-9]{" + std::to_string(lo.size()) + ",}");  // every longer one
    } else {
        const std::string hi = std::to_string(b);
        for (size_t len = lo.size(); len <= hi.size(); ++len)
            alts.push_back(same_length(len == lo.size() ? lo : "1" + std::string(len - 1, '0'),
                                       len == hi.size() ? hi : std::string(len, '9')));
    }
    return any_of(alts);
}

// GBNF for the integers of a range (frac 0, bounds within the 64-bit integers) as JSON writes
// them (never "-0", as SchemaRecognizer).
std::string integers(const JsonSchema::Range& r) {
    const int64_t lo = int64_t(r.lo), hi = int64_t(r.hi);
    std::vector<std::string> alts;
    if (!r.has_hi || hi >= 0)
        alts.push_back(magnitudes(r.has_lo && lo > 0 ? uint64_t(lo) : 0, r.has_hi ? uint64_t(hi) : UINT64_MAX));
    if (!r.has_lo || lo < 0)  // magnitudes -hi to -lo, written without overflow at INT64_MIN
        alts.push_back("\"-\" " + magnitudes(r.has_hi && hi < 0 ? uint64_t(-(hi + 1)) + 1 : 1,
                                             r.has_lo ? uint64_t(-(lo + 1)) + 1 : UINT64_MAX));
    return any_of(alts);
}

}  // namespace

// Writes compiled schema nodes as a GBNF grammar whose root derives the schema's instances, in
// the layout JsonSchema::grammar() describes: rule s<i> for node i, each value without the
// whitespace around it (so the root ends at its closing brace, where the answer ends).
class SchemaGrammar {
  public:
    using Node = JsonSchema::Node;
    // `cap`: the largest count span enforced (each step of a span is a rule of the grammar)
    SchemaGrammar(JsonSchema& s, bool lenient, uint32_t cap) : s_(s), lenient_(lenient), cap_(cap) {}

    Result<std::shared_ptr<const Grammar>> run() {
        out_ = "root ::= ws " + rule(s_.root_) + "\n";  // leading whitespace, as JSON mode takes
        while (!todo_.empty()) {
            const int32_t i = todo_.back();
            todo_.pop_back();
            define(i);
            if (out_.size() > (size_t(64) << 20)) return Error{"the schema is too large to read as a grammar"};
        }
        if (!error_.empty()) return Error{error_};
        out_ += k_base;
        for (JsonSchema::Format f : formats_) out_ += k_formats[f].rules;
        auto g = Grammar::parse(out_);
        if (!g) return Error{"the schema is too large to read as a grammar (" + g.error().message + ")"};
        return *g;
    }

  private:
    static constexpr uint32_t k_many = UINT32_MAX;  // no upper bound
    static constexpr const char* k_base = R"(value ::= object | array | string | number | boolean | null
object ::= "{" ws ( string ws ":" ws value ( ws "," ws string ws ":" ws value )* ws )? "}"
array ::= "[" ws ( value ( ws "," ws value )* ws )? "]"
string ::= "\"" char* "\""
char ::= [^"\\\x00-\x1F] | esc
esc ::= "\\" ( ["\\/bfnrt] | "u" ( [0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2} ) )
number ::= integer ( "." [0-9]+ )? ( [eE] [-+]? [0-9]+ )?
integer ::= "-"? ( "0" | [1-9] [0-9]* )
boolean ::= "true" | "false"
null ::= "null"
ws ::= ( " " | "\n" [ \t]{0,20} )?
)";

    std::string format_rule(JsonSchema::Format f) {
        formats_.insert(f);
        if (f == JsonSchema::f_date_time) {
            formats_.insert(JsonSchema::f_date);
            formats_.insert(JsonSchema::f_time);
        }
        return std::string("fmt-") + k_formats[f].name;
    }

    // The rule that derives node i's values (queued to be written once).
    std::string rule(int32_t i) {
        if (i == JsonSchema::k_any || s_.nodes_[size_t(i)].any) return "value";
        if (named_.insert(i).second) todo_.push_back(i);
        return "s" + std::to_string(i);
    }

    // `text`'s bytes as a GBNF string literal.
    static std::string literal(const std::string& text) {
        std::string out = "\"";
        for (char ch : text) {
            const uint8_t c = uint8_t(ch);
            if (c == '"' || c == '\\') {
                out += '\\';
                out += ch;
            } else if (c < 0x20) {
                static const char* hex = "0123456789ABCDEF";
                out += "\\x";
                out += hex[c >> 4];
                out += hex[c & 15];
            } else {
                out += ch;
            }
        }
        return out + "\"";
    }

    // A bound the grammar leaves out: skipped in a lenient compile, else the schema is refused.
    void unenforced(const std::string& what) {
        const std::string note = "(grammar) " + what;
        if (lenient_) {
            if (std::find(s_.ignored_.begin(), s_.ignored_.end(), note) == s_.ignored_.end())
                s_.ignored_.push_back(note);
        } else if (error_.empty())
            error_ = "the schema's " + what +
                     " cannot be enforced (anyOf members that begin alike make it a grammar, "
                     "which enforces counts up to " +
                     std::to_string(cap_) + ")";
    }

    // What the grammar leaves out (a number's bounds: integers' it writes; an object's counts of
    // properties): skipped in a lenient compile, else the schema is refused.
    void unwritten(const std::string& what) {
        const std::string note = "(grammar) " + what;
        if (lenient_) {
            if (std::find(s_.ignored_.begin(), s_.ignored_.end(), note) == s_.ignored_.end())
                s_.ignored_.push_back(note);
        } else if (error_.empty()) {
            error_ = "the schema's " + what +
                     " cannot be enforced where it is read by a grammar (anyOf members that begin alike, a "
                     "pattern or a format)";
        }
    }

    // `item` repeated lo to hi times (hi == k_many: no bound).
    std::string repeat(const std::string& item, uint32_t lo, uint32_t hi, const char* keyword) {
        auto drop = [&] {
            unenforced(std::string(keyword) +
                       (cap_ ? " counts above " + std::to_string(cap_) : " (too many rules with them)"));
        };
        if (lo > cap_) {
            drop();
            lo = cap_;
        }
        if (hi != k_many && hi - lo > cap_) {
            drop();
            hi = k_many;
        }
        const std::string x = "( " + item + " )";
        if (hi == k_many) return lo == 0 ? x + "*" : lo == 1 ? x + "+" : x + "{" + std::to_string(lo) + ",}";
        if (hi == 0) return "";
        if (lo == hi) return x + "{" + std::to_string(lo) + "}";
        return x + "{" + std::to_string(lo) + "," + std::to_string(hi) + "}";
    }

    static std::string then(const std::string& a, const std::string& b) {
        return b.empty() ? a : a.empty() ? b : a + " " + b;
    }

    void define(int32_t i) {
        const Node& n = s_.nodes_[size_t(i)];
        const std::string name = "s" + std::to_string(i);
        std::vector<std::string> alts;
        if (!n.literals.empty()) {
            for (const std::string& t : n.literals) alts.push_back(literal(t));
        } else if (!n.alternatives.empty()) {
            for (int32_t a : n.alternatives) alts.push_back(rule(a));
        } else {
            if (n.types & JsonSchema::t_object) {
                if (n.min_props > 0 || n.max_props != UINT32_MAX) unwritten("minProperties / maxProperties");
                alts.push_back(object(n, name));
            }
            if (n.types & JsonSchema::t_array) alts.push_back(array(n));
            if (n.types & JsonSchema::t_string && !n.pattern.empty())
                alts.push_back("\"\\\"\" " + n.pattern + " \"\\\"\"");
            else if (n.types & JsonSchema::t_string && n.format != JsonSchema::f_none)
                alts.push_back("\"\\\"\" " + format_rule(n.format) + " \"\\\"\"");
            else if (n.types & JsonSchema::t_string)
                alts.push_back(n.min_length == 0 && n.max_length == UINT32_MAX
                                   ? "string"
                                   : then(then("\"\\\"\"", repeat("char", n.min_length,
                                                                  n.max_length == UINT32_MAX ? k_many : n.max_length,
                                                                  "minLength / maxLength")),
                                          "\"\\\"\""));
            if (n.types & JsonSchema::t_number) {
                if (!n.range.any()) unwritten("minimum / maximum of a number");
                alts.push_back("number");
            } else if (n.types & JsonSchema::t_integer)
                alts.push_back(n.range.any() ? "integer" : integers(n.range));
            if (n.types & JsonSchema::t_boolean) alts.push_back("boolean");
            if (n.types & JsonSchema::t_null) alts.push_back("null");
        }
        std::string body;
        for (const std::string& a : alts) body += (body.empty() ? "" : " | ") + ("( " + a + " )");
        out_ += name + " ::= " + body + "\n";
    }

    // key k and its value
    std::string member(const Node& n, size_t k) {
        return literal("\"" + n.keys[k] + "\"") + " ws \":\" ws " + rule(n.key_nodes[k]);
    }

    // The key of an additional member: a string that is none of the listed keys as written, so
    // that no member repeats a listed one (SchemaRecognizer's rule). Rule name-k<j> derives the
    // rest of the key from node j of the listed keys' trie (code points) on: the closing quote
    // where no key ends, a character no key has next (or an escape), then any characters, or
    // the next character of a key and that node's rule (an escape in the text is taken as
    // differing). Listed keys with escapes, or more than k_key_trie_nodes nodes, leave every
    // string (an additional member may then repeat one).
    std::string other_key(const Node& n, const std::string& name) {
        struct TrieNode {
            bool end = false;
            std::vector<std::pair<uint32_t, size_t>> next;  // (code point, node)
        };
        std::vector<TrieNode> trie(1);
        for (const std::string& key : n.keys) {
            if (key.find('\\') != std::string::npos) return "string";
            size_t at = 0;
            for (const uint32_t cp : unicode::decode_utf8(key)) {
                auto& nx = trie[at].next;
                auto it = std::find_if(nx.begin(), nx.end(), [&](const auto& e) { return e.first == cp; });
                if (it != nx.end()) {
                    at = it->second;
                } else {
                    nx.emplace_back(cp, trie.size());
                    at = trie.size();
                    trie.emplace_back();
                    if (trie.size() > k_key_trie_nodes) return "string";
                }
            }
            trie[at].end = true;
        }
        auto point = [](uint32_t cp) {
            static const char* hex = "0123456789ABCDEF";
            std::string e = "\\U";
            for (int k = 7; k >= 0; --k) e += hex[(cp >> (4 * k)) & 15];
            return e;
        };
        for (size_t j = 0; j < trie.size(); ++j) {
            std::string others = "[^\"\\\\\\x00-\\x1F";
            for (const auto& [cp, child] : trie[j].next) others += point(cp);
            std::string body = trie[j].end ? "" : "\"\\\"\" | ";
            body += "( " + others + "] | esc ) char* \"\\\"\"";
            for (const auto& [cp, child] : trie[j].next)
                body += " | \"" + point(cp) + "\" " + name + "-k" + std::to_string(child);
            out_ += name + "-k" + std::to_string(j) + " ::= " + body + "\n";
        }
        return "\"\\\"\" " + name + "-k0";
    }
    static constexpr size_t k_key_trie_nodes = 512;

    // The required members in their order, then each optional one or not, then (unless
    // additionalProperties is false) members of other keys.
    std::string object(const Node& n, const std::string& name) {
        const bool closed = n.additional == JsonSchema::k_none;
        const std::string extra = closed ? "" : other_key(n, name) + " ws \":\" ws " + rule(n.additional);
        const std::string more = closed ? "" : "( ws \",\" ws " + extra + " )*";
        std::vector<size_t> req, opt;
        for (uint8_t k : n.order) ((n.required >> k) & 1 ? req : opt).push_back(k);
        if (!req.empty()) {
            std::string body = member(n, req[0]);
            for (size_t r = 1; r < req.size(); ++r) body += " ws \",\" ws " + member(n, req[r]);
            for (size_t o : opt) body += " ( ws \",\" ws " + member(n, o) + " )?";
            return "\"{\" ws " + then(body, more) + " ws \"}\"";
        }
        if (opt.empty()) return closed ? "\"{\" ws \"}\"" : "\"{\" ws ( " + then(extra, more) + " ws )? \"}\"";
        // name-f<j>: the optional members from j on, the first present being j or a later one;
        // name-r<j>: each of j on present or not, after a first one
        const size_t k = opt.size();
        for (size_t j = k; j-- > 0;) {
            const std::string rest = j + 1 < k ? " " + name + "-r" + std::to_string(j + 1) : "";
            out_ += name + "-r" + std::to_string(j) + " ::= ( ws \",\" ws " + member(n, opt[j]) + " )?" + rest + "\n";
            out_ += name + "-f" + std::to_string(j) + " ::= " + member(n, opt[j]) + rest +
                    (j + 1 < k ? " | " + name + "-f" + std::to_string(j + 1) : "") + "\n";
        }
        const std::string first = closed ? name + "-f0" : "( " + name + "-f0 | " + extra + " )";
        return "\"{\" ws ( " + then(first, more) + " ws )? \"}\"";
    }

    // The prefix's members in turn, then items, between minItems and maxItems of them.
    std::string array(const Node& n) {
        const uint32_t lo = n.min_items, hi = n.max_items == UINT32_MAX ? k_many : n.max_items;
        const uint32_t m = uint32_t(n.prefix.size());
        // the elements from j on, j being placed already (j > 0: each after a comma)
        std::function<std::string(uint32_t)> from = [&](uint32_t j) -> std::string {
            if (j >= hi) return "";
            if (j < m) {
                const std::string piece = then((j ? "ws \",\" ws " : "") + rule(n.prefix[j]), from(j + 1));
                return j > 0 && j >= lo ? "( " + piece + " )?" : piece;
            }
            if (n.items == JsonSchema::k_none) return "";
            const std::string item = rule(n.items);
            const uint32_t rlo = lo > j ? lo - j : 0, rhi = hi == k_many ? k_many : hi - j;
            if (j > 0) return repeat("ws \",\" ws " + item, rlo, rhi, "minItems / maxItems");
            return then(item, repeat("ws \",\" ws " + item, rlo > 0 ? rlo - 1 : 0, rhi == k_many ? k_many : rhi - 1,
                                     "minItems / maxItems"));
        };
        const bool none = hi == 0 || (m == 0 && n.items == JsonSchema::k_none);
        if (none) return "\"[\" ws \"]\"";
        const std::string body = from(0);
        return lo == 0 ? "\"[\" ws ( " + body + " ws )? \"]\"" : "\"[\" ws " + body + " ws \"]\"";
    }

    JsonSchema& s_;
    const bool lenient_;
    const uint32_t cap_;
    std::string out_, error_;
    std::set<int32_t> named_;
    std::set<JsonSchema::Format> formats_;
    std::vector<int32_t> todo_;
};

JsonSchema::Format format_named(const std::string& name) {
    for (int k = 1; k < JsonSchema::f_count; ++k)
        if (name == k_formats[k].name) return JsonSchema::Format(k);
    return JsonSchema::f_none;
}

Result<std::shared_ptr<const Grammar>> write_schema_grammar(JsonSchema& s, bool lenient, uint32_t cap) {
    return SchemaGrammar(s, lenient, cap).run();
}

}  // namespace bigmoe
