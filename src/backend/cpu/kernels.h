// The CPU kernel table: one function per (op, type), chosen once at start-up for the best
// instruction set the machine has. Every entry has a portable version in isa/generic.
#pragma once

#include <cstdint>

#include "quant/dtype.h"

namespace bigmoe::cpu {

// Dot product of a weight row of type t with an activation row in activation_type(t).
using VecDotFn = float (*)(const void* w_row, const void* act_row, int64_t n);
// Convert an f32 row into an activation type.
using QuantizeFn = void (*)(const float* x, void* dst, int64_t n);

struct Kernels {
    const char* isa = "generic";
    VecDotFn vec_dot[32] = {};     // indexed by weight DType id
    QuantizeFn quantize[32] = {};  // indexed by activation DType id
};

const Kernels& kernels();
// The generic table, always available (tests compare every variant against the reference).
const Kernels& generic_kernels();

}  // namespace bigmoe::cpu
