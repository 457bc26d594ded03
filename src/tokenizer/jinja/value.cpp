#include "tokenizer/jinja/value.h"

#include <cmath>
#include <cstdio>

namespace bigmoe::jinja {

Value* Dict::find(const std::string& k) {
    for (auto& kv : items)
        if (kv.first == k) return &kv.second;
    return nullptr;
}
void Dict::set(const std::string& k, Value v) {
    if (Value* x = find(k))
        *x = std::move(v);
    else
        items.emplace_back(k, std::move(v));
}

Value Value::none() {
    Value v;
    v.kind = Kind::none;
    return v;
}
Value Value::boolean(bool x) {
    Value v;
    v.kind = Kind::boolean;
    v.b = x;
    return v;
}
Value Value::integer(int64_t x) {
    Value v;
    v.kind = Kind::integer;
    v.i = x;
    return v;
}
Value Value::floating(double x) {
    Value v;
    v.kind = Kind::floating;
    v.f = x;
    return v;
}
Value Value::string(std::string x) {
    Value v;
    v.kind = Kind::string;
    v.s = std::move(x);
    return v;
}
Value Value::make_list(List x) {
    Value v;
    v.kind = Kind::list;
    v.list = std::make_shared<List>(std::move(x));
    return v;
}
Value Value::make_dict() {
    Value v;
    v.kind = Kind::dict;
    v.dict = std::make_shared<Dict>();
    return v;
}
Value Value::function(Function f) {
    Value v;
    v.kind = Kind::function;
    v.fn = std::make_shared<Function>(std::move(f));
    return v;
}

Value Value::from_json(const nlohmann::ordered_json& j) {
    switch (j.type()) {
        case nlohmann::ordered_json::value_t::null:
            return none();
        case nlohmann::ordered_json::value_t::boolean:
            return boolean(j.get<bool>());
        case nlohmann::ordered_json::value_t::number_integer:
        case nlohmann::ordered_json::value_t::number_unsigned:
            return integer(j.get<int64_t>());
        case nlohmann::ordered_json::value_t::number_float:
            return floating(j.get<double>());
        case nlohmann::ordered_json::value_t::string:
            return string(j.get<std::string>());
        case nlohmann::ordered_json::value_t::array: {
            Value v = make_list();
            for (const auto& x : j) v.list->push_back(from_json(x));
            return v;
        }
        case nlohmann::ordered_json::value_t::object: {
            Value v = make_dict();
            for (auto it = j.begin(); it != j.end(); ++it) v.dict->set(it.key(), from_json(it.value()));
            return v;
        }
        default:
            return Value();
    }
}

bool Value::truthy() const {
    switch (kind) {
        case Kind::undefined:
        case Kind::none:
            return false;
        case Kind::boolean:
            return b;
        case Kind::integer:
            return i != 0;
        case Kind::floating:
            return f != 0;
        case Kind::string:
            return !s.empty();
        case Kind::list:
            return !list->empty();
        case Kind::dict:
            return is_namespace || !dict->items.empty();
        case Kind::function:
            return true;
    }
    return false;
}

static std::string format_float(double d) {
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 1e16) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.1f", d);
        return buf;
    }
    // shortest round-trip representation
    for (int prec = 1; prec <= 17; ++prec) {
        char buf[64];
        std::snprintf(buf, sizeof buf, "%.*g", prec, d);
        if (std::strtod(buf, nullptr) == d) return buf;
    }
    return std::to_string(d);
}

static std::string json_string(const std::string& s) {
    return nlohmann::json(s).dump(-1, ' ', false);
}

std::string Value::str() const {
    switch (kind) {
        case Kind::undefined:
        case Kind::none:
            return "";
        case Kind::string:
            return s;
        case Kind::function:
            return "<function>";
        default:  // booleans and numbers print as in JSON; lists and dicts as JSON
            return json();
    }
}

std::string Value::json(int indent, int depth) const {
    if (depth > k_max_nesting) throw Error("tojson of a value nested deeper than " + std::to_string(k_max_nesting));
    const std::string nl = indent >= 0 ? "\n" + std::string(size_t(indent * (depth + 1)), ' ') : "";
    const std::string close = indent >= 0 ? "\n" + std::string(size_t(indent * depth), ' ') : "";
    const std::string sep = indent >= 0 ? "," : ", ";
    switch (kind) {
        case Kind::undefined:
        case Kind::none:
            return "null";
        case Kind::boolean:
            return b ? "true" : "false";
        case Kind::integer:
            return std::to_string(i);
        case Kind::floating:
            return format_float(f);
        case Kind::string:
            return json_string(s);
        case Kind::list: {
            if (list->empty()) return "[]";
            std::string r = "[";
            for (size_t k = 0; k < list->size(); ++k) r += (k ? sep : "") + nl + (*list)[k].json(indent, depth + 1);
            return r + close + "]";
        }
        case Kind::dict: {
            if (dict->items.empty()) return "{}";
            std::string r = "{";
            for (size_t k = 0; k < dict->items.size(); ++k)
                r += (k ? sep : "") + nl + json_string(dict->items[k].first) + ": " +
                     dict->items[k].second.json(indent, depth + 1);
            return r + close + "}";
        }
        case Kind::function:
            throw Error("cannot convert a function to JSON");
    }
    return "null";
}

namespace {
// Moves the children of the containers only `v` holds onto `stack`, leaving them empty.
void take_children(Value& v, std::vector<Value>& stack) {
    if (v.list && v.list.use_count() == 1) {
        for (Value& c : *v.list) stack.push_back(std::move(c));
        v.list->clear();
    }
    if (v.dict && v.dict.use_count() == 1) {
        for (auto& kv : v.dict->items) stack.push_back(std::move(kv.second));
        v.dict->items.clear();
    }
}
}  // namespace

Value::~Value() {
    const bool owns_list = list && list.use_count() == 1 && !list->empty();
    const bool owns_dict = dict && dict.use_count() == 1 && !dict->items.empty();
    if (!owns_list && !owns_dict) return;
    std::vector<Value> stack;
    take_children(*this, stack);
    while (!stack.empty()) {
        Value v = std::move(stack.back());
        stack.pop_back();
        take_children(v, stack);  // v then dies with empty containers: no recursion
    }
}

bool Value::equals(const Value& o, int depth) const {
    if (depth > k_max_nesting) throw Error("comparing values nested deeper than " + std::to_string(k_max_nesting));
    if (is_number() && o.is_number()) return number() == o.number();
    if ((is_none() || is_undefined()) && (o.is_none() || o.is_undefined())) return kind == o.kind;
    if (kind != o.kind) return false;
    switch (kind) {
        case Kind::boolean:
            return b == o.b;
        case Kind::string:
            return s == o.s;
        case Kind::list:
            if (list->size() != o.list->size()) return false;
            for (size_t k = 0; k < list->size(); ++k)
                if (!(*list)[k].equals((*o.list)[k], depth + 1)) return false;
            return true;
        case Kind::dict:
            if (dict->items.size() != o.dict->items.size()) return false;
            for (auto& [key, v] : dict->items) {
                const Value* w = o.dict->find(key);
                if (!w || !v.equals(*w, depth + 1)) return false;
            }
            return true;
        default:
            return false;
    }
}

const Value* Args::get(size_t index, const std::string& name) const {
    for (auto& [k, v] : kw)
        if (k == name) return &v;
    return index < pos.size() ? &pos[index] : nullptr;
}

}  // namespace bigmoe::jinja
