// Qwen3's tool calls in generated text: <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
// The parser takes the content as it streams, in pieces cut anywhere, passes plain text through
// (holding back what may be the start of a tag), and turns each complete call into a ToolCall. A
// call whose JSON does not parse, or that is never closed, comes back as plain text: the client
// sees what the model wrote, never an error in the middle of a stream.
#pragma once

#include <string>
#include <vector>

namespace bigmoe::server {

struct ToolCall {
    std::string name;
    std::string arguments;  // JSON text of the arguments object
};

struct ToolOutput {
    std::string text;             // plain text released by this piece
    std::vector<ToolCall> calls;  // calls completed by this piece
};

class ToolCallParser {
  public:
    ToolOutput push(const std::string& piece);
    // At the end of generation: what is held back, as text (an unclosed call included).
    ToolOutput finish();
    // Whether any call was malformed (its text was passed through).
    bool malformed() const { return malformed_; }

  private:
    std::string buf_;
    bool inside_ = false, malformed_ = false;
};

}  // namespace bigmoe::server
