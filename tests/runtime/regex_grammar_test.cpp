// JSON Schema patterns as grammars over a JSON string's text, against std::wregex (ECMAScript,
// one wchar_t a code point) searching the decoded value: random strings are taken whole exactly
// when the regex finds a match, random byte walks under the grammar never reach a dead end and
// end in matching strings, and what the translation does not support is refused by name.
#include "runtime/regex_grammar.h"

#include <gtest/gtest.h>

#include <cstring>
#include <optional>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "runtime/grammar.h"
#include "testlib.h"

namespace bigmoe {
namespace {

// A JSON string's character (any, escapes included), as a schema's grammar names it.
const char* k_char = "char ::= [^\"\\\\\\x00-\\x1F] | \"\\\\\" ( [\"\\\\/bfnrt] | \"u\" [0-9a-fA-F]{4} )\n";

std::shared_ptr<const Grammar> grammar_of(const std::string& pattern) {
    auto body = regex_gbnf(pattern, "char");
    EXPECT_TRUE(body.ok()) << pattern << ": " << body.error().message;
    if (!body) return nullptr;
    auto g = Grammar::parse("root ::= \"\\\"\" " + *body + " \"\\\"\"\n" + k_char);
    EXPECT_TRUE(g.ok()) << pattern << ": " << g.error().message << "\n" << *body;
    return g ? *g : nullptr;
}

// The value as JSON writes it between the quotes: the quote, the backslash and \b \f \n \r \t
// escaped, everything else as itself.
std::string json_text(const std::string& v) {
    std::string out;
    for (char c : v) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\t':
                out += "\\t";
                break;
            case '\r':
                out += "\\r";
                break;
            default:
                out += c;
        }
    }
    return out;
}

// The value of a JSON string's text (the escapes the walks can write).
std::optional<std::string> json_value(const std::string& t) {
    std::string out;
    for (size_t i = 0; i < t.size(); ++i) {
        if (t[i] != '\\') {
            out += t[i];
            continue;
        }
        if (++i >= t.size()) return std::nullopt;
        const char e = t[i];
        if (e == 'u') {
            if (i + 4 >= t.size()) return std::nullopt;
            const uint32_t cp = uint32_t(std::stoul(t.substr(i + 1, 4), nullptr, 16));
            i += 4;
            if (cp >= 0x80) return std::nullopt;  // the walks' \u escapes are checked on ASCII only
            out += char(cp);
            continue;
        }
        const char* from = "\"\\/bfnrt";
        const char* to = "\"\\/\b\f\n\r\t";
        const char* at = std::strchr(from, e);
        if (!at) return std::nullopt;
        out += to[at - from];
    }
    return out;
}

bool accepts(const std::shared_ptr<const Grammar>& g, const std::string& text) {
    GrammarRecognizer r(g);
    for (char c : text)
        if (!r.push(uint8_t(c))) return false;
    return r.complete();
}

// Patterns, each with a value it matches (random edits of it meet the pattern's edges).
const std::vector<std::pair<const char*, const char*>> k_patterns = {
    {"^[a-z]+$", "abc"},
    {"abc", "xabcx"},
    {"^a|b$", "ab"},
    {"^(ab|cd)*$", "abcd"},
    {"^\\d{2,3}-\\d{2}$", "123-45"},
    {"x?y+z*", "yyz"},
    {"^[^a-c]{1,3}$", "xy"},
    {"^.{2}$", "a\""},
    {"\\w+@\\w+\\.(com|org)$", "a_1@b.org"},
    {"^\\s*$", " \t"},
    {"^[A-Z][a-z]*( [A-Z][a-z]*)*$", "Ab Cd"},
    {"^\"q\"$", "\"q\""},
    {"\\\\", "a\\b"},
    {"^[\\t\\n]$", "\n"},
    {"^\\S+$", "a\"b"},
    {"^(?:a|bc){2}$", "abc"},
    {"^\xc3\xa9+\xe2\x98\xba?$", "\xc3\xa9\xc3\xa9\xe2\x98\xba"},  // é+☺?
    {"^[^\"]*$", "a\\b"},
    {"^a{0}b$", "b"},
    {"^[-a]$", "-"},
    {"^[a\\-z]$", "z"},
    {"(a|)b", "cb"},
    {"^$", ""},
    {"", "x"},
    {"^a*?b$", "aab"},
    {"^\\u0041\\x42$", "AB"},
    {"[.]", "a.b"},
    {"^\\W$", "\xc3\xa9"},
    {"^[\\d.]+$", "1.5"},
    {"^(a|b)+c$", "abac"},
    {"^[a-c]{2,}$", "cab"},
    {"^/\\/$", "//"},
};

// A value near a pattern's example: it, with up to three random edits from an alphabet of
// letters, digits, signs, the characters JSON escapes, and non-ASCII ones.
std::string random_value(const std::string& example, std::mt19937& rng) {
    static const std::vector<std::string> alphabet = {"a", "b",  "c",  "d",  "q",  "x", "y",        "z",           "A",
                                                      "B", "Z",  "0",  "4",  "9",  "_", "-",        ".",           "@",
                                                      " ", "\"", "\\", "\n", "\t", "/", "\xc3\xa9", "\xe2\x98\xba"};
    const std::wstring cps = testing::code_points(example);
    std::vector<std::string> v;  // the example's characters
    for (size_t i = 0, at = 0; i < cps.size(); ++i) {
        const size_t n = cps[i] < 0x80 ? 1 : cps[i] < 0x800 ? 2 : cps[i] < 0x10000 ? 3 : 4;
        v.push_back(example.substr(at, n));
        at += n;
    }
    const int edits = int(rng() % 4);
    for (int e = 0; e < edits; ++e) {
        const std::string& t = alphabet[rng() % alphabet.size()];
        const size_t at = v.empty() ? 0 : rng() % (v.size() + 1);
        const int how = int(rng() % 3);
        if (how == 0 || v.empty() || at == v.size())
            v.insert(v.begin() + std::ptrdiff_t(at), t);
        else if (how == 1)
            v[at] = t;
        else
            v.erase(v.begin() + std::ptrdiff_t(at));
    }
    std::string out;
    for (const std::string& c : v) out += c;
    return out;
}

// The value for std::wregex, whose \s (the C library's spaces) leaves out some of ECMAScript's:
// those as ' ', the line and paragraph separators as '\n' (what '.', \s and \S say of each stays).
std::wstring reference(const std::string& v) {
    std::wstring w;
    for (wchar_t c : testing::code_points(v)) {
        const bool space = c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x202F || c == 0x205F ||
                           c == 0x3000 || c == 0xFEFF;
        w += space ? L' ' : c == 0x2028 || c == 0x2029 ? L'\n' : c;
    }
    return w;
}

// Each pattern's grammar (null when it failed, reported) and the regex that checks it.
struct Compiled {
    std::string pattern, example;
    std::shared_ptr<const Grammar> g;
    std::wregex re;
};
std::vector<Compiled> compiled_patterns() {
    std::vector<Compiled> out;
    for (const auto& [p, example] : k_patterns)
        out.push_back({p, example, grammar_of(p), std::wregex(testing::code_points(p), std::regex::ECMAScript)});
    return out;
}

TEST(RegexGrammar, strings_are_taken_exactly_when_the_regex_finds_a_match) {
    std::mt19937 rng(testing::fresh_seed());
    for (const auto& [p, example, g, re] : compiled_patterns()) {
        SCOPED_TRACE(p);
        ASSERT_TRUE(g);
        ASSERT_TRUE(std::regex_search(reference(example), re)) << example;
        int matched = 0;
        for (int i = 0; i < 2000; ++i) {
            const std::string v = random_value(example, rng);
            const bool want = std::regex_search(reference(v), re);
            matched += want;
            EXPECT_EQ(accepts(g, "\"" + json_text(v) + "\""), want) << "value [" << v << "]";
        }
        EXPECT_GT(matched, 100);
        if (p.size() > 3) {
            EXPECT_LT(matched, 1950);  // the edits miss too
        }
    }
}

// Random bytes taken by the grammar, the closing quote favoured more and more: never a dead end,
// and the value written is matched.
TEST(RegexGrammar, random_walks_end_in_matching_strings) {
    std::mt19937 rng(testing::fresh_seed());
    for (const auto& [p, example, g, re] : compiled_patterns()) {
        SCOPED_TRACE(p);
        ASSERT_TRUE(g);
        for (int walk = 0; walk < 20; ++walk) {
            GrammarRecognizer r(g);
            std::string text;
            for (int step = 0; step < 60 && !(text.size() > 1 && r.finished()); ++step) {
                std::vector<uint8_t> takes;
                for (int c = 1; c < 256; ++c) {
                    GrammarRecognizer t = r;
                    if (t.push(uint8_t(c))) takes.push_back(uint8_t(c));
                }
                ASSERT_FALSE(takes.empty()) << "a dead end after " << text;
                std::vector<double> w;
                for (uint8_t c : takes) w.push_back(c == '"' ? 1.0 + step : c == '\\' || c == 'u' ? 0.3 : 1.0);
                const uint8_t c = takes[std::discrete_distribution<size_t>(w.begin(), w.end())(rng)];
                ASSERT_TRUE(r.push(c));
                text += char(c);
            }
            if (!r.complete()) continue;
            const auto v = json_value(text.substr(1, text.size() - 2));
            if (!v) continue;  // a \u escape past ASCII, which the check leaves out
            EXPECT_TRUE(std::regex_search(reference(*v), re)) << text;
        }
    }
}

TEST(RegexGrammar, refuses_what_it_does_not_translate) {
    const std::vector<std::pair<const char*, const char*>> cases = {
        {"^(?=a)b$", "lookaround"},
        {"(?<n>a)", "lookaround"},
        {"(a)\\1", "backreferences"},
        {"\\bword", "word boundaries"},
        {"a^b", "^ / $"},
        {"a$b", "$ inside"},
        {"(a$)", "^ / $"},
        {"\\p{L}", "Unicode property"},
        {"[\\D]", "inside a class"},
        {"a{1001}", "above 1000"},
        {"a{3,2}", "below m"},
        {"*a", "nothing to repeat"},
        {"a**", "nothing to repeat"},
        {"(ab", "without its ')'"},
        {"ab)", "without its '('"},
        {"[ab", "without its ']'"},
        {"[z-a]", "out of order"},
        {"[\\x01]", "no character a JSON string writes"},
        {"\\q", "escape \\q"},
        {"a\\", "at the end"},
        {"\xff", "invalid UTF-8"},
    };
    for (const auto& [pattern, want] : cases) {
        auto g = regex_gbnf(pattern, "char");
        ASSERT_FALSE(g.ok()) << pattern << " -> " << *g;
        EXPECT_NE(g.error().message.find(want), std::string::npos) << pattern << ": " << g.error().message;
    }
}

}  // namespace
}  // namespace bigmoe
