// The OpenAI-compatible request and response shapes, apart from HTTP: parsing and validating a
// request body into generation settings (every problem an ApiError with the HTTP status and
// OpenAI's error type), and the JSON of responses and stream chunks.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "runtime/generator.h"
#include "runtime/grammar.h"
#include "runtime/json_schema.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe::server {

using Json = nlohmann::ordered_json;

struct ApiError {
    int status = 400;
    std::string message = {};
    std::string type = "invalid_request_error";  // OpenAI's error.type
    std::string code = {};                       // error.code (may be empty)
};

// {"error": {"message", "type", "code"}}
Json error_body(const ApiError& e);

constexpr int64_t k_max_choices = 16;  // "n"

// What a completion request asks for, after validation.
struct CompletionRequest {
    bool chat = true;
    Json messages = Json::array();  // chat: [{role, content}] with content as a string
    Json tools;                     // chat: the tools array, or null ("tool_choice": "none" drops it)
    // tool_choice: "required", or a function by name: the answer is one call (of that function)
    bool tool_required = false;
    std::string forced_tool;  // the function "tool_choice" names, or the only tool when required
    // The forced function's parameters compiled, when they compile (else any JSON object).
    std::shared_ptr<const JsonSchema> tool_schema;
    // tool_choice "auto" with tools: a call's JSON, {"name": ..., "arguments": ...}, where the
    // model opens one (null when the tools' schemas do not compile)
    std::shared_ptr<const JsonSchema> tool_call_schema;
    bool enable_thinking = true;  // chat_template_kwargs.enable_thinking
    std::string prompt;           // completions: the raw prompt text
    std::vector<int64_t>
        prompt_ids;  // completions: token ids given instead of text (checked against the vocabulary later)
    SamplerParams sampler;
    int64_t max_tokens = -1;  // -1: until end of generation or a full context
    int n = 1;                // choices, each its own sequence (seed + i when sampling)
    std::vector<std::string> stop;
    bool stream = false;
    bool include_usage = false;  // stream_options.include_usage
    bool ignore_eos = false;     // llama.cpp's extension
    int logprobs = -1;           // >= 0: log-probabilities with that many alternatives per token
    bool json_object = false;    // response_format {"type": "json_object"}: the answer is a JSON object
    // response_format {"type": "json_schema"} (llama.cpp: "json_schema"): an instance of this
    std::shared_ptr<const JsonSchema> schema;
    std::shared_ptr<const Grammar> grammar;  // llama.cpp's "grammar" (GBNF): text the grammar derives
};

// `chat`: /v1/chat/completions; else /v1/completions (and llama.cpp's /completion, where the
// length is n_predict). default_seed is used when the request gives none.
std::optional<ApiError> parse_completion(const std::string& body, bool chat, bool llama_completion,
                                         uint64_t default_seed, CompletionRequest* out);

// Valid UTF-8 (the JSON parser takes what nlohmann accepts; this checks strings in messages).
bool valid_utf8(const std::string& s);

// JSON text parsed, or a discarded value when it is not JSON or nests arrays and objects deeper
// than k_json_max_depth: rendering and serialising a value recurse once a level, so a request of
// a hundred thousand brackets would exhaust the stack (the parser alone does not).
constexpr int k_json_max_depth = 256;
// Whether text nests arrays and objects (outside strings) deeper than `max_depth`.
bool json_nests_deeper_than(const std::string& text, int max_depth);
template <class J = Json>
J parse_json_bounded(const std::string& text) {
    if (json_nests_deeper_than(text, k_json_max_depth)) return J(J::value_t::discarded);
    return J::parse(text, nullptr, /*allow_exceptions=*/false);
}

// OpenAI's finish_reason for a stop reason.
std::string finish_reason(StopReason r);

// The `logprobs` object of a chat choice: {"content": [{token, logprob, bytes, top_logprobs}]}.
Json chat_logprobs_json(const std::vector<TokenLogprob>& lps, const Tokenizer& tok);
// The legacy completions shape: {tokens, token_logprobs, top_logprobs, text_offset}; offsets
// count bytes from *text_offset, which moves past these tokens (a stream's next chunk goes on).
Json completion_logprobs_json(const std::vector<TokenLogprob>& lps, const Tokenizer& tok, int64_t* text_offset);

struct Usage {
    int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0;
    double prompt_ms = 0, predicted_ms = 0;
};
Json usage_json(const Usage& u);
Json timings_json(const Usage& u);  // llama.cpp's timings object

}  // namespace bigmoe::server
