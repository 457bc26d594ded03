// AVX-512 (F, BW, VL, VNNI) build of the x86 kernels: the compiler widens and fuses the 256-bit
// code with the extra registers and instructions. Chosen at start-up when the CPU has them.
#define BM_ISA_NS avx512
#define BM_ISA_NAME "avx512"
#include "backend/cpu/isa/x86_kernels.inc"
