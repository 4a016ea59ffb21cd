/* Normalisation: raw kernels on plain f32 pointers (tensor-level wrappers in ops.h).
 * Forward kernels write (=) out and the saved statistics; backward kernels accumulate (+=) into
 * dinp, dweight and dbias, each of which may be NULL when that gradient is not wanted. weight and
 * bias may be NULL in forward (identity affine). */
#ifndef RB_OPS_NORM_H
#define RB_OPS_NORM_H

#include <stdint.h>

/* torch.nn.functional.group_norm: inp [N, C, S] (S = product of the spatial dims), G groups of
 * C/G channels; mean, rstd [N, G] (biased variance, rstd = 1/sqrt(var + eps)); weight, bias [C].
 * Statistics are two-pass with double accumulation, so 20 x 128 x 128 groups keep f32 accuracy. */
void rb_group_norm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                           const float *bias, int64_t N, int64_t C, int64_t S, int64_t G, float eps);
/* scratch: rb_group_norm_scratch(N, C) floats, used when dweight or dbias is set */
int64_t rb_group_norm_scratch(int64_t N, int64_t C);
void rb_group_norm_backward(float *dinp, float *dweight, float *dbias, float *scratch, const float *dout,
                            const float *inp, const float *weight, const float *mean, const float *rstd, int64_t N,
                            int64_t C, int64_t S, int64_t G);

/* layer norm over the last dim: inp [rows, C], mean/rstd [rows], weight/bias [C] */
void rb_layer_norm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight,
                           const float *bias, int64_t rows, int64_t C, float eps);
/* scratch: rb_layer_norm_scratch(rows, C) floats, used when dweight or dbias is set */
int64_t rb_layer_norm_scratch(int64_t rows, int64_t C);
void rb_layer_norm_backward(float *dinp, float *dweight, float *dbias, float *scratch, const float *dout,
                            const float *inp, const float *weight, const float *mean, const float *rstd, int64_t rows,
                            int64_t C);

/* softmax over the last dim (max subtracted, so large inputs do not overflow): inp, out [rows, C] */
void rb_softmax_forward(float *out, const float *inp, int64_t rows, int64_t C);
/* dinp += out * (dout - sum(dout * out)) per row */
void rb_softmax_backward(float *dinp, const float *dout, const float *out, int64_t rows, int64_t C);

#endif
