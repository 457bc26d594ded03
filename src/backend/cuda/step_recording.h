// A decode step's ops as the CUDA backend records them for replay as a CUDA graph
// (cuda_backend.cu): each op's arguments as 8-byte words behind a tag for its type, so that a
// later step's ops are compared with the recording word for word.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

namespace bigmoe::cuda {

template <class A>
struct OpTag {
    static constexpr char id = 0;
};

// A step's ops as recorded, and the graph they were captured into. A replayed step's ops are
// compared with the recorded ones word for word: the host forms them between one token's logits
// and the next step's graph launch, where hashing their arguments a byte at a time cost a 35B
// decode token ~4% (H100, tg128 316.5 / 317.2 t/s comparing, 300.7 / 306.1 hashing).
struct Recording {
    std::vector<uint64_t> words;  // each op's type tag, then its arguments
    std::vector<size_t> starts;   // where each op's words begin
    std::vector<std::function<void(cudaStream_t)>> ops;
    cudaGraphExec_t exec = nullptr;
    int seen = 0, misses = 0;

    void forget() {
        if (exec) cudaGraphExecDestroy(exec);
        exec = nullptr;
        words.clear();
        starts.clear();
        ops.clear();
    }
    template <class A>
    static uint64_t tag() {
        return uint64_t(reinterpret_cast<uintptr_t>(&OpTag<A>::id));
    }
    template <class A>
    void add(const A& a) {
        static_assert(std::is_trivially_copyable_v<A> && sizeof(A) % 8 == 0, "8-byte fields only (no padding)");
        starts.push_back(words.size());
        words.push_back(tag<A>());
        const size_t at = words.size();
        words.resize(at + sizeof(A) / 8);
        std::memcpy(words.data() + at, &a, sizeof a);
    }
    // Whether op i was a with these arguments.
    template <class A>
    bool is(size_t i, const A& a) const {
        if (i >= starts.size()) return false;
        const size_t s = starts[i], e = i + 1 < starts.size() ? starts[i + 1] : words.size();
        return e - s == 1 + sizeof(A) / 8 && words[s] == tag<A>() &&
               std::memcmp(words.data() + s + 1, &a, sizeof a) == 0;
    }
};

// Steps of up to this many rows are recorded (decode, verification, serving); prefill batches
// rarely repeat their shape and run as they come.
constexpr int64_t k_graph_max_rows = 64;
// A step shape whose ops keep changing under its recording stops being recorded.
constexpr int k_graph_max_misses = 3;
constexpr size_t k_graph_max_recordings = 64;

}  // namespace bigmoe::cuda
