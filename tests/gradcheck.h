/* Finite-difference gradient check for tensor-level ops.
 *
 * fn builds the op from the inputs; the check seeds d(out) with a fixed random tensor R, runs the
 * tape backward, and compares each input gradient with the central difference of
 * L(x) = sum(out(x) * R), accumulated in double. Inputs with requires_grad = 0 are not checked. */
#ifndef RB_TEST_GRADCHECK_H
#define RB_TEST_GRADCHECK_H

#include "harness.h"
#include "ops/ops.h"

typedef rb_tensor *(*t_op_fn)(rb_ctx *c, rb_tensor **in, void *user);

/* Deterministic uniform(-1, 1) fill. */
static inline void t_fill(float *x, size_t n, unsigned seed) {
    uint64_t s = 0x9E3779B97F4A7C15ull * (seed + 1);
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = (float)((double)(s >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
    }
}

static inline double t_loss(rb_ctx *c, t_op_fn fn, rb_tensor **in, void *user, const float *r) {
    size_t mark = rb_arena_mark(c->arena);
    rb_tape *tape = c->tape;
    c->tape = NULL;
    rb_tensor *out = fn(c, in, user);
    c->tape = tape;
    double l = NAN;
    if (out) {
        l = 0;
        for (int64_t i = 0; i < rb_numel(out); i++)
            l += rb_tensor_get(out, i) * r[i];
    }
    rb_arena_reset(c->arena, mark);
    return l;
}

/* Returns the worst relative error max|num - ana| / max(1, max|num|) over every checked element
 * (inputs of more than max_elems elements are sampled), or INFINITY when the op fails. */
static inline double t_gradcheck(t_op_fn fn, rb_tensor **in, int n_in, void *user, double eps) {
    rb_arena act, grads;
    rb_tape tape;
    rb_ctx c;
    if (rb_arena_init(&act, 256 << 20, "gradcheck activations") || rb_arena_init(&grads, 256 << 20, "gradcheck grads"))
        return INFINITY;
    rb_tape_init(&tape, 64, &grads);
    rb_ctx_init(&c, &act);
    c.tape = &tape;
    double worst = INFINITY;
    rb_tensor *out = fn(&c, in, NULL == user ? NULL : user);
    if (!out) {
        fprintf(stderr, "  gradcheck: op failed: %s\n", rb_last_error());
        goto done;
    }
    int64_t n = rb_numel(out);
    float *r = malloc((size_t)n * sizeof *r);
    t_fill(r, (size_t)n, 1234);
    rb_tensor dout = rb_tensor_wrap(r, RB_F32, out->ndim, out->shape);
    for (int i = 0; i < n_in; i++)
        if (in[i] && in[i]->requires_grad)
            in[i]->grad = NULL;
    if (rb_backward_with(&c, out, &dout) != RB_OK) {
        fprintf(stderr, "  gradcheck: backward failed: %s\n", rb_last_error());
        free(r);
        goto done;
    }
    worst = 0;
    for (int i = 0; i < n_in; i++) {
        rb_tensor *x = in[i];
        if (!x || !x->requires_grad)
            continue;
        if (!x->grad) {
            fprintf(stderr, "  gradcheck: input %d got no gradient\n", i);
            worst = INFINITY;
            continue;
        }
        float *xd = x->data, *g = x->grad->data;
        int64_t m = rb_numel(x), step = m > 64 ? m / 61 + 1 : 1;
        double maxnum = 0, maxerr = 0;
        for (int64_t j = 0; j < m; j += step) {
            float keep = xd[j];
            xd[j] = keep + (float)eps;
            double lp = t_loss(&c, fn, in, user, r);
            xd[j] = keep - (float)eps;
            double lm = t_loss(&c, fn, in, user, r);
            xd[j] = keep;
            double num = (lp - lm) / (2 * eps), err = fabs(num - g[j]);
            if (fabs(num) > maxnum)
                maxnum = fabs(num);
            if (err > maxerr || err != err)
                maxerr = err;
        }
        double rel = maxerr / (maxnum > 1 ? maxnum : 1);
        if (rel > worst || rel != rel)
            worst = rel;
        x->grad = NULL;
    }
    free(r);
done:
    rb_tape_free(&tape);
    rb_arena_free(&act);
    rb_arena_free(&grads);
    return worst;
}

#endif
