#include "runtime/chat_session.h"

#include <algorithm>

namespace bigmoe {

Result<ChatSession> ChatSession::create(Generator& gen, std::string source, const ChatOptions& opt) {
    const Tokenizer& tok = gen.tokenizer();
    const bool builtin = source.empty() && tok.chat_template().empty();
    if (source.empty()) source = tok.chat_template();
    const int32_t bos = tok.bos(), eos = tok.eos();
    auto fmt = ChatFormatter::create(source, bos >= 0 ? tok.token_text(bos) : "", eos >= 0 ? tok.token_text(eos) : "");
    if (!fmt) return fmt.error();
    return ChatSession(gen, std::move(*fmt), opt, builtin);
}

void ChatSession::add_system(const std::string& text) {
    messages_.push_back({{"role", "system"}, {"content", text}});
}

Result<GenerateResult> ChatSession::send(const std::string& user, const GenerateParams& p, const PieceFn& on_piece) {
    const Tokenizer& tok = gen_->tokenizer();
    messages_.push_back({{"role", "user"}, {"content", user}});
    opt_.add_generation_prompt = true;
    auto text = fmt_.render(messages_, opt_);
    if (!text) return text.error();
    // Feed only what this turn adds to the rendered conversation (llama.cpp's delta rule).
    const bool continues = text->rfind(fed_, 0) == 0;
    const std::string delta_text = continues ? text->substr(fed_.size()) : *text;
    const std::vector<int32_t> delta = tok.encode(delta_text, true);
    Context& ctx = gen_->context();
    const int64_t start = continues ? ctx.n_past(gen_->seq()) : 0;
    if (start + int64_t(delta.size()) + 1 > ctx.params().n_ctx) {
        messages_.erase(messages_.end() - 1);
        return make_error("the conversation needs " + std::to_string(start + int64_t(delta.size()) + 1) +
                              " positions, the context has " + std::to_string(ctx.params().n_ctx),
                          ErrorKind::resource_exhausted);
    }
    if (!continues) gen_->reset();
    if (on_feed_) on_feed_(delta_text);
    // a constrained answer of a model that reasons first starts after the reasoning it opens
    if (p.constraint && opens_reasoning(*text)) p.constraint->start_after(tok.find("</think>"));
    BM_TRY(gen_->feed(delta));
    fed_ = *text;
    auto res = gen_->generate(p, on_piece);
    if (!res) return res.error();
    std::string reply;
    for (int32_t id : res->tokens)
        if (!tok.is_eog(id)) reply += tok.token_bytes(id, false);
    messages_.push_back({{"role", "assistant"}, {"content", reply}});
    // Close the turn as the template would: feed what follows the generated reply.
    opt_.add_generation_prompt = false;
    auto closed = fmt_.render(messages_, opt_);
    if (!closed) return closed.error();
    std::string generated;
    for (int32_t id : res->tokens) generated += tok.token_bytes(id, true);
    if (closed->rfind(fed_ + generated, 0) == 0) {
        const std::string tail = closed->substr(fed_.size() + generated.size());
        // room for the tail and the next turn's first tokens
        constexpr int64_t k_room = 8;
        if (!tail.empty() && ctx.n_past(gen_->seq()) + k_room < ctx.params().n_ctx) {
            if (on_feed_) on_feed_(tail);
            BM_TRY(gen_->feed(tok.encode(tail, true)));
        }
    }
    fed_ = *closed;
    return res;
}

bool ChatSession::drop_oldest_turn() {
    auto is_user = [](const nlohmann::ordered_json& m) { return m.value("role", "") == "user"; };
    auto first = std::find_if(messages_.begin(), messages_.end(), is_user);
    if (first == messages_.end()) return false;
    auto next = std::find_if(first + 1, messages_.end(), is_user);
    messages_.erase(first, next);
    fed_.clear();
    gen_->reset();
    return true;
}

void ChatSession::clear() {
    nlohmann::ordered_json kept = nlohmann::ordered_json::array();
    for (const auto& m : messages_)
        if (m.value("role", "") == "system") kept.push_back(m);
    messages_ = kept;
    fed_.clear();
    gen_->reset();
}

}  // namespace bigmoe
