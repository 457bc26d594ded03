// What the processor is: its name, physical cores and hardware threads (for the default thread
// count and the warning when more threads are asked for than the machine runs at once).
#pragma once

#include <string>

namespace bigmoe {

// The "model name" of /proc/cpuinfo, or "unknown".
std::string cpu_model_name();
// Hardware threads the OS schedules (logical CPUs), at least 1.
int hardware_threads();
// Distinct (package, core) pairs of /proc/cpuinfo: SMT siblings count once; hardware_threads()
// when the file says nothing about cores.
int physical_cores();

}  // namespace bigmoe
