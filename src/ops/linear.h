/* Matrix products through oneDNN matmul: the raw kernels behind rb_linear and rb_matmul.
 * Activations and outputs are f32; weights may be f32, bf16 or f16; `compute` is RB_F32 or RB_BF16
 * (f32 accumulation either way). Scratch (conversions, reorders, oneDNN scratchpad) comes from
 * `scratch` and is released before returning. */
#ifndef RB_OPS_LINEAR_H
#define RB_OPS_LINEAR_H

#include "core/arena.h"

/* A general (batched, broadcast) product c = a @ b. All three have the same ndim (2..5); the batch
 * dims of a and b are each equal to c's or 1. a and b may be strided (transposes are free); c is
 * contiguous f32. */
typedef struct rb_gemm {
    int ndim;
    rb_dtype a_dt, b_dt;         /* a: f32 or bf16; b: f32, bf16 or f16 */
    int64_t a_dims[5], a_str[5]; /* [B.., M, K] */
    int64_t b_dims[5], b_str[5]; /* [B.., K, N] */
    int64_t c_dims[5];           /* [B.., M, N] */
} rb_gemm;

enum {
    RB_GEMM_ACC = 1,      /* c += a @ b instead of c = a @ b */
    RB_GEMM_B_FROZEN = 2, /* b is read-only weight memory: its converted/reordered copy may be cached */
    RB_GEMM_B_ANY = 4,    /* let oneDNN choose b's layout (b is reordered, or taken from the cache) */
};

/* c (= or +=) a @ b (+ bias[N] when bias is non-NULL). */
rb_status rb_gemm_run(rb_arena *scratch, float *c, const void *a, const void *b, const float *bias, const rb_gemm *g,
                      rb_dtype compute, int flags);

/* out [M, N] = inp [M, K] weight[N, K]^T + bias[N] (bias may be NULL). frozen: weight memory is
 * read-only (a loaded checkpoint), so its converted copy may be cached. */
rb_status linear_forward(rb_arena *scratch, float *out, const float *inp, const void *weight, rb_dtype wdt,
                         const float *bias, int64_t M, int64_t K, int64_t N, rb_dtype compute, int frozen);

/* Each gradient is ACCUMULATED (+=); NULL skips it:
 *   dinp [M, K] += dout [M, N] weight [N, K]   (products in `compute`, f32 accumulation: with RB_BF16, dout
 *                                               and the weight are rounded to bf16, as torch autocast does);
 *   dweight [N, K] += dout^T inp               (f32: the gradients of trained weights stay exact);
 *   dbias [N] += sum_m dout. */
rb_status linear_backward(rb_arena *scratch, float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const void *weight, rb_dtype wdt, int64_t M, int64_t K, int64_t N,
                          rb_dtype compute);

/* Batched product of contiguous f32 operands with nb (0..3) batch dims; a_batch / b_batch are each
 * dim equal to the output's batch dim or 1 (broadcast), out_batch = their maximum:
 *   out [B.., M, N] = a [Ba.., M, K] @ b [Bb.., K, N]   (b [Bb.., N, K] when transpose_b). */
rb_status matmul_forward(rb_arena *scratch, float *out, const float *a, const float *b, int nb, const int64_t *a_batch,
                         const int64_t *b_batch, int64_t M, int64_t K, int64_t N, int transpose_b, rb_dtype compute);

/* In f32; ACCUMULATES (+=) into da [Ba.., M, K] and db (b's shape), summing over broadcast batch dims;
 * NULL skips a gradient. */
rb_status matmul_backward(rb_arena *scratch, float *da, float *db, const float *dout, const float *a, const float *b,
                          int nb, const int64_t *a_batch, const int64_t *b_batch, int64_t M, int64_t K, int64_t N,
                          int transpose_b);

/* dbias [N] += sum over rows of dout [M, N] (shared with conv's tests and other callers). */
void rows_sum_accumulate(float *dbias, const float *dout, int64_t M, int64_t N);

#endif
