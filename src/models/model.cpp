#include "models/model.h"

#include <algorithm>
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
    BM_TRY((expert && loading_experts_ ? loading_experts_ : loading_)->prepare_weight(w));
    weights_.push_back(w);
    if (!counted_) return &weights_.back();
    report_loaded(ti->nbytes);
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

std::vector<Backend*> Model::backends() const {
    std::vector<Backend*> bes = {&backend(0)};
    for (Backend* be : {placement_.experts, &backend()})
        if (be && std::find(bes.begin(), bes.end(), be) == bes.end()) bes.push_back(be);
    return bes;
}

Result<void> Model::init(const gguf::GgufFile& file, HParams hp, const Placement& placement) {
    file_ = &file;
    hp_ = std::move(hp);
    placement_ = placement;
    if (!placement_.output) return make_error("a model placement needs the output's backend", ErrorKind::internal);
    load_on(0);
    OpShapes s;
    if (hp_.n_attention_layers() > 0) s.head_dim = hp_.head_dim;
    if (hp_.n_recurrent_layers() > 0) {
        s.conv_kernel = hp_.ssm_conv_kernel;
        s.ssm_d_k = hp_.ssm_d_state;
    }
    for (Backend* be : backends()) BM_TRY(be->check_shapes(s));
    return {};
}

Result<void> Model::load_output_and_embeddings() {
    if (hp_.n_vocab <= 0)
        return make_error(file_->path() + ": no vocabulary (tokenizer.ggml.tokens missing)", ErrorKind::corrupt_file);
    const bool tied = file_->tensor(gguf::tensor::output) == nullptr;  // the embedding is the LM head
    const bool apart = &backend(0) != &backend();
    loading_ = &backend(0);
    multiplied_ = tied && !apart;
    auto e = load(gguf::tensor::token_embd, {hp_.n_embd, hp_.n_vocab});
    multiplied_ = true;
    if (!e) return e.error();
    tok_embd_ = *e;
    loading_ = &backend();
    auto n = load_f32(gguf::tensor::output_norm, {hp_.n_embd});
    if (!n) return n.error();
    output_norm_ = *n;
    if (tied && apart) {  // the LM head's own copy where it runs
        counted_ = false;
        auto o = load(gguf::tensor::token_embd, {hp_.n_embd, hp_.n_vocab});
        counted_ = true;
        if (!o) return o.error();
        output_ = *o;
    } else {
        auto o = load_optional(gguf::tensor::output, {hp_.n_embd, hp_.n_vocab});
        if (!o) return o.error();
        output_ = *o ? *o : tok_embd_;
    }
    loading_ = &backend(0);
    return {};
}

void Model::enter(Backend* from, Backend& next, const ForwardBatch& batch, std::initializer_list<Tensor*> ts) {
    next.reset_scratch();
    for (Tensor* t : ts) *t = copy_across(*from, *t, next);
    next.begin_batch(*batch.state);
}

void Model::run_layers(const ForwardBatch& batch, const LayerBody& body, Tensor logits) {
    const int64_t T = batch.n_tokens, L = hp_.n_layer;
    Backend* be = &backend(0);
    // a backend that runs only experts begins the pass with the others (its scratch is empty)
    if (Backend* x = placement_.experts; x && x != be && x != &backend()) enter(nullptr, *x, batch, {});
    enter(nullptr, *be, batch, {});
    Tensor h = be->scratch(T, hp_.n_embd);
    be->annotate("embeddings");
    be->get_rows(*tok_embd_, batch.tokens, T, h);
    Tensor a = be->scratch(T, hp_.n_embd);
    be->rms_norm(h, *input_norms_[0], hp_.eps, a);
    for (int64_t il = 0; il < L; ++il) {
        const auto mark = be->scratch_mark();
        Tensor y = body(*be, il, h, a);
        // each residual add runs with the norm after it (the next layer's input norm), on one backend
        Backend& next = il + 1 < L ? backend(il + 1) : backend();
        if (il + 1 < L && &next == be)
            be->add_rms_norm(h, y, *input_norms_[size_t(il + 1)], hp_.eps, a);
        else
            be->add(h, y, h);
        be->scratch_rewind(mark);
        if (&next != be) {
            enter(be, next, batch, {&h});
            be = &next;
            if (il + 1 < L) {
                a = be->scratch(T, hp_.n_embd);
                be->rms_norm(h, *input_norms_[size_t(il + 1)], hp_.eps, a);
            }
        }
    }
    be->annotate("output");
    const int64_t n_out = int64_t(batch.out_rows.size());
    Tensor sel = be->scratch(n_out, hp_.n_embd);
    for (int64_t i = 0; i < n_out; ++i) be->copy(sel.row(i), h.row(batch.out_rows[size_t(i)]), size_t(hp_.n_embd) * 4);
    Tensor normed = be->scratch(n_out, hp_.n_embd);
    be->rms_norm(sel, *output_norm_, hp_.eps, normed);
    be->matmul(*output_, normed, logits);
}

const std::vector<ArchEntry>& model_registry() {
    static const std::vector<ArchEntry> r = {
        {"qwen3moe", load_qwen3moe},
        {"qwen35", load_qwen35},
        {"qwen35moe", load_qwen35moe},
    };
    return r;
}

Result<std::unique_ptr<Model>> load_model(const gguf::GgufFile& file, const Placement& placement,
                                          const LoadProgress& progress) {
    auto arch = file.get_string(gguf::key::general_architecture);
    if (!arch) return arch.error();
    uint64_t total = 0;
    for (const auto& t : file.tensors()) total += t.nbytes;
    t_load = {&progress, 0, total};
    struct Reset {
        ~Reset() { t_load = {}; }
    } reset;
    for (const auto& e : model_registry())
        if (*arch == e.name) return e.load(file, placement);
    std::string known;
    for (const auto& e : model_registry()) known += std::string(known.empty() ? "" : ", ") + e.name;
    return make_error(file.path() + ": unsupported architecture '" + *arch + "' (supported: " + known + ")",
                      ErrorKind::unsupported);
}

}  // namespace bigmoe
