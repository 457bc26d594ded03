// `bigmoe serve`: an OpenAI-compatible HTTP server over one model. HTTP threads parse and
// validate requests and stream answers; one thread steps the Scheduler (continuous batching over
// -np sequences), so a request's output does not depend on what else the server is doing.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/result.h"
#include "quant/dtype.h"

namespace bigmoe {
class Grammar;
class JsonSchema;
}  // namespace bigmoe

namespace bigmoe::server {

struct ServeOptions {
    std::string model;
    std::string host = "127.0.0.1";
    int port = 8080;         // 0: any free port (Server::port says which)
    int64_t n_ctx = 4096;    // total, split across the slots
    int slots = 1;           // -np: sequences decoding at once
    int threads = 0;         // 0: the physical cores
    int64_t n_ubatch = 512;  // micro-batch and prefill budget per step
    DType type_k = DType::F16, type_v = DType::F16;
    std::string api_key;  // non-empty: every endpoint but /health needs "Authorization: Bearer KEY"
    std::string alias;    // the model's name in /v1/models (default: the file name)
    size_t queue = 64;    // requests waiting beyond this get 503 with Retry-After
    size_t max_body = 8 << 20;
    bool repack = true;
    int n_gpu_layers = 0;      // -ngl: 0 the CPU, 99 the whole model on the GPU
    int n_cpu_moe = 0;         // --n-cpu-moe (-1: --cpu-moe), LoadOptions::n_cpu_moe
    std::string draft_model;   // -md: greedy requests are decoded speculatively with this model
    int draft_max = 8;         // tokens drafted per request and step
    int draft_threads = 0;     // 0: as threads
    int draft_gpu_layers = 0;  // -ngld, as n_gpu_layers
    // The prompt cache (host memory; 0 turns it off) and its checkpoints inside long prompts.
    int64_t cache_ram_mib = 8192;
    int64_t cache_checkpoint_every = 2048;
    // --slot-save-path: where POST /slots/{id}?action=save|restore keeps files ("" : refused)
    std::string slot_save_path;
    bool webui = true;  // the chat page at / (--no-webui: off)
    // Times every op of every step by class: GET /profile (the last seconds, which the dashboard
    // draws) and bigmoe_op_seconds_total in /metrics. A GPU synchronizes after each op.
    bool profile = false;
    // llama-server's --grammar / -j: the constraint of every request that sets none of its own
    // (no grammar, json_schema or response_format; a forced tool call keeps its schema)
    std::shared_ptr<const Grammar> grammar;
    std::shared_ptr<const JsonSchema> json_schema;
};

class Server {
  public:
    // Binds the address (so the port is known) and starts answering: /health says 503 until
    // load() finishes.
    static Result<std::unique_ptr<Server>> start(const ServeOptions& o);
    ~Server();
    int port() const;
    // Loads the model and starts the stepping thread.
    Result<void> load();
    // Blocks until stop() (from a signal handler's thread or another thread).
    void wait();
    void stop();

    struct Impl;

  private:
    explicit Server(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace bigmoe::server
