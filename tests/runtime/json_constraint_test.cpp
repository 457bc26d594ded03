// JSON mode: the recognizer takes exactly the texts a JSON parser (nlohmann) reads as an object,
// on random documents and random corruptions of them; constrained generation over the real Qwen3
// vocabulary never runs out of tokens and ends only in a whole object.
#include <gtest/gtest.h>

#include <set>

#include <chrono>
#include <cmath>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "mask_check.h"
#include "runtime/json_constraint.h"
#include "testlib.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe {
namespace {

using Json = nlohmann::json;

bool recognizer_takes(const std::string& text) {
    JsonRecognizer r;
    for (char c : text)
        if (!r.push(uint8_t(c))) return false;
    return r.complete();
}

// Whether nlohmann reads the text as an object; nullopt where it refuses a number too large for a
// double ("number overflow"), a limit of that parser rather than of JSON's grammar.
// (A NUL byte is never JSON; nlohmann takes one after the value as the end of its input.)
std::optional<bool> parser_reads(const std::string& text) {
    if (text.find('\0') != std::string::npos) return false;
    try {
        return Json::parse(text).is_object();
    } catch (const Json::out_of_range& e) {
        if (e.id == 406) return std::nullopt;
        return false;
    } catch (const Json::exception&) {
        return false;
    }
}

bool parser_takes(const std::string& text) {
    return parser_reads(text).value_or(false);
}

// A random code point's UTF-8 (any plane, no surrogates), or an ASCII character often.
std::string random_char(std::mt19937& rng) {
    uint32_t cp = rng() % 4 ? 0x20 + rng() % 0x5F : rng() % 0x110000;
    if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0x263A;
    std::string s;
    if (cp < 0x80) {
        s += char(cp);
    } else if (cp < 0x800) {
        s += char(0xC0 | (cp >> 6));
        s += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += char(0xE0 | (cp >> 12));
        s += char(0x80 | ((cp >> 6) & 0x3F));
        s += char(0x80 | (cp & 0x3F));
    } else {
        s += char(0xF0 | (cp >> 18));
        s += char(0x80 | ((cp >> 12) & 0x3F));
        s += char(0x80 | ((cp >> 6) & 0x3F));
        s += char(0x80 | (cp & 0x3F));
    }
    return s;
}

Json random_value(std::mt19937& rng, int depth) {
    const int kind = int(rng() % (depth >= 5 ? 6 : 8));
    switch (kind) {
        case 0:
            return nullptr;
        case 1:
            return rng() % 2 == 0;
        case 2:
            return int64_t(rng()) - int64_t(1u << 31);
        case 3:
            return std::ldexp(double(int32_t(rng())), int(rng() % 80) - 40);
        case 4:
        case 5: {
            std::string s;
            for (uint32_t n = rng() % 8; n > 0; --n)
                s += rng() % 6 ? random_char(rng) : std::string(1, char(rng() % 32));
            return s;
        }
        case 6: {
            Json a = Json::array();
            for (uint32_t n = rng() % 4; n > 0; --n) a.push_back(random_value(rng, depth + 1));
            return a;
        }
        default: {
            Json o = Json::object();
            for (uint32_t n = rng() % 4; n > 0; --n)
                o[random_char(rng) + random_char(rng)] = random_value(rng, depth + 1);
            return o;
        }
    }
}

TEST(JsonRecognizer, takes_exactly_what_a_json_parser_reads_as_an_object) {
    std::mt19937 rng(testing::fresh_seed());
    const std::string alphabet =
        "{}[],:\"\\/ \n\t0123456789-+.eEtrufalsn\x01\x7f\xc3\xa9\xe2\x82\xac\xed\xa0\x80\xf4\x90u";
    int valid = 0, corrupted_valid = 0, corrupted_invalid = 0;
    for (int trial = 0; trial < 3000; ++trial) {
        Json doc = Json::object();
        for (uint32_t n = rng() % 5; n > 0; --n) doc[random_char(rng)] = random_value(rng, 1);
        // compact, indented, and with every non-ASCII character as \u escapes (surrogate pairs)
        const int form = trial % 3;
        std::string text = form == 0 ? doc.dump() : form == 1 ? doc.dump(1) : doc.dump(-1, ' ', true);
        if (trial % 7 == 0) text = " \n" + text + "\t ";
        ASSERT_TRUE(parser_takes(text));
        EXPECT_TRUE(recognizer_takes(text)) << text;
        ++valid;
        for (int m = 0; m < 8; ++m) {
            std::string bad = text;
            const size_t at = rng() % (bad.size() + 1);
            const char c = rng() % 4 ? alphabet[rng() % alphabet.size()] : char(rng() % 256);
            switch (rng() % 3) {
                case 0:
                    bad.insert(bad.begin() + long(at), c);
                    break;
                case 1:
                    if (at < bad.size()) bad.erase(at, 1);
                    break;
                default:
                    if (at < bad.size()) bad[at] = c;
                    break;
            }
            const std::optional<bool> read = parser_reads(bad);
            if (!read) continue;
            const bool want = *read;
            EXPECT_EQ(recognizer_takes(bad), want) << bad;
            ++(want ? corrupted_valid : corrupted_invalid);
        }
    }
    EXPECT_GT(corrupted_invalid, 1000);  // the corruptions do exercise refusals
    EXPECT_GT(corrupted_valid, 100);
}

TEST(JsonRecognizer, refuses_what_only_other_top_levels_or_extensions_allow) {
    for (const char* t : {"[]",
                          "1",
                          "\"x\"",
                          "null",
                          "{\"a\":01}",
                          "{\"a\":.5}",
                          "{\"a\":1.}",
                          "{\"a\":+1}",
                          "{\"a\":NaN}",
                          "{'a':1}",
                          "{\"a\":1,}",
                          "{\"a\" 1}",
                          "{\"a\":\"\\ud800\"}",
                          "{\"a\":\"\\udc00\"}",
                          "{\"a\":\"\\x41\"}",
                          "{\"a\":tru}",
                          "{} {}",
                          "{\"a\":\"\xc0\xaf\"}",
                          "{\"a\":\"\xed\xa0\x80\"}",
                          "{\"a\":\"\xf4\x90\x80\x80\"}",
                          "{\"a\":\"\x1f\"}",
                          "{\"a\":\"\xe0\x9f\xbf\"}",
                          "{\"a\":\"\xf0\x8f\xbf\xbf\"}",
                          "{\"a\":\"\xe2\x82\"}"})
        EXPECT_FALSE(recognizer_takes(t)) << t;
    for (const char* t : {"{}", " {\"a\" : [1, -0.5e+3, true, false, null, {}] }\n", "{\"\\ud83d\\ude00\":\"\\u00e9\"}",
                          "{\"a\":\"\xf0\x9f\x98\x80\"}"})
        EXPECT_TRUE(recognizer_takes(t)) << t;
    // nesting and idle whitespace are bounded
    std::string deep = "{\"a\":";
    for (int i = 0; i < JsonRecognizer::k_max_depth; ++i) deep += "[";
    EXPECT_FALSE(recognizer_takes(deep));
    EXPECT_FALSE(recognizer_takes("{" + std::string(JsonRecognizer::k_max_space + 1, ' ') + "}"));
    EXPECT_TRUE(recognizer_takes("{" + std::string(JsonRecognizer::k_max_space, ' ') + "}"));
}

// Constrained generation with random logits over the Qwen3 vocabulary: the mask always leaves a
// token, end-of-generation only once the object is whole (and then nothing else), and the text
// so produced parses as an object.
TEST(JsonConstraint, random_walks_over_the_qwen3_vocabulary_end_in_an_object) {
    const Tokenizer* tok = testing::qwen3_tokenizer();
    ASSERT_NE(tok, nullptr);
    const auto t0 = std::chrono::steady_clock::now();
    auto vocab = std::make_shared<const JsonVocabulary>(*tok);
    const double build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int32_t n = tok->n_vocab();
    // structural tokens favoured, so that walks close their containers within a few hundred steps
    std::vector<float> favour(size_t(n), 0.0f);
    for (int32_t id = 0; id < n; ++id) {
        const std::string b = tok->token_bytes(id, false);
        if (b == "}" || b == "]" || b == "\"" || b == "\"}" || b == "}\n" || b == "\"," || b == "null")
            favour[size_t(id)] = 6;
        if (b == "{" || b == "[") favour[size_t(id)] = 3;
    }
    std::mt19937 rng(testing::fresh_seed());
    std::normal_distribution<float> noise(0.0f, 1.0f);
    int whole = 0, steps = 0;
    double mask_s = 0;
    for (int walk = 0; walk < 12; ++walk) {
        JsonConstraint c(vocab);
        std::string text;
        bool ended = false;
        for (int step = 0; step < 1500 && !ended; ++step) {
            std::vector<float> logits(static_cast<size_t>(n));
            for (int32_t id = 0; id < n; ++id) logits[size_t(id)] = noise(rng) + favour[size_t(id)];
            const auto m0 = std::chrono::steady_clock::now();
            c.mask(logits.data(), n);
            mask_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - m0).count();
            ++steps;
            int32_t best = 0;
            for (int32_t id = 1; id < n; ++id)
                if (logits[size_t(id)] > logits[size_t(best)]) best = id;
            ASSERT_TRUE(std::isfinite(logits[size_t(best)])) << "no token left after " << text;
            for (int32_t id = 0; id < n; ++id) {
                if (tok->is_eog(id)) {
                    ASSERT_EQ(std::isfinite(logits[size_t(id)]), c.complete()) << text;
                }
            }
            if (c.complete()) {
                ASSERT_TRUE(tok->is_eog(best));
                ended = true;
                break;
            }
            if (step % 25 == 7) {  // the mask equals each token's bytes read one by one
                JsonRecognizer now;
                for (char ch : text) now.push(uint8_t(ch));
                testing::expect_mask_reads_bytes(*tok, logits.data(), now, text);
                for (int32_t id = 0; id < tok->n_vocab(); ++id)  // one token's answer is the mask's
                    ASSERT_EQ(c.allows(id), std::isfinite(logits[size_t(id)])) << id << " after " << text;
            }
            text += tok->token_bytes(best, false);
            c.accept(best);
            JsonRecognizer check;  // the text so far is always the start of an object
            for (char ch : text) ASSERT_TRUE(check.push(uint8_t(ch))) << text;
        }
        if (ended) {
            ++whole;
            EXPECT_TRUE(parser_takes(text)) << text;
        }
    }
    EXPECT_GE(whole, 6);
    std::printf("vocabulary of %d: built in %.3f s, %.2f ms a mask\n", n, build_s, 1e3 * mask_s / steps);
}

// The constraint waits for the token that closes the reasoning, then applies.
TEST(JsonConstraint, starts_after_the_given_token) {
    const Tokenizer* tok = testing::qwen3_tokenizer();
    ASSERT_NE(tok, nullptr);
    auto vocab = std::make_shared<const JsonVocabulary>(*tok);
    const int32_t close = tok->find("</think>"), n = tok->n_vocab();
    ASSERT_GE(close, 0);
    JsonConstraint c(vocab, close);
    std::vector<float> logits(size_t(n), 1.0f);
    c.mask(logits.data(), n);
    EXPECT_EQ(std::count(logits.begin(), logits.end(), 1.0f), n);
    c.accept(tok->find("Hello"));
    EXPECT_FALSE(c.active());
    c.accept(close);
    EXPECT_TRUE(c.active());
    c.mask(logits.data(), n);
    EXPECT_TRUE(std::isfinite(logits[size_t(tok->find("{"))]));
    EXPECT_FALSE(std::isfinite(logits[size_t(tok->find("Hello"))]));
    EXPECT_FALSE(std::isfinite(logits[size_t(close)]));
}

// repeat_after: free text until the open token, an object, blanks and the close token, free text
// again, and the same for the next call (the recognizer started over).
TEST(JsonConstraint, repeats_between_an_open_and_a_close_token) {
    const Tokenizer* tok = testing::qwen3_tokenizer();
    ASSERT_NE(tok, nullptr);
    auto vocab = std::make_shared<const JsonVocabulary>(*tok);
    const int32_t open = tok->find("<tool_call>"), close = tok->find("</tool_call>"), n = tok->n_vocab();
    ASSERT_GE(open, 0);
    ASSERT_GE(close, 0);
    auto id = [&](const char* text) {  // a text of one token
        const std::vector<int32_t> t = tok->encode(text, false);
        EXPECT_EQ(t.size(), 1u) << text;
        return t.empty() ? -1 : t[0];
    };
    auto finite = [&](const JsonConstraint& c) {
        std::vector<float> logits(size_t(n), 1.0f);
        c.mask(logits.data(), n);
        std::set<int32_t> out;
        for (int32_t t = 0; t < n; ++t)
            if (std::isfinite(logits[size_t(t)])) out.insert(t);
        for (int32_t t = 0; t < n; t += 97) EXPECT_EQ(c.allows(t), out.count(t) == 1) << t;
        return out;
    };
    JsonConstraint c(vocab);
    c.repeat_after(open, close);
    for (int call = 0; call < 2; ++call) {
        EXPECT_EQ(finite(c).size(), size_t(n));  // free text
        c.accept(id("Hello"));
        c.accept(close);
        EXPECT_FALSE(c.active());
        c.accept(open);
        ASSERT_TRUE(c.active());
        std::set<int32_t> now = finite(c);
        EXPECT_TRUE(now.count(id("{")) && now.count(id("\n")));
        EXPECT_FALSE(now.count(id("Hello")) || now.count(close) || now.count(open));
        for (const char* t : {"\n", "{\"", "a", "\":", "1"}) c.accept(id(t));
        now = finite(c);
        EXPECT_FALSE(now.count(close)) << "the object is not whole";
        c.accept(id("}"));
        now = finite(c);  // whole: blanks and the close token only
        EXPECT_TRUE(now.count(close) && now.count(id("\n")) && now.count(id(" ")));
        EXPECT_FALSE(now.count(id("Hello")) || now.count(id("}")) || now.count(open));
        c.accept(id("\n"));
        c.accept(id("\n"));
        EXPECT_EQ(finite(c), std::set<int32_t>{close}) << "two blanks at most";
        c.accept(close);
        EXPECT_FALSE(c.active());
    }
}

}  // namespace
}  // namespace bigmoe
