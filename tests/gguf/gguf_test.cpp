// GGUF reader and writer: the spec's hex example, a writer round trip with every value type,
// split files, and a table of hand-made corrupt files that must each give a clear error.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "gguf/gguf_file.h"
#include "gguf/gguf_writer.h"
#include "testlib.h"

namespace bigmoe::gguf {
namespace {

// Little-endian byte builder for hand-made files.
struct Bytes {
    std::vector<uint8_t> b;
    template <class T>
    Bytes& put(T v) {
        const size_t at = b.size();
        b.resize(at + sizeof(T));
        std::memcpy(b.data() + at, &v, sizeof(T));
        return *this;
    }
    Bytes& str(const std::string& s) {
        put<uint64_t>(s.size());
        b.insert(b.end(), s.begin(), s.end());
        return *this;
    }
    Bytes& header(uint32_t version, int64_t n_tensors, int64_t n_kv) {
        b.insert(b.end(), {'G', 'G', 'U', 'F'});
        return put(version).put(n_tensors).put(n_kv);
    }
    Bytes& kv_u32(const std::string& k, uint32_t v) { return str(k).put<uint32_t>(4).put(v); }
    Bytes& tensor(const std::string& name, std::vector<int64_t> ne, uint32_t type, uint64_t off) {
        str(name).put<uint32_t>(uint32_t(ne.size()));
        for (int64_t x : ne) put(x);
        return put(type).put(off);
    }
    Bytes& pad_to(size_t align) {
        b.resize((b.size() + align - 1) / align * align, 0);
        return *this;
    }
    Bytes& zeros(size_t n) {
        b.resize(b.size() + n, 0);
        return *this;
    }
};

Result<std::unique_ptr<GgufFile>> parse_bytes(const std::vector<uint8_t>& b) {
    return GgufFile::parse(MappedFile::from_memory(b.data(), b.size(), "test.gguf"));
}

TEST(Gguf, spec_hex_example) {
    Bytes x;
    x.header(3, 1, 2);
    x.str("general.architecture").put<uint32_t>(8).str("qwen3moe");
    x.kv_u32("general.alignment", 32);
    x.tensor("w", {4, 2}, 0, 0);
    ASSERT_EQ(x.b.size(), 0x92u);
    x.pad_to(32);
    for (int i = 0; i < 8; ++i) x.put<float>(float(i));
    auto g = parse_bytes(x.b);
    ASSERT_TRUE(g.ok()) << g.error().message;
    EXPECT_EQ((*g)->data_offset(), 0xA0u);
    EXPECT_EQ(*(*g)->get_string("general.architecture"), "qwen3moe");
    const TensorInfo* t = (*g)->tensor("w");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->ne[0], 4);
    EXPECT_EQ(t->ne[1], 2);
    float v;
    std::memcpy(&v, t->data + 1 * 16 + 1 * 4, 4);
    EXPECT_EQ(v, 5.0f);
}

TEST(Gguf, writer_round_trip_all_value_types) {
    GgufWriter w;
    Value u8;
    u8.type = ValueType::UINT8;
    u8.i = 200;
    w.set("a.u8", u8);
    Value i16;
    i16.type = ValueType::INT16;
    i16.i = -1234;
    w.set("a.i16", i16);
    Value u64;
    u64.type = ValueType::UINT64;
    u64.i = int64_t(1) << 40;
    w.set("a.u64", u64);
    Value f64;
    f64.type = ValueType::FLOAT64;
    f64.f = 2.5;
    w.set("a.f64", f64);
    w.set_u32("a.u32", 7);
    w.set_i32("a.i32", -7);
    w.set_f32("a.f32", 0.25f);
    w.set_bool("a.bool", true);
    w.set_str("a.str", "héllo");
    w.set_arr_str("a.arr_s", {"x", "", "yz"});
    w.set_arr_i32("a.arr_i", {1, -2, 3});
    w.set_arr_f32("a.arr_f", {0.5, -1.5});
    w.add_tensor("t0", DType::F32, {3});
    w.add_tensor("t1", DType::Q8_0, {64, 2});
    auto bytes = w.write_bytes([&](size_t i, ByteSink& out) -> Result<void> {
        std::vector<uint8_t> d(w.info(i).nbytes, uint8_t(i + 1));
        return out.write(d.data(), d.size());
    });
    ASSERT_TRUE(bytes.ok());
    auto g = parse_bytes(*bytes);
    ASSERT_TRUE(g.ok()) << g.error().message;
    EXPECT_EQ(*(*g)->get_int("a.u8"), 200);
    EXPECT_EQ(*(*g)->get_int("a.i16"), -1234);
    EXPECT_EQ(*(*g)->get_int("a.u64"), int64_t(1) << 40);
    EXPECT_EQ(*(*g)->get_float("a.f64"), 2.5);
    EXPECT_EQ(*(*g)->get_int("a.u32"), 7);
    EXPECT_EQ(*(*g)->get_int("a.i32"), -7);
    EXPECT_EQ(*(*g)->get_float("a.f32"), 0.25);
    EXPECT_EQ(*(*g)->get_bool("a.bool"), true);
    EXPECT_EQ(*(*g)->get_string("a.str"), "héllo");
    EXPECT_EQ((*g)->find("a.arr_s")->arr_s, (std::vector<std::string>{"x", "", "yz"}));
    EXPECT_EQ((*g)->find("a.arr_i")->arr_i, (std::vector<int64_t>{1, -2, 3}));
    EXPECT_EQ((*g)->find("a.arr_f")->arr_f, (std::vector<double>{0.5, -1.5}));
    EXPECT_FALSE((*g)->get_string("a.u32").ok());
    EXPECT_FALSE((*g)->get_int("missing").ok());
    const TensorInfo* t1 = (*g)->tensor("t1");
    ASSERT_NE(t1, nullptr);
    EXPECT_EQ(t1->type, DType::Q8_0);
    EXPECT_EQ(t1->nbytes, 2u * 34u * 2u);
    EXPECT_EQ(t1->data[0], 2);
    EXPECT_EQ(t1->offset % 32, 0u);
}

TEST(Gguf, split_files_load_as_one) {
    const std::string dir = std::filesystem::temp_directory_path() / ("bigmoe_split_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    for (int shard = 0; shard < 3; ++shard) {
        GgufWriter w;
        if (shard == 0) w.set_str("general.architecture", "qwen3moe");
        Value no;
        no.type = ValueType::UINT16;
        no.i = shard;
        w.set("split.no", no);
        Value count = no;
        count.i = 3;
        w.set("split.count", count);
        w.set_i32("split.tensors.count", 3);
        w.add_tensor("t" + std::to_string(shard), DType::F32, {4});
        char name[64];
        std::snprintf(name, sizeof name, "/m-%05d-of-00003.gguf", shard + 1);
        auto r = w.write_file(dir + name, [&](size_t, ByteSink& out) -> Result<void> {
            float v[4] = {float(shard), 0, 0, 0};
            return out.write(v, sizeof v);
        });
        ASSERT_TRUE(r.ok());
    }
    auto g = GgufFile::open(dir + "/m-00001-of-00003.gguf");
    ASSERT_TRUE(g.ok()) << g.error().message;
    EXPECT_EQ((*g)->n_shards(), 3);
    ASSERT_NE((*g)->tensor("t2"), nullptr);
    float v;
    std::memcpy(&v, (*g)->tensor("t2")->data, 4);
    EXPECT_EQ(v, 2.0f);
    // opening a later shard directly is a clear error
    auto later = GgufFile::open(dir + "/m-00002-of-00003.gguf");
    ASSERT_FALSE(later.ok());
    EXPECT_NE(later.error().message.find("first shard"), std::string::npos);
    std::filesystem::remove(dir + "/m-00003-of-00003.gguf");
    auto missing = GgufFile::open(dir + "/m-00001-of-00003.gguf");
    ASSERT_FALSE(missing.ok());
    EXPECT_NE(missing.error().message.find("m-00003-of-00003.gguf"), std::string::npos);
    std::filesystem::remove_all(dir);
}

TEST(Gguf, missing_file_is_an_error) {
    auto g = GgufFile::open("/nonexistent/model.gguf");
    ASSERT_FALSE(g.ok());
    EXPECT_NE(g.error().message.find("/nonexistent/model.gguf"), std::string::npos);
}

struct Corrupt {
    const char* what;
    std::vector<uint8_t> bytes;
    const char* expect;  // substring of the error
};

std::vector<Corrupt> corrupt_table() {
    std::vector<Corrupt> t;
    auto valid_prefix = [](int64_t n_tensors, int64_t n_kv) {
        Bytes b;
        b.header(3, n_tensors, n_kv);
        return b;
    };
    {
        Bytes b = valid_prefix(0, 0);
        b.b[0] = 'X';
        t.push_back({"bad magic", b.b, "not a GGUF file"});
    }
    t.push_back({"empty file", {}, "truncated"});
    t.push_back({"version 1", valid_prefix(0, 0).put<uint8_t>(0).b, ""});
    t.back().bytes[4] = 1;
    t.back().expect = "unsupported GGUF version 1";
    {
        Bytes b;
        b.b = {'G', 'G', 'U', 'F'};
        b.put<uint32_t>(0x03000000u).put<int64_t>(0).put<int64_t>(0);
        t.push_back({"big-endian", b.b, "big-endian"});
    }
    t.push_back({"truncated header", {'G', 'G', 'U', 'F', 3, 0, 0, 0, 1}, "truncated"});
    t.push_back({"huge kv count", valid_prefix(0, int64_t(1) << 60).b, "metadata count"});
    t.push_back({"negative tensor count", valid_prefix(-1, 0).b, "tensor count"});
    {
        Bytes b = valid_prefix(0, 1);
        b.put<uint64_t>(1000).zeros(20);
        t.push_back({"key length past end", b.b, "runs past the end"});
    }
    {
        Bytes b = valid_prefix(0, 1);
        b.str("k").put<uint32_t>(99).put<uint32_t>(0);
        t.push_back({"invalid value type", b.b, "invalid value type 99"});
    }
    {
        Bytes b = valid_prefix(0, 1);
        b.str("k").put<uint32_t>(9).put<uint32_t>(9).put<uint64_t>(1);
        t.push_back({"array of arrays", b.b, "arrays of arrays"});
    }
    {
        Bytes b = valid_prefix(0, 1);
        b.str("k").put<uint32_t>(9).put<uint32_t>(4).put<uint64_t>(uint64_t(1) << 61);
        t.push_back({"array count past end", b.b, "runs past the end"});
    }
    {
        Bytes b = valid_prefix(0, 2);
        b.kv_u32("k", 1).kv_u32("k", 2);
        t.push_back({"duplicate key", b.b, "duplicate metadata key 'k'"});
    }
    {
        Bytes b = valid_prefix(0, 1);
        b.kv_u32("", 1);
        t.push_back({"empty key", b.b, "is empty"});
    }
    {
        Bytes b = valid_prefix(0, 1);
        b.kv_u32("general.alignment", 48);
        t.push_back({"alignment not a power of two", b.b, "not a power of two"});
    }
    {
        Bytes b = valid_prefix(0, 1);
        b.str("general.alignment").put<uint32_t>(5).put<int32_t>(32);
        t.push_back({"alignment wrong type", b.b, "must be UINT32"});
    }
    {
        Bytes b = valid_prefix(0, 1);
        b.str("k").put<uint32_t>(7).put<uint8_t>(2);
        t.push_back({"bool not 0/1", b.b, "neither 0 nor 1"});
    }
    auto with_tensor = [&](std::vector<int64_t> ne, uint32_t type, uint64_t off, size_t data) {
        Bytes b = valid_prefix(1, 0);
        b.tensor("w", ne, type, off).pad_to(32).zeros(data);
        return b.b;
    };
    t.push_back({"n_dims 0", with_tensor({}, 0, 0, 0), "n_dims is 0"});
    t.push_back({"n_dims 5", with_tensor({1, 1, 1, 1, 1}, 0, 0, 4), "n_dims is 5"});
    t.push_back({"negative dim", with_tensor({4, -2}, 0, 0, 32), "negative"});
    t.push_back({"unsupported type", with_tensor({256}, 10, 0, 256), "unsupported tensor type Q2_K"});
    t.push_back({"unknown type id", with_tensor({256}, 77, 0, 256), "unsupported tensor type"});
    t.push_back({"ne0 not a block multiple", with_tensor({100}, 12, 0, 1024), "not a multiple of the Q4_K block"});
    t.push_back({"misaligned offset", with_tensor({4}, 0, 4, 64), "not a multiple of the alignment"});
    t.push_back({"data past end", with_tensor({64}, 0, 0, 100), "outside the data section"});
    t.push_back({"offset past end", with_tensor({4}, 0, 1 << 20, 64), "outside the data section"});
    t.push_back({"shape overflow", with_tensor({int64_t(1) << 40, int64_t(1) << 40}, 0, 0, 0), "overflows"});
    {
        Bytes b = valid_prefix(1, 0);
        b.tensor(std::string(80, 'n'), {4}, 0, 0).pad_to(32).zeros(16);
        t.push_back({"name too long", b.b, "the limit is 63"});
    }
    {
        Bytes b = valid_prefix(2, 0);
        b.tensor("a", {4}, 0, 0).tensor("a", {4}, 0, 32).pad_to(32).zeros(64);
        t.push_back({"duplicate tensor", b.b, "duplicate tensor name 'a'"});
    }
    {
        Bytes b = valid_prefix(2, 0);
        b.tensor("a", {16}, 0, 0).tensor("b", {16}, 0, 32).pad_to(32).zeros(128);
        t.push_back({"overlapping tensors", b.b, "overlap"});
    }
    {
        Bytes b = valid_prefix(1, 0);
        b.tensor("a", {16}, 0, 0);
        t.push_back({"no data section", b.b, "truncated"});
    }
    return t;
}

TEST(Gguf, corrupt_files_give_clear_errors) {
    for (const auto& c : corrupt_table()) {
        auto g = parse_bytes(c.bytes);
        ASSERT_FALSE(g.ok()) << c.what << ": accepted";
        EXPECT_NE(g.error().message.find(c.expect), std::string::npos)
            << c.what << ": message was: " << g.error().message;
        EXPECT_NE(g.error().message.find("test.gguf"), std::string::npos) << c.what << ": file not named";
    }
}

}  // namespace
}  // namespace bigmoe::gguf
