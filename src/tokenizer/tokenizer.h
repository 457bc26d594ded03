// Byte-level BPE tokenizer driven by GGUF metadata (tokenizer.ggml.*): special-token splitting,
// NFC normalisation, the qwen2/qwen35 pre-tokenizers, BPE merges, and detokenization that
// streams whole UTF-8 characters only.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/result.h"
#include "gguf/gguf_file.h"
#include "tokenizer/pretokenizer.h"

namespace bigmoe {

enum class TokenType : int32_t {
    undefined = 0,
    normal = 1,
    unknown = 2,
    control = 3,
    user_defined = 4,
    unused = 5,
    byte = 6
};

class Tokenizer {
  public:
    static Result<std::unique_ptr<Tokenizer>> from_gguf(const gguf::GgufFile& f);

    // parse_special: CONTROL tokens written in the text become single tokens (USER_DEFINED ones
    // such as <think> always do). add_special: prepend BOS / append EOS when the file says so.
    std::vector<int32_t> encode(const std::string& text, bool parse_special, bool add_special = false) const;
    // The text as the tokenizer sees it: special-token fragments verbatim, the rest NFC (so
    // decode(encode(s)) == normalize(s); it equals NFC(s) unless a combining mark follows a
    // special token).
    std::string normalize(const std::string& text, bool parse_special) const;
    // Bytes of one token (control tokens only with `special`).
    std::string token_bytes(int32_t id, bool special) const;
    std::string decode(const std::vector<int32_t>& ids, bool special) const;

    int32_t n_vocab() const { return int32_t(tokens_.size()); }
    const std::string& token_text(int32_t id) const { return tokens_[size_t(id)]; }
    TokenType token_type(int32_t id) const { return types_[size_t(id)]; }
    int32_t find(const std::string& text) const;  // -1 if absent
    bool is_eog(int32_t id) const;
    int32_t eos() const { return eos_; }
    int32_t bos() const { return bos_; }
    const std::string& chat_template() const { return chat_template_; }
    PreTokenizer pre() const { return pre_; }

  private:
    void encode_text(const std::string& text, std::vector<int32_t>& out) const;
    // Splits text into (fragment, special id or -1).
    std::vector<std::pair<std::string, int32_t>> split_special(const std::string& text, bool parse_special) const;
    void bpe(const std::string& word, std::vector<int32_t>& out) const;

    std::vector<std::string> tokens_;
    std::vector<TokenType> types_;
    std::unordered_map<std::string, int32_t> index_;
    std::unordered_map<std::string, int32_t> merge_rank_;  // "left right" -> rank
    std::vector<int32_t> specials_;                        // split candidates, longest first
    std::vector<int32_t> eog_;
    PreTokenizer pre_ = PreTokenizer::qwen2;
    int32_t eos_ = -1, bos_ = -1;
    bool add_bos_ = false, add_eos_ = false;
    std::string chat_template_;
    mutable std::mutex cache_mu_;
    mutable std::unordered_map<std::string, std::vector<int32_t>> cache_;
};

// Streams decoded text: feed token ids, get back only complete UTF-8 characters; invalid
// sequences come out as U+FFFD.
class TextStream {
  public:
    TextStream(const Tokenizer& t, bool special) : tok_(t), special_(special) {}
    std::string push(int32_t id);
    std::string flush();

  private:
    const Tokenizer& tok_;
    bool special_;
    std::string pending_;
};

}  // namespace bigmoe
