/* Fixtures shared by the op tests (tests/test_<op family>.c): random tensors in an arena, a tape
 * for gradients, a fresh context per check, closeness to a reference value, and the
 * no-allocation-after-warm-up check. */
#ifndef RB_TEST_UTIL_H
#define RB_TEST_UTIL_H

#include "gradcheck.h"

#include "core/arena.h"
#include "core/mem.h"

/* a float32 tensor in `arena` filled with t_fill(seed): uniform(-1, 1) */
static inline rb_tensor *t_rand_tensor(rb_arena *arena, int nd, const int64_t *shape, unsigned seed) {
    rb_tensor *t = rb_arena_tensor(arena, RB_F32, nd, shape);
    t_fill(t->data, (size_t)rb_numel(t), seed);
    return t;
}

/* |got - want| <= tol * (1 + |want|): tol is relative for large values, absolute near zero */
static inline int t_close_to(float got, double want, double tol) { return fabs(got - want) <= tol * (1 + fabs(want)); }

/* A tape (with its gradient arena) switched on for context c by t_tape_on, off and freed by t_tape_off. */
typedef struct {
    rb_arena grads;
    rb_tape tape;
} t_tape_env;
static inline int t_tape_on(t_tape_env *e, rb_ctx *c) {
    if (rb_arena_init(&e->grads, 16 << 20, "grads") != RB_OK || rb_tape_init(&e->tape, 16, &e->grads) != RB_OK)
        return 0;
    c->tape = &e->tape;
    return 1;
}
static inline void t_tape_off(t_tape_env *e, rb_ctx *c) {
    c->tape = NULL;
    rb_tape_free(&e->tape);
    rb_arena_free(&e->grads);
}

/* cx set up fresh over `arena` emptied (created with `bytes` on first use); NULL when it cannot be. */
static inline rb_ctx *t_fresh_ctx(rb_arena *arena, rb_ctx *cx, size_t bytes) {
    if (!arena->base && rb_arena_init(arena, bytes, "test arena") != RB_OK)
        return NULL;
    rb_arena_reset(arena, 0);
    rb_ctx_init(cx, arena);
    return cx;
}

/* One iteration of t_check_no_alloc_after_warmup: builds the ops on c (tape on) and returns the
 * output, clearing the gradients of its inputs (the arenas are reset between iterations). */
typedef rb_tensor *(*t_warm_step_fn)(rb_ctx *c, void *user);

/* After one warm-up call of each matmul dtype, repeated calls of the same shapes allocate nothing:
 * runs step forward and backward 4 times (f32 and bf16 matmuls in turn), resetting the arenas and
 * the tape between iterations, and checks that the rb_alloc counters (in use, peak) stay put over
 * the last two. */
static inline void t_check_no_alloc_after_warmup(t_warm_step_fn step, void *user) {
    rb_arena act, grads;
    rb_tape tape;
    rb_ctx c;
    REQUIRE(rb_arena_init(&act, 32 << 20, "act") == RB_OK && rb_arena_init(&grads, 8 << 20, "grads") == RB_OK, "arenas");
    REQUIRE(rb_tape_init(&tape, 64, &grads) == RB_OK, "tape");
    rb_ctx_init(&c, &act);
    c.tape = &tape;
    size_t in_use = 0, peak = 0;
    for (int it = 0; it < 4; it++) {
        c.matmul_dtype = it % 2 ? RB_BF16 : RB_F32;
        if (it == 2) {
            in_use = rb_mem_in_use();
            peak = rb_mem_peak();
        }
        rb_tensor *y = step(&c, user);
        REQUIRE(y, "%s", rb_last_error());
        REQUIRE(rb_backward_with(&c, y, y) == RB_OK, "%s", rb_last_error());
        rb_tape_reset(&tape);
        rb_arena_reset(&act, 0);
        rb_arena_reset(&grads, 0);
    }
    CHECK(rb_mem_in_use() == in_use && rb_mem_peak() == peak, "allocations after warm-up: in use %zu -> %zu, peak %zu -> %zu",
          in_use, rb_mem_in_use(), peak, rb_mem_peak());
    rb_tape_free(&tape);
    rb_arena_free(&act);
    rb_arena_free(&grads);
}

#endif
