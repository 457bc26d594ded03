// The tensor memory accelerator's copies, their transaction barriers and clusters (sm_90), for
// attention.cu's prefill blocks: a tensor-map box copied into one block's shared memory or into
// the same offset of both blocks of a cluster, a barrier counting its bytes in. On older targets
// each compiles to nothing (and a block is alone in its cluster). Internal linkage, as
// att_merge.cuh.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace bigmoe::cuda {

namespace {

// The PTX for GPUs before Hopper (any GPU from Turing on) has none of these.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define BIGMOE_ATT_BULK 1
#else
#define BIGMOE_ATT_BULK 0
#endif

#if BIGMOE_ATT_BULK
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif
__device__ __forceinline__ void mbar_init(uint64_t* b, uint32_t count) {
#if BIGMOE_ATT_BULK
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory");
#else
    (void)b, (void)count;
#endif
}
// Barrier inits visible to the cluster and to the copies' completions.
__device__ __forceinline__ void mbar_init_fence() {
#if BIGMOE_ATT_BULK
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
// This thread's arrival, announcing `bytes` more to come in the barrier's phase.
__device__ __forceinline__ void mbar_expect(uint64_t* b, uint32_t bytes) {
#if BIGMOE_ATT_BULK
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(b)), "r"(bytes) : "memory");
#else
    (void)b, (void)bytes;
#endif
}
// An arrival on the barrier at b's offset in the cluster's block `rank` (this one or the other).
__device__ __forceinline__ void mbar_arrive_in(uint64_t* b, uint32_t rank) {
#if BIGMOE_ATT_BULK
    asm volatile(
        "{\n\t.reg .b32 r;\n\tmapa.shared::cluster.u32 r, %0, %1;\n\t"
        "mbarrier.arrive.release.cluster.shared::cluster.b64 _, [r];\n\t}" ::"r"(smem_u32(b)),
        "r"(rank)
        : "memory");
#else
    (void)b, (void)rank;
#endif
}
// Waits for the barrier's phase of parity `parity` to complete; CLUSTER: arrivals from the other
// block of the cluster order what it did before them.
template <bool CLUSTER>
__device__ __forceinline__ void mbar_wait(uint64_t* b, uint32_t parity) {
#if BIGMOE_ATT_BULK
    uint32_t done = 0;
    while (!done) {
        if (CLUSTER)
            asm volatile(
                "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2;\n\t"
                "selp.u32 %0, 1, 0, p;\n\t}"
                : "=r"(done)
                : "r"(smem_u32(b)), "r"(parity)
                : "memory");
        else
            asm volatile(
                "{\n\t.reg .pred p;\n\tmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
                "selp.u32 %0, 1, 0, p;\n\t}"
                : "=r"(done)
                : "r"(smem_u32(b)), "r"(parity)
                : "memory");
    }
#else
    (void)b, (void)parity;
#endif
}
// One box of a tensor map (64 keys x 64 values of d of one KV head, from key `key`, values from
// `d0`) into this block's shared memory at dst (1024-byte aligned, 128-byte swizzled rows), or with
// BOTH into the same offset of both blocks of the cluster; each destination's barrier at bar's
// offset counts its 8 KB.
template <bool BOTH>
__device__ __forceinline__ void tma_box(void* dst, const CUtensorMap* map, int d0, int head, int key, uint64_t* bar) {
#if BIGMOE_ATT_BULK
    const uint64_t m = reinterpret_cast<uint64_t>(map);
    if (BOTH)
        asm volatile(
            "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster [%0], "
            "[%1, {%2, %3, %4}], [%5], %6;" ::"r"(smem_u32(dst)),
            "l"(m), "r"(d0), "r"(head), "r"(key), "r"(smem_u32(bar)), "h"(uint16_t(3))
            : "memory");
    else
        asm volatile(
            "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
            "%4}], "
            "[%5];" ::"r"(smem_u32(dst)),
            "l"(m), "r"(d0), "r"(head), "r"(key), "r"(smem_u32(bar))
            : "memory");
#else
    (void)dst, (void)map, (void)d0, (void)head, (void)key, (void)bar;
#endif
}
// Every thread of both blocks of the cluster: what each did before is seen by the other after.
__device__ __forceinline__ void cluster_sync() {
#if BIGMOE_ATT_BULK
    asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}
// This block's place in its cluster: the cluster's blocks and this one's rank (1 and 0 outside
// one, and where the code has no clusters).
struct ClusterPlace {
    uint32_t blocks, rank;
};
__device__ __forceinline__ ClusterPlace cluster_place() {
    ClusterPlace c{1, 0};
#if BIGMOE_ATT_BULK
    asm volatile("mov.u32 %0, %%cluster_nctarank;\n\tmov.u32 %1, %%cluster_ctarank;" : "=r"(c.blocks), "=r"(c.rank));
#endif
    return c;
}

}  // namespace

}  // namespace bigmoe::cuda
