// Shared test helpers: fixture discovery, reading reference logits, comparisons, seeded data.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"

namespace bigmoe {
class Tokenizer;
}

namespace bigmoe::testing {

// ../shared/fixtures (set at configure time; BIGMOE_FIXTURES overrides).
std::string fixtures_dir();
// -ngl for the model tests: 0 (the CPU) unless BIGMOE_TEST_NGL says otherwise (99: the GPU
// machine runs the fixture tests on the CUDA backend).
int test_gpu_layers();
// --n-cpu-moe for the same tests: 0 unless BIGMOE_TEST_NCMOE says otherwise (-1: every layer's
// routed experts on the CPU beside GPU layers).
int test_cpu_moe();
nlohmann::json read_json(const std::string& path);
std::vector<float> read_f32(const std::string& path);
// The fixture reference JSON files (ref/<model>.json) for every model with reference logits.
std::vector<std::string> fixture_model_jsons();
// The real Qwen3 tokenizer (the fixtures' vocabulary file), loaded once; null if it fails to load.
const Tokenizer* qwen3_tokenizer();

// rel = ||a - b|| / ||b|| per row of n columns.
std::vector<double> row_rel_errors(const float* a, const float* b, size_t rows, size_t n);
double percentile(std::vector<double> v, double p);
std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo, float hi);
// Greedy sampling's index, the plain way: the first position of the largest value that is not a
// NaN, 0 when every value is one (core/argmax.h's meaning).
int32_t first_largest(const float* x, int64_t n);
// Random logits for argmax tests: few distinct values (many ties), with NaNs, infinities and
// signed zeros in some rows, and a row of NaNs only or of -inf only now and then.
std::vector<float> argmax_trial_values(std::mt19937& rng, int64_t n, int trial);
// A fresh seed per run (printed by the caller on failure).
uint32_t fresh_seed();
// The code points of valid UTF-8 text, one wchar_t each (what std::wregex reads as characters).
std::wstring code_points(const std::string& utf8);

// A weight of type t with shape {n_in, n_out, n_expert} and random values in [lo, hi), in host
// memory as a model file would hold it (not yet prepared by a backend).
struct OwnedWeight {
    gguf::TensorInfo info;
    std::vector<uint8_t> bytes;
    Weight w;
    // The values as floats (F32 weights: the data itself).
    const float* f32() const { return reinterpret_cast<const float*>(bytes.data()); }
    float* f32() { return reinterpret_cast<float*>(bytes.data()); }
};
std::unique_ptr<OwnedWeight> make_weight(std::mt19937& rng, DType t, int64_t n_in, int64_t n_out, int64_t n_exp = 1,
                                         float lo = -1, float hi = 1);

// A test parameter naming a model and, after '|', its KV cache types ("model.gguf|q4_0|q8_0";
// f16 both when absent), and the same as a test name (letters, digits and '_').
struct ModelCase {
    std::string model;
    DType type_k = DType::F16, type_v = DType::F16;
};
ModelCase model_case(const std::string& param);
std::string model_case_name(const std::string& param);

// A small random-weight model of `arch` (4 layers of width 256, 16 experts, a byte vocabulary),
// written to a temporary file that is removed when the test binary exits; `tied`: no LM head of
// its own (Qwen3.5-0.8B's layout). The same arguments give the same path within one run.
std::string small_model(const std::string& arch, const std::string& quant, bool tied = false);

}  // namespace bigmoe::testing
