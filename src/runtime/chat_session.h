// A conversation on a Generator: messages rendered with the model's chat template, and only
// what each turn adds to the rendered text fed to the model (the context keeps the rest).
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/result.h"
#include "runtime/generator.h"
#include "tokenizer/chat.h"

namespace bigmoe {

class ChatSession {
  public:
    // source: Jinja template text, "" for the tokenizer's own (ChatML when the file has none),
    // or "chatml".
    static Result<ChatSession> create(Generator& gen, std::string source, const ChatOptions& opt);

    // Whether the file had no template and ChatML stands in for it.
    bool builtin_chatml() const { return builtin_; }
    void add_system(const std::string& text);
    // Adds the user's message, feeds what it adds to the conversation, generates the reply and
    // closes the turn as the template would (the closing text is fed when the context has room).
    Result<GenerateResult> send(const std::string& user, const GenerateParams& p, const PieceFn& on_piece);
    // The turn is refused (resource_exhausted, nothing changed) when its new text does not fit in
    // the context: drop_oldest_turn() or clear() make room.
    const nlohmann::ordered_json& messages() const { return messages_; }
    // The conversation as rendered and fed so far.
    const std::string& rendered() const { return fed_; }
    // Removes the first user message and what follows it up to the next user message (system
    // messages stay); the context starts over and the next send feeds the whole conversation.
    // False when there is no turn to drop.
    bool drop_oldest_turn();
    // Forgets every turn (system messages stay) and the context.
    void clear();
    // Called with each text a turn feeds (the rendered template's new part, then the text that
    // closes the turn), before feeding it.
    void set_on_feed(std::function<void(const std::string&)> fn) { on_feed_ = std::move(fn); }

  private:
    ChatSession(Generator& gen, ChatFormatter fmt, const ChatOptions& opt, bool builtin)
        : gen_(&gen), fmt_(std::move(fmt)), opt_(opt), builtin_(builtin) {}
    Generator* gen_;
    ChatFormatter fmt_;
    ChatOptions opt_;
    bool builtin_;
    nlohmann::ordered_json messages_ = nlohmann::ordered_json::array();
    std::string fed_;  // the conversation as rendered so far (what the context holds)
    std::function<void(const std::string&)> on_feed_;
};

}  // namespace bigmoe
