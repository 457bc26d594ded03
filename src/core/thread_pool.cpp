#include "core/thread_pool.h"

#include <algorithm>
#include <map>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define BM_PAUSE() _mm_pause()
#else
#define BM_PAUSE() std::this_thread::yield()
#endif

namespace bigmoe {

namespace {
// ~1 ms of spinning before a worker sleeps: long enough to bridge the gaps between the ops of a
// decode step, short enough not to burn a core while idle. (Condition-variable wake-ups took 29%
// of decode time on the 2-core benchmark machine.)
constexpr int k_spin_iters = 1 << 15;
constexpr int k_pause_before_yield = 1 << 12;

void run_range(const std::function<void(int64_t, int64_t, int)>& fn, int64_t n, int index, int count) {
    const int64_t begin = n * index / count;
    const int64_t end = n * (index + 1) / count;
    if (begin < end) fn(begin, end, index);
}
}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)), done_(new Done[size_t(n_threads_)]) {
    for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_.store(true);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
}

std::shared_ptr<ThreadPool> ThreadPool::shared(int n_threads) {
    static std::mutex mu;
    static std::map<int, std::weak_ptr<ThreadPool>> pools;
    std::lock_guard<std::mutex> lock(mu);
    n_threads = std::max(1, n_threads);
    if (auto p = pools[n_threads].lock()) return p;
    auto p = std::make_shared<ThreadPool>(n_threads);
    pools[n_threads] = p;
    return p;
}

void ThreadPool::parallel_for(int64_t n, const std::function<void(int64_t, int64_t, int)>& fn) {
    if (n <= 0) return;
    if (n_threads_ == 1 || n == 1) {
        fn(0, n, 0);
        return;
    }
    std::lock_guard<std::mutex> call_lock(call_mu_);
    job_ = &fn;
    job_n_ = n;
    uint64_t gen;
    {
        std::lock_guard<std::mutex> lock(mu_);
        gen = generation_.fetch_add(1, std::memory_order_release) + 1;
    }
    cv_.notify_all();
    run_range(fn, n, 0, n_threads_);
    // Spin briefly, then yield: when the machine is oversubscribed (other processes, two test
    // binaries at once) a descheduled worker gets the core back instead of a full time slice.
    for (int w = 1, i = 0; w < n_threads_; ++w)
        while (done_[size_t(w)].generation.load(std::memory_order_acquire) != gen) {
            if (i++ < k_pause_before_yield)
                BM_PAUSE();
            else
                std::this_thread::yield();
        }
    job_ = nullptr;
}

void ThreadPool::parallel_tasks(int64_t n, const std::function<void(int64_t, int)>& fn) {
    if (n <= 0) return;
    std::atomic<int64_t> next{0};
    parallel_for(std::min<int64_t>(n, n_threads_), [&](int64_t, int64_t, int thread) {
        for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
             i = next.fetch_add(1, std::memory_order_relaxed))
            fn(i, thread);
    });
}

void ThreadPool::worker(int index) {
    uint64_t seen = 0;
    for (;;) {
        int spins = 0;
        while (generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_relaxed)) {
            if (++spins < k_spin_iters) {
                if (spins < k_pause_before_yield)
                    BM_PAUSE();
                else
                    std::this_thread::yield();
                continue;
            }
            std::unique_lock<std::mutex> lock(mu_);
            cv_.wait(lock, [&] { return generation_.load() != seen || stop_.load(); });
        }
        if (stop_.load()) return;
        seen = generation_.load(std::memory_order_acquire);
        run_range(*job_, job_n_, index, n_threads_);
        done_[size_t(index)].generation.store(seen, std::memory_order_release);
    }
}

}  // namespace bigmoe
