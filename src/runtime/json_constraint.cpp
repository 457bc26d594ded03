#include "runtime/json_constraint.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "runtime/grammar.h"
#include "runtime/json_schema.h"
#include "runtime/sampler.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace bigmoe {

namespace {
bool is_space(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
// whitespace and nothing else
bool blank(const std::string& b) {
    return !b.empty() && std::all_of(b.begin(), b.end(), [](char c) { return is_space(uint8_t(c)); });
}
bool is_digit(uint8_t c) {
    return c >= '0' && c <= '9';
}
int hex_value(uint8_t c) {
    if (is_digit(c)) return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}
constexpr const char* k_literals[3] = {"true", "false", "null"};
}  // namespace

bool JsonRecognizer::open(bool object) {
    if (depth_ >= k_max_depth) return false;
    const uint64_t bit = uint64_t(1) << depth_;
    objects_ = object ? objects_ | bit : objects_ & ~bit;
    ++depth_;
    mode_ = object ? Mode::obj_first : Mode::arr_first;
    return true;
}

bool JsonRecognizer::close(bool object) {
    if (depth_ == 0 || in_object() != object) return false;
    --depth_;
    value_done();
    return true;
}

void JsonRecognizer::value_done() {
    mode_ = depth_ == 0 ? Mode::done : Mode::after;
}

bool JsonRecognizer::start_value(uint8_t c) {
    switch (c) {
        case '{':
            return open(true);
        case '[':
            return open(false);
        case '"':
            mode_ = Mode::str;
            key_ = false;
            return true;
        case '-':
            mode_ = Mode::num_minus;
            return true;
        case '0':
            mode_ = Mode::num_zero;
            return true;
        case 't':
        case 'f':
        case 'n':
            mode_ = Mode::literal;
            lit_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
            aux_ = 1;
            return true;
        default:
            if (c >= '1' && c <= '9') {
                mode_ = Mode::num_int;
                return true;
            }
            return false;
    }
}

// A number ends at the first byte that cannot extend it, which is then read as what follows the
// value (a number is never the top-level value, so a container is open).
bool JsonRecognizer::after_number(uint8_t c) {
    value_done();
    return push(c);
}

bool JsonRecognizer::push(uint8_t c) {
    const JsonRecognizer before = *this;
    auto fail = [&] {
        *this = before;
        return false;
    };
    switch (mode_) {
        case Mode::start:
        case Mode::obj_first:
        case Mode::obj_key:
        case Mode::colon:
        case Mode::value:
        case Mode::arr_first:
        case Mode::after:
        case Mode::done:
            if (is_space(c)) {
                if (space_ >= k_max_space) return false;
                ++space_;
                return true;
            }
            break;
        default:
            break;
    }
    space_ = 0;
    switch (mode_) {
        case Mode::start:
            return c == '{' ? open(true) : fail();
        case Mode::obj_first:
            if (c == '}') return close(true) || fail();
            [[fallthrough]];
        case Mode::obj_key:
            if (c != '"') return fail();
            mode_ = Mode::str;
            key_ = true;
            return true;
        case Mode::colon:
            if (c != ':') return fail();
            mode_ = Mode::value;
            return true;
        case Mode::arr_first:
            if (c == ']') return close(false) || fail();
            [[fallthrough]];
        case Mode::value:
            return start_value(c) || fail();
        case Mode::after:
            if (c == ',') {
                mode_ = in_object() ? Mode::obj_key : Mode::value;
                return true;
            }
            if (c == '}' || c == ']') return close(c == '}') || fail();
            return fail();
        case Mode::done:
            return fail();
        case Mode::str:
            if (utf8_need_ > 0) {
                if (c < utf8_lo_ || c > utf8_hi_) return fail();
                --utf8_need_;
                utf8_lo_ = 0x80;
                utf8_hi_ = 0xBF;
                return true;
            }
            if (c == '"') {
                if (key_) {
                    key_ = false;
                    mode_ = Mode::colon;
                } else {
                    value_done();
                }
                return true;
            }
            if (c == '\\') {
                mode_ = Mode::esc;
                return true;
            }
            if (c < 0x20) return fail();
            if (c < 0x80) return true;
            // UTF-8: the lead byte fixes how many continuation bytes follow, and the first one's
            // range excludes overlong forms, surrogates and code points past U+10FFFF
            utf8_need_ = uint8_t(unicode::expected_length(c, &utf8_lo_, &utf8_hi_));
            return utf8_need_ > 0 || fail();
        case Mode::esc:
            if (c == 'u') {
                mode_ = Mode::hex;
                aux_ = 0;
                code_ = 0;
                return true;
            }
            if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't') {
                mode_ = Mode::str;
                return true;
            }
            return fail();
        case Mode::hex: {
            const int v = hex_value(c);
            if (v < 0) return fail();
            // surrogates come in pairs: a high one (D800-DBFF) then \u and a low one (DC00-DFFF)
            if (aux_ == 0 && want_low_ && v != 0xD) return fail();
            if (aux_ == 1 && code_ == 0xD) {
                const bool low = v >= 0xC;
                if (low != want_low_) return fail();
            } else if (aux_ == 1 && want_low_) {
                return fail();
            }
            code_ = uint16_t(code_ * 16 + v);
            if (++aux_ < 4) return true;
            if (want_low_) {
                want_low_ = false;
                mode_ = Mode::str;
            } else if (code_ >= 0xD800 && code_ <= 0xDBFF) {
                want_low_ = true;
                mode_ = Mode::low_back;
            } else {
                mode_ = Mode::str;
            }
            return true;
        }
        case Mode::low_back:
            if (c != '\\') return fail();
            mode_ = Mode::low_u;
            return true;
        case Mode::low_u:
            if (c != 'u') return fail();
            mode_ = Mode::hex;
            aux_ = 0;
            code_ = 0;
            return true;
        case Mode::num_minus:
            if (c == '0') {
                mode_ = Mode::num_zero;
                return true;
            }
            if (c >= '1' && c <= '9') {
                mode_ = Mode::num_int;
                return true;
            }
            return fail();
        case Mode::num_zero:
        case Mode::num_int:
            if (is_digit(c) && mode_ == Mode::num_int) return true;
            if (c == '.') {
                mode_ = Mode::num_dot;
                return true;
            }
            if (c == 'e' || c == 'E') {
                mode_ = Mode::num_exp;
                return true;
            }
            return after_number(c) || fail();
        case Mode::num_dot:
            if (!is_digit(c)) return fail();
            mode_ = Mode::num_frac;
            return true;
        case Mode::num_frac:
            if (is_digit(c)) return true;
            if (c == 'e' || c == 'E') {
                mode_ = Mode::num_exp;
                return true;
            }
            return after_number(c) || fail();
        case Mode::num_exp:
            if (c == '+' || c == '-') {
                mode_ = Mode::num_exp_sign;
                return true;
            }
            [[fallthrough]];
        case Mode::num_exp_sign:
            if (!is_digit(c)) return fail();
            mode_ = Mode::num_exp_int;
            return true;
        case Mode::num_exp_int:
            if (is_digit(c)) return true;
            return after_number(c) || fail();
        case Mode::literal:
            if (c != uint8_t(k_literals[lit_][aux_])) return fail();
            if (k_literals[lit_][++aux_] == '\0') value_done();
            return true;
    }
    return fail();
}

namespace {
// The ASCII bytes of b, or only the flag in [2] when b is not whole UTF-8 characters.
std::array<uint64_t, 3> ascii_bytes(const std::string& b) {
    if (!unicode::is_valid_utf8(b)) return {0, 0, 1};
    std::array<uint64_t, 3> m{0, 0, 0};
    for (char ch : b)
        if (const uint8_t c = uint8_t(ch); c < 0x80) m[c / 64] |= uint64_t(1) << (c % 64);
    return m;
}
}  // namespace

JsonVocabulary::JsonVocabulary(const Tokenizer& tok) : tok_(tok) {
    const int32_t n = tok.n_vocab();
    bytes_.resize(size_t(n));
    ascii_.assign(size_t(n), {0, 0, 1});
    chars_.assign(size_t(n), 0);
    JsonRecognizer in_string;  // inside a key: '{' then '"'
    in_string.push('{');
    in_string.push('"');
    for (int32_t id = 0; id < n; ++id) {
        if (tok.is_eog(id)) {
            end_tokens_.push_back(id);
            continue;
        }
        const TokenType t = tok.token_type(id);
        if (t != TokenType::normal && t != TokenType::byte) continue;
        std::string b = tok.token_bytes(id, false);
        if (b.empty()) continue;
        JsonRecognizer r = in_string;
        bool plain = true;
        for (char c : b) plain = plain && c != '"' && c != '\\' && r.push(uint8_t(c));
        plain = plain && r.in_plain_string();
        (plain ? plain_ : not_plain_.ids).push_back(id);
        size_t chars = 0;
        for (char c : b) chars += (uint8_t(c) & 0xC0) != 0x80;
        chars_[size_t(id)] = uint16_t(std::min<size_t>(chars, 0xFFFF));
        all_.ids.push_back(id);
        ascii_[size_t(id)] = ascii_bytes(b);
        bytes_[size_t(id)] = std::move(b);
    }
    sort(all_);
    sort(not_plain_);
}

void JsonVocabulary::sort(Sorted& s) const {
    std::sort(s.ids.begin(), s.ids.end(), [&](int32_t a, int32_t b) {
        const int c = bytes_[size_t(a)].compare(bytes_[size_t(b)]);
        return c != 0 ? c < 0 : a < b;
    });
    s.shared.assign(s.ids.size(), 0);
    for (size_t i = 1; i < s.ids.size(); ++i) {
        const std::string &a = bytes_[size_t(s.ids[i - 1])], &b = bytes_[size_t(s.ids[i])];
        size_t k = 0;
        while (k < a.size() && k < b.size() && a[k] == b[k] && k < 0xFFFF) ++k;
        s.shared[i] = uint16_t(k);
    }
}

JsonConstraint::JsonConstraint(std::shared_ptr<const JsonVocabulary> vocab, int32_t after_token,
                               std::shared_ptr<const JsonSchema> schema)
    : vocab_(std::move(vocab)), after_token_(after_token), active_(after_token < 0), schema_(std::move(schema)) {
    if (schema_ && schema_->grammar()) {
        source_ = schema_->grammar();
        grammar_ = std::make_unique<GrammarRecognizer>(source_);
    } else if (schema_) {
        schema_json_ = std::make_unique<SchemaRecognizer>(schema_.get());
    }
}

JsonConstraint::JsonConstraint(std::shared_ptr<const JsonVocabulary> vocab, int32_t after_token,
                               std::shared_ptr<const Grammar> grammar)
    : vocab_(std::move(vocab)),
      after_token_(after_token),
      active_(after_token < 0),
      source_(std::move(grammar)),
      grammar_(std::make_unique<GrammarRecognizer>(source_)) {}

JsonConstraint::~JsonConstraint() = default;

bool JsonConstraint::complete() const {
    if (grammar_) return grammar_->finished();
    return schema_json_ ? schema_json_->complete() : json_.complete();
}

namespace {
// Moves a copy on by one byte; a refused byte may leave the copy unspecified.
bool advance(JsonRecognizer& r, uint8_t c) {
    return r.push(c);
}
bool advance(SchemaRecognizer& r, uint8_t c) {
    return r.advance(c);
}
bool advance(GrammarRecognizer& r, uint8_t c) {
    return r.push(c);
}
}  // namespace

// states[k] is the recognizer after the first k bytes of the token before, valid for k <= valid;
// a token refused at byte `dead` refuses every token that shares that byte's prefix, which
// follow it in byte order.
template <class R>
void JsonConstraint::walk(const R& r, const JsonVocabulary::Sorted& s, std::vector<uint8_t>& allowed) const {
    thread_local std::vector<R> states;
    states.clear();
    states.push_back(r);
    size_t valid = 0, dead = SIZE_MAX;
    for (size_t i = 0; i < s.ids.size(); ++i) {
        const int32_t id = s.ids[i];
        const std::string& b = vocab_->bytes_[size_t(id)];
        size_t k = i == 0 ? 0 : s.shared[i];
        if (dead != SIZE_MAX && k > dead) continue;
        k = std::min(k, valid);
        while (states.size() < b.size() + 1) states.push_back(r);
        dead = SIZE_MAX;
        for (size_t j = k; j < b.size(); ++j) {
            states[j + 1] = states[j];
            if (!advance(states[j + 1], uint8_t(b[j]))) {
                dead = j;
                break;
            }
        }
        valid = dead == SIZE_MAX ? b.size() : dead;
        if (dead == SIZE_MAX && size_t(id) < allowed.size()) allowed[size_t(id)] = 1;
    }
}

template <class R>
void JsonConstraint::mask_with(const R& r, std::vector<uint8_t>& allowed) const {
    const JsonVocabulary& v = *vocab_;
    if (r.complete()) {
        for (int32_t id : v.end_tokens_)
            if (size_t(id) < allowed.size()) allowed[size_t(id)] = 1;
    } else if (const uint32_t room = r.plain_room(); room > 0) {
        // most of a JSON text: only the tokens that are not plain string bytes need reading
        for (size_t i = 0; i < v.plain_.size(); ++i)
            if (size_t(v.plain_[i]) < allowed.size() && v.chars_[size_t(v.plain_[i])] <= room)
                allowed[size_t(v.plain_[i])] = 1;
        walk(r, v.not_plain_, allowed);
    } else {
        walk(r, v.all_, allowed);
    }
}

// The grammar's tokens from here (cached by state): the end tokens at a whole derivation, the
// tokens a walk takes, and inside a class repetition (x*, or a bounded one's tail: up to its
// characters left) the tokens of whole characters with no stop byte without reading them.
const std::vector<uint8_t>& JsonConstraint::grammar_allowed(int32_t n_vocab) const {
    thread_local std::vector<int32_t> state;
    grammar_->signature(state);
    auto hit = std::find_if(cache_.begin(), cache_.end(), [&](const Cached& c) { return c.state == state; });
    if (hit != cache_.end() && hit->allowed.size() == size_t(n_vocab)) {
        std::rotate(cache_.begin(), hit, hit + 1);
        return cache_.front().allowed;
    }
    std::vector<uint8_t> allowed(size_t(n_vocab), 0);
    auto allow_end = [&] {
        for (int32_t id : vocab_->end_tokens_)
            if (id < n_vocab) allowed[size_t(id)] = 1;
    };
    const size_t mark = grammar_->mark();
    if (grammar_->complete()) allow_end();
    uint64_t stops[2];
    uint32_t room = 0;  // characters such a token may hold
    const bool open = grammar_->open();
    if (open) room = grammar_->loops_except(stops) ? UINT32_MAX : grammar_->chain_room(stops);
    if (!open) {
        // a finished derivation: the end tokens only
    } else if (room > 0) {
        // a token of whole characters, none of them a stop, up to `room` of them, is taken (x*:
        // it leads back here); only the others are walked (in byte order, each sharing with the
        // one before the least of the prefixes between them)
        thread_local JsonVocabulary::Sorted rest;
        rest.ids.clear();
        rest.shared.clear();
        const JsonVocabulary::Sorted& all = vocab_->all_;
        uint16_t lcp = 0;
        for (size_t i = 0; i < all.ids.size(); ++i) {
            const int32_t id = all.ids[i];
            lcp = rest.ids.empty() ? 0 : std::min(lcp, all.shared[i]);
            const std::array<uint64_t, 3>& a = vocab_->ascii_[size_t(id)];
            const uint16_t chars = vocab_->chars_[size_t(id)];
            if ((a[0] & stops[0]) == 0 && (a[1] & stops[1]) == 0 && a[2] == 0 && chars <= room) {
                if (id < n_vocab) allowed[size_t(id)] = 1;
                continue;
            }
            rest.ids.push_back(id);
            rest.shared.push_back(lcp);
            lcp = UINT16_MAX;
        }
        walk(*grammar_, rest, allowed);
    } else {
        walk(*grammar_, vocab_->all_, allowed);
    }
    grammar_->release(mark);  // the walk's copies are gone
    // nothing left (derivations past GrammarRecognizer::k_max_stacks): the answer ends
    if (std::find(allowed.begin(), allowed.end(), uint8_t(1)) == allowed.end()) allow_end();
    constexpr size_t k_cached = 8;
    if (cache_.size() == k_cached) cache_.pop_back();
    cache_.insert(cache_.begin(), Cached{state, std::move(allowed)});
    return cache_.front().allowed;
}

void JsonConstraint::mask(float* logits, int32_t n_vocab) const {
    if (!active_) return;
    if (closing_) {
        for (int32_t id = 0; id < n_vocab; ++id)
            if (!allows(id)) logits[id] = -INFINITY;
        return;
    }
    thread_local std::vector<uint8_t> allowed;
    const std::vector<uint8_t>* a = &allowed;
    if (grammar_) {
        a = &grammar_allowed(n_vocab);
    } else {
        allowed.assign(size_t(n_vocab), 0);
        if (schema_json_)
            mask_with(*schema_json_, allowed);
        else
            mask_with(json_, allowed);
    }
    for (int32_t id = 0; id < n_vocab; ++id)
        if (!(*a)[size_t(id)]) logits[id] = -INFINITY;
}

template <class R>
bool JsonConstraint::takes(const R& r, int32_t token) const {
    const std::string& b = vocab_->bytes_[size_t(token)];
    if (b.empty()) return false;
    R t = r;
    for (char c : b)
        if (!advance(t, uint8_t(c))) return false;
    return true;
}

bool JsonConstraint::allows(int32_t token) const {
    if (!active_) return true;
    if (token < 0 || size_t(token) >= vocab_->bytes_.size()) return false;
    if (closing_) return token == close_ || (blanks_ < 2 && blank(vocab_->bytes_[size_t(token)]));
    const bool end = std::binary_search(vocab_->end_tokens_.begin(), vocab_->end_tokens_.end(), token);
    if (grammar_) {
        if (end)  // as the mask: at a whole derivation, or when nothing else is left
            return grammar_->complete() || grammar_allowed(int32_t(vocab_->bytes_.size()))[size_t(token)];
        const size_t mark = grammar_->mark();
        const bool ok = grammar_->open() && takes(*grammar_, token);
        grammar_->release(mark);
        return ok;
    }
    if (complete()) return end;
    return !end && (schema_json_ ? takes(*schema_json_, token) : takes(json_, token));
}

std::unique_ptr<JsonConstraint> JsonConstraint::clone() const {
    // built without a schema (no recognizer made to be replaced), then given this one's state
    auto c = std::make_unique<JsonConstraint>(vocab_, after_token_);
    c->schema_ = schema_;
    c->active_ = active_;
    c->repeat_ = repeat_;
    c->close_ = close_;
    c->closing_ = closing_;
    c->blanks_ = blanks_;
    c->json_ = json_;
    c->source_ = source_;
    c->schema_json_ = schema_json_ ? std::make_unique<SchemaRecognizer>(*schema_json_) : nullptr;
    c->grammar_ = grammar_ ? std::make_unique<GrammarRecognizer>(*grammar_) : nullptr;
    return c;
}

int32_t constrained_argmax(const JsonConstraint& c, const float* logits, int64_t n, std::vector<float>& scratch) {
    const int32_t best = argmax(logits, n);
    if (c.allows(best)) return best;
    scratch.assign(logits, logits + n);
    c.mask(scratch.data(), int32_t(n));
    return argmax(scratch.data(), n);
}

void JsonConstraint::repeat_after(int32_t open, int32_t close) {
    start_after(open);
    repeat_ = open;
    close_ = close;
}

void JsonConstraint::accept(int32_t token) {
    if (!active_) {
        active_ = token == after_token_;
        return;
    }
    if (token < 0 || size_t(token) >= vocab_->bytes_.size()) return;
    if (closing_) {
        if (token != close_) {
            ++blanks_;
            return;
        }
        closing_ = false;
        blanks_ = 0;  // the next one starts over after the next `repeat_`
        json_ = JsonRecognizer();
        if (schema_json_) schema_json_ = std::make_unique<SchemaRecognizer>(schema_.get());
        if (grammar_) grammar_ = std::make_unique<GrammarRecognizer>(source_);
        start_after(repeat_);
        return;
    }
    for (char c : vocab_->bytes_[size_t(token)]) {
        if (grammar_)
            grammar_->push(uint8_t(c));
        else if (schema_json_)
            schema_json_->push(uint8_t(c));
        else
            json_.push(uint8_t(c));
    }
    if (grammar_) grammar_->compact();
    if (repeat_ >= 0 && complete()) closing_ = true;
}

}  // namespace bigmoe
