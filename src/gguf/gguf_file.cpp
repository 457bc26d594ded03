#include "gguf/gguf_file.h"
#include "gguf/names.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <limits>

namespace bigmoe::gguf {

namespace {
// Every check of a file's bytes or metadata fails as a corrupt file.
Error corrupt_error(std::string msg) {
    return make_error(std::move(msg), ErrorKind::corrupt_file);
}
}  // namespace

const char* value_type_name(ValueType t) {
    static const char* names[] = {"UINT8", "INT8",   "UINT16", "INT16",  "UINT32", "INT32",  "FLOAT32",
                                  "BOOL",  "STRING", "ARRAY",  "UINT64", "INT64",  "FLOAT64"};
    const uint32_t i = uint32_t(t);
    return i < 13 ? names[i] : "INVALID";
}

bool is_integer(ValueType t) {
    switch (t) {
        case ValueType::UINT8:
        case ValueType::INT8:
        case ValueType::UINT16:
        case ValueType::INT16:
        case ValueType::UINT32:
        case ValueType::INT32:
        case ValueType::UINT64:
        case ValueType::INT64:
            return true;
        default:
            return false;
    }
}

std::string TensorInfo::shape_str() const {
    std::string s = "{";
    for (int d = 0; d < n_dims; ++d) s += (d ? ", " : "") + std::to_string(ne[d]);
    return s + "}";
}

namespace {

// Bounds-checked little-endian cursor over the mapped file.
class Cursor {
  public:
    Cursor(const uint8_t* data, size_t size, const std::string& path) : p_(data), size_(size), path_(path) {}
    size_t pos() const { return pos_; }
    size_t remaining() const { return size_ - pos_; }

    Result<void> need(size_t n, const char* what) {
        if (n > remaining())
            return corrupt_error(path_ + ": truncated file: " + what + " needs " + std::to_string(n) +
                                 " bytes at offset " + std::to_string(pos_) + " but only " +
                                 std::to_string(remaining()) + " remain");
        return {};
    }
    template <class T>
    Result<T> read(const char* what) {
        BM_TRY(need(sizeof(T), what));
        T v;
        std::memcpy(&v, p_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    Result<std::string> read_string(const char* what) {
        auto len = read<uint64_t>(what);
        if (!len) return len.error();
        if (*len > remaining())
            return corrupt_error(path_ + ": " + what + ": string length " + std::to_string(*len) + " at offset " +
                                 std::to_string(pos_ - 8) + " runs past the end of the file (" +
                                 std::to_string(remaining()) + " bytes remain)");
        std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(*len));
        pos_ += size_t(*len);
        return s;
    }

  private:
    const uint8_t* p_;
    size_t size_;
    size_t pos_ = 0;
    const std::string& path_;
};

size_t scalar_size(ValueType t) {
    switch (t) {
        case ValueType::UINT8:
        case ValueType::INT8:
        case ValueType::BOOL:
            return 1;
        case ValueType::UINT16:
        case ValueType::INT16:
            return 2;
        case ValueType::UINT32:
        case ValueType::INT32:
        case ValueType::FLOAT32:
            return 4;
        case ValueType::UINT64:
        case ValueType::INT64:
        case ValueType::FLOAT64:
        case ValueType::STRING:
            return 8;  // minimum (the length prefix)
        default:
            return 0;
    }
}

bool valid_type(uint32_t t) {
    return t <= 12;
}

// Reads one scalar of type t; integers and bools go to *i, floats to *f, strings to *s.
Result<void> read_scalar(Cursor& c, ValueType t, int64_t* i, double* f, std::string* s, const std::string& ctx) {
    const char* w = ctx.c_str();
    switch (t) {
        case ValueType::UINT8: {
            auto v = c.read<uint8_t>(w);
            if (!v) return v.error();
            *i = *v;
            return {};
        }
        case ValueType::INT8: {
            auto v = c.read<int8_t>(w);
            if (!v) return v.error();
            *i = *v;
            return {};
        }
        case ValueType::UINT16: {
            auto v = c.read<uint16_t>(w);
            if (!v) return v.error();
            *i = *v;
            return {};
        }
        case ValueType::INT16: {
            auto v = c.read<int16_t>(w);
            if (!v) return v.error();
            *i = *v;
            return {};
        }
        case ValueType::UINT32: {
            auto v = c.read<uint32_t>(w);
            if (!v) return v.error();
            *i = *v;
            return {};
        }
        case ValueType::INT32: {
            auto v = c.read<int32_t>(w);
            if (!v) return v.error();
            *i = *v;
            return {};
        }
        case ValueType::UINT64: {
            auto v = c.read<uint64_t>(w);
            if (!v) return v.error();
            *i = int64_t(*v);
            return {};
        }
        case ValueType::INT64: {
            auto v = c.read<int64_t>(w);
            if (!v) return v.error();
            *i = *v;
            return {};
        }
        case ValueType::FLOAT32: {
            auto v = c.read<float>(w);
            if (!v) return v.error();
            *f = *v;
            return {};
        }
        case ValueType::FLOAT64: {
            auto v = c.read<double>(w);
            if (!v) return v.error();
            *f = *v;
            return {};
        }
        case ValueType::BOOL: {
            auto v = c.read<uint8_t>(w);
            if (!v) return v.error();
            if (*v > 1) return corrupt_error(ctx + ": bool value " + std::to_string(*v) + " is neither 0 nor 1");
            *i = *v;
            return {};
        }
        case ValueType::STRING: {
            auto v = c.read_string(w);
            if (!v) return v.error();
            *s = std::move(*v);
            return {};
        }
        default:
            break;
    }
    return corrupt_error(ctx + ": invalid value type " + std::to_string(uint32_t(t)));
}

Result<Value> read_value(Cursor& c, ValueType t, const std::string& ctx) {
    Value v;
    v.type = t;
    if (t != ValueType::ARRAY) {
        BM_TRY(read_scalar(c, t, &v.i, &v.f, &v.s, ctx));
        return v;
    }
    auto et = c.read<uint32_t>(ctx.c_str());
    if (!et) return et.error();
    if (!valid_type(*et)) return corrupt_error(ctx + ": array has invalid element type " + std::to_string(*et));
    if (ValueType(*et) == ValueType::ARRAY) return corrupt_error(ctx + ": arrays of arrays are not supported");
    v.elem_type = ValueType(*et);
    auto n = c.read<uint64_t>(ctx.c_str());
    if (!n) return n.error();
    const size_t es = scalar_size(v.elem_type);
    if (*n > c.remaining() / es)
        return corrupt_error(ctx + ": array of " + std::to_string(*n) + " " + value_type_name(v.elem_type) +
                             " elements runs past the end of the file (" + std::to_string(c.remaining()) +
                             " bytes remain)");
    const size_t count = size_t(*n);
    if (v.elem_type == ValueType::STRING)
        v.arr_s.resize(count);
    else if (v.elem_type == ValueType::FLOAT32 || v.elem_type == ValueType::FLOAT64)
        v.arr_f.resize(count);
    else
        v.arr_i.resize(count);
    for (size_t k = 0; k < count; ++k) {
        int64_t i = 0;
        double f = 0;
        std::string s;
        BM_TRY(read_scalar(c, v.elem_type, &i, &f, &s, ctx));
        if (!v.arr_s.empty())
            v.arr_s[k] = std::move(s);
        else if (!v.arr_f.empty())
            v.arr_f[k] = f;
        else
            v.arr_i[k] = i;
    }
    return v;
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
    return __builtin_mul_overflow(a, b, out);
}

}  // namespace

Result<std::unique_ptr<GgufFile>> GgufFile::parse(std::unique_ptr<MappedFile> file) {
    const std::string path = file->path();
    Cursor c(file->data(), file->size(), path);
    std::unique_ptr<GgufFile> g(new GgufFile());

    BM_TRY(c.need(4, "magic"));
    if (std::memcmp(file->data(), "GGUF", 4) != 0) {
        char hex[32];
        const uint8_t* m = file->data();
        std::snprintf(hex, sizeof hex, "%02x %02x %02x %02x", m[0], m[1], m[2], m[3]);
        return corrupt_error(path + ": not a GGUF file: magic is " + hex + ", expected 47 47 55 46 (\"GGUF\")");
    }
    c.read<uint32_t>("magic").value();
    auto version = c.read<uint32_t>("version");
    if (!version) return version.error();
    if ((*version & 0xFFFF) == 0 && *version != 0)
        return corrupt_error(path + ": version field " + std::to_string(*version) +
                             " looks byte-swapped: big-endian GGUF files are not supported");
    if (*version != 2 && *version != 3)
        return corrupt_error(path + ": unsupported GGUF version " + std::to_string(*version) + " (supported: 2, 3)");
    g->version_ = *version;
    auto n_tensors = c.read<int64_t>("tensor count");
    if (!n_tensors) return n_tensors.error();
    auto n_kv = c.read<int64_t>("metadata count");
    if (!n_kv) return n_kv.error();
    // Each KV needs >= 13 bytes and each tensor info >= 29: bound the counts by the file size.
    if (*n_kv < 0 || uint64_t(*n_kv) > c.remaining() / 13)
        return corrupt_error(path + ": metadata count " + std::to_string(*n_kv) + " is impossible for a file of " +
                             std::to_string(file->size()) + " bytes");
    if (*n_tensors < 0 || uint64_t(*n_tensors) > c.remaining() / 29)
        return corrupt_error(path + ": tensor count " + std::to_string(*n_tensors) + " is impossible for a file of " +
                             std::to_string(file->size()) + " bytes");

    for (int64_t k = 0; k < *n_kv; ++k) {
        auto key = c.read_string("metadata key");
        if (!key) return key.error();
        if (key->empty()) return corrupt_error(path + ": metadata key #" + std::to_string(k) + " is empty");
        if (g->kv_.count(*key)) return corrupt_error(path + ": duplicate metadata key '" + *key + "'");
        const std::string ctx = path + ": metadata '" + *key + "'";
        auto t = c.read<uint32_t>(ctx.c_str());
        if (!t) return t.error();
        if (!valid_type(*t)) return corrupt_error(ctx + ": invalid value type " + std::to_string(*t));
        auto v = read_value(c, ValueType(*t), ctx);
        if (!v) return v.error();
        g->key_order_.push_back(*key);
        g->kv_.emplace(*key, std::move(*v));
    }

    if (const Value* a = g->find(gguf::key::general_alignment)) {
        if (a->type != ValueType::UINT32)
            return corrupt_error(path + ": general.alignment must be UINT32, found " + value_type_name(a->type));
        if (a->i == 0 || (a->i & (a->i - 1)) != 0)
            return corrupt_error(path + ": general.alignment " + std::to_string(a->i) + " is not a power of two");
        g->alignment_ = uint32_t(a->i);
    }

    g->tensors_.reserve(size_t(*n_tensors));
    for (int64_t k = 0; k < *n_tensors; ++k) {
        TensorInfo ti;
        auto name = c.read_string("tensor name");
        if (!name) return name.error();
        ti.name = std::move(*name);
        const std::string ctx = path + ": tensor '" + ti.name + "'";
        if (ti.name.empty()) return corrupt_error(path + ": tensor #" + std::to_string(k) + " has an empty name");
        if (ti.name.size() >= k_max_name)
            return corrupt_error(ctx + ": name is " + std::to_string(ti.name.size()) + " bytes, the limit is " +
                                 std::to_string(k_max_name - 1));
        if (g->tensor_index_.count(ti.name)) return corrupt_error(path + ": duplicate tensor name '" + ti.name + "'");
        auto nd = c.read<uint32_t>(ctx.c_str());
        if (!nd) return nd.error();
        if (*nd < 1 || *nd > k_max_dims)
            return corrupt_error(ctx + ": n_dims is " + std::to_string(*nd) + ", expected 1..4");
        ti.n_dims = int(*nd);
        for (int d = 0; d < ti.n_dims; ++d) {
            auto ne = c.read<int64_t>(ctx.c_str());
            if (!ne) return ne.error();
            if (*ne < 0)
                return corrupt_error(ctx + ": dimension " + std::to_string(d) + " is negative (" + std::to_string(*ne) +
                                     ")");
            ti.ne[d] = *ne;
        }
        auto type = c.read<uint32_t>(ctx.c_str());
        if (!type) return type.error();
        auto tr = dtype_traits(*type);
        if (!tr || !tr->weight_type)
            return corrupt_error(ctx + ": unsupported tensor type " + dtype_name(*type) + " (id " +
                                 std::to_string(*type) + "); supported: F32, F16, BF16, Q4_0, Q8_0, Q4_K, Q5_K, Q6_K");
        ti.type = DType(*type);
        auto off = c.read<uint64_t>(ctx.c_str());
        if (!off) return off.error();
        ti.offset = *off;
        if (ti.ne[0] % tr->block_elems != 0)
            return corrupt_error(ctx + ": ne[0] = " + std::to_string(ti.ne[0]) + " is not a multiple of the " +
                                 tr->name + " block size " + std::to_string(tr->block_elems));
        uint64_t bytes = uint64_t(ti.ne[0] / tr->block_elems);
        bool overflow = mul_overflows(bytes, tr->block_bytes, &bytes);
        ti.row_bytes = size_t(bytes);
        for (int d = 1; d < k_max_dims && !overflow; ++d) overflow = mul_overflows(bytes, uint64_t(ti.ne[d]), &bytes);
        uint64_t elems = 1;
        for (int d = 0; d < k_max_dims && !overflow; ++d) overflow = mul_overflows(elems, uint64_t(ti.ne[d]), &elems);
        if (overflow || elems > uint64_t(std::numeric_limits<int64_t>::max()))
            return corrupt_error(ctx + ": shape " + ti.shape_str() + " overflows the byte size");
        ti.nbytes = size_t(bytes);
        if (ti.offset % g->alignment_ != 0)
            return corrupt_error(ctx + ": data offset " + std::to_string(ti.offset) +
                                 " is not a multiple of the alignment " + std::to_string(g->alignment_));
        g->tensor_index_.emplace(ti.name, g->tensors_.size());
        g->tensors_.push_back(std::move(ti));
    }

    const uint64_t end_infos = c.pos();
    g->data_offset_ = (end_infos + g->alignment_ - 1) / g->alignment_ * g->alignment_;
    const uint64_t fsize = file->size();
    if (!g->tensors_.empty() && g->data_offset_ > fsize)
        return corrupt_error(path + ": truncated file: data section would start at " + std::to_string(g->data_offset_) +
                             " but the file has " + std::to_string(fsize) + " bytes");
    const uint64_t data_size = fsize >= g->data_offset_ ? fsize - g->data_offset_ : 0;
    for (auto& ti : g->tensors_) {
        if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
            return corrupt_error(path + ": tensor '" + ti.name + "' " + ti.shape_str() + " " + traits(ti.type).name +
                                 ": bytes [" + std::to_string(ti.offset) + ", " +
                                 std::to_string(ti.offset + ti.nbytes) + ") lie outside the data section of " +
                                 std::to_string(data_size) + " bytes (truncated file?)");
        ti.data = file->data() + g->data_offset_ + ti.offset;
    }
    // Overlap check: sort by offset and compare neighbours.
    std::vector<const TensorInfo*> by_off;
    for (auto& ti : g->tensors_)
        if (ti.nbytes > 0) by_off.push_back(&ti);
    std::sort(by_off.begin(), by_off.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
    for (size_t k = 1; k < by_off.size(); ++k)
        if (by_off[k - 1]->offset + by_off[k - 1]->nbytes > by_off[k]->offset)
            return corrupt_error(path + ": tensors '" + by_off[k - 1]->name + "' (bytes " +
                                 std::to_string(by_off[k - 1]->offset) + ".." +
                                 std::to_string(by_off[k - 1]->offset + by_off[k - 1]->nbytes) + ") and '" +
                                 by_off[k]->name + "' (from " + std::to_string(by_off[k]->offset) + ") overlap");
    g->shards_.push_back(std::move(file));
    return g;
}

uint64_t GgufFile::file_size() const {
    uint64_t s = 0;
    for (auto& f : shards_) s += f->size();
    return s;
}

const Value* GgufFile::find(const std::string& key) const {
    auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
}

const TensorInfo* GgufFile::tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

void GgufFile::rebuild_index() {
    tensor_index_.clear();
    for (size_t k = 0; k < tensors_.size(); ++k) tensor_index_.emplace(tensors_[k].name, k);
}

Result<int64_t> GgufFile::get_int(const std::string& key) const {
    const Value* v = find(key);
    if (!v) return corrupt_error(path() + ": missing metadata key '" + key + "'");
    if (!is_integer(v->type))
        return corrupt_error(path() + ": metadata '" + key + "' should be an integer, found " +
                             value_type_name(v->type));
    return v->i;
}

Result<double> GgufFile::get_float(const std::string& key) const {
    const Value* v = find(key);
    if (!v) return corrupt_error(path() + ": missing metadata key '" + key + "'");
    if (v->type == ValueType::FLOAT32 || v->type == ValueType::FLOAT64) return v->f;
    if (is_integer(v->type)) return double(v->i);
    return corrupt_error(path() + ": metadata '" + key + "' should be a float, found " + value_type_name(v->type));
}

Result<std::string> GgufFile::get_string(const std::string& key) const {
    const Value* v = find(key);
    if (!v) return corrupt_error(path() + ": missing metadata key '" + key + "'");
    if (v->type != ValueType::STRING)
        return corrupt_error(path() + ": metadata '" + key + "' should be a STRING, found " + value_type_name(v->type));
    return v->s;
}

Result<bool> GgufFile::get_bool(const std::string& key) const {
    const Value* v = find(key);
    if (!v) return corrupt_error(path() + ": missing metadata key '" + key + "'");
    if (v->type != ValueType::BOOL && !is_integer(v->type))
        return corrupt_error(path() + ": metadata '" + key + "' should be a BOOL, found " + value_type_name(v->type));
    return v->i != 0;
}

int64_t GgufFile::get_int_or(const std::string& key, int64_t def) const {
    auto r = get_int(key);
    return r ? *r : def;
}
double GgufFile::get_float_or(const std::string& key, double def) const {
    auto r = get_float(key);
    return r ? *r : def;
}
std::string GgufFile::get_string_or(const std::string& key, const std::string& def) const {
    auto r = get_string(key);
    return r ? *r : def;
}

Result<void> GgufFile::merge_shard(std::unique_ptr<GgufFile> other) {
    const int shard = int(shards_.size());
    for (auto& ti : other->tensors_) {
        if (tensor_index_.count(ti.name))
            return corrupt_error(other->path() + ": tensor '" + ti.name + "' also appears in an earlier shard");
        ti.shard = shard;
        tensor_index_.emplace(ti.name, tensors_.size());
        tensors_.push_back(ti);
    }
    for (auto& f : other->shards_) shards_.push_back(std::move(f));
    return {};
}

static Result<std::unique_ptr<GgufFile>> parse_path(const std::string& path) {
    auto f = MappedFile::open(path);
    if (!f) return f.error();
    return GgufFile::parse(std::move(*f));
}

Result<std::unique_ptr<GgufFile>> GgufFile::open(const std::string& path) {
    auto first = parse_path(path);
    if (!first) return first.error();
    std::unique_ptr<GgufFile> g = std::move(*first);
    const int64_t count = g->get_int_or("split.count", 0);
    if (count <= 1) return g;
    if (count > 9999) return corrupt_error(path + ": split.count " + std::to_string(count) + " is implausible");
    const int64_t no = g->get_int_or("split.no", 0);
    if (no != 0)
        return corrupt_error(path + ": this is shard " + std::to_string(no + 1) + " of " + std::to_string(count) +
                             "; open the first shard (-00001-of-" + std::to_string(count) + ".gguf)");
    // "<prefix>-00001-of-0000N.gguf"
    const std::string tail = "-00001-of-";
    const size_t p = path.rfind(tail);
    if (p == std::string::npos)
        return corrupt_error(path + ": split.count is " + std::to_string(count) +
                             " but the file name does not follow <prefix>-00001-of-NNNNN.gguf");
    const std::string prefix = path.substr(0, p);
    for (int64_t i = 1; i < count; ++i) {
        char name[64];
        std::snprintf(name, sizeof name, "-%05d-of-%05d.gguf", int(i + 1), int(count));
        auto shard = parse_path(prefix + name);
        if (!shard) return shard.error();
        const int64_t sno = (*shard)->get_int_or("split.no", -1);
        if (sno != i)
            return corrupt_error(prefix + name + ": split.no is " + std::to_string(sno) + ", expected " +
                                 std::to_string(i));
        BM_TRY(g->merge_shard(std::move(*shard)));
    }
    const int64_t total = g->get_int_or("split.tensors.count", int64_t(g->tensors_.size()));
    if (total != int64_t(g->tensors_.size()))
        return corrupt_error(path + ": split.tensors.count is " + std::to_string(total) + " but the shards hold " +
                             std::to_string(g->tensors_.size()) + " tensors");
    return g;
}

}  // namespace bigmoe::gguf
