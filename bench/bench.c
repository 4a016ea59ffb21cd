/* `relbooth bench ops [--json] [-t threads]`: the machine's own oneDNN GEMM peak (f32 and bf16,
 * measured in this run) and, for each case of the table below in both dtypes, GFLOP/s and the ratio
 * to the same-run peak of that dtype.
 *
 * The peak is a 2048^3 oneDNN matmul on operands already in the compute dtype, with the weights in
 * the layout oneDNN prefers (reordered once, as the op path does for frozen weights), best of several
 * repetitions. The op cases call the tensor-level ops exactly as a model does (f32 activations in,
 * f32 out, so any conversion/reorder of activations is inside the timing). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench_train.h"
#include "cli.h"
#include "core/mem.h"
#include "ops/dnnl.h"
#include "ops/linear.h"
#include "ops/ops.h"
#include "pipelines/metrics.h"

/* ---- the cases ---- */

typedef struct bench_case bench_case;
typedef struct bench_data {
    rb_tensor t[4]; /* inputs owned by the case (rb_tensor_alloc) */
} bench_data;

struct bench_case {
    const char *name;
    int64_t d[6];                                        /* case parameters */
    double (*flops)(const bench_case *bc);               /* per call */
    rb_status (*init)(const bench_case *bc, bench_data *d);
    rb_tensor *(*run)(rb_ctx *c, const bench_case *bc, bench_data *d); /* one timed call */
};

static void fill(rb_tensor *t, unsigned seed) {
    float *p = t->data;
    uint32_t s = 2463534242u + seed;
    for (int64_t i = 0; i < rb_numel(t); i++) {
        s ^= s << 13, s ^= s >> 17, s ^= s << 5;
        p[i] = (float)(s >> 8) / (float)(1 << 24) - 0.5f;
    }
}

static rb_status alloc_filled(rb_tensor *t, int ndim, const int64_t *shape, unsigned seed) {
    RB_TRY(rb_tensor_alloc(t, RB_F32, ndim, shape, "bench"));
    fill(t, seed);
    return RB_OK;
}

/* linear: x [M, K] @ w [N, K]^T + b;  d = {M, K, N} */
static double linear_flops(const bench_case *bc) { return 2.0 * bc->d[0] * bc->d[1] * bc->d[2]; }
static rb_status linear_init(const bench_case *bc, bench_data *d) {
    RB_TRY(alloc_filled(&d->t[0], 2, (int64_t[]){bc->d[0], bc->d[1]}, 1));
    RB_TRY(alloc_filled(&d->t[1], 2, (int64_t[]){bc->d[2], bc->d[1]}, 2));
    return alloc_filled(&d->t[2], 1, (int64_t[]){bc->d[2]}, 3);
}
static rb_tensor *linear_run(rb_ctx *c, const bench_case *bc, bench_data *d) {
    return rb_linear(c, &d->t[0], &d->t[1], &d->t[2]);
}

/* conv2d: x [N, C, H, W], w [O, C, k, k], stride 1, pad k/2;  d = {N, C, H, W, O, k} */
static double conv_flops(const bench_case *bc) {
    return 2.0 * bc->d[0] * bc->d[4] * bc->d[2] * bc->d[3] * bc->d[1] * bc->d[5] * bc->d[5];
}
static rb_status conv_init(const bench_case *bc, bench_data *d) {
    RB_TRY(alloc_filled(&d->t[0], 4, (int64_t[]){bc->d[0], bc->d[1], bc->d[2], bc->d[3]}, 1));
    RB_TRY(alloc_filled(&d->t[1], 4, (int64_t[]){bc->d[4], bc->d[1], bc->d[5], bc->d[5]}, 2));
    return alloc_filled(&d->t[2], 1, (int64_t[]){bc->d[4]}, 3);
}
static rb_tensor *conv_run(rb_ctx *c, const bench_case *bc, bench_data *d) {
    int p = (int)(bc->d[5] / 2);
    return rb_conv2d(c, &d->t[0], &d->t[1], &d->t[2], 1, 1, p, p);
}

/* fused attention forward: q, k, v [1, L, H*D], no mask;  d = {L, H, D}; 4*L*L*H*D flops */
static double attn_flops(const bench_case *bc) { return 4.0 * bc->d[0] * bc->d[0] * bc->d[1] * bc->d[2]; }
static rb_status attn_init(const bench_case *bc, bench_data *d) {
    for (unsigned i = 0; i < 3; i++)
        RB_TRY(alloc_filled(&d->t[i], 3, (int64_t[]){1, bc->d[0], bc->d[1] * bc->d[2]}, 10 + i));
    return RB_OK;
}
static rb_tensor *attn_run(rb_ctx *c, const bench_case *bc, bench_data *d) {
    return rb_attention(c, &d->t[0], &d->t[1], &d->t[2], (int)bc->d[1], NULL, 0.0f);
}

static const bench_case cases[] = {
    /* SDXL-sized products at 1024px (64x64 latent tokens, 640 channels) */
    {"matmul_4096x640x1920", {4096, 640, 1920}, linear_flops, linear_init, linear_run},
    {"conv3x3_640to640_64x64", {1, 640, 64, 64, 640, 3}, conv_flops, conv_init, conv_run},
    {"attention_4096x4096_10x64", {4096, 10, 64}, attn_flops, attn_init, attn_run},
};

/* ---- peak ---- */

rb_status bench_peak_gflops(rb_arena *ar, rb_dtype dt, int reps, double *out) {
    const int64_t n = 2048;
    rb_tensor a, b, c;
    memset(&a, 0, sizeof a), memset(&b, 0, sizeof b), memset(&c, 0, sizeof c);
    rb_status s = rb_tensor_alloc(&a, dt, 2, (int64_t[]){n, n}, "bench");
    if (s == RB_OK)
        s = rb_tensor_alloc(&b, dt, 2, (int64_t[]){n, n}, "bench");
    if (s == RB_OK)
        s = rb_tensor_alloc(&c, RB_F32, 2, (int64_t[]){n, n}, "bench");
    if (s == RB_OK) {
        float *tmp = c.data; /* fill via the f32 buffer, then convert */
        fill(&c, 7);
        rb_convert_from_f32(a.data, dt, tmp, (size_t)(n * n));
        fill(&c, 8);
        rb_convert_from_f32(b.data, dt, tmp, (size_t)(n * n));
        rb_gemm g;
        memset(&g, 0, sizeof g);
        g.ndim = 2;
        g.a_dt = g.b_dt = dt;
        g.a_dims[0] = g.a_dims[1] = g.b_dims[0] = g.b_dims[1] = g.c_dims[0] = g.c_dims[1] = n;
        g.a_str[0] = g.b_str[0] = n;
        g.a_str[1] = g.b_str[1] = 1;
        double best = 1e30;
        for (int r = 0; r <= reps && s == RB_OK; r++) { /* r = 0 warms up (creates, reorders b) */
            double t0 = bench_now_s();
            s = rb_gemm_run(ar, c.data, a.data, b.data, NULL, &g, dt, RB_GEMM_B_FROZEN | RB_GEMM_B_ANY);
            double t = bench_now_s() - t0;
            if (r > 0 && t < best)
                best = t;
        }
        *out = 2.0 * n * n * n / best * 1e-9;
    }
    rb_dnnl_forget(b.data);
    rb_tensor_free(&a), rb_tensor_free(&b), rb_tensor_free(&c);
    return s;
}

static int usage(FILE *f) {
    fprintf(f, "usage: relbooth bench ops|eval [--json] [-t threads] [-r reps]\n"
               "       relbooth bench unet|vae|text|open ... (full-size SDXL models; `bench unet --help`)\n"
               "       relbooth bench train ... (one RelationLoRA training step; `bench train --help`)\n"
               "       relbooth bench generate [--size 1024] [--subjects 2] [--steps 2] [--keep DIR] [--json] (the whole\n"
               "         generate path on a full-size random model set written to disk; `bench generate --help`)\n"
               "  eval: time to score one 1024x1024 image with CLIP ViT-L/14 and DINO ViT-S/16 (random full-size\n"
               "  weights), f32 and bf16\n"
               "  measures this machine's oneDNN f32/bf16 GEMM peak and the GFLOP/s of matmul, conv and\n"
               "  attention cases against it (ratio = efficiency). Default: 2 threads, 5 repetitions (best of).\n");
    return f == stdout ? RB_EXIT_OK : RB_EXIT_USAGE;
}

/* `relbooth bench eval`: one 1024x1024 image scored with CLIP ViT-L/14 and DINO ViT-S/16 (full-size
 * random weights built in memory), f32 and bf16; the target is <= 1 s on 2 threads. */
static int bench_eval(int threads, int reps, int json) {
    rb_dtype dts[2] = {RB_F32, RB_BF16};
    if (json)
        printf("{\"eval\": [");
    for (int k = 0; k < 2; k++) {
        rb_metrics_bench_result r;
        if (rb_metrics_bench(threads, dts[k], reps, &r) != RB_OK)
            return cli_fail("bench");
        if (json)
            printf("%s{\"dtype\": \"%s\", \"threads\": %d, \"seconds\": %.3f, \"clip_image\": %.3f, \"clip_text\": %.3f, "
                   "\"dino\": %.3f, \"preprocess\": %.3f, \"gflops\": %.1f}",
                   k ? ", " : "", rb_dtype_name(dts[k]), r.threads, r.total_s, r.clip_image_s, r.clip_text_s, r.dino_s,
                   r.preprocess_s, r.gflop / r.total_s);
        else
            printf("score one 1024x1024 image (%s, %d threads): %.3f s  [CLIP image %.3f, CLIP texts %.3f, DINO %.3f, "
                   "preprocess %.3f; %.1f GFLOP/s]\n",
                   rb_dtype_name(dts[k]), r.threads, r.total_s, r.clip_image_s, r.clip_text_s, r.dino_s, r.preprocess_s,
                   r.gflop / r.total_s);
    }
    if (json)
        printf("]}\n");
    return RB_EXIT_OK;
}

int cmd_bench(int argc, char **argv) {
    int json = 0, threads = 2, reps = 5;
    if (argc < 2)
        return usage(stderr);
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))
        return usage(stdout);
    if (!strcmp(argv[1], "unet") || !strcmp(argv[1], "vae") || !strcmp(argv[1], "text") || !strcmp(argv[1], "open"))
        return bench_models(argc, argv);
    if (!strcmp(argv[1], "train"))
        return bench_train_main(argc, argv);
    if (!strcmp(argv[1], "generate"))
        return bench_generate_main(argc, argv);
    if (strcmp(argv[1], "ops") && strcmp(argv[1], "eval")) {
        fprintf(stderr, "relbooth bench: unknown suite '%s' (have: ops, eval, unet, vae, text, open, train, generate)\n", argv[1]);
        return RB_EXIT_USAGE;
    }
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if ((!strcmp(argv[i], "-t") || !strcmp(argv[i], "--threads")) && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if ((!strcmp(argv[i], "-r") || !strcmp(argv[i], "--reps")) && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(stdout);
        else
            return usage(stderr);
    }
    if (threads < 1 || reps < 1 || reps > 1000) {
        fprintf(stderr, "relbooth bench: threads and reps must be positive\n");
        return RB_EXIT_USAGE;
    }
    rb_set_num_threads(threads);
    if (!strcmp(argv[1], "eval"))
        return bench_eval(threads, reps, json);
    rb_arena ar;
    if (rb_arena_init(&ar, (size_t)512 << 20, "bench arena") != RB_OK)
        return cli_fail("bench");
    rb_dtype dts[2] = {RB_F32, RB_BF16};
    double peak[2];
    for (int k = 0; k < 2; k++)
        if (bench_peak_gflops(&ar, dts[k], 2 * reps, &peak[k]) != RB_OK) { /* more reps: the ratio hinges on it */
            rb_arena_free(&ar);
            return cli_fail("bench");
        }
    if (json)
        printf("{\"peak_gflops\": {\"f32\": %.1f, \"bf16\": %.1f}, \"ops\": [", peak[0], peak[1]);
    else
        printf("oneDNN GEMM peak (2048^3, %d threads): f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s\n\n%-28s %-5s %10s %10s %8s\n",
               threads, peak[0], peak[1], "op", "dtype", "ms", "GFLOP/s", "of peak");
    int first = 1, rc = RB_EXIT_OK;
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases && rc == RB_EXIT_OK; ci++) {
        const bench_case *bc = &cases[ci];
        bench_data d;
        memset(&d, 0, sizeof d);
        if (bc->init(bc, &d) != RB_OK) {
            rc = cli_fail("bench");
        }
        for (int k = 0; k < 2 && rc == RB_EXIT_OK; k++) {
            rb_ctx c;
            rb_ctx_init(&c, &ar);
            c.matmul_dtype = dts[k];
            double best = 1e30;
            for (int r = 0; r <= reps; r++) { /* r = 0 warms up */
                size_t mark = rb_arena_mark(&ar);
                double t0 = bench_now_s();
                rb_tensor *y = bc->run(&c, bc, &d);
                double t = bench_now_s() - t0;
                rb_arena_reset(&ar, mark);
                if (!y) {
                    rc = cli_fail("bench");
                    break;
                }
                if (r > 0 && t < best)
                    best = t;
            }
            if (rc != RB_EXIT_OK)
                break;
            double gf = bc->flops(bc) / best * 1e-9, eff = gf / peak[k];
            if (json)
                printf("%s{\"name\": \"%s\", \"dtype\": \"%s\", \"gflops\": %.1f, \"efficiency\": %.3f}", first ? "" : ", ",
                       bc->name, rb_dtype_name(dts[k]), gf, eff);
            else
                printf("%-28s %-5s %10.2f %10.1f %7.1f%%\n", bc->name, rb_dtype_name(dts[k]), best * 1e3, gf, eff * 100);
            first = 0;
        }
        for (int i = 0; i < 4; i++)
            if (d.t[i].data) {
                rb_dnnl_forget(d.t[i].data); /* cached converted weights die with their memory */
                rb_tensor_free(&d.t[i]);
            }
    }
    if (json && rc == RB_EXIT_OK)
        printf("]}\n");
    rb_arena_free(&ar);
    return rc;
}
