/* Memory-efficient scaled-dot-product attention (flash-attention style), forward and backward.
 *
 * Layout is diffusers' after to_q/to_k/to_v: q [B, Lq, H*D], k [B, Lk, H*D], v [B, Lk, H*Dv], head h
 * owning columns h*D .. h*D+D-1 (`view(B, L, H, D).transpose(1, 2)`). The score matrix only ever
 * exists as one [key block x query tile] tile per thread; the backward recomputes it from the saved
 * per-row logsumexp (FlashAttention-2). The tensor-level wrapper is rb_attention in ops.h. */
#ifndef RB_OPS_ATTENTION_H
#define RB_OPS_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#include "core/dtype.h"

/* Shapes and strides (in elements) of one attention call. q/k/v rows are contiguous along the
 * channel dim; batch and row strides are free, so slices along L work without a copy. The additive
 * mask (f32, or absent) is read at m_sb*b + m_sh*h + m_sq*i + m_sk*j: a broadcast dim has stride 0. */
typedef struct rb_attn_shape {
    int B, H, Lq, Lk, D, Dv;
    int64_t q_sb, q_sl, k_sb, k_sl, v_sb, v_sl;
    int64_t m_sb, m_sh, m_sq, m_sk;
    float scale; /* already resolved: the caller turns 0 into 1/sqrt(D) */
    int bf16;    /* forward: score and P V tiles in bf16 with f32 accumulation (needs AVX512-BF16,
                    else ignored); softmax, statistics and output stay f32. The backward is f32. */
} rb_attn_shape;

/* Per-thread scratch sizes in floats (independent of Lq and Lk). */
size_t attention_forward_scratch(const rb_attn_shape *s);
size_t attention_backward_scratch(const rb_attn_shape *s);

/* out [B, Lq, H*Dv] contiguous (=); lse [B, H, Lq] (=) the natural-log logsumexp of each scaled,
 * masked score row, or NULL when not needed. scratch: nthreads * attention_forward_scratch floats,
 * 64-byte aligned. mask may be NULL. */
void attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, const float *mask,
                       const rb_attn_shape *s, float *scratch, int nthreads);

/* Floats of private dQ buffers the backward needs when B*H < nthreads (keys are then split into
 * chunks, each with its own dQ, summed at the end): 0 otherwise. Independent of Lk. */
size_t attention_backward_dq_part(const rb_attn_shape *s, int nthreads);

/* dq [B, Lq, H*D], dk [B, Lk, H*D], dv [B, Lk, H*Dv], all contiguous, ACCUMULATED (+=); any may be
 * NULL to skip it. dout, out [B, Lq, H*Dv] contiguous; lse from attention_forward. delta: B*H*Lq
 * floats of scratch (rowsum(dout * out)); dq_part: attention_backward_dq_part floats (NULL when 0
 * or dq is NULL); scratch: nthreads * attention_backward_scratch floats. There is no gradient for
 * the mask. Parallel over (b, h, chunk of keys). */
void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *q,
                        const float *k, const float *v, const float *mask, const float *lse,
                        const rb_attn_shape *s, float *delta, float *dq_part, float *scratch, int nthreads);


#endif
