#include "tokenizer/chat.h"

namespace bigmoe {

namespace {

std::string lstrip_nl(std::string s) {
    size_t i = 0;
    while (i < s.size() && s[i] == '\n') ++i;
    return s.substr(i);
}
std::string rstrip_nl(std::string s) {
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
}
std::string strip_nl(const std::string& s) {
    return rstrip_nl(lstrip_nl(s));
}

bool is_tool_response(const ChatMessage& m) {
    return m.content.rfind("<tool_response>", 0) == 0 && m.content.size() >= 16 &&
           m.content.compare(m.content.size() - 16, 16, "</tool_response>") == 0;
}

Result<std::string> render_qwen3(const std::vector<ChatMessage>& msgs, bool gen, bool thinking) {
    std::string out;
    size_t start = 0;
    if (!msgs.empty() && msgs[0].role == "system") {
        out += "<|im_start|>system\n" + msgs[0].content + "<|im_end|>\n";
        start = 1;
    }
    // the last user message that is not a tool-response wrapper
    long last_query = long(msgs.size()) - 1;
    for (long i = long(msgs.size()) - 1; i >= 0; --i) {
        last_query = i;
        if (msgs[size_t(i)].role == "user" && !is_tool_response(msgs[size_t(i)])) break;
    }
    for (size_t i = start; i < msgs.size(); ++i) {
        const ChatMessage& m = msgs[i];
        if (m.role == "user" || m.role == "system") {
            out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
        } else if (m.role == "assistant") {
            std::string content = m.content, reasoning = m.reasoning_content;
            if (reasoning.empty()) {
                const size_t end = content.find("</think>");
                if (end != std::string::npos) {
                    const std::string before = rstrip_nl(content.substr(0, end));
                    const size_t open = before.rfind("<think>");
                    reasoning = lstrip_nl(open == std::string::npos ? before : before.substr(open + 7));
                    content = lstrip_nl(content.substr(content.rfind("</think>") + 8));
                }
            }
            const bool last = i + 1 == msgs.size();
            if (long(i) > last_query && (last || !reasoning.empty()))
                out += "<|im_start|>assistant\n<think>\n" + strip_nl(reasoning) + "\n</think>\n\n" + lstrip_nl(content);
            else
                out += "<|im_start|>assistant\n" + content;
            out += "<|im_end|>\n";
        } else if (m.role == "tool") {
            const bool first = i == start || msgs[i - 1].role != "tool";
            const bool last = i + 1 == msgs.size() || msgs[i + 1].role != "tool";
            if (first) out += "<|im_start|>user";
            out += "\n<tool_response>\n" + m.content + "\n</tool_response>";
            if (last) out += "<|im_end|>\n";
        } else {
            return make_error("chat: unknown role '" + m.role + "' (system, user, assistant, tool)");
        }
    }
    if (gen) {
        out += "<|im_start|>assistant\n";
        if (!thinking) out += "<think>\n\n</think>\n\n";
    }
    return out;
}

}  // namespace

ChatStyle chat_style_for_template(const std::string& jinja) {
    if (jinja.find("<|im_start|>") != std::string::npos && jinja.find("</think>") != std::string::npos)
        return ChatStyle::qwen3;
    return ChatStyle::chatml;
}

Result<std::string> render_chat(ChatStyle style, const std::vector<ChatMessage>& msgs, bool gen, bool thinking) {
    if (style == ChatStyle::qwen3) return render_qwen3(msgs, gen, thinking);
    std::string out;
    for (const auto& m : msgs) out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n";
    if (gen) out += "<|im_start|>assistant\n";
    return out;
}

}  // namespace bigmoe
