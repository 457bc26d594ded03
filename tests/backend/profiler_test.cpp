// The profiler sees every op of a forward pass: on a fixture model each op class the architecture
// uses is recorded, the per-op times never exceed the wall time, and the JSON form parses.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <set>

#include "bigmoe/bigmoe.h"
#include "testlib.h"

namespace bigmoe {
namespace {

TEST(Profiler, records_every_op_class_within_the_wall_time) {
    auto e =
        Engine::load(testing::fixtures_dir() + "/models/qwen35moe-tiny-q4_k_m.gguf", {.n_threads = 2, .profile = true});
    ASSERT_TRUE(e.ok());
    ProfiledBackend* p = (*e)->profiler();
    ASSERT_NE(p, nullptr);
    auto c = (*e)->new_context({});
    ASSERT_TRUE(c.ok());
    std::vector<int32_t> toks;
    for (int i = 0; i < 64; ++i) toks.push_back((i * 37) % 500);
    p->set_phase("prefill");
    std::vector<float> l;
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE((*c)->decode_seq(0, toks, false, &l).ok());
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double sum = 0;
    std::set<OpClass> seen;
    for (auto& [scope, classes] : p->table().at("prefill"))
        for (auto& [cls, entry] : classes) {
            sum += entry.seconds;
            if (entry.calls > 0) seen.insert(cls);
        }
    EXPECT_LE(sum, wall);
    for (OpClass cls : {OpClass::expert_matmul, OpClass::dense_matmul, OpClass::attention, OpClass::gated_delta_net,
                        OpClass::elementwise})
        EXPECT_TRUE(seen.count(cls)) << op_class_name(cls);
    const auto j = nlohmann::json::parse(p->json("prefill", wall, 64));
    double shares = 0;
    for (const auto& op : j["ops"]) shares += op["share"].get<double>();
    EXPECT_NEAR(shares, 1.0, 1e-9);  // the ops plus `other` are the wall time
    EXPECT_FALSE(p->format("prefill", wall, 64).empty());
    EXPECT_TRUE(p->table().at("prefill").count("recurrent layers"));
    EXPECT_TRUE(p->table().at("prefill").count("attention layers"));
}

}  // namespace
}  // namespace bigmoe
