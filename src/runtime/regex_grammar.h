// JSON Schema's "pattern" (an ECMA-262 regular expression) as GBNF over the text of a JSON
// string, so that a schema's grammar (json_schema.h) writes only strings whose value matches.
#pragma once

#include <cstdint>
#include <string>

#include "core/result.h"

namespace bigmoe {

// The GBNF expression that derives the contents of a JSON string (the text between its quotes)
// whose value has a match of `pattern`: anywhere in the value, as JSON Schema reads a pattern,
// unless ^ / $ anchor an alternative at its start / end. `chr` names a rule that derives one
// character of a JSON string's contents (the padding around an unanchored match).
//
// The derived texts write characters directly and escape only what JSON requires: `\"`, `\\`
// and the controls \b \f \n \r \t (other control characters are never written; nor are `\u`
// escapes). Refused, naming the construct: lookaround and named groups, backreferences, word
// boundaries, ^ / $ inside an alternative, Unicode property escapes, \D \W \S inside a class,
// counts above k_regex_max_count, a class with no character a JSON string can write, invalid
// UTF-8.
Result<std::string> regex_gbnf(const std::string& pattern, const std::string& chr);

constexpr uint32_t k_regex_max_count = 1000;

}  // namespace bigmoe
