// llama.cpp-style command-line parsing: short and long spellings, values as the next argument
// (or --name=value), and clear errors for unknown flags and bad values.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/result.h"

namespace bigmoe::cli {

struct OptionSpec {
    std::string short_name;  // e.g. "-ctk" (may be empty)
    std::string long_name;   // e.g. "--cache-type-k"
    std::string value;       // what the value is, for the help ("FILE", "N", "on|off"); empty: a flag
    std::string help;
    std::string alias = {};  // another long spelling accepted (e.g. "--out" for "--output")
    bool takes_value() const { return !value.empty(); }
};

// This option's help with " (default X)" added: a shared option whose default differs by command.
OptionSpec with_default(OptionSpec o, const std::string& def);
// The option as bench takes it: a list of values (each a configuration of the test matrix).
OptionSpec list_of(OptionSpec o);

class Args {
  public:
    // Parses argv against specs; the key of each option is its long name.
    // Arguments that are not options are an error unless positional_ok (e.g. report's file list).
    static Result<Args> parse(const std::vector<std::string>& argv, const std::vector<OptionSpec>& specs,
                              bool positional_ok = false);

    bool has(const std::string& long_name) const { return values_.count(long_name) > 0; }
    std::string get(const std::string& long_name, const std::string& def = "") const;
    // All values of a repeatable option, in order.
    std::vector<std::string> get_all(const std::string& long_name) const;
    Result<int64_t> get_int(const std::string& long_name, int64_t def, int64_t min, int64_t max) const;
    Result<double> get_float(const std::string& long_name, double def) const;
    const std::vector<std::string>& positional() const { return positional_; }

  private:
    std::multimap<std::string, std::string> values_;
    std::vector<std::string> positional_;
};

std::string format_help(const std::vector<OptionSpec>& specs);
Result<std::vector<int64_t>> parse_int_list(const std::string& s, const std::string& what);

}  // namespace bigmoe::cli
