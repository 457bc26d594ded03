#include "backend/backend.h"

#include <algorithm>
#include <vector>

#include "core/argmax.h"

namespace bigmoe {

Tensor ScratchArena::take(int64_t rows, int64_t cols) {
    // Rows are padded to 16 floats (64 bytes) so every row starts aligned.
    const int64_t stride = (cols + 15) / 16 * 16;
    const size_t need = size_t(std::max<int64_t>(rows * stride, 16));
    while (chunk_ < chunks_.size() && chunks_[chunk_].floats - used_ < need) {
        ++chunk_;
        used_ = 0;
    }
    if (chunk_ == chunks_.size()) {
        const size_t floats = std::max<size_t>(need, size_t(1) << 22);
        float* data = static_cast<float*>(be_.alloc(floats * sizeof(float)));
        // A context checks its working-buffer estimate against the free memory when it is
        // created, so running out here is a failure of that estimate, not of the user's input.
        BM_CHECK(data != nullptr);
        chunks_.push_back({data, floats});
        used_ = 0;
    }
    Tensor t{chunks_[chunk_].data + used_, rows, cols, stride};
    used_ += need;
    return t;
}

void ScratchArena::release() {
    for (auto& c : chunks_) be_.dealloc(c.data);
    chunks_.clear();
    reset();
}

void Backend::argmax_rows(Tensor x, int32_t* ids) {
    std::vector<float> row(size_t(x.cols));
    for (int64_t r = 0; r < x.rows; ++r) {
        download(row.data(), x.data + r * x.stride, size_t(x.cols) * 4);
        ids[r] = argmax(row.data(), x.cols);
    }
}

void copy_across(Backend& from, Tensor src, Backend& to, Tensor dst) {
    // one copy each way: every ScratchArena pads rows alike, so the strides agree
    BM_CHECK(src.rows == dst.rows && src.cols == dst.cols && src.stride == dst.stride);
    if (src.rows == 0) return;
    thread_local std::vector<float> staging;
    const size_t n = size_t((src.rows - 1) * src.stride + src.cols);
    staging.resize(n);
    from.download(staging.data(), src.data, n * 4);
    to.upload(dst.data, staging.data(), n * 4);
}

Tensor copy_across(Backend& from, Tensor src, Backend& to) {
    Tensor dst = to.scratch(src.rows, src.cols);
    copy_across(from, src, to, dst);
    return dst;
}

const char* op_name(Op op) {
    switch (op) {
        case Op::get_rows:
            return "get_rows";
        case Op::matmul:
            return "matmul";
        case Op::moe:
            return "moe";
        case Op::attention:
            return "attention";
    }
    return "?";
}

}  // namespace bigmoe
