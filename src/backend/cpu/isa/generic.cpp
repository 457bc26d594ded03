// Portable kernels: the reference dot products and activation quantizers from quant/.
#include "backend/cpu/kernels.h"
#include "quant/quants.h"

namespace bigmoe::cpu {

namespace {
template <DType T>
float dot(const void* w, const void* a, int64_t n) {
    return vec_dot_ref(T, w, a, n);
}
template <DType T>
void quant(const float* x, void* dst, int64_t n) {
    quantize_row(T, x, dst, n);
}

Kernels make_generic() {
    Kernels k;
    k.isa = "generic";
    k.vec_dot[int(DType::F32)] = dot<DType::F32>;
    k.vec_dot[int(DType::F16)] = dot<DType::F16>;
    k.vec_dot[int(DType::BF16)] = dot<DType::BF16>;
    k.vec_dot[int(DType::Q4_0)] = dot<DType::Q4_0>;
    k.vec_dot[int(DType::Q8_0)] = dot<DType::Q8_0>;
    k.vec_dot[int(DType::Q4_K)] = dot<DType::Q4_K>;
    k.vec_dot[int(DType::Q5_K)] = dot<DType::Q5_K>;
    k.vec_dot[int(DType::Q6_K)] = dot<DType::Q6_K>;
    k.quantize[int(DType::F32)] = quant<DType::F32>;
    k.quantize[int(DType::F16)] = quant<DType::F16>;
    k.quantize[int(DType::BF16)] = quant<DType::BF16>;
    k.quantize[int(DType::Q8_0)] = quant<DType::Q8_0>;
    k.quantize[int(DType::Q8_K)] = quant<DType::Q8_K>;
    return k;
}
}  // namespace

const Kernels& generic_kernels() {
    static const Kernels k = make_generic();
    return k;
}

const Kernels& kernels() {
    return generic_kernels();
}

}  // namespace bigmoe::cpu
