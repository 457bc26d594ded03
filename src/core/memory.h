// What the machine's memory allows: the bytes the kernel says a process can still take, and
// sizes in the units people read (GiB, MiB).
#pragma once

#include <cstdint>
#include <string>

namespace bigmoe {

// MemAvailable from /proc/meminfo (free memory plus caches the kernel can drop), in bytes;
// UINT64_MAX when it cannot be read.
uint64_t host_memory_available();

// The machine's read bandwidth in GB/s: `threads` threads summing a 512 MiB buffer, the best of
// a few passes (what decode, which streams every weight once per token, can reach at most).
double measure_read_bandwidth(int threads);

// "381 GiB", "12.5 MiB", "640 B": two significant decimals below 10 units, none above.
std::string format_bytes(uint64_t bytes);

}  // namespace bigmoe
