// Seeded random-mutation fuzzing of the GGUF reader and the model loader. Seeds are valid model
// files (synthesized here); mutants must either load or be refused with an error — never crash
// or read out of bounds (this test also runs under AddressSanitizer + UBSan).
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include "bigmoe/bigmoe.h"
#include "synth/synth.h"
#include "testlib.h"

namespace bigmoe {
namespace {

std::vector<uint8_t> seed_model(const std::string& arch, const std::string& quant) {
    synth::Spec s;
    s.arch = arch;
    s.quant = quant;
    s.n_embd = 64;
    s.n_layer = 2;
    s.full_attention_interval = 2;
    s.n_head = 2;
    s.n_head_kv = 1;
    s.head_dim = 32;
    s.n_rot = 8;
    s.n_ff = 64;
    s.n_expert = 4;
    s.n_ff_exp = 32;
    s.n_ff_shexp = 32;
    s.ssm_d_state = 16;
    s.ssm_n_k_heads = 1;
    s.ssm_n_v_heads = 2;
    s.vocab = synth::byte_vocab();
    auto b = synth::write_bytes(s);
    EXPECT_TRUE(b.ok()) << (b.ok() ? "" : b.error().message);
    return b.ok() ? *b : std::vector<uint8_t>{};
}

void mutate(std::mt19937_64& rng, std::vector<uint8_t>& b, size_t header_end) {
    const size_t region = std::max<size_t>(1, std::min(b.size(), header_end + 64));
    std::uniform_int_distribution<int> kind(0, 9);
    const int n_mut = 1 + int(rng() % 4);
    for (int m = 0; m < n_mut && !b.empty(); ++m) {
        const size_t at = size_t(rng() % region) % b.size();
        switch (kind(rng)) {
            case 0:
            case 1:
            case 2:
                b[at] ^= uint8_t(1u << (rng() % 8));
                break;
            case 3:
                b[at] = uint8_t(rng());
                break;
            case 4: {  // an interesting 32-bit value
                static const uint32_t vals[] = {0,  1,  2,  3,  7,   8,   9,          12,          13,         30,
                                                31, 32, 63, 64, 255, 256, 0x7fffffff, 0x80000000u, 0xffffffffu};
                const uint32_t v = vals[rng() % (sizeof vals / sizeof vals[0])];
                if (at + 4 <= b.size()) std::memcpy(&b[at], &v, 4);
                break;
            }
            case 5: {  // an interesting 64-bit value
                static const uint64_t vals[] = {0, 1, 63, 64, 1ull << 32, 1ull << 62, ~0ull, 0x8000000000000000ull};
                const uint64_t v = vals[rng() % (sizeof vals / sizeof vals[0])];
                if (at + 8 <= b.size()) std::memcpy(&b[at], &v, 8);
                break;
            }
            case 6:
                b.resize(at);
                break;  // truncate
            case 7:
                b.erase(b.begin() + long(at), b.begin() + long(std::min(b.size(), at + 1 + rng() % 16)));
                break;
            case 8:
                b.insert(b.begin() + long(at), size_t(1 + rng() % 16), uint8_t(rng()));
                break;
            case 9:
                b[at] = uint8_t(b[at] + 1);
                break;
        }
    }
}

TEST(Fuzz, gguf_reader_and_model_loader) {
    const uint32_t seed = testing::fresh_seed();
    int64_t iters = 100000;
    if (const char* e = std::getenv("BIGMOE_FUZZ_ITERS")) iters = std::atoll(e);
    std::vector<std::vector<uint8_t>> seeds = {seed_model("qwen35moe", "F32"), seed_model("qwen3moe", "Q8_0"),
                                               seed_model("qwen35", "F16")};
    std::vector<size_t> header_end;
    for (auto& s : seeds) {
        ASSERT_FALSE(s.empty());
        auto g = gguf::GgufFile::parse(MappedFile::from_memory(s.data(), s.size(), "seed"));
        ASSERT_TRUE(g.ok()) << g.error().message;
        header_end.push_back(size_t((*g)->data_offset()));
    }
    std::mt19937_64 rng(seed);
    std::printf("fuzz seed %u (rerun with BIGMOE_SEED=%u)\n", seed, seed);
    std::fflush(stdout);
    auto backend = make_cpu_backend(1);
    int64_t parsed = 0, loaded = 0, refused = 0, refused_after_magic = 0, ran = 0;
    std::vector<uint8_t> m;
    for (int64_t it = 0; it < iters; ++it) {
        const size_t k = size_t(rng() % seeds.size());
        m = seeds[k];
        mutate(rng, m, header_end[k]);
        if (std::getenv("BIGMOE_FUZZ_DUMP")) {
            FILE* f = std::fopen(std::getenv("BIGMOE_FUZZ_DUMP"), "wb");
            std::fwrite(m.data(), 1, m.size(), f);
            std::fclose(f);
        }
        auto g = gguf::GgufFile::parse(MappedFile::from_memory(m.data(), m.size(), "mutant"));
        if (!g.ok()) {
            ++refused;
            if (g.error().message.find("not a GGUF file") == std::string::npos) ++refused_after_magic;
            ASSERT_FALSE(g.error().message.empty());
            continue;
        }
        ++parsed;
        auto model = load_model(**g, *backend);
        if (!model.ok()) {
            ASSERT_FALSE(model.error().message.empty());
            continue;
        }
        ++loaded;
        if (loaded % 64 == 1) {  // run a short forward pass on some loadable mutants
            ContextParams cp;
            cp.n_ctx = 4;
            auto ctx = Context::create(**model, cp);
            if (!ctx.ok()) continue;
            std::vector<float> logits;
            const int32_t n_vocab = int32_t((*model)->hparams().n_vocab);
            auto r = (*ctx)->decode_seq(0, {0, n_vocab - 1, 5 % n_vocab}, true, &logits);
            if (r.ok()) ++ran;
        }
    }
    std::printf(
        "seed %u: %lld mutants, %lld parsed, %lld models loaded, %lld forward passes, %lld refused (%lld past the "
        "magic)\n",
        seed, (long long)iters, (long long)parsed, (long long)loaded, (long long)ran, (long long)refused,
        (long long)refused_after_magic);
    EXPECT_GT(loaded, iters / 100) << "too few mutants load: the fuzzer explores nothing past validation";
    EXPECT_GT(refused_after_magic, iters / 10) << "too few mutants are refused past the magic number";
    EXPECT_GT(ran, 0);
}

}  // namespace
}  // namespace bigmoe
