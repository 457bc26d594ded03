// Google Benchmark of what a kernel boundary costs on the GPU, apart from any kernel's work: a
// CUDA graph of a chain of kernels that only wait for the one before (griddepcontrol.wait, as
// every backend kernel does first), replayed, without programmatic dependent launch, with it
// and the implicit trigger (a block's exit), and with an explicit trigger after or before the
// wait, for the grid sizes decode steps launch. Time per kernel is the graph's time over its length;
// a decode step of ~424 kernels cannot be faster than that many boundaries.
//
//   build/bigmoe_cuda_launch_bench   (skips, with a message, where no GPU is usable)
#include <benchmark/benchmark.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <string>

namespace {

// Each block touches one word so the kernel is not empty to the compiler: the chain's data
// dependence is what the wait is for.
// trigger: 0 none (the next kernel launches as this one's blocks exit), 1 after the wait, 2
// before it.
__global__ void k_link(int* flag, int trigger) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (trigger == 2) asm volatile("griddepcontrol.launch_dependents;");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    if (trigger == 1) asm volatile("griddepcontrol.launch_dependents;");
#endif
    if (threadIdx.x == 0 && blockIdx.x == 0) ++*flag;
}

bool gpu_ok(std::string* why) {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
        cudaGetLastError();
        *why = e != cudaSuccess ? cudaGetErrorString(e) : "no CUDA device";
        return false;
    }
    return true;
}

// A chain of `len` kernels of `blocks` x 256 threads captured into a graph.
void chain(benchmark::State& state) {
    std::string why;
    if (!gpu_ok(&why)) {
        state.SkipWithError(("no usable GPU: " + why).c_str());
        return;
    }
    const int len = int(state.range(0)), blocks = int(state.range(1));
    // pdl: 0 off, 1 on with the implicit trigger, 2 on with the trigger after the wait, 3 before.
    const int pdl = int(state.range(2));
    cudaStream_t s = nullptr;
    int* flag = nullptr;
    cudaGraph_t g = nullptr;
    cudaGraphExec_t x = nullptr;
    cudaEvent_t e0 = nullptr, e1 = nullptr;
    bool ok = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess &&
              cudaMalloc(&flag, sizeof(int)) == cudaSuccess && cudaEventCreate(&e0) == cudaSuccess &&
              cudaEventCreate(&e1) == cudaSuccess &&
              cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess;
    if (ok) {
        cudaLaunchConfig_t cfg{};
        cfg.gridDim = dim3(unsigned(blocks));
        cfg.blockDim = dim3(256);
        cfg.stream = s;
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = attr;
        cfg.numAttrs = pdl != 0 ? 1 : 0;
        const int trigger = pdl >= 2 ? pdl - 1 : 0;
        for (int i = 0; i < len && ok; ++i) ok = cudaLaunchKernelEx(&cfg, k_link, flag, trigger) == cudaSuccess;
        ok = cudaStreamEndCapture(s, &g) == cudaSuccess && ok && cudaGraphInstantiate(&x, g, 0) == cudaSuccess;
    }
    if (ok) ok = cudaGraphLaunch(x, s) == cudaSuccess && cudaStreamSynchronize(s) == cudaSuccess;  // warm
    double total_ms = 0;
    int64_t runs = 0;
    for (auto _ : state) {
        if (!ok) break;
        cudaEventRecord(e0, s);
        cudaGraphLaunch(x, s);
        cudaEventRecord(e1, s);
        ok = cudaEventSynchronize(e1) == cudaSuccess;
        float ms = 0;
        cudaEventElapsedTime(&ms, e0, e1);
        state.SetIterationTime(double(ms) / 1e3);
        total_ms += ms;
        ++runs;
    }
    if (!ok) state.SkipWithError(("CUDA: " + std::string(cudaGetErrorString(cudaGetLastError()))).c_str());
    if (runs > 0) state.counters["us_per_kernel"] = total_ms * 1e3 / double(runs * len);
    if (x) cudaGraphExecDestroy(x);
    if (g) cudaGraphDestroy(g);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(flag);
    if (s) cudaStreamDestroy(s);
}

void shapes(benchmark::internal::Benchmark* b) {
    for (int pdl : {3, 2, 1, 0})
        for (int blocks : {1, 132, 264, 1024}) b->Args({424, blocks, pdl});
    b->ArgNames({"kernels", "blocks", "pdl"});
}

}  // namespace

BENCHMARK(chain)->Apply(shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);

BENCHMARK_MAIN();
