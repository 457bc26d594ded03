// `qwen35moe`: Qwen3.5 MoE (35B-A3B, 122B-A10B, 397B-A17B): the hybrid stack with routed experts
// and a sigmoid-gated shared expert in every layer.
#include "models/qwen35_family.h"
#include "models/registry.h"

namespace bigmoe {

Result<std::unique_ptr<Model>> load_qwen35moe(const gguf::GgufFile& file, const Placement& placement) {
    return Qwen35Family::create(file, placement, /*moe=*/true);
}

}  // namespace bigmoe
