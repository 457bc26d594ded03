// Tokenizer against the reference tokenizations (fixtures), the spec's pre-tokenizer examples,
// and decode(encode(s)) == NFC(s).
#include <gtest/gtest.h>

#include <fstream>

#include "gguf/gguf_file.h"
#include "testlib.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace bigmoe {
namespace {

std::unique_ptr<Tokenizer> load(const std::string& model) {
    auto f = gguf::GgufFile::open(testing::fixtures_dir() + "/models/" + model);
    EXPECT_TRUE(f.ok());
    static std::vector<std::unique_ptr<gguf::GgufFile>> keep;
    auto t = Tokenizer::from_gguf(**f);
    EXPECT_TRUE(t.ok()) << (t.ok() ? "" : t.error().message);
    keep.push_back(std::move(*f));
    return std::move(*t);
}

void check_fixture(const std::string& json, const std::string& fallback_model) {
    auto j = testing::read_json(testing::fixtures_dir() + "/ref/" + json);
    const std::string model = j.contains("tokenizer") ? j["tokenizer"].get<std::string>() : fallback_model;
    auto tok = load(model);
    const bool parse_special = j.value("parse_special", true), add_special = j.value("add_special", false);
    int n = 0;
    for (const auto& c : j["cases"]) {
        const std::string text = c["text"];
        const auto want = c["ids"].get<std::vector<int32_t>>();
        EXPECT_EQ(tok->encode(text, parse_special, add_special), want) << json << ": " << text;
        EXPECT_EQ(tok->decode(want, true), unicode::nfc(unicode::sanitize_utf8(text))) << json << ": " << text;
        ++n;
    }
    EXPECT_GT(n, 0);
}

TEST(Tokenizer, qwen3_fixture_cases) {
    check_fixture("tokenizer-qwen3.json", "qwen3-vocab.gguf");
}
TEST(Tokenizer, tiny_fixture_cases) {
    check_fixture("tokenizer-tiny.json", "qwen35moe-tiny-f32.gguf");
}

std::vector<std::string> words(const std::string& s, PreTokenizer k) {
    const auto cps = unicode::decode_utf8(s);
    std::vector<std::string> r;
    for (auto [b, e] : pretokenize(cps, k))
        r.push_back(unicode::encode_utf8({cps.begin() + long(b), cps.begin() + long(e)}));
    return r;
}

TEST(PreTokenizer, spec_examples) {
    using V = std::vector<std::string>;
    for (PreTokenizer k : {PreTokenizer::qwen2, PreTokenizer::qwen35}) {
        EXPECT_EQ(words("Hello world", k), (V{"Hello", " world"}));
        EXPECT_EQ(words("I've 12 apples!!\n\n", k), (V{"I", "'ve", " ", "1", "2", " apples", "!!\n\n"}));
        EXPECT_EQ(words("   foo", k), (V{"  ", " foo"}));
        EXPECT_EQ(words("x  \n\n  y", k), (V{"x", "  \n\n", " ", " y"}));
        EXPECT_EQ(words("x\r\n\ty", k), (V{"x", "\r\n", "\ty"}));
        EXPECT_EQ(words("a(b)c 3.14", k), (V{"a", "(b", ")c", " ", "3", ".", "1", "4"}));
        EXPECT_EQ(words(" ...hi", k), (V{" ...", "hi"}));
        EXPECT_EQ(words("Don'T", k), (V{"Don", "'T"}));
        EXPECT_EQ(words("你好，世界", k), (V{"你好", "，世界"}));
    }
    EXPECT_EQ(words("e\xCC\x81t\xC3\xA9", PreTokenizer::qwen2), (V{"e", "\xCC\x81t\xC3\xA9"}));
    EXPECT_EQ(words("e\xCC\x81t\xC3\xA9", PreTokenizer::qwen35), (V{"e\xCC\x81t\xC3\xA9"}));
}

TEST(Tokenizer, streaming_never_splits_a_character) {
    auto tok = load("qwen3-vocab.gguf");
    const std::string text = "héllo 你好 🎉 done";
    const auto ids = tok->encode(text, false);
    TextStream ts(*tok, false);
    std::string out;
    for (int32_t id : ids) {
        const std::string part = ts.push(id);
        EXPECT_EQ(unicode::sanitize_utf8(part), part);  // each piece is valid UTF-8 on its own
        out += part;
    }
    out += ts.flush();
    EXPECT_EQ(out, text);
}

TEST(Tokenizer, control_tokens_parse_only_when_asked) {
    auto tok = load("qwen3-vocab.gguf");
    const int32_t im_start = tok->find("<|im_start|>");
    ASSERT_GE(im_start, 0);
    EXPECT_EQ(tok->encode("<|im_start|>", true), (std::vector<int32_t>{im_start}));
    EXPECT_GT(tok->encode("<|im_start|>", false).size(), 1u);
    const int32_t think = tok->find("<think>");
    ASSERT_GE(think, 0);
    EXPECT_EQ(tok->encode("<think>", false), (std::vector<int32_t>{think}));  // user-defined: always
    EXPECT_TRUE(tok->is_eog(tok->find("<|im_end|>")));
    EXPECT_EQ(tok->token_bytes(im_start, false), "");
    EXPECT_EQ(tok->token_bytes(im_start, true), "<|im_start|>");
}

TEST(Tokenizer, invalid_utf8_becomes_replacement_characters) {
    auto tok = load("qwen3-vocab.gguf");
    EXPECT_EQ(tok->decode(tok->encode("a\xFF"
                                      "b",
                                      false),
                          false),
              "a\xEF\xBF\xBD"
              "b");
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// Cases written by js_reference.mjs (run through tests/tokenizer/js_compare.sh, ctest label js).
TEST(TokenizerJs, matches_javascript_tokenizer_on_random_strings) {
    const char* path = std::getenv("BIGMOE_JS_CASES");
    if (!path) GTEST_SKIP() << "run through tests/tokenizer/js_compare.sh";
    auto tok = load("qwen3-vocab.gguf");
    std::ifstream f(path);
    ASSERT_TRUE(f.good()) << path;
    std::string line;
    int n = 0, mismatches = 0;
    while (std::getline(f, line)) {
        if (line.empty()) continue;
        const auto j = nlohmann::json::parse(line);
        const std::string text = j["text"];
        const auto want = j["ids"].get<std::vector<int32_t>>();
        const auto got = tok->encode(text, true);
        if (got != want && ++mismatches <= 10) ADD_FAILURE() << "text: " << nlohmann::json(text).dump();
        EXPECT_EQ(tok->decode(got, true), unicode::nfc(text)) << nlohmann::json(text).dump();
        ++n;
    }
    std::printf("%d strings compared (Unicode %s tables), %d mismatches\n", n, unicode::unicode_version(), mismatches);
    EXPECT_GE(n, 10000);
    EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace bigmoe

#include "tokenizer/chat.h"

namespace bigmoe {
namespace {

// Every conversation of the Qwen3 template fixture renders byte-identically.
TEST(Chat, qwen3_fixture_conversations) {
    auto j = testing::read_json(testing::fixtures_dir() + "/ref/chat-template-qwen3.json");
    auto vocab = gguf::GgufFile::open(testing::fixtures_dir() + "/models/qwen3-vocab.gguf");
    ASSERT_TRUE(vocab.ok());
    const ChatStyle style = chat_style_for_template((*vocab)->get_string_or("tokenizer.chat_template", ""));
    EXPECT_EQ(style, ChatStyle::qwen3);
    int n = 0;
    for (const auto& c : j["cases"]) {
        std::vector<ChatMessage> msgs;
        for (const auto& m : c["messages"])
            msgs.push_back({m["role"], m["content"], m.value("reasoning_content", std::string())});
        auto r = render_chat(style, msgs, c.value("add_generation_prompt", false), c.value("enable_thinking", true));
        ASSERT_TRUE(r.ok());
        EXPECT_EQ(*r, c["rendered"].get<std::string>()) << c["name"];
        ++n;
    }
    EXPECT_EQ(n, 4);
}

}  // namespace
}  // namespace bigmoe
