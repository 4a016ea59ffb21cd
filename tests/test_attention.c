/* Attention: forward and gradients against a naive double-precision reference (explicit softmax),
 * finite differences, broadcast and -inf masks, strided inputs, bad shapes, and arena usage that
 * shows no full score matrix is ever allocated. */
#include <stdint.h>

#include "gradcheck.h"
#include "ops/attention.h"

/* ---- naive reference in double ---- */

typedef struct {
    int B, H, Lq, Lk, D, Dv;
    double scale;
} dims;

/* Element accessors for tensors that may be strided views. */
static double at3(const rb_tensor *t, int64_t b, int64_t l, int64_t c) {
    return ((const float *)t->data)[b * t->stride[0] + l * t->stride[1] + c * t->stride[2]];
}
static double mask_at(const rb_tensor *m, int b, int h, int i, int j) {
    if (!m)
        return 0;
    int64_t idx[4] = {b, h, i, j}, off = 0;
    for (int d = 0; d < 4; d++)
        off += (m->shape[d] == 1 ? 0 : idx[d]) * m->stride[d];
    return ((const float *)m->data)[off];
}

/* out [B, Lq, H*Dv] (double); with dout given also dq/dk/dv (same layouts as q/k/v, contiguous);
 * with absout given also sum_j P_ij |v_j| (out's layout), the scale of P's rounding error. */
static void reference(const dims *s, const rb_tensor *q, const rb_tensor *k, const rb_tensor *v, const rb_tensor *m,
                      double *out, double *absout, const float *dout, double *dq, double *dk, double *dv) {
    double *p = malloc(sizeof(double) * (size_t)s->Lk), *dp = malloc(sizeof(double) * (size_t)s->Lk);
    int64_t ldq = (int64_t)s->H * s->D, ldv = (int64_t)s->H * s->Dv;
    for (int b = 0; b < s->B; b++)
        for (int h = 0; h < s->H; h++)
            for (int i = 0; i < s->Lq; i++) {
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < s->Lk; j++) {
                    double acc = 0;
                    for (int d = 0; d < s->D; d++)
                        acc += at3(q, b, i, h * s->D + d) * at3(k, b, j, h * s->D + d);
                    p[j] = s->scale * acc + mask_at(m, b, h, i, j);
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j < s->Lk; j++)
                    sum += p[j] = exp(p[j] - mx);
                for (int j = 0; j < s->Lk; j++)
                    p[j] /= sum;
                double *o = out + ((int64_t)b * s->Lq + i) * ldv + h * s->Dv;
                for (int e = 0; e < s->Dv; e++) {
                    double acc = 0, aacc = 0;
                    for (int j = 0; j < s->Lk; j++) {
                        acc += p[j] * at3(v, b, j, h * s->Dv + e);
                        aacc += p[j] * fabs(at3(v, b, j, h * s->Dv + e));
                    }
                    o[e] = acc;
                    if (absout)
                        absout[o - out + e] = aacc;
                }
                if (!dout)
                    continue;
                const float *go = dout + ((int64_t)b * s->Lq + i) * ldv + h * s->Dv;
                double pdp = 0;
                for (int j = 0; j < s->Lk; j++) {
                    double acc = 0;
                    for (int e = 0; e < s->Dv; e++) {
                        acc += go[e] * at3(v, b, j, h * s->Dv + e);
                        dv[((int64_t)b * s->Lk + j) * ldv + h * s->Dv + e] += p[j] * go[e];
                    }
                    dp[j] = acc;
                    pdp += p[j] * acc;
                }
                for (int j = 0; j < s->Lk; j++) {
                    double ds = p[j] * (dp[j] - pdp) * s->scale;
                    for (int d = 0; d < s->D; d++) {
                        dq[((int64_t)b * s->Lq + i) * ldq + h * s->D + d] += ds * at3(k, b, j, h * s->D + d);
                        dk[((int64_t)b * s->Lk + j) * ldq + h * s->D + d] += ds * at3(q, b, i, h * s->D + d);
                    }
                }
            }
    free(p);
    free(dp);
}

/* |got - want| <= tol * max|want| everywhere; returns the worst ratio |got - want| / max|want|. */
static double rel_err(const float *got, const double *want, size_t n) {
    double scale = 0, worst = 0;
    for (size_t i = 0; i < n; i++)
        scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    for (size_t i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        if (d > worst || d != d)
            worst = d;
    }
    return worst / (scale > 0 ? scale : 1);
}

static rb_tensor *rand_tensor(rb_arena *a, int ndim, const int64_t *shape, unsigned seed) {
    rb_tensor *t = rb_arena_tensor(a, RB_F32, ndim, shape);
    if (t)
        t_fill(t->data, (size_t)rb_numel(t), seed);
    return t;
}

/* mask kinds: 0 none, 1 full [B,H,Lq,Lk], 2 [1,1,Lq,Lk], 3 [B,1,1,Lk]; -inf entries in all, and
 * kind 2 hides keys 0..129 from even query rows (whole key blocks of only -inf). */
static rb_tensor *make_mask(rb_arena *a, const dims *s, int kind) {
    if (!kind)
        return NULL;
    int64_t shape[4] = {kind == 2 ? 1 : s->B, kind == 1 ? s->H : 1, kind == 3 ? 1 : s->Lq, s->Lk};
    rb_tensor *m = rand_tensor(a, 4, shape, 77 + kind);
    float *d = m->data;
    for (int64_t r = 0; r < shape[0] * shape[1] * shape[2]; r++)
        for (int j = 0; j < s->Lk - 1; j++) { /* the last key always stays finite */
            int i = (int)(r % shape[2]);
            if ((kind == 1 && (j + r) % 7 == 3) || (kind == 2 && i % 2 == 0 && j < 130) || (kind == 3 && j % 5 == 1))
                d[r * s->Lk + j] = -INFINITY;
            else
                d[r * s->Lk + j] *= 2.0f;
        }
    return m;
}

/* Runs rb_attention on fresh inputs; strided = q is a slice along L of a longer tensor and k, v are
 * column halves of one fused [B, Lk, H*D + H*Dv] tensor. Returns the worst relative error. */
static double forward_case(const dims *s, int mask_kind, int strided, float scale_arg) {
    rb_arena a;
    if (rb_arena_init(&a, 64 << 20, "test") != RB_OK)
        return INFINITY;
    rb_ctx c;
    rb_ctx_init(&c, &a);
    int64_t C = (int64_t)s->H * s->D, Cv = (int64_t)s->H * s->Dv;
    rb_tensor *q, *k, *v, qv, kv_k, kv_v;
    if (strided) {
        rb_tensor *qbig = rand_tensor(&a, 3, (int64_t[]){s->B, s->Lq + 9, C}, 1);
        rb_tensor *kv = rand_tensor(&a, 3, (int64_t[]){s->B, s->Lk, C + Cv}, 2);
        rb_view_slice(&qv, qbig, 1, 5, 5 + s->Lq);
        rb_view_slice(&kv_k, kv, 2, 0, C);
        rb_view_slice(&kv_v, kv, 2, C, C + Cv);
        q = &qv, k = &kv_k, v = &kv_v;
    } else {
        q = rand_tensor(&a, 3, (int64_t[]){s->B, s->Lq, C}, 1);
        k = rand_tensor(&a, 3, (int64_t[]){s->B, s->Lk, C}, 2);
        v = rand_tensor(&a, 3, (int64_t[]){s->B, s->Lk, Cv}, 3);
    }
    rb_tensor *m = make_mask(&a, s, mask_kind);
    rb_tensor *out = rb_attention(&c, q, k, v, s->H, m, scale_arg);
    double err = INFINITY;
    if (out) {
        size_t n = (size_t)rb_numel(out);
        double *ref = calloc(n, sizeof *ref);
        reference(s, q, k, v, m, ref, NULL, NULL, NULL, NULL, NULL);
        err = rel_err(out->data, ref, n);
        free(ref);
    } else {
        fprintf(stderr, "  attention failed: %s\n", rb_last_error());
    }
    rb_arena_free(&a);
    return err;
}

static void t_forward_vs_double(void) {
    struct {
        dims s;
        int mask, strided;
        float scale;
    } cases[] = {
        {{2, 3, 70, 133, 16, 24, 0}, 0, 0, 0.0f},  /* Lq != Lk, D != Dv, partial tiles */
        {{1, 1, 5, 200, 64, 64, 0}, 0, 0, 0.3f},   /* explicit scale, one partial query tile */
        {{2, 3, 65, 67, 8, 40, 0}, 1, 0, 0.0f},    /* full mask with -inf */
        {{2, 3, 130, 133, 16, 16, 0}, 2, 0, 0.0f}, /* [1,1,Lq,Lk], whole -inf key block */
        {{2, 1, 33, 150, 20, 12, 0}, 3, 0, 0.0f},  /* [B,1,1,Lk] */
        {{2, 3, 70, 90, 16, 24, 0}, 3, 1, 0.0f},   /* strided q, k, v */
        {{1, 2, 1, 1, 3, 5, 0}, 0, 0, 0.0f},       /* a single key */
        {{1, 1, 64, 128, 64, 64, 0}, 0, 0, 0.0f},  /* exact tile multiples */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        dims s = cases[i].s;
        s.scale = cases[i].scale != 0 ? cases[i].scale : 1.0 / sqrt((double)s.D);
        double err = forward_case(&s, cases[i].mask, cases[i].strided, cases[i].scale);
        CHECK(err < 2e-6, "case %zu (B%d H%d Lq%d Lk%d D%d Dv%d mask %d): rel err %.3g", i, s.B, s.H, s.Lq, s.Lk,
              s.D, s.Dv, cases[i].mask, err);
    }
}

/* bf16 tiles (c->matmul_dtype = RB_BF16, inference): q, k, v and P are rounded to bf16, products
 * accumulate in f32. Against a double reference on the bf16-rounded q, k, v (power-of-two scales, so
 * pre-scaling q before rounding changes nothing) what remains is P's rounding: each term of
 * sum_j P_j v_j is off by at most 2^-8 relative, so |out - ref| <= 2^-8 sum_j P_j |v_j| (+ f32
 * noise). While recording for training the forward stays f32. */
static void t_bf16_tiles(void) {
#ifndef __AVX512BF16__
    t_skip("built without AVX512-BF16: bf16 requests run in f32");
    return;
#endif
    dims cases[] = {{2, 3, 70, 133, 16, 24, 0.25}, {1, 2, 130, 300, 64, 64, 0.125}, {1, 1, 9, 5, 5, 7, 0.5}};
    for (size_t n = 0; n < sizeof cases / sizeof *cases; n++) {
        dims *s = &cases[n];
        rb_arena a, g;
        REQUIRE(rb_arena_init(&a, 64 << 20, "test") == RB_OK && rb_arena_init(&g, 16 << 20, "g") == RB_OK, "arena");
        rb_ctx c;
        rb_ctx_init(&c, &a);
        c.matmul_dtype = RB_BF16;
        int64_t C = (int64_t)s->H * s->D, Cv = (int64_t)s->H * s->Dv;
        rb_tensor *in[3] = {rand_tensor(&a, 3, (int64_t[]){s->B, s->Lq, C}, 31),
                            rand_tensor(&a, 3, (int64_t[]){s->B, s->Lk, C}, 32),
                            rand_tensor(&a, 3, (int64_t[]){s->B, s->Lk, Cv}, 33)};
        rb_tensor *m = make_mask(&a, s, 3);
        rb_tensor *out = rb_attention(&c, in[0], in[1], in[2], s->H, m, (float)s->scale);
        REQUIRE(out, "bf16 attention: %s", rb_last_error());
        size_t no = (size_t)rb_numel(out);
        double *ref = calloc(no, sizeof *ref), *bound = calloc(no, sizeof *bound), *ref32 = calloc(no, sizeof *ref32);
        reference(s, in[0], in[1], in[2], m, ref32, NULL, NULL, NULL, NULL, NULL);
        for (int i = 0; i < 3; i++) { /* round the inputs to bf16 for the reference */
            float *d = in[i]->data;
            for (int64_t j = 0; j < rb_numel(in[i]); j++)
                d[j] = rb_bf16_to_f32(rb_f32_to_bf16(d[j]));
        }
        reference(s, in[0], in[1], in[2], m, ref, bound, NULL, NULL, NULL, NULL);
        double worst = 0, scale = 0;
        for (size_t j = 0; j < no; j++)
            scale = fmax(scale, fabs(ref[j]));
        for (size_t j = 0; j < no; j++) {
            double r = fabs(((float *)out->data)[j] - ref[j]) / (bound[j] / 256 + 2e-6 * scale);
            worst = r > worst || r != r ? r : worst;
        }
        CHECK(worst <= 1.0, "case %zu: bf16 error exceeds the rounding bound by %.3g x", n, worst);
        double err32 = rel_err(out->data, ref32, no);
        CHECK(err32 > 1e-5, "case %zu: bf16 tiles not used? rel err vs f32 reference only %.3g", n, err32);
        /* recording: f32 forward despite matmul_dtype (the backward recomputes P in f32) */
        rb_tape tape;
        rb_tape_init(&tape, 4, &g);
        c.tape = &tape;
        in[0]->requires_grad = 1;
        out = rb_attention(&c, in[0], in[1], in[2], s->H, m, (float)s->scale);
        REQUIRE(out, "recorded: %s", rb_last_error());
        double err = rel_err(out->data, ref, no);
        CHECK(err < 2e-6, "case %zu: recorded forward rel err %.3g", n, err);
        rb_tape_free(&tape);
        free(ref);
        free(bound);
        free(ref32);
        rb_arena_free(&a);
        rb_arena_free(&g);
    }
}

/* ---- gradients ---- */

typedef struct {
    int heads;
    rb_tensor *mask;
} op_args;

static rb_tensor *attn_op(rb_ctx *c, rb_tensor **in, void *user) {
    op_args *a = user;
    return rb_attention(c, in[0], in[1], in[2], a->heads, a->mask, 0.0f);
}

static void t_gradcheck_small(void) {
    rb_arena a;
    REQUIRE(rb_arena_init(&a, 1 << 20, "test") == RB_OK, "arena");
    dims s = {2, 2, 5, 7, 3, 4, 0};
    rb_tensor *in[3] = {rand_tensor(&a, 3, (int64_t[]){2, 5, 6}, 11), rand_tensor(&a, 3, (int64_t[]){2, 7, 6}, 12),
                        rand_tensor(&a, 3, (int64_t[]){2, 7, 8}, 13)};
    for (int i = 0; i < 3; i++)
        in[i]->requires_grad = 1;
    for (int kind = 0; kind <= 3; kind++) {
        op_args args = {2, make_mask(&a, &s, kind)};
        double err = t_gradcheck(attn_op, in, 3, &args, 1e-2);
        CHECK(err < 1e-4, "mask kind %d: gradcheck rel err %.3g", kind, err);
    }
    rb_arena_free(&a);
}

/* Analytic gradients vs the double reference on multi-tile shapes, accumulating into preset grads. */
static void grad_case(const dims *s, int mask_kind, const int need[3]) {
    rb_arena a, g;
    REQUIRE(rb_arena_init(&a, 64 << 20, "test") == RB_OK && rb_arena_init(&g, 64 << 20, "grads") == RB_OK, "arenas");
    rb_tape tape;
    rb_tape_init(&tape, 16, &g);
    rb_ctx c;
    rb_ctx_init(&c, &a);
    c.tape = &tape;
    int64_t C = (int64_t)s->H * s->D, Cv = (int64_t)s->H * s->Dv;
    rb_tensor *in[3] = {rand_tensor(&a, 3, (int64_t[]){s->B, s->Lq, C}, 21),
                        rand_tensor(&a, 3, (int64_t[]){s->B, s->Lk, C}, 22),
                        rand_tensor(&a, 3, (int64_t[]){s->B, s->Lk, Cv}, 23)};
    for (int i = 0; i < 3; i++) {
        in[i]->requires_grad = need[i];
        if (need[i]) { /* a parameter-style preset gradient of 0.5 everywhere: backward must add to it */
            in[i]->grad = rb_arena_tensor(&g, RB_F32, 3, in[i]->shape);
            for (int64_t j = 0; j < rb_numel(in[i]); j++)
                ((float *)in[i]->grad->data)[j] = 0.5f;
        }
    }
    rb_tensor *m = make_mask(&a, s, mask_kind);
    rb_tensor *out = rb_attention(&c, in[0], in[1], in[2], s->H, m, 0.0f);
    REQUIRE(out && tape.n == 1, "recorded: %s", rb_last_error());
    rb_tensor *dout = rand_tensor(&a, 3, out->shape, 99);
    REQUIRE(rb_backward_with(&c, out, dout) == RB_OK, "backward: %s", rb_last_error());
    size_t n[3] = {(size_t)rb_numel(in[0]), (size_t)rb_numel(in[1]), (size_t)rb_numel(in[2])};
    double *ref[3], *o = calloc((size_t)rb_numel(out), sizeof(double));
    for (int i = 0; i < 3; i++)
        ref[i] = calloc(n[i], sizeof(double));
    reference(s, in[0], in[1], in[2], m, o, NULL, dout->data, ref[0], ref[1], ref[2]);
    const char *names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        if (!need[i]) {
            CHECK(in[i]->grad == NULL, "%s not requested but created", names[i]);
            continue;
        }
        for (size_t j = 0; j < n[i]; j++)
            ref[i][j] += 0.5;
        double err = rel_err(in[i]->grad->data, ref[i], n[i]);
        CHECK(err < 2e-6, "%s (B%d H%d Lq%d Lk%d D%d Dv%d mask %d): rel err %.3g", names[i], s->B, s->H, s->Lq,
              s->Lk, s->D, s->Dv, mask_kind, err);
    }
    for (int i = 0; i < 3; i++)
        free(ref[i]); /* also the ones skipped above (leak found by make sanitize) */
    free(o);
    rb_tape_free(&tape);
    rb_arena_free(&a);
    rb_arena_free(&g);
}

static void t_grad_vs_double(void) {
    const int all[3] = {1, 1, 1}, only_v[3] = {0, 0, 1}, only_q[3] = {1, 0, 0};
    grad_case(&(dims){2, 3, 70, 133, 16, 24, 1.0 / 4}, 3, all);
    grad_case(&(dims){1, 2, 130, 67, 8, 8, 1.0 / sqrt(8)}, 2, all);
    grad_case(&(dims){2, 1, 65, 65, 64, 32, 1.0 / 8}, 1, only_v);
    grad_case(&(dims){1, 3, 17, 100, 12, 20, 1.0 / sqrt(12)}, 0, only_q);
    /* one head, three key blocks: with 2+ threads the keys are split into chunks with private dQ */
    grad_case(&(dims){1, 1, 70, 300, 16, 16, 1.0 / 4}, 1, all);
    grad_case(&(dims){1, 2, 40, 600, 8, 8, 1.0 / sqrt(8)}, 3, all); /* keys beyond one L2 super-block */
}

/* ---- errors ---- */

static void t_bad_shapes(void) {
    rb_arena a;
    REQUIRE(rb_arena_init(&a, 1 << 20, "test") == RB_OK, "arena");
    rb_ctx c;
    rb_ctx_init(&c, &a);
    rb_tensor *q = rand_tensor(&a, 3, (int64_t[]){2, 5, 12}, 1), *k = rand_tensor(&a, 3, (int64_t[]){2, 7, 12}, 2),
              *v = rand_tensor(&a, 3, (int64_t[]){2, 7, 6}, 3), *k6 = rand_tensor(&a, 3, (int64_t[]){2, 6, 12}, 4),
              *q2 = rand_tensor(&a, 2, (int64_t[]){5, 12}, 5), *kb = rand_tensor(&a, 3, (int64_t[]){1, 7, 12}, 6),
              *m_bad = rand_tensor(&a, 4, (int64_t[]){2, 3, 5, 2}, 7), *m3 = rand_tensor(&a, 3, (int64_t[]){2, 5, 7}, 8);
    rb_tensor qt;
    rb_view_permute(&qt, rand_tensor(&a, 3, (int64_t[]){2, 12, 5}, 9), (int[]){0, 2, 1});
    struct {
        rb_tensor *q, *k, *v, *m;
        int heads;
        const char *what;
    } bad[] = {
        {q2, k, v, NULL, 3, "2-d q"},          {q, k, v, NULL, 5, "heads do not divide"},
        {q, k6, v, NULL, 3, "Lk of k != v"},   {q, kb, v, NULL, 3, "batch mismatch"},
        {q, k, v, m_bad, 3, "mask last dim"}, {q, k, v, m3, 3, "3-d mask"},
        {&qt, k, v, NULL, 3, "strided last dim"}, {q, NULL, v, NULL, 3, "NULL k"},
        {q, k, v, NULL, 0, "zero heads"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rb_ctx_clear(&c);
        rb_tensor *o = rb_attention(&c, bad[i].q, bad[i].k, bad[i].v, bad[i].heads, bad[i].m, 0.0f);
        CHECK(o == NULL && c.status == RB_ERR_INVALID && strstr(rb_last_error(), "attention"), "%s: %s", bad[i].what,
              rb_last_error());
    }
    rb_ctx_clear(&c);
    CHECK(rb_attention(&c, q, k, v, 3, NULL, 0.0f) != NULL, "good shapes pass: %s", rb_last_error());
    c.status = RB_ERR_IO;
    CHECK(rb_attention(&c, q, k, v, 3, NULL, 0.0f) == NULL, "sticky error");
    rb_arena_free(&a);
}

/* ---- memory: only tiles of the score matrix ---- */

/* Peak bytes of the op's arena for forward (+ backward when train) at the given sizes. */
static size_t arena_peak(int Lq, int Lk, int train) {
    rb_arena in, a, g;
    size_t cap = ((size_t)8 + (size_t)rb_get_num_threads()) << 20;
    if (rb_arena_init(&in, 8 << 20, "inputs") || rb_arena_init(&a, cap, "ops") || rb_arena_init(&g, 8 << 20, "g"))
        return SIZE_MAX;
    rb_tape tape;
    rb_tape_init(&tape, 16, &g);
    rb_ctx c;
    rb_ctx_init(&c, &a);
    c.tape = train ? &tape : NULL;
    rb_tensor *q = rand_tensor(&in, 3, (int64_t[]){1, Lq, 64}, 1), *k = rand_tensor(&in, 3, (int64_t[]){1, Lk, 64}, 2),
              *v = rand_tensor(&in, 3, (int64_t[]){1, Lk, 64}, 3);
    q->requires_grad = k->requires_grad = v->requires_grad = 1;
    rb_tensor *out = rb_attention(&c, q, k, v, 1, NULL, 0.0f);
    size_t peak = SIZE_MAX;
    if (out && (!train || rb_backward_with(&c, out, rand_tensor(&in, 3, out->shape, 4)) == RB_OK))
        peak = a.peak;
    rb_tape_free(&tape);
    rb_arena_free(&in);
    rb_arena_free(&a);
    rb_arena_free(&g);
    return peak;
}

static void t_no_full_score_matrix(void) {
    /* Beyond the output (and lse/delta [Lq] when training) only per-thread tiles: < 1/32 of the
     * scores per thread. With fewer heads than threads the backward also keeps one dQ [Lq, D] per
     * key chunk (at most one chunk per thread), which is left out of the comparison. */
    int nt = rb_get_num_threads();
    size_t scores = (size_t)1024 * 1024 * sizeof(float), out = (size_t)1024 * 64 * sizeof(float), dq[2];
    for (int i = 0; i < 2; i++) {
        rb_attn_shape s = {.B = 1, .H = 1, .Lq = 1024, .Lk = 1024 << i, .D = 64, .Dv = 64};
        dq[i] = attention_backward_dq_part(&s, nt) * sizeof(float);
    }
    size_t f1 = arena_peak(1024, 1024, 0), f2 = arena_peak(1024, 2048, 0);
    size_t b1 = arena_peak(1024, 1024, 1) - dq[0], b2 = arena_peak(1024, 2048, 1) - dq[1];
    CHECK(f1 != SIZE_MAX && b1 < SIZE_MAX - dq[0], "runs: %s", rb_last_error());
    CHECK(f1 == f2 && b1 == b2, "peak grows with Lk: forward %zu -> %zu, train %zu -> %zu", f1, f2, b1, b2);
    CHECK(f1 - out < nt * scores / 32, "forward peak %zu, output %zu, scores %zu", f1, out, scores);
    CHECK(b1 - out < nt * scores / 32, "train peak %zu (without dq parts), output %zu, scores %zu", b1, out, scores);
    printf("  arena peak at Lq = Lk = 1024, D = 64, %d threads: forward %zu B, forward+backward %zu B (scores %zu B)\n",
           nt, f1, b1 + dq[0], scores);
}

int main(void) {
    RUN(t_forward_vs_double);
    RUN(t_bf16_tiles);
    RUN(t_gradcheck_small);
    RUN(t_grad_vs_double);
    RUN(t_bad_shapes);
    RUN(t_no_full_score_matrix);
    return t_done();
}
