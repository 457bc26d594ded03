#include "runtime/json_schema.h"

#include <algorithm>
#include <bitset>
#include <cctype>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "runtime/regex_grammar.h"
#include "runtime/schema_grammar.h"

namespace bigmoe {

using Json = nlohmann::json;

namespace {

bool is_space(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}
bool starts_number(uint8_t c) {
    return c == '-' || (c >= '0' && c <= '9');
}

// Narrows the candidates [lo, hi) of sorted texts that share their first `count` bytes to those
// whose next byte is c. In that range the byte at `count` never decreases (a text that ends there
// comes first), so two binary searches find the run: an enum of 60,000 values costs a mask ~17
// steps a byte, not 60,000.
bool narrow(const std::vector<std::string>& texts, uint16_t& lo, uint16_t& hi, uint16_t& count, uint8_t c) {
    auto key = [&](size_t i) { return texts[i].size() <= count ? -1 : int(uint8_t(texts[i][count])); };
    if (hi - lo <= 16) {  // a few candidates (most keys and enums): a scan
        size_t a = lo;
        while (a < hi && key(a) < int(c)) ++a;
        size_t b = a;
        while (b < hi && key(b) == int(c)) ++b;
        if (a == b) return false;
        lo = uint16_t(a);
        hi = uint16_t(b);
        ++count;
        return true;
    }
    size_t a = lo, e = hi;  // first with key >= c
    while (a < e) {
        const size_t m = (a + e) / 2;
        if (key(m) < int(c))
            a = m + 1;
        else
            e = m;
    }
    size_t b = a;
    e = hi;  // first with key > c
    while (b < e) {
        const size_t m = (b + e) / 2;
        if (key(m) <= int(c))
            b = m + 1;
        else
            e = m;
    }
    if (a == b) return false;
    lo = uint16_t(a);
    hi = uint16_t(b);
    ++count;
    return true;
}

// Keywords that say nothing about which texts are valid.
const std::set<std::string> k_annotations = {
    "title",    "description", "default",     "examples",        "$schema",         "$id",
    "$comment", "format",      "deprecated",  "readOnly",        "writeOnly",       "contentMediaType",
    "strict",   "$defs",       "definitions", "contentEncoding", "additionalItems",
};
const std::set<std::string> k_supported = {
    "type",     "enum",        "const",     "properties", "required",      "additionalProperties",
    "items",    "prefixItems", "anyOf",     "oneOf",      "allOf",         "$ref",
    "minItems", "maxItems",    "minLength", "maxLength",  "minProperties", "maxProperties",
};
// Bounds: enforced on integers (SchemaCompiler::bounds).
const char* const k_bounds[] = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"};

__int128 pow10(int k) {
    __int128 p = 1;
    while (k-- > 0) p *= 10;
    return p;
}

}  // namespace

bool JsonSchema::Range::holds(const Text& t) const {
    if (frac == 0 && t.negative && t.whole == 0) return false;  // "-0"
    if (t.whole >= k_huge) return t.negative ? !has_lo : !has_hi;
    const __int128 m = __int128(t.whole) * pow10(frac) + t.fraction, v = t.negative ? -m : m;
    return (!has_lo || v >= lo) && (!has_hi || v <= hi);
}

bool JsonSchema::Range::reaches(const Text& t) const {
    if (t.digits == 0) return !has_lo || lo <= (frac ? 0 : -1);  // "-": below zero ("-0.5"; numbers' "-0")
    if (frac == 0 && t.negative && t.whole == 0) return false;   // "-0"
    // Away from zero, the texts that begin with a whole part w of no point yet are the numbers
    // in [w 10^k, (w + 1) 10^k) (k more digits, then any fraction), without end in that
    // direction; after the point, those from the value so far to the fraction's next step.
    const bool grows = !t.dot && t.whole > 0;
    if (t.whole >= k_huge) return t.negative ? !has_lo : !has_hi;
    if (grows && (t.negative ? !has_lo : !has_hi)) return true;
    const __int128 past = t.negative ? -lo : hi;  // the largest magnitude taken (when grows)
    __int128 first = __int128(t.whole) * pow10(frac) + (t.dot ? t.fraction : 0);
    __int128 span = t.dot ? pow10(frac - t.frac_digits) : pow10(frac);
    for (;; first *= 10, span *= 10) {
        const __int128 last = first + span - 1;
        const __int128 a = t.negative ? -last : first, b = t.negative ? -first : last;
        if ((!has_lo || b >= lo) && (!has_hi || a <= hi)) return true;
        if (!grows || first > past) return false;
    }
}

bool JsonSchema::Range::push(Text& t, uint8_t c) const {
    if (c == '-') {
        t.negative = true;
    } else if (c == '.') {
        if (frac == 0) return false;
        t.dot = true;
    } else if (c >= '0' && c <= '9' && !t.dot) {
        const uint64_t d = c - '0';
        t.whole = t.whole > (k_huge - 1 - d) / 10 ? k_huge : t.whole * 10 + d;
        t.digits = uint16_t(std::min(t.digits + 1, 0xFFFF));
    } else if (c >= '0' && c <= '9') {
        if (t.frac_digits >= frac) return false;  // more fraction digits than steps
        ++t.frac_digits;
        t.fraction += uint64_t(c - '0') * uint64_t(pow10(frac - t.frac_digits));
    } else {
        return false;  // an exponent
    }
    return reaches(t);
}

// Reads a schema document into nodes; node 0 takes every value.
class SchemaCompiler {
  public:
    using Node = JsonSchema::Node;
    SchemaCompiler(const Json& doc, bool lenient) : doc_(doc), lenient_(lenient) {
        Node any;
        any.compiled = true;
        s_.nodes_.push_back(std::move(any));
    }

    Result<std::shared_ptr<const JsonSchema>> run() {
        auto root = ref("#", "#");  // registered before it is filled: recursion into it finds it
        if (!root) return root.error();
        s_.root_ = *root;
        if (s_.nodes_[size_t(s_.root_)].any) {  // {} or true: any object (JSON mode)
            Node object;
            object.types = JsonSchema::t_object;
            object.any = false;
            object.compiled = true;
            s_.root_ = int32_t(s_.nodes_.size());
            s_.nodes_.push_back(std::move(object));
        }
        if (first_bytes(s_.root_) != object_start())
            return Error{"the schema must describe a JSON object (its \"type\" is \"object\")"};
        depths();
        if (s_.need(s_.root_) > SchemaRecognizer::k_max_frames)
            return Error{"the schema has no instance nested less than " +
                         std::to_string(SchemaRecognizer::k_max_frames) + " levels deep"};
        if (as_grammar_) {
            const size_t noted = s_.ignored_.size();
            auto g = write_schema_grammar(s_, lenient_, JsonSchema::k_grammar_counts);
            if (!g && lenient_) {  // too many rules: without the counts
                s_.ignored_.resize(noted);
                g = write_schema_grammar(s_, lenient_, 0);
            }
            if (!g) return g.error();
            s_.grammar_ = *g;
        }
        return std::make_shared<const JsonSchema>(std::move(s_));
    }

  private:
    static std::bitset<256> object_start() {
        std::bitset<256> b;
        b.set('{');
        return b;
    }

    // The bytes a value of node i can begin with.
    std::bitset<256> first_bytes(int32_t i) const {
        const Node& n = s_.nodes_[size_t(i)];
        std::bitset<256> b;
        if (!n.literals.empty()) {
            for (const std::string& t : n.literals) b.set(uint8_t(t[0]));
            return b;
        }
        if (!n.alternatives.empty()) {
            for (int32_t a : n.alternatives) b |= first_bytes(a);
            return b;
        }
        if (n.types & JsonSchema::t_object) b.set('{');
        if (n.types & JsonSchema::t_array) b.set('[');
        if (n.types & JsonSchema::t_string) b.set('"');
        if (n.types & (JsonSchema::t_number | JsonSchema::t_integer)) {
            b.set('-');
            for (char c = '0'; c <= '9'; ++c) b.set(uint8_t(c));
        }
        if (n.types & JsonSchema::t_boolean) {
            b.set('t');
            b.set('f');
        }
        if (n.types & JsonSchema::t_null) b.set('n');
        return b;
    }

    // Each node's need_object / need_array, by rounds until nothing changes (recursion: a $ref
    // cycle without an optional way out stays k_deep).
    void depths() {
        for (bool changed = true; changed;) {
            changed = false;
            for (Node& n : s_.nodes_) {
                uint32_t obj = JsonSchema::k_deep, arr = JsonSchema::k_deep;
                if (n.literals.empty() && n.alternatives.empty() && !n.any) {
                    if (n.types & JsonSchema::t_object) {
                        uint32_t most = 0;
                        for (size_t k = 0; k < n.keys.size(); ++k)
                            if ((n.required >> k) & 1) most = std::max<uint32_t>(most, s_.least_need(n.key_nodes[k]));
                        obj = std::min<uint32_t>(1 + most, JsonSchema::k_deep);
                    }
                    if (n.types & JsonSchema::t_array) {
                        uint32_t most = 0;
                        for (uint32_t k = 0; k < n.min_items && most < JsonSchema::k_deep; ++k) {
                            const int32_t item = k < n.prefix.size() ? n.prefix[k] : n.items;
                            most = item == JsonSchema::k_none ? JsonSchema::k_deep
                                                              : std::max<uint32_t>(most, s_.least_need(item));
                        }
                        arr = std::min<uint32_t>(1 + most, JsonSchema::k_deep);
                    }
                }
                if (obj < n.need_object || arr < n.need_array) {
                    n.need_object = uint8_t(std::min<uint32_t>(obj, n.need_object));
                    n.need_array = uint8_t(std::min<uint32_t>(arr, n.need_array));
                    changed = true;
                }
            }
        }
        for (size_t i = 0; i < s_.nodes_.size(); ++i) s_.nodes_[i].need = s_.least_need(int32_t(i));
    }

    static Error bad(const std::string& where, const std::string& what) {
        return Error{"schema at " + where + ": " + what};
    }

    // The node a `$ref` names: "#" or a JSON pointer into this document ("#/$defs/x").
    Result<int32_t> ref(const std::string& target, const std::string& where) {
        if (auto it = refs_.find(target); it != refs_.end()) return it->second;
        if (target.empty() || target[0] != '#')
            return bad(where, "$ref \"" + target + "\" is not a reference inside this schema (\"#/...\")");
        const Json* t = &doc_;
        try {
            const std::string ptr = target.substr(1);
            if (!ptr.empty()) t = &doc_.at(Json::json_pointer(ptr));
        } catch (const Json::exception&) {
            return bad(where, "$ref \"" + target + "\" names nothing in this schema");
        }
        const int32_t i = int32_t(s_.nodes_.size());
        s_.nodes_.emplace_back();
        refs_[target] = i;
        auto r = fill(i, *t, target);
        if (!r) return r.error();
        return i;
    }

    // A new node for schema `s` (or the node it stands for: a $ref, one allOf member, `true`).
    Result<int32_t> node(const Json& s, const std::string& where) {
        if (s_.nodes_.size() >= k_max_nodes) return bad(where, "more than 65536 schemas in one document");
        if (++depth_ > 64) return bad(where, "nested deeper than 64 schemas");
        struct Leave {
            int& d;
            ~Leave() { --d; }
        } leave{depth_};
        if (s.is_boolean()) {
            if (s.get<bool>()) return JsonSchema::k_any;
            return bad(where, "the schema false takes no value");
        }
        if (!s.is_object()) return bad(where, "a schema is an object or a boolean");
        if (s.contains("$ref")) {
            if (!s["$ref"].is_string()) return bad(where, "$ref must be a string");
            return ref(s["$ref"], where);
        }
        if (s.contains("allOf")) {
            const Json& a = s["allOf"];
            if (!a.is_array() || a.size() != 1) return bad(where, "allOf is supported with exactly one schema");
            for (const auto& [k, v] : s.items()) {
                if (k == "allOf" || k_annotations.count(k)) continue;
                if (!lenient_)
                    return bad(where, "allOf is supported only without sibling keywords (here \"" + k + "\")");
                s_.ignored_.push_back(where + ": " + k + " beside allOf");
            }
            return node(a[0], where + "/allOf/0");
        }
        const int32_t i = int32_t(s_.nodes_.size());
        s_.nodes_.emplace_back();
        auto r = fill(i, s, where);
        if (!r) return r.error();
        return i;
    }

    Result<bool> fill(int32_t i, const Json& s, const std::string& where) {
        if (s.is_boolean() || (s.is_object() && (s.contains("$ref") || s.contains("allOf")))) {
            auto target = node(s, where);
            if (!target) return target.error();
            if (!s_.nodes_[size_t(*target)].compiled)
                return bad(where, "a $ref that leads back to itself without a value in between");
            s_.nodes_[size_t(i)] = s_.nodes_[size_t(*target)];
            return true;
        }
        if (!s.is_object()) return bad(where, "a schema is an object or a boolean");
        for (const auto& [k, v] : s.items()) {
            if (k_supported.count(k) || k_annotations.count(k) || k == "pattern" ||
                std::find(std::begin(k_bounds), std::end(k_bounds), k) != std::end(k_bounds))
                continue;
            if (lenient_) {
                s_.ignored_.push_back(where + ": " + k);
                continue;
            }
            return bad(where, "the keyword \"" + k +
                                  "\" is not supported (supported: type, properties, required, "
                                  "additionalProperties, minProperties, maxProperties, items, prefixItems, "
                                  "minItems, maxItems, minLength, maxLength, minimum, maximum, exclusiveMinimum, "
                                  "exclusiveMaximum, pattern, format, enum, const, anyOf, oneOf, allOf of one "
                                  "schema, $ref)");
        }
        Node n;
        // enum / const: the value is one of these texts
        if (s.contains("enum") || s.contains("const")) {
            std::vector<std::string> lits;
            if (s.contains("const")) lits.push_back(s["const"].dump());
            if (s.contains("enum")) {
                if (!s["enum"].is_array() || s["enum"].empty()) return bad(where, "enum must be a non-empty array");
                for (const Json& v : s["enum"]) lits.push_back(v.dump());
            }
            if (s.contains("const") && s.contains("enum")) {
                const std::string c = lits[0];
                if (std::find(lits.begin() + 1, lits.end(), c) == lits.end())
                    return bad(where, "const is not among enum");
                lits = {c};
            }
            // bounds beside them keep the numbers within
            lits.erase(std::remove_if(lits.begin(), lits.end(),
                                      [&](const std::string& t) {
                                          const Json v = Json::parse(t);
                                          return v.is_number() && !within_bounds(s, v);
                                      }),
                       lits.end());
            if (lits.empty()) return bad(where, "no enum value lies within its minimum / maximum");
            std::sort(lits.begin(), lits.end());
            lits.erase(std::unique(lits.begin(), lits.end()), lits.end());
            if (lits.size() > 0xFFFE) return bad(where, "more than 65534 enum values");
            n.literals = std::move(lits);
            n.any = false;
            n.compiled = true;
            s_.nodes_[size_t(i)] = std::move(n);
            return true;
        }
        for (const char* k : {"anyOf", "oneOf"}) {
            if (!s.contains(k)) continue;
            if (!s[k].is_array() || s[k].empty()) return bad(where, std::string(k) + " must be a non-empty array");
            for (const auto& [key, v] : s.items()) {
                if (key == k || k_annotations.count(key)) continue;
                if (!lenient_)
                    return bad(where,
                               std::string(k) + " is supported only without sibling keywords (here \"" + key + "\")");
                s_.ignored_.push_back(where + ": " + key + " beside " + k);
            }
            auto alts = alternatives(s[k], where + "/" + k);
            if (!alts) return alts.error();
            if (alts->size() == 1) {
                s_.nodes_[size_t(i)] = s_.nodes_[size_t((*alts)[0])];
                return true;
            }
            n.alternatives = std::move(*alts);
            n.any = false;
            n.compiled = true;
            s_.nodes_[size_t(i)] = std::move(n);
            return true;
        }
        auto has = [&](std::initializer_list<const char*> ks) {
            for (const char* k : ks)
                if (s.contains(k)) return true;
            return false;
        };
        if (s.contains("type")) {
            n.types = 0;
            const Json& t = s["type"];
            std::vector<Json> names = t.is_array() ? std::vector<Json>(t.begin(), t.end()) : std::vector<Json>{t};
            if (names.empty()) return bad(where, "type must name at least one type");
            for (const Json& name : names) {
                const std::string v = name.is_string() ? name.get<std::string>() : "";
                if (v == "object")
                    n.types |= JsonSchema::t_object;
                else if (v == "array")
                    n.types |= JsonSchema::t_array;
                else if (v == "string")
                    n.types |= JsonSchema::t_string;
                else if (v == "number")
                    n.types |= JsonSchema::t_number | JsonSchema::t_integer;
                else if (v == "integer")
                    n.types |= JsonSchema::t_integer;
                else if (v == "boolean")
                    n.types |= JsonSchema::t_boolean;
                else if (v == "null")
                    n.types |= JsonSchema::t_null;
                else
                    return bad(where, "unknown type " + name.dump());
            }
        } else if (has({"properties", "required", "additionalProperties", "minProperties", "maxProperties", "items",
                        "prefixItems", "minItems", "maxItems", "minLength", "maxLength"})) {
            n.types = 0;
            if (has({"properties", "required", "additionalProperties", "minProperties", "maxProperties"}))
                n.types |= JsonSchema::t_object;
            if (has({"items", "prefixItems", "minItems", "maxItems"})) n.types |= JsonSchema::t_array;
            if (has({"minLength", "maxLength"})) n.types |= JsonSchema::t_string;
        }
        auto count = [&](const char* k, uint32_t* out) -> Result<bool> {
            if (!s.contains(k)) return true;
            const Json& v = s[k];
            if (!v.is_number_integer() || v.get<int64_t>() < 0)
                return bad(where, std::string(k) + " must be a non-negative integer");
            *out = uint32_t(std::min<int64_t>(v.get<int64_t>(), UINT32_MAX - 1));
            return true;
        };
        for (auto [k, out] : {std::pair{"minItems", &n.min_items}, std::pair{"maxItems", &n.max_items},
                              std::pair{"minLength", &n.min_length}, std::pair{"maxLength", &n.max_length},
                              std::pair{"minProperties", &n.min_props}, std::pair{"maxProperties", &n.max_props}})
            if (auto r = count(k, out); !r) return r.error();
        if (n.min_props > n.max_props) return bad(where, "minProperties is above maxProperties");
        if (n.min_items > n.max_items) return bad(where, "minItems is above maxItems");
        if (n.min_length > n.max_length) return bad(where, "minLength is above maxLength");
        if (auto r = bounds(s, n, where); !r) return r.error();
        if (auto r = pattern(s, n, where); !r) return r.error();
        if (auto r = format(s, n, where); !r) return r.error();
        // objects
        std::vector<std::pair<std::string, int32_t>> props;
        if (s.contains("properties")) {
            if (!s["properties"].is_object()) return bad(where, "properties must be an object");
            for (const auto& [name, sub] : s["properties"].items()) {
                auto c = node(sub, where + "/properties/" + name);
                if (!c) return c.error();
                props.emplace_back(name, *c);
            }
        }
        std::vector<std::string> required;
        if (s.contains("required")) {
            if (!s["required"].is_array()) return bad(where, "required must be an array of names");
            for (const Json& r : s["required"]) {
                if (!r.is_string()) return bad(where, "required must be an array of names");
                required.push_back(r);
            }
        }
        // An object that names its properties takes no others unless additionalProperties says so
        // (as llama.cpp's and XGrammar's grammars read such schemas, and as OpenAI's strict mode
        // requires them written): a small model given the choice tends to wander off into keys of
        // its own and never write the required ones.
        if (s.contains("properties")) n.additional = JsonSchema::k_none;
        if (s.contains("additionalProperties")) {
            auto a = s["additionalProperties"].is_boolean() && !s["additionalProperties"].get<bool>()
                         ? Result<int32_t>(JsonSchema::k_none)
                         : node(s["additionalProperties"], where + "/additionalProperties");
            if (!a) return a.error();
            n.additional = *a;
        }
        // a required name that no property describes takes what additionalProperties allows
        for (const std::string& r : required)
            if (std::none_of(props.begin(), props.end(), [&](const auto& p) { return p.first == r; })) {
                if (s.contains("additionalProperties") && n.additional == JsonSchema::k_none)
                    return bad(where,
                               "\"" + r + "\" is required but not a property, and additionalProperties is false");
                props.emplace_back(r, n.additional == JsonSchema::k_none ? JsonSchema::k_any : n.additional);
            }
        if (props.size() > 64) return bad(where, "more than 64 properties in one object");
        std::sort(props.begin(), props.end(),
                  [](const auto& a, const auto& b) { return Json(a.first).dump() < Json(b.first).dump(); });
        for (size_t k = 0; k < props.size(); ++k) {
            const std::string text = Json(props[k].first).dump();
            n.keys.push_back(text.substr(1, text.size() - 2));
            n.key_nodes.push_back(props[k].second);
            if (std::find(required.begin(), required.end(), props[k].first) != required.end())
                n.required |= uint64_t(1) << k;
        }
        std::vector<bool> placed(props.size());
        for (const std::string& r : required)
            for (size_t k = 0; k < props.size(); ++k)
                if (!placed[k] && props[k].first == r) {
                    n.order.push_back(uint8_t(k));
                    placed[k] = true;
                }
        for (size_t k = 0; k < props.size(); ++k)
            if (!placed[k]) n.order.push_back(uint8_t(k));
        // arrays
        if (s.contains("prefixItems")) {
            if (!s["prefixItems"].is_array()) return bad(where, "prefixItems must be an array of schemas");
            for (size_t k = 0; k < s["prefixItems"].size(); ++k) {
                auto c = node(s["prefixItems"][k], where + "/prefixItems/" + std::to_string(k));
                if (!c) return c.error();
                n.prefix.push_back(*c);
            }
        }
        if (s.contains("items")) {
            const Json& it = s["items"];
            if (it.is_array()) {  // draft 4-2019 tuples
                if (s.contains("prefixItems")) return bad(where, "items as an array beside prefixItems");
                for (size_t k = 0; k < it.size(); ++k) {
                    auto c = node(it[k], where + "/items/" + std::to_string(k));
                    if (!c) return c.error();
                    n.prefix.push_back(*c);
                }
            } else {
                auto c = it.is_boolean() && !it.get<bool>() ? Result<int32_t>(JsonSchema::k_none)
                                                            : node(it, where + "/items");
                if (!c) return c.error();
                n.items = *c;
            }
        }
        // the keys an object must and may have against its counts (else some text would find no way on)
        if (uint32_t(__builtin_popcountll(n.required)) > n.max_props)
            return bad(where, "more properties are required than maxProperties allows");
        if (n.additional == JsonSchema::k_none && n.keys.size() < n.min_props)
            return bad(where, "minProperties asks for more properties than the object may have");
        if (n.items == JsonSchema::k_none) n.max_items = std::min<uint32_t>(n.max_items, uint32_t(n.prefix.size()));
        if (n.min_items > n.max_items) return bad(where, "minItems is above the items that may be given");
        n.any = n.types == JsonSchema::t_all && n.keys.empty() && n.additional == JsonSchema::k_any &&
                n.min_props == 0 && n.max_props == UINT32_MAX && n.prefix.empty() && n.items == JsonSchema::k_any &&
                n.min_items == 0 && n.max_items == UINT32_MAX && n.min_length == 0 && n.max_length == UINT32_MAX &&
                n.range.any() && n.format == JsonSchema::f_none && n.pattern.empty();
        n.compiled = true;
        s_.nodes_[size_t(i)] = std::move(n);
        return true;
    }

    // Bound v in steps of 10^-frac: for a lower bound the least step >= v (> v when exclusive),
    // for an upper one the greatest <= v (< v); nullopt past what the reader holds (the 64-bit
    // integers; for numbers, whole parts up to 10^18). Read from v's shortest decimal text, so
    // 0.1 is the step 0.1 and not the double nearest it.
    static std::optional<__int128> bound_steps(const Json& v, uint8_t frac, bool upper, bool exclusive) {
        const std::string t = v.dump();
        size_t i = 0;
        const bool negative = t[i] == '-';
        i += negative;
        __int128 m = 0;  // the digits, the point dropped: v = m 10^e
        int e = 0, digits = 0;
        for (bool point = false; i < t.size() && (std::isdigit(uint8_t(t[i])) || t[i] == '.'); ++i) {
            if (t[i] == '.') {
                point = true;
                continue;
            }
            if (m == 0 && t[i] == '0') {
                e -= point;
                continue;
            }
            if (++digits > 30) return std::nullopt;
            m = m * 10 + (t[i] - '0');
            e -= point;
        }
        if (i < t.size() && (t[i] == 'e' || t[i] == 'E')) e += std::stoi(t.substr(i + 1));
        if (negative) m = -m;
        // v in steps: m 10^(e + frac), rounded toward the side the bound keeps
        const int shift = e + frac;
        __int128 q = m, r = 0;
        if (shift >= 0) {
            if (m != 0 && shift > 36 - digits) return std::nullopt;
            q = m * pow10(shift);
        } else if (shift < -36) {
            q = 0;
            r = m;
        } else {
            q = m / pow10(-shift);
            r = m % pow10(-shift);
        }
        const __int128 floor = r < 0 ? q - 1 : q, ceil = r > 0 ? q + 1 : q;
        const __int128 x = upper ? (exclusive ? ceil - 1 : floor) : (exclusive ? floor + 1 : ceil);
        const __int128 top = frac == 0 ? __int128(INT64_MAX) : pow10(18 + frac);
        if (x > top || x < (frac == 0 ? __int128(INT64_MIN) : -top)) return std::nullopt;
        return x;
    }

    // "pattern" as GBNF into n.pattern (the schema is then read by a grammar); one it cannot
    // translate is refused, or skipped when lenient, as are lengths and a format beside one.
    Result<bool> pattern(const Json& s, Node& n, const std::string& where) {
        if (!s.contains("pattern") || !(n.types & JsonSchema::t_string)) return true;
        if (!s["pattern"].is_string()) return bad(where, "pattern must be a string");
        auto g = regex_gbnf(s["pattern"].get<std::string>(), "char");
        if (!g) {
            if (!lenient_) return bad(where, g.error().message);
            s_.ignored_.push_back(where + ": pattern");
            return true;
        }
        n.pattern = std::move(*g);
        as_grammar_ = true;
        for (const char* k : {"minLength", "maxLength", "format"}) {
            if (!s.contains(k)) continue;
            if (!lenient_) return bad(where, std::string(k) + " beside a pattern is not supported");
            s_.ignored_.push_back(where + ": " + k + " beside pattern");
        }
        n.min_length = 0;
        n.max_length = UINT32_MAX;
        return true;
    }

    // A string format the grammar enforces into n.format (the schema is then read by a grammar);
    // other formats are annotations. Lengths beside one are refused, or skipped when lenient.
    Result<bool> format(const Json& s, Node& n, const std::string& where) {
        if (!s.contains("format") || !s["format"].is_string() || !(n.types & JsonSchema::t_string) ||
            !n.pattern.empty())
            return true;
        const std::string f = s["format"];
        n.format = format_named(f);
        if (n.format == JsonSchema::f_none) return true;
        as_grammar_ = true;
        for (const char* k : {"minLength", "maxLength"}) {
            if (!s.contains(k)) continue;
            if (!lenient_) return bad(where, std::string(k) + " beside format \"" + f + "\" is not supported");
            s_.ignored_.push_back(where + ": " + k + " beside format");
        }
        n.min_length = 0;
        n.max_length = UINT32_MAX;
        return true;
    }

    // Whether number v meets the bounds schema s gives (any that are numbers).
    static bool within_bounds(const Json& s, const Json& v) {
        auto num = [](const Json& j) {
            return j.is_number_unsigned()  ? static_cast<long double>(j.get<uint64_t>())
                   : j.is_number_integer() ? static_cast<long double>(j.get<int64_t>())
                                           : static_cast<long double>(j.get<double>());
        };
        auto flag = [&](const char* k) { return s.contains(k) && s[k].is_boolean() && s[k].get<bool>(); };
        auto bound = [&](const char* k, long double* b) {
            if (!s.contains(k) || !s[k].is_number()) return false;
            *b = num(s[k]);
            return true;
        };
        const long double x = num(v);
        long double b;
        if (bound("minimum", &b) && (x < b || (x == b && flag("exclusiveMinimum")))) return false;
        if (bound("maximum", &b) && (x > b || (x == b && flag("exclusiveMaximum")))) return false;
        if (bound("exclusiveMinimum", &b) && x <= b) return false;
        return !(bound("exclusiveMaximum", &b) && x >= b);
    }

    // minimum / maximum / exclusiveMinimum / exclusiveMaximum (draft 4's boolean forms too) into
    // n.range: in whole steps where the node's numbers are integers, else in steps of
    // 10^-k_frac_digits. A node that takes no number has nothing for them to say.
    Result<bool> bounds(const Json& s, Node& n, const std::string& where) {
        bool given = false;
        for (const char* k : k_bounds) {
            if (!s.contains(k)) continue;
            const bool draft4 = k[0] == 'e' && s[k].is_boolean();
            if (!s[k].is_number() && !draft4) return bad(where, std::string(k) + " must be a number");
            given = given || !draft4;
        }
        if (!given || !(n.types & (JsonSchema::t_number | JsonSchema::t_integer))) return true;
        auto flag = [&](const char* k) { return s.contains(k) && s[k].is_boolean() && s[k].get<bool>(); };
        JsonSchema::Range& r = n.range;
        r.frac = n.types & JsonSchema::t_number ? JsonSchema::Range::k_frac_digits : 0;
        for (const char* k : k_bounds) {
            if (!s.contains(k) || s[k].is_boolean()) continue;
            const std::string key = k;
            const bool upper = key == "maximum" || key == "exclusiveMaximum";
            const bool exclusive = key[0] == 'e' || (key == "minimum" && flag("exclusiveMinimum")) ||
                                   (key == "maximum" && flag("exclusiveMaximum"));
            const std::optional<__int128> x = bound_steps(s[k], r.frac, upper, exclusive);
            if (!x) {
                const std::string why = r.frac ? "a whole part past 10^18" : "beyond the 64-bit integers";
                if (!lenient_) return bad(where, "\"" + key + "\" lies " + why);
                s_.ignored_.push_back(where + ": " + key);
                continue;
            }
            if (upper && (!r.has_hi || *x < r.hi)) {
                r.hi = *x;
                r.has_hi = true;
            }
            if (!upper && (!r.has_lo || *x > r.lo)) {
                r.lo = *x;
                r.has_lo = true;
            }
        }
        if (r.has_lo && r.has_hi && r.lo > r.hi)
            return bad(where,
                       std::string("no ") + (r.frac ? "number" : "integer") + " lies between its minimum and maximum");
        return true;
    }

    // anyOf / oneOf members, flattened; members that may begin with the same byte are merged
    // when both are enum / const lists or both only name types, else kept apart, and the schema
    // is then read by a grammar.
    Result<std::vector<int32_t>> alternatives(const Json& list, const std::string& where) {
        if (list.size() > 1024) return bad(where, "more than 1024 members");
        std::vector<int32_t> out;
        for (size_t k = 0; k < list.size(); ++k) {
            auto c = node(list[k], where + "/" + std::to_string(k));
            if (!c) return c.error();
            const Node& m = s_.nodes_[size_t(*c)];
            if (!m.compiled) return bad(where, "a member that leads back to this anyOf is not supported");
            if (!m.alternatives.empty())
                out.insert(out.end(), m.alternatives.begin(), m.alternatives.end());
            else
                out.push_back(*c);
        }
        auto types_only = [&](const Node& m) {
            return m.literals.empty() && m.alternatives.empty() && m.keys.empty() &&
                   m.additional == JsonSchema::k_any && m.min_props == 0 && m.max_props == UINT32_MAX &&
                   m.prefix.empty() && m.items == JsonSchema::k_any && m.min_items == 0 && m.max_items == UINT32_MAX &&
                   m.min_length == 0 && m.max_length == UINT32_MAX && m.range.any() && m.format == JsonSchema::f_none &&
                   m.pattern.empty();
        };
        for (size_t a = 0; a < out.size(); ++a) {
            for (size_t b = a + 1; b < out.size(); ++b) {
                const std::bitset<256> shared = first_bytes(out[a]) & first_bytes(out[b]);
                if (shared.none()) continue;
                const Node &x = s_.nodes_[size_t(out[a])], &y = s_.nodes_[size_t(out[b])];
                Node merged;
                merged.compiled = true;
                if (!x.literals.empty() && !y.literals.empty()) {
                    merged_literals_ += x.literals.size() + y.literals.size();
                    if (merged_literals_ > (1 << 20) || x.literals.size() + y.literals.size() > 0xFFFE)
                        return bad(where, "too many enum values to merge");
                    merged.any = false;
                    merged.literals = x.literals;
                    merged.literals.insert(merged.literals.end(), y.literals.begin(), y.literals.end());
                    std::sort(merged.literals.begin(), merged.literals.end());
                    merged.literals.erase(std::unique(merged.literals.begin(), merged.literals.end()),
                                          merged.literals.end());
                } else if (types_only(x) && types_only(y)) {
                    merged.types = uint8_t(x.types | y.types);
                    merged.any = merged.types == JsonSchema::t_all;
                } else {
                    as_grammar_ = true;
                    continue;
                }
                const int32_t m = int32_t(s_.nodes_.size());
                s_.nodes_.push_back(std::move(merged));
                out[a] = m;
                out.erase(out.begin() + std::ptrdiff_t(b));
                b = a;  // compare the merged member with the rest again
            }
        }
        return out;
    }

    static constexpr size_t k_max_nodes = 65536;
    const Json& doc_;
    const bool lenient_;
    JsonSchema s_;
    std::map<std::string, int32_t> refs_;
    int depth_ = 0;
    size_t merged_literals_ = 0;  // enum values copied by merges (bounds the work of a hostile schema)
    bool as_grammar_ = false;     // some anyOf's members may begin alike, or a string has a format
};

uint8_t JsonSchema::least_need(int32_t i) const {
    if (i == k_any) return 1;
    if (i == k_none) return k_deep;
    const Node& n = nodes_[size_t(i)];
    if (!n.literals.empty() || n.any) return 1;
    if (!n.alternatives.empty()) {
        uint8_t least = k_deep;
        for (int32_t a : n.alternatives) least = std::min(least, least_need(a));
        return least;
    }
    if (n.types & (t_string | t_number | t_integer | t_boolean | t_null)) return 1;
    return std::min(n.need_object, n.need_array);
}

Result<std::shared_ptr<const JsonSchema>> JsonSchema::compile(const Json& schema, bool lenient) {
    return SchemaCompiler(schema, lenient).run();
}

SchemaRecognizer& SchemaRecognizer::operator=(const SchemaRecognizer& o) {
    lex_ = o.lex_;
    schema_ = o.schema_;
    n_ = o.n_;
    std::copy(o.frames_, o.frames_ + o.n_, frames_);
    return *this;
}

bool SchemaRecognizer::push(uint8_t c) {
    const SchemaRecognizer before = *this;
    if (advance(c)) return true;
    *this = before;
    return false;
}

bool SchemaRecognizer::advance(uint8_t c) {
    const Mode before = lex_.mode_;
    const bool in_key = lex_.key_;
    const bool mid_char = lex_.utf8_need_ != 0;
    const uint8_t depth = lex_.depth_;
    if (!lex_.push(c)) return false;
    return step(before, in_key, mid_char, depth, c);
}

uint32_t SchemaRecognizer::plain_room() const {
    if (n_ == 0 || !lex_.in_plain_string()) return 0;
    const Frame& f = frames_[n_ - 1];
    const JsonSchema::Node& n = schema_->nodes_[size_t(f.node)];
    if (f.kind == Kind::any) return UINT32_MAX;
    if (f.kind == Kind::string) return n.max_length - f.count;
    // a key that names no property: any text, when additional properties are allowed
    if (f.kind == Kind::object && lex_.key_ && f.lo == f.hi && n.additional != JsonSchema::k_none) return UINT32_MAX;
    return 0;
}

bool SchemaRecognizer::is_number_mode(Mode m) {
    switch (m) {
        case Mode::num_minus:
        case Mode::num_zero:
        case Mode::num_int:
        case Mode::num_dot:
        case Mode::num_frac:
        case Mode::num_exp:
        case Mode::num_exp_sign:
        case Mode::num_exp_int:
            return true;
        default:
            return false;
    }
}

// The value that began at f.base ended with the byte just read (a string's quote, a container's
// close, a literal's last letter).
bool SchemaRecognizer::ended(const Frame& f) const {
    return lex_.depth_ == f.base && (lex_.mode_ == Mode::after || lex_.mode_ == Mode::done);
}

bool SchemaRecognizer::begin(int32_t index, uint8_t c, uint8_t depth) {
    if (n_ >= k_max_frames) return false;
    const JsonSchema::Node* n = &schema_->nodes_[size_t(index)];
    const bool number = starts_number(c);
    uint8_t need = JsonSchema::t_null;
    if (c == '{') need = JsonSchema::t_object;
    if (c == '[') need = JsonSchema::t_array;
    if (c == '"') need = JsonSchema::t_string;
    if (number) need = JsonSchema::t_number | JsonSchema::t_integer;
    if (c == 't' || c == 'f') need = JsonSchema::t_boolean;
    if (!n->alternatives.empty()) {  // the members differ in their first byte: c picks one
        int32_t pick = -1;
        for (int32_t a : n->alternatives) {
            const JsonSchema::Node& m = schema_->nodes_[size_t(a)];
            const bool takes = m.literals.empty()
                                   ? (m.types & need) != 0
                                   : std::any_of(m.literals.begin(), m.literals.end(),
                                                 [&](const std::string& t) { return uint8_t(t[0]) == c; });
            if (takes) {
                pick = a;
                break;
            }
        }
        if (pick < 0) return false;
        index = pick;
        n = &schema_->nodes_[size_t(index)];
    }
    Frame& f = frames_[n_];
    f = Frame{};
    f.node = index;
    f.base = depth;
    f.number = number;
    if (!n->literals.empty()) {
        f.kind = Kind::literal;
        f.hi = uint16_t(n->literals.size());
        if (!narrow(n->literals, f.lo, f.hi, f.count, c)) return false;
    } else if (n->any) {
        f.kind = Kind::any;
    } else {
        if (!(n->types & need)) return false;
        f.kind = c == '{'   ? Kind::object
                 : c == '[' ? Kind::array
                 : c == '"' ? Kind::string
                 : number   ? Kind::number
                            : Kind::word;
        // a container whose required members would nest past the frames left is never begun
        const int room = k_max_frames - n_;
        if ((f.kind == Kind::object && n->need_object > room) || (f.kind == Kind::array && n->need_array > room))
            return false;
        f.integer = number && !(n->types & JsonSchema::t_number);
        if (number && !n->range.any() && !n->range.push(f.text, c)) return false;  // a bounded number's first byte
    }
    ++n_;
    return true;
}

bool SchemaRecognizer::room(const Frame& f, bool required) const {
    const JsonSchema::Node& n = schema_->nodes_[size_t(f.node)];
    if (n.max_props == UINT32_MAX) return true;
    const uint32_t missing = uint32_t(__builtin_popcountll(n.required & ~f.seen));
    return f.members + 1u + missing - required <= n.max_props;
}

bool SchemaRecognizer::usable(const Frame& f, size_t key) const {
    const JsonSchema::Node& n = schema_->nodes_[size_t(f.node)];
    return !((f.seen >> key) & 1) && schema_->need(n.key_nodes[key]) <= k_max_frames - n_ &&
           room(f, (n.required >> key) & 1);
}

bool SchemaRecognizer::other_keys(const Frame& f) const {
    const int32_t a = schema_->nodes_[size_t(f.node)].additional;
    return a != JsonSchema::k_none && schema_->need(a) <= k_max_frames - n_ && room(f, false);
}

bool SchemaRecognizer::key_byte(Frame& f, Mode before, bool mid_char, uint8_t c) {
    const JsonSchema::Node& n = schema_->nodes_[size_t(f.node)];
    auto usable_in = [&](size_t lo, size_t hi) {
        for (size_t i = lo; i < hi; ++i)
            if (usable(f, i)) return true;
        return false;
    };
    if (before == Mode::str && !mid_char && c == '"') {  // the key's end
        const bool named = f.lo < f.hi && n.keys[f.lo].size() == f.count;
        if (named) {
            if (!usable(f, f.lo)) return false;  // given already, its value nests too deep, or no room
            f.key = f.lo;
            f.seen |= uint64_t(1) << f.lo;
        } else {
            if (!other_keys(f)) return false;
            f.key = k_other;
        }
        f.members = uint16_t(std::min(f.members + 1, 0xFFFF));
        return true;
    }
    uint16_t lo = f.lo, hi = f.hi, count = f.count;
    if (lo < hi && narrow(n.keys, lo, hi, count, c) && usable_in(lo, hi)) {
        f.lo = lo;
        f.hi = hi;
        f.count = count;
        return true;
    }
    if (!other_keys(f)) return false;
    f.lo = f.hi = 0;  // no property's name: an additional property
    return true;
}

bool SchemaRecognizer::step(Mode before, bool in_key, bool mid_char, uint8_t depth, uint8_t c) {
    if (n_ == 0) {
        if (before == Mode::start && c == '{') return begin(schema_->root_, c, depth);
        return true;  // whitespace around the object (the syntax takes nothing else)
    }
    Frame& f = frames_[n_ - 1];
    const JsonSchema::Node& n = schema_->nodes_[size_t(f.node)];
    // a number ends at the byte after it, which then belongs to the enclosing value
    const bool number_ended = is_number_mode(before) && !is_number_mode(lex_.mode_);
    auto end_then_parent = [&] {
        --n_;
        return step(Mode::after, false, false, depth, c);
    };
    switch (f.kind) {
        case Kind::number:
            if (number_ended) return (n.range.any() || n.range.holds(f.text)) && end_then_parent();
            if (f.integer && (c == '.' || c == 'e' || c == 'E')) return false;
            return n.range.any() || n.range.push(f.text, c);
        case Kind::any:
            if (f.number) return number_ended ? end_then_parent() : true;
            if (ended(f)) --n_;
            return true;
        case Kind::word:
            if (ended(f)) --n_;
            return true;
        case Kind::literal: {
            const bool whole = f.lo < f.hi && n.literals[f.lo].size() == f.count;
            if (f.number && number_ended) return whole && end_then_parent();
            if (!narrow(n.literals, f.lo, f.hi, f.count, c)) return false;
            if (!f.number && ended(f)) {
                if (n.literals[f.lo].size() != f.count) return false;
                --n_;
            }
            return true;
        }
        case Kind::string:
            if (before != Mode::str || mid_char) return true;  // inside an escape or a character
            if (c == '"') {
                if (f.count < n.min_length) return false;
                --n_;
                return true;
            }
            if (f.count >= n.max_length) return false;
            ++f.count;
            return true;
        case Kind::array: {
            if (is_space(c)) return true;
            if (c == ']') {
                if (f.count < n.min_items) return false;
                --n_;
                return true;
            }
            if (c == ',') {  // another item, which must fit in the frames left
                if (f.count >= n.max_items) return false;
                const int32_t next = f.count < n.prefix.size() ? n.prefix[f.count] : n.items;
                return schema_->need(next) <= k_max_frames - n_;
            }
            if (f.count >= n.max_items) return false;  // an item begins
            const int32_t item = f.count < n.prefix.size() ? n.prefix[f.count] : n.items;
            ++f.count;
            return begin(item, c, depth);
        }
        case Kind::object: {
            if (in_key) return key_byte(f, before, mid_char, c);
            if (is_space(c)) return true;
            auto unseen = [&] {  // whether another key may follow
                if (other_keys(f)) return true;
                for (size_t k = 0; k < n.keys.size(); ++k)
                    if (usable(f, k)) return true;
                return false;
            };
            switch (before) {
                case Mode::obj_first:
                case Mode::obj_key:
                    if (c == '}') {
                        if ((f.seen & n.required) != n.required || f.members < n.min_props) return false;
                        --n_;
                        return true;
                    }
                    if (!unseen()) return false;  // '"': a key begins
                    f.lo = 0;
                    f.hi = uint16_t(n.keys.size());
                    f.count = 0;
                    return true;
                case Mode::colon:
                    return true;
                case Mode::value:
                    return begin(f.key == k_other ? n.additional : n.key_nodes[f.key], c, depth);
                default:  // after a value
                    if (c == ',') return unseen();
                    if ((f.seen & n.required) != n.required || f.members < n.min_props) return false;
                    --n_;
                    return true;
            }
        }
    }
    return false;
}

}  // namespace bigmoe
