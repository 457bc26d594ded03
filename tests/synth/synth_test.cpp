// Synthesized models: every preset validates, the quant mix follows spec/quants.md §7.3, and a
// model's logits are finite with a next-token entropy well below uniform.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "bigmoe/bigmoe.h"
#include "synth/synth.h"
#include "testlib.h"

namespace bigmoe {
namespace {

TEST(Synth, presets_validate_and_count_parameters) {
    for (const auto& name : synth::preset_names()) {
        synth::Spec s;
        ASSERT_TRUE(synth::apply_preset(name, s)) << name;
        s.quant = "Q4_K_M";
        s.vocab = synth::byte_vocab();
        EXPECT_TRUE(synth::validate(s).ok()) << name;
        EXPECT_TRUE(synth::build(s).ok()) << name;
    }
    synth::Spec bad;
    bad.vocab = synth::byte_vocab();
    EXPECT_FALSE(synth::apply_preset("nope", bad));
    bad.quant = "Q3_K";
    EXPECT_FALSE(synth::validate(bad).ok());
}

TEST(Synth, q4_k_m_mix_follows_llama_quantize_rules) {
    // ffn_down in 48 blocks: Q6_K on layers 0-5, every third from 8, and 42-47 (spec table)
    const std::set<int> q6 = {0, 1, 2, 3, 4, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 42, 43, 44, 45, 46, 47};
    for (int il = 0; il < 48; ++il) {
        const DType t =
            synth::tensor_type("Q4_K_M", "blk." + std::to_string(il) + ".ffn_down_exps.weight", 3, 48, 0, 1, false);
        EXPECT_EQ(t, q6.count(il) ? DType::Q6_K : DType::Q4_K) << il;
    }
    EXPECT_EQ(synth::tensor_type("Q4_K_M", "output.weight", 2, 48, 0, 1, false), DType::Q6_K);
    EXPECT_EQ(synth::tensor_type("Q4_K_M", "token_embd.weight", 2, 48, 0, 1, false), DType::Q4_K);
    EXPECT_EQ(synth::tensor_type("Q4_K_M", "token_embd.weight", 2, 48, 0, 1, true), DType::Q6_K);
    EXPECT_EQ(synth::tensor_type("Q4_K_M", "blk.3.ffn_gate_inp.weight", 2, 48, 0, 1, false), DType::F32);
    EXPECT_EQ(synth::tensor_type("Q6_K", "blk.3.attn_q.weight", 2, 48, 0, 1, false), DType::Q6_K);
    EXPECT_EQ(synth::tensor_type("Q8_0", "blk.3.ssm_a", 1, 48, 0, 1, false), DType::F32);
}

TEST(Synth, logits_are_finite_and_far_from_uniform) {
    for (const std::string quant : {"Q4_K_M", "Q8_0", "F32"}) {
        synth::Spec s;
        s.arch = "qwen35moe";
        s.quant = quant;
        s.n_embd = 256;
        s.n_layer = 8;
        s.n_vocab = 8192;
        s.vocab = synth::byte_vocab();
        const std::string path =
            (std::filesystem::temp_directory_path() / ("bigmoe_synth_" + quant + std::to_string(::getpid()) + ".gguf"))
                .string();
        ASSERT_TRUE(synth::write_file(s, path).ok());
        auto e = Engine::load(path, {.n_threads = 2});
        ASSERT_TRUE(e.ok()) << e.error().message;
        auto c = (*e)->new_context({});
        ASSERT_TRUE(c.ok());
        std::vector<float> l;
        ASSERT_TRUE((*c)->decode_seq(0, {72, 101, 108, 108, 111, 32, 119}, true, &l).ok());
        const size_t V = 8192;
        for (size_t row = 0; row < l.size() / V; ++row) {
            double mx = -1e30, z = 0, h = 0;
            for (size_t k = 0; k < V; ++k) {
                ASSERT_TRUE(std::isfinite(l[row * V + k]));
                mx = std::max(mx, double(l[row * V + k]));
            }
            for (size_t k = 0; k < V; ++k) z += std::exp(l[row * V + k] - mx);
            for (size_t k = 0; k < V; ++k) {
                const double p = std::exp(l[row * V + k] - mx) / z;
                if (p > 0) h -= p * std::log(p);
            }
            EXPECT_LT(h, std::log(double(V)) - 2.0) << quant << " row " << row;  // well below uniform
            EXPECT_GT(h, 0.5) << quant << " row " << row;                        // and not degenerate
        }
        std::filesystem::remove(path);
    }
}

}  // namespace
}  // namespace bigmoe

namespace bigmoe {
namespace {

// Next-token agreement of two models on the same teacher-forced token stream.
double agreement(const std::string& a, const std::string& b) {
    auto ea = Engine::load(a, {.n_threads = 2});
    auto eb = Engine::load(b, {.n_threads = 2});
    EXPECT_TRUE(ea.ok() && eb.ok());
    auto ca = (*ea)->new_context({});
    auto cb = (*eb)->new_context({});
    std::vector<int32_t> toks;
    for (int i = 0; i < 96; ++i) toks.push_back(int32_t((i * 7919 + 13) % 261));
    std::vector<float> la, lb;
    EXPECT_TRUE((*ca)->decode_seq(0, toks, true, &la).ok());
    EXPECT_TRUE((*cb)->decode_seq(0, toks, true, &lb).ok());
    const size_t V = la.size() / toks.size();
    int same = 0;
    for (size_t t = 0; t < toks.size(); ++t)
        same += std::max_element(la.begin() + long(t * V), la.begin() + long((t + 1) * V)) - la.begin() - long(t * V) ==
                std::max_element(lb.begin() + long(t * V), lb.begin() + long((t + 1) * V)) - lb.begin() - long(t * V);
    return double(same) / double(toks.size());
}

// A draft and a target built on the same direct path agree more the smaller their layers' share.
TEST(Synth, draft_target_pairs_have_controllable_agreement) {
    auto make = [](const std::string& arch, int64_t embd, int64_t layers, float scale, uint64_t seed) {
        synth::Spec s;
        s.arch = arch;
        s.n_embd = embd;
        s.n_layer = layers;
        s.n_ff = 256;
        s.seed = seed;
        s.direct_rank = 32;
        s.layer_scale = scale;
        s.vocab = synth::byte_vocab();
        const std::string path =
            (std::filesystem::temp_directory_path() /
             ("bigmoe_pair_" + arch + std::to_string(scale) + std::to_string(::getpid()) + ".gguf"))
                .string();
        EXPECT_TRUE(synth::write_file(s, path).ok());
        return path;
    };
    std::vector<double> agree;
    for (float scale : {0.05f, 3.0f}) {
        const std::string target = make("qwen35moe", 512, 4, scale, 1), draft = make("qwen35", 256, 2, scale, 2);
        agree.push_back(agreement(target, draft));
        std::filesystem::remove(target);
        std::filesystem::remove(draft);
    }
    std::printf("agreement: %.2f at layer_scale 0.05, %.2f at 3.0\n", agree[0], agree[1]);
    EXPECT_GT(agree[0], 0.9);
    EXPECT_LT(agree[1], agree[0] - 0.2);
}

}  // namespace
}  // namespace bigmoe
