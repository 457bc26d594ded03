#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/limits.h"

namespace bigmoe {

Result<void> cuda_check_shapes(const OpShapes& s) {
    using namespace cuda;
    auto refuse = [](const std::string& what) {
        return make_error("the CUDA backend does not run this model: " + what, ErrorKind::unsupported);
    };
    if (s.head_dim != 0 && (s.head_dim > k_att_max_d || s.head_dim % 4 != 0))
        return refuse("its attention head size " + std::to_string(s.head_dim) + " is not a multiple of 4 up to " +
                      std::to_string(k_att_max_d));
    if (s.conv_kernel != 0 && (s.conv_kernel < 2 || s.conv_kernel > k_conv_max))
        return refuse("its conv kernel of " + std::to_string(s.conv_kernel) + " is not 2 to " +
                      std::to_string(k_conv_max));
    if (s.ssm_d_k != 0 && !gdn_supported(s.ssm_d_k))
        return refuse("its Gated DeltaNet key size " + std::to_string(s.ssm_d_k) + " is over " +
                      std::to_string(k_gdn_max_dk));
    return {};
}

}  // namespace bigmoe
