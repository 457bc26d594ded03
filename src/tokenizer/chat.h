// Chat prompt rendering. Until the Jinja interpreter lands, bigmoe renders the ChatML family by
// rule: `qwen3` follows the rules of the Qwen3 template (spec/tokenizer.md §8.2) for plain chat
// (system / user / assistant / tool messages, reasoning in assistant history, enable_thinking),
// `chatml` is the generic fallback (--chat-template chatml). Tool definitions and tool calls
// need the embedded template and are refused with a clear error.
#pragma once

#include <string>
#include <vector>

#include "core/result.h"

namespace bigmoe {

struct ChatMessage {
    std::string role;
    std::string content;
    std::string reasoning_content;  // optional
};

enum class ChatStyle { qwen3, chatml };

// Picks the style for a GGUF chat template text (empty: chatml).
ChatStyle chat_style_for_template(const std::string& jinja);

Result<std::string> render_chat(ChatStyle style, const std::vector<ChatMessage>& messages, bool add_generation_prompt,
                                bool enable_thinking);

}  // namespace bigmoe
