// Chat prompt rendering with the Jinja chat template embedded in a GGUF (tokenizer.chat_template),
// or the built-in ChatML template (`--chat-template chatml`) when a file has none or its template
// cannot be rendered.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/result.h"
#include "tokenizer/jinja/jinja.h"

namespace bigmoe {

struct ChatOptions {
    bool add_generation_prompt = true;
    bool enable_thinking = true;
    nlohmann::ordered_json tools;  // null: no tools
};

// Whether a rendered prompt ends by opening a reasoning block ("<think>", then only whitespace):
// the model's answer then starts inside its reasoning.
bool opens_reasoning(const std::string& rendered);

class ChatFormatter {
  public:
    // `source` is Jinja text, or "chatml" for the built-in template.
    static Result<ChatFormatter> create(const std::string& source, std::string bos_token, std::string eos_token);
    // messages: [{"role": ..., "content": ..., optional "reasoning_content", "tool_calls"}, ...]
    Result<std::string> render(const nlohmann::ordered_json& messages, const ChatOptions& opt) const;
    bool is_chatml() const { return chatml_; }

  private:
    std::shared_ptr<jinja::Template> tmpl_;
    std::string bos_, eos_;
    bool chatml_ = false;
};

}  // namespace bigmoe
