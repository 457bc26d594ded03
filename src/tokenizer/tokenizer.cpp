#include "tokenizer/tokenizer.h"
#include "gguf/names.h"

#include <algorithm>
#include <climits>

#include "tokenizer/unicode.h"

namespace bigmoe {

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const gguf::GgufFile& f) {
    const std::string model = f.get_string_or(gguf::key::tokenizer_ggml_model, "");
    if (model != "gpt2")
        return make_error(f.path() + ": tokenizer.ggml.model is '" + model +
                          "'; bigmoe supports byte-level BPE ('gpt2')");
    const gguf::Value* toks = f.find(gguf::key::tokenizer_ggml_tokens);
    if (!toks || toks->type != gguf::ValueType::ARRAY || toks->elem_type != gguf::ValueType::STRING ||
        toks->arr_s.empty())
        return make_error(f.path() + ": tokenizer.ggml.tokens is missing or not a string array");
    if (toks->arr_s.size() > size_t(INT32_MAX)) return make_error(f.path() + ": vocabulary too large");
    std::unique_ptr<Tokenizer> t(new Tokenizer());
    t->tokens_ = toks->arr_s;
    t->types_.assign(t->tokens_.size(), TokenType::normal);
    if (const gguf::Value* ty = f.find(gguf::key::tokenizer_ggml_token_type)) {
        if (ty->type != gguf::ValueType::ARRAY || ty->arr_i.size() != t->tokens_.size())
            return make_error(f.path() + ": tokenizer.ggml.token_type must be an integer array of " +
                              std::to_string(t->tokens_.size()) + " entries");
        for (size_t i = 0; i < ty->arr_i.size(); ++i) {
            const int64_t v = ty->arr_i[i];
            t->types_[i] = v >= 0 && v <= 6 ? TokenType(v) : TokenType::undefined;
        }
    }
    t->index_.reserve(t->tokens_.size());
    for (size_t i = 0; i < t->tokens_.size(); ++i) t->index_.emplace(t->tokens_[i], int32_t(i));
    if (const gguf::Value* m = f.find(gguf::key::tokenizer_ggml_merges)) {
        if (m->type != gguf::ValueType::ARRAY || (m->elem_type != gguf::ValueType::STRING && m->array_size() > 0))
            return make_error(f.path() + ": tokenizer.ggml.merges must be a string array");
        t->merge_rank_.reserve(m->arr_s.size());
        for (size_t r = 0; r < m->arr_s.size(); ++r) {
            const std::string& s = m->arr_s[r];
            const size_t sp = s.find(' ', 1);
            if (sp == std::string::npos)
                return make_error(f.path() + ": merge #" + std::to_string(r) + " '" + s + "' has no separating space");
            t->merge_rank_.emplace(s, int32_t(r));
        }
    }
    const std::string pre = f.get_string_or(gguf::key::tokenizer_ggml_pre, "qwen2");
    t->pre_ = pre == "qwen35" ? PreTokenizer::qwen35 : PreTokenizer::qwen2;
    auto id_key = [&](const char* key) -> int32_t {
        const int64_t v = f.get_int_or(key, -1);
        return v >= 0 && v < int64_t(t->tokens_.size()) ? int32_t(v) : -1;
    };
    t->eos_ = id_key(gguf::key::tokenizer_ggml_eos_token_id);
    t->bos_ = id_key(gguf::key::tokenizer_ggml_bos_token_id);
    auto flag = [&](const char* key) {
        auto r = f.get_bool(key);
        return r.ok() && *r;
    };
    t->add_bos_ = flag(gguf::key::tokenizer_ggml_add_bos_token);
    t->add_eos_ = flag(gguf::key::tokenizer_ggml_add_eos_token);
    t->chat_template_ = f.get_string_or(gguf::key::tokenizer_chat_template, "");
    for (size_t i = 0; i < t->tokens_.size(); ++i) {
        const TokenType ty = t->types_[i];
        if (ty == TokenType::control || ty == TokenType::user_defined || ty == TokenType::unknown)
            t->specials_.push_back(int32_t(i));
    }
    std::stable_sort(t->specials_.begin(), t->specials_.end(),
                     [&](int32_t a, int32_t b) { return t->tokens_[size_t(a)].size() > t->tokens_[size_t(b)].size(); });
    // End of generation: eos, eot, and the ChatML / FIM end markers (spec/tokenizer.md §6).
    for (int32_t id :
         {t->eos_, id_key(gguf::key::tokenizer_ggml_eot_token_id), id_key(gguf::key::tokenizer_ggml_eom_token_id)})
        if (id >= 0) t->eog_.push_back(id);
    for (const char* s :
         {"<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<|eot_id|>"}) {
        const int32_t id = t->find(s);
        if (id >= 0) t->eog_.push_back(id);
    }
    return t;
}

int32_t Tokenizer::find(const std::string& text) const {
    auto it = index_.find(text);
    return it == index_.end() ? -1 : it->second;
}

bool Tokenizer::is_eog(int32_t id) const {
    return std::find(eog_.begin(), eog_.end(), id) != eog_.end();
}

std::vector<std::pair<std::string, int32_t>> Tokenizer::split_special(const std::string& text,
                                                                      bool parse_special) const {
    std::vector<std::pair<std::string, int32_t>> frags = {{text, -1}};
    for (int32_t sid : specials_) {
        const TokenType ty = types_[size_t(sid)];
        if (!parse_special && ty != TokenType::user_defined) continue;
        const std::string& st = tokens_[size_t(sid)];
        if (st.empty()) continue;
        std::vector<std::pair<std::string, int32_t>> next;
        for (auto& [s, id] : frags) {
            if (id >= 0 || s.find(st) == std::string::npos) {
                next.emplace_back(std::move(s), id);
                continue;
            }
            size_t pos = 0;
            for (size_t hit; (hit = s.find(st, pos)) != std::string::npos; pos = hit + st.size()) {
                if (hit > pos) next.emplace_back(s.substr(pos, hit - pos), -1);
                next.emplace_back(std::string(), sid);
            }
            if (pos < s.size()) next.emplace_back(s.substr(pos), -1);
        }
        frags = std::move(next);
    }
    return frags;
}

std::string Tokenizer::normalize(const std::string& text, bool parse_special) const {
    std::string out;
    for (auto& [s, id] : split_special(text, parse_special))
        out += id >= 0 ? tokens_[size_t(id)] : unicode::nfc(unicode::sanitize_utf8(s));
    return out;
}

std::vector<int32_t> Tokenizer::encode(const std::string& text, bool parse_special, bool add_special) const {
    auto frags = split_special(text, parse_special);
    std::vector<int32_t> out;
    if (add_special && add_bos_ && bos_ >= 0) out.push_back(bos_);
    for (auto& [s, id] : frags) {
        if (id >= 0)
            out.push_back(id);
        else
            encode_text(s, out);
    }
    if (add_special && add_eos_ && eos_ >= 0) out.push_back(eos_);
    return out;
}

void Tokenizer::encode_text(const std::string& text, std::vector<int32_t>& out) const {
    // The original Qwen tokenizer normalises to NFC (its tokenizer.json says so).
    const std::string norm = unicode::nfc(unicode::sanitize_utf8(text));
    const std::vector<uint32_t> cps = unicode::decode_utf8(norm);
    for (const auto& [b, e] : pretokenize(cps, pre_)) {
        std::string word;
        for (size_t i = b; i < e; ++i) {
            std::string ch;
            unicode::append_utf8(ch, cps[i]);
            for (unsigned char byte : ch) unicode::append_utf8(word, unicode::byte_to_cp(byte));
        }
        bpe(word, out);
    }
}

void Tokenizer::bpe(const std::string& word, std::vector<int32_t>& out) const {
    {
        std::lock_guard<std::mutex> lock(cache_mu_);
        auto it = cache_.find(word);
        if (it != cache_.end()) {
            out.insert(out.end(), it->second.begin(), it->second.end());
            return;
        }
    }
    // symbols: code points of the byte-level word
    std::vector<std::string> sym;
    for (uint32_t cp : unicode::decode_utf8(word)) {
        std::string s;
        unicode::append_utf8(s, cp);
        sym.push_back(std::move(s));
    }
    // Repeatedly merge the adjacent pair of lowest rank (leftmost on ties).
    std::string key;
    while (sym.size() > 1) {
        int32_t best = INT32_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < sym.size(); ++i) {
            key.assign(sym[i]).append(1, ' ').append(sym[i + 1]);
            auto it = merge_rank_.find(key);
            if (it != merge_rank_.end() && it->second < best) {
                best = it->second;
                at = i;
            }
        }
        if (best == INT32_MAX) break;
        sym[at] += sym[at + 1];
        sym.erase(sym.begin() + long(at) + 1);
    }
    std::vector<int32_t> ids;
    for (const auto& s : sym) {
        const int32_t id = find(s);
        if (id >= 0) {
            ids.push_back(id);
            continue;
        }
        // Not in the vocabulary (inconsistent vocab/merges): fall back to single byte tokens.
        for (uint32_t cp : unicode::decode_utf8(s)) {
            std::string one;
            unicode::append_utf8(one, cp);
            const int32_t bid = find(one);
            if (bid >= 0) ids.push_back(bid);
        }
    }
    out.insert(out.end(), ids.begin(), ids.end());
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() > 200000) cache_.clear();
    cache_.emplace(word, std::move(ids));
}

std::string Tokenizer::token_bytes(int32_t id, bool special) const {
    if (id < 0 || id >= n_vocab()) return {};
    const std::string& t = tokens_[size_t(id)];
    switch (types_[size_t(id)]) {
        case TokenType::control:
        case TokenType::unknown:
            return special ? t : std::string();
        case TokenType::user_defined:
            return t;
        case TokenType::unused:
            return {};
        case TokenType::byte:
            if (t.size() == 6 && t.rfind("<0x", 0) == 0)
                return std::string(1, char(std::stoi(t.substr(3, 2), nullptr, 16)));
            return {};
        default:
            break;
    }
    std::string out;
    for (uint32_t cp : unicode::decode_utf8(t)) {
        const int b = unicode::cp_to_byte(cp);
        if (b >= 0)
            out.push_back(char(b));
        else
            unicode::append_utf8(out, cp);
    }
    return out;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool special) const {
    std::string out;
    for (int32_t id : ids) out += token_bytes(id, special);
    return out;
}

// Length of the longest prefix of s made of complete UTF-8 sequences (or invalid bytes that can
// never complete); a trailing incomplete sequence is held back.
static size_t complete_prefix(const std::string& s) {
    size_t n = s.size();
    for (size_t back = 1; back <= 3 && back <= n; ++back) {
        const unsigned char c = static_cast<unsigned char>(s[n - back]);
        if ((c & 0xC0) == 0x80) continue;  // continuation byte: look further back
        const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
        return need > back ? n - back : n;
    }
    return n;
}

std::string TextStream::push(int32_t id) {
    pending_ += tok_.token_bytes(id, special_);
    const size_t k = complete_prefix(pending_);
    std::string out = unicode::sanitize_utf8(pending_.substr(0, k));
    pending_.erase(0, k);
    return out;
}

std::string TextStream::flush() {
    std::string out = unicode::sanitize_utf8(pending_);
    pending_.clear();
    return out;
}

}  // namespace bigmoe
