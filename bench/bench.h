/* Shared by the bench suites: bench.c (ops, eval, dispatch) and bench_models.c (unet, vae, text, open). */
#ifndef RB_BENCH_BENCH_H
#define RB_BENCH_BENCH_H

#include "core/arena.h"

/* bench_util.c: monotonic seconds; this process's peak RSS (getrusage ru_maxrss) in MiB; its CPU
 * seconds (user + system, all threads: on a loaded machine CPU time / threads estimates the unloaded
 * wall time); the 1-minute load average (-1 if unreadable), which every result carries because a
 * shared machine distorts timings. */
double bench_now_s(void);
double bench_peak_rss_mib(void);
double bench_cpu_s(void);
double bench_load1(void);

/* This run's oneDNN GEMM peak in GFLOP/s: a 2048^3 matmul on operands already in `dt`, weights
 * reordered once, best of `reps` after a warm-up. */
rb_status bench_peak_gflops(rb_arena *ar, rb_dtype dt, int reps, double *out);

/* FLOPs of one SDXL UNet forward (bench_models.c; docs/bench.md): batch B, latent H x W, L text tokens,
 * I image tokens per cross-attention (MS-Diffusion's masked image attention; 0 for plain SDXL). */
typedef struct rb_unet rb_unet;
double bench_unet_flops(const rb_unet *m, double B, double H, double W, double L, double I);

/* `relbooth bench generate ...` (bench_generate.c). */
int bench_generate_main(int argc, char **argv);

/* `relbooth bench unet|vae|text|open ...` (argv[1] is the suite). */
int bench_models(int argc, char **argv);

#endif
