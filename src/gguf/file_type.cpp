#include "gguf/file_type.h"

namespace bigmoe::gguf {

namespace {
constexpr FileType k_file_types[] = {
    {0, "F32", "all F32"},
    {1, "F16", "F16"},
    {2, "Q4_0", "Q4_0"},
    {3, "Q4_1", "Q4_1"},
    {7, "Q8_0", "Q8_0"},
    {8, "Q5_0", "Q5_0"},
    {9, "Q5_1", "Q5_1"},
    {10, "Q2_K", "Q2_K - Medium"},
    {12, "Q3_K_M", "Q3_K - Medium"},
    {14, "Q4_K_S", "Q4_K - Small"},
    {15, "Q4_K_M", "Q4_K - Medium"},
    {16, "Q5_K_S", "Q5_K - Small"},
    {17, "Q5_K_M", "Q5_K - Medium"},
    {18, "Q6_K", "Q6_K"},
    {32, "BF16", "BF16"},
};
}  // namespace

const FileType* file_type_by_id(int64_t id) {
    for (const FileType& f : k_file_types)
        if (f.id == id) return &f;
    return nullptr;
}

const FileType* file_type_by_name(const std::string& name) {
    for (const FileType& f : k_file_types)
        if (name == f.name) return &f;
    return nullptr;
}

std::string file_type_description(int64_t id) {
    if (id < 0) return "?";
    const FileType* f = file_type_by_id(id);
    return f ? f->description : "ftype " + std::to_string(id);
}

}  // namespace bigmoe::gguf
