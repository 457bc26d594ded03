// Portable kernels: the reference dot products and activation quantizers from quant/.
#include "backend/cpu/kernels.h"
#include "core/fp16.h"
#include "quant/quants.h"

#include <cstdlib>
#include <string>

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

void gdn_step(const float* S_in, float* S_out, const float* q, const float* k, const float* v, float beta, float decay,
              float scale, int64_t dk, int64_t dv, float* out) {
    for (int64_t c = 0; c < dv; ++c) {
        const float* r = S_in + c * dk;
        float* w = S_out + c * dk;
        float pred = 0;
        for (int64_t x = 0; x < dk; ++x) {
            w[x] = r[x] * decay;
            pred += w[x] * k[x];
        }
        const float delta = beta * (v[c] - pred);
        float acc = 0;
        for (int64_t x = 0; x < dk; ++x) {
            w[x] += k[x] * delta;
            acc += w[x] * q[x];
        }
        out[c] = acc * scale;
    }
}

float dot_kv_f32(const float* a, const void* b, int64_t n) {
    const float* x = static_cast<const float*>(b);
    float s = 0;
    for (int64_t i = 0; i < n; ++i) s += a[i] * x[i];
    return s;
}
float dot_kv_f16(const float* a, const void* b, int64_t n) {
    const uint16_t* x = static_cast<const uint16_t*>(b);
    float s = 0;
    for (int64_t i = 0; i < n; ++i) s += a[i] * fp16_to_f32(x[i]);
    return s;
}
void axpy_f32(float* y, float a, const void* x, int64_t n) {
    const float* v = static_cast<const float*>(x);
    for (int64_t i = 0; i < n; ++i) y[i] += a * v[i];
}
void axpy_f16(float* y, float a, const void* x, int64_t n) {
    const uint16_t* v = static_cast<const uint16_t*>(x);
    for (int64_t i = 0; i < n; ++i) y[i] += a * fp16_to_f32(v[i]);
}

void silu_mul(const float* g, const float* u, float* out, int64_t n) {
    for (int64_t i = 0; i < n; ++i) out[i] = u ? silu_poly(g[i]) * u[i] : silu_poly(g[i]);
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
    k.gdn_step = gdn_step;
    k.silu_mul = silu_mul;
    k.dot_kv_f32 = dot_kv_f32;
    k.dot_kv_f16 = dot_kv_f16;
    k.axpy_f32 = axpy_f32;
    k.axpy_f16 = axpy_f16;
    return k;
}
}  // namespace

const Kernels& generic_kernels() {
    static const Kernels k = make_generic();
    return k;
}

static bool has_avx2() {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
static bool has_avx512() {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

std::vector<const Kernels*> available_kernels() {
    std::vector<const Kernels*> r = {&generic_kernels()};
    if (has_avx2()) r.push_back(&avx2::kernels());
    if (has_avx512()) r.push_back(&avx512::kernels());
    return r;
}

// BIGMOE_ISA=generic|avx2|avx512 forces a table (for measurements); the default is the best.
const Kernels& kernels() {
    static const Kernels* k = [] {
        const auto all = available_kernels();
        if (const char* want = std::getenv("BIGMOE_ISA"))
            for (const Kernels* x : all)
                if (std::string(want) == x->isa) return x;
        return all.back();
    }();
    return *k;
}

}  // namespace bigmoe::cpu
