#include "gguf/gguf_writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace bigmoe::gguf {

namespace {

class BufferSink : public ByteSink {
  public:
    Result<void> write(const void* data, size_t n) override {
        const uint8_t* p = static_cast<const uint8_t*>(data);
        buf.insert(buf.end(), p, p + n);
        return {};
    }
    std::vector<uint8_t> buf;
};

class FileSink : public ByteSink {
  public:
    FileSink(std::FILE* f, std::string path) : f_(f), path_(std::move(path)) {}
    Result<void> write(const void* data, size_t n) override {
        if (n && std::fwrite(data, 1, n, f_) != n)
            return make_error("write to '" + path_ + "' failed: " + std::strerror(errno));
        return {};
    }

  private:
    std::FILE* f_;
    std::string path_;
};

// Counts bytes and checks that each tensor's filler writes exactly its size.
class CountingSink : public ByteSink {
  public:
    explicit CountingSink(ByteSink& inner) : inner_(inner) {}
    Result<void> write(const void* data, size_t n) override {
        count += n;
        return inner_.write(data, n);
    }
    uint64_t count = 0;

  private:
    ByteSink& inner_;
};

void put_bytes(std::vector<uint8_t>& b, const void* p, size_t n) {
    const size_t at = b.size();
    b.resize(at + n);
    if (n) std::memcpy(b.data() + at, p, n);
}
template <class T>
void put(std::vector<uint8_t>& b, T v) {
    put_bytes(b, &v, sizeof(T));
}
void put_str(std::vector<uint8_t>& b, const std::string& s) {
    put<uint64_t>(b, s.size());
    put_bytes(b, s.data(), s.size());
}

void put_scalar(std::vector<uint8_t>& b, ValueType t, int64_t i, double f, const std::string& s) {
    switch (t) {
        case ValueType::UINT8:
        case ValueType::INT8:
        case ValueType::BOOL:
            put<uint8_t>(b, uint8_t(i));
            break;
        case ValueType::UINT16:
        case ValueType::INT16:
            put<uint16_t>(b, uint16_t(i));
            break;
        case ValueType::UINT32:
        case ValueType::INT32:
            put<uint32_t>(b, uint32_t(i));
            break;
        case ValueType::UINT64:
        case ValueType::INT64:
            put<uint64_t>(b, uint64_t(i));
            break;
        case ValueType::FLOAT32:
            put<float>(b, float(f));
            break;
        case ValueType::FLOAT64:
            put<double>(b, f);
            break;
        case ValueType::STRING:
            put_str(b, s);
            break;
        case ValueType::ARRAY:
            break;
    }
}

}  // namespace

void GgufWriter::set(const std::string& key, Value v) {
    for (auto& kv : kv_)
        if (kv.first == key) {
            kv.second = std::move(v);
            return;
        }
    kv_.emplace_back(key, std::move(v));
}

void GgufWriter::set_u32(const std::string& key, uint32_t v) {
    Value x;
    x.type = ValueType::UINT32;
    x.i = v;
    set(key, std::move(x));
}
void GgufWriter::set_i32(const std::string& key, int32_t v) {
    Value x;
    x.type = ValueType::INT32;
    x.i = v;
    set(key, std::move(x));
}
void GgufWriter::set_f32(const std::string& key, float v) {
    Value x;
    x.type = ValueType::FLOAT32;
    x.f = v;
    set(key, std::move(x));
}
void GgufWriter::set_bool(const std::string& key, bool v) {
    Value x;
    x.type = ValueType::BOOL;
    x.i = v;
    set(key, std::move(x));
}
void GgufWriter::set_str(const std::string& key, const std::string& v) {
    Value x;
    x.type = ValueType::STRING;
    x.s = v;
    set(key, std::move(x));
}
void GgufWriter::set_arr_str(const std::string& key, std::vector<std::string> v) {
    Value x;
    x.type = ValueType::ARRAY;
    x.elem_type = ValueType::STRING;
    x.arr_s = std::move(v);
    set(key, std::move(x));
}
void GgufWriter::set_arr_i32(const std::string& key, std::vector<int64_t> v) {
    Value x;
    x.type = ValueType::ARRAY;
    x.elem_type = ValueType::INT32;
    x.arr_i = std::move(v);
    set(key, std::move(x));
}
void GgufWriter::set_arr_f32(const std::string& key, std::vector<double> v) {
    Value x;
    x.type = ValueType::ARRAY;
    x.elem_type = ValueType::FLOAT32;
    x.arr_f = std::move(v);
    set(key, std::move(x));
}

size_t GgufWriter::add_tensor(const std::string& name, DType type, std::vector<int64_t> ne) {
    TensorInfo ti;
    ti.name = name;
    ti.type = type;
    ti.n_dims = int(ne.size());
    for (size_t d = 0; d < ne.size() && d < 4; ++d) ti.ne[d] = ne[d];
    ti.row_bytes = row_bytes(type, ti.ne[0]);
    ti.nbytes = ti.row_bytes * size_t(ti.ne[1] * ti.ne[2] * ti.ne[3]);
    uint64_t off = 0;
    if (!infos_.empty()) {
        const TensorInfo& last = infos_.back();
        off = (last.offset + last.nbytes + alignment_ - 1) / alignment_ * alignment_;
    }
    ti.offset = off;
    infos_.push_back(std::move(ti));
    return infos_.size() - 1;
}

Result<void> GgufWriter::write(ByteSink& out, const Filler& fill) const {
    std::vector<uint8_t> h;
    put_bytes(h, "GGUF", 4);
    put<uint32_t>(h, 3);
    put<int64_t>(h, int64_t(infos_.size()));
    put<int64_t>(h, int64_t(kv_.size()));
    for (const auto& [key, v] : kv_) {
        put_str(h, key);
        put<uint32_t>(h, uint32_t(v.type));
        if (v.type != ValueType::ARRAY) {
            put_scalar(h, v.type, v.i, v.f, v.s);
            continue;
        }
        put<uint32_t>(h, uint32_t(v.elem_type));
        put<uint64_t>(h, v.array_size());
        for (const auto& s : v.arr_s) put_scalar(h, v.elem_type, 0, 0, s);
        for (double f : v.arr_f) put_scalar(h, v.elem_type, 0, f, {});
        for (int64_t i : v.arr_i) put_scalar(h, v.elem_type, i, 0, {});
    }
    for (const auto& ti : infos_) {
        put_str(h, ti.name);
        put<uint32_t>(h, uint32_t(ti.n_dims));
        for (int d = 0; d < ti.n_dims; ++d) put<int64_t>(h, ti.ne[d]);
        put<uint32_t>(h, uint32_t(ti.type));
        put<uint64_t>(h, ti.offset);
    }
    if (!infos_.empty()) h.resize((h.size() + alignment_ - 1) / alignment_ * alignment_, 0);
    BM_TRY(out.write(h.data(), h.size()));
    CountingSink counter(out);
    static const uint8_t zeros[256] = {};
    for (size_t i = 0; i < infos_.size(); ++i) {
        const uint64_t pad = infos_[i].offset - counter.count;
        for (uint64_t left = pad; left > 0;) {
            const size_t n = size_t(std::min<uint64_t>(left, sizeof zeros));
            BM_TRY(counter.write(zeros, n));
            left -= n;
        }
        const uint64_t before = counter.count;
        BM_TRY(fill(i, counter));
        if (counter.count - before != infos_[i].nbytes)
            return make_error("gguf writer: tensor '" + infos_[i].name + "' wrote " +
                              std::to_string(counter.count - before) + " bytes, expected " +
                              std::to_string(infos_[i].nbytes));
    }
    return {};
}

Result<void> GgufWriter::write_file(const std::string& path, const Filler& fill) const {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) return make_error("cannot create '" + path + "': " + std::strerror(errno));
    FileSink sink(f, path);
    auto r = write(sink, fill);
    if (std::fclose(f) != 0 && r.ok()) return make_error("closing '" + path + "' failed: " + std::strerror(errno));
    return r;
}

Result<std::vector<uint8_t>> GgufWriter::write_bytes(const Filler& fill) const {
    BufferSink sink;
    auto r = write(sink, fill);
    if (!r) return r.error();
    return std::move(sink.buf);
}

}  // namespace bigmoe::gguf
