/* Shape ops: concat, split, slice, permute, reshape, contiguous against naive index loops,
 * gradients by finite differences (compositions included), views, and bad arguments. */
#include "util.h"

#include "ops/shape.h"

static rb_arena arena, grads;
static rb_ctx cx;
static rb_tape tape;

/* A fresh context over an emptied arena (no tape). */
static rb_ctx *ctx(void) { return t_fresh_ctx(&arena, &cx, 64 << 20); }

/* The same with a fresh tape. */
static rb_ctx *ctx_tape(void) {
    rb_ctx *c = ctx();
    if (!grads.base && (rb_arena_init(&grads, 16 << 20, "test grads") != RB_OK || rb_tape_init(&tape, 64, &grads)))
        return NULL;
    rb_arena_reset(&grads, 0);
    rb_tape_reset(&tape);
    c->tape = &tape;
    return c;
}

static float *F(const rb_tensor *t) { return t->data; }

/* ---- concat ---- */

static void t_concat(void) {
    /* a [2, 3, 4], b [2, 1, 4] and v [2, 2, 4] (a permuted, strided view of p [2, 4, 2]) on dim 1 */
    float a[24], b[8], p[16];
    t_fill(a, 24, 1);
    t_fill(b, 8, 2);
    t_fill(p, 16, 3);
    rb_tensor ta = rb_tensor_wrap(a, RB_F32, 3, (int64_t[]){2, 3, 4});
    rb_tensor tb = rb_tensor_wrap(b, RB_F32, 3, (int64_t[]){2, 1, 4});
    rb_tensor tp = rb_tensor_wrap(p, RB_F32, 3, (int64_t[]){2, 4, 2}), tv; /* viewed as [2, 2, 4] */
    REQUIRE(rb_view_permute(&tv, &tp, (int[]){0, 2, 1}) == RB_OK, "view");
    rb_ctx *c = ctx();
    rb_tensor *xs[3] = {&ta, &tb, &tv};
    rb_tensor *o = rb_concat(c, xs, 3, 1);
    REQUIRE(o != NULL, "concat: %s", rb_last_error());
    CHECK(o->ndim == 3 && o->shape[0] == 2 && o->shape[1] == 6 && o->shape[2] == 4, "shape");
    int bad = 0;
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < 6; j++)
            for (int k = 0; k < 4; k++) {
                float want = j < 3 ? a[(n * 3 + j) * 4 + k] : j < 4 ? b[n * 4 + k] : p[(n * 4 + k) * 2 + (j - 4)];
                bad += F(o)[(n * 6 + j) * 4 + k] != want;
            }
    CHECK(bad == 0, "dim 1: %d wrong", bad);
    /* last dim (as -1) and first dim */
    rb_tensor *xl[2] = {&ta, &ta};
    rb_tensor *ol = rb_concat(c, xl, 2, -1);
    REQUIRE(ol != NULL && ol->shape[2] == 8, "dim -1: %s", rb_last_error());
    bad = 0;
    for (int r = 0; r < 6; r++)
        for (int k = 0; k < 8; k++)
            bad += F(ol)[r * 8 + k] != a[r * 4 + k % 4];
    CHECK(bad == 0, "dim -1: %d wrong", bad);
    rb_tensor *o0 = rb_concat(c, xl, 2, 0);
    REQUIRE(o0 != NULL && o0->shape[0] == 4, "dim 0");
    CHECK(memcmp(F(o0), a, sizeof a) == 0 && memcmp(F(o0) + 24, a, sizeof a) == 0, "dim 0 values");
    /* any dtype: i64 */
    int64_t i1[3] = {1, 2, 3}, i2[2] = {-4, 5};
    rb_tensor ti1 = rb_tensor_wrap(i1, RB_I64, 1, (int64_t[]){3}), ti2 = rb_tensor_wrap(i2, RB_I64, 1, (int64_t[]){2});
    rb_tensor *xi[2] = {&ti1, &ti2};
    rb_tensor *oi = rb_concat(c, xi, 2, 0);
    REQUIRE(oi != NULL && oi->dtype == RB_I64, "i64");
    CHECK(((int64_t *)oi->data)[3] == -4 && ((int64_t *)oi->data)[4] == 5 && ((int64_t *)oi->data)[0] == 1, "i64 values");
}

static rb_tensor *f_concat(rb_ctx *c, rb_tensor **in, void *u) { return rb_concat(c, in, 3, *(int *)u); }

static void t_concat_grad(void) {
    float a[24], b[12], d[6];
    t_fill(a, 24, 4);
    t_fill(b, 12, 5);
    t_fill(d, 6, 6);
    rb_tensor ta = rb_tensor_wrap(a, RB_F32, 3, (int64_t[]){2, 3, 4});
    rb_tensor tb = rb_tensor_wrap(b, RB_F32, 3, (int64_t[]){2, 3, 2});
    rb_tensor td = rb_tensor_wrap(d, RB_F32, 3, (int64_t[]){2, 3, 1});
    ta.requires_grad = td.requires_grad = 1; /* b takes no gradient */
    rb_tensor *in[3] = {&ta, &tb, &td};
    int dim = 2;
    double e = t_gradcheck(f_concat, in, 3, &dim, 1e-2);
    CHECK(e < 1e-3, "rel err %g", e);
    /* the same tensor twice gets the sum of both slabs (gradcheck cannot take one input twice) */
    rb_ctx *c = ctx_tape();
    rb_tensor *twice[2] = {&ta, &ta};
    rb_tensor *o = rb_concat(c, twice, 2, 1);
    REQUIRE(o != NULL, "op: %s", rb_last_error());
    float g[48];
    t_fill(g, 48, 30);
    rb_tensor dg = rb_tensor_wrap(g, RB_F32, 3, o->shape);
    REQUIRE(rb_backward_with(c, o, &dg) == RB_OK && ta.grad, "backward: %s", rb_last_error());
    double worst = 0;
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 4; k++)
                worst = fmax(worst, fabs(F(ta.grad)[(n * 3 + j) * 4 + k] -
                                         ((double)g[(n * 6 + j) * 4 + k] + g[(n * 6 + j + 3) * 4 + k])));
    CHECK(worst < 1e-6, "repeated input: max diff %g", worst);
    ta.grad = NULL;
}

/* 11 inputs (more than a tape entry holds): grouped internally, values and gradients unchanged */
static rb_tensor *f_concat11(rb_ctx *c, rb_tensor **in, void *u) { return rb_concat(c, in, 11, 1); }

static void t_concat_many(void) {
    float v[11][6];
    rb_tensor t[11], *in[11];
    for (int k = 0; k < 11; k++) {
        t_fill(v[k], 6, 20 + k);
        t[k] = rb_tensor_wrap(v[k], RB_F32, 2, (int64_t[]){3, 2});
        t[k].requires_grad = k % 3 != 1;
        in[k] = &t[k];
    }
    rb_ctx *c = ctx_tape();
    rb_tensor *o = rb_concat(c, in, 11, 1);
    REQUIRE(o != NULL && o->shape[1] == 22, "op: %s", rb_last_error());
    int bad = 0;
    for (int r = 0; r < 3; r++)
        for (int j = 0; j < 22; j++)
            bad += F(o)[r * 22 + j] != v[j / 2][r * 2 + j % 2];
    CHECK(bad == 0, "%d wrong", bad);
    double e = t_gradcheck(f_concat11, in, 11, NULL, 1e-2);
    CHECK(e < 1e-3, "rel err %g", e);
}

/* ---- slice and split ---- */

static void t_slice(void) {
    float x[60];
    t_fill(x, 60, 7);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){3, 4, 5});
    rb_ctx *c = ctx();
    struct {
        int dim;
        int64_t start, end, want_start, want_end;
    } cases[] = {{1, 1, 3, 1, 3}, {-1, 2, 5, 2, 5}, {0, -2, 100, 1, 3}, {2, -100, -1, 0, 4},
                 {1, 3, 2, 3, 3} /* empty */, {2, 0, 5, 0, 5}};
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        int d = cases[k].dim < 0 ? cases[k].dim + 3 : cases[k].dim;
        rb_tensor *o = rb_slice(c, &t, cases[k].dim, cases[k].start, cases[k].end);
        REQUIRE(o != NULL, "case %zu: %s", k, rb_last_error());
        int64_t s0 = cases[k].want_start, len = cases[k].want_end - s0;
        CHECK(o->shape[d] == len, "case %zu: length %lld, want %lld", k, (long long)o->shape[d], (long long)len);
        int bad = 0, m = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 5; l++) {
                    int idx[3] = {i, j, l};
                    if (idx[d] < s0 || idx[d] >= s0 + len)
                        continue;
                    bad += F(o)[m++] != x[(i * 4 + j) * 5 + l];
                }
        CHECK(bad == 0 && m == rb_numel(o), "case %zu: %d wrong", k, bad);
    }
    CHECK(!rb_slice(c, &t, 3, 0, 1) && c->status == RB_ERR_INVALID, "bad dim");
}

typedef struct {
    int dim;
    int64_t a, b;
} slice_args;

static rb_tensor *f_slice(rb_ctx *c, rb_tensor **in, void *u) {
    slice_args *s = u;
    return rb_slice(c, in[0], s->dim, s->a, s->b);
}

static void t_slice_grad(void) {
    float x[60];
    t_fill(x, 60, 8);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){3, 4, 5});
    t.requires_grad = 1;
    rb_tensor *in[1] = {&t};
    slice_args s1 = {1, 1, 3}, s2 = {2, 2, 4}, s0 = {0, 1, 2};
    double e;
    CHECK((e = t_gradcheck(f_slice, in, 1, &s1, 1e-2)) < 1e-3, "dim 1: %g", e);
    CHECK((e = t_gradcheck(f_slice, in, 1, &s2, 1e-2)) < 1e-3, "dim 2: %g", e);
    CHECK((e = t_gradcheck(f_slice, in, 1, &s0, 1e-2)) < 1e-3, "dim 0: %g", e);
}

static void t_split(void) {
    float x[2 * 7 * 3];
    t_fill(x, 42, 9);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){2, 7, 3});
    rb_ctx *c = ctx();
    rb_tensor *out[3];
    REQUIRE(rb_split(c, &t, 1, (int64_t[]){2, 0, 5}, 3, out) == RB_OK, "split: %s", rb_last_error());
    CHECK(out[0]->shape[1] == 2 && out[1]->shape[1] == 0 && out[2]->shape[1] == 5, "sizes");
    int bad = 0;
    for (int n = 0; n < 2; n++)
        for (int j = 0; j < 7; j++)
            for (int k = 0; k < 3; k++) {
                float got = j < 2 ? F(out[0])[(n * 2 + j) * 3 + k] : F(out[2])[(n * 5 + j - 2) * 3 + k];
                bad += got != x[(n * 7 + j) * 3 + k];
            }
    CHECK(bad == 0, "%d wrong", bad);
    c = ctx();
    CHECK(rb_split(c, &t, 1, (int64_t[]){2, 4}, 2, out) == RB_ERR_INVALID && out[0] == NULL &&
              strstr(rb_last_error(), "add up to 6"),
          "short sizes: %s", rb_last_error());
    c = ctx();
    CHECK(rb_split(c, &t, 1, (int64_t[]){8, -1}, 2, out) == RB_ERR_INVALID, "sizes past the end");
    c = ctx();
    CHECK(rb_split(c, &t, 5, (int64_t[]){7}, 1, out) == RB_ERR_INVALID, "bad dim");
    c = ctx();
    CHECK(rb_split(c, NULL, 0, (int64_t[]){7}, 1, out) == RB_ERR_INVALID, "NULL input");
}

/* split into three and put the pieces back in another order: every piece's gradient is checked */
static rb_tensor *f_split(rb_ctx *c, rb_tensor **in, void *u) {
    rb_tensor *p[3];
    if (rb_split(c, in[0], -2, (int64_t[]){3, 1, 3}, 3, p) != RB_OK)
        return NULL;
    rb_tensor *q[3] = {p[2], p[0], p[1]};
    return rb_concat(c, q, 3, -2);
}

static void t_split_grad(void) {
    float x[2 * 7 * 3];
    t_fill(x, 42, 10);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){2, 7, 3});
    t.requires_grad = 1;
    rb_tensor *in[1] = {&t};
    double e = t_gradcheck(f_split, in, 1, NULL, 1e-2);
    CHECK(e < 1e-3, "rel err %g", e);
}

/* ---- permute ---- */

static void t_permute(void) {
    enum { N = 2, C = 3, H = 4, W = 5 };
    float x[N * C * H * W];
    t_fill(x, N * C * H * W, 11);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){N, C, H, W});
    rb_ctx *c = ctx();
    rb_tensor *o = rb_permute(c, &t, (int[]){0, 2, 3, 1}); /* NCHW -> NHWC */
    REQUIRE(o != NULL, "op: %s", rb_last_error());
    CHECK(o->shape[1] == H && o->shape[2] == W && o->shape[3] == C && rb_is_contiguous(o), "shape");
    int bad = 0;
    for (int n = 0; n < N; n++)
        for (int ch = 0; ch < C; ch++)
            for (int y = 0; y < H; y++)
                for (int xx = 0; xx < W; xx++)
                    bad += F(o)[((n * H + y) * W + xx) * C + ch] != x[((n * C + ch) * H + y) * W + xx];
    CHECK(bad == 0, "NHWC: %d wrong", bad);
    rb_tensor *o2 = rb_permute(c, &t, (int[]){3, 1, 0, 2});
    REQUIRE(o2 != NULL, "op2");
    bad = 0;
    for (int n = 0; n < N; n++)
        for (int ch = 0; ch < C; ch++)
            for (int y = 0; y < H; y++)
                for (int xx = 0; xx < W; xx++)
                    bad += F(o2)[((xx * C + ch) * N + n) * H + y] != x[((n * C + ch) * H + y) * W + xx];
    CHECK(bad == 0, "3102: %d wrong", bad);
    /* 5-d, 16-bit elements (bf16 bits are moved untouched) */
    uint16_t h[2 * 1 * 3 * 2 * 4];
    for (int k = 0; k < 48; k++)
        h[k] = (uint16_t)(k * 1000 + 7);
    rb_tensor th = rb_tensor_wrap(h, RB_BF16, 5, (int64_t[]){2, 1, 3, 2, 4});
    rb_tensor *oh = rb_permute(c, &th, (int[]){4, 2, 1, 0, 3});
    REQUIRE(oh != NULL && oh->dtype == RB_BF16, "5-d bf16");
    bad = 0;
    for (int a = 0; a < 2; a++)
        for (int b2 = 0; b2 < 3; b2++)
            for (int d = 0; d < 2; d++)
                for (int e = 0; e < 4; e++)
                    bad += ((uint16_t *)oh->data)[((e * 3 + b2) * 2 + a) * 2 + d] != h[((a * 3 + b2) * 2 + d) * 4 + e];
    CHECK(bad == 0, "5-d: %d wrong", bad);
    CHECK(!rb_permute(c, &t, (int[]){0, 1, 1, 2}) && c->status == RB_ERR_INVALID, "repeated entry refused");
    c = ctx();
    CHECK(!rb_permute(c, &t, (int[]){0, 1, 2, 4}) && c->status == RB_ERR_INVALID, "entry out of range refused");
    c = ctx();
    CHECK(!rb_permute(c, &t, NULL) && c->status == RB_ERR_INVALID, "NULL perm");
}

static rb_tensor *f_permute(rb_ctx *c, rb_tensor **in, void *u) { return rb_permute(c, in[0], u); }

static void t_permute_grad(void) {
    float x[2 * 3 * 4 * 5];
    t_fill(x, 120, 12);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 4, (int64_t[]){2, 3, 4, 5});
    t.requires_grad = 1;
    rb_tensor *in[1] = {&t};
    int p1[4] = {0, 2, 3, 1}, p2[4] = {3, 1, 0, 2};
    double e;
    CHECK((e = t_gradcheck(f_permute, in, 1, p1, 1e-2)) < 1e-3, "0231: %g", e);
    CHECK((e = t_gradcheck(f_permute, in, 1, p2, 1e-2)) < 1e-3, "3102: %g", e);
}

/* ---- reshape and contiguous ---- */

static void t_reshape_view(void) {
    float x[24];
    t_fill(x, 24, 13);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){2, 3, 4});
    t.requires_grad = 1;
    rb_ctx *c = ctx_tape();
    rb_tensor *r = rb_reshape(c, &t, 2, (int64_t[]){-1, 8});
    REQUIRE(r != NULL, "reshape: %s", rb_last_error());
    CHECK(r != &t && r->data == (void *)x && r->ndim == 2 && r->shape[0] == 3 && r->shape[1] == 8, "a view");
    CHECK(tape.n == 1 && r->requires_grad && !strcmp(tape.e[0].op, "reshape"), "recorded on the tape");
    /* gradient through the view reaches x reinterpreted in x's shape */
    float g[24];
    t_fill(g, 24, 14);
    rb_tensor dg = rb_tensor_wrap(g, RB_F32, 2, (int64_t[]){3, 8});
    REQUIRE(rb_backward_with(c, r, &dg) == RB_OK, "backward: %s", rb_last_error());
    REQUIRE(t.grad != NULL, "x got a gradient");
    CHECK(memcmp(t.grad->data, g, sizeof g) == 0, "d(x) = d(out) element for element");
    t.grad = NULL;
    /* no tape: still a view, nothing recorded, no grad flag leaks from x */
    c = ctx();
    rb_tensor *r2 = rb_reshape(c, &t, 1, (int64_t[]){24});
    REQUIRE(r2 != NULL && r2->data == (void *)x && !r2->requires_grad, "untaped view");
    /* 0-d and back */
    float one = 3.5f;
    rb_tensor s = rb_tensor_wrap(&one, RB_F32, 1, (int64_t[]){1});
    rb_tensor *s0 = rb_reshape(c, &s, 0, NULL);
    REQUIRE(s0 != NULL && s0->ndim == 0 && F(s0)[0] == 3.5f, "to 0-d: %s", rb_last_error());
    /* errors */
    CHECK(!rb_reshape(c, &t, 2, (int64_t[]){5, 5}) && c->status == RB_ERR_INVALID && strstr(rb_last_error(), "reshape"),
          "wrong count: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_reshape(c, &t, 2, (int64_t[]){-1, -1}) && c->status == RB_ERR_INVALID, "two -1");
    c = ctx();
    CHECK(!rb_reshape(c, &t, 6, (int64_t[]){1, 1, 2, 3, 4, 1}) && c->status == RB_ERR_INVALID, "too many dims");
    c = ctx();
    CHECK(!rb_reshape(c, NULL, 1, (int64_t[]){24}) && c->status == RB_ERR_INVALID, "NULL");
}

static void t_contiguous_and_reshape_copy(void) {
    float x[24];
    t_fill(x, 24, 15);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){2, 3, 4}), v;
    rb_ctx *c = ctx_tape();
    CHECK(rb_contiguous(c, &t) == &t, "contiguous input is returned as is");
    REQUIRE(rb_view_permute(&v, &t, (int[]){2, 0, 1}) == RB_OK, "view"); /* [4, 2, 3] */
    v.requires_grad = 1;
    rb_tensor *o = rb_contiguous(c, &v);
    REQUIRE(o != NULL && o != &v && rb_is_contiguous(o), "copy: %s", rb_last_error());
    int bad = 0;
    for (int i = 0; i < 24; i++)
        bad += F(o)[i] != (float)rb_tensor_get(&v, i);
    CHECK(bad == 0, "%d wrong", bad);
    /* reshape of the strided view copies first; its gradient lands in v's (contiguous [4, 2, 3]) grad */
    rb_tensor *r = rb_reshape(c, &v, 2, (int64_t[]){4, 6});
    REQUIRE(r != NULL && r->data != (void *)x, "reshape copy: %s", rb_last_error());
    bad = 0;
    for (int i = 0; i < 24; i++)
        bad += F(r)[i] != (float)rb_tensor_get(&v, i);
    CHECK(bad == 0, "reshape copy: %d wrong", bad);
    float g[24];
    t_fill(g, 24, 16);
    rb_tensor dg = rb_tensor_wrap(g, RB_F32, 2, (int64_t[]){4, 6});
    REQUIRE(rb_backward_with(c, r, &dg) == RB_OK, "backward: %s", rb_last_error());
    REQUIRE(v.grad != NULL, "grad");
    CHECK(memcmp(v.grad->data, g, sizeof g) == 0, "d(v) in row-major order of v");
    /* and backward of the plain contiguous copy */
    c = ctx_tape();
    v.grad = NULL;
    o = rb_contiguous(c, &v);
    REQUIRE(o != NULL, "copy again");
    rb_tensor dg3 = rb_tensor_wrap(g, RB_F32, 3, v.shape);
    REQUIRE(rb_backward_with(c, o, &dg3) == RB_OK && v.grad, "backward");
    CHECK(memcmp(v.grad->data, g, sizeof g) == 0, "d(v) = d(out)");
    v.grad = NULL;
}

static rb_tensor *f_reshape(rb_ctx *c, rb_tensor **in, void *u) { return rb_reshape(c, in[0], 2, (int64_t[]){6, -1}); }

/* reshape of a contiguous tensor (a view) followed by other ops */
static rb_tensor *f_reshape_then(rb_ctx *c, rb_tensor **in, void *u) {
    rb_tensor *r = rb_reshape(c, in[0], 3, (int64_t[]){4, 3, 5});
    rb_tensor *p = rb_permute(c, r, (int[]){2, 0, 1});
    rb_tensor *s = rb_slice(c, p, 0, 1, 4);
    return rb_reshape(c, s, 2, (int64_t[]){-1, 4});
}

/* x reaches the output twice, through two chains of reshape views, then a concat */
static rb_tensor *f_reshape_sandwich(rb_ctx *c, rb_tensor **in, void *u) {
    rb_tensor *a = rb_reshape(c, in[0], 2, (int64_t[]){10, 6});
    rb_tensor *b = rb_reshape(c, in[0], 1, (int64_t[]){60});
    rb_tensor *b2 = rb_reshape(c, b, 2, (int64_t[]){10, 6});
    rb_tensor *xs[2] = {a, b2};
    return rb_concat(c, xs, 2, 1);
}

static void t_reshape_grad(void) {
    float x[60];
    t_fill(x, 60, 17);
    rb_tensor t = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){3, 4, 5});
    t.requires_grad = 1;
    rb_tensor *in[1] = {&t};
    double e;
    CHECK((e = t_gradcheck(f_reshape, in, 1, NULL, 1e-2)) < 1e-3, "reshape: %g", e);
    CHECK((e = t_gradcheck(f_reshape_then, in, 1, NULL, 1e-2)) < 1e-3, "reshape then permute/slice: %g", e);
    CHECK((e = t_gradcheck(f_reshape_sandwich, in, 1, NULL, 1e-2)) < 1e-3, "two view chains: %g", e);
}

/* ---- the raw kernel on a larger permutation (threads, merged dims) ---- */

static void t_strided_kernel(void) {
    enum { A = 3, B = 64, Cc = 40, D = 24 };
    size_t n = (size_t)A * B * Cc * D;
    float *x = malloc(n * sizeof *x), *o = malloc(n * sizeof *o), *g = calloc(n, sizeof *g);
    REQUIRE(x && o && g, "malloc");
    t_fill(x, n, 18);
    /* out [A, Cc, B, D] = x [A, B, Cc, D] with dims 1, 2 swapped; D stays an inner contiguous run */
    int64_t shape[4] = {A, Cc, B, D}, os[4] = {(int64_t)Cc * B * D, B * D, D, 1}, xs[4] = {(int64_t)B * Cc * D, D, Cc * D, 1};
    strided_copy_forward(o, os, x, xs, 4, shape, 4);
    int bad = 0;
    for (int a = 0; a < A; a++)
        for (int b = 0; b < B; b++)
            for (int k = 0; k < Cc; k++)
                for (int d = 0; d < D; d++)
                    bad += o[((a * Cc + k) * B + b) * D + d] != x[((a * B + b) * Cc + k) * D + d];
    CHECK(bad == 0, "forward: %d wrong", bad);
    strided_copy_backward(g, xs, o, os, 4, shape);
    strided_copy_backward(g, xs, o, os, 4, shape);
    bad = 0;
    for (size_t k = 0; k < n; k++)
        bad += g[k] != 2 * x[k];
    CHECK(bad == 0, "backward accumulates: %d wrong", bad);
    /* a full transpose of [B*Cc, D] (no contiguous run on either side), forward and twice backward */
    int64_t s2[2] = {(int64_t)B * Cc, D}, o2[2] = {1, (int64_t)B * Cc}, x2[2] = {D, 1};
    strided_copy_forward(o, o2, x, x2, 2, s2, 4);
    bad = 0;
    for (int r = 0; r < B * Cc; r++)
        for (int d = 0; d < D; d++)
            bad += o[d * B * Cc + r] != x[r * D + d];
    CHECK(bad == 0, "transpose forward: %d wrong", bad);
    memset(g, 0, n * sizeof *g);
    strided_copy_backward(g, x2, o, o2, 2, s2);
    strided_copy_backward(g, x2, o, o2, 2, s2);
    bad = 0;
    for (int k = 0; k < B * Cc * D; k++)
        bad += g[k] != 2 * x[k];
    CHECK(bad == 0, "transpose backward accumulates: %d wrong", bad);
    free(x);
    free(o);
    free(g);
}

static void t_bad_arguments(void) {
    float x[12];
    t_fill(x, 12, 19);
    rb_tensor a = rb_tensor_wrap(x, RB_F32, 2, (int64_t[]){3, 4}), b = rb_tensor_wrap(x, RB_F32, 2, (int64_t[]){4, 3});
    rb_tensor h = rb_tensor_wrap(x, RB_F16, 2, (int64_t[]){3, 4});
    rb_tensor *ab[2] = {&a, &b}, *ah[2] = {&a, &h}, *an[2] = {&a, NULL};
    rb_ctx *c = ctx();
    CHECK(!rb_concat(c, ab, 2, 0) && c->status == RB_ERR_INVALID && strstr(rb_last_error(), "input 1"),
          "shape mismatch: %s", rb_last_error());
    c = ctx();
    CHECK(rb_concat(c, ab, 2, 1) == NULL, "mismatch on the other dim too");
    c = ctx();
    CHECK(!rb_concat(c, ah, 2, 0) && strstr(rb_last_error(), "f16"), "dtype mismatch: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_concat(c, an, 2, 0) && strstr(rb_last_error(), "NULL"), "NULL input");
    c = ctx();
    CHECK(!rb_concat(c, ab, 0, 0) && c->status == RB_ERR_INVALID, "no inputs");
    c = ctx();
    CHECK(!rb_concat(c, ab, 1, 2) && c->status == RB_ERR_INVALID, "dim out of range");
    /* a failed context stays failed */
    CHECK(!rb_slice(c, &a, 0, 0, 1) && !rb_permute(c, &a, (int[]){1, 0}) && !rb_contiguous(c, &a) &&
              rb_split(c, &a, 0, (int64_t[]){3}, 1, ab) == RB_ERR_INVALID,
          "sticky status");
}

int main(void) {
    RUN(t_concat);
    RUN(t_concat_grad);
    RUN(t_concat_many);
    RUN(t_slice);
    RUN(t_slice_grad);
    RUN(t_split);
    RUN(t_split_grad);
    RUN(t_permute);
    RUN(t_permute_grad);
    RUN(t_reshape_view);
    RUN(t_contiguous_and_reshape_copy);
    RUN(t_reshape_grad);
    RUN(t_strided_kernel);
    RUN(t_bad_arguments);
    if (grads.base) {
        rb_tape_free(&tape);
        rb_arena_free(&grads);
    }
    rb_arena_free(&arena);
    return t_done();
}
