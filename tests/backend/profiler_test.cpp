// The profiler sees every op of a forward pass: on a fixture model each op class the architecture
// uses is recorded, the per-op times never exceed the wall time, and the JSON form parses. A
// backend with a clock of its own (a GPU's events) is timed by its marks, without a wait between
// ops.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "bigmoe/bigmoe.h"
#include "forwarding_backend.h"
#include "testlib.h"

namespace bigmoe {
namespace {

// On the GPU with BIGMOE_TEST_NGL set (its events; with a split, both backends into one table).
TEST(Profiler, records_every_op_class_within_the_wall_time) {
    const std::string path = testing::fixtures_dir() + "/models/qwen35moe-tiny-q4_k_m.gguf";
    const int ngl = testing::test_gpu_layers();
    std::vector<int32_t> toks;
    for (int i = 0; i < 64; ++i) toks.push_back((i * 37) % 500);
    std::vector<float> want;
    {
        auto plain = Engine::load(path, {.n_threads = 2, .n_gpu_layers = ngl});
        ASSERT_TRUE(plain.ok()) << plain.error().message;
        auto c = (*plain)->new_context({});
        ASSERT_TRUE(c.ok());
        ASSERT_TRUE((*c)->decode_seq(0, toks, false, &want).ok());
    }
    auto e = Engine::load(path, {.n_threads = 2, .profile = true, .n_gpu_layers = ngl});
    ASSERT_TRUE(e.ok()) << e.error().message;
    ProfiledBackend* p = (*e)->profiler();
    ASSERT_NE(p, nullptr);
    auto c = (*e)->new_context({});
    ASSERT_TRUE(c.ok());
    p->set_phase("prefill");
    std::vector<float> l;
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_TRUE((*c)->decode_seq(0, toks, false, &l).ok());
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_TRUE(l.size() == want.size() && std::memcmp(l.data(), want.data(), l.size() * 4) == 0)
        << "profiling changed the logits";
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

// A CPU backend with a clock of its own, as a GPU's events are: marks are host times, and it
// counts what the profiler asks of it.
class ClockedBackend : public testing::ForwardingBackend {
  public:
    ClockedBackend() : ForwardingBackend(make_cpu_backend(1)) {}
    int64_t time_mark() override {
        marks_.push_back(std::chrono::steady_clock::now());
        return int64_t(marks_.size()) - 1;
    }
    double mark_seconds(int64_t a, int64_t b) override {
        ++reads;
        return std::chrono::duration<double>(marks_.at(size_t(b)) - marks_.at(size_t(a))).count();
    }
    void clear_marks() override { marks_.clear(); }
    void synchronize() override { ++syncs; }
    size_t live_marks() const { return marks_.size(); }

    int64_t reads = 0, syncs = 0;

  private:
    std::vector<std::chrono::steady_clock::time_point> marks_;
};

// A model split over two clocked backends whose profilers share one table: every op is timed
// between two marks of its own backend, none waits for the queue, and the times arrive by the
// next batch or when the table is read. The logits are those of an unprofiled backend.
TEST(Profiler, times_ops_between_marks_of_each_backend) {
    auto file = gguf::GgufFile::open(testing::fixtures_dir() + "/models/qwen35moe-tiny-q4_k_m.gguf");
    ASSERT_TRUE(file.ok()) << file.error().message;
    auto run = [&](Placement place, std::vector<std::vector<float>>* logits) {
        auto m = load_model(**file, place);
        ASSERT_TRUE(m.ok()) << m.error().message;
        ContextParams cp;
        cp.n_ctx = 64;
        cp.n_ubatch = 7;  // three batches for the prompt
        auto c = Context::create(**m, cp);
        ASSERT_TRUE(c.ok()) << c.error().message;
        std::vector<BatchToken> prompt;
        for (int i = 0; i < 20; ++i) prompt.push_back({int32_t((i * 37 + 5) % 500), 0, i == 19});
        std::vector<float> l;
        ASSERT_TRUE((*c)->decode(prompt, &l).ok());
        logits->push_back(l);
        for (int32_t t : {7, 11}) {
            ASSERT_TRUE((*c)->decode({{t, 0, true}}, &l).ok());
            logits->push_back(l);
        }
    };
    auto cpu = make_cpu_backend(1);
    std::vector<std::vector<float>> want, got;
    run(Placement::on(*cpu), &want);

    auto* first = new ClockedBackend;
    auto* second = new ClockedBackend;
    auto pa = std::make_unique<ProfiledBackend>(std::unique_ptr<Backend>(first));
    auto pb = std::make_unique<ProfiledBackend>(std::unique_ptr<Backend>(second), pa.get());
    pa->set_phase("prefill");
    const auto t0 = std::chrono::steady_clock::now();
    run(Placement::split(*pa, *pb, 2), &got);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i)
        EXPECT_TRUE(got[i].size() == want[i].size() &&
                    std::memcmp(got[i].data(), want[i].data(), want[i].size() * 4) == 0)
            << "step " << i;

    for (const ClockedBackend* b : {first, second}) {
        EXPECT_EQ(b->syncs, 0) << "an op waited for the queue";
        EXPECT_GT(b->reads, 0) << "earlier batches' times were not read at the next batch";
    }
    EXPECT_GT(second->live_marks(), 0u) << "the last batch's marks were read before anyone asked";
    int64_t calls = 0;
    double sum = 0;
    for (const auto& [scope, classes] : pb->table().at("prefill"))  // either profiler: one table
        for (const auto& [cls, e] : classes) {
            calls += e.calls;
            sum += e.seconds;
            if (e.calls > 0) {
                EXPECT_GT(e.seconds, 0) << scope << " / " << op_class_name(cls);
            }
        }
    EXPECT_EQ(first->reads + second->reads, calls) << "each op read once";
    EXPECT_EQ(first->live_marks() + second->live_marks(), 0u) << "marks not released";
    EXPECT_LE(sum, wall);
    EXPECT_TRUE(pa->table().at("prefill").count("attention layers"));

    // Marks left unread when a profiler goes first are read then, while both backends live.
    pa->clear();
    run(Placement::split(*pa, *pb, 2), &got);
    EXPECT_GT(first->live_marks() + second->live_marks(), 0u);
    pa.reset();
    EXPECT_EQ(second->live_marks(), 0u);
}

}  // namespace
}  // namespace bigmoe
