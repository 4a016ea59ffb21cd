/* 2-d convolution through oneDNN (groups = 1, no dilation): the raw kernels behind rb_conv2d.
 * Activations are f32 NCHW, weights OIHW in f32, bf16 or f16; `compute` is RB_F32 or RB_BF16 with
 * f32 accumulation and f32 output. oneDNN picks its own (blocked) layouts; the reorders to and from
 * our plain layouts go through `scratch`, which is released before returning. */
#ifndef RB_OPS_CONV_H
#define RB_OPS_CONV_H

#include "core/arena.h"

typedef struct rb_conv_shape {
    int64_t N, C, H, W; /* input [N, C, H, W] */
    int64_t O, kh, kw;  /* weight [O, C, kh, kw] */
    int64_t sh, sw, ph, pw;
    int64_t Ho, Wo;     /* output [N, O, Ho, Wo], Ho = (H + 2 ph - kh) / sh + 1 */
} rb_conv_shape;

/* Fills Ho/Wo and checks the shape; RB_ERR_INVALID with a message when it makes no sense. */
rb_status conv2d_shape(rb_conv_shape *s);

/* out [N, O, Ho, Wo] = conv(inp, weight) + bias[O] (bias may be NULL). frozen: weight memory is
 * read-only, so its converted/reordered copy may be cached. */
rb_status conv2d_forward(rb_arena *scratch, float *out, const float *inp, const void *weight, rb_dtype wdt,
                         const float *bias, const rb_conv_shape *s, rb_dtype compute, int frozen);

/* Each gradient is ACCUMULATED (+=); NULL skips it: dinp [N, C, H, W] (backward data in `compute`
 * with f32 accumulation and an f32 result: with RB_BF16, dout and the weight are rounded to bf16, as
 * torch autocast does), dweight [O, C, kh, kw] and dbias [O] (f32). */
rb_status conv2d_backward(rb_arena *scratch, float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const void *weight, rb_dtype wdt, const rb_conv_shape *s,
                          rb_dtype compute);

#endif
