// `bigmoe info -m FILE [--json]`: reads only the header (the weights stay unread in the mapping).
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "backend/cuda/cuda_backend.h"
#include "bigmoe/bigmoe.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/options.h"
#include "gguf/names.h"

namespace bigmoe::cli {

namespace {
const std::vector<OptionSpec> k_specs = {
    opt::model,
    {"-c", "--ctx-size", "N", "context for the KV cache's size (default: the model's training context)"},
    opt::cache_type_k,
    opt::cache_type_v,
    {"", "--json", "", "print JSON"},
    opt::help,
};

std::string human_bytes(double b) {
    const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (b >= 1024 && u < 4) {
        b /= 1024;
        ++u;
    }
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f %s", b, units[u]);
    return buf;
}
}  // namespace

int cmd_info(const std::vector<std::string>& argv) {
    auto args = Args::parse(argv, k_specs);
    if (!args) return fail(args.error().message);
    if (args->has("--help")) {
        std::printf("usage: bigmoe info -m FILE [-c N] [-ctk TYPE] [-ctv TYPE] [--json]\n\n%s",
                    format_help(k_specs).c_str());
        return 0;
    }
    if (!args->has("--model")) return fail("info: -m/--model is required");
    auto ctk = parse_cache_type(args->get("--cache-type-k", "f16"), "-ctk");
    auto ctv = parse_cache_type(args->get("--cache-type-v", "f16"), "-ctv");
    if (!ctk) return fail(ctk.error().message);
    if (!ctv) return fail(ctv.error().message);
    auto engine = Engine::load(args->get("--model"), {.n_threads = 1, .repack = false});  // no products here
    if (!engine) return fail(engine.error().message);
    const gguf::GgufFile& f = (*engine)->file();
    Model& m = (*engine)->model();
    const HParams& hp = m.hparams();
    auto n_ctx = args->get_int("--ctx-size", hp.n_ctx_train > 0 ? hp.n_ctx_train : 4096, 1, int64_t(1) << 40);
    if (!n_ctx) return fail(n_ctx.error().message);
    for (DType t : {*ctk, *ctv})
        if (auto ok = Context::check_cache_type(hp, t); !ok) return fail("info: " + ok.error().message);
    const uint64_t kv_f16 = Context::kv_bytes_per_token(hp, DType::F16, DType::F16);
    const uint64_t kv = Context::kv_bytes_per_token(hp, *ctk, *ctv);
    const uint64_t rec =
        uint64_t(hp.n_recurrent_layers()) * uint64_t(hp.conv_state_floats() + hp.ssm_state_floats()) * 4;

    nlohmann::json j;
    j["file"] = f.path();
    j["file_size"] = f.file_size();
    j["gguf_version"] = f.version();
    j["shards"] = f.n_shards();
    j["architecture"] = hp.arch;
    j["name"] = f.get_string_or(gguf::key::general_name, "");
    j["file_type"] = f.get_int_or(gguf::key::general_file_type, -1);
    j["hparams"] = {{"n_vocab", hp.n_vocab},
                    {"n_embd", hp.n_embd},
                    {"n_layer", hp.n_layer},
                    {"n_layer_all", hp.n_layer_all},
                    {"n_nextn", hp.n_nextn},
                    {"n_ctx_train", hp.n_ctx_train},
                    {"n_head", hp.n_head},
                    {"n_head_kv", hp.n_head_kv},
                    {"head_dim", hp.head_dim},
                    {"n_rot", hp.n_rot},
                    {"rope_theta", hp.rope_theta},
                    {"eps", hp.eps},
                    {"n_ff", hp.n_ff},
                    {"n_expert", hp.n_expert},
                    {"n_expert_used", hp.n_expert_used},
                    {"n_ff_exp", hp.n_ff_exp},
                    {"n_ff_shexp", hp.n_ff_shexp},
                    {"ssm_conv_kernel", hp.ssm_conv_kernel},
                    {"ssm_d_state", hp.ssm_d_state},
                    {"ssm_n_k_heads", hp.ssm_n_k_heads},
                    {"ssm_n_v_heads", hp.ssm_n_v_heads},
                    {"ssm_d_inner", hp.ssm_d_inner},
                    {"n_attention_layers", hp.n_attention_layers()},
                    {"n_recurrent_layers", hp.n_recurrent_layers()}};
    j["n_params"] = m.n_params();
    j["n_active_params"] = m.n_active_params();
    j["weight_bytes"] = m.total_weight_bytes();
    j["active_weight_bytes_per_token"] = m.active_weight_bytes();
    j["kv_bytes_per_token_f16"] = kv_f16;
    j["type_k"] = cache_type_name(*ctk);
    j["type_v"] = cache_type_name(*ctv);
    j["n_ctx"] = *n_ctx;
    j["kv_bytes_per_token"] = kv;
    j["kv_bytes_context"] = kv * uint64_t(*n_ctx);
    j["recurrent_bytes_per_seq"] = rec;
    nlohmann::json tensors = nlohmann::json::array();
    for (const auto& t : f.tensors()) {
        std::vector<int64_t> shape(t.ne, t.ne + t.n_dims);
        tensors.push_back({{"name", t.name}, {"type", traits(t.type).name}, {"shape", shape}, {"bytes", t.nbytes}});
    }
    j["tensors"] = tensors;
    // the GPU -ngl would use, whether the weights fit in its free memory, and if not how many of
    // the last layers do
    const auto gpu = cuda_device_info();
    auto gw = GpuWeights::of(f);
    if (!gw) return fail(gw.error().message);
    const int64_t most = gpu ? gw->most_layers(gpu->free_bytes) : 0;
    // with every layer on the GPU, the fewest layers whose routed experts stay in host memory
    const int64_t ncm = gpu && gw->has_experts() ? gw->fewest_cpu_moe(gpu->free_bytes) : -1;
    if (gpu)
        j["gpu"] = {
            {"name", gpu->name},
            {"compute_capability", std::to_string(gpu->compute_major) + "." + std::to_string(gpu->compute_minor)},
            {"total_bytes", gpu->total_bytes},
            {"free_bytes", gpu->free_bytes},
            {"weights_fit", gw->bytes(-1) <= gpu->free_bytes},
            {"max_gpu_layers", most},
            {"min_n_cpu_moe", ncm}};
    else
        j["gpu"] = {{"error", gpu.error().message}};
    if (args->has("--json")) {
        std::printf("%s\n", j.dump(1).c_str());
        return 0;
    }
    std::printf("file:          %s (%s, GGUF v%u, %d shard%s)\n", f.path().c_str(),
                human_bytes(double(f.file_size())).c_str(), f.version(), f.n_shards(), f.n_shards() > 1 ? "s" : "");
    std::printf("architecture:  %s   name: %s\n", hp.arch.c_str(), j["name"].get<std::string>().c_str());
    std::printf("parameters:    %.3f B total, %.3f B active per token\n", double(m.n_params()) / 1e9,
                double(m.n_active_params()) / 1e9);
    std::printf("weights:       %s (%s read per decoded token)\n", human_bytes(double(m.total_weight_bytes())).c_str(),
                human_bytes(double(m.active_weight_bytes())).c_str());
    std::printf("KV cache:      %s per token (K %s, V %s), %s for %lld positions; recurrent state %s per sequence\n",
                human_bytes(double(kv)).c_str(), cache_type_name(*ctk).c_str(), cache_type_name(*ctv).c_str(),
                human_bytes(double(kv) * double(*n_ctx)).c_str(), (long long)*n_ctx, human_bytes(double(rec)).c_str());
    if (gpu) {
        const uint64_t all = gw->bytes(-1);
        std::string verdict = "the weights fit, " +
                              human_bytes(double(gpu->free_bytes - std::min(all, gpu->free_bytes))) +
                              " left for the context";
        if (all > gpu->free_bytes)
            verdict = most >= 1 ? "the weights do not fit; -ngl " + std::to_string(most) + " of the " +
                                      std::to_string(gw->n_layer()) + " layers does, " +
                                      human_bytes(double(gpu->free_bytes - gw->bytes(most))) + " left for the context"
                                : std::string("not even the output layer fits (-ngl 0 runs on the CPU)");
        if (all > gpu->free_bytes && ncm > 0)
            verdict += "; or -ngl 99 --n-cpu-moe " + std::to_string(ncm) + ", " +
                       human_bytes(double(gpu->free_bytes - gw->bytes(-1, ncm))) + " left for the context";
        std::printf("GPU (-ngl 99): %s, compute %d.%d, %s free of %s: %s\n", gpu->name.c_str(), gpu->compute_major,
                    gpu->compute_minor, human_bytes(double(gpu->free_bytes)).c_str(),
                    human_bytes(double(gpu->total_bytes)).c_str(), verdict.c_str());
    } else {
        std::printf("GPU (-ngl 99): none (%s)\n", gpu.error().message.c_str());
    }
    std::printf("\nhyper-parameters:\n");
    for (auto& [k, v] : j["hparams"].items()) std::printf("  %-20s %s\n", k.c_str(), v.dump().c_str());
    std::printf("\n%-40s %-6s %-28s %14s\n", "tensor", "type", "shape", "bytes");
    for (const auto& t : f.tensors())
        std::printf("%-40s %-6s %-28s %14zu\n", t.name.c_str(), traits(t.type).name, t.shape_str().c_str(), t.nbytes);
    return 0;
}

}  // namespace bigmoe::cli
