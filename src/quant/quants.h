// Reference (scalar, obviously-right) dequantizers, quantizers and block dot products for every
// supported type. Fast kernels in backend/cpu are tested against these.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/dtype.h"

namespace bigmoe {

// Encode one K-quant 6-bit (scale, min) pair for sub-block j into the 12-byte packing.
void set_scale_min_k4(int j, uint8_t* q, uint8_t sc, uint8_t m);
// Decode one K-quant 6-bit (scale, min) pair for sub-block j (0..7) from the 12-byte packing.
void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* m);

// dst[0..n) = values of a row of n elements of type t.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// Quantize a row of n floats into type t (any weight type, plus Q8_K). Used by synth and tests;
// the K-quant rules are simple min/max fits, not llama.cpp's search-based quantizers.
void quantize_row(DType t, const float* src, void* dst, int64_t n);

// The activation type a weight type's dot product pairs with (quants.md §1).
DType activation_type(DType weight);

// Activation quantizers, exactly as the spec describes (round half to even).
void quantize_row_q8_0(const float* x, BlockQ8_0* y, int64_t n);
void quantize_row_q8_k(const float* x, BlockQ8_K* y, int64_t n);

// Reference dot product of a weight row (type w) with an activation row already converted to
// activation_type(w). Integer sums per block, f32 accumulation across blocks.
float vec_dot_ref(DType w, const void* w_row, const void* act_row, int64_t n);

// Convert an f32 row into the activation type of weight type w (dst sized row_bytes(act, n)).
void quantize_activation_row(DType w, const float* x, void* dst, int64_t n);

}  // namespace bigmoe
