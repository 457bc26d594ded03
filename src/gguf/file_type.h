// general.file_type: llama.cpp's numbering of a model file's quantization mix, the name
// llama-quantize takes ("Q4_K_M") and the description llama-bench prints ("Q4_K - Medium").
// One table for the loader, synth and bench.
#pragma once

#include <cstdint>
#include <string>

namespace bigmoe::gguf {

struct FileType {
    int64_t id;
    const char* name;         // llama-quantize's spelling
    const char* description;  // llama-bench's model_type spelling
};

// nullptr when the id or name is not in the table.
const FileType* file_type_by_id(int64_t id);
const FileType* file_type_by_name(const std::string& name);
// The description, "ftype N" for an id outside the table, "?" for none (negative).
std::string file_type_description(int64_t id);

}  // namespace bigmoe::gguf
