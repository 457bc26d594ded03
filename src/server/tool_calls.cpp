#include "server/tool_calls.h"

#include <nlohmann/json.hpp>

#include "server/api.h"

namespace bigmoe::server {

namespace {
constexpr const char* k_open = "<tool_call>";
constexpr const char* k_close = "</tool_call>";

// Length of the longest tail of s that is a proper prefix of tag.
size_t partial_tag(const std::string& s, const std::string& tag) {
    for (size_t n = std::min(s.size(), tag.size() - 1); n > 0; --n)
        if (s.compare(s.size() - n, n, tag, 0, n) == 0) return n;
    return 0;
}
}  // namespace

ToolOutput ToolCallParser::push(const std::string& piece) {
    ToolOutput out;
    buf_ += piece;
    for (;;) {
        if (!inside_) {
            const size_t open = buf_.find(k_open);
            if (open == std::string::npos) {
                const size_t keep = partial_tag(buf_, k_open);
                out.text += buf_.substr(0, buf_.size() - keep);
                buf_.erase(0, buf_.size() - keep);
                return out;
            }
            out.text += buf_.substr(0, open);
            buf_.erase(0, open + std::string(k_open).size());
            inside_ = true;
        }
        const size_t close = buf_.find(k_close);
        if (close == std::string::npos) return out;  // the call goes on in a later piece
        const std::string body = buf_.substr(0, close);
        buf_.erase(0, close + std::string(k_close).size());
        inside_ = false;
        // a call nested past the bound is malformed: dumping its arguments would recurse that deep
        const auto j = parse_json_bounded<nlohmann::json>(body);
        if (j.is_object() && j.contains("name") && j["name"].is_string() &&
            (!j.contains("arguments") || j["arguments"].is_object())) {
            out.calls.push_back({j["name"], j.contains("arguments") ? j["arguments"].dump() : "{}"});
        } else {
            malformed_ = true;
            out.text += std::string(k_open) + body + k_close;
        }
    }
}

ToolOutput ToolCallParser::finish() {
    ToolOutput out;
    if (inside_) {
        malformed_ = true;
        out.text = std::string(k_open) + buf_;
    } else {
        out.text = buf_;
    }
    buf_.clear();
    inside_ = false;
    return out;
}

}  // namespace bigmoe::server
