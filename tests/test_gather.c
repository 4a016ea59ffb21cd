/* Indexing ops: embedding and gather against naive loops, dtypes of tables and indices, gradients
 * (repeated indices add up), and untrusted indices refused with a message naming them. */
#include "util.h"

static rb_arena arena;
static rb_ctx cx;

static rb_ctx *ctx(void) { return t_fresh_ctx(&arena, &cx, 16 << 20); }

static float *F(const rb_tensor *t) { return t->data; }

/* ---- embedding ---- */

static void t_embedding(void) {
    enum { V = 10, C = 6 };
    float table[V * C];
    t_fill(table, V * C, 1);
    int64_t ids[2 * 3] = {3, 0, 9, 3, 7, 1};
    int32_t ids32[2 * 3] = {3, 0, 9, 3, 7, 1};
    rb_tensor tt = rb_tensor_wrap(table, RB_F32, 2, (int64_t[]){V, C});
    rb_tensor ti = rb_tensor_wrap(ids, RB_I64, 2, (int64_t[]){2, 3});
    rb_tensor ti32 = rb_tensor_wrap(ids32, RB_I32, 2, (int64_t[]){2, 3});
    rb_ctx *c = ctx();
    rb_tensor *o = rb_embedding(c, &tt, &ti), *o32 = rb_embedding(c, &tt, &ti32);
    REQUIRE(o && o32, "op: %s", rb_last_error());
    CHECK(o->ndim == 3 && o->shape[0] == 2 && o->shape[1] == 3 && o->shape[2] == C && o->dtype == RB_F32, "shape");
    int bad = 0;
    for (int k = 0; k < 6; k++)
        for (int j = 0; j < C; j++)
            bad += F(o)[k * C + j] != table[ids[k] * C + j];
    CHECK(bad == 0, "%d wrong", bad);
    CHECK(memcmp(o->data, o32->data, rb_nbytes(o)) == 0, "i32 ids give the same");
    /* ids as a strided view (transposed [3, 2]) */
    rb_tensor tv;
    REQUIRE(rb_view_permute(&tv, &ti, (int[]){1, 0}) == RB_OK, "view");
    CHECK(!rb_embedding(c, &ti, &ti) && c->status == RB_ERR_UNSUPPORTED, "i64 table refused: %s", rb_last_error());
    c = ctx();
    rb_tensor *ov = rb_embedding(c, &tt, &tv);
    REQUIRE(ov != NULL, "strided ids: %s", rb_last_error());
    bad = 0;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            for (int j = 0; j < C; j++)
                bad += F(ov)[(a * 2 + b) * C + j] != table[ids[b * 3 + a] * C + j];
    CHECK(bad == 0, "strided ids: %d wrong", bad);
    /* 0-d ids -> [C] */
    int64_t one = 4;
    rb_tensor t0 = rb_tensor_wrap(&one, RB_I64, 0, NULL);
    rb_tensor *o0 = rb_embedding(c, &tt, &t0);
    REQUIRE(o0 != NULL && o0->ndim == 1 && o0->shape[0] == C, "0-d ids");
    CHECK(memcmp(o0->data, table + 4 * C, C * sizeof(float)) == 0, "0-d ids values");
}

static void t_embedding_half_tables(void) {
    enum { V = 5, C = 40 };
    float src[V * C];
    t_fill(src, V * C, 2);
    uint16_t hb[V * C], hh[V * C];
    for (int k = 0; k < V * C; k++) {
        hb[k] = rb_f32_to_bf16(src[k]);
        hh[k] = rb_f32_to_f16(src[k]);
    }
    int64_t ids[4] = {4, 1, 1, 0};
    rb_tensor ti = rb_tensor_wrap(ids, RB_I64, 1, (int64_t[]){4});
    rb_tensor tb = rb_tensor_wrap(hb, RB_BF16, 2, (int64_t[]){V, C}), th = rb_tensor_wrap(hh, RB_F16, 2, (int64_t[]){V, C});
    rb_ctx *c = ctx();
    rb_tensor *ob = rb_embedding(c, &tb, &ti), *oh = rb_embedding(c, &th, &ti);
    REQUIRE(ob && oh && ob->dtype == RB_F32, "op: %s", rb_last_error());
    int bad = 0;
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < C; j++) {
            bad += F(ob)[k * C + j] != rb_bf16_to_f32(hb[ids[k] * C + j]);
            bad += F(oh)[k * C + j] != rb_f16_to_f32(hh[ids[k] * C + j]);
        }
    CHECK(bad == 0, "%d wrong", bad);
    /* a table view with non-unit column stride (transposed) */
    float tr[C * V];
    for (int v = 0; v < V; v++)
        for (int j = 0; j < C; j++)
            tr[j * V + v] = src[v * C + j];
    rb_tensor ttr = rb_tensor_wrap(tr, RB_F32, 2, (int64_t[]){C, V}), tv;
    REQUIRE(rb_view_permute(&tv, &ttr, (int[]){1, 0}) == RB_OK, "view");
    rb_tensor *ov = rb_embedding(c, &tv, &ti);
    REQUIRE(ov != NULL, "strided table: %s", rb_last_error());
    bad = 0;
    for (int k = 0; k < 4; k++)
        for (int j = 0; j < C; j++)
            bad += F(ov)[k * C + j] != src[ids[k] * C + j];
    CHECK(bad == 0, "strided table: %d wrong", bad);
}

static rb_tensor *f_embedding(rb_ctx *c, rb_tensor **in, void *u) { return rb_embedding(c, in[0], in[1]); }

static void t_embedding_grad(void) {
    enum { V = 7, C = 5 };
    float table[V * C];
    t_fill(table, V * C, 3);
    int64_t ids[2 * 4] = {6, 2, 2, 0, 5, 2, 6, 1}; /* repeats: their gradients add up */
    rb_tensor tt = rb_tensor_wrap(table, RB_F32, 2, (int64_t[]){V, C});
    rb_tensor ti = rb_tensor_wrap(ids, RB_I64, 2, (int64_t[]){2, 4});
    tt.requires_grad = 1;
    rb_tensor *in[2] = {&tt, &ti};
    double e = t_gradcheck(f_embedding, in, 2, NULL, 1e-2);
    CHECK(e < 1e-3, "rel err %g", e);
}

static void t_embedding_bad_ids(void) {
    float table[12];
    t_fill(table, 12, 4);
    rb_tensor tt = rb_tensor_wrap(table, RB_F32, 2, (int64_t[]){4, 3});
    int64_t big[3] = {1, 50000, 2}, neg[2] = {0, -1};
    int32_t big32[2] = {3, 4};
    rb_tensor tb = rb_tensor_wrap(big, RB_I64, 1, (int64_t[]){3}), tn = rb_tensor_wrap(neg, RB_I64, 1, (int64_t[]){2});
    rb_tensor tb32 = rb_tensor_wrap(big32, RB_I32, 1, (int64_t[]){2});
    rb_tensor tf = rb_tensor_wrap(table, RB_F32, 1, (int64_t[]){3});
    rb_ctx *c = ctx();
    CHECK(!rb_embedding(c, &tt, &tb) && c->status == RB_ERR_INVALID && strstr(rb_last_error(), "id 50000") &&
              strstr(rb_last_error(), "[0, 4)"),
          "id past the end: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_embedding(c, &tt, &tn) && strstr(rb_last_error(), "id -1"), "negative id: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_embedding(c, &tt, &tb32) && strstr(rb_last_error(), "id 4"), "i32 id: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_embedding(c, &tt, &tf) && c->status == RB_ERR_INVALID && strstr(rb_last_error(), "i64"),
          "float ids: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_embedding(c, &tf, &tb) && c->status == RB_ERR_INVALID, "1-d table");
    c = ctx();
    CHECK(!rb_embedding(c, NULL, &tb) && c->status == RB_ERR_INVALID, "NULL table");
    c = ctx();
    int64_t ids5[1] = {0};
    rb_tensor t5 = rb_tensor_wrap(ids5, RB_I64, 5, (int64_t[]){1, 1, 1, 1, 1});
    CHECK(!rb_embedding(c, &tt, &t5) && c->status == RB_ERR_INVALID, "5-d ids leave no room for C");
}

/* ---- gather ---- */

/* naive torch.gather on 3-d x [A, B, C] with index [a, b, c] */
static void ref_gather3(float *out, const float *x, const int64_t *xs, const int64_t *idx, const int64_t *is, int dim) {
    for (int64_t i = 0; i < is[0]; i++)
        for (int64_t j = 0; j < is[1]; j++)
            for (int64_t k = 0; k < is[2]; k++) {
                int64_t p[3] = {i, j, k};
                int64_t v = idx[(i * is[1] + j) * is[2] + k];
                p[dim] = v;
                out[(i * is[1] + j) * is[2] + k] = x[(p[0] * xs[1] + p[1]) * xs[2] + p[2]];
            }
}

static void t_gather(void) {
    int64_t xs[3] = {3, 4, 5}, is[3] = {2, 3, 4};
    float x[60], want[24];
    t_fill(x, 60, 5);
    int64_t idx[24];
    int32_t idx32[24];
    rb_tensor tx = rb_tensor_wrap(x, RB_F32, 3, xs);
    for (int dim = -1; dim < 3; dim++) {
        int d = dim < 0 ? 2 : dim;
        for (int k = 0; k < 24; k++)
            idx32[k] = (int32_t)(idx[k] = (k * 7 + 3) % xs[d]);
        rb_tensor ti = rb_tensor_wrap(idx, RB_I64, 3, is), ti32 = rb_tensor_wrap(idx32, RB_I32, 3, is);
        rb_ctx *c = ctx();
        rb_tensor *o = rb_gather(c, &tx, dim, &ti), *o32 = rb_gather(c, &tx, dim, &ti32);
        REQUIRE(o && o32, "dim %d: %s", dim, rb_last_error());
        CHECK(rb_same_shape(o, &ti), "dim %d: out has index's shape", dim);
        ref_gather3(want, x, xs, idx, is, d);
        CHECK(memcmp(o->data, want, sizeof want) == 0, "dim %d: values", dim);
        CHECK(memcmp(o32->data, want, sizeof want) == 0, "dim %d: i32 index", dim);
    }
    /* a strided x (a permuted view): gather reads through its strides */
    float y[60];
    t_fill(y, 60, 6);
    rb_tensor ty = rb_tensor_wrap(y, RB_F32, 3, (int64_t[]){5, 4, 3}), tv;
    REQUIRE(rb_view_permute(&tv, &ty, (int[]){2, 1, 0}) == RB_OK, "view"); /* [3, 4, 5] */
    float yc[60];
    for (int k = 0; k < 60; k++)
        yc[k] = (float)rb_tensor_get(&tv, k);
    for (int k = 0; k < 24; k++)
        idx[k] = (k * 5 + 1) % 4;
    rb_tensor ti = rb_tensor_wrap(idx, RB_I64, 3, is);
    rb_ctx *c = ctx();
    rb_tensor *o = rb_gather(c, &tv, 1, &ti);
    REQUIRE(o != NULL, "strided: %s", rb_last_error());
    ref_gather3(want, yc, xs, idx, is, 1);
    CHECK(memcmp(o->data, want, sizeof want) == 0, "strided x");
}

typedef struct {
    int dim;
} gather_args;

static rb_tensor *f_gather(rb_ctx *c, rb_tensor **in, void *u) { return rb_gather(c, in[0], ((gather_args *)u)->dim, in[1]); }

static void t_gather_grad(void) {
    float x[3 * 4 * 5];
    t_fill(x, 60, 7);
    rb_tensor tx = rb_tensor_wrap(x, RB_F32, 3, (int64_t[]){3, 4, 5});
    tx.requires_grad = 1;
    int64_t idx[3 * 4 * 6];
    for (int dim = 0; dim < 3; dim++) {
        /* index larger than x along dim (6 > 5 on dim 2) so entries repeat and must add up */
        int64_t is[3] = {2, 3, 4};
        is[dim] = 6;
        int64_t n = is[0] * is[1] * is[2];
        for (int64_t k = 0; k < n; k++)
            idx[k] = (k * 11 + 2) % tx.shape[dim];
        rb_tensor ti = rb_tensor_wrap(idx, RB_I64, 3, is);
        rb_tensor *in[2] = {&tx, &ti};
        gather_args a = {dim};
        double e = t_gradcheck(f_gather, in, 2, &a, 1e-2);
        CHECK(e < 1e-3, "dim %d: rel err %g", dim, e);
    }
}

static void t_gather_bad(void) {
    float x[12];
    t_fill(x, 12, 8);
    rb_tensor tx = rb_tensor_wrap(x, RB_F32, 2, (int64_t[]){3, 4});
    int64_t idx[6] = {0, 1, 2, 3, 4, 0};
    rb_tensor t23 = rb_tensor_wrap(idx, RB_I64, 2, (int64_t[]){2, 3});
    rb_tensor t41 = rb_tensor_wrap(idx, RB_I64, 2, (int64_t[]){4, 1});
    rb_tensor t1 = rb_tensor_wrap(idx, RB_I64, 1, (int64_t[]){6});
    rb_ctx *c = ctx();
    CHECK(!rb_gather(c, &tx, 1, &t23) && c->status == RB_ERR_INVALID && strstr(rb_last_error(), "index 4") &&
              strstr(rb_last_error(), "[0, 4)"),
          "value out of range: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_gather(c, &tx, 1, &t41) && strstr(rb_last_error(), "larger"), "index rows > x rows: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_gather(c, &tx, 0, &t1) && strstr(rb_last_error(), "dims"), "ndim mismatch: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_gather(c, &tx, 2, &t23) && c->status == RB_ERR_INVALID, "dim out of range");
    c = ctx();
    CHECK(!rb_gather(c, &tx, 0, NULL) && c->status == RB_ERR_INVALID, "NULL index");
    idx[4] = -1;
    c = ctx();
    CHECK(!rb_gather(c, &tx, 1, &t23) && strstr(rb_last_error(), "index -1"), "negative: %s", rb_last_error());
    c = ctx();
    CHECK(!rb_gather(c, &tx, 0, &tx) && strstr(rb_last_error(), "i64"), "float index: %s", rb_last_error());
}

int main(void) {
    RUN(t_embedding);
    RUN(t_embedding_half_tables);
    RUN(t_embedding_grad);
    RUN(t_embedding_bad_ids);
    RUN(t_gather);
    RUN(t_gather_grad);
    RUN(t_gather_bad);
    rb_arena_free(&arena);
    return t_done();
}
