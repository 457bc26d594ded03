// AVX2 + FMA + F16C kernels (compiled with those target flags only; chosen at start-up).
#define BM_ISA_NS avx2
#define BM_ISA_NAME "avx2"
#include "backend/cpu/isa/x86_kernels.inc"
