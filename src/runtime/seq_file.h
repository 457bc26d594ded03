// A sequence's state in a file (a server's slot save and restore): its tokens, the attention
// layers' KV rows and the recurrent layers' state, in Context's host layouts, under a header
// that names the model's shape and cache types and a checksum over everything. A file made by
// another model, with other cache types, cut short or altered is refused with a message.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/result.h"
#include "runtime/context.h"

namespace bigmoe {

struct SeqState {
    std::vector<int32_t> tokens;
    std::vector<uint8_t> rows;   // tokens.size() rows (Context::read_rows)
    std::vector<uint8_t> state;  // Context::read_state
};

// The state of seq (all of it: tokens.size() == ctx.n_past(seq)).
Result<SeqState> read_seq_state(const Context& ctx, int seq, std::vector<int32_t> tokens);
Result<void> write_seq_file(const std::string& path, const Context& ctx, const SeqState& s);
Result<SeqState> read_seq_file(const std::string& path, const Context& ctx);

}  // namespace bigmoe
