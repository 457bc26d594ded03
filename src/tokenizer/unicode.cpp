#include "tokenizer/unicode.h"

#include <utf8proc.h>

#include <array>
#include <cstdlib>

namespace bigmoe::unicode {

std::vector<uint32_t> decode_utf8(const std::string& s) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        utf8proc_int32_t cp;
        const utf8proc_ssize_t len = utf8proc_iterate(p + i, utf8proc_ssize_t(n - i), &cp);
        if (len <= 0) {
            out.push_back(0xFFFD);
            ++i;
        } else {
            out.push_back(uint32_t(cp));
            i += size_t(len);
        }
    }
    return out;
}

void append_utf8(std::string& out, uint32_t cp) {
    utf8proc_uint8_t buf[4];
    const utf8proc_ssize_t n = utf8proc_encode_char(utf8proc_int32_t(cp), buf);
    out.append(reinterpret_cast<const char*>(buf), size_t(n));
}

std::string encode_utf8(const std::vector<uint32_t>& cps) {
    std::string s;
    s.reserve(cps.size());
    for (uint32_t c : cps) append_utf8(s, c);
    return s;
}

int expected_length(uint8_t b, uint8_t* lo, uint8_t* hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) return 1;
    if (b >= 0xE0 && b <= 0xEF) {
        if (b == 0xE0) *lo = 0xA0;
        if (b == 0xED) *hi = 0x9F;
        return 2;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (b == 0xF0) *lo = 0x90;
        if (b == 0xF4) *hi = 0x8F;
        return 3;
    }
    return 0;
}

// Each maximal subpart of an ill-formed sequence becomes one U+FFFD (the Unicode
// recommendation that Python and browsers follow): " \xE2\x80'" is " \uFFFD'", not two.
std::string sanitize_utf8(const std::string& s) {
    static const char k_replacement[] = "\xEF\xBF\xBD";
    std::string out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x80) {
            out += char(p[i++]);
            continue;
        }
        uint8_t lo, hi;
        const int need = expected_length(p[i], &lo, &hi);
        size_t j = i + 1;
        for (int k = 0; k < need && j < n; ++k, ++j) {
            if (p[j] < lo || p[j] > hi) break;
            lo = 0x80;  // only the second byte has a narrower range
            hi = 0xBF;
        }
        if (need > 0 && j - i == size_t(need) + 1)
            out.append(s, i, j - i);
        else
            out += k_replacement;
        i = j;
    }
    return out;
}

bool is_valid_utf8(const std::string& s) {
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x80) {
            ++i;
            continue;
        }
        uint8_t lo, hi;
        const int need = expected_length(p[i], &lo, &hi);
        if (need == 0 || i + size_t(need) >= n) return false;  // not a lead byte, or cut off
        for (int k = 1; k <= need; ++k) {
            if (p[i + size_t(k)] < lo || p[i + size_t(k)] > hi) return false;
            lo = 0x80;
            hi = 0xBF;
        }
        i += size_t(need) + 1;
    }
    return true;
}

std::string nfc(const std::string& s) {
    utf8proc_uint8_t* out = utf8proc_NFC(reinterpret_cast<const utf8proc_uint8_t*>(s.c_str()));
    if (!out) return s;
    std::string r(reinterpret_cast<const char*>(out));
    std::free(out);
    return r;
}

static utf8proc_category_t cat(uint32_t cp) {
    return utf8proc_category(utf8proc_int32_t(cp));
}

bool is_letter(uint32_t cp) {
    const auto c = cat(cp);
    return c == UTF8PROC_CATEGORY_LU || c == UTF8PROC_CATEGORY_LL || c == UTF8PROC_CATEGORY_LT ||
           c == UTF8PROC_CATEGORY_LM || c == UTF8PROC_CATEGORY_LO;
}
bool is_number(uint32_t cp) {
    const auto c = cat(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}
bool is_mark(uint32_t cp) {
    const auto c = cat(cp);
    return c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_MC || c == UTF8PROC_CATEGORY_ME;
}
bool is_whitespace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}
uint32_t to_lower_ascii(uint32_t cp) {
    return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
}
const char* unicode_version() {
    return utf8proc_unicode_version();
}

namespace {
bool printable(int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}
struct ByteMap {
    std::array<uint32_t, 256> to_cp{};
    ByteMap() {
        uint32_t next = 0x100;
        for (int b = 0; b < 256; ++b) to_cp[size_t(b)] = printable(b) ? uint32_t(b) : next++;
    }
};
const ByteMap& byte_map() {
    static const ByteMap m;
    return m;
}
}  // namespace

uint32_t byte_to_cp(uint8_t b) {
    return byte_map().to_cp[b];
}

int cp_to_byte(uint32_t cp) {
    if (cp < 0x100) return printable(int(cp)) ? int(cp) : -1;
    if (cp >= 0x100 && cp < 0x100 + 68) {
        int n = int(cp - 0x100);
        for (int b = 0; b < 256; ++b)
            if (!printable(b) && n-- == 0) return b;
    }
    return -1;
}

}  // namespace bigmoe::unicode
