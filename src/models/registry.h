// Loader entry points of each architecture (one file each).
#pragma once

#include <memory>

#include "models/model.h"

namespace bigmoe {

Result<std::unique_ptr<Model>> load_qwen3moe(const gguf::GgufFile& file, const Placement& placement);
Result<std::unique_ptr<Model>> load_qwen35(const gguf::GgufFile& file, const Placement& placement);
Result<std::unique_ptr<Model>> load_qwen35moe(const gguf::GgufFile& file, const Placement& placement);

}  // namespace bigmoe
