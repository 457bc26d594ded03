#include "runtime/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "core/hash.h"
#include "core/stats.h"

namespace bigmoe {

namespace {

constexpr char k_magic[8] = {'B', 'M', 'K', 'L', 'B', 'A', 'S', '2'};
constexpr uint64_t k_row_extra = 12;  // per row: the levels' lowest and highest value, the scored token's
// A base row keeps log-probabilities down to this far below its largest; what lies below has a
// probability under e^-40 per token, nothing next to the divergences measured.
constexpr double k_range = 40;

struct Header {
    char magic[8];
    uint64_t n_vocab, n_ctx, n_tokens, tokens_hash, n_positions;
};

uint64_t hash_tokens(const std::vector<int32_t>& t) {
    return fnv1a(t.data(), t.size() * sizeof(int32_t));
}

// logp[i] = logits[i] - logsumexp(logits), in double.
void log_softmax(const float* logits, int64_t n, std::vector<double>& logp) {
    logp.resize(size_t(n));
    const double mx = *std::max_element(logits, logits + n);
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += std::exp(double(logits[i]) - mx);
    const double lse = mx + std::log(sum);
    for (int64_t i = 0; i < n; ++i) logp[size_t(i)] = double(logits[i]) - lse;
}

}  // namespace

Result<std::unique_ptr<KlBaseWriter>> KlBaseWriter::create(const std::string& path, int64_t n_vocab, int64_t n_ctx,
                                                           const std::vector<int32_t>& tokens) {
    std::unique_ptr<KlBaseWriter> w(new KlBaseWriter());
    w->f_ = std::fopen(path.c_str(), "wb");
    if (!w->f_) return make_error("cannot write " + path + ": " + std::strerror(errno), ErrorKind::bad_input);
    w->path_ = path;
    w->n_vocab_ = n_vocab;
    w->row_.resize(size_t(n_vocab));
    Header h{};
    std::memcpy(h.magic, k_magic, 8);
    h.n_vocab = uint64_t(n_vocab);
    h.n_ctx = uint64_t(n_ctx);
    h.n_tokens = tokens.size();
    h.tokens_hash = hash_tokens(tokens);
    if (std::fwrite(&h, sizeof h, 1, w->f_) != 1)
        return make_error("cannot write " + path, ErrorKind::resource_exhausted);
    return w;
}

KlBaseWriter::~KlBaseWriter() {
    if (f_) std::fclose(f_);
}

Result<void> KlBaseWriter::add(const std::vector<double>& logp, int32_t next) {
    const auto top_at = std::max_element(logp.begin(), logp.end());
    const double top = *top_at;
    const float lo = float(std::max(*std::min_element(logp.begin(), logp.end()), top - k_range));
    const double step = (top - double(lo)) / 65535.0;
    // The top token alone takes the highest level, so the base's first token is the run's own even
    // where a runner-up lies within a level of it (40 nats / 65535: 6e-4); otherwise both would
    // read as tied and the top-1 agreement with the base itself could fall below 1.
    const size_t top_i = size_t(top_at - logp.begin());
    for (size_t i = 0; i < logp.size(); ++i) {
        const double level = step > 0 ? std::round((std::max(logp[i], double(lo)) - double(lo)) / step) : 0;
        row_[i] = uint16_t(std::clamp(level, 0.0, i == top_i ? 65535.0 : 65534.0));
    }
    const float hi = float(top), scored = float(logp[size_t(next)]);
    if (std::fwrite(&lo, 4, 1, f_) != 1 || std::fwrite(&hi, 4, 1, f_) != 1 || std::fwrite(&scored, 4, 1, f_) != 1 ||
        std::fwrite(row_.data(), 2, row_.size(), f_) != row_.size())
        return make_error("cannot write " + path_ + " (disk full?)", ErrorKind::resource_exhausted);
    return {};
}

Result<void> KlBaseWriter::finish() {
    // the position count goes into the header last, so a run cut short leaves a file that says so
    const long end = std::ftell(f_);
    const uint64_t n = uint64_t(end - long(sizeof(Header))) / (k_row_extra + 2 * uint64_t(n_vocab_));
    if (std::fseek(f_, offsetof(Header, n_positions), SEEK_SET) != 0 || std::fwrite(&n, 8, 1, f_) != 1 ||
        std::fclose(f_) != 0) {
        f_ = nullptr;
        return make_error("cannot write " + path_, ErrorKind::resource_exhausted);
    }
    f_ = nullptr;
    return {};
}

Result<std::unique_ptr<KlBaseReader>> KlBaseReader::open(const std::string& path, int64_t n_vocab, int64_t n_ctx,
                                                         const std::vector<int32_t>& tokens) {
    std::unique_ptr<KlBaseReader> r(new KlBaseReader());
    r->f_ = std::fopen(path.c_str(), "rb");
    if (!r->f_) return make_error("cannot read " + path + ": " + std::strerror(errno), ErrorKind::not_found);
    r->path_ = path;
    Header h{};
    if (std::fread(&h, sizeof h, 1, r->f_) != 1 || std::memcmp(h.magic, k_magic, 8) != 0)
        return make_error(path + " is not a KL-divergence base (made with --kl-divergence-base)",
                          ErrorKind::corrupt_file);
    if (h.n_positions == 0)
        return make_error(path + " holds no positions (its run did not finish)", ErrorKind::corrupt_file);
    if (h.n_vocab != uint64_t(n_vocab))
        return make_error(path + " was made with a vocabulary of " + std::to_string(h.n_vocab) +
                              " tokens, this model has " + std::to_string(n_vocab),
                          ErrorKind::bad_input);
    if (h.n_ctx != uint64_t(n_ctx))
        return make_error(
            path + " was made with chunks of " + std::to_string(h.n_ctx) + " tokens (-c), not " + std::to_string(n_ctx),
            ErrorKind::bad_input);
    if (h.n_tokens != tokens.size() || h.tokens_hash != hash_tokens(tokens))
        return make_error(path + " was made from another text (" + std::to_string(h.n_tokens) + " tokens)",
                          ErrorKind::bad_input);
    std::fseek(r->f_, 0, SEEK_END);
    const uint64_t size = uint64_t(std::ftell(r->f_));
    if (size != sizeof(Header) + h.n_positions * (k_row_extra + 2 * uint64_t(n_vocab)))
        return make_error(path + " is truncated or damaged (" + std::to_string(size) + " bytes)",
                          ErrorKind::corrupt_file);
    std::fseek(r->f_, long(sizeof(Header)), SEEK_SET);
    r->n_vocab_ = n_vocab;
    r->n_positions_ = int64_t(h.n_positions);
    r->row_.resize(size_t(n_vocab));
    return r;
}

KlBaseReader::~KlBaseReader() {
    if (f_) std::fclose(f_);
}

Result<void> KlBaseReader::next(std::vector<double>& logp, std::vector<double>& prob, double& next_logp) {
    if (read_ >= n_positions_)
        return make_error(path_ + " holds " + std::to_string(n_positions_) + " positions, fewer than this run scores",
                          ErrorKind::bad_input);
    float lo = 0, hi = 0, scored = 0;
    if (std::fread(&lo, 4, 1, f_) != 1 || std::fread(&hi, 4, 1, f_) != 1 || std::fread(&scored, 4, 1, f_) != 1 ||
        std::fread(row_.data(), 2, row_.size(), f_) != row_.size())
        return make_error("cannot read " + path_, ErrorKind::resource_exhausted);
    ++read_;
    next_logp = scored;
    const double step = (double(hi) - double(lo)) / 65535.0;
    logp.resize(row_.size());
    prob.resize(row_.size());
    double mx = -INFINITY;
    for (size_t i = 0; i < row_.size(); ++i) mx = std::max(mx, logp[i] = double(lo) + step * row_[i]);
    double sum = 0;
    for (size_t i = 0; i < row_.size(); ++i) sum += prob[i] = std::exp(logp[i] - mx);
    const double lse = mx + std::log(sum);
    for (size_t i = 0; i < row_.size(); ++i) {
        logp[i] -= lse;
        prob[i] /= sum;
    }
    return {};
}

Result<PerplexityResult> perplexity(Context& ctx, const std::vector<int32_t>& tokens, const PerplexityParams& p,
                                    KlBaseWriter* save, KlBaseReader* base,
                                    const std::function<void(const PerplexityChunk&)>& on_chunk) {
    if (p.n_ctx < 4) return make_error("perplexity: chunks of at least 4 tokens are needed (-c)");
    if (ctx.params().n_ctx < p.n_ctx)
        return make_error("perplexity: the context holds " + std::to_string(ctx.params().n_ctx) +
                          " positions, fewer than a chunk's " + std::to_string(p.n_ctx));
    int64_t n_chunks = int64_t(tokens.size()) / p.n_ctx;
    if (p.n_chunks >= 0) n_chunks = std::min(n_chunks, p.n_chunks);
    if (n_chunks == 0)
        return make_error("perplexity: the text has " + std::to_string(tokens.size()) +
                              " tokens, fewer than one chunk of " + std::to_string(p.n_ctx) +
                              " (a longer text or a smaller -c)",
                          ErrorKind::bad_input);
    const int64_t first = p.n_ctx / 2;  // the first scored position of a chunk
    if (base && base->positions() != n_chunks * (p.n_ctx - 1 - first))
        return make_error("perplexity: the base holds " + std::to_string(base->positions()) +
                              " positions, this run scores " + std::to_string(n_chunks * (p.n_ctx - 1 - first)) +
                              " (the same --chunks?)",
                          ErrorKind::bad_input);
    const int64_t V = ctx.model().hparams().n_vocab;
    PerplexityResult r;
    std::vector<double> nll, base_nll, kl;
    double nll_sum = 0, kl_sum = 0;  // for the running estimates
    int64_t agree = 0;
    std::vector<float> logits;
    std::vector<double> logp, blogp, bprob;
    const auto top = [](const std::vector<double>& v) { return std::max_element(v.begin(), v.end()) - v.begin(); };
    for (int64_t c = 0; c < n_chunks; ++c) {
        const auto t0 = std::chrono::steady_clock::now();
        const std::vector<int32_t> chunk(tokens.begin() + c * p.n_ctx, tokens.begin() + (c + 1) * p.n_ctx);
        ctx.clear(0);
        BM_TRY(ctx.decode_seq(0, chunk, true, &logits));
        for (int64_t j = first; j < p.n_ctx - 1; ++j) {
            const float* row = logits.data() + j * V;
            const int32_t next = chunk[size_t(j + 1)];
            log_softmax(row, V, logp);
            nll.push_back(-logp[size_t(next)]);
            nll_sum += nll.back();
            if (save) BM_TRY(save->add(logp, next));
            if (base) {
                double base_next = 0;
                BM_TRY(base->next(blogp, bprob, base_next));
                double d = 0;
                for (int64_t i = 0; i < V; ++i) d += bprob[size_t(i)] * (blogp[size_t(i)] - logp[size_t(i)]);
                kl.push_back(std::max(0.0, d));
                kl_sum += kl.back();
                base_nll.push_back(-base_next);
                agree += top(logp) == top(blogp);
            }
        }
        if (on_chunk) {
            PerplexityChunk ch;
            ch.index = c;
            ch.n_chunks = n_chunks;
            ch.ppl = std::exp(nll_sum / double(nll.size()));
            ch.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (base) ch.kl_mean = kl_sum / double(kl.size());
            on_chunk(ch);
        }
    }
    // standard errors of the means
    const auto sem = [](const std::vector<double>& v) { return stddev(v) / std::sqrt(double(v.size())); };
    r.n_chunks = n_chunks;
    r.n_scored = int64_t(nll.size());
    r.nll = mean(nll);
    r.ppl = std::exp(r.nll);
    r.ppl_error = r.ppl * sem(nll);
    if (base) {
        r.compared = true;
        r.base_ppl = std::exp(mean(base_nll));
        r.kl_mean = mean(kl);
        r.kl_mean_error = sem(kl);
        std::sort(kl.begin(), kl.end());
        r.kl_median = quantile_sorted(kl, 0.5);
        r.kl_p99 = quantile_sorted(kl, 0.99);
        r.kl_max = kl.back();
        r.top1_agreement = double(agree) / double(kl.size());
    }
    return r;
}

}  // namespace bigmoe
