#include "core/memory.h"

#include <cstdio>
#include <fstream>

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
