// The GBNF grammar a compiled JSON schema is read by when SchemaRecognizer cannot follow it
// (JsonSchema::grammar(): anyOf members that begin alike, a pattern, a format), and the string
// formats that grammar enforces. Internal to json_schema.cpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/result.h"
#include "runtime/grammar.h"
#include "runtime/json_schema.h"

namespace bigmoe {

// The format `name` names among those the grammar enforces; f_none for any other.
JsonSchema::Format format_named(const std::string& name);

// The grammar whose root derives the instances of s, in the layout JsonSchema::grammar()
// describes. `cap`: the largest count span enforced (counts above it are skipped and listed in
// s's ignored() when `lenient`, else the schema is refused); what the grammar cannot write is
// handled the same way.
Result<std::shared_ptr<const Grammar>> write_schema_grammar(JsonSchema& s, bool lenient, uint32_t cap);

}  // namespace bigmoe
