// GGUF v3 writer. Metadata and tensor infos are collected first; tensor bytes are then streamed
// one tensor at a time through a callback, so writing a 45 GB file needs constant memory.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/result.h"
#include "gguf/gguf_file.h"

namespace bigmoe::gguf {

class ByteSink {
  public:
    virtual ~ByteSink() = default;
    virtual Result<void> write(const void* data, size_t n) = 0;
};

class GgufWriter {
  public:
    explicit GgufWriter(uint32_t alignment = 32) : alignment_(alignment) {}

    void set(const std::string& key, Value v);
    void set_u32(const std::string& key, uint32_t v);
    void set_i32(const std::string& key, int32_t v);
    void set_f32(const std::string& key, float v);
    void set_bool(const std::string& key, bool v);
    void set_str(const std::string& key, const std::string& v);
    void set_arr_str(const std::string& key, std::vector<std::string> v);
    void set_arr_i32(const std::string& key, std::vector<int64_t> v);
    void set_arr_f32(const std::string& key, std::vector<double> v);

    // Adds a tensor; returns its index. ne lists dims fastest-first.
    size_t add_tensor(const std::string& name, DType type, std::vector<int64_t> ne);
    size_t n_tensors() const { return infos_.size(); }
    const TensorInfo& info(size_t i) const { return infos_[i]; }

    // fill(i, sink) must write exactly info(i).nbytes bytes for tensor i.
    using Filler = std::function<Result<void>(size_t, ByteSink&)>;
    Result<void> write(ByteSink& out, const Filler& fill) const;
    Result<void> write_file(const std::string& path, const Filler& fill) const;
    Result<std::vector<uint8_t>> write_bytes(const Filler& fill) const;

  private:
    uint32_t alignment_;
    std::vector<std::pair<std::string, Value>> kv_;
    std::vector<TensorInfo> infos_;
};

}  // namespace bigmoe::gguf
