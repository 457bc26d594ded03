#include "models/model.h"
#include "gguf/names.h"

#include "models/registry.h"

namespace bigmoe {

namespace {
// The progress of the load running on this thread; the architectures' loaders call
// Model::load without a place to pass it.
struct ActiveLoad {
    const LoadProgress* fn = nullptr;
    uint64_t done = 0, total = 0;
};
thread_local ActiveLoad t_load;

void report_loaded(uint64_t bytes) {
    if (!t_load.fn || !*t_load.fn) return;
    t_load.done += bytes;
    (*t_load.fn)(t_load.done, t_load.total);
}
}  // namespace

static std::string shape_str(const std::vector<int64_t>& s) {
    std::string r = "{";
    for (size_t i = 0; i < s.size(); ++i) r += (i ? ", " : "") + std::to_string(s[i]);
    return r + "}";
}

Result<const Weight*> Model::load_optional(const std::string& name, std::vector<int64_t> shape, bool expert) {
    const gguf::TensorInfo* ti = file_->tensor(name);
    if (!ti) return static_cast<const Weight*>(nullptr);
    int64_t want[4] = {1, 1, 1, 1};
    for (size_t d = 0; d < shape.size(); ++d) want[d] = shape[d];
    for (int d = 0; d < 4; ++d)
        if (ti->ne[d] != want[d])
            return make_error(file_->path() + ": tensor '" + name + "' has shape " + ti->shape_str() + ", expected " +
                                  shape_str(shape),
                              ErrorKind::corrupt_file);
    Weight w;
    w.info = ti;
    w.type = ti->type;
    for (int d = 0; d < 4; ++d) w.ne[d] = ti->ne[d];
    w.row_bytes = ti->row_bytes;
    w.expert_bytes = ti->row_bytes * size_t(ti->ne[1]);
    w.data = ti->data;
    w.multiplied = multiplied_;
    BM_TRY(backend_->prepare_weight(w));
    report_loaded(ti->nbytes);
    weights_.push_back(w);
    total_bytes_ += ti->nbytes;
    n_params_ += ti->n_elements();
    if (expert && hp_.n_expert > 0) {
        active_bytes_ += ti->nbytes / uint64_t(hp_.n_expert) * uint64_t(hp_.n_expert_used);
        n_active_params_ += ti->n_elements() / hp_.n_expert * hp_.n_expert_used;
    } else if (name != gguf::tensor::token_embd || !file_->tensor(gguf::tensor::output)) {
        // The embedding table is a lookup of one row, unless it doubles as the LM head.
        active_bytes_ += ti->nbytes;
        n_active_params_ += ti->n_elements();
    }
    return &weights_.back();
}

Result<const Weight*> Model::load(const std::string& name, std::vector<int64_t> shape, bool expert) {
    auto w = load_optional(name, shape, expert);
    if (!w) return w.error();
    if (!*w)
        return make_error(
            file_->path() + ": missing tensor '" + name + "' " + shape_str(shape) + " required by " + hp_.arch,
            ErrorKind::corrupt_file);
    return w;
}

Result<const Weight*> Model::load_f32(const std::string& name, std::vector<int64_t> shape) {
    auto w = load(name, std::move(shape));
    if (!w) return w.error();
    if ((*w)->type != DType::F32)
        return make_error(file_->path() + ": tensor '" + name + "' must be F32, found " + traits((*w)->type).name,
                          ErrorKind::corrupt_file);
    return w;
}

Result<void> Model::check_shapes() const {
    OpShapes s;
    if (hp_.n_attention_layers() > 0) s.head_dim = hp_.head_dim;
    if (hp_.n_recurrent_layers() > 0) {
        s.conv_kernel = hp_.ssm_conv_kernel;
        s.ssm_d_k = hp_.ssm_d_state;
    }
    return backend_->check_shapes(s);
}

Result<void> Model::load_output_and_embeddings() {
    if (hp_.n_vocab <= 0)
        return make_error(file_->path() + ": no vocabulary (tokenizer.ggml.tokens missing)", ErrorKind::corrupt_file);
    multiplied_ = file_->tensor(gguf::tensor::output) == nullptr;  // tied: the embedding is the LM head
    auto e = load(gguf::tensor::token_embd, {hp_.n_embd, hp_.n_vocab});
    multiplied_ = true;
    if (!e) return e.error();
    tok_embd_ = *e;
    auto n = load_f32(gguf::tensor::output_norm, {hp_.n_embd});
    if (!n) return n.error();
    output_norm_ = *n;
    auto o = load_optional(gguf::tensor::output, {hp_.n_embd, hp_.n_vocab});
    if (!o) return o.error();
    output_ = *o ? *o : tok_embd_;  // tied embeddings
    return {};
}

void Model::compute_logits(Tensor h, const ForwardBatch& batch, Tensor logits) {
    Backend& be = *backend_;
    const int64_t n_out = int64_t(batch.out_rows.size());
    Tensor sel = be.scratch(n_out, hp_.n_embd);
    for (int64_t i = 0; i < n_out; ++i) be.copy(sel.row(i), h.row(batch.out_rows[size_t(i)]), size_t(hp_.n_embd) * 4);
    Tensor normed = be.scratch(n_out, hp_.n_embd);
    be.rms_norm(sel, *output_norm_, hp_.eps, normed);
    be.matmul(*output_, normed, logits);
}

const std::vector<ArchEntry>& model_registry() {
    static const std::vector<ArchEntry> r = {
        {"qwen3moe", load_qwen3moe},
        {"qwen35", load_qwen35},
        {"qwen35moe", load_qwen35moe},
    };
    return r;
}

Result<std::unique_ptr<Model>> load_model(const gguf::GgufFile& file, Backend& backend, const LoadProgress& progress) {
    auto arch = file.get_string(gguf::key::general_architecture);
    if (!arch) return arch.error();
    uint64_t total = 0;
    for (const auto& t : file.tensors()) total += t.nbytes;
    t_load = {&progress, 0, total};
    struct Reset {
        ~Reset() { t_load = {}; }
    } reset;
    for (const auto& e : model_registry())
        if (*arch == e.name) return e.load(file, backend);
    std::string known;
    for (const auto& e : model_registry()) known += std::string(known.empty() ? "" : ", ") + e.name;
    return make_error(file.path() + ": unsupported architecture '" + *arch + "' (supported: " + known + ")",
                      ErrorKind::unsupported);
}

}  // namespace bigmoe
