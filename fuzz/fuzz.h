/* Shared helpers of the libFuzzer targets (fuzz/fuzz_*.c; built and run by `make fuzz`, see
 * docs/security.md). Each target feeds the input to one untrusted-input entry point and then reads
 * every byte the parser says is valid, so AddressSanitizer sees any view that points past the input. */
#ifndef RB_FUZZ_H
#define RB_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/tensor.h"
#include "relbooth.h"

/* A budget small enough that "declared size far beyond the input" must fail as RB_ERR_OOM or a
 * format error rather than make libFuzzer's RSS limit kill the run. */
#define FUZZ_MEM_LIMIT ((size_t)256 << 20)

static volatile uint8_t fuzz_sink;

/* Reads the bytes of every element a (possibly strided) view can reach: the first and the last
 * element, and all of them when the view is small. Strides are non-negative in every format we read. */
static inline void fuzz_touch(const rb_tensor *t) {
    if (!t->data)
        return;
    int64_t numel = rb_numel(t);
    if (numel <= 0)
        return;
    size_t es = rb_dtypes[t->dtype].size;
    int64_t last = 0;
    for (int d = 0; d < t->ndim; d++)
        last += (t->shape[d] - 1) * t->stride[d];
    const uint8_t *p = (const uint8_t *)t->data;
    uint8_t acc = 0;
    for (size_t b = 0; b < es; b++)
        acc ^= p[b] ^ p[(size_t)last * es + b];
    if (rb_is_contiguous(t) && numel <= 4096)
        for (size_t b = 0; b < (size_t)numel * es; b++)
            acc ^= p[b];
    fuzz_sink ^= acc;
}

#endif
