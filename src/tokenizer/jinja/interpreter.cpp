// Jinja evaluation: scopes, statements, operators, filters, tests and methods.
#include <algorithm>
#include <cmath>
#include <map>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/jinja.h"

namespace bigmoe::jinja {

namespace {

struct LoopControl {
    enum K { none, brk, cont } k = none;
};

class Interp {
  public:
    explicit Interp(std::string* out) : out_(out) { scopes_.emplace_back(); }

    void set_global(const std::string& k, Value v) { scopes_.front()[k] = std::move(v); }

    void exec(const Body& body, LoopControl& lc) {
        for (const auto& n : body) {
            exec(*n, lc);
            if (lc.k != LoopControl::none) return;
        }
    }

    Value eval(const Expr& e) {
        Level level(*this);
        return eval_expr(e);
    }

  private:
    // A nesting level of evaluation (an expression, a statement, a macro's body) for its
    // lifetime, and a step of the render's budget.
    class Level {
      public:
        explicit Level(Interp& in) : in_(in) {
            if (++in_.depth_ > k_max_nesting)
                throw Error("the template nests or recurses deeper than " + std::to_string(k_max_nesting) + " levels");
            in_.step();
        }
        ~Level() { --in_.depth_; }
        Level(const Level&) = delete;
        Level& operator=(const Level&) = delete;

      private:
        Interp& in_;
    };
    void step() {
        if (++steps_ > k_max_steps)
            throw Error("the template runs more than " + std::to_string(k_max_steps) + " steps");
    }
    void write(const std::string& s) {
        if (out_->size() + s.size() > k_max_output)
            throw Error("the template writes more than " + std::to_string(k_max_output >> 20) + " MiB");
        *out_ += s;
    }
    Value eval_expr(const Expr& e);

    using Scope = std::map<std::string, Value>;

    Value lookup(const std::string& name) {
        for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
            auto f = it->find(name);
            if (f != it->end()) return f->second;
        }
        return Value();
    }

    void exec(const Node& n, LoopControl& lc);
    void exec_for(const Node& n);
    Value call(const Value& f, Args& a) {
        if (f.kind != Value::Kind::function) throw Error("calling something that is not a function");
        return (*f.fn)(a);
    }
    Args eval_args(const Expr& e) {
        Args a;
        for (const auto& x : e.args) a.pos.push_back(eval(*x));
        for (const auto& [k, x] : e.kwargs) a.kw.emplace_back(k, eval(*x));
        return a;
    }
    Value attribute(const Value& obj, const std::string& name);
    Value filter(const std::string& name, const Value& v, Args& a);
    bool test(const std::string& name, const Value& v, Args& a);
    Value binary(const std::string& op, const Value& a, const Value& b);

    std::string* out_;
    std::vector<Scope> scopes_;
    int depth_ = 0;
    int64_t steps_ = 0;
};

int64_t as_int(const Value& v) {
    if (v.kind == Value::Kind::integer) return v.i;
    if (v.kind == Value::Kind::floating) return int64_t(v.f);
    if (v.kind == Value::Kind::boolean) return v.b;
    throw Error("expected a number, got '" + v.str() + "'");
}

Value index_of(const Value& obj, const Value& key) {
    if (obj.kind == Value::Kind::list) {
        int64_t i = as_int(key);
        const int64_t n = int64_t(obj.list->size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value();
        return (*obj.list)[size_t(i)];
    }
    if (obj.kind == Value::Kind::string) {
        int64_t i = as_int(key);
        const int64_t n = int64_t(obj.s.size());
        if (i < 0) i += n;
        if (i < 0 || i >= n) return Value();
        return Value::string(obj.s.substr(size_t(i), 1));
    }
    if (obj.kind == Value::Kind::dict) {
        const Value* v = obj.dict->find(key.kind == Value::Kind::string ? key.s : key.str());
        return v ? *v : Value();
    }
    return Value();
}

std::string strip_chars(const std::string& s, const std::string& chars, bool left, bool right) {
    size_t b = 0, e = s.size();
    auto strip = [&](char c) {
        return chars.empty() ? std::isspace(static_cast<unsigned char>(c)) != 0 : chars.find(c) != std::string::npos;
    };
    if (left)
        while (b < e && strip(s[b])) ++b;
    if (right)
        while (e > b && strip(s[e - 1])) --e;
    return s.substr(b, e - b);
}

Value string_method(const std::string& s, const std::string& name) {
    auto str_arg = [](Args& a, size_t i, const std::string& n, const std::string& def) {
        const Value* v = a.get(i, n);
        return v && v->kind == Value::Kind::string ? v->s : def;
    };
    if (name == "strip" || name == "lstrip" || name == "rstrip")
        return Value::function([s, name, str_arg](Args& a) {
            const std::string chars = str_arg(a, 0, "chars", "");
            return Value::string(strip_chars(s, chars, name != "rstrip", name != "lstrip"));
        });
    if (name == "split")
        return Value::function([s, str_arg](Args& a) {
            const Value* sepv = a.get(0, "sep");
            Value out = Value::make_list();
            if (!sepv || sepv->is_none()) {
                size_t p = 0;
                while (p < s.size()) {
                    while (p < s.size() && std::isspace(static_cast<unsigned char>(s[p]))) ++p;
                    size_t e = p;
                    while (e < s.size() && !std::isspace(static_cast<unsigned char>(s[e]))) ++e;
                    if (e > p) out.list->push_back(Value::string(s.substr(p, e - p)));
                    p = e;
                }
                return out;
            }
            const std::string sep = sepv->s;
            const Value* mx = a.get(1, "maxsplit");
            int64_t left = mx ? as_int(*mx) : -1;
            if (sep.empty()) throw Error("split: empty separator");
            size_t p = 0;
            for (size_t hit; left != 0 && (hit = s.find(sep, p)) != std::string::npos; p = hit + sep.size(), --left)
                out.list->push_back(Value::string(s.substr(p, hit - p)));
            out.list->push_back(Value::string(s.substr(p)));
            return out;
        });
    if (name == "startswith" || name == "endswith")
        return Value::function([s, name](Args& a) {
            const Value* v = a.get(0, "prefix");
            std::vector<std::string> cands;
            if (v && v->kind == Value::Kind::list)
                for (auto& x : *v->list) cands.push_back(x.s);
            else if (v)
                cands.push_back(v->s);
            for (auto& c : cands) {
                if (name == "startswith" && s.rfind(c, 0) == 0) return Value::boolean(true);
                if (name == "endswith" && s.size() >= c.size() && s.compare(s.size() - c.size(), c.size(), c) == 0)
                    return Value::boolean(true);
            }
            return Value::boolean(false);
        });
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize")
        return Value::function([s, name](Args&) {
            std::string r = s;
            bool start = true;
            for (size_t i = 0; i < r.size(); ++i) {
                unsigned char c = static_cast<unsigned char>(r[i]);
                if (name == "upper")
                    r[i] = char(std::toupper(c));
                else if (name == "lower")
                    r[i] = char(std::tolower(c));
                else if (name == "title") {
                    r[i] = char(start ? std::toupper(c) : std::tolower(c));
                    start = !std::isalnum(c);
                } else {
                    r[i] = char(i == 0 ? std::toupper(c) : std::tolower(c));
                }
            }
            return Value::string(r);
        });
    if (name == "replace")
        return Value::function([s](Args& a) {
            const Value *from = a.get(0, "old"), *to = a.get(1, "new");
            if (!from || !to) throw Error("replace needs two arguments");
            std::string r;
            if (from->s.empty()) return Value::string(s);
            size_t p = 0;
            for (size_t hit; (hit = s.find(from->s, p)) != std::string::npos; p = hit + from->s.size())
                r += s.substr(p, hit - p) + to->s;
            return Value::string(r + s.substr(p));
        });
    if (name == "find" || name == "count")
        return Value::function([s, name](Args& a) {
            const Value* v = a.get(0, "sub");
            if (!v) throw Error(name + " needs an argument");
            if (name == "find") {
                const size_t p = s.find(v->s);
                return Value::integer(p == std::string::npos ? -1 : int64_t(p));
            }
            int64_t n = 0;
            if (!v->s.empty())
                for (size_t p = 0; (p = s.find(v->s, p)) != std::string::npos; p += v->s.size()) ++n;
            return Value::integer(n);
        });
    return Value();
}

Value Interp::attribute(const Value& obj, const std::string& name) {
    if (obj.kind == Value::Kind::dict) {
        if (const Value* v = obj.dict->find(name)) return *v;
        auto d = obj.dict;
        if (name == "items" || name == "keys" || name == "values")
            return Value::function([d, name](Args&) {
                Value out = Value::make_list();
                for (auto& [k, v] : d->items) {
                    if (name == "items")
                        out.list->push_back(Value::make_list({Value::string(k), v}));
                    else if (name == "keys")
                        out.list->push_back(Value::string(k));
                    else
                        out.list->push_back(v);
                }
                return out;
            });
        if (name == "get")
            return Value::function([d](Args& a) {
                const Value* k = a.get(0, "key");
                if (k)
                    if (const Value* v = d->find(k->s)) return *v;
                const Value* def = a.get(1, "default");
                return def ? *def : Value::none();
            });
        return Value();
    }
    if (obj.kind == Value::Kind::string) return string_method(obj.s, name);
    if (obj.kind == Value::Kind::list) {
        auto l = obj.list;
        if (name == "append")
            return Value::function([l](Args& a) {
                if (!a.pos.empty()) l->push_back(a.pos[0]);
                return Value::none();
            });
        if (name == "pop")
            return Value::function([l](Args&) {
                if (l->empty()) throw Error("pop from an empty list");
                Value v = l->back();
                l->pop_back();
                return v;
            });
    }
    return Value();
}

Value slice_of(const Value& obj, const Value& a, const Value& b, const Value& c) {
    const bool is_str = obj.kind == Value::Kind::string;
    if (!is_str && obj.kind != Value::Kind::list) throw Error("slicing something that is not a string or list");
    const int64_t n = is_str ? int64_t(obj.s.size()) : int64_t(obj.list->size());
    const int64_t step = c.is_undefined() || c.is_none() ? 1 : as_int(c);
    if (step == 0) throw Error("slice step cannot be zero");
    auto norm = [&](const Value& v, int64_t def) {
        if (v.is_undefined() || v.is_none()) return def;
        int64_t x = as_int(v);
        if (x < 0) x += n;
        return step > 0 ? std::clamp<int64_t>(x, 0, n) : std::clamp<int64_t>(x, -1, n - 1);
    };
    const int64_t start = norm(a, step > 0 ? 0 : n - 1), stop = norm(b, step > 0 ? n : -1);
    std::string s;
    Value l = Value::make_list();
    for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step) {
        if (is_str)
            s += obj.s[size_t(i)];
        else
            l.list->push_back((*obj.list)[size_t(i)]);
    }
    return is_str ? Value::string(s) : l;
}

bool contains(const Value& hay, const Value& needle) {
    if (hay.kind == Value::Kind::string) return hay.s.find(needle.str()) != std::string::npos;
    if (hay.kind == Value::Kind::list)
        return std::any_of(hay.list->begin(), hay.list->end(), [&](const Value& v) { return v.equals(needle); });
    if (hay.kind == Value::Kind::dict) return hay.dict->find(needle.str()) != nullptr;
    return false;
}

// A string of `bytes` the template builds must fit in what a render may write.
void check_length(size_t bytes) {
    if (bytes > k_max_output)
        throw Error("the template builds a string of more than " + std::to_string(k_max_output >> 20) + " MiB");
}
Value bounded(std::string s) {
    check_length(s.size());
    return Value::string(std::move(s));
}

Value Interp::binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "==") return Value::boolean(a.equals(b));
    if (op == "!=") return Value::boolean(!a.equals(b));
    if (op == "in") return Value::boolean(contains(b, a));
    if (op == "not in") return Value::boolean(!contains(b, a));
    if (op == "~") return bounded(a.str() + b.str());
    if (op == "<" || op == ">" || op == "<=" || op == ">=") {
        int c;
        if (a.is_number() && b.is_number())
            c = a.number() < b.number() ? -1 : a.number() > b.number() ? 1 : 0;
        else if (a.kind == Value::Kind::string && b.kind == Value::Kind::string)
            c = a.s.compare(b.s);
        else
            throw Error("cannot compare '" + a.str() + "' and '" + b.str() + "'");
        return Value::boolean(op == "<" ? c < 0 : op == ">" ? c > 0 : op == "<=" ? c <= 0 : c >= 0);
    }
    if (op == "+") {
        if (a.kind == Value::Kind::string && b.kind == Value::Kind::string) return bounded(a.s + b.s);
        if (a.kind == Value::Kind::list && b.kind == Value::Kind::list) {
            if (a.list->size() + b.list->size() > size_t(k_max_range))
                throw Error("the template builds a list of more than " + std::to_string(k_max_range) + " items");
            List l = *a.list;
            l.insert(l.end(), b.list->begin(), b.list->end());
            return Value::make_list(l);
        }
    }
    if (!a.is_number() || !b.is_number()) {
        if (op == "*" && a.kind == Value::Kind::string && b.kind == Value::Kind::integer) {
            if (b.i > 0 && a.s.size() > k_max_output / size_t(b.i)) check_length(k_max_output + 1);
            std::string r;
            for (int64_t k = 0; k < b.i; ++k) r += a.s;
            return Value::string(r);
        }
        throw Error("unsupported operands for '" + op + "': '" + a.str() + "' and '" + b.str() + "'");
    }
    const bool ints = a.kind == Value::Kind::integer && b.kind == Value::Kind::integer;
    int64_t r = 0;
    auto overflow = [&] { return Error("integer overflow in '" + op + "'"); };
    if (op == "+") {
        if (ints && __builtin_add_overflow(a.i, b.i, &r)) throw overflow();
        return ints ? Value::integer(r) : Value::floating(a.number() + b.number());
    }
    if (op == "-") {
        if (ints && __builtin_sub_overflow(a.i, b.i, &r)) throw overflow();
        return ints ? Value::integer(r) : Value::floating(a.number() - b.number());
    }
    if (op == "*") {
        if (ints && __builtin_mul_overflow(a.i, b.i, &r)) throw overflow();
        return ints ? Value::integer(r) : Value::floating(a.number() * b.number());
    }
    if (op == "/") {
        if (b.number() == 0) throw Error("division by zero");
        return Value::floating(a.number() / b.number());
    }
    if (op == "//") {
        if (b.number() == 0) throw Error("division by zero");
        return ints ? Value::integer(int64_t(std::floor(double(a.i) / double(b.i))))
                    : Value::floating(std::floor(a.number() / b.number()));
    }
    if (op == "%") {
        if (b.number() == 0) throw Error("modulo by zero");
        if (ints) return Value::integer(((a.i % b.i) + b.i) % b.i);
        return Value::floating(a.number() - b.number() * std::floor(a.number() / b.number()));
    }
    if (op == "**")
        return ints && b.i >= 0 ? Value::integer(int64_t(std::pow(a.i, b.i)))
                                : Value::floating(std::pow(a.number(), b.number()));
    throw Error("unknown operator " + op);
}

Value Interp::eval_expr(const Expr& e) {
    switch (e.k) {
        case Expr::K::literal:
            return e.lit;
        case Expr::K::name:
            return lookup(e.name);
        case Expr::K::attr:
            return attribute(eval(*e.kids[0]), e.name);
        case Expr::K::index: {
            const Value obj = eval(*e.kids[0]), key = eval(*e.kids[1]);
            if (obj.kind == Value::Kind::dict && key.kind == Value::Kind::string) {
                if (const Value* v = obj.dict->find(key.s)) return *v;
                return attribute(obj, key.s);
            }
            return index_of(obj, key);
        }
        case Expr::K::slice:
            return slice_of(eval(*e.kids[0]), e.kids[1] ? eval(*e.kids[1]) : Value(),
                            e.kids[2] ? eval(*e.kids[2]) : Value(), e.kids[3] ? eval(*e.kids[3]) : Value());
        case Expr::K::call: {
            const Value f = eval(*e.kids[0]);
            Args a = eval_args(e);
            if (f.is_undefined()) throw Error("call of an undefined function");
            return call(f, a);
        }
        case Expr::K::filter: {
            const Value v = eval(*e.kids[0]);
            Args a = eval_args(e);
            return filter(e.name, v, a);
        }
        case Expr::K::test: {
            const Value v = eval(*e.kids[0]);
            Args a = eval_args(e);
            return Value::boolean(test(e.name, v, a) != e.negate);
        }
        case Expr::K::unary: {
            const Value v = eval(*e.kids[0]);
            if (e.name == "not") return Value::boolean(!v.truthy());
            if (!v.is_number()) throw Error("unary " + e.name + " of a non-number");
            if (e.name == "+") return v;
            return v.kind == Value::Kind::integer ? Value::integer(-v.i) : Value::floating(-v.f);
        }
        case Expr::K::binary: {
            if (e.name == "and") {
                const Value a = eval(*e.kids[0]);
                return a.truthy() ? eval(*e.kids[1]) : a;
            }
            if (e.name == "or") {
                const Value a = eval(*e.kids[0]);
                return a.truthy() ? a : eval(*e.kids[1]);
            }
            return binary(e.name, eval(*e.kids[0]), eval(*e.kids[1]));
        }
        case Expr::K::ternary:
            if (eval(*e.kids[0]).truthy()) return eval(*e.kids[1]);
            return e.kids.size() > 2 ? eval(*e.kids[2]) : Value();
        case Expr::K::list: {
            Value l = Value::make_list();
            for (const auto& k : e.kids) l.list->push_back(eval(*k));
            return l;
        }
        case Expr::K::dict: {
            Value d = Value::make_dict();
            for (size_t k = 0; k + 1 < e.kids.size(); k += 2) d.dict->set(eval(*e.kids[k]).str(), eval(*e.kids[k + 1]));
            return d;
        }
    }
    return Value();
}

bool Interp::test(const std::string& name, const Value& v, Args& a) {
    using K = Value::Kind;
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "string") return v.kind == K::string;
    if (name == "number") return v.is_number();
    if (name == "integer") return v.kind == K::integer;
    if (name == "float") return v.kind == K::floating;
    if (name == "boolean") return v.kind == K::boolean;
    if (name == "true") return v.kind == K::boolean && v.b;
    if (name == "false") return v.kind == K::boolean && !v.b;
    if (name == "mapping") return v.kind == K::dict;
    if (name == "sequence" || name == "iterable") return v.kind == K::list || v.kind == K::string || v.kind == K::dict;
    if (name == "callable") return v.kind == K::function;
    if (name == "even") return as_int(v) % 2 == 0;
    if (name == "odd") return as_int(v) % 2 != 0;
    if (name == "divisibleby") return a.pos.empty() ? false : as_int(v) % as_int(a.pos[0]) == 0;
    if (name == "equalto" || name == "eq" || name == "sameas") return !a.pos.empty() && v.equals(a.pos[0]);
    if (name == "ne") return a.pos.empty() || !v.equals(a.pos[0]);
    if (name == "in") return !a.pos.empty() && contains(a.pos[0], v);
    if (name == "lower") return v.kind == K::string && std::none_of(v.s.begin(), v.s.end(), ::isupper);
    if (name == "upper") return v.kind == K::string && std::none_of(v.s.begin(), v.s.end(), ::islower);
    throw Error("unknown test '" + name + "'");
}

Value Interp::filter(const std::string& name, const Value& v, Args& a) {
    using K = Value::Kind;
    auto items_of = [&](const Value& x) -> List {
        if (x.kind == K::list) return *x.list;
        if (x.kind == K::dict) {
            List l;
            for (auto& [k, val] : x.dict->items) l.push_back(Value::string(k));
            return l;
        }
        if (x.kind == K::string) {
            List l;
            for (char c : x.s) l.push_back(Value::string(std::string(1, c)));
            return l;
        }
        if (x.is_undefined() || x.is_none()) return {};
        throw Error("filter '" + name + "' needs a sequence");
    };
    if (name == "length" || name == "count") {
        if (v.kind == K::string) return Value::integer(int64_t(v.s.size()));
        return Value::integer(int64_t(items_of(v).size()));
    }
    if (name == "tojson") {
        const Value* ind = a.get(0, "indent");
        return Value::string(v.json(ind && !ind->is_none() ? int(as_int(*ind)) : -1));
    }
    if (name == "trim") return Value::string(strip_chars(v.str(), "", true, true));
    if (name == "upper" || name == "lower" || name == "title" || name == "capitalize") {
        Args none;
        return (*string_method(v.str(), name).fn)(none);
    }
    if (name == "string") return Value::string(v.str());
    if (name == "int") {
        if (v.kind == K::string) return Value::integer(std::strtoll(v.s.c_str(), nullptr, 10));
        return Value::integer(v.is_number() || v.kind == K::boolean ? as_int(v) : 0);
    }
    if (name == "float") return Value::floating(v.kind == K::string ? std::strtod(v.s.c_str(), nullptr) : v.number());
    if (name == "abs")
        return v.kind == K::integer ? Value::integer(std::llabs(v.i)) : Value::floating(std::fabs(v.number()));
    if (name == "default" || name == "d") {
        const Value* dv = a.get(0, "default_value");
        const Value* boolean = a.get(1, "boolean");
        const bool use = v.is_undefined() || (boolean && boolean->truthy() && !v.truthy());
        return use ? (dv ? *dv : Value::string("")) : v;
    }
    if (name == "list") return Value::make_list(items_of(v));
    if (name == "first" || name == "last") {
        if (v.kind == K::string)
            return v.s.empty() ? Value() : Value::string(std::string(1, name == "first" ? v.s.front() : v.s.back()));
        List l = items_of(v);
        if (l.empty()) return Value();
        return name == "first" ? l.front() : l.back();
    }
    if (name == "reverse") {
        if (v.kind == K::string) return Value::string(std::string(v.s.rbegin(), v.s.rend()));
        List l = items_of(v);
        std::reverse(l.begin(), l.end());
        return Value::make_list(l);
    }
    if (name == "join") {
        const Value* sep = a.get(0, "d");
        const Value* attr = a.get(1, "attribute");
        std::string r;
        bool first = true;
        for (const Value& x : items_of(v)) {
            r += (first ? "" : (sep ? sep->str() : "")) + (attr ? attribute(x, attr->str()).str() : x.str());
            first = false;
        }
        return Value::string(r);
    }
    if (name == "items") {
        if (v.kind != K::dict) throw Error("items filter needs a mapping");
        Value out = Value::make_list();
        for (auto& [k, val] : v.dict->items) out.list->push_back(Value::make_list({Value::string(k), val}));
        return out;
    }
    if (name == "selectattr" || name == "rejectattr" || name == "select" || name == "reject") {
        const bool by_attr = name == "selectattr" || name == "rejectattr";
        const bool keep_match = name == "selectattr" || name == "select";
        Value out = Value::make_list();
        for (const Value& x : items_of(v)) {
            size_t arg = 0;
            Value subject = x;
            if (by_attr) {
                if (a.pos.empty()) throw Error(name + " needs an attribute name");
                subject = attribute(x, a.pos[0].str());
                arg = 1;
            }
            bool ok;
            if (a.pos.size() <= arg) {
                ok = subject.truthy();
            } else {
                Args ta;
                ta.pos.assign(a.pos.begin() + long(arg) + 1, a.pos.end());
                ok = test(a.pos[arg].str(), subject, ta);
            }
            if (ok == keep_match) out.list->push_back(x);
        }
        return out;
    }
    if (name == "map") {
        Value out = Value::make_list();
        const Value* attr = a.get(99, "attribute");
        for (const Value& x : items_of(v)) {
            if (attr) {
                out.list->push_back(attribute(x, attr->str()));
            } else if (!a.pos.empty()) {
                Args fa;
                fa.pos.assign(a.pos.begin() + 1, a.pos.end());
                out.list->push_back(filter(a.pos[0].str(), x, fa));
            }
        }
        return out;
    }
    if (name == "unique") {
        Value out = Value::make_list();
        for (const Value& x : items_of(v))
            if (!contains(out, x)) out.list->push_back(x);
        return out;
    }
    if (name == "sort" || name == "dictsort") {
        List l = name == "dictsort" ? filter("items", v, a).list ? *filter("items", v, a).list : List{} : items_of(v);
        const Value* rev = a.get(0, "reverse");
        const Value* attr = a.get(2, "attribute");
        std::stable_sort(l.begin(), l.end(), [&](const Value& x, const Value& y) {
            const Value kx = attr                                      ? attribute(x, attr->str())
                             : x.kind == K::list && name == "dictsort" ? (*x.list)[0]
                                                                       : x;
            const Value ky = attr                                      ? attribute(y, attr->str())
                             : y.kind == K::list && name == "dictsort" ? (*y.list)[0]
                                                                       : y;
            return binary("<", kx, ky).b;
        });
        if (rev && rev->truthy()) std::reverse(l.begin(), l.end());
        return Value::make_list(l);
    }
    if (name == "replace") {
        Args ma = a;
        return (*string_method(v.str(), "replace").fn)(ma);
    }
    if (name == "safe" || name == "e" || name == "escape") return v;
    if (name == "indent") {
        const Value* w = a.get(0, "width");
        const Value* first = a.get(1, "first");
        const std::string pad(size_t(w ? as_int(*w) : 4), ' ');
        std::string s = v.str(), r;
        for (size_t i = 0; i < s.size(); ++i) {
            r += s[i];
            if (s[i] == '\n' && i + 1 < s.size() && s[i + 1] != '\n') r += pad;
        }
        return Value::string((first && first->truthy() ? pad : "") + r);
    }
    if (name == "round") {
        const Value* p = a.get(0, "precision");
        const double m = std::pow(10.0, p ? double(as_int(*p)) : 0.0);
        return Value::floating(std::round(v.number() * m) / m);
    }
    if (name == "sum" || name == "min" || name == "max") {
        List l = items_of(v);
        if (name == "sum") {
            Value s = Value::integer(0);
            for (auto& x : l) s = binary("+", s, x);
            return s;
        }
        if (l.empty()) return Value();
        Value best = l[0];
        for (auto& x : l)
            if (binary(name == "min" ? "<" : ">", x, best).b) best = x;
        return best;
    }
    throw Error("unknown filter '" + name + "'");
}

void Interp::exec(const Node& n, LoopControl& lc) {
    Level level(*this);
    switch (n.k) {
        case Node::K::text:
            write(n.text);
            return;
        case Node::K::output:
            write(eval(*n.expr).str());
            return;
        case Node::K::if_:
            for (const auto& [cond, body] : n.branches)
                if (eval(*cond).truthy()) return exec(body, lc);
            return exec(n.else_body, lc);
        case Node::K::for_:
            return exec_for(n);
        case Node::K::set: {
            Value v = eval(*n.expr);
            if (!n.attr.empty()) {
                Value target = lookup(n.text);
                if (target.kind != Value::Kind::dict) throw Error("cannot set attribute of '" + n.text + "'");
                target.dict->set(n.attr, std::move(v));
            } else {
                scopes_.back()[n.text] = std::move(v);
            }
            return;
        }
        case Node::K::set_block: {
            std::string saved;
            std::swap(saved, *out_);
            LoopControl inner;
            exec(n.body, inner);
            std::swap(saved, *out_);
            scopes_.back()[n.text] = Value::string(saved);
            return;
        }
        case Node::K::macro: {
            const Node* node = &n;
            scopes_.back()[n.text] = Value::function([this, node](Args& a) {
                Scope s;
                for (size_t k = 0; k < node->params.size(); ++k) {
                    const Value* v = a.get(k, node->params[k].first);
                    s[node->params[k].first] = v                        ? *v
                                               : node->params[k].second ? eval(*node->params[k].second)
                                                                        : Value();
                }
                scopes_.push_back(std::move(s));
                std::string saved;
                std::swap(saved, *out_);
                LoopControl inner;
                exec(node->body, inner);
                std::swap(saved, *out_);
                scopes_.pop_back();
                return Value::string(saved);
            });
            return;
        }
        case Node::K::brk:
            lc.k = LoopControl::brk;
            return;
        case Node::K::cont:
            lc.k = LoopControl::cont;
            return;
    }
}

void Interp::exec_for(const Node& n) {
    const Value seq = eval(*n.expr);
    List items;
    if (seq.kind == Value::Kind::list) {
        items = *seq.list;
    } else if (seq.kind == Value::Kind::dict) {
        for (auto& [k, v] : seq.dict->items) items.push_back(Value::string(k));
    } else if (seq.kind == Value::Kind::string) {
        for (char c : seq.s) items.push_back(Value::string(std::string(1, c)));
    } else if (!seq.is_undefined() && !seq.is_none()) {
        throw Error("cannot iterate over '" + seq.str() + "'");
    }
    auto bind = [&](Scope& s, const Value& item) {
        if (n.vars.size() == 1) {
            s[n.vars[0]] = item;
        } else {
            for (size_t k = 0; k < n.vars.size(); ++k)
                s[n.vars[k]] = item.kind == Value::Kind::list && k < item.list->size() ? (*item.list)[k] : Value();
        }
    };
    if (n.cond) {  // loop filter: applied before loop.* is computed
        List kept;
        for (const Value& it : items) {
            Scope s;
            bind(s, it);
            scopes_.push_back(std::move(s));
            const bool ok = eval(*n.cond).truthy();
            scopes_.pop_back();
            if (ok) kept.push_back(it);
        }
        items = std::move(kept);
    }
    if (items.empty()) {
        LoopControl lc;
        exec(n.else_body, lc);
        return;
    }
    const int64_t len = int64_t(items.size());
    for (int64_t i = 0; i < len; ++i) {
        Scope s;
        bind(s, items[size_t(i)]);
        Value loop = Value::make_dict();
        loop.dict->set("index", Value::integer(i + 1));
        loop.dict->set("index0", Value::integer(i));
        loop.dict->set("revindex", Value::integer(len - i));
        loop.dict->set("revindex0", Value::integer(len - i - 1));
        loop.dict->set("first", Value::boolean(i == 0));
        loop.dict->set("last", Value::boolean(i == len - 1));
        loop.dict->set("length", Value::integer(len));
        loop.dict->set("previtem", i > 0 ? items[size_t(i - 1)] : Value());
        loop.dict->set("nextitem", i + 1 < len ? items[size_t(i + 1)] : Value());
        s["loop"] = loop;
        scopes_.push_back(std::move(s));
        LoopControl lc;
        step();  // an empty body's iterations count too
        exec(n.body, lc);
        scopes_.pop_back();
        if (lc.k == LoopControl::brk) break;
    }
}

void add_globals(Interp& in) {
    in.set_global("namespace", Value::function([](Args& a) {
                      Value d = Value::make_dict();
                      d.is_namespace = true;
                      for (auto& [k, v] : a.kw) d.dict->set(k, v);
                      return d;
                  }));
    in.set_global("range", Value::function([](Args& a) {
                      int64_t start = 0, stop = 0, step = 1;
                      if (a.pos.size() == 1) stop = as_int(a.pos[0]);
                      if (a.pos.size() >= 2) {
                          start = as_int(a.pos[0]);
                          stop = as_int(a.pos[1]);
                      }
                      if (a.pos.size() >= 3) step = as_int(a.pos[2]);
                      if (step == 0) throw Error("range step cannot be zero");
                      const double n = std::ceil((double(stop) - double(start)) / double(step));
                      if (n > double(k_max_range))
                          throw Error("range of more than " + std::to_string(k_max_range) + " items");
                      Value l = Value::make_list();
                      for (int64_t i = start; step > 0 ? i < stop : i > stop; i += step)
                          l.list->push_back(Value::integer(i));
                      return l;
                  }));
    in.set_global("raise_exception", Value::function([](Args& a) -> Value {
                      throw Error(a.pos.empty() ? "raise_exception" : a.pos[0].str());
                  }));
    in.set_global("dict", Value::function([](Args& a) {
                      Value d = Value::make_dict();
                      for (auto& [k, v] : a.kw) d.dict->set(k, v);
                      return d;
                  }));
}

}  // namespace

struct Template::Impl {
    Body body;
};

Template::~Template() = default;

Result<std::shared_ptr<Template>> Template::parse(const std::string& source) {
    std::shared_ptr<Template> t(new Template());
    t->impl_ = std::make_unique<Impl>();
    try {
        t->impl_->body = jinja::parse(source);
    } catch (const Error& e) {
        return make_error(std::string("chat template: ") + e.what());
    }
    return t;
}

Result<std::string> Template::render(const nlohmann::ordered_json& context) const {
    std::string out;
    try {
        Interp in(&out);
        add_globals(in);
        for (auto it = context.begin(); it != context.end(); ++it)
            in.set_global(it.key(), Value::from_json(it.value()));
        LoopControl lc;
        in.exec(impl_->body, lc);
    } catch (const Error& e) {
        return make_error(std::string("chat template: ") + e.what());
    } catch (const std::exception& e) {
        return make_error(std::string("chat template: ") + e.what());
    }
    return out;
}

}  // namespace bigmoe::jinja
