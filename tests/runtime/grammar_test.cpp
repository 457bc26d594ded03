// GBNF grammars: the recognizer against references written without it (regular expressions for
// the regular grammars, a bracket matcher, a JSON parser). Random strings: taken whole and
// complete exactly when the reference matches. Random byte walks: never a dead end, and what
// completes matches. The parser's errors name what is wrong and where. Constrained generation
// over the real Qwen3 vocabulary: the mask equals each token's bytes read one by one.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>

#include "mask_check.h"
#include "runtime/generator.h"
#include "runtime/grammar.h"
#include "runtime/json_constraint.h"
#include "testlib.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe {
namespace {

struct Case {
    const char* name;
    const char* gbnf;
    std::function<bool(const std::string&)> matches;
    std::string alphabet;               // bytes random strings and walks are made of
    std::vector<std::string> examples;  // texts that match
    // the reference matches exactly the grammar's texts (else it matches more of them: JSON
    // with any whitespace and exponent, so only what the grammar takes is checked)
    bool exact = true;
};

std::function<bool(const std::string&)> re(const char* pattern) {
    auto r = std::make_shared<std::regex>(pattern);
    return [r](const std::string& s) { return std::regex_match(s, *r); };
}

// ( and [ nested and closed in order
bool balanced(const std::string& s) {
    std::string st;
    for (char c : s) {
        if (c == '(' || c == '[') {
            st += c;
        } else if (c == ')' || c == ']') {
            if (st.empty() || st.back() != (c == ')' ? '(' : '[')) return false;
            st.pop_back();
        } else {
            return false;
        }
    }
    return st.empty();
}

bool json_value(const std::string& s) {
    return nlohmann::json::accept(s);
}

const char* k_json_gbnf = R"(# JSON values laid out as llama.cpp's json.gbnf (exponents of 1-2 digits: the
# reference parser refuses numbers past a double's range)
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws

object ::=
  "{" ws (
            string ":" ws value
    ("," ws string ":" ws value)*
  )? "}" ws

array  ::=
  "[" ws (
            value
    ("," ws value)*
  )? "]" ws

string ::=
  "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\/bfnrt] | "u" [0-7] [0-9a-fA-F]{3}) # escapes (no surrogates: the parser wants them paired)
  )* "\"" ws

number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,2})? ws

ws ::= | " " | "\n" [ \t]{0,20}
)";

std::vector<Case> cases() {
    return {
        {"words", R"(root ::= "yes" | "no" | "maybe")", re("yes|no|maybe"), "yesnomab", {"yes", "no", "maybe"}},
        {"counts",
         R"(root ::= [a-c]+ ("-" [0-9]{2,3})?)",
         re("[a-c]+(-[0-9]{2,3})?"),
         "abc-019x",
         {"a", "cab-12", "b-999"}},
        {"list",
         "root ::= item (\",\" ws item)*\nitem ::= [^, ]{1,4}\nws ::= \" \"?",
         re("[^, ]{1,4}(, ?[^, ]{1,4})*"),
         "ab, ",
         {"a", "ab,b", "abab, a"}},
        {"optional parts", R"(root ::= "a"* "b"? "c"{0,2} .)", re("a*b?c{0,2}[\\s\\S]"), "abcd", {"x", "aabcc.", "b"}},
        {"ambiguous", R"(root ::= ("ab" | "a" "b" | "a") "b"*)", re("(ab|a)b*"), "abc", {"a", "ab", "abbb"}},
        {"brackets",
         "root ::= pair*\npair ::= \"(\" root \")\" | \"[\" root \"]\"  # nested",
         balanced,
         "()[]",
         {"", "()", "([])[]", "[[()]]"}},
        {"free text", R"(root ::= [^\n]* "\n")", re("[^\n]*\n"), "ab \n", {"\n", "a b\n"}},
        // bounded repetitions of a class: inside their tails a mask takes the tokens of few
        // enough characters of the class without reading them
        {"bounded string",
         R"(root ::= "\"" [^"\\]{0,40} "\"")",
         re("\"[^\"\\\\]{0,40}\""),
         "ab \"\\",
         {"\"\"", "\"a b\""}},
        {"bounded word", R"(root ::= [a-z]{0,12} ("." | "!"))", re("[a-z]{0,12}[.!]"), "abz.!", {".", "abc!"}},
        {"json",
         k_json_gbnf,
         json_value,
         "{}[]\":,0-1.e tn\\ua",
         {"{}", R"({"a": [1, -2.5e3, "x\n", true, null, {}]})", "{\"\\u00e9\": []}\n  "},
         false},
    };
}

// The regular expressions read bytes, the grammars characters: texts past ASCII are checked by
// the JSON and bracket references only.
bool checkable(const Case& c, const std::string& text) {
    bool ascii = true;
    for (char ch : text) ascii = ascii && uint8_t(ch) < 0x80;
    return ascii || std::string(c.name) == "json" || std::string(c.name) == "brackets";
}

// -1 when the recognizer takes every byte of s; else the index of the byte it refused.
int refused_at(const GrammarRecognizer& start, const std::string& s) {
    GrammarRecognizer r = start;
    for (size_t i = 0; i < s.size(); ++i)
        if (!r.push(uint8_t(s[i]))) return int(i);
    return -1;
}

bool derives(const GrammarRecognizer& start, const std::string& s) {
    GrammarRecognizer r = start;
    for (char c : s)
        if (!r.push(uint8_t(c))) return false;
    return r.complete();
}

TEST(Grammar, random_strings_are_derived_exactly_when_the_reference_matches) {
    std::mt19937 rng(testing::fresh_seed());
    for (const Case& c : cases()) {
        auto g = Grammar::parse(c.gbnf);
        ASSERT_TRUE(g.ok()) << c.name << ": " << g.error().message;
        const GrammarRecognizer start(*g);
        for (const std::string& e : c.examples) {
            ASSERT_TRUE(c.matches(e)) << c.name << ": the reference refuses " << e;
            EXPECT_TRUE(derives(start, e)) << c.name << ": " << e;
        }
        int matched = 0;
        for (int i = 0; i < 3000; ++i) {
            std::string s;
            const size_t len = rng() % 11;
            for (size_t k = 0; k < len; ++k) s += c.alphabet[rng() % c.alphabet.size()];
            const bool want = c.matches(s);
            matched += want;
            if (c.exact) {
                ASSERT_EQ(derives(start, s), want) << c.name << ": \"" << s << "\"";
            } else if (derives(start, s)) {
                ASSERT_TRUE(want) << c.name << ": \"" << s << "\"";
            }
            // a refused byte ends every text with that prefix: none of them matches
            const int at = refused_at(start, s);
            if (at >= 0 && c.exact) {
                for (size_t k = size_t(at) + 1; k <= s.size(); ++k)
                    ASSERT_FALSE(c.matches(s.substr(0, k))) << c.name << ": refused at " << at << " in " << s;
            }
        }
        std::printf("%s: %d of 3000 random strings match\n", c.name, matched);
    }
}

// At every step some byte is taken until the text is finished; what completes matches.
TEST(Grammar, random_byte_walks_never_dead_end_and_complete_in_matches) {
    std::mt19937 rng(testing::fresh_seed());
    for (const Case& c : cases()) {
        auto g = Grammar::parse(c.gbnf);
        ASSERT_TRUE(g.ok());
        int whole = 0;
        for (int walk = 0; walk < 200; ++walk) {
            GrammarRecognizer r(*g);
            std::string text;
            for (int step = 0; step < 400; ++step) {
                if (r.complete() && (r.finished() || rng() % 4 == 0)) break;
                std::vector<uint8_t> takes;
                for (int b = 1; b < 256; ++b) {
                    GrammarRecognizer t = r;
                    if (t.push(uint8_t(b))) takes.push_back(uint8_t(b));
                }
                ASSERT_FALSE(takes.empty()) << c.name << ": a dead end after \"" << text << "\"";
                // the alphabet's closing bytes favoured more and more, so walks end
                std::vector<double> w;
                for (uint8_t b : takes)
                    w.push_back(std::strchr("}])\"", b) && b                    ? 1.0 + step / 2.0
                                : c.alphabet.find(char(b)) != std::string::npos ? 8.0
                                                                                : 0.05);
                const uint8_t b = takes[std::discrete_distribution<size_t>(w.begin(), w.end())(rng)];
                ASSERT_TRUE(r.push(b));
                text += char(b);
            }
            if (!r.complete()) continue;
            ++whole;
            if (checkable(c, text)) {
                EXPECT_TRUE(c.matches(text)) << c.name << ": \"" << text << "\"";
            }
        }
        EXPECT_GE(whole, 100) << c.name;
    }
}

TEST(Grammar, characters_past_ascii_are_read_whole) {
    auto g = Grammar::parse("root ::= [а-я]+ [^a-z\\u00e9] \"é\"");
    ASSERT_TRUE(g.ok()) << g.error().message;
    const GrammarRecognizer start(*g);
    EXPECT_TRUE(derives(start, "при!é"));
    EXPECT_TRUE(derives(start, "я中é"));
    EXPECT_FALSE(derives(start, "приaé"));
    EXPECT_FALSE(derives(start, "при\xc3\xa9\xc3\xa9"));  // é is excluded from the class
    // a lead byte no class character starts with is refused at once, not at the character's end
    EXPECT_EQ(refused_at(start, "\xe4\xb8\xad"), 0);          // 中 cannot start the Cyrillic run
    EXPECT_EQ(refused_at(start, "\xd0\xb0\xd0"), -1);         // а, then the start of another
    EXPECT_EQ(refused_at(start, "\xd0\xb0\xd1\x90"), -1);     // U+0450 is past я: the second class's
    EXPECT_EQ(refused_at(start, "\xd0\xb0\xd1\x90\xd1"), 4);  // then only é
    EXPECT_EQ(refused_at(start, "\xd0\xb0\xc3"), -1);         // Latin-1 letters other than é may follow
    EXPECT_EQ(refused_at(start, "\xd0\xb0\xc0"), 2);          // never a UTF-8 byte
    EXPECT_EQ(refused_at(start, "\xd0\xb0\xed\xa0\x80"), 3);  // a surrogate
}

// A grammar that keeps derivations apart for every character (here: how many of the a's still
// wait for a b) is followed up to k_max_stacks derivations; the character past them is refused
// and the recognizer stays where it was, still able to go on and to end.
// Inside a bounded repetition's optional tail of a broad class (one that refuses a few ASCII
// characters) the recognizer says how many characters of it a derivation still takes there, and
// which characters the class refuses; the class may be an item's one-class alternative (a JSON
// string's characters). Narrow classes say 0 (their tokens are walked).
TEST(Grammar, bounded_repetitions_count_the_characters_left) {
    auto g = Grammar::parse(R"(root ::= [^.<]{2,6} "." | "<" [^>]* ">")");
    ASSERT_TRUE(g.ok());
    uint64_t stops[2];
    const std::vector<std::pair<std::string, uint32_t>> want = {{"", 0},      {"a", 0},      {"ab", 4}, {"a b", 3},
                                                                {"abcde", 1}, {"abcdef", 0}, {"<", 0},  {"<ab", 0}};
    for (const auto& [text, room] : want) {
        GrammarRecognizer r(*g);
        for (char c : text) ASSERT_TRUE(r.push(uint8_t(c))) << text;
        EXPECT_EQ(r.chain_room(stops), room) << "after \"" << text << "\"";
        if (room == 0) continue;
        for (uint32_t c = 0; c < 0x80; ++c)
            EXPECT_EQ((stops[c / 64] >> (c % 64)) & 1, c == '.' || c == '<' ? 1u : 0u) << c;
    }
    auto item = Grammar::parse(R"(root ::= "'" ch{0,3} "'"
ch ::= [^'\\] | "\\" ["\\])");
    ASSERT_TRUE(item.ok());
    GrammarRecognizer r(*item);
    ASSERT_TRUE(r.push('\''));
    EXPECT_EQ(r.chain_room(stops), 3u);
    ASSERT_TRUE(r.push('x'));
    EXPECT_EQ(r.chain_room(stops), 2u);
    EXPECT_EQ((stops[0] >> '\'') & 1, 1u);
    EXPECT_EQ((stops[1] >> ('\\' - 64)) & 1, 1u);
    EXPECT_EQ((stops[0] >> ' ') & 1, 0u);
    ASSERT_TRUE(r.push('\\'));  // inside an escape: not the class
    EXPECT_EQ(r.chain_room(stops), 0u);
    auto narrow = Grammar::parse(R"(root ::= [a-z]{0,5} ".")");
    ASSERT_TRUE(narrow.ok());
    EXPECT_EQ(GrammarRecognizer(*narrow).chain_room(stops), 0u);
}

TEST(Grammar, derivations_past_the_limit_refuse_the_character) {
    auto g = Grammar::parse("root ::= \"a\" root \"b\" | \"a\" root | \"\"");
    ASSERT_TRUE(g.ok());
    GrammarRecognizer r(*g);
    size_t taken = 0;
    while (taken < 1000 && r.push('a')) ++taken;
    // three derivations (two a's, a b or the end) for each count of pending b's, 0 .. taken
    EXPECT_GE(3 * (taken + 2), GrammarRecognizer::k_max_stacks / 2);
    EXPECT_LE(3 * (taken + 1), GrammarRecognizer::k_max_stacks);
    EXPECT_TRUE(r.complete());
    GrammarRecognizer b = r;
    EXPECT_TRUE(b.push('b'));
    EXPECT_FALSE(b.push('a'));  // after a b, only b's
}

// Stacks that many derivations share count once: s's 70 alternatives each become t's two stacks
// (140 before the duplicates go, 2 after), well inside the bound.
TEST(Grammar, equal_derivations_count_once_toward_the_limit) {
    std::string alts = "t";
    for (int i = 1; i < 70; ++i) alts += " | t";
    const std::string rules = "\ns ::= " + alts + "\nt ::= \"a\" | \"b\"";
    auto g = Grammar::parse("root ::= \"x\" s \".\"" + rules);
    ASSERT_TRUE(g.ok());
    GrammarRecognizer r(*g);
    for (char c : std::string("xb.")) ASSERT_TRUE(r.push(uint8_t(c))) << c;
    EXPECT_TRUE(r.complete());
    auto g2 = Grammar::parse("root ::= s \".\"" + rules);
    ASSERT_TRUE(g2.ok());
    GrammarRecognizer first(*g2);
    EXPECT_TRUE(first.push('a'));
    EXPECT_FALSE(first.push('a'));
}

TEST(Grammar, errors_name_what_is_wrong_and_where) {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"", "no \"root\""},
        {"item ::= \"a\"", "no \"root\""},
        {"root ::= item", "\"item\" is used but not defined"},
        {"root ::= \"a\"\nroot ::= \"b\"", "line 2, column 1: rule \"root\" is defined twice"},
        {"root ::= root \"a\" | \"b\"", "\"root\" is left-recursive"},
        {"root ::= x\nx ::= \"a\"? root", "left-recursive"},
        {"root ::= \"abc", "unterminated string"},
        {"root ::= [abc", "unterminated character class"},
        {"root ::= [z-a]", "end comes before its start"},
        {"root ::= []", "empty character class"},
        {"root ::= \"a\"{3,1}", "n < m"},
        {"root ::= \"a\"{x}", "expected a count"},
        {"root ::= \"a\"{20000}", "expected a count"},
        {"root ::= \"\\q\"", "unknown escape"},
        {"root ::= \"\\x4\"", "hex digits"},
        {"root ::= \"\\U00110000\"", "past U+10FFFF"},
        {"root ::= (\"a\" | \"b\"", "expected ')'"},
        {"root ::= \"a\" )", "unexpected ')'"},
        {"root = \"a\"", "expected \"::=\""},
        {"root ::= \"a\" b ::= \"c\"", "expected a newline before the rule \"b\""},
        {"root ::= \"\"*", "repetition of the empty string"},
        {"::= \"a\"", "expected a rule name"},
        {"root ::= \"\xff\"", "invalid UTF-8"},
        {std::string(300, '(') + "\"a\"" + std::string(300, ')'), "nested deeper"},
    };
    for (const auto& [text, want] : bad) {
        std::string grammar = text;
        if (grammar.rfind(std::string(300, '('), 0) == 0) grammar = "root ::= " + grammar;
        auto g = Grammar::parse(grammar);
        ASSERT_FALSE(g.ok()) << grammar;
        EXPECT_NE(g.error().message.find(want), std::string::npos) << grammar << " -> " << g.error().message;
    }
}

// Constrained generation with random logits over the real Qwen3 vocabulary: the mask always
// leaves a token, equals each token's bytes read one by one, and the texts match.
TEST(Grammar, random_walks_over_the_qwen3_vocabulary_end_in_matches) {
    const Tokenizer* tok = testing::qwen3_tokenizer();
    ASSERT_NE(tok, nullptr);
    auto vocab = std::make_shared<const JsonVocabulary>(*tok);
    const int32_t n = tok->n_vocab();
    std::mt19937 rng(testing::fresh_seed());
    std::normal_distribution<float> noise(0.0f, 1.0f);
    for (const Case& c : cases()) {
        auto g = Grammar::parse(c.gbnf);
        ASSERT_TRUE(g.ok());
        std::vector<float> favour(size_t(n), 0.0f);
        for (int32_t id = 0; id < n; ++id) {
            const std::string b = tok->token_bytes(id, false);
            if (b.size() == 1 && std::strchr("}])\"\n", b[0])) favour[size_t(id)] = 5;
            if (tok->is_eog(id)) favour[size_t(id)] = 3;
        }
        int whole = 0, masks = 0;
        double mask_s = 0;
        for (int walk = 0; walk < 3; ++walk) {
            JsonConstraint con(vocab, -1, *g);
            // the generators' greedy sampling under a twin constraint: the best allowed token
            GenerateParams twin;
            twin.constraint = std::make_shared<JsonConstraint>(vocab, -1, *g);
            SamplerParams sp;
            sp.temp = 0;
            Sampler greedy(sp);
            std::vector<float> scratch;
            std::string text;
            for (int step = 0; step < 300; ++step) {
                std::vector<float> logits(static_cast<size_t>(n));
                for (int32_t id = 0; id < n; ++id) logits[size_t(id)] = noise(rng) + favour[size_t(id)];
                const int32_t sampled = sample_next(greedy, twin, logits, scratch);
                const auto m0 = std::chrono::steady_clock::now();
                con.mask(logits.data(), n);
                mask_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - m0).count();
                ++masks;
                const int32_t best = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
                ASSERT_TRUE(std::isfinite(logits[size_t(best)])) << c.name << ": no token left after " << text;
                ASSERT_EQ(sampled, best) << c.name << " after " << text;
                GrammarRecognizer now(*g);
                for (char ch : text) ASSERT_TRUE(now.push(uint8_t(ch)));
                for (int32_t id = 0; id < n; ++id) {
                    if (tok->is_eog(id)) {
                        ASSERT_EQ(std::isfinite(logits[size_t(id)]), now.complete());
                    }
                }
                if (step % 25 == 2 || step < 2) {
                    if (!now.complete()) testing::expect_mask_reads_bytes(*tok, logits.data(), now, text);
                    for (int32_t id = 0; id < n; ++id)  // one token's answer is the mask's
                        ASSERT_EQ(con.allows(id), std::isfinite(logits[size_t(id)])) << c.name << " " << id;
                }
                if (tok->is_eog(best)) {
                    ++whole;
                    EXPECT_TRUE(checkable(c, text) ? c.matches(text) : true) << c.name << ": " << text;
                    break;
                }
                text += tok->token_bytes(best, false);
                con.accept(best);
                if (con.complete()) {  // nothing can follow: the answer ends here
                    ++whole;
                    EXPECT_TRUE(checkable(c, text) ? c.matches(text) : true) << c.name << ": " << text;
                    break;
                }
            }
        }
        EXPECT_GE(whole, 1) << c.name;
        std::printf("%s: %.2f ms a mask\n", c.name, 1e3 * mask_s / masks);
    }
}

// A rule that branches past k_max_stacks derivations, at the start or after a prefix, would stop
// generation where it is read: parse refuses it, naming the rule; one inside the bound parses and
// reads each of its words.
TEST(Grammar, rules_past_the_derivation_bound_are_refused) {
    auto words = [](size_t n) {
        std::string alts;
        for (size_t i = 0; i < n; ++i) alts += (i ? " | \"w" : "\"w") + std::to_string(i) + "\"";
        return alts;
    };
    const size_t bound = GrammarRecognizer::k_max_stacks;
    for (const std::string& wide : {"root ::= " + words(bound + 1), "root ::= \"x\" word\nword ::= " + words(bound + 1),
                                    "root ::= \"x\" (" + words(bound + 1) + ")*"}) {
        auto g = Grammar::parse(wide);
        ASSERT_FALSE(g.ok()) << wide;
        EXPECT_NE(g.error().message.find("derivations at once"), std::string::npos) << g.error().message;
    }
    auto named = Grammar::parse("root ::= \"x\" word\nword ::= " + words(bound + 1));
    EXPECT_NE(named.error().message.find("rule \"word\""), std::string::npos) << named.error().message;
    auto fits = Grammar::parse("root ::= \"x\" word\nword ::= " + words(bound));
    ASSERT_TRUE(fits.ok()) << fits.error().message;
    for (size_t i = 0; i < bound; i += 9) {
        GrammarRecognizer r(*fits);
        for (char c : "xw" + std::to_string(i)) ASSERT_TRUE(r.push(uint8_t(c))) << i;
        EXPECT_TRUE(r.complete()) << i;
    }
}

// A long text of random nesting (most of its opening brackets make a stack never seen before):
// the node pool stays bounded when compacted after each token (without, it grows with the
// text), and a copy made before a compaction reads on as the original does.
TEST(Grammar, compaction_keeps_long_texts_bounded_and_copies_valid) {
    auto g = Grammar::parse("root ::= pair*\npair ::= \"(\" root \")\" | \"[\" root \"]\"");
    ASSERT_TRUE(g.ok());
    std::mt19937 rng(11);
    std::string text, open;
    while (text.size() < 400000 || !open.empty()) {
        if (text.size() < 400000 && (open.empty() || (open.size() < 40 && rng() % 2))) {
            open += rng() % 2 ? '(' : '[';
            text += open.back();
        } else {
            text += open.back() == '(' ? ')' : ']';
            open.pop_back();
        }
    }
    GrammarRecognizer r(*g), grown(*g);
    std::optional<GrammarRecognizer> copy;
    size_t most = 0;
    for (size_t i = 0; i < text.size(); ++i) {
        ASSERT_TRUE(r.push(uint8_t(text[i]))) << i;
        ASSERT_TRUE(grown.push(uint8_t(text[i]))) << i;
        if (copy) {
            ASSERT_TRUE(copy->push(uint8_t(text[i]))) << i;
        }
        if (i % 4 == 3) r.compact();  // as after each token
        if (i == text.size() / 2) copy = r;
        most = std::max(most, r.mark());
    }
    EXPECT_TRUE(r.complete());
    EXPECT_TRUE(copy->complete());
    EXPECT_GT(grown.mark(), 2 * GrammarRecognizer::k_compact_nodes) << "the text does not leave enough nodes";
    EXPECT_LE(most, GrammarRecognizer::k_compact_nodes + 64);
}

}  // namespace
}  // namespace bigmoe
