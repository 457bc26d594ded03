#include "tokenizer/pretokenizer.h"

#include "tokenizer/unicode.h"

namespace bigmoe {

using namespace unicode;

std::vector<std::pair<size_t, size_t>> pretokenize(const std::vector<uint32_t>& c, PreTokenizer kind) {
    std::vector<std::pair<size_t, size_t>> words;
    const size_t n = c.size();
    const bool marks = kind == PreTokenizer::qwen35;
    auto word_char = [&](uint32_t x) { return is_letter(x) || (marks && is_mark(x)); };
    auto symbol = [&](uint32_t x) {
        return !is_whitespace(x) && !is_letter(x) && !is_number(x) && !(marks && is_mark(x));
    };
    auto nl = [](uint32_t x) { return x == '\r' || x == '\n'; };
    size_t i = 0;
    while (i < n) {
        const uint32_t cur = c[i];
        const uint32_t next = i + 1 < n ? c[i + 1] : 0;
        const bool has_next = i + 1 < n;
        // 1. contractions (case-insensitive)
        if (cur == '\'' && has_next) {
            const uint32_t a = to_lower_ascii(next);
            const uint32_t b = i + 2 < n ? to_lower_ascii(c[i + 2]) : 0;
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
                words.push_back({i, i + 3});
                i += 3;
                continue;
            }
            if (a == 's' || a == 't' || a == 'm' || a == 'd') {
                words.push_back({i, i + 2});
                i += 2;
                continue;
            }
        }
        // 2. letter run with at most one leading non-letter, non-number, non-newline char
        if (word_char(cur) || (!nl(cur) && !is_letter(cur) && !is_number(cur) && has_next && word_char(next))) {
            size_t j = i + 1;
            while (j < n && word_char(c[j])) ++j;
            words.push_back({i, j});
            i = j;
            continue;
        }
        // 3. a single digit
        if (is_number(cur)) {
            words.push_back({i, i + 1});
            ++i;
            continue;
        }
        // 4. symbols with an optional leading space and trailing newlines
        {
            const size_t s0 = cur == ' ' ? i + 1 : i;
            if (s0 < n && symbol(c[s0])) {
                size_t j = s0 + 1;
                while (j < n && symbol(c[j])) ++j;
                while (j < n && nl(c[j])) ++j;
                words.push_back({i, j});
                i = j;
                continue;
            }
        }
        if (is_whitespace(cur)) {
            size_t end = i;
            while (end < n && is_whitespace(c[end])) ++end;
            // 5. whitespace containing a newline: up to and including the last newline
            size_t last_nl = n;
            for (size_t j = i; j < end; ++j)
                if (nl(c[j])) last_nl = j;
            if (last_nl != n) {
                words.push_back({i, last_nl + 1});
                i = last_nl + 1;
                continue;
            }
            // 6. a run before non-space keeps its last char for the next word
            if (end - i >= 2 && end < n) {
                words.push_back({i, end - 1});
                i = end - 1;
                continue;
            }
            // 7. the whole run
            words.push_back({i, end});
            i = end;
            continue;
        }
        // 8. anything else: one code point
        words.push_back({i, i + 1});
        ++i;
    }
    return words;
}

}  // namespace bigmoe
