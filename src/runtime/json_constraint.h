// JSON mode (`response_format: {"type": "json_object"}`): generation restricted, token by token,
// to text that is the start of a JSON object, and ended only once the object is closed.
//
// JsonRecognizer reads bytes one at a time and refuses the first byte that no JSON object
// text (RFC 8259, UTF-8, \u escapes in surrogate pairs) could continue with, so a text it took is
// always the start of one. JsonConstraint applies it to a vocabulary: before each token the
// logits of the tokens it would refuse become -infinity. It applies a JSON Schema's recognizer
// (json_schema.h) or a GBNF grammar's (grammar.h) the same way.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace bigmoe {

class Tokenizer;
class JsonSchema;
class SchemaRecognizer;
class Grammar;
class GrammarRecognizer;

class JsonRecognizer {
  public:
    static constexpr int k_max_depth = 64;  // nesting of objects and arrays
    static constexpr int k_max_space = 20;  // whitespace bytes in a row (keeps a model from idling)

    // Takes c if some JSON object text continues the bytes so far with it; else false, unchanged.
    bool push(uint8_t c);
    // Whether the bytes so far are a whole JSON object (whitespace may follow, nothing else).
    bool complete() const { return mode_ == Mode::done; }
    // Inside a string between characters, where a token of plain string bytes (no quote, no
    // backslash, no control byte, whole UTF-8 characters) is always taken and changes nothing.
    bool in_plain_string() const { return mode_ == Mode::str && utf8_need_ == 0; }
    // How many characters of plain string bytes are taken here (0: none, or not in a string).
    uint32_t plain_room() const { return in_plain_string() ? UINT32_MAX : 0; }

  private:
    friend class SchemaRecognizer;  // reads the syntax's state to follow a schema
    enum class Mode : uint8_t {
        start,      // before the top-level '{'
        obj_first,  // after '{': a key or '}'
        obj_key,    // after ',' in an object: a key
        colon,      // after a key
        value,      // a value
        arr_first,  // after '[': a value or ']'
        after,      // after a value in a container: ',' or the container's close
        str,        // inside a string
        esc,        // after a backslash
        hex,        // inside \uXXXX (aux_: digits read)
        low_back,   // after a high surrogate's \uXXXX: the low one's backslash
        low_u,      // ... its 'u'
        num_minus,  // after '-'
        num_zero,   // a leading 0
        num_int,    // integer digits
        num_dot,    // after '.'
        num_frac,   // fraction digits
        num_exp,    // after 'e' / 'E'
        num_exp_sign,
        num_exp_int,
        literal,  // inside true / false / null (aux_: bytes read, lit_: which)
        done,
    };
    bool open(bool object);
    bool close(bool object);
    void value_done();
    bool start_value(uint8_t c);
    bool after_number(uint8_t c);
    bool in_object() const { return depth_ > 0 && ((objects_ >> (depth_ - 1)) & 1); }

    uint64_t objects_ = 0;  // bit d: container d is an object (else an array)
    uint8_t depth_ = 0;
    Mode mode_ = Mode::start;
    bool key_ = false;                         // the string being read is a key
    bool want_low_ = false;                    // the \u escape being read must be a low surrogate
    uint8_t aux_ = 0;                          // hex digits or literal bytes read
    uint16_t code_ = 0;                        // the \u escape's digits so far
    uint8_t lit_ = 0;                          // 0 true, 1 false, 2 null
    uint8_t utf8_need_ = 0;                    // continuation bytes still due in a string
    uint8_t utf8_lo_ = 0x80, utf8_hi_ = 0xBF;  // the next continuation byte's range
    uint8_t space_ = 0;                        // whitespace bytes in a row
};

// The vocabulary's tokens sorted by their bytes, with the length each shares with the one
// before, so a mask walks each shared prefix once. Built once per tokenizer (about 0.1 s for
// Qwen3's 151k tokens) and shared by every request.
class JsonVocabulary {
  public:
    explicit JsonVocabulary(const Tokenizer& tok);
    const Tokenizer& tokenizer() const { return tok_; }

  private:
    friend class JsonConstraint;
    // Tokens in byte order and how many bytes each shares with the one before.
    struct Sorted {
        std::vector<int32_t> ids;
        std::vector<uint16_t> shared;
    };
    void sort(Sorted& s) const;

    const Tokenizer& tok_;
    std::vector<std::string> bytes_;   // by token id (empty: never allowed as text)
    Sorted all_;                       // the text tokens (normal and byte types)
    Sorted not_plain_;                 // those that are not plain string bytes
    std::vector<int32_t> plain_;       // those that are
    std::vector<uint16_t> chars_;      // by token id: its characters (UTF-8 lead bytes)
    std::vector<int32_t> end_tokens_;  // end-of-generation tokens
    // by token id: the ASCII bytes it holds (bit c of [c / 64]); [2] is 1 when its bytes are not
    // whole UTF-8 characters (so no set of characters takes it without reading)
    std::vector<std::array<uint64_t, 3>> ascii_;
};

class JsonConstraint {
  public:
    // `after_token` >= 0: the constraint starts after that token (the reasoning's </think> when
    // the prompt opened <think>); until then nothing is masked. With a schema the object must be
    // one of its instances (json_schema.h); without, any JSON object.
    explicit JsonConstraint(std::shared_ptr<const JsonVocabulary> vocab, int32_t after_token = -1,
                            std::shared_ptr<const JsonSchema> schema = nullptr);
    // Text that a GBNF grammar derives (grammar.h) instead of JSON: end-of-generation tokens are
    // allowed wherever the text is a whole derivation.
    JsonConstraint(std::shared_ptr<const JsonVocabulary> vocab, int32_t after_token,
                   std::shared_ptr<const Grammar> grammar);
    ~JsonConstraint();
    // Sets the logits of the tokens that cannot come next to -infinity: text tokens that the
    // recognizer would refuse (control and user-defined tokens always), end-of-generation tokens
    // until the object is complete, and every other token once it is.
    void mask(float* logits, int32_t n_vocab) const;
    // Whether `token` may come next: the mask's answer for one token, without the mask.
    bool allows(int32_t token) const;
    // The chosen token moves the recognizer on.
    void accept(int32_t token);
    // A copy to try tokens on (a draft's proposals), this one unchanged.
    std::unique_ptr<JsonConstraint> clone() const;
    // Waits for `token` (the reasoning's close) before applying, as the constructor's after_token.
    void start_after(int32_t token) {
        after_token_ = token;
        active_ = token < 0;
    }
    // Applies after each `open` token until the text is whole, then allows only whitespace and
    // the `close` token, and after that waits for `open` again with the recognizer started over
    // (tool calls in an answer that may hold several, and text between them).
    void repeat_after(int32_t open, int32_t close);
    bool active() const { return active_; }
    // Whether the text is finished: a whole object, or a derivation nothing can follow.
    bool complete() const;

  private:
    // Marks the tokens of `s` that recognizer `r` takes whole from its current state.
    template <class R>
    void walk(const R& r, const JsonVocabulary::Sorted& s, std::vector<uint8_t>& allowed) const;
    template <class R>
    void mask_with(const R& r, std::vector<uint8_t>& allowed) const;
    template <class R>
    bool takes(const R& r, int32_t token) const;
    const std::vector<uint8_t>& grammar_allowed(int32_t n_vocab) const;

    std::shared_ptr<const JsonVocabulary> vocab_;
    int32_t after_token_;
    bool active_;
    int32_t repeat_ = -1, close_ = -1;  // repeat_after's tokens
    bool closing_ = false;              // the text is whole: up to two blank tokens, then close_
    uint8_t blanks_ = 0;
    JsonRecognizer json_;  // without a schema
    std::shared_ptr<const JsonSchema> schema_;
    std::unique_ptr<SchemaRecognizer> schema_json_;  // with one
    std::shared_ptr<const Grammar> source_;          // the grammar read (a request's or a schema's)
    std::unique_ptr<GrammarRecognizer> grammar_;     // a grammar instead of JSON
    // A grammar's recent masks by state: a state recurs (inside a repetition every character
    // leads back to it), and its mask is then copied, not walked again.
    struct Cached {
        std::vector<int32_t> state;
        std::vector<uint8_t> allowed;
    };
    mutable std::vector<Cached> cache_;  // most recent first
};

// The greedy choice under constraint c (its state unchanged): the arg-max when c allows it, else
// the arg-max of what c allows (the mask's walk).
int32_t constrained_argmax(const JsonConstraint& c, const float* logits, int64_t n, std::vector<float>& scratch);

}  // namespace bigmoe
