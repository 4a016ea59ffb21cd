/* Raw kernels behind rb_embedding and rb_gather (ops.h). Indices arrive here as contiguous int64
 * arrays already checked to be in range by the tensor-level ops. */
#ifndef RB_OPS_GATHER_H
#define RB_OPS_GATHER_H

#include <stdint.h>

#include "core/dtype.h"

/* out [n, C] (written, =): row ids[k] of table [V, C] (rows `ld` elements apart, elements
 * contiguous) for k < n, converted to f32 from the table's dtype (f32, f16 or bf16). */
void embedding_forward(float *out, const void *table, rb_dtype table_dtype, int64_t ld, const int64_t *ids,
                       int64_t n, int64_t C);
/* dtable [V, C] (contiguous f32): dtable[ids[k]] += dout[k] (accumulated, +=); repeated ids add up. */
void embedding_backward(float *dtable, const float *dout, const int64_t *ids, int64_t n, int64_t C);

/* torch.gather: out[i] (written, =) = inp[i with coordinate `dim` replaced by index[i]] for every
 * multi-index i of `shape` (the index's shape; out and index contiguous in it; inp strided). */
void gather_forward(float *out, const float *inp, const int64_t *inp_stride, const int64_t *index, int ndim,
                    const int64_t *shape, int dim);
/* dinp (strided) [same place as the forward read] += dout[i] (accumulated, +=). */
void gather_backward(float *dinp, const int64_t *dinp_stride, const float *dout, const int64_t *index, int ndim,
                     const int64_t *shape, int dim);

#endif
