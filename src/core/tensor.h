/* Tensors: a dtype, up to 5 dimensions in PyTorch order, strides in elements, and a data pointer.
 * A tensor never owns its memory: data lives in an arena, in a memory-mapped file, or in a block
 * from rb_alloc that the creator frees. Views share data and only change shape/stride/offset. */
#ifndef RB_CORE_TENSOR_H
#define RB_CORE_TENSOR_H

#include <stdint.h>
#include <stdio.h>

#include "dtype.h"
#include "status.h"

#define RB_MAX_DIMS 5

typedef struct rb_tensor {
    rb_dtype dtype;
    int ndim;
    int64_t shape[RB_MAX_DIMS];
    int64_t stride[RB_MAX_DIMS]; /* elements, not bytes */
    void *data;                  /* address of element [0, ..., 0] */
    /* training: gradient (f32, contiguous, same shape), set up by the tape on first use or by the
     * owner of a parameter; requires_grad marks leaves we want gradients for. */
    struct rb_tensor *grad;
    int requires_grad;
    const char *name; /* optional; shown in tape dumps and errors */
} rb_tensor;

int64_t rb_numel(const rb_tensor *t);
size_t rb_nbytes(const rb_tensor *t); /* numel * element size (of the viewed elements) */
int rb_is_contiguous(const rb_tensor *t);
int rb_same_shape(const rb_tensor *a, const rb_tensor *b);

/* A contiguous tensor header over existing memory. */
rb_tensor rb_tensor_wrap(void *data, rb_dtype dtype, int ndim, const int64_t *shape);
void rb_set_contiguous_strides(rb_tensor *t);

/* Heap tensor from rb_alloc (counted against the memory budget); free with rb_tensor_free. */
rb_status rb_tensor_alloc(rb_tensor *t, rb_dtype dtype, int ndim, const int64_t *shape, const char *what);
void rb_tensor_free(rb_tensor *t);

/* Views (no copy). Each checks its arguments and returns RB_ERR_INVALID with a message. */
rb_status rb_view_reshape(rb_tensor *out, const rb_tensor *t, int ndim, const int64_t *shape); /* needs contiguous; one -1 allowed */
rb_status rb_view_permute(rb_tensor *out, const rb_tensor *t, const int *perm);
rb_status rb_view_slice(rb_tensor *out, const rb_tensor *t, int dim, int64_t start, int64_t end); /* [start, end) */
rb_status rb_view_select(rb_tensor *out, const rb_tensor *t, int dim, int64_t index); /* drops dim */
rb_status rb_view_unsqueeze(rb_tensor *out, const rb_tensor *t, int dim);

/* Strided copy with dtype conversion; shapes must match. */
rb_status rb_tensor_copy(rb_tensor *dst, const rb_tensor *src);

/* f32 value of element at flat row-major index i of the (possibly strided) view. For tests/tools. */
double rb_tensor_get(const rb_tensor *t, int64_t i);

/* "[2, 77, 2048]" into buf; returns buf. */
const char *rb_shape_str(const rb_tensor *t, char *buf, size_t n);

#endif
