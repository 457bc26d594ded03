// A small Jinja interpreter for chat templates: statements (if/for/set/macro, loop controls),
// expressions with filters, tests and the string/list/dict methods real chat templates use, and
// the whitespace rules chat templates are rendered with (trim_blocks, lstrip_blocks). Output
// conventions follow the JavaScript Jinja used by Hugging Face tokenizers (@huggingface/jinja).
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/result.h"

namespace bigmoe::jinja {

struct Node;

class Template {
  public:
    // Parses the template; a syntax error is returned as a value.
    static Result<std::shared_ptr<Template>> parse(const std::string& source);
    // Renders with the variables of `context` (messages, tools, add_generation_prompt, ...).
    Result<std::string> render(const nlohmann::ordered_json& context) const;
    ~Template();

  private:
    Template() = default;
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace bigmoe::jinja
