/* Elementwise add/sub/mul with broadcasting, scale, sum, mean: forward against naive double loops,
 * gradients by finite differences and against naive broadcast reductions, shape errors. */
#include "gradcheck.h"
#include "ops/elementwise.h"

static rb_arena g_arena;

static rb_tensor *mk(int nd, const int64_t *shape, unsigned seed) {
    rb_tensor *t = rb_arena_tensor(&g_arena, RB_F32, nd, shape);
    if (t) {
        t_fill(t->data, (size_t)rb_numel(t), seed);
        t->requires_grad = 1;
    }
    return t;
}

/* flat index into t of the broadcast of output multi-index idx (output has ond dims) */
static int64_t bidx(const rb_tensor *t, int ond, const int64_t *idx) {
    int64_t k = 0;
    for (int d = 0; d < t->ndim; d++) {
        int od = d + ond - t->ndim;
        k = k * t->shape[d] + (t->shape[d] == 1 ? 0 : idx[od]);
    }
    return k;
}

static void unravel(int64_t f, int nd, const int64_t *shape, int64_t *idx) {
    for (int d = nd - 1; d >= 0; d--) {
        idx[d] = f % shape[d];
        f /= shape[d];
    }
}

typedef struct {
    int op; /* 0 add, 1 sub, 2 mul */
} binop_user;

static rb_tensor *bin_fn(rb_ctx *c, rb_tensor **in, void *user) {
    int op = ((binop_user *)user)->op;
    return op == 0 ? rb_add(c, in[0], in[1]) : op == 1 ? rb_sub(c, in[0], in[1]) : rb_mul(c, in[0], in[1]);
}

/* forward vs naive, then gradcheck, for shapes a and b under op */
static void check_binary(int op, int na, const int64_t *sa, int nb, const int64_t *sb, int nout, const int64_t *so) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *a = mk(na, sa, 1), *b = mk(nb, sb, 2);
    REQUIRE(a && b, "alloc");
    binop_user u = {op};
    rb_tensor *in[2] = {a, b};
    rb_tensor *y = bin_fn(&c, in, &u);
    REQUIRE(y, "op %d failed: %s", op, rb_last_error());
    REQUIRE(y->ndim == nout, "out ndim %d, expected %d", y->ndim, nout);
    for (int d = 0; d < nout; d++)
        CHECK(y->shape[d] == so[d], "out dim %d = %lld, expected %lld", d, (long long)y->shape[d], (long long)so[d]);
    int64_t idx[RB_MAX_DIMS];
    double worst = 0;
    for (int64_t i = 0; i < rb_numel(y); i++) {
        unravel(i, nout, so, idx);
        double x = ((float *)a->data)[bidx(a, nout, idx)], z = ((float *)b->data)[bidx(b, nout, idx)];
        double ref = op == 0 ? x + z : op == 1 ? x - z : x * z;
        double d = fabs(((float *)y->data)[i] - ref);
        worst = d > worst ? d : worst;
    }
    CHECK(worst < 1e-6, "op %d forward max error %g", op, worst);
    double err = t_gradcheck(bin_fn, in, 2, &u, 1e-2);
    CHECK(err < 1e-3, "op %d gradcheck error %g", op, err);
    rb_arena_reset(&g_arena, mark);
}

static void t_broadcast_forward_and_grad(void) {
    for (int op = 0; op < 3; op++) {
        check_binary(op, 3, (int64_t[]){2, 3, 4}, 3, (int64_t[]){2, 3, 4}, 3, (int64_t[]){2, 3, 4});
        check_binary(op, 3, (int64_t[]){2, 3, 4}, 2, (int64_t[]){3, 1}, 3, (int64_t[]){2, 3, 4});
        check_binary(op, 2, (int64_t[]){3, 1}, 3, (int64_t[]){2, 3, 4}, 3, (int64_t[]){2, 3, 4});
        check_binary(op, 4, (int64_t[]){2, 3, 4, 5}, 4, (int64_t[]){1, 3, 1, 1}, 4, (int64_t[]){2, 3, 4, 5});
        check_binary(op, 1, (int64_t[]){4}, 3, (int64_t[]){2, 3, 4}, 3, (int64_t[]){2, 3, 4});
        check_binary(op, 3, (int64_t[]){2, 1, 4}, 2, (int64_t[]){3, 1}, 3, (int64_t[]){2, 3, 4}); /* both broadcast */
        check_binary(op, 0, (int64_t[]){1}, 2, (int64_t[]){3, 2}, 2, (int64_t[]){3, 2});          /* 0-dim scalar */
        check_binary(op, 5, (int64_t[]){2, 1, 3, 1, 2}, 4, (int64_t[]){2, 1, 4, 1}, 5, (int64_t[]){2, 2, 3, 4, 2});
    }
}

/* A large case: the parallel paths and the chunked last dim (> 512) of the reduction. */
static void t_broadcast_large_backward(void) {
    rb_arena grads;
    rb_tape tape;
    rb_ctx c;
    REQUIRE(rb_arena_init(&grads, 64 << 20, "grads") == RB_OK, "arena");
    rb_tape_init(&tape, 16, &grads);
    rb_ctx_init(&c, &g_arena);
    c.tape = &tape;
    size_t mark = rb_arena_mark(&g_arena);
    const int64_t A = 4, B = 8, L = 1100;
    rb_tensor *x = mk(3, (int64_t[]){A, B, L}, 3), *col = mk(2, (int64_t[]){B, 1}, 4), *row = mk(1, &L, 5);
    rb_tensor *y1 = rb_mul(&c, x, col), *y = rb_add(&c, y1, row);
    REQUIRE(y, "forward: %s", rb_last_error());
    rb_tensor *r = rb_arena_tensor(&g_arena, RB_F32, 3, y->shape);
    t_fill(r->data, (size_t)rb_numel(r), 6);
    REQUIRE(rb_backward_with(&c, y, r) == RB_OK, "backward: %s", rb_last_error());
    const float *R = r->data, *X = x->data, *CO = col->data;
    /* naive: dx = R * col; dcol[b] = sum R x over a, l; drow[l] = sum R over a, b */
    double ex = 0, ec = 0, er = 0;
    for (int64_t b = 0; b < B; b++) {
        double s = 0;
        for (int64_t a = 0; a < A; a++)
            for (int64_t l = 0; l < L; l++) {
                int64_t i = (a * B + b) * L + l;
                s += (double)R[i] * X[i];
                ex = fmax(ex, fabs(((float *)x->grad->data)[i] - (double)R[i] * CO[b]));
            }
        ec = fmax(ec, fabs(((float *)col->grad->data)[b] - s) / (1 + fabs(s)));
    }
    for (int64_t l = 0; l < L; l++) {
        double s = 0;
        for (int64_t i = 0; i < A * B; i++)
            s += R[i * L + l];
        er = fmax(er, fabs(((float *)row->grad->data)[l] - s));
    }
    CHECK(ex < 1e-6 && ec < 1e-5 && er < 1e-5, "grad errors x %g col %g row %g", ex, ec, er);
    rb_tape_free(&tape);
    rb_arena_free(&grads);
    rb_arena_reset(&g_arena, mark);
}

static rb_tensor *square_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_mul(c, in[0], in[0]); }
static rb_tensor *scale_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_scale(c, in[0], -2.5f); }
static rb_tensor *sum_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_sum(c, in[0]); }
static rb_tensor *mean_fn(rb_ctx *c, rb_tensor **in, void *user) { return rb_mean(c, in[0]); }

static void t_scale_sum_mean(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *x = mk(3, (int64_t[]){3, 4, 5}, 7);
    rb_tensor *in[1] = {x};
    rb_tensor *s = rb_scale(&c, x, -2.5f), *sm = rb_sum(&c, x), *mn = rb_mean(&c, x);
    REQUIRE(s && sm && mn, "ops: %s", rb_last_error());
    double ref = 0;
    for (int i = 0; i < 60; i++) {
        CHECK(((float *)s->data)[i] == ((float *)x->data)[i] * -2.5f, "scale %d", i);
        ref += ((float *)x->data)[i];
    }
    CHECK(sm->ndim == 0 && mn->ndim == 0 && rb_numel(sm) == 1, "0-dim outputs");
    CHECK(fabs(((float *)sm->data)[0] - ref) < 1e-5, "sum %g vs %g", ((float *)sm->data)[0], ref);
    CHECK(fabs(((float *)mn->data)[0] - ref / 60) < 1e-6, "mean %g vs %g", ((float *)mn->data)[0], ref / 60);
    CHECK(t_gradcheck(square_fn, in, 1, NULL, 1e-2) < 1e-3, "x*x gradient (same tensor twice)");
    CHECK(t_gradcheck(scale_fn, in, 1, NULL, 1e-2) < 1e-3, "scale gradient");
    CHECK(t_gradcheck(sum_fn, in, 1, NULL, 1e-2) < 1e-3, "sum gradient");
    CHECK(t_gradcheck(mean_fn, in, 1, NULL, 1e-2) < 1e-3, "mean gradient");
    rb_arena_reset(&g_arena, mark);
}

/* sum of 2^22 + 1 values of 1 + 1e-4: naive float accumulation would be off by ~10%. */
static void t_sum_accuracy(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    int64_t n = (1 << 22) + 1;
    rb_tensor *x = rb_arena_tensor(&g_arena, RB_F32, 1, &n);
    REQUIRE(x, "alloc");
    float v = 1.0001f;
    for (int64_t i = 0; i < n; i++)
        ((float *)x->data)[i] = v;
    rb_tensor *s = rb_sum(&c, x), *m = rb_mean(&c, x);
    REQUIRE(s && m, "sum");
    double ref = (double)v * (double)n;
    CHECK(fabs(((float *)s->data)[0] - ref) / ref < 1e-7, "sum %.9g vs %.9g", ((float *)s->data)[0], ref);
    CHECK(fabs(((float *)m->data)[0] - v) < 1e-7, "mean %.9g", ((float *)m->data)[0]);
    rb_arena_reset(&g_arena, mark);
}

/* A permuted (non-contiguous) input is read through its strides. */
static void t_strided_input(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *x = mk(2, (int64_t[]){3, 4}, 8), *b = mk(1, (int64_t[]){3}, 9), xt;
    REQUIRE(rb_view_permute(&xt, x, (int[]){1, 0}) == RB_OK, "permute");
    rb_tensor *y = rb_add(&c, &xt, b); /* [4, 3] + [3] */
    REQUIRE(y && y->shape[0] == 4 && y->shape[1] == 3, "add: %s", rb_last_error());
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            CHECK(((float *)y->data)[i * 3 + j] == ((float *)x->data)[j * 4 + i] + ((float *)b->data)[j], "y[%d,%d]",
                  i, j);
    rb_arena_reset(&g_arena, mark);
}

static void t_errors(void) {
    rb_ctx c;
    rb_ctx_init(&c, &g_arena);
    size_t mark = rb_arena_mark(&g_arena);
    rb_tensor *a = mk(2, (int64_t[]){2, 3}, 1), *b = mk(1, (int64_t[]){4}, 2), *d = mk(2, (int64_t[]){3, 2}, 3);
    CHECK(rb_add(&c, a, b) == NULL && c.status == RB_ERR_INVALID, "[2,3] + [4] refused");
    CHECK(strstr(rb_last_error(), "add") && strstr(rb_last_error(), "do not broadcast"), "message: %s",
          rb_last_error());
    CHECK(rb_mul(&c, a, a) == NULL, "status is sticky: later ops return NULL");
    rb_ctx_clear(&c);
    CHECK(rb_mul(&c, a, d) == NULL && strstr(rb_last_error(), "mul"), "[2,3] * [3,2] refused: %s", rb_last_error());
    rb_ctx_clear(&c);
    CHECK(rb_sum(&c, NULL) == NULL && c.status == RB_ERR_INVALID, "NULL input");
    rb_ctx_clear(&c);
    rb_tensor *ids = rb_arena_tensor(&g_arena, RB_I64, 1, (int64_t[]){3});
    CHECK(rb_scale(&c, ids, 2.0f) == NULL && strstr(rb_last_error(), "floating"), "integer input refused: %s",
          rb_last_error());
    rb_arena_reset(&g_arena, mark);
}

int main(void) {
    if (rb_arena_init(&g_arena, 128 << 20, "test arena") != RB_OK)
        return 1;
    RUN(t_broadcast_forward_and_grad);
    RUN(t_broadcast_large_backward);
    RUN(t_scale_sum_mean);
    RUN(t_sum_accuracy);
    RUN(t_strided_input);
    RUN(t_errors);
    rb_arena_free(&g_arena);
    return t_done();
}
