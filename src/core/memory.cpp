#include "core/memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <thread>
#include <vector>

namespace bigmoe {

uint64_t host_memory_available() {
    std::ifstream f("/proc/meminfo");
    std::string key;
    uint64_t kb = 0;
    while (f >> key >> kb) {
        if (key == "MemAvailable:") return kb * 1024;
        f.ignore(1 << 10, '\n');
    }
    return UINT64_MAX;
}

void populate_pages(const void* p, size_t bytes) {
#ifndef MADV_POPULATE_READ
    constexpr int MADV_POPULATE_READ = 22;  // Linux 5.14's value, for older headers
#endif
    if (!p || bytes == 0) return;
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t b = reinterpret_cast<uintptr_t>(p) / page * page, e = reinterpret_cast<uintptr_t>(p) + bytes;
    // an older kernel answers EINVAL, a region that is not a mapping ENOMEM: both leave the
    // pages to fault in as they are read
    madvise(reinterpret_cast<void*>(b), e - b, MADV_POPULATE_READ);
}

double measure_read_bandwidth(int threads) {
    const size_t n = (size_t(512) << 20) / sizeof(uint64_t);
    std::vector<uint64_t> buf(n, 1);  // written once: the pages exist before the timed passes
    threads = std::max(threads, 1);
    double best = 0;
    for (int pass = 0; pass < 4; ++pass) {
        std::vector<uint64_t> sums(size_t(threads), 0);
        std::vector<std::thread> ts;
        const auto t0 = std::chrono::steady_clock::now();
        for (int t = 0; t < threads; ++t)
            ts.emplace_back([&, t] {
                const size_t b = n * size_t(t) / size_t(threads), e = n * size_t(t + 1) / size_t(threads);
                uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                size_t i = b;
                for (; i + 4 <= e; i += 4) {
                    s0 += buf[i];
                    s1 += buf[i + 1];
                    s2 += buf[i + 2];
                    s3 += buf[i + 3];
                }
                for (; i < e; ++i) s0 += buf[i];
                sums[size_t(t)] = s0 + s1 + s2 + s3;
            });
        for (auto& t : ts) t.join();
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        uint64_t total = 0;
        for (uint64_t x : sums) total += x;
        if (total != n) return 0;  // the loop was optimised away or wrong: no number rather than a false one
        best = std::max(best, double(n * sizeof(uint64_t)) / s / 1e9);
    }
    return best;
}

std::string format_bytes(uint64_t bytes) {
    static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    double v = double(bytes);
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        ++u;
    }
    char buf[32];
    if (u == 0)
        std::snprintf(buf, sizeof buf, "%llu B", (unsigned long long)bytes);
    else
        std::snprintf(buf, sizeof buf, v < 10 ? "%.2f %s" : "%.0f %s", v, units[u]);
    return buf;
}

}  // namespace bigmoe
