// UTF-8 and Unicode character classes (from utf8proc's tables) for the pre-tokenizers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bigmoe::unicode {

// Decodes UTF-8; each byte of an invalid sequence becomes U+FFFD.
std::vector<uint32_t> decode_utf8(const std::string& s);
void append_utf8(std::string& out, uint32_t cp);
std::string encode_utf8(const std::vector<uint32_t>& cps);
// Replaces invalid UTF-8 (one U+FFFD per offending byte).
std::string sanitize_utf8(const std::string& s);
// Whether s is well-formed UTF-8 (no byte sanitize_utf8 would replace).
bool is_valid_utf8(const std::string& s);
// How many continuation bytes follow lead byte b (0: b cannot start a sequence), and the range
// the first of them must fall in (Unicode Table 3-7: no overlong forms, surrogates or code
// points past U+10FFFF); the others fall in 0x80..0xBF.
int expected_length(uint8_t b, uint8_t* lo, uint8_t* hi);
// Unicode NFC of valid UTF-8.
std::string nfc(const std::string& s);

bool is_letter(uint32_t cp);  // general category L*
bool is_number(uint32_t cp);  // N*
bool is_mark(uint32_t cp);    // M*
bool is_whitespace(uint32_t cp);
uint32_t to_lower_ascii(uint32_t cp);
const char* unicode_version();

// The GPT-2 byte-level mapping: byte -> code point, and back (-1 if cp is not in the map).
uint32_t byte_to_cp(uint8_t b);
int cp_to_byte(uint32_t cp);

}  // namespace bigmoe::unicode
