// The qwen2 / qwen35 pre-tokenizers (spec/tokenizer.md §4): split text into words with the
// scanner rules equivalent to the HF split regexes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace bigmoe {

enum class PreTokenizer { qwen2, qwen35 };

// Words of one text fragment (code points), each as a [begin, end) range.
std::vector<std::pair<size_t, size_t>> pretokenize(const std::vector<uint32_t>& cps, PreTokenizer kind);

}  // namespace bigmoe
