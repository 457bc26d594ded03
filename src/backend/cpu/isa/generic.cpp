// Portable kernels: the reference dot products and activation quantizers from quant/.
#include "backend/cpu/kernels.h"
#include "core/fp16.h"
#include "quant/quants.h"

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace bigmoe::cpu {

namespace {

#include "backend/cpu/kv_tile.inc"

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

void gdn_steps(const float* S_in, const GdnToken* tok, int64_t n_tok, float scale, int64_t dk, int64_t dv,
               float* work) {
    const float* src = S_in;
    for (int64_t t = 0; t < n_tok; ++t) {
        const GdnToken& g = tok[t];
        float* dst = g.state ? g.state : work;
        gdn_step(src, dst, g.q, g.k, g.v, g.beta, g.decay, scale, dk, dv, g.out);
        src = dst;
    }
}

template <bool F16>
float kv_at(const void* base, int64_t i) {
    if constexpr (F16)
        return fp16_to_f32(static_cast<const uint16_t*>(base)[i]);
    else
        return static_cast<const float*>(base)[i];
}
template <bool F16>
void kv_scores(const float* q, int64_t nq, const void* k, int64_t k_stride, int64_t n, int64_t D, float scale, float* s,
               int64_t s_stride, int64_t /*pf_end: no prefetching here*/) {
    for (int64_t j = 0; j < nq; ++j)
        for (int64_t t = 0; t < n; ++t) {
            float x = 0;
            for (int64_t d = 0; d < D; ++d) x += q[j * D + d] * kv_at<F16>(k, t * k_stride + d);
            s[j * s_stride + t] = x * scale;
        }
}
template <bool F16>
void kv_accum(const float* p, int64_t p_stride, const int64_t* n_of, int64_t nq, const void* v, int64_t v_stride,
              int64_t D, float* acc, int64_t /*pf_end: no prefetching here*/) {
    for (int64_t j = 0; j < nq; ++j)
        for (int64_t t = 0; t < n_of[j]; ++t)
            for (int64_t d = 0; d < D; ++d) acc[j * D + d] += p[j * p_stride + t] * kv_at<F16>(v, t * v_stride + d);
}
float exp_shift(const float* x, float m, float* y, int64_t n) {
    float sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += y[i] = fast_exp::exp(x[i] - m);
    return sum;
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
    k.gdn_steps = gdn_steps;
    k.silu_mul = silu_mul;
    k.kv_scores_f32 = kv_scores<false>;
    k.kv_scores_f16 = kv_scores<true>;
    k.kv_accum_f32 = kv_accum<false>;
    k.kv_accum_f16 = kv_accum<true>;
    kv_tile::set(k.kv_tile);
    k.exp_shift = exp_shift;
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
// AVX-VNNI: CPUID leaf 7 sub-leaf 1, EAX bit 4.
static bool has_avxvnni() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return has_avx2() && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 4));
}
static bool has_avx512() {
    return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

// AMX-TILE and AMX-INT8 (CPUID leaf 7, EDX bits 24 and 25), and Linux's permission for the
// 8 KiB tile state, which a process asks for once (arch_prctl ARCH_REQ_XCOMP_PERM, feature 18).
bool amx_usable() {
    static const bool ok = [] {
        if (!has_avx512()) return false;
        unsigned a = 0, b = 0, c = 0, d = 0;
        if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
        if (!(d & (1u << 24)) || !(d & (1u << 25))) return false;
        constexpr long k_req_xcomp_perm = 0x1023, k_xtiledata = 18;
        return syscall(SYS_arch_prctl, k_req_xcomp_perm, k_xtiledata) == 0;
    }();
    return ok;
}

static const Kernels& amx_kernels() {
    static const Kernels k = [] {
        Kernels t = avx512::kernels();
        amx::add_kernels(t);
        return t;
    }();
    return k;
}

std::vector<const Kernels*> available_kernels() {
    std::vector<const Kernels*> r = {&generic_kernels()};
    if (has_avx2()) r.push_back(&avx2::kernels());
    if (has_avxvnni()) r.push_back(&avx2vnni::kernels());
    if (has_avx512()) r.push_back(&avx512::kernels());
    if (amx_usable()) r.push_back(&amx_kernels());
    return r;
}

// BIGMOE_ISA=generic|avx2|avx2vnni|avx512|amx forces a table (for measurements); the default is
// the best.
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
