// Jinja lexer and recursive-descent parser.
#include <cctype>
#include <cstdlib>

#include "tokenizer/jinja/ast.h"

namespace bigmoe::jinja {

namespace {

struct Segment {
    enum class K { text, output, block, comment } k;
    std::string content;
    size_t line = 1;
};

// Splits the source into text and tags, applying - markers, trim_blocks and lstrip_blocks.
std::vector<Segment> segment(const std::string& src) {
    std::vector<Segment> out;
    size_t pos = 0, line = 1;
    bool strip_next = false, trim_newline = false;
    while (pos <= src.size()) {
        size_t open = src.find('{', pos);
        while (open != std::string::npos && open + 1 < src.size() && src[open + 1] != '{' && src[open + 1] != '%' &&
               src[open + 1] != '#')
            open = src.find('{', open + 1);
        if (open != std::string::npos && open + 1 >= src.size()) open = std::string::npos;
        std::string text = src.substr(pos, open == std::string::npos ? std::string::npos : open - pos);
        size_t text_begin = pos;  // source index of text[0], after the trims below
        if (trim_newline) {
            if (text.rfind("\r\n", 0) == 0) {
                text.erase(0, 2);
                text_begin += 2;
            } else if (!text.empty() && text[0] == '\n') {
                text.erase(0, 1);
                text_begin += 1;
            }
        }
        if (strip_next) {
            size_t k = 0;
            while (k < text.size() && std::isspace(static_cast<unsigned char>(text[k]))) ++k;
            text.erase(0, k);
            text_begin += k;
        }
        strip_next = trim_newline = false;
        if (open == std::string::npos) {
            if (!text.empty()) out.push_back({Segment::K::text, text, line});
            break;
        }
        const char c = src[open + 1];
        const Segment::K kind = c == '{' ? Segment::K::output : c == '%' ? Segment::K::block : Segment::K::comment;
        const std::string close = c == '{' ? "}}" : c == '%' ? "%}" : "#}";
        size_t body = open + 2;
        bool lstrip = false, keep_lead = false;
        if (body < src.size() && src[body] == '-') {
            lstrip = true;
            ++body;
        } else if (body < src.size() && src[body] == '+') {
            keep_lead = true;
            ++body;
        }
        if (lstrip) {
            while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
        } else if (kind != Segment::K::output && !keep_lead) {
            // lstrip_blocks: spaces/tabs between the start of the line and a block/comment tag
            size_t k = text.size();
            while (k > 0 && (text[k - 1] == ' ' || text[k - 1] == '\t')) --k;
            const bool line_start = k > 0 ? text[k - 1] == '\n' : (text_begin == 0 || src[text_begin - 1] == '\n');
            if (line_start) text.erase(k);
        }
        if (!text.empty()) out.push_back({Segment::K::text, text, line});
        for (char ch : src.substr(pos, open - pos))
            if (ch == '\n') ++line;
        size_t end = src.find(close, body);
        if (end == std::string::npos) throw Error("line " + std::to_string(line) + ": unclosed tag");
        std::string content = src.substr(body, end - body);
        if (!content.empty() && content.back() == '-') {
            content.pop_back();
            strip_next = true;
        } else if (!content.empty() && content.back() == '+') {
            content.pop_back();
        } else if (kind != Segment::K::output) {
            trim_newline = true;
        }
        if (kind != Segment::K::comment) out.push_back({kind, content, line});
        for (char ch : src.substr(open, end + 2 - open))
            if (ch == '\n') ++line;
        pos = end + 2;
    }
    return out;
}

struct Token {
    enum class K { name, integer, floating, string, op, end } k;
    std::string s;
    int64_t i = 0;
    double f = 0;
};

std::vector<Token> tokenize(const std::string& s, size_t line) {
    std::vector<Token> t;
    size_t p = 0;
    auto err = [&](const std::string& m) { return Error("line " + std::to_string(line) + ": " + m); };
    while (p < s.size()) {
        const char c = s[p];
        if (std::isspace(static_cast<unsigned char>(c))) {
            ++p;
        } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
            size_t e = p;
            while (e < s.size() && (std::isalnum(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
            t.push_back({Token::K::name, s.substr(p, e - p)});
            p = e;
        } else if (std::isdigit(static_cast<unsigned char>(c))) {
            size_t e = p;
            bool fl = false;
            while (e < s.size() && (std::isdigit(static_cast<unsigned char>(s[e])) || s[e] == '_')) ++e;
            if (e + 1 < s.size() && s[e] == '.' && std::isdigit(static_cast<unsigned char>(s[e + 1]))) {
                fl = true;
                ++e;
                while (e < s.size() && std::isdigit(static_cast<unsigned char>(s[e]))) ++e;
            }
            std::string num = s.substr(p, e - p);
            Token tk{fl ? Token::K::floating : Token::K::integer, num};
            if (fl)
                tk.f = std::strtod(num.c_str(), nullptr);
            else
                tk.i = std::strtoll(num.c_str(), nullptr, 10);
            t.push_back(tk);
            p = e;
        } else if (c == '\'' || c == '"') {
            std::string v;
            size_t e = p + 1;
            while (e < s.size() && s[e] != c) {
                if (s[e] == '\\' && e + 1 < s.size()) {
                    const char n = s[++e];
                    v += n == 'n' ? '\n' : n == 't' ? '\t' : n == 'r' ? '\r' : n;
                } else {
                    v += s[e];
                }
                ++e;
            }
            if (e >= s.size()) throw err("unterminated string");
            t.push_back({Token::K::string, v});
            p = e + 1;
        } else {
            static const char* ops[] = {"==", "!=", "<=", ">=", "//", "**", "+", "-", "*", "/", "%", "~", "<",
                                        ">",  "=",  "(",  ")",  "[",  "]",  "{", "}", ".", ",", ":", "|"};
            bool found = false;
            for (const char* o : ops) {
                const size_t n = std::char_traits<char>::length(o);
                if (s.compare(p, n, o) == 0) {
                    t.push_back({Token::K::op, o});
                    p += n;
                    found = true;
                    break;
                }
            }
            if (!found) throw err(std::string("unexpected character '") + c + "'");
        }
    }
    t.push_back({Token::K::end, ""});
    return t;
}

// Counts a nesting level for its lifetime; past k_max_nesting the template is refused.
class Nest {
  public:
    Nest(int& depth, size_t line) : depth_(depth) {
        if (++depth_ > k_max_nesting)
            throw Error("line " + std::to_string(line) + ": nests deeper than " + std::to_string(k_max_nesting) +
                        " levels");
    }
    ~Nest() { --depth_; }
    Nest(const Nest&) = delete;
    Nest& operator=(const Nest&) = delete;

  private:
    int& depth_;
};

class ExprParser {
  public:
    ExprParser(std::vector<Token> t, size_t line) : t_(std::move(t)), line_(line) {}
    ExprP expression() {
        Nest n(depth_, line_);
        return ternary();
    }
    ExprP or_expression() { return or_expr(); }
    bool at_end() const { return t_[p_].k == Token::K::end; }
    bool is_name(const char* n) const { return t_[p_].k == Token::K::name && t_[p_].s == n; }
    bool is_op(const char* o) const { return t_[p_].k == Token::K::op && t_[p_].s == o; }
    std::string take_name() {
        if (t_[p_].k != Token::K::name) throw err("expected a name");
        return t_[p_++].s;
    }
    void expect_op(const char* o) {
        if (!is_op(o)) throw err(std::string("expected '") + o + "'");
        ++p_;
    }
    void expect_name(const char* n) {
        if (!is_name(n)) throw err(std::string("expected '") + n + "'");
        ++p_;
    }
    void expect_end() {
        if (!at_end()) throw err("unexpected '" + t_[p_].s + "'");
    }
    Error err(const std::string& m) const { return Error("line " + std::to_string(line_) + ": " + m); }

  private:
    static ExprP mk(Expr::K k) {
        auto e = std::make_unique<Expr>();
        e->k = k;
        return e;
    }
    ExprP binary(const std::string& op, ExprP a, ExprP b) {
        auto e = mk(Expr::K::binary);
        e->name = op;
        e->kids.push_back(std::move(a));
        e->kids.push_back(std::move(b));
        return e;
    }
    ExprP ternary() {
        ExprP e = or_expr();
        if (is_name("if")) {
            ++p_;
            ExprP cond = or_expr();
            ExprP other;
            if (is_name("else")) {
                ++p_;
                other = ternary();
            }
            auto t = mk(Expr::K::ternary);
            t->kids.push_back(std::move(cond));
            t->kids.push_back(std::move(e));
            if (other) t->kids.push_back(std::move(other));
            return t;
        }
        return e;
    }
    ExprP or_expr() {
        ExprP e = and_expr();
        while (is_name("or")) {
            ++p_;
            e = binary("or", std::move(e), and_expr());
        }
        return e;
    }
    ExprP and_expr() {
        ExprP e = not_expr();
        while (is_name("and")) {
            ++p_;
            e = binary("and", std::move(e), not_expr());
        }
        return e;
    }
    ExprP not_expr() {
        if (is_name("not")) {
            Nest n(depth_, line_);
            ++p_;
            auto u = mk(Expr::K::unary);
            u->name = "not";
            u->kids.push_back(not_expr());
            return u;
        }
        return compare();
    }
    ExprP compare() {
        ExprP e = concat();
        for (;;) {
            if (t_[p_].k == Token::K::op &&
                (is_op("==") || is_op("!=") || is_op("<") || is_op(">") || is_op("<=") || is_op(">="))) {
                const std::string op = t_[p_++].s;
                e = binary(op, std::move(e), concat());
            } else if (is_name("in")) {
                ++p_;
                e = binary("in", std::move(e), concat());
            } else if (is_name("not") && t_[p_ + 1].k == Token::K::name && t_[p_ + 1].s == "in") {
                p_ += 2;
                e = binary("not in", std::move(e), concat());
            } else if (is_name("is")) {
                ++p_;
                auto t = mk(Expr::K::test);
                if (is_name("not")) {
                    ++p_;
                    t->negate = true;
                }
                t->name = take_name();
                t->kids.push_back(std::move(e));
                if (is_op("(")) {
                    call_args(*t);
                } else if (t_[p_].k == Token::K::string || t_[p_].k == Token::K::integer ||
                           t_[p_].k == Token::K::floating ||
                           (t_[p_].k == Token::K::name && !is_name("and") && !is_name("or") && !is_name("else") &&
                            !is_name("if"))) {
                    t->args.push_back(postfix());
                }
                e = std::move(t);
            } else {
                return e;
            }
        }
    }
    ExprP concat() {
        ExprP e = additive();
        while (is_op("~")) {
            ++p_;
            e = binary("~", std::move(e), additive());
        }
        return e;
    }
    ExprP additive() {
        ExprP e = multiplicative();
        while (is_op("+") || is_op("-")) {
            const std::string op = t_[p_++].s;
            e = binary(op, std::move(e), multiplicative());
        }
        return e;
    }
    ExprP multiplicative() {
        ExprP e = power();
        while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
            const std::string op = t_[p_++].s;
            e = binary(op, std::move(e), power());
        }
        return e;
    }
    ExprP power() {
        ExprP e = unary();
        while (is_op("**")) {
            ++p_;
            e = binary("**", std::move(e), unary());
        }
        return e;
    }
    ExprP unary() {
        if (is_op("-") || is_op("+")) {
            Nest n(depth_, line_);
            const std::string op = t_[p_++].s;
            auto u = mk(Expr::K::unary);
            u->name = op;
            u->kids.push_back(unary());
            return u;
        }
        return filtered();
    }
    ExprP filtered() {
        ExprP e = postfix();
        while (is_op("|")) {
            ++p_;
            auto f = mk(Expr::K::filter);
            f->name = take_name();
            f->kids.push_back(std::move(e));
            if (is_op("(")) call_args(*f);
            e = std::move(f);
        }
        return e;
    }
    void call_args(Expr& e) {
        expect_op("(");
        while (!is_op(")")) {
            if (t_[p_].k == Token::K::name && t_[p_ + 1].k == Token::K::op && t_[p_ + 1].s == "=") {
                std::string k = t_[p_].s;
                p_ += 2;
                e.kwargs.emplace_back(k, expression());
            } else {
                e.args.push_back(expression());
            }
            if (!is_op(")")) expect_op(",");
        }
        ++p_;
    }
    ExprP postfix() {
        ExprP e = primary();
        for (;;) {
            if (is_op(".")) {
                ++p_;
                auto a = mk(Expr::K::attr);
                a->name = take_name();
                a->kids.push_back(std::move(e));
                e = std::move(a);
            } else if (is_op("[")) {
                ++p_;
                ExprP start, stop, step;
                bool slice = false;
                if (!is_op(":")) start = expression();
                if (is_op(":")) {
                    slice = true;
                    ++p_;
                    if (!is_op(":") && !is_op("]")) stop = expression();
                    if (is_op(":")) {
                        ++p_;
                        if (!is_op("]")) step = expression();
                    }
                }
                expect_op("]");
                if (slice) {
                    auto s = mk(Expr::K::slice);
                    s->kids.push_back(std::move(e));
                    s->kids.push_back(std::move(start));
                    s->kids.push_back(std::move(stop));
                    s->kids.push_back(std::move(step));
                    e = std::move(s);
                } else {
                    auto ix = mk(Expr::K::index);
                    ix->kids.push_back(std::move(e));
                    ix->kids.push_back(std::move(start));
                    e = std::move(ix);
                }
            } else if (is_op("(")) {
                auto c = mk(Expr::K::call);
                c->kids.push_back(std::move(e));
                call_args(*c);
                e = std::move(c);
            } else {
                return e;
            }
        }
    }
    ExprP primary() {
        const Token& tk = t_[p_];
        if (tk.k == Token::K::string) {
            auto l = mk(Expr::K::literal);
            std::string s = tk.s;
            ++p_;
            while (t_[p_].k == Token::K::string) s += t_[p_++].s;  // adjacent literals concatenate
            l->lit = Value::string(s);
            return l;
        }
        if (tk.k == Token::K::integer || tk.k == Token::K::floating) {
            auto l = mk(Expr::K::literal);
            l->lit = tk.k == Token::K::integer ? Value::integer(tk.i) : Value::floating(tk.f);
            ++p_;
            return l;
        }
        if (tk.k == Token::K::name) {
            ++p_;
            auto l = mk(Expr::K::literal);
            const bool is_true = tk.s == "true" || tk.s == "True", is_false = tk.s == "false" || tk.s == "False";
            if (is_true || is_false || tk.s == "none" || tk.s == "None") {
                l->lit = is_true ? Value::boolean(true) : is_false ? Value::boolean(false) : Value::none();
                return l;
            }
            auto n = mk(Expr::K::name);
            n->name = tk.s;
            return n;
        }
        if (is_op("(")) {
            ++p_;
            ExprP e = expression();
            if (is_op(",")) {  // a tuple: kept as a list
                auto l = mk(Expr::K::list);
                l->kids.push_back(std::move(e));
                while (is_op(",")) {
                    ++p_;
                    if (is_op(")")) break;
                    l->kids.push_back(expression());
                }
                e = std::move(l);
            }
            expect_op(")");
            return e;
        }
        if (is_op("[")) {
            ++p_;
            auto l = mk(Expr::K::list);
            while (!is_op("]")) {
                l->kids.push_back(expression());
                if (!is_op("]")) expect_op(",");
            }
            ++p_;
            return l;
        }
        if (is_op("{")) {
            ++p_;
            auto d = mk(Expr::K::dict);
            while (!is_op("}")) {
                d->kids.push_back(expression());
                expect_op(":");
                d->kids.push_back(expression());
                if (!is_op("}")) expect_op(",");
            }
            ++p_;
            return d;
        }
        throw err("unexpected '" + tk.s + "'");
    }

    std::vector<Token> t_;
    size_t p_ = 0;
    int depth_ = 0;  // nesting levels open now
    size_t line_;
};

class Parser {
  public:
    explicit Parser(std::vector<Segment> s) : s_(std::move(s)) {}

    // Parses nodes until a block tag whose first word is in `stops` (left unconsumed).
    Body body(const std::vector<std::string>& stops) {
        Nest nest(depth_, i_ < s_.size() ? s_[i_].line : 0);
        Body out;
        while (i_ < s_.size()) {
            const Segment& seg = s_[i_];
            if (seg.k == Segment::K::text) {
                auto n = std::make_unique<Node>();
                n->k = Node::K::text;
                n->text = seg.content;
                out.push_back(std::move(n));
                ++i_;
                continue;
            }
            ExprParser ep(tokenize(seg.content, seg.line), seg.line);
            if (seg.k == Segment::K::output) {
                auto n = std::make_unique<Node>();
                n->k = Node::K::output;
                n->expr = ep.expression();
                ep.expect_end();
                out.push_back(std::move(n));
                ++i_;
                continue;
            }
            const std::string word = ep.at_end() ? "" : ep.take_name();
            for (const auto& st : stops)
                if (word == st) return out;
            ++i_;
            out.push_back(statement(word, ep, seg.line));
        }
        if (!stops.empty()) throw Error("template ended inside a block (expected {% " + stops.back() + " %})");
        return out;
    }

  private:
    std::string current_word() {
        ExprParser ep(tokenize(s_[i_].content, s_[i_].line), s_[i_].line);
        return ep.at_end() ? "" : ep.take_name();
    }
    ExprParser current_parser() {
        ExprParser ep(tokenize(s_[i_].content, s_[i_].line), s_[i_].line);
        ep.take_name();
        return ep;
    }

    NodeP statement(const std::string& word, ExprParser& ep, size_t line) {
        auto n = std::make_unique<Node>();
        if (word == "if") {
            n->k = Node::K::if_;
            ExprP cond = ep.expression();
            ep.expect_end();
            for (;;) {
                Body b = body({"elif", "else", "endif"});
                n->branches.emplace_back(std::move(cond), std::move(b));
                const std::string w = current_word();
                ExprParser next = current_parser();
                ++i_;
                if (w == "elif") {
                    cond = next.expression();
                    next.expect_end();
                    continue;
                }
                if (w == "else") {
                    n->else_body = body({"endif"});
                    ++i_;
                }
                break;
            }
        } else if (word == "for") {
            n->k = Node::K::for_;
            n->vars.push_back(ep.take_name());
            while (ep.is_op(",")) {
                ep.expect_op(",");
                n->vars.push_back(ep.take_name());
            }
            ep.expect_name("in");
            // the iterable stops before a trailing `if` filter
            n->expr = iterable(ep);
            if (ep.is_name("if")) {
                ep.expect_name("if");
                n->cond = ep.expression();
            }
            if (ep.is_name("recursive")) ep.expect_name("recursive");
            ep.expect_end();
            n->body = body({"else", "endfor"});
            if (current_word() == "else") {
                ++i_;
                n->else_body = body({"endfor"});
            }
            ++i_;
        } else if (word == "set") {
            n->text = ep.take_name();
            if (ep.is_op(".")) {
                ep.expect_op(".");
                n->attr = ep.take_name();
            }
            if (ep.is_op("=")) {
                ep.expect_op("=");
                n->k = Node::K::set;
                n->expr = ep.expression();
                ep.expect_end();
            } else {
                n->k = Node::K::set_block;
                n->body = body({"endset"});
                ++i_;
            }
        } else if (word == "macro") {
            n->k = Node::K::macro;
            n->text = ep.take_name();
            ep.expect_op("(");
            while (!ep.is_op(")")) {
                std::string p = ep.take_name();
                ExprP def;
                if (ep.is_op("=")) {
                    ep.expect_op("=");
                    def = ep.expression();
                }
                n->params.emplace_back(p, std::move(def));
                if (!ep.is_op(")")) ep.expect_op(",");
            }
            ep.expect_op(")");
            n->body = body({"endmacro"});
            ++i_;
        } else if (word == "break" || word == "continue") {
            n->k = word == "break" ? Node::K::brk : Node::K::cont;
        } else if (word == "generation") {  // HF extension marking assistant text: render the body
            n->k = Node::K::if_;
            auto t = std::make_unique<Expr>();
            t->k = Expr::K::literal;
            t->lit = Value::boolean(true);
            n->branches.emplace_back(std::move(t), body({"endgeneration"}));
            ++i_;
        } else {
            throw Error("line " + std::to_string(line) + ": unknown statement '" + word + "'");
        }
        return n;
    }

    static ExprP iterable(ExprParser& ep) {
        // parse an or-expression-level expression without consuming the `if` of a loop filter
        return ep.or_expression();
    }

    std::vector<Segment> s_;
    size_t i_ = 0;
    int depth_ = 0;  // blocks open now
};

}  // namespace

Body parse(const std::string& source) {
    Parser p(segment(source));
    return p.body({});
}

}  // namespace bigmoe::jinja
