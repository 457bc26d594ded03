// The CUDA backend: weights, caches, recurrent rings and activations in GPU memory, every op a
// kernel on one stream. Built when CMake finds nvcc (-DBIGMOE_CUDA=ON/OFF to choose); a build
// without it answers every call here with an error that says so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "backend/backend.h"
#include "core/result.h"

namespace bigmoe {

struct CudaDeviceInfo {
    std::string name;
    int compute_major = 0, compute_minor = 0, multiprocessors = 0;
    uint64_t total_bytes = 0, free_bytes = 0;
};

// Whether this build has the CUDA backend.
bool cuda_built();
// The device's description, or why there is none: a build without CUDA, no driver, no device.
Result<CudaDeviceInfo> cuda_device_info(int device = 0);
Result<std::unique_ptr<Backend>> make_cuda_backend(int device = 0);
// The layer sizes the CUDA kernels take (CudaBackend::check_shapes; here for builds without CUDA
// and for tests).
Result<void> cuda_check_shapes(const OpShapes& s);

}  // namespace bigmoe
