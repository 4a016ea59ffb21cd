/* Raw kernels behind the shape ops (rb_concat, rb_split, rb_slice, rb_permute, rb_reshape,
 * rb_contiguous in ops.h): N-d strided copies on plain pointers. Strides are in elements, shapes
 * PyTorch-ordered, ndim <= RB_MAX_DIMS. The element loops collapse dimensions that are contiguous
 * in both layouts, so the innermost loop is one long run wherever the layouts allow it. */
#ifndef RB_OPS_SHAPE_H
#define RB_OPS_SHAPE_H

#include <stddef.h>
#include <stdint.h>

/* out[idx] = inp[idx] (written, =) for every index of `shape`, elements of `esize` bytes (any
 * dtype). out and inp must not overlap. */
void strided_copy_forward(void *out, const int64_t *out_stride, const void *inp, const int64_t *inp_stride,
                          int ndim, const int64_t *shape, size_t esize);

/* Its backward for f32 gradients: dinp[idx] += dout[idx] (accumulated, +=). Distinct indices of
 * `shape` must address distinct elements of dinp (true for slices, permutations, concat pieces). */
void strided_copy_backward(float *dinp, const int64_t *dinp_stride, const float *dout, const int64_t *dout_stride,
                           int ndim, const int64_t *shape);

#endif
