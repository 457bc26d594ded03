#include "runtime/generator.h"

#include <algorithm>
#include <chrono>
#include <utility>

namespace bigmoe {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
}
}  // namespace

const char* stop_reason_name(StopReason r) {
    switch (r) {
        case StopReason::eog:
        case StopReason::stop_string:
            return "stop";
        case StopReason::length:
        case StopReason::context_full:
            return "length";
        case StopReason::cancelled:
            return "cancelled";
        case StopReason::none:
            break;
    }
    return "none";
}

std::string StopMatcher::push(const std::string& text, bool* matched) {
    *matched = false;
    held_ += text;
    if (stops_.empty()) return std::exchange(held_, {});
    size_t first = std::string::npos;
    for (const std::string& s : stops_)
        if (!s.empty()) first = std::min(first, held_.find(s));
    if (first != std::string::npos) {
        *matched = true;
        std::string out = held_.substr(0, first);
        held_.clear();
        return out;
    }
    // Keep the longest tail that is a proper prefix of a stop string.
    size_t keep = 0;
    for (const std::string& s : stops_)
        for (size_t n = std::min(s.size() - 1, held_.size()); n > keep; --n)
            if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
                keep = n;
                break;
            }
    std::string out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return out;
}

std::string StopMatcher::flush() {
    return std::exchange(held_, {});
}

TokenSink::TokenSink(const Tokenizer& tok, const GenerateParams& p, const PieceFn& fn, GenerateResult& res)
    : tok_(tok),
      ts_(tok, p.special),
      stop_(p.stop),
      fn_(fn),
      res_(res),
      in_think_(p.in_reasoning),
      n_logprobs_(p.logprobs) {
    think_open_ = tok.find("<think>");
    think_close_ = tok.find("</think>");
}

bool TokenSink::push(int32_t id, bool ignore_eos, const float* logits, int32_t n_vocab) {
    res_.tokens.push_back(id);
    if (id == think_open_) in_think_ = true;
    Piece pc{id, ts_.push(id), in_think_, std::nullopt};
    if (logits && n_logprobs_ >= 0) {
        pc.logprob = token_logprob(logits, n_vocab, id, n_logprobs_);
        res_.logprobs.push_back(*pc.logprob);
    }
    const bool tag = id == think_open_ || id == think_close_;
    if (id == think_close_) in_think_ = false;
    bool matched = false;
    if (pc.reasoning) {
        if (!tag) res_.reasoning += pc.text;
    } else if (!stopped_) {
        pc.text = stop_.push(pc.text, &matched);
        res_.content += pc.text;
    } else {
        pc.text.clear();  // after a stop string: tokens still reported, text not
    }
    if (!fn_(pc)) return end(StopReason::cancelled);
    if (matched) {
        stopped_ = true;
        return end(StopReason::stop_string);
    }
    if (tok_.is_eog(id) && !ignore_eos) return end(StopReason::eog);
    return true;
}

bool TokenSink::end(StopReason r) {
    if (res_.stop == StopReason::none) res_.stop = r;
    return false;
}

void TokenSink::finish() {
    std::string rest = ts_.flush();
    Piece pc{-1, {}, in_think_, std::nullopt};
    if (in_think_) {
        res_.reasoning += rest;
        pc.text = rest;
    } else if (!stopped_) {
        bool matched = false;
        pc.text = stop_.push(rest, &matched);
        if (!matched) pc.text += stop_.flush();
        if (matched) res_.stop = StopReason::stop_string;
        res_.content += pc.text;
    }
    if (!pc.text.empty() && res_.stop != StopReason::cancelled) fn_(pc);  // nobody listens after a cancel
}

Generator::Generator(Context& ctx, const Tokenizer& tok, const SamplerParams& sampler, int seq)
    : ctx_(ctx), tok_(tok), sampler_(sampler), seq_(seq) {}

void Generator::set_draft(Context* draft, const SpecParams& p) {
    draft_ = draft;
    spec_ = p;
}

void Generator::set_prompt_lookup(const SpecParams& p) {
    ngram_ = true;
    spec_ = p;
}

void Generator::reset() {
    ctx_.clear(seq_);
    if (draft_) draft_->clear(seq_);
    logits_.clear();
    history_.clear();
    sampler_.reset();
}

Result<void> Generator::feed(const std::vector<int32_t>& tokens) {
    if (tokens.empty()) return {};
    if (prof_) prof_->set_phase("prefill");
    const auto t0 = Clock::now();
    BM_TRY(ctx_.decode_seq(seq_, tokens, false, &logits_));
    history_.insert(history_.end(), tokens.begin(), tokens.end());
    if (draft_) {
        std::vector<float> dl;
        BM_TRY(draft_->decode_seq(seq_, tokens, false, &dl));
    }
    stats_.prompt_tokens += int64_t(tokens.size());
    stats_.prompt_s += since(t0);
    for (int32_t t : tokens) sampler_.accept(t);
    return {};
}

Result<GenerateResult> Generator::generate(const GenerateParams& p, const PieceFn& on_piece) {
    if (logits_.empty()) return make_error("generate: feed a prompt first");
    GenerateResult res;
    TokenSink out(tok_, p, on_piece, res);
    if (prof_) prof_->set_phase("decode");
    const auto t0 = Clock::now();
    // Prompt lookup drafts greedily only, and so do constrained requests
    if ((draft_ || ngram_) && (plain_greedy(sampler_.params()) || (draft_ && !p.constraint)))
        BM_TRY(generate_speculative(p, out));
    else
        BM_TRY(generate_plain(p, out));
    out.finish();
    if (res.stop == StopReason::none) res.stop = StopReason::length;
    history_.insert(history_.end(), res.tokens.begin(), res.tokens.end());
    stats_.gen_tokens += int64_t(res.tokens.size());
    stats_.gen_s += since(t0);
    return res;
}

int32_t sample_next(Sampler& sampler, const GenerateParams& p, const std::vector<float>& logits,
                    std::vector<float>& scratch) {
    if (!p.constraint) return sampler.sample(logits.data(), int32_t(logits.size()));
    if (sampler.params().temp <= 0.0f) {
        // greedy: the best token overall, when allowed, is the best allowed one (ties go to the
        // lower id either way), so the mask's walk over the vocabulary is needed only when not
        const int32_t best = sampler.distribution(logits.data(), int32_t(logits.size())).front().first;
        if (p.constraint->allows(best)) {
            sampler.accept(best);
            p.constraint->accept(best);
            return best;
        }
    }
    scratch.assign(logits.begin(), logits.end());  // log-probabilities stay the model's
    p.constraint->mask(scratch.data(), int32_t(scratch.size()));
    const int32_t id = sampler.sample(scratch.data(), int32_t(scratch.size()));
    p.constraint->accept(id);
    return id;
}

bool greedy_on_backend(const GenerateParams& p, const SamplerParams& s) {
    return !p.constraint && p.logprobs < 0 && plain_greedy(s);
}

bool past_eog(const GenerateParams& p) {
    return p.ignore_eos && !(p.constraint && p.constraint->active() && p.constraint->complete());
}

// Every sampled token is processed (so the context holds it) unless it ends generation as
// end-of-generation: a chat turn is then closed by the template's own text. Plain greedy decoding
// (no constraint, no log-probabilities) takes each token after the first from the backend's
// argmax of the logits where they are, as a greedy chain (a GPU reads back an index, not a row of
// logits, and runs each step while the host reads the token before it); when generation ends,
// the last processed token's row is read back (the next call samples from it).
Result<void> Generator::generate_plain(const GenerateParams& p, TokenSink& out) {
    const bool on_backend = greedy_on_backend(p, sampler_.params());
    const int64_t n_ctx = ctx_.params().n_ctx;
    for (;;) {
        if (p.n_predict >= 0 && int64_t(out.n()) >= p.n_predict) return {};
        if (ctx_.n_past(seq_) >= n_ctx) {
            out.end(StopReason::context_full);
            return {};
        }
        const auto ts0 = Clock::now();
        const int32_t id = sample_next(sampler_, p, logits_, masked_);
        if (prof_) prof_->record(OpClass::sampling, since(ts0));
        const bool ignore_eos = past_eog(p);
        const bool go_on = out.push(id, ignore_eos, logits_.data(), int32_t(logits_.size()));
        if (!go_on && tok_.is_eog(id) && !ignore_eos) return {};
        if (on_backend && go_on) {
            // the same rules as this loop's, token by token
            BM_TRY(ctx_.decode_greedy_chain(seq_, id, {}, [&](int32_t t, int64_t n_past) {
                if (p.n_predict >= 0 && int64_t(out.n()) >= p.n_predict) return ChainNext::stop_dropped;
                if (n_past >= n_ctx) {
                    out.end(StopReason::context_full);
                    return ChainNext::stop_dropped;
                }
                sampler_.accept(t);  // as the sampler's greedy draw does
                if (out.push(t, ignore_eos)) return ChainNext::more;
                return tok_.is_eog(t) && !ignore_eos ? ChainNext::stop_dropped : ChainNext::stop_kept;
            }));
            return ctx_.read_logits(0, &logits_);
        }
        BM_TRY(ctx_.decode_seq(seq_, {id}, false, &logits_));
        if (!go_on) return {};
    }
}

// Greedy: token-identical to plain greedy decoding. Sampling: speculative sampling, distributed
// exactly as the target's sampler chain.
Result<void> Generator::generate_speculative(const GenerateParams& p, TokenSink& out) {
    SpeculativeDecoder sd =
        draft_ ? SpeculativeDecoder(ctx_, *draft_, spec_, seq_) : SpeculativeDecoder(ctx_, history_, spec_, seq_);
    sd.constrain(p.constraint.get());
    Sampler draft_sampler(sampler_.params());
    bool go_on = true;
    while (go_on && (p.n_predict < 0 || int64_t(out.n()) < p.n_predict)) {
        if (ctx_.n_past(seq_) + 1 >= ctx_.params().n_ctx) {
            out.end(StopReason::context_full);
            break;
        }
        std::vector<int32_t> step;
        // A greedy chain with penalties or a bias is verified as a sampled one whose every
        // distribution is a single token: the same tokens, exactly.
        if (plain_greedy(sampler_.params()))
            BM_TRY(sd.step_greedy(logits_, step));
        else
            BM_TRY(sd.step_sampled(sampler_, draft_sampler, logits_, step));
        for (int32_t id : step) {
            if (p.n_predict >= 0 && int64_t(out.n()) >= p.n_predict) break;
            if (!(go_on = out.push(id, past_eog(p)))) break;
        }
    }
    spec_stats_ = sd.stats();
    return {};
}

}  // namespace bigmoe
