/* rb_linear / rb_matmul: forward against naive double-precision loops (f32 and bf16 compute, f32/bf16/f16
 * weights, batched and broadcast products, transposes, odd sizes), finite-difference gradients, errors
 * for bad shapes, the weight cache, and no allocation after warm-up. */
#include "util.h"

#include "ops/dnnl.h"
#include "ops/linear.h"

static rb_tensor mk(rb_dtype dt, int ndim, const int64_t *shape, unsigned seed) {
    rb_tensor t;
    memset(&t, 0, sizeof t);
    if (rb_tensor_alloc(&t, dt, ndim, shape, "test") != RB_OK)
        return t;
    int64_t n = rb_numel(&t);
    float *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
    t_fill(tmp, (size_t)n, seed);
    rb_convert_from_f32(t.data, dt, tmp, (size_t)n);
    free(tmp);
    return t;
}

/* Reference y = x w^T + b in double, from the tensors' (already rounded) element values. When
 * round_bf16 is set, x and w are rounded to bf16 first (what the bf16 compute mode sees). */
static double *ref_linear(const rb_tensor *x, const rb_tensor *w, const rb_tensor *b, int round_bf16) {
    int64_t N = w->shape[0], K = w->shape[1], M = rb_numel(x) / K;
    double *y = calloc((size_t)(M * N), sizeof *y);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double s = b ? rb_tensor_get(b, n) : 0;
            for (int64_t k = 0; k < K; k++) {
                float xv = (float)rb_tensor_get(x, m * K + k), wv = (float)rb_tensor_get(w, n * K + k);
                if (round_bf16) {
                    xv = rb_bf16_to_f32(rb_f32_to_bf16(xv));
                    wv = rb_bf16_to_f32(rb_f32_to_bf16(wv));
                }
                s += (double)xv * wv;
            }
            y[m * N + n] = s;
        }
    return y;
}

/* max |got - ref| / max(1, max |ref|) */
static double rel_err(const rb_tensor *got, const double *ref, int64_t n) {
    double scale = 1, err = 0;
    for (int64_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(ref[i]));
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(rb_tensor_get(got, i) - ref[i]);
        err = d > err || d != d ? d : err;
    }
    return err / scale;
}

typedef struct {
    rb_arena arena;
    rb_ctx c;
} env;

static int env_init(env *e, rb_dtype compute) {
    if (rb_arena_init(&e->arena, 64 << 20, "test arena") != RB_OK)
        return 0;
    rb_ctx_init(&e->c, &e->arena);
    e->c.matmul_dtype = compute;
    return 1;
}

static void t_linear_forward(void) {
    static const struct {
        int ndim;
        int64_t xs[3], N;
        int bias;
    } cases[] = {
        {2, {4, 8}, 16, 1}, {2, {1, 1}, 1, 1}, {3, {2, 3, 17}, 5, 0}, {2, {33, 65}, 31, 1}, {1, {40}, 7, 1},
        {3, {3, 29, 96}, 130, 1},
    };
    rb_dtype wdts[] = {RB_F32, RB_BF16, RB_F16};
    env e;
    REQUIRE(env_init(&e, RB_F32), "arena");
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++)
        for (int wi = 0; wi < 3; wi++)
            for (int mode = 0; mode < 2; mode++) {
                e.c.matmul_dtype = mode ? RB_BF16 : RB_F32;
                int64_t K = cases[ci].xs[cases[ci].ndim - 1], N = cases[ci].N;
                rb_tensor x = mk(RB_F32, cases[ci].ndim, cases[ci].xs, 1 + (unsigned)ci);
                rb_tensor w = mk(wdts[wi], 2, (int64_t[]){N, K}, 100 + (unsigned)ci);
                rb_tensor b = mk(wdts[wi], 1, (int64_t[]){N}, 200 + (unsigned)ci);
                size_t mark = rb_arena_mark(&e.arena);
                rb_tensor *y = rb_linear(&e.c, &x, &w, cases[ci].bias ? &b : NULL);
                CHECK(y != NULL, "case %zu: %s", ci, rb_last_error());
                if (y) {
                    CHECK(y->ndim == x.ndim && y->shape[y->ndim - 1] == N, "output shape");
                    double *ref = ref_linear(&x, &w, cases[ci].bias ? &b : NULL, mode);
                    double err = rel_err(y, ref, rb_numel(y));
                    /* f32: rounding of a K-term f32 sum; bf16: inputs rounded identically in the
                     * reference, so only f32 accumulation differs */
                    CHECK(err < 2e-6 * sqrt((double)K) + 1e-6, "case %zu wdt %s mode %d: err %g", ci,
                          rb_dtype_name(wdts[wi]), mode, err);
                    free(ref);
                    if (mode) { /* bf16 against the exact f32 product: bf16-sized error only */
                        ref = ref_linear(&x, &w, cases[ci].bias ? &b : NULL, 0);
                        err = rel_err(y, ref, rb_numel(y));
                        CHECK(err < 1e-2, "case %zu bf16 vs exact: err %g", ci, err);
                        CHECK(K < 64 || wdts[wi] == RB_BF16 || err > 1e-6, "bf16 mode looks like f32 (err %g)", err);
                        free(ref);
                    }
                }
                rb_arena_reset(&e.arena, mark);
                rb_tensor_free(&x);
                rb_tensor_free(&w);
                rb_tensor_free(&b);
            }
    rb_arena_free(&e.arena);
}

/* naive batched product with broadcast, c's batch index mapped onto a and b */
static double *ref_matmul(const rb_tensor *a, const rb_tensor *b, int tb, const rb_tensor *c, int round_bf16) {
    int nd = c->ndim, nb = nd - 2;
    int64_t M = c->shape[nd - 2], N = c->shape[nd - 1], K = a->shape[a->ndim - 1];
    int64_t total = rb_numel(c) / (M * N);
    double *y = calloc((size_t)rb_numel(c), sizeof *y);
    for (int64_t f = 0; f < total; f++) {
        int64_t rem = f, ai = 0, bi = 0, as = 1, bs = 1;
        for (int i = nb - 1; i >= 0; i--) {
            int64_t idx = rem % c->shape[i];
            rem /= c->shape[i];
            int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
            int64_t da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
            ai += (da == 1 ? 0 : idx) * as;
            bi += (db == 1 ? 0 : idx) * bs;
            as *= da;
            bs *= db;
        }
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0;
                for (int64_t k = 0; k < K; k++) {
                    float av = (float)rb_tensor_get(a, ai * M * K + m * K + k);
                    float bv = (float)rb_tensor_get(b, bi * K * N + (tb ? n * K + k : k * N + n));
                    if (round_bf16) {
                        av = rb_bf16_to_f32(rb_f32_to_bf16(av));
                        bv = rb_bf16_to_f32(rb_f32_to_bf16(bv));
                    }
                    s += (double)av * bv;
                }
                y[f * M * N + m * N + n] = s;
            }
    }
    return y;
}

static const struct {
    int an, bn;
    int64_t as[5], bs[5];
    int tb;
} mm_cases[] = {
    {2, 2, {5, 7}, {7, 3}, 0},
    {3, 3, {4, 6, 9}, {4, 9, 5}, 0},
    {4, 4, {2, 3, 5, 7}, {2, 1, 7, 4}, 0},        /* b broadcast over dim 1 */
    {4, 4, {1, 3, 5, 7}, {2, 3, 4, 7}, 1},        /* a broadcast, transposed b */
    {2, 3, {5, 7}, {3, 7, 4}, 0},                 /* fewer dims in a */
    {5, 3, {2, 1, 3, 3, 4}, {3, 4, 6}, 0},        /* 3 batch dims */
    {3, 3, {2, 1, 1}, {1, 1, 1}, 1},              /* sizes of 1 */
    {3, 2, {3, 33, 65}, {17, 65}, 1},
};

static void t_matmul_forward(void) {
    env e;
    REQUIRE(env_init(&e, RB_F32), "arena");
    for (size_t ci = 0; ci < sizeof mm_cases / sizeof *mm_cases; ci++)
        for (int mode = 0; mode < 2; mode++) {
            e.c.matmul_dtype = mode ? RB_BF16 : RB_F32;
            rb_tensor a = mk(RB_F32, mm_cases[ci].an, mm_cases[ci].as, 7 + (unsigned)ci);
            rb_tensor b = mk(RB_F32, mm_cases[ci].bn, mm_cases[ci].bs, 70 + (unsigned)ci);
            size_t mark = rb_arena_mark(&e.arena);
            rb_tensor *y = rb_matmul(&e.c, &a, &b, mm_cases[ci].tb);
            CHECK(y != NULL, "case %zu: %s", ci, rb_last_error());
            if (y) {
                double *ref = ref_matmul(&a, &b, mm_cases[ci].tb, y, mode);
                double err = rel_err(y, ref, rb_numel(y));
                CHECK(err < 2e-5, "case %zu mode %d: err %g", ci, mode, err);
                free(ref);
            }
            rb_arena_reset(&e.arena, mark);
            rb_tensor_free(&a);
            rb_tensor_free(&b);
        }
    /* a non-contiguous operand: the transpose of a [7, 5] view */
    rb_tensor a = mk(RB_F32, 2, (int64_t[]){7, 5}, 3), b = mk(RB_F32, 2, (int64_t[]){7, 4}, 4), at, ac;
    REQUIRE(rb_view_permute(&at, &a, (int[]){1, 0}) == RB_OK, "permute");
    REQUIRE(rb_tensor_alloc(&ac, RB_F32, 2, at.shape, "t") == RB_OK && rb_tensor_copy(&ac, &at) == RB_OK, "copy");
    e.c.matmul_dtype = RB_F32;
    rb_tensor *y = rb_matmul(&e.c, &at, &b, 0);
    REQUIRE(y != NULL, "%s", rb_last_error());
    double *ref = ref_matmul(&ac, &b, 0, y, 0);
    CHECK(rel_err(y, ref, rb_numel(y)) < 1e-6, "strided operand");
    free(ref);
    rb_tensor_free(&a), rb_tensor_free(&b), rb_tensor_free(&ac);
    rb_arena_free(&e.arena);
}

static rb_tensor *op_linear(rb_ctx *c, rb_tensor **in, void *user) { return rb_linear(c, in[0], in[1], in[2]); }
static rb_tensor *op_matmul(rb_ctx *c, rb_tensor **in, void *user) {
    return rb_matmul(c, in[0], in[1], *(int *)user);
}

static void t_gradients(void) {
    rb_tensor x = mk(RB_F32, 3, (int64_t[]){2, 3, 6}, 11), w = mk(RB_F32, 2, (int64_t[]){5, 6}, 12),
              b = mk(RB_F32, 1, (int64_t[]){5}, 13);
    x.requires_grad = w.requires_grad = b.requires_grad = 1;
    double err = t_gradcheck(op_linear, (rb_tensor *[]){&x, &w, &b}, 3, NULL, 1e-2);
    CHECK(err < 1e-3, "linear gradient err %g", err);
    x.requires_grad = 0; /* only the weight and bias */
    err = t_gradcheck(op_linear, (rb_tensor *[]){&x, &w, &b}, 3, NULL, 1e-2);
    CHECK(err < 1e-3, "linear weight-only gradient err %g", err);
    rb_tensor_free(&x), rb_tensor_free(&w), rb_tensor_free(&b);
    for (size_t ci = 0; ci < sizeof mm_cases / sizeof *mm_cases; ci++) {
        rb_tensor a = mk(RB_F32, mm_cases[ci].an, mm_cases[ci].as, 21 + (unsigned)ci);
        rb_tensor bb = mk(RB_F32, mm_cases[ci].bn, mm_cases[ci].bs, 41 + (unsigned)ci);
        a.requires_grad = bb.requires_grad = 1;
        int tb = mm_cases[ci].tb;
        err = t_gradcheck(op_matmul, (rb_tensor *[]){&a, &bb}, 2, &tb, 1e-2);
        CHECK(err < 1e-3, "matmul case %zu gradient err %g", ci, err);
        rb_tensor_free(&a), rb_tensor_free(&bb);
    }
}

static void t_bad_shapes(void) {
    env e;
    REQUIRE(env_init(&e, RB_F32), "arena");
    rb_tensor x = mk(RB_F32, 2, (int64_t[]){3, 4}, 1), w = mk(RB_F32, 2, (int64_t[]){5, 6}, 2),
              b = mk(RB_F32, 1, (int64_t[]){4}, 3), i64;
    memset(&i64, 0, sizeof i64);
    rb_tensor_alloc(&i64, RB_I64, 2, (int64_t[]){5, 4}, "t");
    struct {
        rb_tensor *y;
        rb_status want;
    } r[8];
    int n = 0;
#define TRY_BAD(expr, st) (rb_ctx_clear(&e.c), r[n].y = (expr), r[n++].want = (st))
    TRY_BAD(rb_linear(&e.c, &x, &w, NULL), RB_ERR_INVALID);      /* K 4 vs 6 */
    TRY_BAD(rb_linear(&e.c, &w, &w, &b), RB_ERR_INVALID);        /* bias [4] for N = 5 */
    TRY_BAD(rb_linear(&e.c, &x, &i64, NULL), RB_ERR_UNSUPPORTED); /* integer weight */
    TRY_BAD(rb_linear(&e.c, &x, NULL, NULL), RB_ERR_INVALID);
    TRY_BAD(rb_matmul(&e.c, &x, &w, 0), RB_ERR_INVALID);        /* [3,4] @ [5,6] */
    TRY_BAD(rb_matmul(&e.c, &x, &b, 0), RB_ERR_INVALID);        /* 1-d operand */
    rb_tensor a3 = mk(RB_F32, 3, (int64_t[]){2, 3, 4}, 5), b3 = mk(RB_F32, 3, (int64_t[]){3, 4, 2}, 6);
    TRY_BAD(rb_matmul(&e.c, &a3, &b3, 0), RB_ERR_INVALID);      /* batch 2 vs 3 */
    e.c.matmul_dtype = RB_F16;
    TRY_BAD(rb_matmul(&e.c, &x, &x, 1), RB_ERR_UNSUPPORTED);
    for (int i = 0; i < n; i++)
        CHECK(r[i].y == NULL && e.c.status != RB_OK && rb_last_error()[0], "bad call %d accepted", i);
    /* the sticky status: a later valid call returns NULL until cleared */
    e.c.matmul_dtype = RB_F32;
    CHECK(rb_matmul(&e.c, &x, &x, 1) == NULL, "sticky status");
    rb_ctx_clear(&e.c);
    CHECK(rb_matmul(&e.c, &x, &x, 1) != NULL, "after clear: %s", rb_last_error());
    rb_tensor_free(&x), rb_tensor_free(&w), rb_tensor_free(&b), rb_tensor_free(&i64), rb_tensor_free(&a3),
        rb_tensor_free(&b3);
    rb_arena_free(&e.arena);
}

/* Frozen bf16-mode weights are converted once and cached; rewriting them is noticed (fingerprint);
 * rb_dnnl_forget releases the copy. */
static void t_weight_cache(void) {
    env e;
    REQUIRE(env_init(&e, RB_BF16), "arena");
    rb_tensor x = mk(RB_F32, 2, (int64_t[]){8, 64}, 1), w = mk(RB_F16, 2, (int64_t[]){32, 64}, 2);
    size_t before = rb_dnnl_weight_cache_bytes();
    rb_tensor *y = rb_linear(&e.c, &x, &w, NULL);
    REQUIRE(y, "%s", rb_last_error());
    CHECK(rb_dnnl_weight_cache_bytes() > before, "frozen weight was not cached");
    float *tmp = malloc(32 * 64 * sizeof *tmp);
    t_fill(tmp, 32 * 64, 99);
    rb_convert_from_f32(w.data, RB_F16, tmp, 32 * 64); /* rewrite in place */
    free(tmp);
    y = rb_linear(&e.c, &x, &w, NULL);
    REQUIRE(y, "%s", rb_last_error());
    double *ref = ref_linear(&x, &w, NULL, 1);
    CHECK(rel_err(y, ref, rb_numel(y)) < 1e-5, "stale cached weight used: err %g", rel_err(y, ref, rb_numel(y)));
    free(ref);
    rb_dnnl_forget(w.data);
    CHECK(rb_dnnl_weight_cache_bytes() == before, "forget left %zu bytes", rb_dnnl_weight_cache_bytes() - before);
    rb_tensor_free(&x), rb_tensor_free(&w);
    rb_arena_free(&e.arena);
}

/* After one warm-up call, repeated calls of the same shapes allocate nothing (the arena is reset
 * between iterations; rb_alloc counters stay put), forward and backward, f32 and bf16. */
typedef struct {
    rb_tensor *x, *w, *w2, *b;
} linear_pair;
static rb_tensor *linear_pair_step(rb_ctx *c, void *user) {
    linear_pair *p = user;
    rb_tensor *h = rb_linear(c, p->x, p->w, p->b);
    rb_tensor *y = rb_matmul(c, h, p->w2, 0);
    p->x->grad = p->w2->grad = NULL;
    return y;
}

static void t_no_alloc_after_warmup(void) {
    rb_tensor x = mk(RB_F32, 3, (int64_t[]){2, 40, 96}, 1), w = mk(RB_BF16, 2, (int64_t[]){80, 96}, 2),
              w2 = mk(RB_F32, 2, (int64_t[]){80, 96}, 3), b = mk(RB_F32, 1, (int64_t[]){80}, 4);
    x.requires_grad = 1;
    w2.requires_grad = 1;
    linear_pair p = {&x, &w, &w2, &b};
    t_check_no_alloc_after_warmup(linear_pair_step, &p);
    rb_tensor_free(&x), rb_tensor_free(&w), rb_tensor_free(&w2), rb_tensor_free(&b);
}

int main(void) {
    rb_set_num_threads(2);
    RUN(t_linear_forward);
    RUN(t_matmul_forward);
    RUN(t_gradients);
    RUN(t_bad_shapes);
    RUN(t_weight_cache);
    RUN(t_no_alloc_after_warmup);
    return t_done();
}
