// AVX2 + AVX-VNNI build of the x86 kernels: the 256-bit u8 x s8 multiply-adds in one VEX
// instruction on CPUs that have AVX-VNNI without AVX-512 (Intel client cores from Alder Lake on).
// Chosen at start-up when the CPU has it and no AVX-512.
#define BM_ISA_NS avx2vnni
#define BM_ISA_NAME "avx2vnni"
#include "backend/cpu/isa/x86_kernels.inc"
