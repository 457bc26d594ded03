// Jinja syntax tree: expressions and statements.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace bigmoe::jinja {

struct Expr;
using ExprP = std::unique_ptr<Expr>;

struct Expr {
    enum class K { literal, name, attr, index, slice, call, filter, test, unary, binary, ternary, list, dict };
    K k;
    Value lit;         // literal
    std::string name;  // name / attribute / filter / test / operator
    bool negate = false;
    std::vector<ExprP> kids;  // operands (slice: obj, start, stop, step; dict: key, value, ...)
    std::vector<ExprP> args;  // call / filter / test arguments
    std::vector<std::pair<std::string, ExprP>> kwargs;
};

struct Node;
using NodeP = std::unique_ptr<Node>;
using Body = std::vector<NodeP>;

struct Node {
    enum class K { text, output, if_, for_, set, set_block, macro, brk, cont };
    K k;
    std::string text;                                   // text / set target / macro name
    std::string attr;                                   // set ns.attr
    ExprP expr;                                         // output, set value, for iterable
    std::vector<std::pair<ExprP, Body>> branches;       // if / elif
    Body body, else_body;                               // for, macro, set block, else
    std::vector<std::string> vars;                      // for targets
    ExprP cond;                                         // for ... if cond
    std::vector<std::pair<std::string, ExprP>> params;  // macro parameters with defaults
};

// Parses a template (trim_blocks and lstrip_blocks on, as chat templates are rendered).
Body parse(const std::string& source);

}  // namespace bigmoe::jinja
