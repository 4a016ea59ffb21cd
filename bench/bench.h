/* Shared by the bench suites: bench.c (ops, eval, dispatch) and bench_models.c (unet, vae, text, open). */
#ifndef RB_BENCH_BENCH_H
#define RB_BENCH_BENCH_H

#include "core/arena.h"

/* This run's oneDNN GEMM peak in GFLOP/s: a 2048^3 matmul on operands already in `dt`, weights
 * reordered once, best of `reps` after a warm-up. */
rb_status bench_peak_gflops(rb_arena *ar, rb_dtype dt, int reps, double *out);

/* `relbooth bench unet|vae|text|open ...` (argv[1] is the suite). */
int bench_models(int argc, char **argv);

#endif
