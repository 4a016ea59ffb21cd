/* The tape on its own: private ops written here (square, scale, mul, sum) with their own backward
 * functions, so these tests depend on nothing but src/ops/tape.c. */
#include "gradcheck.h"
#include "harness.h"
#include "ops/tape.h"

/* ---- private ops ---- */

static rb_status square_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0];
    rb_tensor *dx = rb_grad_of(c, x); /* only recorded when x needs a gradient */
    if (!dx)
        return c->status;
    const float *xd = x->data, *dy = e->out->grad->data;
    float *d = dx->data;
    for (int64_t i = 0; i < rb_numel(x); i++)
        d[i] += 2.0f * xd[i] * dy[i]; /* += */
    return RB_OK;
}

static rb_tensor *t_square(rb_ctx *c, rb_tensor *x) {
    if (c->status != RB_OK || !x)
        return NULL;
    rb_tensor *y = rb_ctx_tensor(c, RB_F32, x->ndim, x->shape);
    if (!y)
        return NULL;
    for (int64_t i = 0; i < rb_numel(x); i++)
        ((float *)y->data)[i] = ((float *)x->data)[i] * ((float *)x->data)[i];
    rb_tape_record(c, "square", square_backward, y, 1, &x);
    return y;
}

static rb_status scale_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *dx = rb_grad_of(c, e->in[0]);
    if (!dx)
        return c->status;
    const float *dy = e->out->grad->data;
    for (int64_t i = 0; i < rb_numel(dx); i++)
        ((float *)dx->data)[i] += (float)e->f[0] * dy[i]; /* += */
    return RB_OK;
}

static rb_tensor *t_scale(rb_ctx *c, rb_tensor *x, float s) {
    if (c->status != RB_OK || !x)
        return NULL;
    rb_tensor *y = rb_ctx_tensor(c, RB_F32, x->ndim, x->shape);
    if (!y)
        return NULL;
    for (int64_t i = 0; i < rb_numel(x); i++)
        ((float *)y->data)[i] = s * ((float *)x->data)[i];
    rb_tape_entry *e = rb_tape_record(c, "scale", scale_backward, y, 1, &x);
    if (e)
        e->f[0] = s;
    return y;
}

static rb_status mul_backward(rb_ctx *c, rb_tape_entry *e) {
    const float *dy = e->out->grad->data;
    for (int k = 0; k < 2; k++) {
        if (!rb_needs_grad(e->in[k]))
            continue;
        rb_tensor *d = rb_grad_of(c, e->in[k]);
        if (!d)
            return c->status;
        const float *o = e->in[1 - k]->data;
        for (int64_t i = 0; i < rb_numel(d); i++)
            ((float *)d->data)[i] += o[i] * dy[i]; /* += */
    }
    return RB_OK;
}

static rb_tensor *t_mul(rb_ctx *c, rb_tensor *a, rb_tensor *b) {
    if (c->status != RB_OK || !a || !b)
        return NULL;
    rb_tensor *y = rb_ctx_tensor(c, RB_F32, a->ndim, a->shape);
    if (!y)
        return NULL;
    for (int64_t i = 0; i < rb_numel(a); i++)
        ((float *)y->data)[i] = ((float *)a->data)[i] * ((float *)b->data)[i];
    rb_tensor *in[2] = {a, b};
    rb_tape_record(c, "mul", mul_backward, y, 2, in);
    return y;
}

static rb_status sum_backward(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *dx = rb_grad_of(c, e->in[0]);
    if (!dx)
        return c->status;
    float dy = ((float *)e->out->grad->data)[0];
    for (int64_t i = 0; i < rb_numel(dx); i++)
        ((float *)dx->data)[i] += dy; /* += */
    return RB_OK;
}

static rb_tensor *t_sum(rb_ctx *c, rb_tensor *x) {
    if (c->status != RB_OK || !x)
        return NULL;
    rb_tensor *y = rb_ctx_tensor(c, RB_F32, 0, NULL);
    if (!y)
        return NULL;
    double s = 0;
    for (int64_t i = 0; i < rb_numel(x); i++)
        s += ((float *)x->data)[i];
    ((float *)y->data)[0] = (float)s;
    rb_tape_record(c, "sum", sum_backward, y, 1, &x);
    return y;
}

/* ---- fixture: activation and gradient arenas, a tape, a context ---- */

typedef struct {
    rb_arena act, grads;
    rb_tape tape;
    rb_ctx c;
} env;

static int env_init(env *e) {
    if (rb_arena_init(&e->act, 16 << 20, "activations") || rb_arena_init(&e->grads, 16 << 20, "grads") ||
        rb_tape_init(&e->tape, 4, &e->grads)) /* small capacity: the tape must grow */
        return 0;
    rb_ctx_init(&e->c, &e->act);
    e->c.tape = &e->tape;
    return 1;
}

static void env_free(env *e) {
    rb_tape_free(&e->tape);
    rb_arena_free(&e->act);
    rb_arena_free(&e->grads);
}

/* A leaf of n floats in the activation arena, filled with t_fill(seed). */
static rb_tensor *leaf(env *e, int64_t n, unsigned seed, int requires_grad) {
    rb_tensor *t = rb_arena_tensor(&e->act, RB_F32, 1, &n);
    if (t) {
        t_fill(t->data, (size_t)n, seed);
        t->requires_grad = requires_grad;
    }
    return t;
}

/* loss = sum(square(x * w)), x needs a gradient, w does not: dx = 2 (x w) w; w gets nothing. */
static void t_grads_reach_only_needed(void) {
    env e;
    REQUIRE(env_init(&e), "%s", rb_last_error());
    rb_tensor *x = leaf(&e, 8, 1, 1), *w = leaf(&e, 8, 2, 0);
    rb_tensor *w2 = t_square(&e.c, w); /* no input needs a gradient: not recorded */
    CHECK(w2 && !w2->requires_grad && e.tape.n == 0, "op on constants was recorded (n %d)", e.tape.n);
    rb_tensor *loss = t_sum(&e.c, t_square(&e.c, t_mul(&e.c, x, w)));
    REQUIRE(loss && e.tape.n == 3, "%s (tape %d)", rb_last_error(), e.tape.n);
    REQUIRE(rb_backward(&e.c, loss) == RB_OK, "%s", rb_last_error());
    REQUIRE(x->grad != NULL, "x got no gradient");
    CHECK(w->grad == NULL && w2->grad == NULL, "a constant got a gradient");
    const float *xd = x->data, *wd = w->data, *g = x->grad->data;
    double worst = 0;
    for (int i = 0; i < 8; i++) {
        double ref = 2.0 * ((double)xd[i] * wd[i]) * wd[i];
        worst = fmax(worst, fabs(g[i] - ref));
    }
    CHECK(worst < 1e-6, "dx off by %.3g", worst);
    CHECK(e.grads.used > 0 && x->grad->data >= (void *)e.grads.base &&
              (char *)x->grad->data < e.grads.base + e.grads.cap,
          "leaf gradient not in the grad arena");
    env_free(&e);
}

/* Two backward passes over the same tape add up: the leaf gradient is exactly twice one pass's,
 * both for a gradient from the grad arena and for one the owner allocated (a parameter). */
static void t_accumulate_two_passes(void) {
    env e;
    REQUIRE(env_init(&e), "%s", rb_last_error());
    rb_tensor *x = leaf(&e, 16, 3, 1), *p = leaf(&e, 16, 4, 1);
    float pg[16] = {0};
    int64_t n = 16;
    rb_tensor pgt = rb_tensor_wrap(pg, RB_F32, 1, &n);
    p->grad = &pgt;
    /* loss = sum(square(scale(x, 3) * p)): a chain, so intermediate gradients exist */
    rb_tensor *loss = t_sum(&e.c, t_square(&e.c, t_mul(&e.c, t_scale(&e.c, x, 3.0f), p)));
    REQUIRE(loss, "%s", rb_last_error());
    REQUIRE(rb_backward(&e.c, loss) == RB_OK, "%s", rb_last_error());
    float gx1[16], gp1[16];
    memcpy(gx1, x->grad->data, sizeof gx1);
    memcpy(gp1, pg, sizeof gp1);
    REQUIRE(rb_backward(&e.c, loss) == RB_OK, "%s", rb_last_error());
    int bad = 0;
    for (int i = 0; i < 16; i++)
        bad += ((float *)x->grad->data)[i] != 2 * gx1[i] || pg[i] != 2 * gp1[i];
    CHECK(bad == 0, "%d gradients are not twice one pass's (x[0] %g vs 2 x %g)", bad, ((float *)x->grad->data)[0],
          gx1[0]);
    /* and one pass is right: d/dx = 2 (3 x p) * 3 p, d/dp = 2 (3 x p) * 3 x */
    double worst = 0;
    for (int i = 0; i < 16; i++) {
        double xv = ((float *)x->data)[i], pv = ((float *)p->data)[i];
        worst = fmax(worst, fabs(gx1[i] - 18 * xv * pv * pv));
        worst = fmax(worst, fabs(gp1[i] - 18 * xv * xv * pv));
    }
    CHECK(worst < 1e-5, "one pass off by %.3g", worst);
    env_free(&e);
}

static void t_backward_rejects(void) {
    env e;
    REQUIRE(env_init(&e), "%s", rb_last_error());
    rb_tensor *x = leaf(&e, 4, 5, 1);
    rb_tensor *y = t_square(&e.c, x);
    REQUIRE(y, "%s", rb_last_error());
    CHECK(rb_backward(&e.c, y) == RB_ERR_INVALID, "a loss of 4 elements was accepted");
    CHECK(strstr(rb_last_error(), "one element") != NULL, "message: %s", rb_last_error());
    CHECK(x->grad == NULL, "a rejected backward produced gradients");
    rb_tensor *k = leaf(&e, 1, 6, 0);
    CHECK(rb_backward(&e.c, k) == RB_ERR_INVALID, "a loss that needs no gradient was accepted");
    e.c.tape = NULL;
    CHECK(rb_backward(&e.c, t_sum(&e.c, y)) == RB_ERR_INVALID, "backward without a tape");
    CHECK(rb_backward(&e.c, NULL) == RB_ERR_INVALID, "NULL loss");
    env_free(&e);
}

static void t_tape_print(void) {
    env e;
    REQUIRE(env_init(&e), "%s", rb_last_error());
    rb_tensor *x = leaf(&e, 6, 7, 1), *w = leaf(&e, 6, 8, 0);
    rb_tensor *y = t_mul(&e.c, t_scale(&e.c, x, 2.0f), w);
    REQUIRE(y, "%s", rb_last_error());
    y->name = "prod";
    rb_tensor *loss = t_sum(&e.c, y);
    REQUIRE(loss, "%s", rb_last_error());
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    REQUIRE(f, "open_memstream");
    rb_tape_print(&e.tape, f);
    fclose(f);
    const char *want[] = {"   0 scale            out [6] <- [6]*\n",
                          "   1 mul              out [6] (prod) <- [6]* [6]\n",
                          "   2 sum              out [] <- [6]*\n"};
    const char *at = buf;
    for (int i = 0; i < 3; i++) {
        const char *hit = strstr(at, want[i]);
        CHECK(hit == at, "line %d: expected \"%s\" in:\n%s", i, want[i], buf);
        if (hit)
            at = hit + strlen(want[i]);
    }
    CHECK(*at == 0, "extra output: %s", at);
    free(buf);
    env_free(&e);
}

/* ---- checkpointing ---- */

/* A block of several ops with two inputs: y = square(scale(square(x * w), 0.5)) * w. */
static rb_tensor *block_fn(rb_ctx *c, void *user, rb_tensor *const *in, int n_in) {
    (void)user;
    (void)n_in;
    rb_tensor *h = t_mul(c, in[0], in[1]);
    h = t_square(c, h);
    h = t_scale(c, h, 0.5f);
    h = t_square(c, h);
    return t_mul(c, h, in[1]);
}

static void run_block(int checkpointed, float *gx, float *gw, float *loss_out, size_t *used_after_forward,
                      int *tape_len) {
    env e;
    if (!env_init(&e))
        return;
    int64_t n = 4096;
    rb_tensor *x = leaf(&e, n, 11, 1), *w = leaf(&e, n, 12, 1);
    size_t mark = rb_arena_mark(&e.act);
    rb_tensor *in[2] = {x, w};
    rb_tensor *y = checkpointed ? rb_checkpoint(&e.c, block_fn, NULL, 2, in) : block_fn(&e.c, NULL, in, 2);
    rb_tensor *loss = t_sum(&e.c, y);
    *used_after_forward = e.act.used - mark;
    *tape_len = e.tape.n;
    if (loss && rb_backward(&e.c, loss) == RB_OK && x->grad && w->grad) {
        memcpy(gx, x->grad->data, (size_t)n * 4);
        memcpy(gw, w->grad->data, (size_t)n * 4);
        *loss_out = ((float *)loss->data)[0];
    } else {
        fprintf(stderr, "  run_block(%d): %s\n", checkpointed, rb_last_error());
    }
    env_free(&e);
}

static void t_checkpoint_same_grads_less_memory(void) {
    enum { N = 4096 };
    static float gx[2][N], gw[2][N];
    float loss[2] = {NAN, NAN};
    size_t used[2] = {0, 0};
    int len[2] = {0, 0};
    for (int k = 0; k < 2; k++)
        run_block(k, gx[k], gw[k], &loss[k], &used[k], &len[k]);
    CHECK(!isnan(loss[0]) && loss[0] == loss[1], "losses %g %g", loss[0], loss[1]);
    CHECK(!memcmp(gx[0], gx[1], sizeof gx[0]) && !memcmp(gw[0], gw[1], sizeof gw[0]),
          "checkpointed gradients differ from the plain run's");
    CHECK(len[0] == 6 && len[1] == 2, "tape lengths %d (plain) %d (checkpointed)", len[0], len[1]);
    /* plain keeps 5 block outputs of 16 KiB; checkpointed keeps only the block's output */
    fprintf(stderr, "  arena used after forward: plain %zu, checkpointed %zu bytes\n", used[0], used[1]);
    CHECK(used[1] < used[0] / 3, "checkpointed forward keeps %zu bytes, plain %zu", used[1], used[0]);
    /* and the gradients are right: y = (0.5 (xw)^2)^2 w = 0.25 x^4 w^5 */
    float x[N], w[N];
    t_fill(x, N, 11);
    t_fill(w, N, 12);
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double xv = x[i], wv = w[i];
        worst = fmax(worst, fabs(gx[1][i] - xv * xv * xv * pow(wv, 5)));
        worst = fmax(worst, fabs(gw[1][i] - 1.25 * pow(xv, 4) * pow(wv, 4)));
    }
    CHECK(worst < 1e-5, "checkpointed gradient off by %.3g", worst);
}

/* After backward, the arenas are back where the recomputation found them, the tape has its
 * forward length, and a second pass accumulates like the plain tape. */
static void t_checkpoint_cleans_up(void) {
    env e;
    REQUIRE(env_init(&e), "%s", rb_last_error());
    rb_tensor *x = leaf(&e, 64, 13, 1), *w = leaf(&e, 64, 14, 1);
    rb_tensor *in[2] = {x, w};
    rb_tensor *loss = t_sum(&e.c, rb_checkpoint(&e.c, block_fn, NULL, 2, in));
    REQUIRE(loss && e.tape.n == 2, "%s", rb_last_error());
    size_t act = e.act.used;
    REQUIRE(rb_backward(&e.c, loss) == RB_OK, "%s", rb_last_error());
    CHECK(e.act.used == act && e.tape.n == 2, "after backward: arena %zu (was %zu), tape %d", e.act.used, act,
          e.tape.n);
    float g1[64];
    memcpy(g1, x->grad->data, sizeof g1);
    REQUIRE(rb_backward(&e.c, loss) == RB_OK, "%s", rb_last_error());
    int bad = 0;
    for (int i = 0; i < 64; i++)
        bad += ((float *)x->grad->data)[i] != 2 * g1[i];
    CHECK(bad == 0, "%d gradients not doubled by a second pass", bad);
    /* without a tape (inference) the block runs once and gives the same output */
    e.c.tape = NULL;
    rb_tensor *y = rb_checkpoint(&e.c, block_fn, NULL, 2, in);
    rb_tensor *y2 = block_fn(&e.c, NULL, in, 2);
    CHECK(y && y2 && !memcmp(y->data, y2->data, 64 * 4) && !y->requires_grad, "inference checkpoint");
    env_free(&e);
}

/* Finite differences through a checkpointed block (t_gradcheck seeds d(out) with random values). */
static rb_tensor *ckpt_op(rb_ctx *c, rb_tensor **in, void *user) {
    return rb_checkpoint(c, block_fn, user, 2, in);
}

static void t_checkpoint_gradcheck(void) {
    float xd[12], wd[12];
    t_fill(xd, 12, 21);
    t_fill(wd, 12, 22);
    int64_t n = 12;
    rb_tensor x = rb_tensor_wrap(xd, RB_F32, 1, &n), w = rb_tensor_wrap(wd, RB_F32, 1, &n);
    x.requires_grad = w.requires_grad = 1;
    rb_tensor *in[2] = {&x, &w};
    double err = t_gradcheck(ckpt_op, in, 2, NULL, 1e-3);
    CHECK(err < 1e-3, "relative error %.3g", err);
}

int main(void) {
    RUN(t_grads_reach_only_needed);
    RUN(t_accumulate_two_passes);
    RUN(t_backward_rejects);
    RUN(t_tape_print);
    RUN(t_checkpoint_same_grads_less_memory);
    RUN(t_checkpoint_cleans_up);
    RUN(t_checkpoint_gradcheck);
    return t_done();
}
