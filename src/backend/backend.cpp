#include "backend/backend.h"

#include <algorithm>

namespace bigmoe {

Tensor Backend::scratch(int64_t rows, int64_t cols) {
    // Rows are padded to 16 floats (64 bytes) so every row starts aligned.
    const int64_t stride = (cols + 15) / 16 * 16;
    const size_t need = size_t(std::max<int64_t>(rows * stride, 16));
    while (scratch_chunk_ < scratch_chunks_.size() && scratch_chunks_[scratch_chunk_].floats - scratch_used_ < need) {
        ++scratch_chunk_;
        scratch_used_ = 0;
    }
    if (scratch_chunk_ == scratch_chunks_.size()) {
        const size_t floats = std::max<size_t>(need, size_t(1) << 22);
        float* data = static_cast<float*>(alloc(floats * sizeof(float)));
        // A context checks its scratch estimate against the free memory when it is created, so
        // running out here is a failure of that estimate, not of the user's input.
        BM_CHECK(data != nullptr);
        scratch_chunks_.push_back({data, floats});
        scratch_used_ = 0;
    }
    Tensor t{scratch_chunks_[scratch_chunk_].data + scratch_used_, rows, cols, stride};
    scratch_used_ += need;
    return t;
}

void Backend::reset_scratch() {
    scratch_chunk_ = 0;
    scratch_used_ = 0;
}

void Backend::release_scratch() {
    for (auto& c : scratch_chunks_) dealloc(c.data);
    scratch_chunks_.clear();
    reset_scratch();
}

}  // namespace bigmoe
