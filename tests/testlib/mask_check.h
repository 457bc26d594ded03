// A constraint's mask against its recognizer read byte by byte: for JSON mode and schemas.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>

#include "tokenizer/tokenizer.h"

namespace bigmoe::testing {

// Every token's logit is finite after the mask exactly when the recognizer `now` (the state
// after the text so far) takes all of the token's bytes; control, user-defined, empty and
// end-of-generation tokens never (the caller checks end-of-generation on its own).
template <class Recognizer>
void expect_mask_reads_bytes(const Tokenizer& tok, const float* logits, const Recognizer& now,
                             const std::string& text) {
    for (int32_t id = 0; id < tok.n_vocab(); ++id) {
        const TokenType type = tok.token_type(id);
        const std::string b = tok.token_bytes(id, false);
        bool takes = !tok.is_eog(id) && (type == TokenType::normal || type == TokenType::byte) && !b.empty();
        Recognizer r = now;
        for (char ch : b) takes = takes && r.push(uint8_t(ch));
        ASSERT_EQ(std::isfinite(logits[id]), takes) << "token " << id << " after " << text;
    }
}

}  // namespace bigmoe::testing
