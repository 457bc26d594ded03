// Tokenizer against the reference tokenizations (fixtures), the spec's pre-tokenizer examples,
// and decode(encode(s)) == NFC(s).
#include <gtest/gtest.h>

#include <fstream>
#include <map>

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

// One U+FFFD per maximal subpart of an ill-formed sequence (Unicode 3.9, as Python's
// bytes.decode(errors="replace") and browsers do).
TEST(Unicode, sanitize_replaces_each_maximal_subpart_once) {
    const std::string r = "\xEF\xBF\xBD";
    EXPECT_EQ(unicode::sanitize_utf8(" \xE2\x80'"), " " + r + "'");        // truncated 3-byte sequence
    EXPECT_EQ(unicode::sanitize_utf8("\xF0\x9F\x98"), r);                  // truncated 4-byte, at the end
    EXPECT_EQ(unicode::sanitize_utf8("\x80\x80"), r + r);                  // lone continuation bytes
    EXPECT_EQ(unicode::sanitize_utf8("\xC0\xAF"), r + r);                  // C0 never starts a sequence
    EXPECT_EQ(unicode::sanitize_utf8("\xE0\x80\xAF"), r + r + r);          // overlong: 80 is not after E0
    EXPECT_EQ(unicode::sanitize_utf8("\xED\xA0\x80"), r + r + r);          // a surrogate
    EXPECT_EQ(unicode::sanitize_utf8("\xF4\x90\x80\x80"), r + r + r + r);  // above U+10FFFF
    EXPECT_EQ(unicode::sanitize_utf8("\xF1\x80\x80\xE1\x80\xC2"), r + r + r);
    EXPECT_EQ(unicode::sanitize_utf8("caf\xC3\xA9 \xF0\x9F\x98\x80"), "caf\xC3\xA9 \xF0\x9F\x98\x80");
    // well-formed exactly when sanitizing changes nothing
    for (const std::string t : {" \xE2\x80'", "\xF0\x9F\x98", "\x80", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80",
                                "caf\xC3\xA9 \xF0\x9F\x98\x80", "", "plain"})
        EXPECT_EQ(unicode::is_valid_utf8(t), unicode::sanitize_utf8(t) == t) << t;
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

// Cases written by js_reference.mjs (run through tests/tokenizer/js_cases.sh, ctest label js).
TEST(TokenizerJs, matches_javascript_tokenizer_on_random_strings) {
    const char* path = std::getenv("BIGMOE_JS_CASES");
    if (!path) GTEST_SKIP() << "run through tests/tokenizer/js_cases.sh";
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
        EXPECT_EQ(tok->decode(got, true), tok->normalize(text, true)) << nlohmann::json(text).dump();
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

// Every conversation of the Qwen3 template fixture renders byte-identically with the template
// embedded in the GGUF, run by bigmoe's Jinja interpreter.
TEST(Chat, qwen3_fixture_conversations) {
    auto j = testing::read_json(testing::fixtures_dir() + "/ref/chat-template-qwen3.json");
    auto vocab = gguf::GgufFile::open(testing::fixtures_dir() + "/models/qwen3-vocab.gguf");
    ASSERT_TRUE(vocab.ok());
    auto f = ChatFormatter::create((*vocab)->get_string_or("tokenizer.chat_template", ""), "", "<|im_end|>");
    ASSERT_TRUE(f.ok()) << f.error().message;
    EXPECT_FALSE(f->is_chatml());
    int n = 0;
    for (const auto& c : j["cases"]) {
        ChatOptions opt;
        opt.add_generation_prompt = c.value("add_generation_prompt", false);
        opt.enable_thinking = c.value("enable_thinking", true);
        auto r = f->render(nlohmann::ordered_json::parse(c["messages"].dump()), opt);
        ASSERT_TRUE(r.ok()) << r.error().message;
        EXPECT_EQ(*r, c["rendered"].get<std::string>()) << c["name"];
        ++n;
    }
    EXPECT_EQ(n, 4);
}

TEST(Chat, template_errors_are_values) {
    EXPECT_FALSE(ChatFormatter::create("{% if %}", "", "").ok());
    auto f = ChatFormatter::create("{{ raise_exception('no system role') }}", "", "");
    ASSERT_TRUE(f.ok());
    auto r = f->render(nlohmann::ordered_json::array(), {});
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("no system role"), std::string::npos);
    auto chatml = ChatFormatter::create("chatml", "", "");
    ASSERT_TRUE(chatml.ok());
    auto m = nlohmann::ordered_json::parse(R"([{"role":"user","content":"hi"}])");
    EXPECT_EQ(*chatml->render(m, {}), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
}

// A template that recurses, nests, loops or writes without end is an error, not a crash or a
// hang; the real Qwen3 template stays far inside those bounds on a long conversation with tools.
TEST(Chat, runaway_templates_are_errors) {
    const std::string deep = std::string(100000, '(') + "1" + std::string(100000, ')');
    const std::string blocks = [] {
        std::string t;
        for (int i = 0; i < 5000; ++i) t += "{% if true %}";
        for (int i = 0; i < 5000; ++i) t += "{% endif %}";
        return t;
    }();
    const std::pair<std::string, std::string> cases[] = {
        {"{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recurses deeper"},
        {"{{ " + deep + " }}", "nests deeper"},
        {"{{ " + std::string(100000, '-') + "1 }}", "nests deeper"},
        {"{{ " + std::string(50000, '[') + std::string(50000, ']') + " }}", "nests deeper"},
        {blocks, "nests deeper"},
        {"{% for i in range(100000000000) %}x{% endfor %}", "range of more than"},
        {"{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}{% "
         "endfor %}",
         "steps"},
        {"{% set ns = namespace(s='xxxxxxxxxxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor "
         "%}{{ ns.s }}",
         "MiB"},
        {"{{ 'x' * 100000000000 }}", "MiB"},
        {"{% for i in range(300000) %}{{ 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' "
         "* 10 }}{% "
         "endfor %}",
         "MiB"},
        {"{{ 9223372036854775807 + 1 }}", "overflow"},
        {"{% set ns = namespace(x=[], y=[]) %}{% for i in range(300000) %}{% set ns.x = [ns.x] %}{% set ns.y = "
         "[ns.y] %}{% endfor %}{{ ns.x == ns.y }}",
         "nested deeper"},
    };
    // a list nested 300000 deep in a loop renders, and is taken apart without recursing that deep
    auto nest = ChatFormatter::create(
        "{% set ns = namespace(x=[]) %}{% for i in range(300000) %}{% set ns.x = [ns.x] %}{% endfor %}done", "", "");
    ASSERT_TRUE(nest.ok());
    auto nested = nest->render(nlohmann::ordered_json::array(), {});
    ASSERT_TRUE(nested.ok()) << nested.error().message;
    EXPECT_EQ(*nested, "done");
    for (const auto& [src, want] : cases) {
        auto f = ChatFormatter::create(src, "", "");
        std::string got;
        if (!f.ok()) {
            got = f.error().message;
        } else {
            auto r = f->render(nlohmann::ordered_json::array(), {});
            ASSERT_FALSE(r.ok()) << src.substr(0, 80);
            got = r.error().message;
        }
        EXPECT_NE(got.find(want), std::string::npos) << src.substr(0, 80) << ": " << got;
    }

    auto vocab = gguf::GgufFile::open(testing::fixtures_dir() + "/models/qwen3-vocab.gguf");
    ASSERT_TRUE(vocab.ok());
    auto f = ChatFormatter::create((*vocab)->get_string_or("tokenizer.chat_template", ""), "", "<|im_end|>");
    ASSERT_TRUE(f.ok()) << f.error().message;
    nlohmann::ordered_json msgs = nlohmann::ordered_json::array();
    msgs.push_back({{"role", "system"}, {"content", "You are terse."}});
    for (int i = 0; i < 3000; ++i) {
        msgs.push_back({{"role", "user"}, {"content", "question " + std::to_string(i)}});
        msgs.push_back({{"role", "assistant"}, {"content", "<think>\nhm\n</think>\n\nanswer " + std::to_string(i)}});
    }
    ChatOptions opt;
    opt.add_generation_prompt = true;
    for (int i = 0; i < 64; ++i)
        opt.tools.push_back({{"type", "function"},
                             {"function",
                              {{"name", "tool" + std::to_string(i)},
                               {"parameters", {{"type", "object"}, {"properties", {{"x", {{"type", "string"}}}}}}}}}});
    auto r = f->render(msgs, opt);
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_NE(r->find("answer 2999"), std::string::npos);
}

}  // namespace
}  // namespace bigmoe

#include "tokenizer/jinja/jinja.h"

namespace bigmoe {
namespace {

// Cases written by jinja_reference.mjs (run through tests/tokenizer/js_cases.sh, label js).
TEST(JinjaJs, matches_huggingface_jinja_on_real_templates) {
    const char* path = std::getenv("BIGMOE_JINJA_CASES");
    if (!path) GTEST_SKIP() << "run through tests/tokenizer/js_cases.sh";
    std::ifstream f(path);
    ASSERT_TRUE(f.good()) << path;
    std::string line;
    std::map<std::string, int> per_template;
    int n = 0, mismatches = 0;
    std::map<std::string, std::shared_ptr<jinja::Template>> cache;
    while (std::getline(f, line)) {
        if (line.empty()) continue;
        const auto j = nlohmann::ordered_json::parse(line);
        const std::string src = j["source"];
        if (!cache.count(src)) {
            auto t = jinja::Template::parse(src);
            ASSERT_TRUE(t.ok()) << j["template"] << ": " << t.error().message;
            cache[src] = *t;
        }
        const auto r = cache[src]->render(j["context"]);
        const bool want_error = !j["error"].is_null();
        bool ok = want_error ? !r.ok() : (r.ok() && *r == j["rendered"].get<std::string>());
        if (!ok && ++mismatches <= 5)
            ADD_FAILURE() << j["template"] << " context " << j["context"].dump() << "\nwant: "
                          << (want_error ? "error " + j["error"].get<std::string>() : j["rendered"].get<std::string>())
                          << "\ngot: " << (r.ok() ? *r : "error " + r.error().message);
        ++per_template[j["template"].get<std::string>()];
        ++n;
    }
    for (auto& [name, count] : per_template) EXPECT_GE(count, 50) << name;
    EXPECT_GE(per_template.size(), 3u);
    std::printf("%d conversations over %zu templates, %d mismatches\n", n, per_template.size(), mismatches);
    EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace bigmoe
