// Shared test helpers: fixture discovery, reading reference logits, comparisons, seeded data.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace bigmoe::testing {

// ../shared/fixtures (set at configure time; BIGMOE_FIXTURES overrides).
std::string fixtures_dir();
nlohmann::json read_json(const std::string& path);
std::vector<float> read_f32(const std::string& path);
// The fixture reference JSON files (ref/<model>.json) for every model with reference logits.
std::vector<std::string> fixture_model_jsons();

// rel = ||a - b|| / ||b|| per row of n columns.
std::vector<double> row_rel_errors(const float* a, const float* b, size_t rows, size_t n);
double percentile(std::vector<double> v, double p);
std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo, float hi);
// A fresh seed per run (printed by the caller on failure).
uint32_t fresh_seed();

}  // namespace bigmoe::testing
