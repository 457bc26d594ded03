// Scratch tensors for one forward pass, in chunks of a backend's memory: handed out in order,
// released all at once at the start of the next pass (or back to a mark, for a layer's
// temporaries). A backend owns one; wrappers (the profiler) share the wrapped backend's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace bigmoe {

class Backend;
struct Tensor;

class ScratchArena {
  public:
    explicit ScratchArena(Backend& be) : be_(be) {}
    ~ScratchArena() { release(); }
    ScratchArena(const ScratchArena&) = delete;
    ScratchArena& operator=(const ScratchArena&) = delete;

    // rows x cols floats, each row starting on 64 bytes.
    Tensor take(int64_t rows, int64_t cols);
    void reset() { chunk_ = used_ = 0; }
    struct Mark {
        size_t chunk, used;
    };
    Mark mark() const { return {chunk_, used_}; }
    void rewind(Mark m) {
        chunk_ = m.chunk;
        used_ = m.used;
    }
    // Gives the chunks back to the backend.
    void release();

  private:
    struct Chunk {
        float* data;
        size_t floats;
    };
    Backend& be_;
    std::vector<Chunk> chunks_;
    size_t chunk_ = 0, used_ = 0;
};

}  // namespace bigmoe
