// Values of the Jinja interpreter: undefined, none, bool, int, float, string, list, dict (insertion
// ordered), namespace and callables. Lists and dicts have reference semantics, as in Python.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace bigmoe::jinja {

struct Value;
using List = std::vector<Value>;
struct Dict {
    std::vector<std::pair<std::string, Value>> items;
    Value* find(const std::string& k);
    void set(const std::string& k, Value v);
};
struct Args;
using Function = std::function<Value(Args&)>;

// A template error (syntax, unknown name, raise_exception); render() turns it into a Result.
struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// What a template may ask for. Parsing and rendering recurse once a nesting level, so a template
// that nests or recurses without end (a macro calling itself) would exhaust the stack; one that
// loops without end would never return. Past these it is an error. Real chat templates nest a
// few dozen levels and render kilobytes.
constexpr int k_max_nesting = 512;                 // expression / block / call levels
constexpr int64_t k_max_steps = 10'000'000;        // statements and loop iterations a render runs
constexpr size_t k_max_output = size_t(64) << 20;  // bytes a render writes
constexpr int64_t k_max_range = 1 << 20;           // items range() makes

struct Value {
    enum class Kind { undefined, none, boolean, integer, floating, string, list, dict, function };
    Kind kind = Kind::undefined;
    bool b = false;
    int64_t i = 0;
    double f = 0;
    std::string s;
    std::shared_ptr<List> list;
    std::shared_ptr<Dict> dict;
    std::shared_ptr<Function> fn;
    bool is_namespace = false;

    Value() = default;
    Value(const Value&) = default;
    Value(Value&&) noexcept = default;
    Value& operator=(const Value&) = default;
    Value& operator=(Value&&) noexcept = default;
    // Takes apart the lists and dicts only this value holds one level at a time: a template can
    // nest a list in itself half a million times in a loop, and destroying that recursively
    // would exhaust the stack.
    ~Value();
    static Value none();
    static Value boolean(bool v);
    static Value integer(int64_t v);
    static Value floating(double v);
    static Value string(std::string v);
    static Value make_list(List v = {});
    static Value make_dict();
    static Value function(Function f);
    static Value from_json(const nlohmann::ordered_json& j);

    bool is_undefined() const { return kind == Kind::undefined; }
    bool is_none() const { return kind == Kind::none; }
    bool is_number() const { return kind == Kind::integer || kind == Kind::floating; }
    double number() const { return kind == Kind::integer ? double(i) : f; }
    bool truthy() const;
    // Text as {{ value }} prints it (the reference JS Jinja's conventions: true/false, lists as JSON).
    std::string str() const;
    // JSON text (tojson); indent < 0: one line with ", " and ": " separators.
    std::string json(int indent = -1, int depth = 0) const;
    bool equals(const Value& o, int depth = 0) const;
};

// Call arguments: positional then keyword.
struct Args {
    List pos;
    std::vector<std::pair<std::string, Value>> kw;
    const Value* get(size_t index, const std::string& name) const;
};

}  // namespace bigmoe::jinja
