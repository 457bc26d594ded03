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

// Maps the pages of [p, p + bytes) of a file mapping now (MADV_POPULATE_READ, Linux 5.14 and
// newer; elsewhere nothing), so reading them later takes no page fault: a lookup table whose rows
// are read a few at a time otherwise faults on nearly every new row (bench-1b decode on the Zen 5
// dev VM: the token embedding's lookup 0.07 ms of a 6.4 ms step, 0.03 ms with its pages mapped).
void populate_pages(const void* p, size_t bytes);

// "381 GiB", "12.5 MiB", "640 B": two significant decimals below 10 units, none above.
std::string format_bytes(uint64_t bytes);

}  // namespace bigmoe
