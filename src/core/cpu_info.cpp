#include "core/cpu_info.h"

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <thread>
#include <utility>

namespace bigmoe {

std::string cpu_model_name() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    while (std::getline(f, line))
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown";
}

int hardware_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n > 0 ? int(n) : 1;
}

int physical_cores() {
    std::ifstream f("/proc/cpuinfo");
    std::string line;
    std::set<std::pair<int, int>> cores;
    int package = 0;
    while (std::getline(f, line)) {
        const size_t colon = line.find(':');
        if (colon == std::string::npos) continue;
        const std::string value = line.substr(colon + 1);
        if (line.rfind("physical id", 0) == 0) package = std::atoi(value.c_str());
        if (line.rfind("core id", 0) == 0) cores.insert({package, std::atoi(value.c_str())});
    }
    return cores.empty() ? hardware_threads() : std::min<int>(int(cores.size()), hardware_threads());
}

}  // namespace bigmoe
