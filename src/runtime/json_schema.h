// Structured outputs (`response_format: {"type": "json_schema", ...}`, llama.cpp's `json_schema`,
// a forced tool call's arguments): generation restricted to JSON objects that a JSON Schema
// accepts.
//
// JsonSchema compiles the part of JSON Schema that a left-to-right reader can decide byte by byte
// without ever reaching a dead end: types, properties / required / additionalProperties,
// minProperties / maxProperties, items / prefixItems / minItems / maxItems, minLength / maxLength,
// minimum / maximum / exclusiveMinimum / exclusiveMaximum, pattern (regex_grammar.h), format (date,
// time, date-time, duration, uuid, ipv4, hostname, email), enum / const, anyOf / oneOf, allOf of
// one schema, and local $ref (also recursive). Annotations (title, description, default, other
// formats, ...) are ignored; any other assertion keyword is refused by name, unless the caller asks
// for a lenient compile (then it is skipped and listed, for the caller to report). An object schema
// that lists properties takes no other keys unless additionalProperties allows them.
//
// SchemaRecognizer reads bytes like JsonRecognizer (which it runs for the syntax) and refuses the
// first byte that no instance of the schema could continue with. It decides each anyOf by the
// value's first byte; a schema with an anyOf whose members may begin alike (objects told apart
// by a property's value, as in several tools' calls) is compiled into a GBNF grammar instead,
// whose recognizer follows every member at once (grammar()). Enum and const values are written
// in their compact form (nlohmann's dump), object keys without escapes they do not need.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "core/result.h"
#include "runtime/grammar.h"
#include "runtime/json_constraint.h"

namespace bigmoe {

class JsonSchema {
  public:
    // The schema must describe objects (a JSON text's first byte is '{'); one that takes any
    // value ({} or true) takes any object. `lenient`: keywords it cannot enforce are skipped and
    // listed in ignored() instead of refused (OpenAI's non-strict schemas, llama.cpp's json_schema).
    static Result<std::shared_ptr<const JsonSchema>> compile(const nlohmann::json& schema, bool lenient = false);
    // What a lenient compile skipped: "where: keyword".
    const std::vector<std::string>& ignored() const { return ignored_; }
    // Set when some anyOf's members may begin alike, or a string has a pattern or a format the
    // grammar enforces (date, time, date-time, duration, uuid, ipv4, hostname, email: their shapes,
    // the calendar not checked): instances are read by this grammar rather than by
    // SchemaRecognizer. It writes an object's keys in one order (the required ones as `required`
    // lists them, then the others by name) and takes at most one space or a newline and 20 blanks
    // between tokens; counts above k_grammar_counts are not enforced there.
    const std::shared_ptr<const Grammar>& grammar() const { return grammar_; }
    static constexpr uint32_t k_grammar_counts = 256;

    // The string formats the grammar enforces (json_schema.cpp's k_formats has their rules).
    enum Format : uint8_t {
        f_none,
        f_date,
        f_time,
        f_date_time,
        f_duration,
        f_uuid,
        f_ipv4,
        f_hostname,
        f_email,
        f_count
    };

    // The numbers a node takes: [lo, hi], each side bounded or not, counted in steps of 10^-frac
    // (frac 0: integers; k_frac_digits: numbers, whose texts are then written without an
    // exponent and with at most k_frac_digits fraction digits, each a whole number of steps).
    struct Range {
        static constexpr uint8_t k_frac_digits = 15;
        static constexpr uint64_t k_huge = 10000000000000000000ull;  // 10^19: past every bound's whole part
        bool has_lo = false, has_hi = false;
        __int128 lo = 0, hi = 0;
        uint8_t frac = 0;
        bool any() const { return !has_lo && !has_hi; }
        // A number's text so far: '-' or not, the whole part's `digits` digits (their value
        // saturating at k_huge), then after a '.' its fraction's digits (their value in steps).
        struct Text {
            uint64_t whole = 0, fraction = 0;
            uint16_t digits = 0;
            uint8_t frac_digits = 0;
            bool negative = false, dot = false;
        };
        // Whether the number written is in the range.
        bool holds(const Text& t) const;
        // Whether some number whose text begins with t (or is t) is in the range. Integers refuse
        // "-0" (nothing may follow "-0" either), so for them "-" leads to -1 and below.
        bool reaches(const Text& t) const;
        // Appends byte c (the sign, a digit, the point) to t: whether the range still reaches it.
        bool push(Text& t, uint8_t c) const;
    };

  private:
    friend class SchemaRecognizer;
    friend class SchemaCompiler;
    friend class SchemaGrammar;
    enum Type : uint8_t {
        t_object = 1,
        t_array = 2,
        t_string = 4,
        t_number = 8,  // any number
        t_integer = 16,
        t_boolean = 32,
        t_null = 64,
        t_all = 127,
    };
    static constexpr int32_t k_any = 0;    // the node that takes every value
    static constexpr int32_t k_none = -1;  // additionalProperties / items: false
    static constexpr uint8_t k_deep = 255;

    struct Node {
        uint8_t types = t_all;
        bool any = true;                    // no constraint at all
        std::vector<std::string> literals;  // enum / const: compact texts, sorted (a literal node)
        std::vector<int32_t>
            alternatives;  // anyOf: its members (merged where that makes them differ in their first byte)
        // objects
        std::vector<std::string> keys;  // property names as JSON writes them (no quotes), sorted
        std::vector<int32_t> key_nodes;
        uint64_t required = 0;       // bit i: keys[i]
        std::vector<uint8_t> order;  // indices into keys: the required ones as listed, then the rest
        int32_t additional = k_any;
        uint32_t min_props = 0, max_props = UINT32_MAX;  // minProperties / maxProperties
        // arrays
        std::vector<int32_t> prefix;
        int32_t items = k_any;
        uint32_t min_items = 0, max_items = UINT32_MAX;
        // strings: characters (code points; an escape is one)
        uint32_t min_length = 0, max_length = UINT32_MAX;
        Format format = f_none;  // enforced by the grammar
        std::string pattern;     // "pattern" as GBNF over the string's text (regex_gbnf), for the grammar
        // numbers: minimum / maximum and their exclusive forms
        Range range;
        bool compiled = false;  // false while its own definition is being read ($ref cycles)
        // Frames (SchemaRecognizer::k_max_frames) the shallowest object / array instance takes,
        // its required members' included; k_deep when it has none or none that fits.
        uint8_t need_object = k_deep, need_array = k_deep;
        uint8_t need = k_deep;  // the least over the node's forms (JsonSchema::need)
    };
    // The frames the shallowest instance of node i takes (a scalar, literal or free value: 1).
    uint8_t need(int32_t i) const { return i == k_any ? 1 : i == k_none ? k_deep : nodes_[size_t(i)].need; }
    uint8_t least_need(int32_t i) const;  // need(i) from the node's forms, for the compiler
    std::vector<Node> nodes_;
    int32_t root_ = k_any;
    std::vector<std::string> ignored_;
    std::shared_ptr<const Grammar> grammar_;
};

class SchemaRecognizer {
  public:
    static constexpr int k_max_frames = 24;  // values being read at once (nesting + 1)

    explicit SchemaRecognizer(const JsonSchema* schema) : schema_(schema) {}
    SchemaRecognizer(const SchemaRecognizer& o) { *this = o; }
    SchemaRecognizer& operator=(const SchemaRecognizer& o);  // copies the live frames only

    // Takes c if some instance of the schema continues the bytes so far with it; else false,
    // unchanged.
    bool push(uint8_t c);
    // The same, but leaves the recognizer unspecified when it refuses (for callers that copy).
    bool advance(uint8_t c);
    // Whether the bytes so far are a whole instance (whitespace may follow, nothing else).
    bool complete() const { return lex_.complete(); }
    // How many characters of plain string bytes (no quote, backslash or control byte, whole
    // UTF-8 characters) are taken here: inside a string whose content is free between
    // characters (its maxLength less what it holds; an additional property's key), else 0.
    uint32_t plain_room() const;

  private:
    enum class Kind : uint8_t { object, array, string, number, word, literal, any };
    struct Frame {
        uint64_t seen;     // object: bit i once keys[i] was written
        int32_t node;      // its schema node
        uint16_t count;    // array: items; string: characters; literal / key: bytes matched
        uint16_t lo, hi;   // literal / key being written: the candidates, a range of sorted texts
        uint16_t key;      // object: the property whose value comes next (k_other: an additional one)
        uint16_t members;  // object: keys written (saturating)
        uint8_t base;      // the syntax's depth where the value began
        Kind kind;
        bool number;                   // literal / any: the value is a number (it ends at the byte after it)
        bool integer;                  // number: no fraction or exponent
        JsonSchema::Range::Text text;  // number whose node has a range: what it reads so far
    };
    static constexpr uint16_t k_other = 0xFFFF;
    using Mode = JsonRecognizer::Mode;

    bool step(Mode before, bool in_key, bool mid_char, uint8_t depth, uint8_t c);
    bool begin(int32_t node, uint8_t c, uint8_t depth);
    bool key_byte(Frame& f, Mode before, bool mid_char, uint8_t c);
    // Whether object frame f may take key i next (not given yet, and its value fits in the frames
    // left), or a key of its additional properties.
    bool usable(const Frame& f, size_t key) const;
    bool other_keys(const Frame& f) const;
    // Whether object frame f has room for one more key under maxProperties (a required one or
    // another), the required keys not yet written still to come.
    bool room(const Frame& f, bool required) const;
    bool ended(const Frame& f) const;
    static bool is_number_mode(Mode m);

    JsonRecognizer lex_;
    const JsonSchema* schema_ = nullptr;
    uint8_t n_ = 0;
    Frame frames_[k_max_frames];
};

}  // namespace bigmoe
