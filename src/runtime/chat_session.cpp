#include "runtime/chat_session.h"

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
    const std::string delta = text->rfind(fed_, 0) == 0 ? text->substr(fed_.size()) : *text;
    BM_TRY(gen_->feed(tok.encode(delta, true)));
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
        Context& ctx = gen_->context();
        // room for the tail and the next turn's first tokens
        constexpr int64_t k_room = 8;
        if (!tail.empty() && ctx.n_past(gen_->seq()) + k_room < ctx.params().n_ctx)
            BM_TRY(gen_->feed(tok.encode(tail, true)));
    }
    fed_ = *closed;
    return res;
}

}  // namespace bigmoe
