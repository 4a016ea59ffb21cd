/* Core: dtype conversion, tensor views, arena marks, memory budget, errors. */
#include "harness.h"

#include "core/arena.h"
#include "core/mem.h"
#include "core/tensor.h"

static void t_f16_bf16_roundtrip(void) {
    /* values exactly representable in f16 survive; rounding is to nearest even */
    float vals[] = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f, 0.333251953125f};
    for (size_t i = 0; i < sizeof vals / sizeof *vals; i++)
        CHECK(rb_f16_to_f32(rb_f32_to_f16(vals[i])) == vals[i], "f16 %g", vals[i]);
    CHECK(rb_f32_to_f16(65520.0f) == 0x7c00, "overflow to inf");
    CHECK(rb_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00, "tie rounds to even (down)");
    CHECK(rb_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02, "tie rounds to even (up)");
    CHECK(rb_f32_to_bf16(1.0f) == 0x3f80, "bf16 1");
    CHECK(rb_bf16_to_f32(rb_f32_to_bf16(3.140625f)) == 3.140625f, "bf16 exact");
    CHECK(isnan(rb_f16_to_f32(rb_f32_to_f16(NAN))), "nan");
    float buf[1000];
    uint16_t h[1000];
    for (int i = 0; i < 1000; i++)
        buf[i] = (float)(i - 500) * 0.37f;
    rb_f32_to_f16_n(h, buf, 1000);
    for (int i = 0; i < 1000; i++)
        CHECK(h[i] == rb_f32_to_f16(buf[i]), "bulk f16 %d", i);
    /* bulk paths agree with the scalar rules bit for bit, on every f16 and on awkward f32 values */
    static uint16_t all[65536], back[65536];
    static float f[65536], g[65536];
    for (int i = 0; i < 65536; i++)
        all[i] = (uint16_t)i;
    rb_f16_to_f32_n(f, all, 65536);
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        float s = rb_f16_to_f32(all[i]);
        bad += memcmp(&s, &f[i], 4) != 0 && !(isnan(s) && isnan(f[i]));
    }
    CHECK(bad == 0, "f16->f32 bulk mismatches: %d", bad);
    rb_f32_to_f16_n(back, f, 65536);
    bad = 0;
    for (int i = 0; i < 65536; i++)
        bad += back[i] != rb_f32_to_f16(f[i]) && !isnan(f[i]);
    CHECK(bad == 0, "f32->f16 bulk mismatches: %d", bad);
    uint32_t u = 0x12345678;
    for (int i = 0; i < 65536; i++) {
        u = u * 1664525u + 1013904223u;
        memcpy(&g[i], &u, 4);
    }
    g[0] = NAN, g[1] = INFINITY, g[2] = -0.0f, g[3] = 1.00390625f /* bf16 tie */;
    rb_f32_to_bf16_n(back, g, 65536);
    bad = 0;
    for (int i = 0; i < 65536; i++)
        bad += back[i] != rb_f32_to_bf16(g[i]);
    CHECK(bad == 0, "f32->bf16 bulk mismatches: %d", bad);
    rb_bf16_to_f32_n(f, back, 65536);
    bad = 0;
    for (int i = 0; i < 65536; i++) {
        float s = rb_bf16_to_f32(back[i]);
        bad += memcmp(&s, &f[i], 4) != 0;
    }
    CHECK(bad == 0, "bf16->f32 bulk mismatches: %d", bad);
}

static void t_views(void) {
    float d[24];
    for (int i = 0; i < 24; i++)
        d[i] = (float)i;
    rb_tensor t = rb_tensor_wrap(d, RB_F32, 3, (int64_t[]){2, 3, 4}), p, s, r;
    REQUIRE(rb_view_permute(&p, &t, (int[]){2, 0, 1}) == RB_OK, "permute");
    CHECK(p.shape[0] == 4 && p.shape[1] == 2 && p.shape[2] == 3 && !rb_is_contiguous(&p), "permuted shape");
    CHECK(rb_tensor_get(&p, 1) == 4.0, "p[0,0,1] = t[0,1,0] = 4, got %g", rb_tensor_get(&p, 1));
    REQUIRE(rb_view_slice(&s, &t, 2, 1, 3) == RB_OK, "slice");
    CHECK(rb_tensor_get(&s, 2) == 5.0, "s[0,1,0] = t[0,1,1] = 5");
    CHECK(rb_view_reshape(&r, &p, 2, (int64_t[]){8, 3}) != RB_OK, "reshape of a non-contiguous view fails");
    CHECK(rb_view_reshape(&r, &t, 2, (int64_t[]){-1, 6}) == RB_OK && r.shape[0] == 4, "reshape -1");
    CHECK(rb_view_reshape(&r, &t, 2, (int64_t[]){5, 5}) == RB_ERR_INVALID && strstr(rb_last_error(), "reshape"),
          "bad reshape message");
    float out[24];
    rb_tensor o = rb_tensor_wrap(out, RB_F32, 3, p.shape);
    REQUIRE(rb_tensor_copy(&o, &p) == RB_OK, "copy");
    for (int i = 0; i < 24; i++)
        CHECK(out[i] == (float)rb_tensor_get(&p, i), "copy %d", i);
}

static void t_arena(void) {
    rb_arena a;
    REQUIRE(rb_arena_init(&a, 1 << 16, "test arena") == RB_OK, "init");
    size_t m = rb_arena_mark(&a);
    rb_tensor *x = rb_arena_tensor(&a, RB_F32, 2, (int64_t[]){16, 16});
    REQUIRE(x != NULL, "alloc");
    CHECK(((uintptr_t)x->data & 63) == 0, "aligned");
    rb_tensor *big = rb_arena_tensor(&a, RB_F32, 1, (int64_t[]){1 << 20});
    CHECK(big == NULL && strstr(rb_last_error(), "test arena: arena full"), "full arena error: %s", rb_last_error());
    rb_arena_reset(&a, m);
    rb_tensor *y = rb_arena_tensor(&a, RB_F32, 2, (int64_t[]){16, 16});
    CHECK(y == x, "reset reuses memory");
    CHECK(rb_arena_tensor(&a, RB_F32, 2, (int64_t[]){INT64_MAX / 2, 4}) == NULL, "overflowing shape refused");
    rb_arena_free(&a);
}

static void t_mem_limit(void) {
    size_t old = rb_get_mem_limit();
    rb_set_mem_limit(rb_mem_in_use() + (1 << 20));
    void *p = rb_alloc(1 << 21, "big block");
    CHECK(p == NULL && strstr(rb_last_error(), "memory limit"), "limit enforced: %s", rb_last_error());
    void *q = rb_alloc(1 << 10, "small block");
    CHECK(q != NULL, "small allocation fits");
    rb_free(q);
    rb_set_mem_limit(old);
    size_t v = 0;
    CHECK(rb_parse_size("20G", &v) && v == (size_t)20 << 30, "parse 20G");
    CHECK(!rb_parse_size("12Q", &v), "parse rejects junk");
}

int main(void) {
    RUN(t_f16_bf16_roundtrip);
    RUN(t_views);
    RUN(t_arena);
    RUN(t_mem_limit);
    return t_done();
}
