/* Elementwise ops with NumPy broadcasting, scaling and full reductions: raw kernels on plain f32
 * pointers (the tensor-level wrappers are declared in ops.h), plus two helpers that the other
 * pointwise families (norm.c, activation.c, loss.c) share. */
#ifndef RB_OPS_ELEMENTWISE_H
#define RB_OPS_ELEMENTWISE_H

#include <stdint.h>

#include "ctx.h"

/* ---- helpers shared by the pointwise op files ---- */

/* x itself when it is contiguous f32, else a contiguous f32 copy in c->arena (floating dtypes
 * only). The copy carries no gradient: ops record the original x on the tape and read values
 * from the copy. NULL (and c->status set) on error. */
rb_tensor *rb_f32_contig(rb_ctx *c, rb_tensor *x, const char *op, const char *arg);

/* Sum of n floats accumulated in double (serial, vectorised; for use inside kernels). */
double rb_dsum_f32(const float *x, int64_t n);
/* sum of x[i] * y[i] in the same manner */
double rb_ddot_f32(const float *x, const float *y, int64_t n);

/* ---- broadcasting ---- */

/* A broadcast of a and b to their common shape, with size-1 dims dropped and adjacent dims merged
 * where both operands allow it, so loops see at most RB_MAX_DIMS (usually 1-3) dims. Strides are
 * in elements of the contiguous operands, 0 along broadcast dims; the output is contiguous. */
typedef struct rb_bcast {
    int nd;                     /* >= 1 */
    int64_t shape[RB_MAX_DIMS]; /* collapsed output shape */
    int64_t sa[RB_MAX_DIMS], sb[RB_MAX_DIMS];
    int64_t n; /* output elements */
} rb_bcast;

/* Plans the broadcast of shapes a [..] and b [..] (NumPy rules: aligned right, equal or 1) and
 * writes the output shape. RB_ERR_INVALID with a message naming op when they do not broadcast. */
rb_status rb_bcast_plan(rb_bcast *p, int *out_ndim, int64_t *out_shape, int a_ndim, const int64_t *a_shape,
                        int b_ndim, const int64_t *b_shape, const char *op);

typedef enum { RB_BIN_ADD, RB_BIN_SUB, RB_BIN_MUL } rb_binop;

/* out = a (op) b over the broadcast p; out written (=). */
void rb_binary_forward(float *out, const float *a, const float *b, const rb_bcast *p, rb_binop op);

/* Gradient for one operand of a broadcast binary op, reduced over the operand's broadcast dims:
 *   dx += sign * sum_broadcast(dout * other)      (other = NULL means 1; accumulated, +=)
 * which = 0 for a (dx has a's shape, other is b), 1 for b (dx has b's shape, other is a).
 * add: da = dout, db = dout; sub: db with sign -1; mul: da = dout * b, db = dout * a. */
void rb_binary_backward(float *dx, const float *dout, const float *other, float sign, const rb_bcast *p,
                        int which);

/* ---- scale and reductions over all elements ---- */

void rb_scale_forward(float *out, const float *x, float s, int64_t n);   /* out = s x (=) */
void rb_scale_backward(float *dx, const float *dout, float s, int64_t n); /* dx += s dout */
double rb_sum_forward(const float *x, int64_t n);                        /* parallel, double accumulation */
void rb_fill_backward(float *dx, float g, int64_t n);                    /* dx += g (sum: g = dout, mean: dout/n) */

#endif
