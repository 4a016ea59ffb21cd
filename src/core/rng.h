/* Normal-noise generators that reproduce PyTorch seeds (see docs/rng.md).
 *
 *   rb_rng g;
 *   rb_rng_torch_cpu(&g, 42);            // torch.Generator().manual_seed(42)
 *   rb_rng_randn(&g, latents, 4*128*128); // torch.randn([1,4,128,128], generator=g)
 *
 * CPU: MT19937 + torch's normal_fill (bit-exact with torch 1.13 / 2.x on x86 with AVX2, the default
 *      build; RB_RNG_CPU_SCALAR selects torch's non-AVX2 path, bit-exact given the same glibc libm).
 * CUDA: Philox4x32-10 with torch's thread layout (counter/offset bookkeeping exact; the float
 *      Box-Muller differs from CUDA's device logf/__sincosf by a few ulp, so values are close, not
 *      bit-exact). */
#ifndef RB_CORE_RNG_H
#define RB_CORE_RNG_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef enum rb_rng_kind {
    RB_RNG_TORCH_CPU = 1,
    RB_RNG_TORCH_CUDA = 2,
} rb_rng_kind;

/* Which torch CPU kernel to imitate for float tensors of >= 16 elements. */
typedef enum rb_rng_cpu_path {
    RB_RNG_CPU_AVX2 = 0,   /* normal_fill_AVX2 (avx_mathfun log/sincos, FMA-contracted): x86 torch default */
    RB_RNG_CPU_SCALAR = 1, /* normal_fill with libm logf/cosf/sinf (ATEN_CPU_CAPABILITY=default, ARM) */
} rb_rng_cpu_path;

#define RB_MT_N 624

typedef struct rb_rng {
    rb_rng_kind kind;
    uint64_t seed;
    /* CPU: at::mt19937 state and the cached second Box-Muller sample of normal_distribution<double> */
    uint32_t mt[RB_MT_N];
    int32_t mt_left;
    uint32_t mt_next;
    int has_next_double;
    double next_double;
    rb_rng_cpu_path cpu_path;
    /* CUDA: philox offset (in 32-bit draws per thread, always a multiple of 4) and the launch bound */
    uint64_t philox_offset;
    uint32_t cuda_max_blocks; /* multiProcessorCount * (maxThreadsPerMultiProcessor / 256); 0 = no bound */
} rb_rng;

/* torch.Generator().manual_seed(seed) (also what torch.manual_seed does to the default CPU generator).
 * Only the low 32 bits seed MT19937, as in torch. */
void rb_rng_torch_cpu(rb_rng *g, uint64_t seed);
/* torch.Generator("cuda").manual_seed(seed): philox key = seed, offset 0. */
void rb_rng_torch_cuda(rb_rng *g, uint64_t seed);

/* CUDA outputs for tensors with more elements than 256 * max_blocks depend on the GPU: pass its
 * multiProcessorCount and maxThreadsPerMultiProcessor (e.g. 108 and 2048 on an A100). 0, 0 = no bound
 * (right for any GPU when numel <= 256 * SMs * (maxThreadsPerSM / 256), e.g. all SD/SDXL latents on
 * GPUs with >= 32 SMs). */
void rb_rng_cuda_set_device(rb_rng *g, uint32_t sm_count, uint32_t max_threads_per_sm);

/* Fills out[0..n) exactly as torch.randn(n) (any shape with numel n, float32, contiguous) would with
 * this generator, and advances its state as torch does. */
rb_status rb_rng_randn(rb_rng *g, float *out, int64_t n);
/* torch.rand(n) (float32 uniform [0, 1)); CPU generator only. */
rb_status rb_rng_rand(rb_rng *g, float *out, int64_t n);

/* Raw draws (tests, other distributions): the next MT19937 32-bit output / philox block. */
uint32_t rb_rng_mt_next(rb_rng *g);
void rb_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* Generator state as portable bytes (little-endian, versioned) for bit-exact training resume. */
size_t rb_rng_state_size(void);
rb_status rb_rng_state_get(const rb_rng *g, void *buf, size_t size);
rb_status rb_rng_state_set(rb_rng *g, const void *buf, size_t size);

#endif
