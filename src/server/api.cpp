#include "server/api.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "tokenizer/unicode.h"

namespace bigmoe::server {

Json error_body(const ApiError& e) {
    Json err = {{"message", e.message}, {"type", e.type}};
    err["code"] = e.code.empty() ? Json(nullptr) : Json(e.code);
    return {{"error", err}};
}

bool valid_utf8(const std::string& s) {
    return unicode::is_valid_utf8(s);
}

bool json_nests_deeper_than(const std::string& text, int max_depth) {
    int depth = 0;
    bool in_string = false, escaped = false;
    for (const char c : text) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth) return true;
        } else if (c == ']' || c == '}') {
            --depth;
        }
    }
    return false;
}

namespace {
ApiError bad(std::string msg, std::string param = "") {
    return {400, std::move(msg), "invalid_request_error", std::move(param)};
}

// A number field within [lo, hi]; absent: the default stays.
std::optional<ApiError> number(const Json& j, const char* key, double lo, double hi, double* dst) {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number()) return bad(std::string("'") + key + "' must be a number", key);
    const double v = j[key].get<double>();
    if (!std::isfinite(v) || v < lo || v > hi)
        return bad(std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                       ", got " + j[key].dump(),
                   key);
    *dst = v;
    return std::nullopt;
}

std::optional<ApiError> integer(const Json& j, const char* key, int64_t lo, int64_t hi, int64_t* dst) {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_number_integer()) return bad(std::string("'") + key + "' must be an integer", key);
    const int64_t v = j[key].get<int64_t>();
    if (v < lo || v > hi)
        return bad(std::string("'") + key + "' must be between " + std::to_string(lo) + " and " + std::to_string(hi) +
                       ", got " + std::to_string(v),
                   key);
    *dst = v;
    return std::nullopt;
}

// logit_bias: OpenAI's object of token ids (as strings) to amounts in [-100, 100], or llama.cpp's
// array of [id, amount] pairs, where an amount of false bans the token. Ids only: llama.cpp's
// token texts are refused rather than guessed at. The ids are checked against the vocabulary
// where it is known (the server).
std::optional<ApiError> logit_bias(const Json& j, std::vector<std::pair<int32_t, float>>* out) {
    constexpr const char* key = "logit_bias";
    constexpr size_t k_max_entries = 4096;
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const Json& b = j[key];
    if (!b.is_object() && !b.is_array())
        return bad("'logit_bias' must be an object of token ids to numbers, or an array of [id, number] pairs", key);
    if (b.size() > k_max_entries) return bad("'logit_bias' holds at most 4096 tokens", key);
    auto entry = [&](int64_t id, const Json& v) -> std::optional<ApiError> {
        if (id < 0) return bad("'logit_bias' keys must be token ids (integers from 0)", key);
        float amount = 0;
        if (v.is_boolean() && !v.get<bool>()) {
            amount = -INFINITY;
        } else if (v.is_number() && std::isfinite(v.get<double>()) && std::fabs(v.get<double>()) <= 100) {
            amount = float(v.get<double>());
        } else {
            return bad("'logit_bias' amounts must be numbers from -100 to 100 (or false: never), got " + v.dump(), key);
        }
        out->push_back({int32_t(id), amount});
        return std::nullopt;
    };
    auto id_of = [](const Json& t) -> int64_t {  // -1 unless an integer in [0, 2^31)
        if (t.is_number_unsigned()) return t.get<uint64_t>() <= uint64_t(INT32_MAX) ? int64_t(t.get<uint64_t>()) : -1;
        return -1;
    };
    if (b.is_object()) {
        for (auto it = b.begin(); it != b.end(); ++it) {
            const std::string& k = it.key();
            const bool digits = !k.empty() && k.size() <= 10 &&
                                std::all_of(k.begin(), k.end(), [](char c) { return c >= '0' && c <= '9'; });
            const int64_t id = digits && std::stoll(k) <= INT32_MAX ? std::stoll(k) : -1;
            if (auto e = entry(id, it.value())) return e;
        }
    } else {
        for (const Json& pair : b) {
            if (!pair.is_array() || pair.size() != 2)
                return bad("'logit_bias' as an array holds [token id, number] pairs", key);
            if (auto e = entry(id_of(pair[0]), pair[1])) return e;
        }
    }
    return std::nullopt;
}

// A schema compiled for constrained generation, or the error that says which part is not supported.
// `strict`: keywords the constraint cannot enforce are refused (OpenAI's strict mode); else they
// are skipped, the rest enforced, and the skipped ones logged.
std::optional<ApiError> compile_schema(const Json& schema, const std::string& param, bool strict,
                                       std::shared_ptr<const JsonSchema>* out) {
    auto s = JsonSchema::compile(nlohmann::json(schema), !strict);
    if (!s) return bad("'" + param + "': " + s.error().message, param);
    if (!(*s)->ignored().empty()) {
        std::string list;
        for (const std::string& k : (*s)->ignored()) list += (list.empty() ? "" : ", ") + k;
        std::fprintf(stderr, "bigmoe: %s: not enforced (the schema is not strict): %s\n", param.c_str(), list.c_str());
    }
    *out = *s;
    return std::nullopt;
}

// A tool's function object when it is one with a name, else null.
const Json* named_function(const Json& tool) {
    if (!tool.is_object() || !tool.contains("function") || !tool["function"].is_object()) return nullptr;
    const Json& f = tool["function"];
    return f.contains("name") && f["name"].is_string() ? &f : nullptr;
}

// The forced function's arguments follow its parameters' schema: what the constraint can enforce
// of it, or all of it when the function is "strict" (else the request is refused, as OpenAI
// refuses such strict schemas); a schema that does not compile at all leaves any JSON object.
std::optional<ApiError> tool_schema(CompletionRequest* r) {
    for (const Json& t : r->tools) {
        const Json* fn = named_function(t);
        if (!fn) continue;
        const Json& f = *fn;
        if (f["name"] != r->forced_tool || !f.contains("parameters")) continue;
        const bool strict = f.value("strict", false);
        auto e = compile_schema(f["parameters"], "tools", strict, &r->tool_schema);
        if (e && strict) {
            e->message = "the function '" + r->forced_tool + "' is strict, but its parameters " + e->message;
            return e;
        }
        return std::nullopt;
    }
    return std::nullopt;
}

// A copy of schema `s` to be placed at JSON pointer `at` of another document: its local $refs
// ("#", "#/...") made to point where their targets then lie.
Json moved_schema(const Json& s, const std::string& at) {
    if (s.is_array()) {
        Json out = Json::array();
        for (const Json& v : s) out.push_back(moved_schema(v, at));
        return out;
    }
    if (!s.is_object()) return s;
    Json out = Json::object();
    for (const auto& [k, v] : s.items())
        out[k] = k == "$ref" && v.is_string() && v.get<std::string>().rfind('#', 0) == 0
                     ? Json("#" + at + v.get<std::string>().substr(1))
                     : moved_schema(v, at);
    return out;
}

// A call of one of the tools, {"name": ..., "arguments": ...}, whose arguments are those its
// parameters describe: an anyOf of one object a tool, told apart by the name (the schema's
// grammar reads it). `refuse_strict`: a strict function whose parameters do not compile alone is
// an error (as with one tool). *out stays null when the union does not compile.
std::optional<ApiError> tools_schema(const Json& tools, bool refuse_strict, std::shared_ptr<const JsonSchema>* out) {
    Json members = Json::array();
    for (const Json& t : tools) {
        const Json* fn = named_function(t);
        if (!fn) continue;
        const Json& f = *fn;
        const std::string name = f["name"];
        const bool has = f.contains("parameters") && f["parameters"].is_object();
        if (has && refuse_strict && f.value("strict", false)) {
            std::shared_ptr<const JsonSchema> alone;
            if (auto e = compile_schema(f["parameters"], "tools", true, &alone)) {
                e->message = "the function '" + name + "' is strict, but its parameters " + e->message;
                return e;
            }
        }
        const std::string at = "/anyOf/" + std::to_string(members.size()) + "/properties/arguments";
        members.push_back({{"type", "object"},
                           {"properties",
                            {{"name", {{"const", name}}},
                             {"arguments", has ? moved_schema(f["parameters"], at) : Json{{"type", "object"}}}}},
                           {"required", {"name", "arguments"}},
                           {"additionalProperties", false}});
    }
    if (members.empty() || compile_schema({{"anyOf", members}}, "tools", false, out)) *out = nullptr;
    return std::nullopt;
}

// tool_choice "required" with several tools: the call names one of them and writes its
// arguments (tools_schema); if the union does not compile, the name is still one of the tools'
// and the arguments an object.
std::optional<ApiError> several_tools_schema(CompletionRequest* r, const std::vector<std::string>& names) {
    if (auto e = tools_schema(r->tools, true, &r->tool_schema)) return e;
    if (r->tool_schema) return std::nullopt;
    std::fprintf(stderr, "bigmoe: tools: the functions' parameters are not enforced (they do not compile)\n");
    const Json call = {{"type", "object"},
                       {"properties", {{"name", {{"enum", names}}}, {"arguments", {{"type", "object"}}}}},
                       {"required", {"name", "arguments"}},
                       {"additionalProperties", false}};
    return compile_schema(call, "tool_choice", false, &r->tool_schema);
}

// tool_choice: "auto" (the default), "none" (the tools are left out of the prompt), "required"
// (one call of some tool), or {"type": "function", "function": {"name": ...}} (one call of it).
std::optional<ApiError> tool_choice(const Json& j, CompletionRequest* r) {
    constexpr const char* key = "tool_choice";
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const Json& c = j[key];
    std::vector<std::string> names;
    if (r->tools.is_array())
        for (const Json& t : r->tools)
            if (const Json* f = named_function(t)) names.push_back((*f)["name"]);
    if (c.is_string() && c == "auto") return std::nullopt;
    if (c.is_string() && c == "none") {
        r->tools = nullptr;
        return std::nullopt;
    }
    if (c.is_string() && c == "required") {
        if (names.empty()) return bad("'tool_choice' \"required\" needs 'tools' with named functions", key);
        r->tool_required = true;
        if (names.size() == 1) {
            r->forced_tool = names[0];
            return tool_schema(r);
        }
        return several_tools_schema(r, names);
    }
    if (c.is_object() && c.value("type", "") == "function" && c.contains("function") && c["function"].is_object() &&
        c["function"].contains("name") && c["function"]["name"].is_string()) {
        const std::string name = c["function"]["name"];
        if (std::find(names.begin(), names.end(), name) == names.end())
            return bad("'tool_choice' names the function '" + name + "', which is not among 'tools'", key);
        r->tool_required = true;
        r->forced_tool = name;
        return tool_schema(r);
    }
    return bad(
        "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": "
        "{\"name\": ...}}",
        key);
}

// A message's content: a string, or an array of {"type": "text", "text": ...} parts.
std::optional<ApiError> content_text(const Json& c, size_t index, std::string* out) {
    const std::string where = "messages[" + std::to_string(index) + "].content";
    if (c.is_null()) return std::nullopt;
    if (c.is_string()) {
        *out = c.get<std::string>();
    } else if (c.is_array()) {
        for (const auto& part : c) {
            if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
                !part["text"].is_string())
                return bad(where + ": only text parts ({\"type\": \"text\", \"text\": ...}) are supported", "messages");
            *out += part["text"].get<std::string>();
        }
    } else {
        return bad(where + " must be a string or an array of text parts", "messages");
    }
    if (!valid_utf8(*out)) return bad(where + " is not valid UTF-8", "messages");
    return std::nullopt;
}
}  // namespace

std::optional<ApiError> parse_completion(const std::string& body, bool chat, bool llama_completion,
                                         uint64_t default_seed, CompletionRequest* out) {
    if (!valid_utf8(body)) return bad("the request body is not valid UTF-8");
    if (json_nests_deeper_than(body, k_json_max_depth))
        return bad("the request body nests arrays and objects deeper than " + std::to_string(k_json_max_depth) +
                   " levels");
    Json j;
    try {
        j = Json::parse(body);
    } catch (const std::exception& e) {
        return bad(std::string("the request body is not valid JSON: ") + e.what());
    }
    if (!j.is_object()) return bad("the request body must be a JSON object");
    CompletionRequest& r = *out;
    r.chat = chat;
    if (chat) {
        if (!j.contains("messages")) return bad("'messages' is required", "messages");
        if (!j["messages"].is_array()) return bad("'messages' must be an array", "messages");
        if (j["messages"].empty()) return bad("'messages' must not be empty", "messages");
        size_t i = 0;
        for (const auto& m : j["messages"]) {
            if (!m.is_object()) return bad("messages[" + std::to_string(i) + "] must be an object", "messages");
            if (!m.contains("role") || !m["role"].is_string())
                return bad("messages[" + std::to_string(i) + "].role must be a string", "messages");
            const std::string role = m["role"];
            if (role != "system" && role != "user" && role != "assistant" && role != "tool" && role != "developer")
                return bad("messages[" + std::to_string(i) + "].role '" + role +
                               "' is not one of system, developer, user, assistant, tool",
                           "messages");
            std::string text;
            if (auto e = content_text(m.contains("content") ? m["content"] : Json(nullptr), i, &text)) return e;
            if (!m.contains("content") && !(role == "assistant" && m.contains("tool_calls")))
                return bad("messages[" + std::to_string(i) + "].content is required", "messages");
            Json msg = {{"role", role == "developer" ? "system" : role}, {"content", text}};
            for (const char* k : {"tool_calls", "tool_call_id", "name", "reasoning_content"})
                if (m.contains(k)) msg[k] = m[k];
            r.messages.push_back(msg);
            ++i;
        }
        if (j.contains("tools") && !j["tools"].is_null()) {
            if (!j["tools"].is_array()) return bad("'tools' must be an array", "tools");
            r.tools = j["tools"];
        }
        if (auto e = tool_choice(j, &r)) return e;
        // "auto": calls the model opens follow the tools' schemas; a strict function whose
        // parameters cannot be enforced is refused here too (as OpenAI checks strict schemas
        // whatever tool_choice says)
        if (!r.tool_required && r.tools.is_array() && !r.tools.empty())
            if (auto e = tools_schema(r.tools, true, &r.tool_call_schema)) return e;
        if (j.contains("chat_template_kwargs")) {
            const auto& k = j["chat_template_kwargs"];
            if (!k.is_object()) return bad("'chat_template_kwargs' must be an object", "chat_template_kwargs");
            if (k.contains("enable_thinking")) {
                if (!k["enable_thinking"].is_boolean())
                    return bad("'chat_template_kwargs.enable_thinking' must be a boolean", "chat_template_kwargs");
                r.enable_thinking = k["enable_thinking"];
            }
        }
    } else {
        if (!j.contains("prompt")) return bad("'prompt' is required", "prompt");
        const Json& p = j["prompt"];
        // token ids as OpenAI's completions take them: [1, 2, 3] or one such array in an array
        const Json& ids = p.is_array() && p.size() == 1 && p[0].is_array() ? p[0] : p;
        const bool all_ids = ids.is_array() && !ids.empty() && std::all_of(ids.begin(), ids.end(), [](const Json& t) {
                                 return t.is_number_integer() && t.get<int64_t>() >= 0;
                             });
        if (p.is_string()) {
            r.prompt = p;
        } else if (p.is_array() && p.size() == 1 && p[0].is_string()) {
            r.prompt = p[0];
        } else if (all_ids) {
            for (const Json& t : ids) r.prompt_ids.push_back(t.get<int64_t>());
        } else {
            return bad("'prompt' must be a string, an array of one string, or an array of token ids", "prompt");
        }
        if (r.prompt.empty() && r.prompt_ids.empty()) return bad("'prompt' must not be empty", "prompt");
    }
    int64_t n = 1;
    if (auto e = integer(j, "n", 1, k_max_choices, &n)) return e;
    r.n = int(n);
    // log-probabilities: chat asks with "logprobs": true and "top_logprobs": n; completions with
    // "logprobs": n; llama.cpp's /completion with "n_probs": n
    constexpr int64_t k_max_top = 20;
    int64_t top = -1;
    if (chat) {
        bool want = false;
        if (j.contains("logprobs") && !j["logprobs"].is_null()) {
            if (!j["logprobs"].is_boolean()) return bad("'logprobs' must be a boolean", "logprobs");
            want = j["logprobs"];
        }
        int64_t n_top = 0;
        if (auto e = integer(j, "top_logprobs", 0, k_max_top, &n_top)) return e;
        if (!want && j.contains("top_logprobs") && !j["top_logprobs"].is_null())
            return bad("'top_logprobs' needs 'logprobs': true", "top_logprobs");
        if (want) top = n_top;
    } else {
        if (auto e = integer(j, llama_completion ? "n_probs" : "logprobs", 0, k_max_top, &top)) return e;
        if (llama_completion && top == 0) top = -1;  // n_probs 0: none, as llama-server
    }
    r.logprobs = int(top);
    double temp = 0.8, top_p = 0.95, min_p = 0.05, presence = 0, frequency = 0, repeat = 1.0;
    int64_t top_k = 40, seed = -1, max_tokens = -1;
    if (auto e = number(j, "temperature", 0, 100, &temp)) return e;
    if (auto e = number(j, "top_p", 0, 1, &top_p)) return e;
    if (top_p == 0) return bad("'top_p' must be above 0", "top_p");
    if (auto e = number(j, "min_p", 0, 1, &min_p)) return e;
    if (auto e = number(j, "presence_penalty", -2, 2, &presence)) return e;
    if (auto e = number(j, "frequency_penalty", -2, 2, &frequency)) return e;
    if (auto e = number(j, "repeat_penalty", 0.01, 100, &repeat)) return e;
    if (auto e = integer(j, "top_k", -1, 1 << 30, &top_k)) return e;
    if (auto e = integer(j, "seed", INT64_MIN, INT64_MAX, &seed)) return e;
    constexpr int64_t k_max_tokens = int64_t(1) << 31;
    for (const char* k : {"max_tokens", "max_completion_tokens", llama_completion ? "n_predict" : ""})
        if (*k)
            if (auto e = integer(j, k, llama_completion ? -1 : 1, k_max_tokens, &max_tokens)) return e;
    r.max_tokens = max_tokens;
    r.sampler.temp = float(temp);
    r.sampler.top_p = float(top_p);
    r.sampler.min_p = float(min_p);
    r.sampler.top_k = int32_t(top_k);
    r.sampler.presence_penalty = float(presence);
    r.sampler.frequency_penalty = float(frequency);
    r.sampler.repeat_penalty = float(repeat);
    r.sampler.seed = seed < 0 ? default_seed : uint64_t(seed);
    if (auto e = logit_bias(j, &r.sampler.logit_bias)) return e;
    // response_format: OpenAI's {"type": "text" | "json_object" | "json_schema"}; a schema is
    // refused rather than answered with JSON that ignores it
    if (j.contains("response_format") && !j["response_format"].is_null()) {
        const Json& f = j["response_format"];
        const std::string type = f.is_object() && f.contains("type") && f["type"].is_string() ? f["type"] : "";
        if (type == "json_object") {
            // llama.cpp's extension: {"type": "json_object", "schema": {...}}
            if (f.contains("schema") && !f["schema"].is_null()) {
                if (auto e = compile_schema(f["schema"], "response_format", false, &r.schema)) return e;
            } else {
                r.json_object = true;
            }
        } else if (type == "json_schema") {
            const Json& js = f.contains("json_schema") ? f["json_schema"] : Json();
            if (!js.is_object() || !js.contains("schema"))
                return bad("'response_format' json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}",
                           "response_format");
            const bool strict = js.contains("strict") && js["strict"].is_boolean() && js["strict"].get<bool>();
            if (auto e = compile_schema(js["schema"], "response_format", strict, &r.schema)) return e;
        } else if (type != "text") {
            return bad(
                "'response_format' must be {\"type\": \"text\"}, {\"type\": \"json_object\"} or "
                "{\"type\": \"json_schema\", \"json_schema\": {...}}",
                "response_format");
        }
    }
    // llama.cpp's top-level "json_schema" ({}: any object)
    if (j.contains("json_schema") && !j["json_schema"].is_null()) {
        if (r.schema || r.json_object)
            return bad("give either 'json_schema' or 'response_format', not both", "json_schema");
        if (auto e = compile_schema(j["json_schema"], "json_schema", false, &r.schema)) return e;
    }
    if (j.contains("grammar") && !j["grammar"].is_null() &&
        !(j["grammar"].is_string() && j["grammar"].get<std::string>().empty())) {
        if (!j["grammar"].is_string()) return bad("'grammar' must be a string (a GBNF grammar)", "grammar");
        if (r.schema || r.json_object)
            return bad("give either 'grammar' or a JSON schema / 'response_format', not both", "grammar");
        const std::string& text = j["grammar"].get_ref<const std::string&>();
        if (text.size() > 1 << 20) return bad("'grammar' is longer than 1 MiB", "grammar");
        auto g = Grammar::parse(text);
        if (!g) return bad(g.error().message, "grammar");
        r.grammar = *g;
    }
    if (j.contains("stop") && !j["stop"].is_null()) {
        const Json& s = j["stop"];
        if (s.is_string()) {
            r.stop.push_back(s);
        } else if (s.is_array() && s.size() <= 16) {
            for (const auto& x : s) {
                if (!x.is_string() || x.get<std::string>().empty())
                    return bad("'stop' must be a string or an array of non-empty strings", "stop");
                r.stop.push_back(x);
            }
        } else {
            return bad("'stop' must be a string or an array of at most 16 strings", "stop");
        }
    }
    if (j.contains("stream") && !j["stream"].is_null()) {
        if (!j["stream"].is_boolean()) return bad("'stream' must be a boolean", "stream");
        r.stream = j["stream"];
    }
    if (j.contains("stream_options") && j["stream_options"].is_object())
        r.include_usage = j["stream_options"].value("include_usage", false);
    if (j.contains("ignore_eos") && j["ignore_eos"].is_boolean()) r.ignore_eos = j["ignore_eos"];
    return std::nullopt;
}

std::string finish_reason(StopReason r) {
    return stop_reason_name(r);
}

namespace {
Json token_json(const Tokenizer& tok, int32_t id, float logprob) {
    const std::string bytes = tok.token_bytes(id, true);
    Json b = Json::array();
    for (unsigned char c : bytes) b.push_back(int(c));
    return {{"token", unicode::sanitize_utf8(bytes)}, {"logprob", logprob}, {"bytes", b}};
}
}  // namespace

Json chat_logprobs_json(const std::vector<TokenLogprob>& lps, const Tokenizer& tok) {
    Json content = Json::array();
    for (const TokenLogprob& lp : lps) {
        Json t = token_json(tok, lp.token, lp.logprob);
        t["top_logprobs"] = Json::array();
        for (const auto& [id, l] : lp.top) t["top_logprobs"].push_back(token_json(tok, id, l));
        content.push_back(std::move(t));
    }
    return {{"content", std::move(content)}};
}

Json completion_logprobs_json(const std::vector<TokenLogprob>& lps, const Tokenizer& tok, int64_t* text_offset) {
    Json tokens = Json::array(), values = Json::array(), tops = Json::array(), offsets = Json::array();
    for (const TokenLogprob& lp : lps) {
        const std::string bytes = tok.token_bytes(lp.token, true);
        tokens.push_back(unicode::sanitize_utf8(bytes));
        values.push_back(lp.logprob);
        Json top = Json::object();
        for (const auto& [id, l] : lp.top) top[unicode::sanitize_utf8(tok.token_bytes(id, true))] = l;
        tops.push_back(std::move(top));
        offsets.push_back(*text_offset);
        *text_offset += int64_t(bytes.size());
    }
    return {{"tokens", tokens}, {"token_logprobs", values}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

Json usage_json(const Usage& u) {
    return {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens},
            {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}}};
}

Json timings_json(const Usage& u) {
    auto per_s = [](int64_t n, double ms) { return ms > 0 ? 1000.0 * double(n) / ms : 0.0; };
    return {{"cache_n", u.cached_tokens},
            {"prompt_n", u.prompt_tokens - u.cached_tokens},
            {"prompt_ms", u.prompt_ms},
            {"prompt_per_second", per_s(u.prompt_tokens - u.cached_tokens, u.prompt_ms)},
            {"predicted_n", u.completion_tokens},
            {"predicted_ms", u.predicted_ms},
            {"predicted_per_second", per_s(u.completion_tokens, u.predicted_ms)}};
}

}  // namespace bigmoe::server
