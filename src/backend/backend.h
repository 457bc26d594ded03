// The Backend interface: the only way models compute. A backend owns device memory (activations,
// caches, recurrent state), may repack weights, and implements the ops below. Models never touch
// tensor data directly, so CUDA and Vulkan backends can be added without changing the models.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/scratch_arena.h"
#include "core/result.h"
#include "gguf/gguf_file.h"
#include "quant/dtype.h"

namespace bigmoe {

// A 2-D f32 activation tensor in backend memory: rows x cols, row-major, `stride` floats between
// rows. For a batch, rows are tokens.
struct Tensor {
    float* data = nullptr;
    int64_t rows = 0;
    int64_t cols = 0;
    int64_t stride = 0;

    float* row(int64_t r) const { return data + r * stride; }
    Tensor cols_view(int64_t c0, int64_t nc) const { return {data + c0, rows, nc, stride}; }
    Tensor rows_view(int64_t r0, int64_t nr) const { return {data + r0 * stride, nr, cols, stride}; }
};

// A weight tensor from the model file. 2-D: ne[1] rows (outputs) of ne[0] inputs. 3-D expert
// stacks: ne[2] matrices, expert e at byte e * expert_bytes.
struct Weight {
    const gguf::TensorInfo* info = nullptr;
    DType type = DType::F32;
    int64_t ne[4] = {1, 1, 1, 1};
    size_t row_bytes = 0;
    size_t expert_bytes = 0;
    const void* data = nullptr;    // host bytes (the file mapping)
    void* backend_data = nullptr;  // a backend's own copy or repacked layout, if any
    // Whether the model multiplies by it (matmul, moe); false for lookup tables (get_rows) and
    // blocks that do not run, which a backend then need not prepare for products.
    bool multiplied = true;

    int64_t n_in() const { return ne[0]; }
    int64_t n_out() const { return ne[1]; }
    const std::string& name() const { return info->name; }
};

// The tokens of one sequence inside a batch: rows [first, first + n_tokens), positions
// pos0 .. pos0 + n_tokens - 1 (each sequence's tokens are contiguous in the batch).
struct SeqSpan {
    int seq = 0;
    int64_t first = 0;
    int64_t n_tokens = 0;
    int64_t pos0 = 0;
};

// One layer's KV cache for one sequence: rows of n_head_kv * head_dim values per position.
struct KvBlock {
    void* k = nullptr;
    void* v = nullptr;
    DType type_k = DType::F32;  // a type Backend::supports(Op::attention, ...)
    DType type_v = DType::F32;
    int64_t capacity = 0;  // positions
};

// One GDN layer's recurrent state for one sequence, as a ring of n_slots snapshots. The current
// state is slot `head`; processing token i of a batch reads slot (head + i) % n_slots and writes
// slot (head + i + 1) % n_slots, so the last n_slots - 1 states stay available for rollback.
struct RecurrentRing {
    float* conv = nullptr;  // n_slots x [conv_dim][k_conv - 1]
    float* ssm = nullptr;   // n_slots x [H_v][d_v][d_k]
    int n_slots = 1;
    int head = 0;
};

// What one forward pass works on besides its activations: the sequences' spans in the batch and,
// per layer, each span's state (kv for attention layers, rs for recurrent ones, [layer][span]).
// Handed to the backend once per pass (Backend::begin_batch), so a device backend uploads it
// once instead of receiving host vectors on every op.
struct BatchState {
    std::vector<SeqSpan> spans;
    std::vector<std::vector<KvBlock*>> kv;
    std::vector<std::vector<RecurrentRing*>> rs;
    // The step ends with argmax_rows on its logits: a backend that records steps keeps such
    // steps apart from those whose logits are read back.
    bool argmax = false;
    // The batch's token ids, as get_rows will be given them (a backend may send them with the
    // batch's other data); with ids_from_argmax they are placeholders, and the ids are the last
    // argmax_rows_start's, row for row, still on the backend (Backend::chains_greedy).
    const int32_t* tokens = nullptr;
    int64_t n_tokens = 0;
    bool ids_from_argmax = false;
};

// Ops whose support depends on a type: the weight type of get_rows, matmul and moe, the cache
// type (K or V) of attention. Every other op is f32 and every backend has it.
enum class Op { get_rows, matmul, moe, attention };
const char* op_name(Op op);

struct AttentionParams {
    int64_t n_head = 0, n_head_kv = 0, head_dim = 0;
    float scale = 1.0f;
};

struct GdnParams {
    int64_t n_k_heads = 0, n_v_heads = 0, d_k = 0, d_v = 0, conv_kernel = 4;
    float eps = 1e-6f;
};

struct MoeWeights {
    const Weight* gate = nullptr;     // {n_embd, n_ff, n_expert}
    const Weight* up = nullptr;       // {n_embd, n_ff, n_expert}
    const Weight* down = nullptr;     // {n_ff, n_embd, n_expert}
    const Weight* gate_up = nullptr;  // alternative fused {n_embd, 2 n_ff, n_expert}
    int64_t n_expert = 0, n_expert_used = 0, n_ff = 0;
};

// The sizes a model's layers give the ops whose kernels take bounded sizes (0: no such layer).
struct OpShapes {
    int64_t head_dim = 0;     // attention
    int64_t conv_kernel = 0;  // the Gated DeltaNet's causal conv
    int64_t ssm_d_k = 0;      // the Gated DeltaNet's key size
};

// The interface every backend implements; it holds no state of its own (a backend's scratch is
// its ScratchArena). The helpers below only call the virtual functions.
class Backend {
  public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;
    // The device it computes on, for logs and bench records ("" for the host's CPU).
    virtual std::string device_name() const { return {}; }
    virtual int n_threads() const = 0;
    // Whether op runs with this weight or cache type here; callers refuse what is not, with a
    // message, before any op runs.
    virtual bool supports(Op op, DType type) const = 0;
    // Whether the ops run layers of these sizes here (a message saying which does not); models
    // ask before loading a weight.
    virtual Result<void> check_shapes(const OpShapes&) const { return {}; }
    // Marks the part of the model the following ops belong to (for profiling).
    virtual void annotate(const char* scope) = 0;
    // Called once per weight after loading; a backend may upload or repack it.
    virtual Result<void> prepare_weight(Weight& w) = 0;

    // ---- memory
    // Bytes that new allocations can still take (host RAM for the CPU, free device memory for a
    // GPU); callers size caches against it before allocating.
    virtual uint64_t memory_available() const = 0;
    // nullptr when the memory cannot be had; callers turn that into an error.
    virtual void* alloc(size_t bytes) = 0;
    virtual void dealloc(void* p) = 0;
    virtual void upload(void* dst, const void* src, size_t bytes) = 0;
    virtual void download(void* dst, const void* src, size_t bytes) = 0;
    virtual void copy(void* dst, const void* src, size_t bytes) = 0;
    virtual void fill_zero(void* dst, size_t bytes) = 0;

    // Scratch tensors live until reset_scratch() (called at the start of every forward pass);
    // those taken after a mark are released by rewinding to it (per-layer temporaries).
    virtual ScratchArena& scratch_arena() = 0;
    Tensor scratch(int64_t rows, int64_t cols) { return scratch_arena().take(rows, cols); }
    void reset_scratch() { scratch_arena().reset(); }
    using ScratchMark = ScratchArena::Mark;
    ScratchMark scratch_mark() { return scratch_arena().mark(); }
    void scratch_rewind(ScratchMark m) { scratch_arena().rewind(m); }

    // The batch the following ops belong to, until the next call; `b` outlives them.
    virtual void begin_batch(const BatchState& b) = 0;
    // Waits until every op issued so far has finished (a GPU queues them; the CPU's ops finish
    // before they return). The profiler times ops between two of these when the backend has no
    // clock of its own.
    virtual void synchronize() {}
    // The backend's own clock, for the profiler: time_mark() marks the point its queue has reached
    // (a GPU records an event in its stream, so timing an op needs no wait between ops) and
    // returns the mark's number; mark_seconds(a, b) waits for both marks and gives the seconds
    // between them; clear_marks() forgets every mark. -1 from time_mark(): no clock of its own
    // (its ops finish before they return), and the profiler times them on the host.
    virtual int64_t time_mark() { return -1; }
    virtual double mark_seconds(int64_t /*from*/, int64_t /*to*/) { return 0; }
    virtual void clear_marks() {}

    // ---- ops (all shapes row-major; rows are tokens)
    // Greedy sampling where the logits are: ids[r] = argmax of row r of x (core/argmax.h), for
    // x.rows rows, into host memory; it waits for the ops before it. A GPU returns the indices
    // instead of the rows (a 248k vocabulary's row is 1 MB). Here: the rows read back one by one.
    virtual void argmax_rows(Tensor x, int32_t* ids);
    // Greedy chains (Context::decode_greedy_chain): whether this backend takes a step whose token
    // ids are the previous step's argmax (BatchState::ids_from_argmax) before the host has read
    // them, so the host forms step k + 1 while step k runs. argmax_rows_start is argmax_rows
    // without the wait; argmax_rows_end waits for the oldest started one's n ids (at most two
    // outstanding). Called only where chains_greedy() says so; the defaults give no ids (-1).
    virtual bool chains_greedy() const { return false; }
    virtual void argmax_rows_start(Tensor /*x*/) {}
    virtual void argmax_rows_end(int32_t* ids, int64_t n) { std::fill(ids, ids + n, -1); }
    // out[t] = dequant(emb row ids[t])
    virtual void get_rows(const Weight& emb, const int32_t* ids, int64_t n, Tensor out) = 0;
    // RMS norm over groups of w.ne[0] columns (one group = whole row, or one head), times w.
    virtual void rms_norm(Tensor x, const Weight& w, float eps, Tensor out) = 0;
    // out[t][r] = dot(w row r, x[t])
    virtual void matmul(const Weight& w, Tensor x, Tensor out) = 0;
    // Several products of one input (a layer's projections): matmul(*w, x, out) for each. A
    // backend may run them as one job (the CPU: one activation quantization per type, one
    // synchronisation instead of one per product); results are those of matmul.
    struct Product {
        const Weight* w;
        Tensor out;
    };
    virtual void matmuls(Tensor x, const std::vector<Product>& products) {
        for (const Product& p : products) matmul(*p.w, x, p.out);
    }
    virtual void add(Tensor a, Tensor b, Tensor out) = 0;
    // h += y, then out = rms_norm(h) with w (a residual add and the norm after it, which a
    // backend may run as one op; the results are those of add then rms_norm).
    virtual void add_rms_norm(Tensor h, Tensor y, const Weight& w, float eps, Tensor out) {
        add(h, y, h);
        rms_norm(h, w, eps, out);
    }
    // For every group of `group` columns of x, copies columns [offset, offset + width) of the
    // group into out (e.g. the query half of Qwen3.5's interleaved [query | gate] heads).
    virtual void gather_cols(Tensor x, int64_t group, int64_t offset, int64_t width, Tensor out) = 0;
    // out = silu(gate) * up
    virtual void swiglu(Tensor gate, Tensor up, Tensor out) = 0;
    // out = silu(z) * rms_norm(x) with w (the Gated DeltaNet's gated output norm); a backend may
    // run it as one op; the results are those of rms_norm then swiglu(z, ...).
    virtual void rms_norm_gate(Tensor x, const Weight& w, float eps, Tensor z, Tensor out) {
        rms_norm(x, w, eps, out);
        swiglu(z, out, out);
    }
    // out = x * sigmoid(gate)
    virtual void mul_sigmoid(Tensor x, Tensor gate, Tensor out) = 0;
    // out[t] = a[t] + sigmoid(dot(gate_vec, f[t])) * b[t]
    virtual void add_gated(Tensor a, Tensor b, const Weight& gate_vec, Tensor f, Tensor out) = 0;
    // NeoX RoPE, in place, on every head_dim group of x: the first n_rot dims of each head
    // rotate; positions from the batch's spans.
    virtual void rope_neox(Tensor x, int64_t head_dim, int64_t n_rot, float theta) = 0;
    // Attention's inputs from its projections: q and k normalised per head of head_dim (q_norm,
    // k_norm) and NeoX-rotated; with `gated`, qg holds each head's [query | gate] and the gate
    // heads go to gate_out. A backend may do it in one op; the results are those of gather_cols,
    // rms_norm and rope_neox in turn.
    struct AttentionInputs {
        const Weight* q_norm;
        const Weight* k_norm;
        float eps;
        int64_t head_dim, n_rot;
        float theta;
        bool gated;
    };
    virtual void attention_inputs(Tensor qg, Tensor k, const AttentionInputs& a, Tensor q_out, Tensor k_out,
                                  Tensor gate_out) {
        const int64_t D = a.head_dim;
        if (a.gated) {
            gather_cols(qg, 2 * D, 0, D, q_out);
            gather_cols(qg, 2 * D, D, D, gate_out);
            rms_norm(q_out, *a.q_norm, a.eps, q_out);
        } else {
            rms_norm(qg, *a.q_norm, a.eps, q_out);
        }
        rms_norm(k, *a.k_norm, a.eps, k_out);
        rope_neox(q_out, D, a.n_rot, a.theta);
        rope_neox(k_out, D, a.n_rot, a.theta);
    }
    // Stores k, v rows at their positions in each sequence's block of layer il (the batch's
    // kv[il]), then causal attention.
    virtual void attention(Tensor q, Tensor k, Tensor v, const AttentionParams& p, int64_t il, Tensor out) = 0;
    // Routed experts: softmax routing over router_logits, top-k, renormalised weights, grouped
    // expert products; out[t] = sum_k w_k expert_k(x[t]) in top-k order.
    virtual void moe(Tensor x, Tensor router_logits, const MoeWeights& m, Tensor out) = 0;
    // Qwen3.5's gated shared expert beside the routed ones, its gate and up projections of x
    // already made (with the router's, from one input): out = moe(x) + sigmoid(dot(gate_inp, x)) *
    // down(silu(gate) * up). A backend may run it in fewer ops; the results are those of moe,
    // swiglu, matmul and add_gated in turn. `gate` may be overwritten.
    struct SharedExpert {
        Tensor gate, up;
        const Weight* down;
        const Weight* gate_inp;
    };
    virtual void moe_shared(Tensor x, Tensor router_logits, const MoeWeights& m, const SharedExpert& s, Tensor out) {
        moe(x, router_logits, m, out);
        add_shared_expert(x, s, out);
    }
    // Depthwise causal conv (kernel k) over `mixed` with the conv state of layer il's rings (the
    // batch's rs[il]), then SiLU.
    virtual void ssm_conv(Tensor mixed, const Weight& conv_w, const GdnParams& p, int64_t il, Tensor out) = 0;
    // Gated DeltaNet recurrence over u = [Q | K | V] channels with raw beta/alpha projections, on
    // layer il's rings.
    virtual void gated_delta_net(Tensor u, Tensor beta, Tensor alpha, const Weight& dt_bias, const Weight& ssm_a,
                                 const GdnParams& p, int64_t il, Tensor out) = 0;

    // out += the shared expert's gated output, as separate ops (also where the routed experts
    // ran on another backend)
    void add_shared_expert(Tensor x, const SharedExpert& s, Tensor out) {
        swiglu(s.gate, s.up, s.gate);
        Tensor y = scratch(x.rows, s.down->n_out());
        matmul(*s.down, s.gate, y);
        add_gated(out, y, *s.gate_inp, x, out);
    }
};

// repack: products read packed copies of the K-quant weights (backend/cpu/repack.h).
std::unique_ptr<Backend> make_cpu_backend(int n_threads, bool repack = true);

// Copies `src` (on `from`) into `dst` (on `to`, the same shape and stride: both from a
// ScratchArena) through host memory; and into a
// new scratch tensor of `to`. The residual stream crosses a split model this way, and the MoE
// input, router logits and sum cross to and from experts kept on another backend.
void copy_across(Backend& from, Tensor src, Backend& to, Tensor dst);
Tensor copy_across(Backend& from, Tensor src, Backend& to);

}  // namespace bigmoe
