// Google Benchmark microbenchmarks of the CPU kernels on the paths the engine takes: quantized
// matrix products (one weight matrix larger than the caches, 1..16 tokens) and the routed-expert
// op at decode and verification batch sizes. Reports bytes/s of weights read.
//
//   build/bigmoe_kernel_bench --benchmark_filter=matmul  (threads: BIGMOE_THREADS, default 2)
#include <benchmark/benchmark.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "backend/cpu/cpu_backend.h"
#include "core/fp16.h"
#include "quant/quants.h"

namespace {

using namespace bigmoe;

int bench_threads() {
    const char* s = std::getenv("BIGMOE_THREADS");
    return s ? std::max(1, std::atoi(s)) : 2;
}

cpu::CpuBackend& backend() {
    static cpu::CpuBackend b(bench_threads());
    return b;
}

// Quantized random weights: n_mat matrices of rows x cols each.
struct QuantMatrix {
    DType type;
    int64_t rows, cols, n_mat;
    size_t row_bytes;
    std::vector<uint8_t> data;
    QuantMatrix(DType t, int64_t r, int64_t c, int64_t m = 1) : type(t), rows(r), cols(c), n_mat(m) {
        row_bytes = bigmoe::row_bytes(t, c);
        data.resize(row_bytes * size_t(r * m));
        std::mt19937 rng(7);
        std::normal_distribution<float> nd(0.0f, 1.0f);
        std::vector<float> row(static_cast<size_t>(c));
        for (int64_t i = 0; i < r * m; ++i) {
            for (auto& v : row) v = nd(rng);
            quantize_row(t, row.data(), data.data() + size_t(i) * row_bytes, c);
        }
    }
    // The weight as the engine sees it: packed (repack.h) when `packed` and the type has packed kernels.
    const Weight& weight(bool packed = true) {
        Weight& w = packed ? packed_ : raw_;
        if (w.data) return w;
        w.type = type;
        w.ne[0] = cols;
        w.ne[1] = rows;
        w.ne[2] = n_mat;
        w.row_bytes = row_bytes;
        w.expert_bytes = row_bytes * size_t(rows);
        w.data = data.data();
        if (packed) BM_CHECK(backend().prepare_weight(w));
        return w;
    }

  private:
    Weight raw_, packed_;
};

std::vector<float> random_f32(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng);
    return v;
}

// A 64-100 MB matrix (like the LM head) times n_tok tokens; range(1) > 0 instead uses a 2 MB
// matrix that stays in cache (the kernel's arithmetic rate without the memory bound); range(2)
// = 1: the file's row layout instead of packed rows.
void matmul(benchmark::State& state, DType t) {
    const int64_t n_tok = state.range(0), cols = 1024, rows = state.range(1) > 0 ? 2048 : 98304;
    static std::vector<std::unique_ptr<QuantMatrix>> cache;
    QuantMatrix* m = nullptr;
    for (auto& c : cache)
        if (c->type == t && c->rows == rows) m = c.get();
    if (!m) {
        cache.push_back(std::make_unique<QuantMatrix>(t, rows, cols));
        m = cache.back().get();
    }
    const Weight& w = m->weight(state.range(2) == 0);
    auto x = random_f32(size_t(n_tok * cols), 1);
    std::vector<float> y(size_t(n_tok * rows));
    auto& be = backend();
    for (auto _ : state) {
        be.matmul(w, Tensor{x.data(), n_tok, cols, cols}, Tensor{y.data(), n_tok, rows, rows});
        benchmark::DoNotOptimize(y.data());
        be.reset_scratch();
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(m->data.size()));
    state.counters["tok/s"] = benchmark::Counter(double(n_tok), benchmark::Counter::kIsIterationInvariantRate);
    state.counters["GMAC/s"] =
        benchmark::Counter(double(n_tok * rows * cols) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// bench-1b's routed experts: 64 experts, top 8, n_embd 1024, n_ff 256; gate/up Q4_K, down Q6_K.
// Tokens are routed at random, so a batch of n tokens reads ~64 (1 - (7/8)^n) experts.
void moe(benchmark::State& state) {
    const int64_t T = state.range(0), E = 64, K = 8, N = 1024, F = 256;
    static QuantMatrix gate(DType::Q4_K, F, N, E), up(DType::Q4_K, F, N, E), down(DType::Q6_K, N, F, E);
    const bool packed = state.range(1) == 0;
    const Weight &wg = gate.weight(packed), &wu = up.weight(packed), &wd = down.weight(packed);
    MoeWeights mw;
    mw.gate = &wg;
    mw.up = &wu;
    mw.down = &wd;
    mw.n_expert = E;
    mw.n_expert_used = K;
    mw.n_ff = F;
    auto x = random_f32(size_t(T * N), 2), logits = random_f32(size_t(T * E), 3);
    std::vector<float> y(size_t(T * N));
    auto& be = backend();
    for (auto _ : state) {
        be.moe(Tensor{x.data(), T, N, N}, Tensor{logits.data(), T, E, E}, mw, Tensor{y.data(), T, N, N});
        benchmark::DoNotOptimize(y.data());
        be.reset_scratch();
    }
    state.counters["tok/s"] = benchmark::Counter(double(T), benchmark::Counter::kIsIterationInvariantRate);
}

// Attention of n_tok new tokens over an f16 KV cache holding `depth` earlier positions: one layer
// with bench-1b's heads (8 query heads, 2 KV heads of 128) or, range(2) = 1, Qwen3.5-122B's (32 /
// 2 of 256). Reports the KV bytes read per call as bytes/s.
void attention(benchmark::State& state) {
    const int64_t T = state.range(0), depth = state.range(1);
    const bool big = state.range(2) == 1;
    const int64_t H = big ? 32 : 8, Hkv = 2, D = big ? 256 : 128, width = Hkv * D, cap = depth + T;
    auto& be = backend();
    // the cache in backend memory, as a context allocates it (huge pages where the kernel gives them)
    const size_t n_kv = size_t(cap * width);
    uint16_t* kc = static_cast<uint16_t*>(be.alloc(n_kv * 2));
    uint16_t* vc = static_cast<uint16_t*>(be.alloc(n_kv * 2));
    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (size_t i = 0; i < n_kv; ++i) {
        kc[i] = f32_to_fp16(nd(rng));
        vc[i] = f32_to_fp16(nd(rng));
    }
    auto q = random_f32(size_t(T * H * D), 8), k = random_f32(size_t(T * width), 9), v = random_f32(size_t(T * width), 10);
    std::vector<float> out(size_t(T * H * D));
    KvBlock b{kc, vc, DType::F16, DType::F16, cap};
    const BatchState batch{{{0, 0, T, depth}}, {{&b}}, {}};
    be.begin_batch(batch);
    for (auto _ : state) {
        be.attention(Tensor{q.data(), T, H * D, H * D}, Tensor{k.data(), T, width, width},
                     Tensor{v.data(), T, width, width}, {H, Hkv, D, 1.0f / std::sqrt(float(D))}, 0,
                     Tensor{out.data(), T, H * D, H * D});
        benchmark::DoNotOptimize(out.data());
        be.reset_scratch();
    }
    state.SetBytesProcessed(int64_t(state.iterations()) * (depth + T) * width * 2 * 2);
    be.dealloc(kc);
    be.dealloc(vc);
}
BENCHMARK(attention)
    ->ArgsProduct({{1, 2, 4}, {4096, 8192, 16384, 32768}, {0, 1}})
    ->ArgNames({"tokens", "depth", "122b"})
    ->UseRealTime();

void token_counts(benchmark::internal::Benchmark* b) {
    for (int64_t no_repack : {0, 1})
        for (int64_t cached : {0, 1})
            for (int64_t n : {1, 2, 4, 5, 8, 16, 64, 512})
                if (n < 64 || cached) b->Args({n, cached, no_repack});  // prefill sizes: the arithmetic rate
    b->ArgNames({"tokens", "cached", "no_repack"})->UseRealTime();
}
BENCHMARK_CAPTURE(matmul, q4_k, DType::Q4_K)->Apply(token_counts);
BENCHMARK_CAPTURE(matmul, q6_k, DType::Q6_K)->Apply(token_counts);
BENCHMARK_CAPTURE(matmul, q8_0, DType::Q8_0)->Apply(token_counts);
void moe_tokens(benchmark::internal::Benchmark* b) {
    for (int64_t no_repack : {0, 1})
        for (int64_t n : {1, 2, 5, 8, 64, 512}) b->Args({n, no_repack});
    b->ArgNames({"tokens", "no_repack"})->UseRealTime();
}
BENCHMARK(moe)->Apply(moe_tokens);

}  // namespace

BENCHMARK_MAIN();
