// A small fork-join thread pool: parallel_for splits [0, n) into one contiguous range per thread.
// Work is split by output elements only, never inside a reduction, so results do not depend on
// the thread count. Workers spin briefly between jobs (a decode step issues hundreds of small
// jobs) and then sleep on a condition variable.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace bigmoe {

class ThreadPool {
  public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }
    // The process-wide pool of n threads: models loaded together (a target and its draft) share
    // one set of spinning workers instead of competing for the cores.
    static std::shared_ptr<ThreadPool> shared(int n_threads);
    // fn(begin, end, thread_index) is called on disjoint ranges covering [0, n).
    void parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn);
    // fn(task, thread_index) for every task in [0, n), handed out one at a time (for tasks of
    // uneven cost); each task must write its own outputs, so results do not depend on who ran it.
    void parallel_tasks(int64_t n, const std::function<void(int64_t, int)>& fn);

  private:
    void worker(int index);

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex mu_;
    std::mutex call_mu_;  // one parallel_for at a time (callers on different threads queue)
    std::condition_variable cv_;
    // What the workers read to start a job, on one cache line.
    alignas(64) std::atomic<uint64_t> generation_{0};
    const std::function<void(int64_t, int64_t, int)>* job_ = nullptr;
    int64_t job_n_ = 0;
    std::atomic<bool> stop_{false};
    // Worker i stores the generation it finished in done_[i], a cache line of its own: finishing
    // writes no line another worker writes (with a shared countdown, which moved one line from
    // worker to worker in turn, decode at 16 threads measured 8% slower).
    struct alignas(64) Done {
        std::atomic<uint64_t> generation{0};
    };
    std::unique_ptr<Done[]> done_;
};

}  // namespace bigmoe
