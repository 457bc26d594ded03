// GGUF v2/v3 reader: parses and validates the header, metadata and tensor table of a (possibly
// split) model file. Tensor data stays in the memory mapping; TensorInfo::data points into it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/mapped_file.h"
#include "core/result.h"
#include "quant/dtype.h"

namespace bigmoe::gguf {

enum class ValueType : uint32_t {
    UINT8 = 0,
    INT8 = 1,
    UINT16 = 2,
    INT16 = 3,
    UINT32 = 4,
    INT32 = 5,
    FLOAT32 = 6,
    BOOL = 7,
    STRING = 8,
    ARRAY = 9,
    UINT64 = 10,
    INT64 = 11,
    FLOAT64 = 12,
};
const char* value_type_name(ValueType t);
bool is_integer(ValueType t);

// One metadata value. Scalars: integers in `i` (uint64 values above INT64_MAX keep their bits),
// floats in `f`, bools in `i`, strings in `s`. Arrays: elem_type plus one of the arr_* vectors.
struct Value {
    ValueType type = ValueType::UINT8;
    ValueType elem_type = ValueType::UINT8;
    int64_t i = 0;
    double f = 0;
    std::string s;
    std::vector<int64_t> arr_i;
    std::vector<double> arr_f;
    std::vector<std::string> arr_s;

    size_t array_size() const { return arr_i.size() + arr_f.size() + arr_s.size(); }
};

constexpr int k_max_dims = 4;
constexpr size_t k_max_name = 64;  // tensor names must be shorter (GGML_MAX_NAME incl. NUL)

struct TensorInfo {
    std::string name;
    DType type = DType::F32;
    int n_dims = 0;
    int64_t ne[k_max_dims] = {1, 1, 1, 1};  // ne[0] fastest-varying
    uint64_t offset = 0;                    // relative to its shard's data section
    size_t nbytes = 0;
    size_t row_bytes = 0;  // bytes of one ne[0] row
    const uint8_t* data = nullptr;
    int shard = 0;

    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
    std::string shape_str() const;
};

class GgufFile {
  public:
    // Opens a file (and its sibling shards if it is part of a split model).
    static Result<std::unique_ptr<GgufFile>> open(const std::string& path);
    // Parses one mapped buffer (no shards).
    static Result<std::unique_ptr<GgufFile>> parse(std::unique_ptr<MappedFile> file);

    const std::string& path() const { return shards_.front()->path(); }
    uint32_t version() const { return version_; }
    uint32_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    uint64_t file_size() const;  // all shards together
    int n_shards() const { return int(shards_.size()); }

    const std::map<std::string, Value>& metadata() const { return kv_; }
    const std::vector<std::string>& key_order() const { return key_order_; }
    const Value* find(const std::string& key) const;
    const std::vector<TensorInfo>& tensors() const { return tensors_; }
    const TensorInfo* tensor(const std::string& name) const;

    // Typed getters: any integer type for integer keys, FLOAT32/FLOAT64 for floats. Errors name
    // the file, the key, the expected and the stored type.
    Result<int64_t> get_int(const std::string& key) const;
    Result<double> get_float(const std::string& key) const;
    Result<std::string> get_string(const std::string& key) const;
    Result<bool> get_bool(const std::string& key) const;
    int64_t get_int_or(const std::string& key, int64_t def) const;
    double get_float_or(const std::string& key, double def) const;
    std::string get_string_or(const std::string& key, const std::string& def) const;

  private:
    GgufFile() = default;
    Result<void> merge_shard(std::unique_ptr<GgufFile> other);
    void rebuild_index();

    std::vector<std::unique_ptr<MappedFile>> shards_;
    uint32_t version_ = 0;
    uint32_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    std::map<std::string, Value> kv_;
    std::vector<std::string> key_order_;
    std::vector<TensorInfo> tensors_;
    std::map<std::string, size_t> tensor_index_;
};

}  // namespace bigmoe::gguf
