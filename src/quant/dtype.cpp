#include "quant/dtype.h"

#include <cstdlib>

#include "core/result.h"

namespace bigmoe {

namespace {
struct Entry {
    uint32_t id;
    DTypeTraits tr;
};
constexpr Entry k_types[] = {
    {0, {"F32", 1, 4, true}},
    {1, {"F16", 1, 2, true}},
    {2, {"Q4_0", 32, 18, true}},
    {8, {"Q8_0", 32, 34, true}},
    {12, {"Q4_K", 256, 144, true}},
    {13, {"Q5_K", 256, 176, true}},
    {14, {"Q6_K", 256, 210, true}},
    {15, {"Q8_K", 256, 292, false}},
    {30, {"BF16", 1, 2, true}},
    // KV cache types only (no weight kernels)
    {3, {"Q4_1", 32, 20, false}},
    {6, {"Q5_0", 32, 22, false}},
    {7, {"Q5_1", 32, 24, false}},
    {20, {"IQ4_NL", 32, 18, false}},
};
// Names of ggml ids bigmoe knows of but does not support, for clearer errors.
constexpr struct {
    uint32_t id;
    const char* name;
} k_known[] = {{9, "Q8_1"},   {10, "Q2_K"},  {11, "Q3_K"},  {16, "IQ2_XXS"}, {17, "IQ2_XS"}, {18, "IQ3_XXS"},
               {19, "IQ1_S"}, {21, "IQ3_S"}, {22, "IQ2_S"}, {23, "IQ4_XS"},  {24, "I8"},     {25, "I16"},
               {26, "I32"},   {27, "I64"},   {28, "F64"},   {29, "IQ1_M"},   {39, "MXFP4"},  {40, "NVFP4"}};
}  // namespace

bool is_cache_type(DType t) {
    switch (t) {
        case DType::F32:
        case DType::F16:
        case DType::BF16:
        case DType::Q8_0:
        case DType::Q4_0:
        case DType::Q4_1:
        case DType::Q5_0:
        case DType::Q5_1:
        case DType::IQ4_NL:
            return true;
        default:
            return false;
    }
}

const char* cache_type_list() {
    return "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl";
}

std::string cache_type_name(DType t) {
    std::string s = traits(t).name;
    for (char& c : s) c = char(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return s;
}

std::optional<DTypeTraits> dtype_traits(uint32_t id) {
    for (const auto& e : k_types)
        if (e.id == id) return e.tr;
    return std::nullopt;
}

const DTypeTraits& traits(DType t) {
    for (const auto& e : k_types)
        if (e.id == uint32_t(t)) return e.tr;
    BM_CHECK(false && "unknown DType");
    std::abort();
}

std::string dtype_name(uint32_t id) {
    if (auto t = dtype_traits(id)) return t->name;
    for (const auto& k : k_known)
        if (k.id == id) return k.name;
    return "type#" + std::to_string(id);
}

std::optional<DType> dtype_from_name(const std::string& name) {
    for (const auto& e : k_types) {
        std::string n = e.tr.name;
        std::string lower;
        for (char c : n) lower += char(c >= 'A' && c <= 'Z' ? c + 32 : c);
        if (name == n || name == lower) return DType(e.id);
    }
    return std::nullopt;
}

}  // namespace bigmoe
