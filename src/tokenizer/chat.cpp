#include "tokenizer/chat.h"

namespace bigmoe {

namespace {
const char* k_chatml =
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
}

Result<ChatFormatter> ChatFormatter::create(const std::string& source, std::string bos, std::string eos) {
    ChatFormatter f;
    f.chatml_ = source.empty() || source == "chatml";
    auto t = jinja::Template::parse(f.chatml_ ? k_chatml : source);
    if (!t) return make_error(t.error().message + " (use --chat-template chatml to fall back to ChatML)");
    f.tmpl_ = *t;
    f.bos_ = std::move(bos);
    f.eos_ = std::move(eos);
    return f;
}

Result<std::string> ChatFormatter::render(const nlohmann::ordered_json& messages, const ChatOptions& opt) const {
    nlohmann::ordered_json ctx;
    ctx["messages"] = messages;
    ctx["add_generation_prompt"] = opt.add_generation_prompt;
    ctx["enable_thinking"] = opt.enable_thinking;
    ctx["bos_token"] = bos_;
    ctx["eos_token"] = eos_;
    if (!opt.tools.is_null()) ctx["tools"] = opt.tools;
    auto r = tmpl_->render(ctx);
    if (!r) return make_error(r.error().message + " (use --chat-template chatml to fall back to ChatML)");
    return r;
}

bool opens_reasoning(const std::string& rendered) {
    static const std::string open = "<think>";
    const size_t end = rendered.find_last_not_of(" \t\r\n");
    return end != std::string::npos && end + 1 >= open.size() &&
           rendered.compare(end + 1 - open.size(), open.size(), open) == 0;
}

}  // namespace bigmoe
