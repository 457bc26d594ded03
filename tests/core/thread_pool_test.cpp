// The thread pool: every index of [0, n) is visited exactly once, by parallel_for and by
// parallel_tasks, also when two pools of different sizes take turns (their workers hand the cores
// to each other and sleep) and after the workers have gone to sleep.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "core/thread_pool.h"

namespace bigmoe {
namespace {

// Runs one parallel_for and one parallel_tasks over n items; true when each item ran once.
bool covers_once(ThreadPool& pool, int64_t n) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    pool.parallel_for(n, [&](int64_t b, int64_t e, int) {
        for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
    });
    pool.parallel_tasks(n, [&](int64_t i, int) { hits[size_t(i)].fetch_add(1); });
    for (auto& h : hits)
        if (h.load() != 2) return false;
    return true;
}

TEST(ThreadPool, two_pools_taking_turns_cover_every_index_once) {
    ThreadPool a(3), b(2);
    for (int round = 0; round < 300; ++round) {
        const int64_t n = 1 + round % 37;
        ASSERT_TRUE(covers_once(a, n)) << "pool a, round " << round;
        ASSERT_TRUE(covers_once(b, n + 5)) << "pool b, round " << round;
        if (round % 100 == 99)  // let every worker fall asleep, then wake them with work
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
}

TEST(ThreadPool, shared_pools_are_per_thread_count) {
    auto p = ThreadPool::shared(3), q = ThreadPool::shared(3), r = ThreadPool::shared(2);
    EXPECT_EQ(p.get(), q.get());
    EXPECT_NE(p.get(), r.get());
    EXPECT_EQ(p->size(), 3);
    EXPECT_TRUE(covers_once(*p, 1000));
    EXPECT_TRUE(covers_once(*r, 1));
}

}  // namespace
}  // namespace bigmoe
