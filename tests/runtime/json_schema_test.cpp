// Structured outputs: the schema recognizer (and the grammar that schemas with anyOf members
// beginning alike become) against a plain recursive validator written here. Every text it
// completes is an instance (random byte walks that must never reach a dead end); every instance
// written compactly is taken (random instances); corruptions it takes are instances; constrained
// generation over the real Qwen3 vocabulary ends in instances.
#include <gtest/gtest.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <tuple>

#include "mask_check.h"
#include "runtime/grammar.h"
#include "runtime/json_constraint.h"
#include "runtime/json_schema.h"
#include "testlib.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe {
namespace {

using Json = nlohmann::json;
using OJson = nlohmann::ordered_json;

// What reads a compiled schema's texts: its grammar when it has one, else SchemaRecognizer.
class Reader {
  public:
    explicit Reader(const JsonSchema& s) {
        if (s.grammar())
            g_.emplace(s.grammar());
        else
            s_.emplace(&s);
    }
    bool push(uint8_t c) {
        if (s_) return s_->push(c);
        GrammarRecognizer t = *g_;
        if (!t.push(c)) return false;
        *g_ = std::move(t);
        return true;
    }
    bool complete() const { return s_ ? s_->complete() : g_->complete(); }

  private:
    std::optional<SchemaRecognizer> s_;
    std::optional<GrammarRecognizer> g_;
};

// The formats enforced, as the shapes RFC 3339 (full-date, full-time, date-time) and RFC 4122
// give them (the calendar unchecked: 02-31 is a date here).
const std::map<std::string, std::string> k_format_shapes = {
    {"date", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))"},
    {"time", R"(([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d))"},
    {"date-time", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[tT])"
                  R"(([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)(\.\d{1,9})?([zZ]|[+-]([01]\d|2[0-3]):[0-5]\d))"},
    {"uuid", R"([0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})"},
    {"duration", R"(P(((\d+Y(\d+M(\d+D)?)?|\d+M(\d+D)?|\d+D)(T(\d+H(\d+M(\d+S)?)?|\d+M(\d+S)?|\d+S))?)|)"
                 R"(T(\d+H(\d+M(\d+S)?)?|\d+M(\d+S)?|\d+S)|\d+W))"},
    {"ipv4", R"((25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)){3})"},
    {"hostname", R"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)"},
    {"email", R"([A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+)"},
};

// Patterns the random schemas use, each with values it matches.
const std::map<std::string, std::vector<std::string>> k_pattern_values = {
    {"^[a-z]{1,4}$", {"a", "abcd", "zz"}},
    {"^\\d{3}-\\d{4}$", {"555-1234", "000-0000"}},
    {"^(ab|c)+$", {"ab", "cab", "abcc"}},
    {"x", {"x", "axb", "\"x\""}},
    {"^[^\"\\\\]*$", {"", "\xc3\xa9 \xe2\x98\xba", "a/b"}},
};

// A random text of a format's shape.
std::string random_format(const std::string& f, std::mt19937& rng) {
    auto num = [&](int lo, int hi, int width) {
        std::string t = std::to_string(lo + int(rng() % unsigned(hi - lo + 1)));
        return std::string(size_t(std::max(0, width - int(t.size()))), '0') + t;
    };
    const std::string date = num(0, 9999, 4) + "-" + num(1, 12, 2) + "-" + num(1, 31, 2);
    std::string time = num(0, 23, 2) + ":" + num(0, 59, 2) + ":" + num(0, 60, 2);
    if (rng() % 2) time += "." + num(0, 999999, 1 + int(rng() % 6));
    time +=
        rng() % 2 ? std::string(rng() % 2 ? "Z" : "z") : (rng() % 2 ? "+" : "-") + num(0, 23, 2) + ":" + num(0, 59, 2);
    if (f == "date") return date;
    if (f == "time") return time;
    if (f == "date-time") return date + (rng() % 2 ? "T" : "t") + time;
    if (f == "duration")
        return rng() % 3 == 0 ? "P" + num(1, 52, 1) + "W"
                              : "P" + num(0, 9, 1) + "Y" + num(1, 11, 1) + "MT" + num(0, 59, 1) + "S";
    if (f == "ipv4") return num(0, 255, 1) + "." + num(0, 255, 1) + "." + num(0, 255, 1) + "." + num(0, 255, 1);
    if (f == "hostname") return rng() % 2 ? "example.com" : "a-b" + num(0, 99, 1) + ".x";
    if (f == "email") return rng() % 2 ? "a.b+c@example.org" : "x_" + num(0, 99, 1) + "@d-1.co";
    static const char* hex = "0123456789abcdefABCDEF";
    std::string u;
    for (int i = 0; i < 36; ++i) u += i == 8 || i == 13 || i == 18 || i == 23 ? '-' : hex[rng() % 22];
    return u;
}

// The reference: whether value v is an instance of schema s (root: the document, for $ref).
// Written from the keywords' definitions, value by value, without any byte-level state.
class Validator {
  public:
    explicit Validator(const Json& root) : root_(root) {}

    bool valid(const Json& v, const Json& s) const {
        if (s.is_boolean()) return s.get<bool>();
        if (s.contains("$ref")) {
            const std::string r = s["$ref"];
            return valid(v, r == "#" ? root_ : root_.at(Json::json_pointer(r.substr(1))));
        }
        if (s.contains("allOf"))
            for (const Json& m : s["allOf"])
                if (!valid(v, m)) return false;
        for (const char* k : {"anyOf", "oneOf"}) {
            if (!s.contains(k)) continue;
            int hits = 0;
            for (const Json& m : s[k]) hits += valid(v, m);
            if (hits == 0 || (std::string(k) == "oneOf" && hits > 1)) return false;
        }
        if (s.contains("const") && v != s["const"]) return false;
        if (s.contains("enum") && std::find(s["enum"].begin(), s["enum"].end(), v) == s["enum"].end()) return false;
        if (s.contains("type")) {
            const Json& t = s["type"];
            bool any = false;
            for (const Json& name : t.is_array() ? t : Json::array({t})) any = any || has_type(v, name);
            if (!any) return false;
        }
        if (v.is_object()) {
            if (v.size() < s.value("minProperties", size_t(0)) || v.size() > s.value("maxProperties", SIZE_MAX))
                return false;
            const Json props = s.value("properties", Json::object());
            for (const Json& r : s.value("required", Json::array()))
                if (!v.contains(r.get<std::string>())) return false;
            for (const auto& [k, x] : v.items()) {
                if (props.contains(k)) {
                    if (!valid(x, props[k])) return false;
                } else if (s.contains("additionalProperties") ? !valid(x, s["additionalProperties"])
                                                              : s.contains("properties")) {
                    return false;  // listed properties close an object unless additionalProperties opens it
                }
            }
        }
        if (v.is_array()) {
            if (v.size() < s.value("minItems", size_t(0)) || v.size() > s.value("maxItems", SIZE_MAX)) return false;
            const Json prefix = s.value("prefixItems", Json::array());
            for (size_t i = 0; i < v.size(); ++i) {
                if (i < prefix.size()) {
                    if (!valid(v[i], prefix[i])) return false;
                } else if (s.contains("items") && !valid(v[i], s["items"])) {
                    return false;
                }
            }
        }
        if (v.is_number()) {  // small values in these tests: doubles compare them exactly
            const double x = v.get<double>();
            auto bound = [&](const char* k, double* b) {
                if (!s.contains(k) || !s[k].is_number()) return false;
                *b = s[k].get<double>();
                return true;
            };
            auto draft4 = [&](const char* k) { return s.contains(k) && s[k].is_boolean() && s[k].get<bool>(); };
            double b;
            if (bound("minimum", &b) && (x < b || (x == b && draft4("exclusiveMinimum")))) return false;
            if (bound("maximum", &b) && (x > b || (x == b && draft4("exclusiveMaximum")))) return false;
            if (bound("exclusiveMinimum", &b) && x <= b) return false;
            if (bound("exclusiveMaximum", &b) && x >= b) return false;
        }
        if (v.is_string() && s.contains("pattern") &&
            !std::regex_search(testing::code_points(v.get<std::string>()),
                               std::wregex(testing::code_points(s["pattern"].get<std::string>()))))
            return false;
        if (v.is_string() && s.contains("format") && k_format_shapes.count(s["format"])) {
            if (!std::regex_match(v.get<std::string>(), std::regex(k_format_shapes.at(s["format"])))) return false;
        }
        if (v.is_string()) {
            const std::string& str = v.get_ref<const std::string&>();
            size_t chars = 0;
            for (unsigned char c : str) chars += (c & 0xC0) != 0x80;
            if (chars < s.value("minLength", size_t(0)) || chars > s.value("maxLength", SIZE_MAX)) return false;
        }
        return true;
    }

  private:
    static bool has_type(const Json& v, const Json& name) {
        const std::string t = name;
        if (t == "object") return v.is_object();
        if (t == "array") return v.is_array();
        if (t == "string") return v.is_string();
        if (t == "number") return v.is_number();
        if (t == "integer")  // a number without a fraction (beyond 64 bits nlohmann holds a double)
            return v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
        if (t == "boolean") return v.is_boolean();
        if (t == "null") return v.is_null();
        return false;
    }
    const Json& root_;
};

// Schemas that people send, each exercising some keywords.
std::vector<Json> test_schemas() {
    return {
        Json::parse(R"({"type": "object", "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 12},
            "age": {"type": "integer"},
            "score": {"type": "number", "description": "0 to 1", "minimum": 0, "maximum": 1},
            "site": {"type": "string", "format": "uri"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "minItems": 1, "maxItems": 3},
            "status": {"enum": ["active", "inactive", "act", "banned"]},
            "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": ["string", "null"]}},
                        "required": ["city"], "additionalProperties": false}},
            "required": ["name", "age", "status"], "additionalProperties": false})"),
        Json::parse(R"({"$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "integer"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["value"], "additionalProperties": false}},
            "type": "object", "properties": {"tree": {"$ref": "#/$defs/node"}}, "required": ["tree"]})"),
        Json::parse(R"({"type": "object", "properties": {
            "v": {"anyOf": [{"type": "string"}, {"type": "null"}, {"type": "integer"}, {"type": "number"}]},
            "pair": {"type": "array", "prefixItems": [{"type": "boolean"}, {"const": {"k": [1, 2.5, "x"]}}], "items": false},
            "mixed": {"enum": [{"a": 1}, [1, 2], "x", null, true, 1.5, -3, 10, 1]},
            "a\"b": {"type": "string"}, "\u00e9t\u00e9": {"type": "boolean"}, "line\nbreak": {"const": "\u00e9\n"}},
            "required": ["v", "pair"], "additionalProperties": {"type": "integer"}})"),
        Json::parse(R"({"type": "object", "properties": {"steps": {"type": "array", "items": {
            "oneOf": [{"type": "object", "properties": {"op": {"const": "add"}, "n": {"type": "integer"}},
                       "required": ["op", "n"], "additionalProperties": false},
                      {"type": "string", "enum": ["stop", "skip"]}]}}, "note": true},
            "required": ["steps"]})"),
        Json::parse(R"({"allOf": [{"type": "object", "properties": {"x": {}, "y": {"type": "array"}},
            "additionalProperties": false}]})"),
        // recursion into the root, and a root that is itself a $ref whose target recurses to it
        Json::parse(R"({"type": "object", "properties": {"name": {"type": "string", "maxLength": 3},
            "kids": {"type": "array", "items": {"$ref": "#"}, "maxItems": 2}},
            "required": ["name"], "additionalProperties": false})"),
        Json::parse(R"({"$ref": "#/$defs/r", "$defs": {"r": {"type": "object", "properties": {
            "n": {"type": "integer"}, "self": {"$ref": "#"}}, "required": ["n"], "additionalProperties": false}}})"),
        // anyOf members that begin alike (read by a grammar): several tools' calls, one tool's
        // name a prefix of another's
        Json::parse(R"({"anyOf": [
            {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": {"type": "object",
                "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
                "required": ["city"], "additionalProperties": false}},
             "required": ["name", "arguments"], "additionalProperties": false},
            {"type": "object", "properties": {"name": {"const": "get_time"}, "arguments": {"type": "object",
                "properties": {"zone": {"type": "string"}, "utc": {"type": "boolean"},
                    "at": {"type": "string", "format": "date-time"}}, "additionalProperties": false}},
             "required": ["name", "arguments"], "additionalProperties": false},
            {"type": "object", "properties": {"name": {"const": "get_weather_history"}, "arguments": {"type": "object",
                "properties": {"days": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 1, "maximum": 31}, {"type": "string"}],
                    "items": {"type": "boolean"}, "minItems": 1, "maxItems": 4}},
                "required": ["days"], "additionalProperties": false}},
             "required": ["name", "arguments"], "additionalProperties": false}]})"),
        // a discriminated union, objects of optional keys beside open ones, arrays alike
        Json::parse(R"({"type": "object", "properties": {
            "shapes": {"type": "array", "maxItems": 3, "items": {"oneOf": [
                {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "number"},
                    "id": {"type": "string", "format": "uuid"}},
                 "required": ["kind", "r"], "additionalProperties": false},
                {"type": "object", "properties": {"kind": {"const": "rect"}, "w": {"type": "integer", "exclusiveMinimum": 0},
                    "h": {"type": "integer", "minimum": -40, "maximum": 125}, "label": {"type": "string", "minLength": 2, "maxLength": 5}},
                 "required": ["kind", "w", "h"], "additionalProperties": false}]}},
            "meta": {"anyOf": [
                {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string", "pattern": "^(ab|c)+$"}, "c": {"type": "null"}},
                 "additionalProperties": false},
                {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"],
                 "additionalProperties": {"type": "boolean"}}]},
            "pairs": {"anyOf": [
                {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "items": false},
                {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2}]}},
            "required": ["shapes"], "additionalProperties": false})"),
    };
}

// The schema with additional properties refused wherever it names properties (also where
// additionalProperties allows them): a random walk rarely spells a required name among free keys.
Json closed(Json s) {
    if (s.is_object()) {
        for (auto& [k, v] : s.items()) v = closed(v);
        if (s.contains("properties")) s["additionalProperties"] = false;
    } else if (s.is_array()) {
        for (Json& v : s) v = closed(v);
    }
    return s;
}

// The ASCII bytes of every property name in a schema.
void names_of(const Json& s, std::set<uint8_t>* bytes) {
    if (s.is_object()) {
        if (s.contains("properties") && s["properties"].is_object())
            for (const auto& [k, v] : s["properties"].items())
                for (char c : k)
                    if (uint8_t(c) < 0x80) bytes->insert(uint8_t(c));
        for (const auto& [k, v] : s.items()) names_of(v, bytes);
    } else if (s.is_array()) {
        for (const Json& v : s) names_of(v, bytes);
    }
}

// Reads a text byte by byte; -1 if every byte was taken and the instance is whole, else the
// index of the first refused byte (or the length when it is taken but unfinished).
ptrdiff_t read_text(const JsonSchema& s, const std::string& text) {
    Reader r(s);
    for (size_t i = 0; i < text.size(); ++i)
        if (!r.push(uint8_t(text[i]))) return ptrdiff_t(i);
    return r.complete() ? -1 : ptrdiff_t(text.size());
}

// The value nlohmann reads; nullopt if it refuses the text. Numbers too large for a double
// ("number overflow", a limit of that parser, not of JSON) read as null.
std::optional<Json> parse(const std::string& text) {
    try {
        return Json::parse(text);
    } catch (const Json::out_of_range& e) {
        if (e.id == 406) return Json(nullptr);
        return std::nullopt;
    } catch (const Json::exception&) {
        return std::nullopt;
    }
}

// A random instance of schema s (the same keywords as the validator), an object's keys in the
// order a schema's grammar writes them: the required ones as listed, then the others by name.
OJson random_instance(const Json& root, const Json& s, std::mt19937& rng, int depth) {
    if (s.is_boolean() || s.empty()) {
        const int k = int(rng() % 4);
        return k == 0   ? OJson(nullptr)
               : k == 1 ? OJson(int(rng() % 100))
               : k == 2 ? OJson("free")
                        : OJson::array({1, "b"});
    }
    if (s.contains("$ref")) {
        const std::string r = s["$ref"];
        return random_instance(root, r == "#" ? root : root.at(Json::json_pointer(r.substr(1))), rng, depth + 1);
    }
    if (s.contains("allOf")) return random_instance(root, s["allOf"][0], rng, depth);
    for (const char* k : {"anyOf", "oneOf"})
        if (s.contains(k)) return random_instance(root, s[k][rng() % s[k].size()], rng, depth);
    if (s.contains("const")) return OJson::parse(s["const"].dump());
    if (s.contains("enum")) return OJson::parse(s["enum"][rng() % s["enum"].size()].dump());
    std::string type = "object";
    if (s.contains("type")) {
        const Json& t = s["type"];
        type = t.is_array() ? t[rng() % t.size()].get<std::string>() : t.get<std::string>();
    }
    static const std::vector<std::string> words = {"a", "é", "☺ x", "\"q\"", "back\\slash", "tab\t", "😀", "0"};
    if (type == "object") {
        OJson o = OJson::object();
        const Json props = s.value("properties", Json::object());
        const Json req = s.value("required", Json::array());
        for (const Json& k : req) {
            const std::string name = k;
            o[name] = random_instance(
                root, props.contains(name) ? props[name] : s.value("additionalProperties", Json(true)), rng, depth + 1);
        }
        std::vector<std::string> rest;
        for (const auto& [k, sub] : props.items())
            if (std::find(req.begin(), req.end(), k) == req.end()) rest.push_back(k);
        std::sort(rest.begin(), rest.end(),
                  [](const std::string& a, const std::string& b) { return Json(a).dump() < Json(b).dump(); });
        for (const std::string& k : rest)
            if (depth < 3 && rng() % 2) o[k] = random_instance(root, props[k], rng, depth + 1);
        const Json add = s.value("additionalProperties", Json(!s.contains("properties")));
        if (!(add.is_boolean() && !add.get<bool>()) && rng() % 3 == 0)
            o["extra" + std::to_string(rng() % 10)] = random_instance(root, add, rng, depth + 1);
        return o;
    }
    if (type == "array") {
        OJson a = OJson::array();
        const Json prefix = s.value("prefixItems", Json::array());
        const size_t lo = s.value("minItems", size_t(0));
        size_t hi = std::min<size_t>(s.value("maxItems", size_t(4)), depth < 3 ? 4 : lo);
        const Json items = s.value("items", Json(true));
        if (items.is_boolean() && !items.get<bool>()) hi = std::min(hi, prefix.size());
        const size_t n = std::max(lo, hi > lo ? lo + rng() % (hi - lo + 1) : lo);
        for (size_t i = 0; i < n; ++i)
            a.push_back(random_instance(root, i < prefix.size() ? prefix[i] : items, rng, depth + 1));
        return a;
    }
    if (type == "string" && s.contains("pattern")) {
        const std::vector<std::string>& values = k_pattern_values.at(s["pattern"]);
        return values[rng() % values.size()];
    }
    if (type == "string" && s.contains("format") && k_format_shapes.count(s["format"]))
        return random_format(s["format"], rng);
    if (type == "string") {
        const size_t lo = s.value("minLength", size_t(0)), hi = s.value("maxLength", size_t(8));
        std::string str;
        size_t chars = 0;
        while (chars < lo || (chars < hi && rng() % 3)) {
            const std::string& w = words[rng() % words.size()];
            size_t wc = 0;
            for (unsigned char c : w) wc += (c & 0xC0) != 0x80;
            if (chars + wc > hi) {
                str += "z";
                ++chars;
                continue;
            }
            str += w;
            chars += wc;
        }
        return str;
    }
    if (type == "integer") {  // within its bounds (the schemas here give integers)
        int64_t lo = -1000, hi = 1000;
        if (s.contains("minimum")) lo = std::max(lo, s["minimum"].get<int64_t>());
        if (s.contains("exclusiveMinimum")) lo = std::max(lo, s["exclusiveMinimum"].get<int64_t>() + 1);
        if (s.contains("maximum")) hi = std::min(hi, s["maximum"].get<int64_t>());
        if (s.contains("exclusiveMaximum")) hi = std::min(hi, s["exclusiveMaximum"].get<int64_t>() - 1);
        return lo + int64_t(rng() % uint64_t(hi - lo + 1));
    }
    if (type == "number") {  // eighths (written without an exponent) within its bounds
        double lo = -125, hi = 125;
        if (s.contains("minimum")) lo = std::max(lo, s["minimum"].get<double>());
        if (s.contains("maximum")) hi = std::min(hi, s["maximum"].get<double>());
        const int a = int(std::ceil(lo * 8)), b = int(std::floor(hi * 8));
        const int k = a + int(rng() % unsigned(b - a + 1));
        return k % 8 == 0 && rng() % 2 ? OJson(k / 8) : OJson(double(k) / 8);
    }
    if (type == "boolean") return rng() % 2 == 0;
    return nullptr;
}

TEST(JsonSchema, refuses_what_it_cannot_enforce_by_name) {
    const std::vector<std::pair<const char*, const char*>> cases = {
        {R"j({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(?=x)"}}})j", "lookaround"},
        {R"({"anyOf": [{"type": "object", "properties": {"a": {"type": "number", "minimum": 0}}},
                       {"type": "object", "properties": {"b": {"type": "null"}}}]})",
         "minimum / maximum of a number"},
        {R"({"type": "object", "properties": {"a": {"type": "number", "minimum": 1, "exclusiveMaximum": 1}}})",
         "no number"},
        {R"({"type": "object", "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 2}}})", "no integer"},
        {R"({"type": "object", "properties": {"a": {"type": "integer", "exclusiveMinimum": 2, "maximum": 2.5}}})",
         "no integer"},
        {R"({"type": "object", "properties": {"a": {"type": "integer", "minimum": "1"}}})", "must be a number"},
        {R"({"type": "object", "properties": {"a": {"type": "integer", "maximum": 1e30}}})", "64-bit"},
        {R"({"type": "string"})", "must describe a JSON object"},
        {R"({"type": ["object", "null"]})", "must describe a JSON object"},
        {R"({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})", "names nothing"},
        {R"({"type": "object", "properties": {"a": {"$ref": "http://example.com/s.json"}}})", "inside this schema"},
        {R"({"type": "object", "properties": {"a": {"type": "array", "minItems": 3, "maxItems": 2}}})", "minItems"},
        {R"({"type": "object", "properties": {"a": false}})", "takes no value"},
        {R"({"type": "object", "required": ["b"], "additionalProperties": false})", "\"b\" is required"},
        {R"({"type": "object", "properties": {"a": {"enum": []}}})", "enum"},
        {R"({"type": "object", "properties": {"a": {"type": "text"}}})", "unknown type"},
        {R"({"type": "object", "properties": {"a": {"allOf": [{"type": "string"}, {"maxLength": 3}]}}})", "allOf"},
        {R"({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "type": "object",
            "properties": {"x": {"$ref": "#/$defs/a"}}})",
         "leads back to itself"},
        {R"([1, 2])", "an object or a boolean"},
    };
    for (const auto& [text, want] : cases) {
        auto s = JsonSchema::compile(Json::parse(text));
        ASSERT_FALSE(s.ok()) << text;
        EXPECT_NE(s.error().message.find(want), std::string::npos) << text << ": " << s.error().message;
    }
    // lenient: what cannot be enforced is skipped and listed, the rest enforced
    auto lenient = JsonSchema::compile(Json::parse(R"j({"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^(?=x)", "maxLength": 2},
        "b": {"anyOf": [{"type": "object", "properties": {"x": {}}}, {"type": "object", "properties": {"y": {}}}]},
        "c": {"type": "number", "minimum": 0}}, "required": ["c"]})j"),
                                       true);
    ASSERT_TRUE(lenient.ok()) << lenient.error().message;
    const std::vector<std::string> skipped = {"#/properties/a: pattern", "(grammar) minimum / maximum of a number"};
    EXPECT_EQ((*lenient)->ignored(), skipped);
    ASSERT_TRUE((*lenient)->grammar());  // b's members begin alike
    EXPECT_EQ(read_text(**lenient, R"({"c":-4,"a":"yy","b":{"y":[1]}})"), -1);
    EXPECT_GE(read_text(**lenient, R"({"c":-4,"b":{"z":1}})"), 0);  // neither member takes z
    EXPECT_GE(read_text(**lenient, R"({"a":"yyy","c":1})"), 0);     // maxLength still holds
    EXPECT_GE(read_text(**lenient, R"({"a":"y"})"), 0);             // and required
    // sizes that would make compiling a request slow are refused
    Json many = Json::array();
    for (int i = 0; i < 1025; ++i) many.push_back({{"const", i}});
    auto s = JsonSchema::compile({{"type", "object"}, {"properties", {{"a", {{"anyOf", many}}}}}});
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.error().message.find("more than 1024 members"), std::string::npos) << s.error().message;
    // a large enum: every value taken, nothing else, and a mask over it stays cheap (the
    // candidates are narrowed by binary search)
    Json big = Json::array();
    for (int i = 0; i < 60000; ++i) big.push_back("v" + std::to_string(i * 7));
    auto large = JsonSchema::compile({{"type", "object"}, {"properties", {{"a", {{"enum", big}}}}}});
    ASSERT_TRUE(large.ok()) << large.error().message;
    for (int i : {0, 1, 12345, 59999}) EXPECT_EQ(read_text(**large, "{\"a\":\"v" + std::to_string(i * 7) + "\"}"), -1);
    for (const char* t : {R"({"a":"v1"})", R"({"a":"v"})", R"({"a":"v4199994"})", R"({"a":"w"})"})
        EXPECT_GE(read_text(**large, t), 0) << t;
    many.erase(many.begin() + 1000, many.end());  // 1000 enums merge into one
    auto merged = JsonSchema::compile({{"type", "object"}, {"properties", {{"a", {{"anyOf", many}}}}}});
    ASSERT_TRUE(merged.ok()) << merged.error().message;
    EXPECT_EQ(read_text(**merged, R"({"a":999})"), -1);
    EXPECT_GE(read_text(**merged, R"({"a":1000})"), 0);
}

// anyOf members that begin alike make the schema a grammar; the others do not. Its texts: keys in
// the grammar's order, a member chosen by a value late in the text, whitespace between tokens.
TEST(JsonSchema, members_that_begin_alike_are_read_by_a_grammar) {
    const std::vector<Json> schemas = test_schemas();
    for (size_t si = 0; si < schemas.size(); ++si) {
        auto s = JsonSchema::compile(schemas[si]);
        ASSERT_TRUE(s.ok()) << s.error().message;
        EXPECT_EQ(bool((*s)->grammar()), si >= 7) << si;
    }
    auto tools = JsonSchema::compile(schemas[7]);
    for (const char* t : {R"({"name":"get_weather","arguments":{"city":"Paris"}})",
                          R"({"name":"get_weather","arguments":{"city":"Paris","unit":"f"}})",
                          R"({"name":"get_time","arguments":{}})", R"({"name":"get_time","arguments":{"utc":true}})",
                          R"({"name":"get_time","arguments":{"utc":true,"zone":"x"}})",
                          R"({"name":"get_weather_history","arguments":{"days":[3,"x",true,false]}})",
                          "{\n  \"name\": \"get_time\",\n  \"arguments\": { \"zone\" : \"UTC\" }\n}"})
        EXPECT_EQ(read_text(**tools, t), -1) << t;
    for (const char* t : {
             R"({"arguments":{"city":"Paris"},"name":"get_weather"})",        // keys out of the grammar's order
             R"({"name":"get_time","arguments":{"city":"Paris"}})",           // another tool's argument
             R"({"name":"get_weather","arguments":{"unit":"c"}})",            // its required argument missing
             R"({"name":"get_weather","arguments":{"city":"Parisienne1"}})",  // maxLength
             R"({"name":"get_weather_histor","arguments":{}})",               // no such tool
             R"({"name":"get_weather_history","arguments":{"days":[1,"a",true,true,true]}})",  // maxItems
             R"({"name":"get_time","arguments":{"zone":"CET","utc":false}})",  // optional keys out of order
             R"({"name":"get_time","arguments":{}} )",                         // nothing after the object
             "{\"name\":  \"get_time\",\"arguments\":{}}",                     // two spaces
         })
        EXPECT_GE(read_text(**tools, t), 0) << t;
    // an additional member never takes a listed key (as SchemaRecognizer refuses it), so it can
    // neither repeat a listed member nor give one a value of another type
    auto open = JsonSchema::compile(Json::parse(R"({"anyOf": [
        {"type": "object", "properties": {"a": {"type": "string"}, "ab": {"type": "integer"},
         "\u00e9": {"type": "integer"}}, "additionalProperties": {"type": "integer"}},
        {"type": "object", "properties": {"z": {"type": "integer"}}}]})"));
    ASSERT_TRUE(open.ok()) << open.error().message;
    ASSERT_TRUE((*open)->grammar());
    for (const char* t : {R"({"a":"x","ab":1,"é":2,"b":3})", R"({"abc":1,"":2,"éé":3,"b":4})", R"({"ab":1})",
                          R"({"é":1})", R"({"z":1})", R"({"b":1})"})
        EXPECT_EQ(read_text(**open, t), -1) << t;
    for (const char* t : {R"({"a":"x","a":"y"})", R"({"ab":1,"b":2,"ab":3})", R"({"b":2,"é":1})", R"({"a":1})"})
        EXPECT_GE(read_text(**open, t), 0) << t;
    // counts a grammar leaves out: refused by name when strict, listed when lenient
    const Json big = Json::parse(R"({"anyOf": [
        {"type": "object", "properties": {"k": {"const": 1}, "v": {"type": "string", "maxLength": 1000}}},
        {"type": "object", "properties": {"k": {"const": 2}}}]})");
    auto strict = JsonSchema::compile(big);
    ASSERT_FALSE(strict.ok());
    EXPECT_NE(strict.error().message.find("minLength / maxLength"), std::string::npos) << strict.error().message;
    auto lenient = JsonSchema::compile(big, true);
    ASSERT_TRUE(lenient.ok()) << lenient.error().message;
    EXPECT_EQ((*lenient)->ignored(), std::vector<std::string>{"(grammar) minLength / maxLength counts above 256"});
    EXPECT_EQ(read_text(**lenient, "{\"k\":1,\"v\":\"" + std::string(1500, 'x') + "\"}"), -1);
    // counts that together need more rules than a grammar holds: left out when lenient
    Json wide = {{"type", "object"}, {"properties", {{"k", {{"const", 1}}}}}, {"required", {"k"}}};
    for (int i = 0; i < 20; ++i) wide["properties"]["s" + std::to_string(i)] = {{"type", "string"}, {"maxLength", 250}};
    const Json huge = {{"anyOf", {wide, {{"type", "object"}, {"properties", {{"k", {{"const", 2}}}}}}}}};
    auto huge_strict = JsonSchema::compile(huge);
    ASSERT_FALSE(huge_strict.ok());
    EXPECT_NE(huge_strict.error().message.find("too large"), std::string::npos) << huge_strict.error().message;
    auto huge_lenient = JsonSchema::compile(huge, true);
    ASSERT_TRUE(huge_lenient.ok()) << huge_lenient.error().message;
    EXPECT_EQ((*huge_lenient)->ignored(),
              std::vector<std::string>{"(grammar) minLength / maxLength (too many rules with them)"});
    EXPECT_EQ(read_text(**huge_lenient, "{\"k\":1,\"s3\":\"" + std::string(300, 'x') + "\"}"), -1);
    EXPECT_GE(read_text(**huge_lenient, "{\"k\":3}"), 0);
}

// Recursion deeper than the reader's frames: a key whose value would nest past them is refused
// before it is begun (the key, or the comma before it), so a text never reaches a dead end; a
// schema whose every instance nests too deep is refused.
TEST(JsonSchema, recursion_stops_where_the_frames_end) {
    auto s = JsonSchema::compile(Json::parse(R"({"type": "object", "properties": {"n": {"type": "integer"},
        "self": {"$ref": "#"}, "list": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["n"], "additionalProperties": false})"));
    ASSERT_TRUE(s.ok()) << s.error().message;
    ASSERT_FALSE((*s)->grammar());
    // one level each: an object holding the next as a property, as a list's first item, as its
    // second; and what closes a level
    const std::vector<std::pair<std::string, std::string>> levels = {
        {"{\"n\":1,\"self\":", "}"}, {"{\"n\":1,\"list\":[", "]}"}, {"{\"n\":1,\"list\":[{\"n\":2},", "]}"}};
    for (const auto& [open, close] : levels) {
        SchemaRecognizer r(s->get());
        std::string text;
        int whole = 0;  // levels taken whole
        for (bool on = true; on && whole < 100;) {
            for (char ch : open) {
                if (!(on = r.push(uint8_t(ch)))) break;
                text += ch;
            }
            whole += on;
        }
        EXPECT_LT(whole, int(SchemaRecognizer::k_max_frames)) << open;
        int takes = 0;  // where the levels stop, the text goes on (not by whitespace alone)
        for (int c = 0; c < 256; ++c) {
            SchemaRecognizer t = r;
            takes += !std::isspace(c) && t.push(uint8_t(c));
        }
        EXPECT_GT(takes, 0) << "a dead end after " << text;
        // a level less, then an innermost object and the levels closed: an instance
        std::string all;
        for (int l = 0; l + 1 < whole; ++l) all += open;
        all += "{\"n\":0}";
        for (int l = 0; l + 1 < whole; ++l) all += close;
        EXPECT_EQ(read_text(**s, all), -1) << all;
    }
    auto endless = JsonSchema::compile(Json::parse(R"({"type": "object", "properties": {"self": {"$ref": "#"}},
        "required": ["self"]})"));
    ASSERT_FALSE(endless.ok());
    EXPECT_NE(endless.error().message.find("nested less than"), std::string::npos) << endless.error().message;
}

TEST(JsonSchema, takes_instances_and_refuses_the_rest) {
    auto s = JsonSchema::compile(test_schemas()[0]);
    ASSERT_TRUE(s.ok()) << s.error().message;
    for (const char* t : {R"({"name":"Al","age":30,"status":"active"})",
                          R"( { "status" : "act" , "age" : -2 , "name" : "é😀" , "tags" : [ "ab\"c" ] } )",
                          R"({"name":"x","age":0,"status":"banned","address":{"city":"","zip":null},"score":0.001})"})
        EXPECT_EQ(read_text(**s, t), -1) << t;
    for (const char* t : {
             R"({"name":"Al","age":30})",                                             // a required key missing
             R"({"name":"","age":30,"status":"active"})",                             // minLength
             R"({"name":"Al","age":30.5,"status":"active"})",                         // not an integer
             R"({"name":"Al","age":30,"status":"actor"})",                            // not in the enum
             R"({"name":"Al","age":30,"status":"active","x":1})",                     // no additional properties
             R"({"name":"Al","name":"Bo","age":30,"status":"active"})",               // a key twice
             R"({"name":"Al","age":30,"status":"active","tags":[]})",                 // minItems
             R"({"name":"Al","age":30,"status":"active","tags":["a","b","c","d"]})",  // maxItems
             R"({"name":"Al","age":"30","status":"active"})",                         // a string for an integer
             R"({"name":"Al","age":30,"status":"active","address":{"zip":"1"}})",     // nested required
             R"({"name":"abcdefghijklm","age":30,"status":"active"})",                // maxLength
         })
        EXPECT_GE(read_text(**s, t), 0) << t;
    // listed properties close an object unless additionalProperties opens it
    auto shut = JsonSchema::compile(Json::parse(R"({"properties": {"a": {"type": "integer"}}})"));
    auto open = JsonSchema::compile(
        Json::parse(R"({"properties": {"a": {"type": "integer"}}, "additionalProperties": {"type": "string"}})"));
    auto free = JsonSchema::compile(Json::parse(R"({"type": "object"})"));
    auto empty = JsonSchema::compile(Json::object());  // any value: any object here
    ASSERT_TRUE(shut.ok() && open.ok() && free.ok() && empty.ok());
    EXPECT_EQ(read_text(**empty, R"({"a":[1,{"b":null}],"":"x"})"), -1);
    EXPECT_EQ(read_text(**empty, R"([1])"), 0);
    EXPECT_GE(read_text(**shut, R"({"a":1,"b":"x"})"), 0);
    EXPECT_EQ(read_text(**open, R"({"a":1,"b":"x"})"), -1);
    EXPECT_GE(read_text(**open, R"({"a":1,"b":2})"), 0);
    EXPECT_EQ(read_text(**free, R"({"a":[1,{"b":null}],"":"x"})"), -1);
}

// Integer bounds, read by SchemaRecognizer and by a grammar (the same property in an anyOf whose
// members begin alike): every number text of up to 4 bytes is taken as a prefix exactly when
// some integer in the range begins with it, and whole exactly when it is one; near the 64-bit
// ends, the ends themselves and the texts past them.
TEST(JsonSchema, integer_bounds_take_exactly_the_integers_between) {
    using Bound = std::optional<int64_t>;
    struct Case {
        Json bounds;
        Bound lo, hi;
    };
    std::vector<Case> cases = {
        {{{"minimum", 0}}, 0, {}},
        {{{"minimum", 1}, {"maximum", 31}}, 1, 31},
        {{{"minimum", -40}, {"maximum", 125}}, -40, 125},
        {{{"exclusiveMinimum", 0}}, 1, {}},
        {{{"maximum", -7}}, {}, -7},
        {{{"exclusiveMaximum", 100}}, {}, 99},
        {{{"minimum", 95}, {"maximum", 105}}, 95, 105},
        {{{"minimum", 7}, {"maximum", 7}}, 7, 7},
        {{{"minimum", 0}, {"maximum", 0}}, 0, 0},
        {{{"minimum", -1.5}, {"maximum", 19.9}}, -1, 19},
        {{{"exclusiveMinimum", -1.5}, {"exclusiveMaximum", 20}}, -1, 19},
        {{{"minimum", 10}, {"exclusiveMinimum", true}, {"maximum", 20}, {"exclusiveMaximum", true}}, 11, 19},
        {{{"minimum", 300}, {"maximum", 5000}}, 300, 5000},
        {{{"minimum", -999}, {"maximum", -10}}, -999, -10},
        {{{"minimum", 5}, {"exclusiveMinimum", 8}}, 9, {}},  // the tighter of two
    };
    std::mt19937 rng(testing::fresh_seed());
    for (int i = 0; i < 6; ++i) {
        const int64_t lo = int64_t(rng() % 601) - 300, hi = lo + int64_t(rng() % 2000);
        Case c{Json::object(), {}, {}};
        if (i % 3 != 1) {
            c.bounds["minimum"] = lo;
            c.lo = lo;
        }
        if (i % 3 != 2) {
            c.bounds["maximum"] = hi;
            c.hi = hi;
        }
        cases.push_back(c);
    }
    // the number texts of up to 4 bytes: a sign or not, then digits
    std::vector<std::string> texts = {"-"}, digits = {""};
    for (size_t i = 0; i < digits.size(); ++i)
        if (digits[i].size() < 4)
            for (char d = '0'; d <= '9'; ++d) {
                digits.push_back(digits[i] + d);
                texts.push_back(digits.back());
                if (digits.back().size() < 4) texts.push_back("-" + digits.back());
            }
    auto integer = [](const Json& bounds) {
        Json v = {{"type", "integer"}};
        v.update(bounds);
        return v;
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.bounds.dump());
        const Json value = integer(c.bounds);
        const Json plain = {{"type", "object"}, {"properties", {{"v", value}}}, {"required", {"v"}}};
        const Json alike = {{"anyOf", {plain, {{"type", "object"}, {"properties", {{"w", {{"type", "null"}}}}}}}}};
        auto a = JsonSchema::compile(plain), b = JsonSchema::compile(alike);
        ASSERT_TRUE(a.ok()) << a.error().message;
        ASSERT_TRUE(b.ok()) << b.error().message;
        ASSERT_FALSE((*a)->grammar());
        ASSERT_TRUE((*b)->grammar());
        // the reference: the texts of the integers in range (a window of them where a side is open)
        std::set<std::string> whole, prefixes;
        for (int64_t v = c.lo.value_or(-100000); v <= c.hi.value_or(100000); ++v) {
            const std::string t = std::to_string(v);
            if (t.size() <= 4) whole.insert(t);
            for (size_t k = 1; k <= std::min<size_t>(4, t.size()); ++k) prefixes.insert(t.substr(0, k));
        }
        for (const auto* s : {a->get(), b->get()}) {
            for (const std::string& t : texts) {
                const ptrdiff_t at = read_text(*s, "{\"v\":" + t);
                EXPECT_EQ(at == ptrdiff_t(t.size()) + 5, prefixes.count(t) == 1) << t;
                EXPECT_EQ(read_text(*s, "{\"v\":" + t + "}") == -1, whole.count(t) == 1) << t;
            }
        }
    }
    // enum values beside bounds: the numbers outside them are left out
    auto e = JsonSchema::compile(Json::parse(
        R"({"type": "object", "properties": {"v": {"enum": [1, 2.5, 7, "x", 12], "minimum": 2, "exclusiveMaximum": 12}}})"));
    ASSERT_TRUE(e.ok()) << e.error().message;
    for (const char* v : {"2.5", "7", "\"x\""}) EXPECT_EQ(read_text(**e, std::string("{\"v\":") + v + "}"), -1) << v;
    for (const char* v : {"1", "12"}) EXPECT_GE(read_text(**e, std::string("{\"v\":") + v + "}"), 0) << v;
    auto none = JsonSchema::compile(Json::parse(R"({"properties": {"v": {"enum": [1, 2], "minimum": 3}}})"));
    ASSERT_FALSE(none.ok());
    EXPECT_NE(none.error().message.find("no enum value"), std::string::npos) << none.error().message;
    // the 64-bit ends, and magnitudes past every bound where a side is open
    const int64_t top = INT64_MAX, bottom = INT64_MIN;
    const std::vector<std::tuple<Json, const char*, bool>> ends = {
        {{{"maximum", top}}, "9223372036854775807", true},
        {{{"maximum", top}}, "9223372036854775808", false},
        {{{"maximum", top}}, "-99999999999999999999999", true},
        {{{"minimum", bottom}}, "-9223372036854775808", true},
        {{{"minimum", bottom}}, "-9223372036854775809", false},
        {{{"minimum", bottom}}, "99999999999999999999999", true},
        {{{"minimum", top - 1}, {"maximum", top}}, "9223372036854775806", true},
        {{{"minimum", top - 1}, {"maximum", top}}, "9223372036854775805", false},
        {{{"minimum", top - 1}, {"maximum", top}}, "922337203685477580", false},
        {{{"minimum", bottom}, {"maximum", bottom + 1}}, "-9223372036854775807", true},
        {{{"minimum", 0}}, "123456789012345678901234567890", true},
        {{{"maximum", 0}}, "-123456789012345678901234567890", true},
        {{{"maximum", 0}}, "-0", false},
        {{{"minimum", -5}}, "-0", false},
    };
    for (const auto& [bounds, text, in] : ends) {
        const Json value = integer(bounds);
        const Json plain = {{"type", "object"}, {"properties", {{"v", value}}}, {"required", {"v"}}};
        const Json alike = {{"anyOf", {plain, {{"type", "object"}, {"properties", {{"w", {{"type", "null"}}}}}}}}};
        for (const Json& schema : {plain, alike}) {
            auto s = JsonSchema::compile(schema);
            ASSERT_TRUE(s.ok()) << s.error().message;
            EXPECT_EQ(read_text(**s, "{\"v\":" + std::string(text) + "}") == -1, in) << bounds.dump() << " " << text;
        }
    }
}

// Number bounds (SchemaRecognizer): every number text of up to 3 bytes is taken as a prefix
// exactly when some number in range begins with it (a witness of up to 3 more bytes, enough for
// these bounds), every one of up to 4 whole exactly when its value is in range; exponents are
// not written.
TEST(JsonSchema, number_bounds_take_exactly_the_numbers_between) {
    const std::vector<const char*> cases = {
        R"({"minimum": 0, "maximum": 1})",
        R"({"minimum": -2.5, "maximum": 3.75})",
        R"({"exclusiveMinimum": 0.25, "exclusiveMaximum": 0.5})",
        R"({"minimum": 10, "maximum": 20})",
        R"({"maximum": -7.5})",
        R"({"exclusiveMinimum": 0})",
        R"({"minimum": 0.1})",
        R"({"minimum": -0.5, "exclusiveMaximum": 0})",
    };
    // whether t begins a JSON number without an exponent (whole: is one)
    auto syntax = [](const std::string& t, bool whole) {
        size_t i = !t.empty() && t[0] == '-';
        if (i == t.size()) return !whole;
        if (t[i] == '0')
            ++i;
        else if (std::isdigit(uint8_t(t[i])))
            while (i < t.size() && std::isdigit(uint8_t(t[i]))) ++i;
        else
            return false;
        if (i == t.size()) return true;
        if (t[i++] != '.') return false;
        const size_t fraction = i;
        while (i < t.size() && std::isdigit(uint8_t(t[i]))) ++i;
        return i == t.size() && (!whole || i > fraction);
    };
    std::vector<std::string> texts = {""}, more = {""};
    for (size_t i = 0; i < texts.size(); ++i)
        if (texts[i].size() < 4)
            for (char c : std::string("-0123456789.")) texts.push_back(texts[i] + c);
    for (size_t i = 0; i < more.size(); ++i)
        if (more[i].size() < 3)
            for (char c : std::string("0123456789.")) more.push_back(more[i] + c);
    texts.erase(std::remove_if(texts.begin(), texts.end(),
                               [&](const std::string& t) { return t.empty() || !syntax(t, false); }),
                texts.end());
    for (const char* c : cases) {
        SCOPED_TRACE(c);
        const Json b = Json::parse(c);
        Json value = {{"type", "number"}};
        value.update(b);
        auto s = JsonSchema::compile({{"type", "object"}, {"properties", {{"v", value}}}, {"required", {"v"}}});
        ASSERT_TRUE(s.ok()) << s.error().message;
        ASSERT_FALSE((*s)->grammar());
        // the reference: decimal texts compared as long doubles with the bounds' own texts
        long double bound[4];
        const char* const keys[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"};
        for (int k = 0; k < 4; ++k)
            bound[k] = b.contains(keys[k]) ? std::strtold(b[keys[k]].dump().c_str(), nullptr) : 0;
        auto in_range = [&](const std::string& t) {
            const long double x = std::strtold(t.c_str(), nullptr);
            return (!b.contains(keys[0]) || x >= bound[0]) && (!b.contains(keys[1]) || x <= bound[1]) &&
                   (!b.contains(keys[2]) || x > bound[2]) && (!b.contains(keys[3]) || x < bound[3]);
        };
        for (const std::string& t : texts) {
            const bool whole = syntax(t, true) && in_range(t);
            EXPECT_EQ(read_text(**s, "{\"v\":" + t + "}") == -1, whole) << t;
            if (t.size() > 3) continue;  // prefixes: up to 3 bytes, witnesses up to 3 more
            bool reachable = whole;
            std::string w;
            for (size_t k = 0; k < more.size() && !reachable; ++k) {
                w.assign(t).append(more[k]);
                reachable = syntax(w, true) && in_range(w);
            }
            EXPECT_EQ(read_text(**s, "{\"v\":" + t) == ptrdiff_t(t.size()) + 5, reachable) << t;
        }
        EXPECT_GE(read_text(**s, R"({"v":1e-1})"), 0);  // no exponent
    }
    // 15 fraction digits at most; the bound read as its decimal text (0.1 is 0.1)
    auto s = JsonSchema::compile(Json::parse(R"({"properties": {"v": {"type": "number", "minimum": 0.1}}})"));
    ASSERT_TRUE(s.ok()) << s.error().message;
    EXPECT_EQ(read_text(**s, R"({"v":0.1})"), -1);
    EXPECT_EQ(read_text(**s, R"({"v":0.100000000000001})"), -1);
    EXPECT_GE(read_text(**s, R"({"v":0.1000000000000001})"), 0);
    EXPECT_GE(read_text(**s, R"({"v":0.099999999999999})"), 0);
    EXPECT_EQ(read_text(**s, R"({"v":123456789012345678901234567890.5})"), -1);  // no upper bound
}

// Formats (date, time, date-time, duration, uuid, ipv4, hostname, email) make the schema a grammar that writes their
// shapes; other formats are annotations; lengths beside a format are refused when strict.
TEST(JsonSchema, formats_take_their_shapes) {
    const std::vector<std::tuple<const char*, std::vector<const char*>, std::vector<const char*>>> cases = {
        {"date",
         {"2026-12-05", "0000-01-31", "1999-10-09", "2024-02-30"},
         {"2026-13-01", "2026-00-10", "2026-1-05", "26-12-05", "2026-12-32", "2026-12-00", "2026-12-05T"}},
        {"time",
         {"23:59:60Z", "00:00:00z", "12:30:05.123+05:30", "08:15:00.5-00:00", "23:59:59.123456789Z"},
         {"24:00:00Z", "12:60:00Z", "12:30:61Z", "12:30:05", "12:30:05.Z", "12:30:05+5:30", "12:30:05.1234567890Z"}},
        {"date-time",
         {"2026-12-05T20:37:34Z", "2026-12-05t20:37:34.5+01:00"},
         {"2026-12-05 20:37:34Z", "2026-12-05T20:37Z", "2026-12-05"}},
        {"uuid",
         {"123e4567-e89b-12d3-a456-426614174000", "ABCDEF01-2345-6789-abcd-ef0123456789"},
         {"123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400",
          "g23e4567-e89b-12d3-a456-426614174000"}},
        {"duration",
         {"P3Y6M4DT12H30M5S", "P1W", "PT36H", "P1D", "PT0S", "P2MT5M"},
         {"P", "PT", "P1Y2D3M", "P1H", "PT1D", "P1.5Y", "1W"}},
        {"ipv4",
         {"192.168.0.1", "0.0.0.0", "255.255.255.255", "10.200.50.9"},
         {"256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.4.5", "1..2.3"}},
        {"hostname",
         {"example.com", "a", "a-b.c1", "xn--bcher-kva.example"},
         {"-a.com", "a-.com", "a..b", ".a", "a_b.com"}},
        {"email",
         {"john.doe@example.com", "a+tag@sub.domain.org", "x_1%y@d-1.co"},
         {"john@example", "@example.com", "a@b@c.com", "a b@c.de", "a@.com"}},
    };
    for (const auto& [format, good, bad] : cases) {
        SCOPED_TRACE(format);
        const Json schema = {{"type", "object"}, {"properties", {{"v", {{"type", "string"}, {"format", format}}}}}};
        auto s = JsonSchema::compile(schema);
        ASSERT_TRUE(s.ok()) << s.error().message;
        ASSERT_TRUE((*s)->grammar());
        const std::regex shape(k_format_shapes.at(format));
        for (const char* v : good) {
            EXPECT_TRUE(std::regex_match(v, shape)) << v;
            EXPECT_EQ(read_text(**s, std::string("{\"v\":\"") + v + "\"}"), -1) << v;
        }
        for (const char* v : bad) {
            EXPECT_FALSE(std::regex_match(v, shape)) << v;
            EXPECT_GE(read_text(**s, std::string("{\"v\":\"") + v + "\"}"), 0) << v;
        }
    }
    // an unknown format is an annotation (no grammar); a format allows the other types beside it
    auto uri = JsonSchema::compile(Json::parse(R"({"properties": {"v": {"type": "string", "format": "uri"}}})"));
    ASSERT_TRUE(uri.ok());
    EXPECT_FALSE((*uri)->grammar());
    EXPECT_EQ(read_text(**uri, R"({"v":"not a uri"})"), -1);
    auto either =
        JsonSchema::compile(Json::parse(R"({"properties": {"v": {"type": ["string", "integer"], "format": "date"}}})"));
    ASSERT_TRUE(either.ok());
    EXPECT_EQ(read_text(**either, R"({"v":12})"), -1);
    EXPECT_GE(read_text(**either, R"({"v":"12"})"), 0);
    // lengths beside a format
    const Json sized = Json::parse(R"({"properties": {"v": {"type": "string", "format": "uuid", "maxLength": 8}}})");
    auto strict = JsonSchema::compile(sized);
    ASSERT_FALSE(strict.ok());
    EXPECT_NE(strict.error().message.find("beside format"), std::string::npos) << strict.error().message;
    auto lenient = JsonSchema::compile(sized, true);
    ASSERT_TRUE(lenient.ok());
    EXPECT_EQ((*lenient)->ignored(), std::vector<std::string>{"#/properties/v: maxLength beside format"});
    EXPECT_EQ(read_text(**lenient, R"({"v":"123e4567-e89b-12d3-a456-426614174000"})"), -1);
}

// A pattern makes the schema a grammar whose strings match it (regex_grammar_test checks the
// translation); lengths beside one are refused when strict.
TEST(JsonSchema, patterns_are_matched) {
    auto s = JsonSchema::compile(Json::parse(R"({"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
        "note": {"type": "string", "pattern": "ok"}}, "required": ["code"]})"));
    ASSERT_TRUE(s.ok()) << s.error().message;
    ASSERT_TRUE((*s)->grammar());
    for (const char* t :
         {R"({"code":"AB-123"})", R"({"code":"ZZ-000","note":"it is ok."})", R"({"code":"AB-123","note":"ok"})"})
        EXPECT_EQ(read_text(**s, t), -1) << t;
    for (const char* t : {R"({"code":"AB-12"})", R"({"code":"ab-123"})", R"({"code":"AB-1234"})",
                          R"({"code":"AB-123","note":"o k"})", R"({"note":"ok","code":"AB-123"})"})
        EXPECT_GE(read_text(**s, t), 0) << t;
    const Json sized = Json::parse(R"({"properties": {"v": {"type": "string", "pattern": "^a+$", "maxLength": 3}}})");
    auto strict = JsonSchema::compile(sized);
    ASSERT_FALSE(strict.ok());
    EXPECT_NE(strict.error().message.find("beside a pattern"), std::string::npos) << strict.error().message;
    auto lenient = JsonSchema::compile(sized, true);
    ASSERT_TRUE(lenient.ok());
    EXPECT_EQ((*lenient)->ignored(), std::vector<std::string>{"#/properties/v: maxLength beside pattern"});
    EXPECT_EQ(read_text(**lenient, R"({"v":"aaaa"})"), -1);
    // a pattern on a value that may be something else constrains its strings only
    auto either =
        JsonSchema::compile(Json::parse(R"({"properties": {"v": {"type": ["string", "null"], "pattern": "^a$"}}})"));
    ASSERT_TRUE(either.ok());
    EXPECT_EQ(read_text(**either, R"({"v":null})"), -1);
    EXPECT_EQ(read_text(**either, R"({"v":"a"})"), -1);
    EXPECT_GE(read_text(**either, R"({"v":"b"})"), 0);
}

// A random byte walk under s: some byte is taken at every step (else a failure: a dead end),
// closing bytes favoured more and more as it goes (so walks end), spaces seldom, the other bytes
// by `weight`. The text when it is a whole instance within max_steps bytes.
std::optional<std::string> byte_walk(const JsonSchema& s, std::mt19937& rng, int max_steps,
                                     const std::function<double(uint8_t)>& weight) {
    Reader r(s);
    std::string text;
    for (int step = 0; step < max_steps && !r.complete(); ++step) {
        std::vector<uint8_t> takes;
        for (int c = 0; c < 256; ++c) {
            Reader t = r;
            if (t.push(uint8_t(c))) takes.push_back(uint8_t(c));
        }
        if (takes.empty()) {
            ADD_FAILURE() << "a dead end after " << text;
            return std::nullopt;
        }
        std::vector<double> w;
        for (uint8_t c : takes)
            w.push_back(c == '"' || c == '}' || c == ']' ? 1.0 + step / 4.0 : c == ' ' ? 0.2 : weight(c));
        const uint8_t c = takes[std::discrete_distribution<size_t>(w.begin(), w.end())(rng)];
        r.push(c);
        text += char(c);
    }
    if (!r.complete()) return std::nullopt;
    return text;
}

// A random schema over the keywords the readers enforce, depth levels deep; anyOf members often
// begin alike (objects told apart by a "kind" const, arrays of different items, overlapping
// objects), so many of these schemas become grammars.
Json random_schema(std::mt19937& rng, int depth) {
    auto pick = [&](int n) { return int(rng() % unsigned(n)); };
    auto object = [&](int props, const std::string& kind) {
        Json o = {{"type", "object"}, {"properties", Json::object()}};
        std::vector<std::string> names;
        if (!kind.empty()) {
            o["properties"]["kind"] = {{"const", kind}};
            names.push_back("kind");
        }
        for (int i = 0; i < props; ++i) {
            const std::string name = std::string(1, char('a' + pick(6))) + (pick(2) ? "x" : "");
            if (o["properties"].contains(name)) continue;
            o["properties"][name] = random_schema(rng, depth - 1);
            names.push_back(name);
        }
        std::shuffle(names.begin(), names.end(), rng);  // required in an order of their own
        Json req = Json::array();
        for (const std::string& n : names)
            if (n == "kind" || pick(2)) req.push_back(n);
        if (!req.empty()) o["required"] = req;
        if (pick(4) == 0) o["additionalProperties"] = {{"type", "integer"}};
        return o;
    };
    switch (depth <= 0 ? pick(4) : pick(8)) {
        case 0: {
            Json str = {{"type", "string"}};
            if (pick(5) == 0) {
                static const char* const formats[] = {"date", "time",     "date-time", "duration", "uuid",
                                                      "ipv4", "hostname", "email",     "uri"};
                str["format"] = formats[pick(9)];
            } else if (pick(5) == 0) {
                auto it = k_pattern_values.begin();
                std::advance(it, pick(int(k_pattern_values.size())));
                str["pattern"] = it->first;
            } else if (pick(2)) {
                const int lo = pick(3);
                str["minLength"] = lo;
                str["maxLength"] = lo + pick(5);
            }
            return str;
        }
        case 1: {
            if (pick(2)) return {{"type", "number"}};
            Json i = {{"type", "integer"}};
            const int lo = pick(400) - 200;
            switch (pick(5)) {
                case 0:
                    i["minimum"] = lo;
                    break;
                case 1:
                    i["maximum"] = lo;
                    break;
                case 2:
                    i["minimum"] = lo;
                    i["maximum"] = lo + pick(300);
                    break;
                case 3:
                    i["exclusiveMinimum"] = lo;
                    i["exclusiveMaximum"] = lo + 2 + pick(50);
                    break;
                default:
                    break;
            }
            return i;
        }
        case 2: {
            const Json all = Json::array({"a", "ab", 1, nullptr, true, Json::array({1}), Json{{"k", 2}}});
            Json e = Json::array();
            for (const Json& v : all)
                if (pick(2)) e.push_back(v);
            if (e.empty()) e.push_back("ab");
            return {{"enum", e}};
        }
        case 3:
            return pick(2) ? Json{{"type", "boolean"}} : Json{{"type", Json::array({"string", "null"})}};
        case 4:
            return object(pick(4), "");
        case 5: {
            Json a = {{"type", "array"}};
            const int prefix = pick(3);
            for (int i = 0; i < prefix; ++i) a["prefixItems"].push_back(random_schema(rng, depth - 1));
            const bool closed = prefix > 0 && pick(2);
            if (closed)
                a["items"] = false;
            else
                a["items"] = random_schema(rng, depth - 1);
            const int lo = pick(closed ? prefix + 1 : 3);
            a["minItems"] = lo;
            if (!closed) a["maxItems"] = lo + pick(4);
            return a;
        }
        case 6: {  // a discriminated union
            Json any = Json::array();
            const int n = 2 + pick(2);
            for (int i = 0; i < n; ++i)
                any.push_back(object(pick(3), "k" + std::to_string(i % 2 ? i : 0) + (i ? "z" : "")));
            return {{"anyOf", any}};
        }
        default: {  // members that begin alike and may overlap
            if (pick(2)) return {{"anyOf", Json::array({object(pick(3), ""), object(pick(3), "")})}};
            Json a1 = random_schema(rng, 0), a2 = random_schema(rng, depth - 1);
            return {{"anyOf", Json::array({{{"type", "array"}, {"items", a1}, {"maxItems", 2}},
                                           {{"type", "array"}, {"prefixItems", Json::array({a2})}, {"minItems", 1}}})}};
        }
    }
}

// Whether some object in a JSON text repeats a key (the reader does not remember additional
// keys' names, so it counts a repeated one again; the validator's parse keeps one).
bool repeats_a_key(const std::string& text) {
    std::vector<std::set<std::string>> open;
    bool repeated = false;
    const Json all = Json::parse(text, [&](int, Json::parse_event_t e, Json& parsed) {
        if (e == Json::parse_event_t::object_start) open.emplace_back();
        if (e == Json::parse_event_t::object_end) open.pop_back();
        if (e == Json::parse_event_t::key) repeated = repeated || !open.back().insert(parsed.get<std::string>()).second;
        return true;
    });
    return repeated && !all.is_discarded();
}

// minProperties / maxProperties (SchemaRecognizer): an object closes only with enough keys and
// takes no key past the most, the required ones still missing counted in; byte walks never reach
// a dead end and end in instances (unless they repeat a key); counts no object could meet are
// refused.
TEST(JsonSchema, property_counts_hold) {
    const std::vector<Json> schemas = {
        Json::parse(R"({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"},
            "c": {"type": "integer"}}, "required": ["a"], "minProperties": 2, "maxProperties": 2})"),
        Json::parse(R"({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"], "additionalProperties": {"type": "boolean"}, "maxProperties": 3})"),
        Json::parse(R"({"type": "object", "additionalProperties": {"type": "integer"}, "minProperties": 3})"),
        Json::parse(R"({"type": "object", "properties": {"o": {"maxProperties": 1, "additionalProperties": {"type":
            "null"}}, "p": {"minProperties": 1, "additionalProperties": {"type": "integer"}}}, "required": ["o", "p"]})"),
    };
    const std::vector<std::pair<std::string, std::vector<bool>>> texts = {
        {R"({"a":1})", {false, false, false, false}},
        {R"({"a":1,"b":2})", {true, true, false, false}},
        {R"({"b":2,"a":1})", {true, true, false, false}},
        {R"({"a":1,"b":2,"c":3})", {false, false, true, false}},
        {R"({"b":2,"c":3})", {false, false, false, false}},
        {R"({"a":1,"b":2,"x":true})", {false, true, false, false}},
        {R"({"a":1,"b":2,"x":true,"y":false})", {false, false, false, false}},
        {R"({"x":1,"y":2,"z":3,"w":4})", {false, false, true, false}},
        {R"({"o":{},"p":{"k":1}})", {false, false, false, true}},
        {R"({"o":{"n":null},"p":{"k":1,"j":2}})", {false, false, false, true}},
        {R"({"o":{"n":null,"m":null},"p":{"k":1}})", {false, false, false, false}},
        {R"({"o":{},"p":{}})", {false, false, false, false}},
    };
    std::mt19937 rng(testing::fresh_seed());
    for (size_t si = 0; si < schemas.size(); ++si) {
        SCOPED_TRACE(schemas[si].dump());
        auto s = JsonSchema::compile(schemas[si]);
        ASSERT_TRUE(s.ok()) << s.error().message;
        ASSERT_FALSE((*s)->grammar());
        const Validator check(schemas[si]);
        for (const auto& [t, want] : texts) {
            EXPECT_EQ(read_text(**s, t) == -1, want[si]) << t;
            EXPECT_EQ(check.valid(Json::parse(t), schemas[si]), want[si]) << t;
        }
        int whole = 0;
        for (int walk = 0; walk < 60; ++walk) {
            const auto walked = byte_walk(**s, rng, 3000, [](uint8_t c) { return c == '"' || c == ',' ? 8.0 : 1.0; });
            if (!walked) continue;
            ++whole;
            auto v = parse(*walked);
            ASSERT_TRUE(v.has_value()) << *walked;
            if (!v->is_null() && !repeats_a_key(*walked)) {
                EXPECT_TRUE(check.valid(*v, schemas[si])) << *walked;
            }
        }
        EXPECT_GE(whole, 30);
    }
    for (const auto& [text, want] : std::vector<std::pair<const char*, const char*>>{
             {R"({"minProperties": 3, "maxProperties": 2})", "minProperties is above"},
             {R"({"properties": {"a": {}, "b": {}}, "required": ["a", "b"], "maxProperties": 1})",
              "more properties are required"},
             {R"({"properties": {"a": {}}, "minProperties": 2})", "more properties than the object may have"},
             {R"({"anyOf": [{"properties": {"k": {"const": 1}}, "maxProperties": 1}, {"properties": {"j": {}}}]})",
              "minProperties / maxProperties cannot be enforced"}}) {
        auto s = JsonSchema::compile(Json::parse(text));
        ASSERT_FALSE(s.ok()) << text;
        EXPECT_NE(s.error().message.find(want), std::string::npos) << text << ": " << s.error().message;
    }
}

// Random schemas, read by their grammars or by SchemaRecognizer: byte walks never reach a dead
// end and end in instances; random instances, keys in the grammar's order, are taken whole.
TEST(JsonSchema, random_schemas_read_their_instances) {
    std::mt19937 rng(testing::fresh_seed());
    int grammars = 0;
    for (int si = 0; si < 40; ++si) {
        Json schema = {{"type", "object"},
                       {"properties", {{"v", random_schema(rng, 3)}, {"w", random_schema(rng, 2)}}},
                       {"required", {"v"}},
                       {"additionalProperties", false}};
        if (si % 3 == 0)  // a root whose members begin alike
            schema = {
                {"anyOf", Json::array({schema,
                                       {{"type", "object"},
                                        {"properties", {{"kind", {{"const", "x"}}}, {"v", random_schema(rng, 2)}}},
                                        {"required", {"kind"}},
                                        {"additionalProperties", false}}})}};
        auto s = JsonSchema::compile(schema);
        ASSERT_TRUE(s.ok()) << schema.dump() << ": " << s.error().message;
        grammars += bool((*s)->grammar());
        const Validator check(schema);
        for (int i = 0; i < 30; ++i) {
            const OJson ov = random_instance(schema, schema, rng, 0);
            const Json v = Json::parse(ov.dump());
            ASSERT_TRUE(check.valid(v, schema)) << "generator: " << v.dump() << " of " << schema.dump();
            const std::string text = (*s)->grammar() ? ov.dump() : v.dump();
            ASSERT_EQ(read_text(**s, text), -1) << text << " of " << schema.dump();
        }
        SCOPED_TRACE(schema.dump());
        for (int walk = 0; walk < 12; ++walk) {
            const auto walked = byte_walk(**s, rng, 2000, [](uint8_t) { return 1.0; });
            if (!walked) continue;
            const std::string& text = *walked;
            auto v = parse(text);
            ASSERT_TRUE(v.has_value()) << text << " of " << schema.dump();
            if (!v->is_null()) {
                EXPECT_TRUE(check.valid(*v, schema)) << text << " of " << schema.dump();
            }
        }
    }
    std::printf("%d of the schemas were grammars\n", grammars);
    EXPECT_GE(grammars, 10);
}

// Random byte walks: at every step some byte is taken (never a dead end), and what completes is
// an instance by the validator.
TEST(JsonSchema, random_byte_walks_end_in_instances) {
    std::mt19937 rng(testing::fresh_seed());
    std::vector<Json> schemas = test_schemas();
    for (Json& s : schemas) s = closed(s);
    for (size_t si = 0; si < schemas.size(); ++si) {
        auto s = JsonSchema::compile(schemas[si]);
        ASSERT_TRUE(s.ok()) << si << ": " << s.error().message;
        const Validator check(schemas[si]);
        std::set<uint8_t> name_bytes;
        names_of(schemas[si], &name_bytes);
        int whole = 0;
        SCOPED_TRACE("schema " + std::to_string(si));
        for (int walk = 0; walk < 60; ++walk) {
            // the bytes of property names favoured, so that walks write required keys beside
            // additional ones
            const auto walked = byte_walk(**s, rng, 3000, [&](uint8_t c) { return name_bytes.count(c) ? 20.0 : 1.0; });
            if (!walked) continue;
            const std::string& text = *walked;
            ++whole;
            auto v = parse(text);
            ASSERT_TRUE(v.has_value()) << "schema " << si << ": " << text;
            if (v->is_null()) continue;  // a number nlohmann cannot hold
            EXPECT_TRUE(check.valid(*v, schemas[si])) << "schema " << si << ": " << text;
        }
        EXPECT_GE(whole, 40) << "schema " << si;
    }
}

// Random instances written compactly are taken whole; random corruptions of them that are taken
// whole are instances.
TEST(JsonSchema, random_instances_are_taken_and_corruptions_checked) {
    std::mt19937 rng(testing::fresh_seed());
    const std::vector<Json> schemas = test_schemas();
    for (size_t si = 0; si < schemas.size(); ++si) {
        auto s = JsonSchema::compile(schemas[si]);
        ASSERT_TRUE(s.ok()) << s.error().message;
        const Validator check(schemas[si]);
        int taken_corrupt = 0;
        for (int i = 0; i < 300; ++i) {
            const OJson ov = random_instance(schemas[si], schemas[si], rng, 0);
            const Json v = Json::parse(ov.dump());
            ASSERT_TRUE(check.valid(v, schemas[si])) << "generator: " << v.dump();
            // keys as the grammar writes them; else sorted (SchemaRecognizer takes any order)
            const std::string text = (*s)->grammar() ? ov.dump() : v.dump();
            ASSERT_EQ(read_text(**s, text), -1) << "schema " << si << ": " << text;
            for (int k = 0; k < 8; ++k) {
                std::string bad = text;
                const size_t at = rng() % bad.size();
                const int how = int(rng() % 3);
                const char pool[] = "{}[]\",:0123456789.-eE truefalsenullxé\\";
                const char ch = pool[rng() % (sizeof(pool) - 1)];
                if (how == 0) bad[at] = ch;
                if (how == 1) bad.insert(bad.begin() + std::ptrdiff_t(at), ch);
                if (how == 2) bad.erase(at, 1);
                if (read_text(**s, bad) != -1) continue;
                ++taken_corrupt;
                auto w = parse(bad);
                ASSERT_TRUE(w.has_value()) << "schema " << si << ": " << bad;
                if (w->is_null()) continue;
                EXPECT_TRUE(check.valid(*w, schemas[si])) << "schema " << si << ": " << bad;
            }
        }
        std::printf("schema %zu: %d corruptions were still instances\n", si, taken_corrupt);
    }
}

// Constrained generation with random logits over the real Qwen3 vocabulary: the mask always
// leaves a token and equals each token's bytes read one by one; the texts are instances.
TEST(JsonSchema, random_walks_over_the_qwen3_vocabulary_end_in_instances) {
    const Tokenizer* tok = testing::qwen3_tokenizer();
    ASSERT_NE(tok, nullptr);
    auto vocab = std::make_shared<const JsonVocabulary>(*tok);
    const int32_t n = tok->n_vocab();
    std::vector<float> favour(size_t(n), 0.0f);
    for (int32_t id = 0; id < n; ++id) {
        const std::string b = tok->token_bytes(id, false);
        if (b == "}" || b == "]" || b == "\"" || b == "\"}" || b == "\"," || b == "null" || b == "\":")
            favour[size_t(id)] = 6;
    }
    std::mt19937 rng(testing::fresh_seed());
    std::normal_distribution<float> noise(0.0f, 1.0f);
    std::vector<Json> schemas = test_schemas();
    for (Json& s : schemas) s = closed(s);
    int steps = 0;
    double mask_s = 0;
    for (size_t si = 0; si < schemas.size(); ++si) {
        auto s = JsonSchema::compile(schemas[si]);
        ASSERT_TRUE(s.ok());
        const Validator check(schemas[si]);
        int whole = 0, schema_steps = 0;
        double schema_s = 0;
        for (int walk = 0; walk < 3; ++walk) {
            JsonConstraint c(vocab, -1, *s);
            std::string text;
            for (int step = 0; step < 600; ++step) {
                std::vector<float> logits(static_cast<size_t>(n));
                for (int32_t id = 0; id < n; ++id) logits[size_t(id)] = noise(rng) + favour[size_t(id)];
                const auto m0 = std::chrono::steady_clock::now();
                c.mask(logits.data(), n);
                const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - m0).count();
                mask_s += took;
                schema_s += took;
                ++steps;
                ++schema_steps;
                const int32_t best = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
                ASSERT_TRUE(std::isfinite(logits[size_t(best)])) << "no token left after " << text;
                if (c.complete()) {
                    ASSERT_TRUE(tok->is_eog(best));
                    ++whole;
                    auto v = parse(text);
                    ASSERT_TRUE(v.has_value()) << text;
                    if (!v->is_null()) {
                        EXPECT_TRUE(check.valid(*v, schemas[si])) << text;
                    }
                    break;
                }
                if (step % 40 == 3) {  // the mask equals each token's bytes read one by one
                    Reader now(**s);
                    for (char ch : text) ASSERT_TRUE(now.push(uint8_t(ch)));
                    testing::expect_mask_reads_bytes(*tok, logits.data(), now, text);
                    for (int32_t id = 0; id < n; ++id)  // one token's answer is the mask's
                        ASSERT_EQ(c.allows(id), std::isfinite(logits[size_t(id)])) << id << " after " << text;
                }
                text += tok->token_bytes(best, false);
                c.accept(best);
            }
        }
        EXPECT_GE(whole, 1) << "schema " << si;
        std::printf("schema %zu%s: %.2f ms a mask\n", si, (*s)->grammar() ? " (a grammar)" : "",
                    1e3 * schema_s / schema_steps);
    }
    std::printf("%.2f ms a mask\n", 1e3 * mask_s / steps);
}

}  // namespace
}  // namespace bigmoe
