// A build without the CUDA toolkit: the CUDA backend's entry points say so.
#include "backend/cuda/cuda_backend.h"

namespace bigmoe {

namespace {
Error not_built() {
    return make_error("this bigmoe was built without CUDA (rebuild with the CUDA toolkit: -DBIGMOE_CUDA=ON)",
                      ErrorKind::unsupported);
}
}  // namespace

bool cuda_built() {
    return false;
}

Result<CudaDeviceInfo> cuda_device_info(int) {
    return not_built();
}

Result<std::unique_ptr<Backend>> make_cuda_backend(int) {
    return not_built();
}

}  // namespace bigmoe
