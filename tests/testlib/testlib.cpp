#include "testlib.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <stdexcept>

#include <unistd.h>

#include "quant/quants.h"
#include "synth/synth.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace bigmoe::testing {

std::string fixtures_dir() {
    if (const char* e = std::getenv("BIGMOE_FIXTURES")) return e;
    return BIGMOE_FIXTURES_DIR;
}

const Tokenizer* qwen3_tokenizer() {
    static const std::unique_ptr<Tokenizer> tok = []() -> std::unique_ptr<Tokenizer> {
        auto f = gguf::GgufFile::open(fixtures_dir() + "/models/qwen3-vocab.gguf");
        if (!f) return nullptr;
        auto t = Tokenizer::from_gguf(**f);
        return t ? std::move(*t) : nullptr;
    }();
    return tok.get();
}

int test_gpu_layers() {
    const char* e = std::getenv("BIGMOE_TEST_NGL");
    return e ? std::atoi(e) : 0;
}

int test_cpu_moe() {
    const char* e = std::getenv("BIGMOE_TEST_NCMOE");
    return e ? std::atoi(e) : 0;
}

nlohmann::json read_json(const std::string& path) {
    std::ifstream f(path);
    if (!f) throw std::runtime_error("cannot open " + path);
    return nlohmann::json::parse(f);
}

std::vector<float> read_f32(const std::string& path) {
    std::ifstream f(path, std::ios::binary | std::ios::ate);
    if (!f) throw std::runtime_error("cannot open " + path);
    const auto n = size_t(f.tellg());
    std::vector<float> v(n / 4);
    f.seekg(0);
    f.read(reinterpret_cast<char*>(v.data()), std::streamsize(n));
    return v;
}

std::vector<std::string> fixture_model_jsons() {
    std::vector<std::string> r;
    for (const auto& e : std::filesystem::directory_iterator(fixtures_dir() + "/ref")) {
        const std::string p = e.path().string();
        if (p.size() > 5 && p.substr(p.size() - 5) == ".json" && p.find("tokenizer-") == std::string::npos &&
            p.find("chat-template") == std::string::npos)
            r.push_back(p);
    }
    std::sort(r.begin(), r.end());
    return r;
}

std::vector<double> row_rel_errors(const float* a, const float* b, size_t rows, size_t n) {
    std::vector<double> r(rows);
    for (size_t i = 0; i < rows; ++i) {
        double num = 0, den = 0;
        for (size_t j = 0; j < n; ++j) {
            const double d = double(a[i * n + j]) - double(b[i * n + j]);
            num += d * d;
            den += double(b[i * n + j]) * double(b[i * n + j]);
        }
        r[i] = std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
    }
    return r;
}

double percentile(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const double idx = p / 100.0 * double(v.size() - 1);
    const size_t lo = size_t(std::floor(idx)), hi = size_t(std::ceil(idx));
    return v[lo] + (v[hi] - v[lo]) * (idx - double(lo));
}

std::vector<float> random_floats(std::mt19937& rng, size_t n, float lo, float hi) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n);
    for (auto& x : v) x = d(rng);
    return v;
}

int32_t first_largest(const float* x, int64_t n) {
    int32_t best = -1;
    for (int64_t i = 0; i < n; ++i)
        if (!std::isnan(x[i]) && (best < 0 || x[i] > x[best])) best = int32_t(i);
    return best < 0 ? 0 : best;
}

std::vector<float> argmax_trial_values(std::mt19937& rng, int64_t n, int trial) {
    std::vector<float> x(static_cast<size_t>(n));
    for (auto& v : x) v = float(int(rng() % 41) - 30);  // few distinct values: many ties
    switch (trial % 6) {
        case 0:
            x[rng() % x.size()] = 100;  // one maximum, anywhere
            break;
        case 1:
            for (int k = 0; k < 5; ++k) x[rng() % x.size()] = NAN;
            x[0] = NAN;
            x[rng() % x.size()] = -INFINITY;
            break;
        case 2:  // the maximum a zero of either sign
            for (auto& v : x) v = v > 0 ? -v : v;
            for (int k = 0; k < 3; ++k) x[rng() % x.size()] = rng() % 2 ? -0.0f : 0.0f;
            break;
        case 3:
            x[rng() % x.size()] = INFINITY;
            x[rng() % x.size()] = INFINITY;
            break;
        case 4:  // -inf only, NaNs before the first
            for (auto& v : x) v = -INFINITY;
            for (size_t i = 0; i < x.size() / 2; ++i) x[i] = NAN;
            break;
        case 5:
            if (trial % 12 == 5)
                for (auto& v : x) v = NAN;
            break;
    }
    return x;
}

uint32_t fresh_seed() {
    if (const char* e = std::getenv("BIGMOE_SEED")) return uint32_t(std::strtoul(e, nullptr, 10));
    return uint32_t(std::chrono::steady_clock::now().time_since_epoch().count());
}

std::wstring code_points(const std::string& utf8) {
    std::wstring out;
    for (uint32_t cp : unicode::decode_utf8(utf8)) out += wchar_t(cp);
    return out;
}

std::unique_ptr<OwnedWeight> make_weight(std::mt19937& rng, DType t, int64_t n_in, int64_t n_out, int64_t n_exp,
                                         float lo, float hi) {
    auto o = std::make_unique<OwnedWeight>();
    o->info.name = "w";
    o->info.type = t;
    o->info.ne[0] = n_in;
    o->info.ne[1] = n_out;
    o->info.ne[2] = n_exp;
    o->info.row_bytes = row_bytes(t, n_in);
    o->bytes.resize(o->info.row_bytes * size_t(n_out * n_exp));
    for (int64_t r = 0; r < n_out * n_exp; ++r) {
        auto v = random_floats(rng, size_t(n_in), lo, hi);
        quantize_row(t, v.data(), o->bytes.data() + size_t(r) * o->info.row_bytes, n_in);
    }
    o->w.info = &o->info;
    o->w.type = t;
    o->w.ne[0] = n_in;
    o->w.ne[1] = n_out;
    o->w.ne[2] = n_exp;
    o->w.row_bytes = o->info.row_bytes;
    o->w.expert_bytes = o->info.row_bytes * size_t(n_out);
    o->w.data = o->bytes.data();
    return o;
}

ModelCase model_case(const std::string& param) {
    ModelCase c;
    const size_t a = param.find('|');
    c.model = param.substr(0, a);
    if (a == std::string::npos) return c;
    const size_t b = param.find('|', a + 1);
    auto type = [](const std::string& s) {
        auto t = dtype_from_name(s);
        if (!t) throw std::runtime_error("bad cache type in a test parameter: " + s);
        return *t;
    };
    c.type_k = type(param.substr(a + 1, b - a - 1));
    c.type_v = b == std::string::npos ? c.type_k : type(param.substr(b + 1));
    return c;
}

std::string model_case_name(const std::string& param) {
    std::string s = param.substr(param.rfind('/') == std::string::npos ? 0 : param.rfind('/') + 1);
    const size_t dot = s.find(".gguf");
    if (dot != std::string::npos) s.erase(dot, 5);
    for (auto& ch : s)
        if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
    return s;
}

std::string small_model(const std::string& arch, const std::string& quant, bool tied) {
    struct Files {
        std::map<std::string, std::string> paths;
        ~Files() {
            for (auto& [k, p] : paths) std::filesystem::remove(p);
        }
    };
    static Files files;
    static std::mutex mu;
    std::lock_guard<std::mutex> lock(mu);
    const std::string key = arch + "-" + quant + (tied ? "-tied" : "");
    if (auto it = files.paths.find(key); it != files.paths.end()) return it->second;
    synth::Spec s;
    s.arch = arch;
    s.quant = quant;
    s.n_embd = 256;
    s.n_layer = 4;
    s.n_head = 8;
    s.n_head_kv = 2;
    s.head_dim = 32;
    s.n_rot = 32;
    s.ssm_d_state = 32;
    s.ssm_n_k_heads = 2;
    s.ssm_n_v_heads = 8;
    s.n_expert = 16;
    s.n_expert_used = 4;
    s.n_ff_exp = 256;
    s.n_ff_shexp = 256;
    s.n_ff = 256;
    s.mtp = arch != "qwen3moe";
    s.tied = tied;
    s.seed = 7;
    s.vocab = synth::byte_vocab();
    const std::string path =
        (std::filesystem::temp_directory_path() / ("bigmoe_test_" + key + "_" + std::to_string(::getpid()) + ".gguf"))
            .string();
    // (called while tests register, where a throw would end the binary: a model that could not
    // be written fails the tests that open it, after this line)
    if (auto r = synth::write_file(s, path); !r.ok())
        std::fprintf(stderr, "small_model %s: %s\n", key.c_str(), r.error().message.c_str());
    files.paths[key] = path;
    return path;
}

}  // namespace bigmoe::testing
