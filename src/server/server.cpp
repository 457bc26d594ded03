#include "server/server.h"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <future>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "backend/profiler.h"
#include "bigmoe/bigmoe.h"
#include "runtime/scheduler.h"
#include "server/api.h"
#include "server/tool_calls.h"
#include "server/webui.h"
#include "tokenizer/chat.h"
#include "tokenizer/tokenizer.h"

namespace bigmoe::server {

namespace {
using Clock = std::chrono::steady_clock;
double ms_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

// The lock and signal of an HTTP request's jobs (one per choice).
struct JobSync {
    std::mutex mu;
    std::condition_variable cv;
};

// One sequence's traffic between the stepping thread (pieces, the end) and its HTTP thread.
struct Job {
    explicit Job(std::shared_ptr<JobSync> s) : sync(std::move(s)) {}
    std::shared_ptr<JobSync> sync;
    std::deque<Piece> pieces;
    bool done = false;
    GenerateResult result;
    std::string error;
    std::atomic<bool> gone{false};  // the client disconnected
    Clock::time_point submitted = Clock::now(), first, finished;
    bool has_first = false;
    int64_t id = 0, prompt_tokens = 0;
};

// OpenAI's shape of one call: {"id", "type": "function", "function": {"name", "arguments"}};
// "index" places it in a stream's deltas.
Json tool_call_json(const std::string& rid, size_t i, const ToolCall& c) {
    return {{"index", i},
            {"id", "call_" + rid + "_" + std::to_string(i)},
            {"type", "function"},
            {"function", {{"name", c.name}, {"arguments", c.arguments}}}};
}

// A Prometheus histogram of seconds with fixed buckets (any thread).
class Histogram {
  public:
    explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}
    void observe(double v) {
        std::lock_guard<std::mutex> lock(mu_);
        size_t i = 0;
        while (i < bounds_.size() && v > bounds_[i]) ++i;
        ++counts_[i];
        sum_ += v;
        ++n_;
    }
    // The exposition lines: cumulative buckets, +Inf, sum and count.
    std::string text(const std::string& name, const std::string& help) const {
        std::lock_guard<std::mutex> lock(mu_);
        std::string s = "# HELP " + name + " " + help + "\n# TYPE " + name + " histogram\n";
        uint64_t cum = 0;
        char b[64];
        for (size_t i = 0; i < bounds_.size(); ++i) {
            cum += counts_[i];
            std::snprintf(b, sizeof b, "%g", bounds_[i]);
            s += name + "_bucket{le=\"" + b + "\"} " + std::to_string(cum) + "\n";
        }
        s += name + "_bucket{le=\"+Inf\"} " + std::to_string(n_) + "\n";
        s += name + "_sum " + std::to_string(sum_) + "\n" + name + "_count " + std::to_string(n_) + "\n";
        return s;
    }

  private:
    mutable std::mutex mu_;
    std::vector<double> bounds_;
    std::vector<uint64_t> counts_;
    double sum_ = 0;
    uint64_t n_ = 0;
};

struct Route {
    const char* path;
    const char* method;
};
constexpr Route k_routes[] = {
    {"/health", "GET"},
    {"/v1/models", "GET"},
    {"/models", "GET"},
    {"/props", "GET"},
    {"/metrics", "GET"},
    {"/v1/chat/completions", "POST"},
    {"/chat/completions", "POST"},
    {"/v1/completions", "POST"},
    {"/completions", "POST"},
    {"/completion", "POST"},
    {"/tokenize", "POST"},
    {"/apply-template", "POST"},
    {"/detokenize", "POST"},
    {"/slots", "GET"},
    {"/", "GET"},
    {"/dashboard", "GET"},
    {"/profile", "GET"},
};

// The web pages (--no-webui turns them off); they hold no data, so they need neither the API key
// (they ask for it and send it with what they fetch) nor the model.
bool is_page(const std::string& p) {
    return p == "/" || p == "/dashboard";
}

// /slots/{id}: a slot's save and restore.
bool is_slot_path(const std::string& p) {
    const std::string pre = "/slots/";
    return p.size() > pre.size() && p.size() < pre.size() + 8 && p.compare(0, pre.size(), pre) == 0 &&
           p.find_first_not_of("0123456789", pre.size()) == std::string::npos;
}
}  // namespace

struct Server::Impl {
    ServeOptions o;
    httplib::Server http;
    std::thread http_thread, stepper;
    int port = 0;
    std::atomic<bool> ready{false}, stopping{false}, listen_ended{false};
    std::unique_ptr<Engine> engine;
    std::unique_ptr<Tokenizer> tok;
    std::unique_ptr<Context> ctx;
    std::unique_ptr<Engine> draft_engine;  // -md
    std::unique_ptr<Context> draft_ctx;
    std::unique_ptr<PromptCache> cache;
    std::unique_ptr<Scheduler> sched;
    std::unique_ptr<ChatFormatter> fmt;
    // JSON mode's sorted vocabulary: built by the first request that asks for it
    std::once_flag json_vocab_once;
    std::shared_ptr<const JsonVocabulary> json_vocab;
    std::string model_name;
    int32_t think_open = -1, think_close = -1;
    int32_t tool_call_open = -1, tool_call_close = -1;  // where an "auto" answer's call begins and ends
    std::mutex wake_mu;
    std::condition_variable wake_cv;
    bool wake = false;
    std::atomic<int64_t> requests_total{0}, requests_failed{0}, prompt_tokens_total{0}, generation_tokens_total{0},
        prompt_tokens_looked_up{0};
    std::atomic<uint64_t> next_seed{0x5EEDu};
    // latencies in seconds, with vLLM's names (what gateways and dashboards read)
    Histogram ttft{{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80}};
    Histogram tpot{{0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5}};
    Histogram e2e{{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320}};

    // --profile: each step's op times by class (read from the profiler and cleared after every
    // step, on the stepping thread), kept for the last profile_window seconds and in total.
    static constexpr double profile_window = 10;
    struct StepTimes {
        Clock::time_point end;
        double wall;
        OpSeconds ops;
    };
    mutable std::mutex prof_mu;
    std::deque<StepTimes> recent_steps;  // guarded by prof_mu
    OpSeconds op_seconds_total{};        // guarded by prof_mu
    double step_seconds_total = 0;       // guarded by prof_mu

    int64_t slot_ctx() const { return o.n_ctx / o.slots; }

    void reply_error(httplib::Response& res, const ApiError& e) {
        res.status = e.status;
        res.set_content(error_body(e).dump(), "application/json");
    }

    void routes();
    void step_loop();
    void completion(const httplib::Request& req, httplib::Response& res, bool chat, bool llama);
    std::string metrics() const;
    void record_step(Clock::time_point start);
    Json profile() const;
    void slot_file(const httplib::Request& req, httplib::Response& res);
};

// POST /slots/{id}?action=save|restore {"filename": NAME}: save writes the state the slot holds
// (its running request's, or what its last request left) to --slot-save-path/NAME; restore reads
// such a file into the prompt cache, so the next request whose prompt starts with its tokens, on
// any slot, continues from it.
void Server::Impl::slot_file(const httplib::Request& req, httplib::Response& res) {
    const int id = std::atoi(req.matches[1].str().c_str());
    const std::string action = req.get_param_value("action");
    if (action != "save" && action != "restore")
        return reply_error(res, {400, "action must be save or restore", "invalid_request_error", "action"});
    if (o.slot_save_path.empty())
        return reply_error(res, {400, "slot save and restore need --slot-save-path", "invalid_request_error"});
    if (id >= o.slots) return reply_error(res, {404, "there is no slot " + std::to_string(id), "not_found_error"});
    const Json j = parse_json_bounded(req.body);
    if (!j.is_object() || !j.contains("filename") || !j["filename"].is_string())
        return reply_error(res, {400, "'filename' must be a string", "invalid_request_error", "filename"});
    const std::string name = j["filename"];
    if (name.empty() || name.size() > 255 || name.find('/') != std::string::npos || name == "." || name == ".." ||
        !valid_utf8(name))
        return reply_error(res, {400, "'filename' must be a plain file name", "invalid_request_error", "filename"});
    if (action == "restore" && !cache)
        return reply_error(res, {400, "restore needs the prompt cache (--cache-ram above 0)", "invalid_request_error"});
    const std::string path = o.slot_save_path + "/" + name;
    // the context is the stepping thread's: the work runs there, between two steps
    auto done = std::make_shared<std::promise<Result<Json>>>();
    auto fut = done->get_future();
    const auto t0 = Clock::now();
    sched->between_steps([this, done, id, action, path] {
        Result<Json> r = make_error("");
        if (action == "save") {
            auto s = sched->slot_state(id);
            if (!s) {
                r = s.error();
            } else if (auto w = write_seq_file(path, *ctx, *s); !w) {
                r = w.error();
            } else {
                r = Json{{"n_saved", s->tokens.size()},
                         {"n_written", s->rows.size() + s->state.size() + 4 * s->tokens.size()}};
            }
        } else {
            auto s = read_seq_file(path, *ctx);
            if (!s) {
                r = s.error();
            } else if (auto w = cache->insert(*ctx, *s); !w) {
                r = w.error();
            } else {
                r = Json{{"n_restored", s->tokens.size()},
                         {"n_read", s->rows.size() + s->state.size() + 4 * s->tokens.size()}};
            }
        }
        done->set_value(std::move(r));
    });
    {
        std::lock_guard<std::mutex> lock(wake_mu);
        wake = true;
    }
    wake_cv.notify_one();
    while (fut.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready)
        if (stopping.load()) return reply_error(res, {503, "the server is stopping", "server_error"});
    Result<Json> r = fut.get();
    if (!r) {
        const ErrorKind k = r.error().kind;
        return reply_error(res,
                           {k == ErrorKind::internal    ? 500
                            : k == ErrorKind::not_found ? 404
                                                        : 400,
                            r.error().message, k == ErrorKind::internal ? "server_error" : "invalid_request_error"});
    }
    Json out = *r;
    out["id_slot"] = id;
    out["filename"] = name;
    out["timings"] = {{action + "_ms", ms_between(t0, Clock::now())}};
    res.set_content(out.dump(), "application/json");
}

void Server::Impl::step_loop() {
    for (;;) {
        if (stopping.load()) {
            // every request ends as cancelled, so no HTTP thread waits on it any longer
            sched->cancel_all();
            auto r = sched->step();
            (void)r;
            return;
        }
        const auto start = Clock::now();
        auto busy = sched->step();
        if (busy && *busy) record_step(start);
        if (!busy) {
            std::fprintf(stderr, "serve: a step failed: %s\n", busy.error().message.c_str());
            continue;
        }
        if (!*busy) {
            std::unique_lock<std::mutex> lock(wake_mu);
            wake_cv.wait_for(lock, std::chrono::milliseconds(50), [&] { return wake || stopping.load(); });
            wake = false;
        }
    }
}

void Server::Impl::record_step(Clock::time_point start) {
    ProfiledBackend* prof = engine->profiler();
    if (!prof) return;
    const auto end = Clock::now();
    StepTimes t{end, std::chrono::duration<double>(end - start).count(), prof->seconds_by_class()};
    prof->clear();
    std::lock_guard<std::mutex> lock(prof_mu);
    for (size_t c = 0; c < t.ops.size(); c++) op_seconds_total[c] += t.ops[c];
    step_seconds_total += t.wall;
    recent_steps.push_back(t);
    while (!recent_steps.empty() &&
           std::chrono::duration<double>(end - recent_steps.front().end).count() > profile_window)
        recent_steps.pop_front();
}

// GET /profile: where the steps of the last profile_window seconds spent their time, by op class
// (shares of the steps' wall time; "other" is what no op accounts for: scheduling, sampling in
// the scheduler, prompt-cache copies).
Json Server::Impl::profile() const {
    if (!engine || !engine->profiler()) return {{"enabled", false}};
    std::lock_guard<std::mutex> lock(prof_mu);
    OpSeconds sum{};
    double wall = 0;
    for (const StepTimes& t : recent_steps) {
        wall += t.wall;
        for (size_t c = 0; c < sum.size(); c++) sum[c] += t.ops[c];
    }
    Json ops = Json::array();
    double in_ops = 0;
    for (size_t c = 0; c < sum.size(); c++) {
        in_ops += sum[c];
        ops.push_back({{"op", op_class_key(OpClass(c))},
                       {"name", op_class_name(OpClass(c))},
                       {"seconds", sum[c]},
                       {"share", wall > 0 ? sum[c] / wall : 0.0}});
    }
    const double other = std::max(0.0, wall - in_ops);
    ops.push_back({{"op", "other"},
                   {"name", "other (not in an op)"},
                   {"seconds", other},
                   {"share", wall > 0 ? other / wall : 0.0}});
    return {{"enabled", true},
            {"window_seconds", profile_window},
            {"steps", recent_steps.size()},
            {"wall_seconds", wall},
            {"ops", ops}};
}

std::string Server::Impl::metrics() const {
    const double running = ready ? double(sched->running()) : 0, waiting = ready ? double(sched->waiting()) : 0;
    const double kv = ready ? double(sched->positions_in_use()) / double(o.n_ctx) : 0;
    std::string m;
    auto gauge = [&](const char* name, const char* help, double v) {
        m += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n" + name + " " +
             std::to_string(v) + "\n";
    };
    auto counter = [&](const char* name, const char* help, double v) {
        m += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
             std::to_string(v) + "\n";
    };
    gauge("bigmoe_requests_running", "requests decoding or prefilling", running);
    gauge("bigmoe_requests_waiting", "requests queued for a slot", waiting);
    gauge("bigmoe_kv_cache_usage_ratio", "share of the KV positions of all slots in use", kv);
    // the names an inference gateway (llm-d, Gateway API Inference Extension) scrapes
    gauge("vllm:num_requests_running", "requests running", running);
    gauge("vllm:num_requests_waiting", "requests waiting", waiting);
    gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 0 to 1", kv);
    counter("bigmoe_requests_total", "completion requests accepted", double(requests_total.load()));
    counter("bigmoe_requests_failed_total", "completion requests that failed after acceptance",
            double(requests_failed.load()));
    counter("bigmoe_prompt_tokens_total", "prompt tokens processed", double(prompt_tokens_total.load()));
    counter("bigmoe_generation_tokens_total", "tokens generated", double(generation_tokens_total.load()));
    m += ttft.text("vllm:time_to_first_token_seconds", "time from a request's arrival to its first token");
    m += tpot.text("vllm:time_per_output_token_seconds", "mean time between a request's tokens");
    m += e2e.text("vllm:e2e_request_latency_seconds", "time from a request's arrival to its last token");
    if (ready && cache) {
        const PromptCacheStats c = cache->stats();
        gauge("bigmoe_prompt_cache_bytes", "host memory the prompt cache holds", double(c.bytes));
        gauge("bigmoe_prompt_cache_budget_bytes", "the prompt cache's budget (--cache-ram)", double(c.budget));
        gauge("bigmoe_prompt_cache_snapshots", "recurrent-state snapshots held", double(c.snapshots));
        counter("bigmoe_prompt_cache_lookups_total", "requests that looked for a cached prefix", double(c.lookups));
        counter("bigmoe_prompt_cache_hits_total", "requests that reused a cached prefix", double(c.hits));
        counter("bigmoe_prompt_cache_evictions_total", "cache entries evicted to keep the budget", double(c.evictions));
        // vLLM's prefix-cache counters, in tokens
        counter("vllm:prefix_cache_queries_total", "prompt tokens looked up in the prefix cache",
                double(prompt_tokens_looked_up.load()));
        counter("vllm:prefix_cache_hits_total", "prompt tokens found in the prefix cache", double(c.tokens_reused));
    }
    if (ready && engine->profiler()) {
        std::lock_guard<std::mutex> lock(prof_mu);
        m += "# HELP bigmoe_op_seconds_total time the forward passes spent in each op class (--profile)\n"
             "# TYPE bigmoe_op_seconds_total counter\n";
        for (size_t c = 0; c < op_seconds_total.size(); c++)
            m += std::string("bigmoe_op_seconds_total{op=\"") + op_class_key(OpClass(c)) + "\"} " +
                 std::to_string(op_seconds_total[c]) + "\n";
        counter("bigmoe_step_seconds_total", "wall time of the scheduler's steps (--profile)", step_seconds_total);
    }
    if (ready && draft_ctx) {
        const SchedulerSpecStats st = sched->spec_stats();
        counter("bigmoe_spec_draft_tokens_total", "tokens the draft model proposed", double(st.drafted));
        counter("bigmoe_spec_accepted_tokens_total", "proposals the model accepted", double(st.accepted));
    }
    return m;
}

void Server::Impl::completion(const httplib::Request& req, httplib::Response& res, bool chat, bool llama) {
    CompletionRequest cr;
    if (auto e = parse_completion(req.body, chat, llama, next_seed.fetch_add(1), &cr)) return reply_error(res, *e);
    if (!cr.grammar && !cr.schema && !cr.json_object) {
        cr.grammar = o.grammar;
        cr.schema = o.json_schema;
    }
    // the prompt as tokens
    std::string text;
    bool in_reasoning = false;
    std::string forced_prefix, forced_suffix;  // around the JSON a required tool call's model writes
    std::vector<int32_t> prompt;
    if (chat) {
        ChatOptions opt;
        opt.enable_thinking = cr.enable_thinking;
        opt.tools = cr.tools;
        auto r = fmt->render(cr.messages, opt);
        if (!r) return reply_error(res, {400, "the chat template failed on these messages: " + r.error().message});
        text = *r;
        in_reasoning = opens_reasoning(text);
        if (cr.tool_required) {
            // The answer is one call: its opening (and the function's name when one is chosen)
            // goes into the prompt, the model writes the JSON that follows, and the closing is
            // added to what it wrote. An opened reasoning block is closed first, empty.
            if (in_reasoning) text += "\n\n</think>\n\n";
            in_reasoning = false;
            forced_prefix = cr.forced_tool.empty()
                                ? "<tool_call>\n"
                                : "<tool_call>\n{\"name\": " + Json(cr.forced_tool).dump() + ", \"arguments\": ";
            forced_suffix = cr.forced_tool.empty() ? "\n</tool_call>" : "}\n</tool_call>";
            text += forced_prefix;
        }
        prompt = tok->encode(text, /*parse_special=*/true, /*add_special=*/false);
    } else if (!cr.prompt_ids.empty()) {
        for (int64_t t : cr.prompt_ids) {
            if (t >= tok->n_vocab())
                return reply_error(res, {400,
                                         "prompt token " + std::to_string(t) + " is not an id in [0, " +
                                             std::to_string(tok->n_vocab()) + ")",
                                         "invalid_request_error", "prompt"});
            prompt.push_back(int32_t(t));
        }
    } else {
        prompt = tok->encode(cr.prompt, true, true);
    }
    for (const auto& [t, amount] : cr.sampler.logit_bias)
        if (t >= tok->n_vocab())
            return reply_error(res, {400,
                                     "logit_bias token " + std::to_string(t) + " is not an id in [0, " +
                                         std::to_string(tok->n_vocab()) + ")",
                                     "invalid_request_error", "logit_bias"});
    if (int64_t(prompt.size()) + 1 > slot_ctx())
        return reply_error(res, {400,
                                 "the prompt has " + std::to_string(prompt.size()) + " tokens; a slot holds " +
                                     std::to_string(slot_ctx()) + " positions (-c " + std::to_string(o.n_ctx) +
                                     " over -np " + std::to_string(o.slots) + ")",
                                 "invalid_request_error", "context_length_exceeded"});
    if (sched->running() + sched->waiting() + size_t(cr.n) > size_t(o.slots) + o.queue) {
        res.set_header("Retry-After", "1");
        return reply_error(res, {503, "the server is busy: " + std::to_string(o.queue) + " requests are waiting",
                                 "server_error", "queue_full"});
    }
    const bool tools = chat && cr.tools.is_array() && !cr.tools.empty();
    // "n" choices: a sequence each, sampled with seeds seed, seed + 1, ... (at temperature 0 they
    // are the same text); they share one lock and signal, so a stream waits on all at once
    auto sync = std::make_shared<JobSync>();
    std::vector<std::shared_ptr<Job>> jobs;
    for (int i = 0; i < cr.n; ++i) {
        if (i == 1 && cache) {
            // the other choices start once the first has its prompt processed (and cached, with
            // its logits): they restore all of it instead of each processing it again
            std::unique_lock<std::mutex> lock(sync->mu);
            sync->cv.wait(lock, [&] { return jobs[0]->has_first || jobs[0]->done; });
        }
        auto job = std::make_shared<Job>(sync);
        job->prompt_tokens = int64_t(prompt.size());
        Request r;
        r.prompt = prompt;
        r.sampler = cr.sampler;
        r.sampler.seed = cr.sampler.seed + uint64_t(i);
        r.gen.n_predict = cr.max_tokens;
        r.gen.ignore_eos = cr.ignore_eos;
        r.gen.stop = cr.stop;
        r.gen.in_reasoning = in_reasoning;
        r.gen.logprobs = cr.logprobs;
        if (cr.grammar && !cr.tool_required) {
            std::call_once(json_vocab_once, [&] { json_vocab = std::make_shared<const JsonVocabulary>(*tok); });
            r.gen.constraint =
                std::make_shared<JsonConstraint>(json_vocab, in_reasoning ? think_close : -1, cr.grammar);
        } else if (cr.json_object || cr.schema || cr.tool_required) {
            // a reasoning model writes its reasoning first, then the object
            std::call_once(json_vocab_once, [&] { json_vocab = std::make_shared<const JsonVocabulary>(*tok); });
            r.gen.constraint = std::make_shared<JsonConstraint>(json_vocab, in_reasoning ? think_close : -1,
                                                                cr.tool_required ? cr.tool_schema : cr.schema);
        } else if (tools && cr.tool_call_schema && tool_call_open >= 0 && tool_call_close >= 0) {
            // tool_choice "auto": free text, but each call the model opens is written whole, as
            // the tool it names takes it, and closed
            std::call_once(json_vocab_once, [&] { json_vocab = std::make_shared<const JsonVocabulary>(*tok); });
            auto c = std::make_shared<JsonConstraint>(json_vocab, -1, cr.tool_call_schema);
            c->repeat_after(tool_call_open, tool_call_close);
            r.gen.constraint = std::move(c);
        }
        r.on_piece = [job](const Piece& p) {
            std::lock_guard<std::mutex> lock(job->sync->mu);
            if (!job->has_first) {
                job->has_first = true;
                job->first = Clock::now();
            }
            job->pieces.push_back(p);
            job->sync->cv.notify_all();
            return !job->gone.load();
        };
        r.on_done = [this, job](const GenerateResult& result, const Error* err) {
            std::lock_guard<std::mutex> lock(job->sync->mu);
            job->result = result;
            if (err) {
                job->error = err->message;
                ++requests_failed;
            }
            job->finished = Clock::now();
            if (!job->has_first) job->first = job->finished;
            job->done = true;
            prompt_tokens_total += job->prompt_tokens - result.prompt_cached;
            if (cache) prompt_tokens_looked_up += job->prompt_tokens;
            generation_tokens_total += int64_t(result.tokens.size());
            if (!err && result.stop != StopReason::cancelled) {
                const double first_s = ms_between(job->submitted, job->first) / 1000;
                ttft.observe(first_s);
                e2e.observe(ms_between(job->submitted, job->finished) / 1000);
                if (result.tokens.size() > 1)
                    tpot.observe(ms_between(job->first, job->finished) / 1000 / double(result.tokens.size() - 1));
            }
            job->sync->cv.notify_all();
        };
        auto id = sched->submit(std::move(r));
        if (!id) {
            for (const auto& j : jobs) {
                j->gone = true;
                sched->cancel(j->id);
            }
            return reply_error(res, {400, id.error().message});
        }
        job->id = *id;
        jobs.push_back(job);
        ++requests_total;
        {
            std::lock_guard<std::mutex> lock(wake_mu);
            wake = true;
        }
        wake_cv.notify_one();
    }

    const std::string kind = chat ? "chat.completion" : "text_completion";
    const std::string rid = (chat ? "chatcmpl-" : "cmpl-") + std::to_string(jobs[0]->id);
    const int64_t created = int64_t(std::time(nullptr));
    // usage counts the prompt once and every choice's tokens; timings are the first choice's
    auto usage = [jobs]() {
        const Job& j0 = *jobs[0];
        Usage u;
        u.prompt_tokens = j0.prompt_tokens;
        for (const auto& j : jobs) u.completion_tokens += int64_t(j->result.tokens.size());
        u.cached_tokens = j0.result.prompt_cached;
        u.prompt_ms = ms_between(j0.submitted, j0.first);
        u.predicted_ms = ms_between(j0.first, j0.finished);
        return u;
    };
    auto all_done = [jobs] { return std::all_of(jobs.begin(), jobs.end(), [](const auto& j) { return j->done; }); };
    if (!cr.stream) {
        std::unique_lock<std::mutex> lock(sync->mu);
        sync->cv.wait(lock, all_done);
        Json choices = Json::array();
        for (size_t i = 0; i < jobs.size(); ++i) {
            const Job& job = *jobs[i];
            if (!job.error.empty()) return reply_error(res, {500, job.error, "server_error"});
            if (stopping.load() && job.result.stop == StopReason::cancelled)
                return reply_error(res, {503, "the server is stopping", "server_error", "stopping"});
            Json choice = {{"index", i}, {"finish_reason", finish_reason(job.result.stop)}};
            int64_t offset = 0;
            choice["logprobs"] = cr.logprobs < 0 ? Json(nullptr)
                                 : chat          ? chat_logprobs_json(job.result.logprobs, *tok)
                                                 : completion_logprobs_json(job.result.logprobs, *tok, &offset);
            if (chat) {
                Json msg = {{"role", "assistant"}, {"content", job.result.content}};
                if (!job.result.reasoning.empty()) msg["reasoning_content"] = job.result.reasoning;
                if (tools) {  // the model's <tool_call> blocks as tool_calls
                    ToolCallParser parser;
                    if (!forced_prefix.empty()) msg["content"] = forced_prefix + job.result.content + forced_suffix;
                    ToolOutput o = parser.push(msg["content"].get<std::string>()), rest = parser.finish();
                    o.text += rest.text;
                    if (!o.calls.empty()) {
                        msg["content"] = o.text.empty() ? Json(nullptr) : Json(o.text);
                        msg["tool_calls"] = Json::array();
                        for (size_t k = 0; k < o.calls.size(); ++k)
                            msg["tool_calls"].push_back(tool_call_json(rid, k, o.calls[k]));
                        choice["finish_reason"] = "tool_calls";
                    }
                }
                choice["message"] = msg;
            } else {
                choice["text"] = job.result.content;
            }
            choices.push_back(std::move(choice));
        }
        const Usage u = usage();
        Json body = {{"id", rid},          {"object", kind},         {"created", created},        {"model", model_name},
                     {"choices", choices}, {"usage", usage_json(u)}, {"timings", timings_json(u)}};
        if (llama) body["content"] = jobs[0]->result.content;
        res.set_content(body.dump(), "application/json");
        return;
    }
    // Server-sent events: a chunk per piece (each with its choice's index), each choice's finish
    // reason, usage if asked, then [DONE].
    const std::string chunk_kind = chat ? "chat.completion.chunk" : "text_completion";
    struct Stream {
        std::vector<TokenLogprob> pending;  // log-probabilities of the tokens since the last chunk sent
        int64_t text_offset = 0;
        std::shared_ptr<ToolCallParser> parser;
        size_t n_calls = 0;
        bool finished = false;
    };
    auto streams = std::make_shared<std::vector<Stream>>(jobs.size());
    for (Stream& st : *streams) {
        if (tools) st.parser = std::make_shared<ToolCallParser>();
        if (st.parser && !forced_prefix.empty()) st.parser->push(forced_prefix);  // held: the call is not complete
    }
    const bool want_lp = cr.logprobs >= 0;
    auto chunk = [=, this](Stream& st, Json choice) {
        if (want_lp && !st.pending.empty()) {
            choice["logprobs"] = chat ? chat_logprobs_json(st.pending, *tok)
                                      : completion_logprobs_json(st.pending, *tok, &st.text_offset);
            st.pending.clear();
        }
        return Json{{"id", rid},
                    {"object", chunk_kind},
                    {"created", created},
                    {"model", model_name},
                    {"choices", Json::array({std::move(choice)})}};
    };
    const bool include_usage = cr.include_usage;
    const int32_t t_open = think_open, t_close = think_close;
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider("text/event-stream", [=, this](size_t, httplib::DataSink& sink) {
        auto send = [&](const Json& j) {
            const std::string line = "data: " + j.dump() + "\n\n";
            return sink.write(line.data(), line.size());
        };
        auto gone = [&] {
            for (const auto& job : jobs) {
                job->gone = true;
                sched->cancel(job->id);
            }
            return false;
        };
        if (chat)
            for (size_t i = 0; i < jobs.size(); ++i)
                if (!send(chunk((*streams)[i], {{"index", i},
                                                {"delta", {{"role", "assistant"}, {"content", ""}}},
                                                {"finish_reason", nullptr}})))
                    return gone();
        for (;;) {
            std::vector<std::deque<Piece>> batches(jobs.size());
            std::vector<bool> done(jobs.size());
            {
                std::unique_lock<std::mutex> lock(sync->mu);
                sync->cv.wait_for(lock, std::chrono::milliseconds(200), [&] {
                    for (size_t i = 0; i < jobs.size(); ++i)
                        if (!jobs[i]->pieces.empty() || (jobs[i]->done && !(*streams)[i].finished)) return true;
                    return false;
                });
                for (size_t i = 0; i < jobs.size(); ++i) {
                    batches[i].swap(jobs[i]->pieces);
                    done[i] = jobs[i]->done;
                }
            }
            for (size_t i = 0; i < jobs.size(); ++i) {
                Stream& st = (*streams)[i];
                const Job& job = *jobs[i];
                // content pieces (through the tool-call parser when the request has tools)
                auto send_content = [&](const std::string& text, const std::vector<ToolCall>& calls) {
                    if (!text.empty() &&
                        !send(chunk(st, {{"index", i}, {"delta", {{"content", text}}}, {"finish_reason", nullptr}})))
                        return false;
                    for (const ToolCall& c : calls)
                        if (!send(chunk(
                                st, {{"index", i},
                                     {"delta", {{"tool_calls", Json::array({tool_call_json(rid, st.n_calls++, c)})}}},
                                     {"finish_reason", nullptr}})))
                            return false;
                    return true;
                };
                for (const Piece& p : batches[i]) {
                    if (p.logprob) st.pending.push_back(*p.logprob);
                    if (p.text.empty() || p.token == t_open || p.token == t_close) continue;
                    bool ok;
                    if (!chat) {
                        ok = send(chunk(st, {{"index", i}, {"text", p.text}, {"finish_reason", nullptr}}));
                    } else if (p.reasoning) {
                        ok = send(chunk(
                            st,
                            {{"index", i}, {"delta", {{"reasoning_content", p.text}}}, {"finish_reason", nullptr}}));
                    } else if (st.parser) {
                        ToolOutput o = st.parser->push(p.text);
                        ok = send_content(o.text, o.calls);
                    } else {
                        ok = send_content(p.text, {});
                    }
                    if (!ok) return gone();
                }
                if (!done[i] || st.finished) continue;
                st.finished = true;
                if (st.parser) {
                    ToolOutput o = st.parser->push(forced_suffix), rest = st.parser->finish();
                    o.text += rest.text;
                    o.calls.insert(o.calls.end(), rest.calls.begin(), rest.calls.end());
                    if (!send_content(o.text, o.calls)) return gone();
                }
                if (!job.error.empty()) {
                    send(error_body({500, job.error, "server_error"}));
                    continue;
                }
                Json fin = {
                    {"index", i},
                    {"finish_reason", st.n_calls > 0 ? std::string("tool_calls") : finish_reason(job.result.stop)}};
                fin[chat ? "delta" : "text"] = chat ? Json::object() : Json("");
                Json last = chunk(st, fin);
                if (jobs.size() == 1) last["timings"] = timings_json(usage());
                if (!send(last)) return gone();
            }
            if (!sink.is_writable()) return gone();
            if (!std::all_of(streams->begin(), streams->end(), [](const Stream& st) { return st.finished; })) continue;
            if (include_usage) {
                Json uj = chunk((*streams)[0], {{"index", 0}});
                uj["choices"] = Json::array();
                uj["usage"] = usage_json(usage());
                if (!send(uj)) return gone();
            }
            const std::string end = "data: [DONE]\n\n";
            sink.write(end.data(), end.size());
            sink.done();
            return true;
        }
    });
}

void Server::Impl::routes() {
    http.set_payload_max_length(o.max_body);
    http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
        bool known = false, allowed = false;
        const bool page = is_page(req.path);
        if (page && !o.webui) {
            reply_error(res, {404, "the web page is off (--no-webui)", "not_found_error"});
            return httplib::Server::HandlerResponse::Handled;
        }
        if (is_slot_path(req.path)) {  // /slots/{id}
            known = true;
            allowed = req.method == "POST";
        }
        for (const Route& r : k_routes)
            if (req.path == r.path) {
                known = true;
                allowed = allowed || req.method == r.method || (req.method == "HEAD" && std::string(r.method) == "GET");
            }
        if (!known) {
            reply_error(res, {404, "no endpoint " + req.method + " " + req.path, "not_found_error"});
            return httplib::Server::HandlerResponse::Handled;
        }
        if (!allowed) {
            for (const Route& r : k_routes)
                if (req.path == r.path) res.set_header("Allow", r.method);
            if (is_slot_path(req.path)) res.set_header("Allow", "POST");
            reply_error(res, {405, req.method + " is not allowed on " + req.path, "invalid_request_error"});
            return httplib::Server::HandlerResponse::Handled;
        }
        if (!o.api_key.empty() && req.path != "/health" && !page &&
            req.get_header_value("Authorization") != "Bearer " + o.api_key) {
            reply_error(res, {401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                              "invalid_api_key"});
            return httplib::Server::HandlerResponse::Handled;
        }
        if (!ready.load() && req.path != "/health" && req.path != "/metrics" && !page) {
            reply_error(res, {503, "the model is loading", "server_error", "loading"});
            return httplib::Server::HandlerResponse::Handled;
        }
        return httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_error_handler(
        httplib::Server::HandlerWithResponse([this](const httplib::Request&, httplib::Response& res) {
            if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
            const std::string msg = res.status == 413
                                        ? "the request body is larger than " + std::to_string(o.max_body) + " bytes"
                                        : "the request could not be read";
            reply_error(res, {res.status, msg});
            return httplib::Server::HandlerResponse::Handled;
        }));
    http.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "internal error";
        try {
            std::rethrow_exception(ep);
        } catch (const std::exception& e) {
            what = e.what();
        } catch (...) {
        }
        reply_error(res, {500, what, "server_error"});
    });
    http.Get("/", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(chat_page(), "text/html; charset=utf-8");
    });
    http.Get("/dashboard", [](const httplib::Request&, httplib::Response& res) {
        res.set_content(dashboard_page(), "text/html; charset=utf-8");
    });
    http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
        if (!ready.load()) return reply_error(res, {503, "the model is loading", "server_error", "loading"});
        res.set_content(R"({"status":"ok"})", "application/json");
    });
    auto models = [this](const httplib::Request&, httplib::Response& res) {
        Json m = {{"id", model_name}, {"object", "model"}, {"created", 0}, {"owned_by", "bigmoe"}};
        res.set_content(Json{{"object", "list"}, {"data", Json::array({m})}}.dump(), "application/json");
    };
    http.Get("/v1/models", models);
    http.Get("/models", models);
    http.Get("/props", [this](const httplib::Request&, httplib::Response& res) {
        Json p = {{"model_path", o.model},
                  {"model_alias", model_name},
                  {"total_slots", o.slots},
                  {"n_ctx", o.n_ctx},
                  {"default_generation_settings", {{"n_ctx", slot_ctx()}}},
                  {"chat_template", tok->chat_template()},
                  {"build_info", version_string()}};
        res.set_content(p.dump(), "application/json");
    });
    http.Get("/profile", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(profile().dump(), "application/json");
    });
    http.Get("/slots", [this](const httplib::Request&, httplib::Response& res) {
        Json out = Json::array();
        for (const SlotInfo& s : sched->slots())
            out.push_back({{"id", s.seq},
                           {"is_processing", s.request != 0},
                           {"state", s.request == 0 ? "idle"
                                     : s.prefilling ? "prefill"
                                                    : "decode"},
                           {"request", s.request},
                           {"n_ctx", slot_ctx()},
                           {"n_past", s.n_past},
                           {"n_prompt_tokens", s.n_prompt},
                           {"n_prompt_tokens_processed", s.n_prefilled},
                           {"n_prompt_tokens_cache", s.n_cached},
                           {"n_decoded", s.n_generated}});
        res.set_content(out.dump(), "application/json");
    });
    http.Post(R"(/slots/(\d+))", [this](const httplib::Request& q, httplib::Response& res) { slot_file(q, res); });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        res.set_content(metrics(), "text/plain; version=0.0.4");
    });
    for (const char* p : {"/v1/chat/completions", "/chat/completions"})
        http.Post(p, [this](const httplib::Request& q, httplib::Response& s) { completion(q, s, true, false); });
    for (const char* p : {"/v1/completions", "/completions"})
        http.Post(p, [this](const httplib::Request& q, httplib::Response& s) { completion(q, s, false, false); });
    http.Post("/completion",
              [this](const httplib::Request& q, httplib::Response& s) { completion(q, s, false, true); });
    // the body as JSON, or a 400 already sent (discarded)
    auto body_json = [this](const httplib::Request& q, httplib::Response& res) {
        Json j = parse_json_bounded(q.body);
        if (j.is_discarded())
            reply_error(res, {400, "the request body is not valid JSON (or nests deeper than " +
                                       std::to_string(k_json_max_depth) + " levels)"});
        return j;
    };
    http.Post("/tokenize", [this, body_json](const httplib::Request& q, httplib::Response& res) {
        const Json j = body_json(q, res);
        if (j.is_discarded()) return;
        if (!j.is_object() || !j.contains("content") || !j["content"].is_string())
            return reply_error(res, {400, "'content' must be a string", "invalid_request_error", "content"});
        const std::string text = j["content"];
        if (!valid_utf8(text)) return reply_error(res, {400, "'content' is not valid UTF-8"});
        const bool add_special = j.value("add_special", false);
        res.set_content(Json{{"tokens", tok->encode(text, true, add_special)}}.dump(), "application/json");
    });
    // llama-server's /apply-template: the prompt a chat request's messages render to, not run
    http.Post("/apply-template", [this](const httplib::Request& q, httplib::Response& res) {
        CompletionRequest cr;
        if (auto e = parse_completion(q.body, true, false, 0, &cr)) return reply_error(res, *e);
        ChatOptions opt;
        opt.enable_thinking = cr.enable_thinking;
        opt.tools = cr.tools;
        auto r = fmt->render(cr.messages, opt);
        if (!r) return reply_error(res, {400, "the chat template failed on these messages: " + r.error().message});
        res.set_content(Json{{"prompt", *r}}.dump(), "application/json");
    });
    http.Post("/detokenize", [this, body_json](const httplib::Request& q, httplib::Response& res) {
        const Json j = body_json(q, res);
        if (j.is_discarded()) return;
        if (!j.is_object() || !j.contains("tokens") || !j["tokens"].is_array())
            return reply_error(res, {400, "'tokens' must be an array of token ids", "invalid_request_error", "tokens"});
        std::vector<int32_t> ids;
        for (const auto& t : j["tokens"]) {
            if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tok->n_vocab())
                return reply_error(
                    res, {400, "token " + t.dump() + " is not an id in [0, " + std::to_string(tok->n_vocab()) + ")"});
            ids.push_back(int32_t(t.get<int64_t>()));
        }
        res.set_content(Json{{"content", tok->decode(ids, false)}}.dump(), "application/json");
    });
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Server::~Server() {
    stop();
    if (impl_->http_thread.joinable()) impl_->http_thread.join();
    if (impl_->stepper.joinable()) impl_->stepper.join();
}

Result<std::unique_ptr<Server>> Server::start(const ServeOptions& o) {
    if (o.slots < 1 || o.slots > 256) return make_error("-np must be 1..256, got " + std::to_string(o.slots));
    if (!o.slot_save_path.empty() && !std::filesystem::is_directory(o.slot_save_path))
        return make_error("--slot-save-path " + o.slot_save_path + " is not a directory", ErrorKind::bad_input);
    if (o.n_ctx / o.slots < 8)
        return make_error("-c " + std::to_string(o.n_ctx) + " over -np " + std::to_string(o.slots) +
                          " leaves fewer than 8 positions per slot");
    auto impl = std::make_unique<Impl>();
    impl->o = o;
    const std::string base =
        o.model.substr(o.model.find_last_of('/') == std::string::npos ? 0 : o.model.find_last_of('/') + 1);
    impl->model_name = o.alias.empty() ? base : o.alias;
    impl->routes();
    impl->port =
        o.port == 0 ? impl->http.bind_to_any_port(o.host) : (impl->http.bind_to_port(o.host, o.port) ? o.port : -1);
    if (impl->port < 0)
        return make_error("cannot listen on " + o.host + ":" + std::to_string(o.port) +
                              " (in use, or not an address of this machine)",
                          ErrorKind::bad_input);
    Impl* p = impl.get();
    impl->http_thread = std::thread([p] {
        p->http.listen_after_bind();
        p->listen_ended = true;
    });
    // httplib's stop() only ends a server that is already listening: wait until it is, so that a
    // failed load right after start can stop it
    while (!impl->http.is_running() && !impl->listen_ended.load())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const {
    return impl_->port;
}

Result<void> Server::load() {
    Impl& s = *impl_;
    BM_ASSIGN(s.engine, Engine::load(s.o.model, {.n_threads = s.o.threads,
                                                 .profile = s.o.profile,
                                                 .repack = s.o.repack,
                                                 .n_gpu_layers = s.o.n_gpu_layers,
                                                 .n_cpu_moe = s.o.n_cpu_moe}));
    BM_ASSIGN(s.tok, Tokenizer::from_gguf(s.engine->file()));
    ContextParams cp;
    cp.n_ctx = s.slot_ctx();
    cp.n_seq_max = s.o.slots;
    cp.n_ubatch = s.o.n_ubatch;
    cp.type_k = s.o.type_k;
    cp.type_v = s.o.type_v;
    // without drafts nothing is rolled back: recurrent state is updated in place
    cp.rollback_depth = s.o.draft_model.empty() ? 0 : s.o.draft_max;
    BM_ASSIGN(s.ctx, s.engine->new_context(cp));
    if (!s.o.draft_model.empty()) {
        const int dt = s.o.draft_threads > 0 ? s.o.draft_threads : s.o.threads;
        BM_ASSIGN(s.draft_engine, Engine::load(s.o.draft_model, {.n_threads = dt,
                                                                 .repack = s.o.repack,
                                                                 .n_gpu_layers = s.o.draft_gpu_layers,
                                                                 .gpu_layers_flag = "-ngld"}));
        BM_ASSIGN(s.draft_ctx, s.draft_engine->new_context(cp));
    }
    const int32_t bos = s.tok->bos(), eos = s.tok->eos();
    auto fmt = ChatFormatter::create(s.tok->chat_template(), bos >= 0 ? s.tok->token_text(bos) : "",
                                     eos >= 0 ? s.tok->token_text(eos) : "");
    if (!fmt) return fmt.error();
    s.fmt = std::make_unique<ChatFormatter>(std::move(*fmt));
    s.think_open = s.tok->find("<think>");
    s.think_close = s.tok->find("</think>");
    s.tool_call_open = s.tok->find("<tool_call>");
    s.tool_call_close = s.tok->find("</tool_call>");
    s.sched = std::make_unique<Scheduler>(*s.ctx, *s.tok,
                                          SchedulerParams{.prefill_budget = s.o.n_ubatch, .draft_max = s.o.draft_max});
    if (s.o.cache_ram_mib > 0) {
        s.cache = std::make_unique<PromptCache>(uint64_t(s.o.cache_ram_mib) << 20);
        s.sched->set_prompt_cache(s.cache.get(), s.o.cache_checkpoint_every);
    }
    if (s.draft_ctx) {
        if (auto r = s.sched->set_draft(s.draft_ctx.get()); !r)
            return make_error("the draft model " + s.o.draft_model + ": " + r.error().message, ErrorKind::bad_input);
    }
    s.stepper = std::thread([&s] { s.step_loop(); });
    s.ready = true;
    return {};
}

void Server::wait() {
    if (impl_->http_thread.joinable()) impl_->http_thread.join();
}

void Server::stop() {
    impl_->stopping = true;
    impl_->wake_cv.notify_all();
    impl_->http.stop();
}

}  // namespace bigmoe::server
