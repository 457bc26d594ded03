// `qwen35`: the dense Qwen3.5 hybrid (Qwen3.5-0.8B ... 27B), used as a draft model.
#include "models/qwen35_family.h"
#include "models/registry.h"

namespace bigmoe {

Result<std::unique_ptr<Model>> load_qwen35(const gguf::GgufFile& file, const Placement& placement) {
    return Qwen35Family::create(file, placement, /*moe=*/false);
}

}  // namespace bigmoe
