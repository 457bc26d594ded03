// The tool-call parser gives the same text and calls however the model's output is cut into
// pieces (at every byte boundary, and byte by byte), and passes malformed calls through as text.
#include <gtest/gtest.h>

#include "server/tool_calls.h"

namespace bigmoe::server {
namespace {

struct Parsed {
    std::string text;
    std::vector<ToolCall> calls;
    bool malformed = false;
};

Parsed parse(const std::vector<std::string>& pieces) {
    ToolCallParser p;
    Parsed r;
    for (const auto& piece : pieces) {
        ToolOutput o = p.push(piece);
        r.text += o.text;
        r.calls.insert(r.calls.end(), o.calls.begin(), o.calls.end());
    }
    ToolOutput o = p.finish();
    r.text += o.text;
    r.calls.insert(r.calls.end(), o.calls.begin(), o.calls.end());
    r.malformed = p.malformed();
    return r;
}

void expect_same_at_every_cut(const std::string& s) {
    const Parsed whole = parse({s});
    std::vector<std::string> bytes;
    for (char c : s) bytes.push_back(std::string(1, c));
    const Parsed by_byte = parse(bytes);
    EXPECT_EQ(by_byte.text, whole.text);
    ASSERT_EQ(by_byte.calls.size(), whole.calls.size());
    for (size_t cut = 0; cut <= s.size(); ++cut) {
        const Parsed two = parse({s.substr(0, cut), s.substr(cut)});
        EXPECT_EQ(two.text, whole.text) << "cut at " << cut;
        ASSERT_EQ(two.calls.size(), whole.calls.size()) << "cut at " << cut;
        for (size_t i = 0; i < two.calls.size(); ++i) {
            EXPECT_EQ(two.calls[i].name, whole.calls[i].name);
            EXPECT_EQ(two.calls[i].arguments, whole.calls[i].arguments);
        }
        EXPECT_EQ(two.malformed, whole.malformed);
    }
}

TEST(ToolCalls, calls_and_text_at_every_byte_boundary) {
    const std::string out =
        "Let me check. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"days\": 3}}\n"
        "</tool_call>\n<tool_call>\n{\"name\": \"now\", \"arguments\": {}}\n</tool_call> done <tool";
    const Parsed p = parse({out});
    ASSERT_EQ(p.calls.size(), 2u);
    EXPECT_EQ(p.calls[0].name, "get_weather");
    EXPECT_EQ(p.calls[0].arguments, "{\"city\":\"Paris\",\"days\":3}");
    EXPECT_EQ(p.calls[1].name, "now");
    EXPECT_EQ(p.text, "Let me check. \n done <tool");  // a tag that never completes is text
    EXPECT_FALSE(p.malformed);
    expect_same_at_every_cut(out);
}

TEST(ToolCalls, malformed_calls_come_back_as_text) {
    const std::string bad_json = "a <tool_call>{\"name\": \"f\", \"arguments\": {oops}</tool_call> b";
    const Parsed p = parse({bad_json});
    EXPECT_TRUE(p.calls.empty());
    EXPECT_TRUE(p.malformed);
    EXPECT_EQ(p.text, bad_json);
    expect_same_at_every_cut(bad_json);
    const std::string unclosed = "x <tool_call>{\"name\": \"f\"";
    const Parsed u = parse({unclosed});
    EXPECT_TRUE(u.malformed);
    EXPECT_EQ(u.text, unclosed);
    expect_same_at_every_cut(unclosed);
    const Parsed no_name = parse({"<tool_call>{\"arguments\": {}}</tool_call>"});
    EXPECT_TRUE(no_name.calls.empty());
    EXPECT_TRUE(no_name.malformed);
    // arguments nested past the bound (serialising them would recurse that deep) are malformed
    std::string deep = "<tool_call>{\"name\": \"f\", \"arguments\": ";
    for (int i = 0; i < 100000; ++i) deep += "{\"a\": ";
    deep += "1" + std::string(100000, '}') + "}</tool_call>";
    const Parsed d = parse({deep});
    EXPECT_TRUE(d.calls.empty());
    EXPECT_TRUE(d.malformed);
    EXPECT_EQ(d.text, deep);
    std::string shallow = "<tool_call>{\"name\": \"f\", \"arguments\": ";
    for (int i = 0; i < 100; ++i) shallow += "{\"a\": ";
    shallow += "1" + std::string(100, '}') + "}</tool_call>";
    ASSERT_EQ(parse({shallow}).calls.size(), 1u);
}

}  // namespace
}  // namespace bigmoe::server
