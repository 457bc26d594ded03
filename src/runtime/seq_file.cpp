#include "runtime/seq_file.h"

#include <cstdio>
#include <cstring>
#include <memory>

#include "core/hash.h"

namespace bigmoe {

namespace {

constexpr char k_magic[8] = {'B', 'M', 'S', 'E', 'Q', 'S', 'T', '1'};

// What a file must agree with to be loaded into ctx.
struct Header {
    char magic[8];
    uint64_t n_vocab, n_layer, n_embd, row_bytes, state_bytes, type_k, type_v, n_tokens;
};

Header header_for(const Context& ctx, uint64_t n_tokens) {
    Header h{};
    std::memcpy(h.magic, k_magic, sizeof k_magic);
    const HParams& hp = ctx.model().hparams();
    h.n_vocab = uint64_t(hp.n_vocab);
    h.n_layer = uint64_t(hp.n_layer);
    h.n_embd = uint64_t(hp.n_embd);
    h.row_bytes = ctx.prefix_row_bytes();
    h.state_bytes = ctx.prefix_state_bytes();
    h.type_k = uint64_t(ctx.params().type_k);
    h.type_v = uint64_t(ctx.params().type_v);
    h.n_tokens = n_tokens;
    return h;
}

struct FileCloser {
    void operator()(std::FILE* f) const { std::fclose(f); }
};

}  // namespace

Result<SeqState> read_seq_state(const Context& ctx, int seq, std::vector<int32_t> tokens) {
    if (int64_t(tokens.size()) != ctx.n_past(seq))
        return make_error("sequence " + std::to_string(seq) + " holds " + std::to_string(ctx.n_past(seq)) +
                          " positions, not " + std::to_string(tokens.size()));
    SeqState s;
    s.tokens = std::move(tokens);
    s.rows.resize(ctx.prefix_row_bytes() * s.tokens.size());
    s.state.resize(ctx.prefix_state_bytes());
    BM_TRY(ctx.read_rows(seq, 0, int64_t(s.tokens.size()), s.rows.data()));
    BM_TRY(ctx.read_state(seq, s.state.data()));
    return s;
}

Result<void> write_seq_file(const std::string& path, const Context& ctx, const SeqState& s) {
    const Header h = header_for(ctx, s.tokens.size());
    const std::string tmp = path + ".part";
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(tmp.c_str(), "wb"));
    if (!f) return make_error("cannot write " + tmp + ": " + std::strerror(errno), ErrorKind::internal);
    uint64_t sum = k_fnv_offset;
    auto put = [&](const void* p, size_t n) {
        if (n == 0) return true;  // a model without recurrent layers has no state bytes
        sum = fnv1a(p, n, sum);
        return std::fwrite(p, 1, n, f.get()) == n;
    };
    bool ok = put(&h, sizeof h) && put(s.tokens.data(), s.tokens.size() * sizeof(int32_t)) &&
              put(s.rows.data(), s.rows.size()) && put(s.state.data(), s.state.size());
    ok = ok && std::fwrite(&sum, sizeof sum, 1, f.get()) == 1;
    ok = std::fclose(f.release()) == 0 && ok;
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        return make_error("cannot write " + path + ": " + std::strerror(errno), ErrorKind::internal);
    }
    return {};
}

Result<SeqState> read_seq_file(const std::string& path, const Context& ctx) {
    std::unique_ptr<std::FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
    if (!f) return make_error("cannot open " + path + ": " + std::strerror(errno), ErrorKind::not_found);
    Header h{};
    if (std::fread(&h, sizeof h, 1, f.get()) != 1 || std::memcmp(h.magic, k_magic, sizeof k_magic) != 0)
        return make_error(path + " is not a bigmoe sequence-state file", ErrorKind::corrupt_file);
    const Header want = header_for(ctx, h.n_tokens);
    if (std::memcmp(&h, &want, sizeof h) != 0)
        return make_error(path + " was saved for another model or other cache types (" + std::to_string(h.n_layer) +
                              " layers, " + std::to_string(h.n_vocab) + " tokens, " + std::to_string(h.row_bytes) +
                              " KV bytes a position; this one: " + std::to_string(want.n_layer) + ", " +
                              std::to_string(want.n_vocab) + ", " + std::to_string(want.row_bytes) + ")",
                          ErrorKind::bad_input);
    if (h.n_tokens == 0 || h.n_tokens > uint64_t(ctx.params().n_ctx))
        return make_error(path + " holds " + std::to_string(h.n_tokens) + " positions; a sequence holds 1 to " +
                              std::to_string(ctx.params().n_ctx),
                          ErrorKind::bad_input);
    SeqState s;
    s.tokens.resize(size_t(h.n_tokens));
    s.rows.resize(size_t(h.row_bytes * h.n_tokens));
    s.state.resize(size_t(h.state_bytes));
    uint64_t sum = fnv1a(&h, sizeof h), stored = 0;
    auto get = [&](void* p, size_t n) {
        if (n == 0) return true;
        if (std::fread(p, 1, n, f.get()) != n) return false;
        sum = fnv1a(p, n, sum);
        return true;
    };
    const bool ok = get(s.tokens.data(), s.tokens.size() * sizeof(int32_t)) && get(s.rows.data(), s.rows.size()) &&
                    get(s.state.data(), s.state.size()) && std::fread(&stored, sizeof stored, 1, f.get()) == 1;
    char extra;
    if (!ok || std::fread(&extra, 1, 1, f.get()) != 0 || stored != sum)
        return make_error(path + " is damaged (cut short, too long, or its checksum does not match)",
                          ErrorKind::corrupt_file);
    for (int32_t t : s.tokens)
        if (t < 0 || t >= ctx.n_vocab())
            return make_error(path + " holds a token id out of range", ErrorKind::bad_input);
    return s;
}

}  // namespace bigmoe
