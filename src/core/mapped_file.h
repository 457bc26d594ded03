// Read-only memory mapping of a whole file. Model weights are views into it; nothing is copied.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "core/result.h"

namespace bigmoe {

class MappedFile {
  public:
    static Result<std::unique_ptr<MappedFile>> open(const std::string& path);
    // A mapping over a caller-owned buffer (tests, fuzzing). The buffer must outlive this object.
    static std::unique_ptr<MappedFile> from_memory(const void* data, size_t size, std::string name);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;

    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }

  private:
    MappedFile() = default;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
    bool owned_ = false;
    std::string path_;
};

}  // namespace bigmoe
