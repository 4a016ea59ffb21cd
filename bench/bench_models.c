/* Full-size SDXL model benchmarks with random weights built in memory (no checkpoint needed):
 *
 *   relbooth bench unet [--arch sdxl|tiny] [--latent 64] [--batch 2] [--dtype bf16|f32] [--json]
 *   relbooth bench vae  [--decode] [--size 512] [--dtype f32|bf16] [--tiny] [--json]
 *   relbooth bench text [--tokenizer DIR] [--dtype bf16|f32] [--tiny] [--json]
 *   relbooth bench open FILE | --synthetic [--tiny] [--json]
 *
 * Every suite: 2 threads by default (-t), one warm-up call (oneDNN primitives, weight reorders, page
 * faults) then the best of -r timed calls (-r 0: the cold call alone is timed). Weights are U(+-sqrt(3 / fan_in)) (variance 1/fan_in,
 * fan_in = numel / shape[0]) in bf16 for matrices and conv kernels, f32 ones for norm gains and
 * U(+-0.1) f32 for biases, from a hash of (seed, index), so filling is parallel and reproducible.
 * FLOPs are counted from the shapes (see docs/bench.md): 2 per multiply-add of every convolution,
 * linear layer and both attention products; norms, activations and softmax are not counted.
 * --json prints one object (seconds, gflop, efficiency vs the same-run GEMM peak, peak_rss_mib). */
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "cli.h"
#include "demo_models.h"
#include "core/mem.h"
#include "io/safetensors.h"
#include "models/clip_model.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "ops/dnnl.h"
#include "text/clip_tokenizer.h"

/* ---- random weights: every block is one rb_alloc, chained for freeing ---- */

typedef struct pool {
    void *head;    /* first block; each starts with the pointer to the next */
    rb_dtype wdt;  /* matrices and kernels */
    uint64_t seed;
    rb_status s;
    size_t bytes;
} pool;

#define HDR 128 /* link + rb_tensor header, keeps the data 64-byte aligned */
_Static_assert(sizeof(void *) + sizeof(rb_tensor) <= HDR, "header");

static void *pool_alloc(pool *p, size_t bytes) {
    if (p->s != RB_OK)
        return NULL;
    char *b = rb_calloc(bytes + HDR, "bench weights");
    if (!b) {
        p->s = RB_ERR_OOM;
        return NULL;
    }
    *(void **)b = p->head;
    p->head = b;
    p->bytes += bytes;
    return b + HDR;
}

static void pool_free(pool *p) {
    for (void *b = p->head, *next; b; b = next) {
        next = *(void **)b;
        rb_free(b);
    }
    p->head = NULL;
}

enum { P_MATRIX, P_GAIN, P_BIAS };

static rb_tensor *param(pool *p, int kind, int ndim, const int64_t *shape) {
    rb_dtype dt = kind == P_MATRIX ? p->wdt : RB_F32;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    char *data = pool_alloc(p, (size_t)n * rb_dtypes[dt].size);
    if (!data)
        return NULL;
    rb_tensor *t = (rb_tensor *)(data - HDR + sizeof(void *));
    *t = rb_tensor_wrap(data, dt, ndim, shape);
    float a = kind == P_MATRIX ? sqrtf(3.0f * (float)shape[0] / (float)n) : 0.1f;
    uint64_t seed = (p->seed++ + 1) * 0x632BE59BD9B4E019ull;
#pragma omp parallel for schedule(static) if (n > 262144)
    for (int64_t i = 0; i < n; i++) {
        float v = kind == P_GAIN ? 1.0f : a * rb_demo_hash_uniform(seed, (uint64_t)i);
        if (dt == RB_F32)
            ((float *)data)[i] = v;
        else
            ((uint16_t *)data)[i] = rb_f32_to_bf16(v);
    }
    return t;
}

#define VEC(n) param(p, P_BIAS, 1, (int64_t[]){(n)})
#define GAIN(n) param(p, P_GAIN, 1, (int64_t[]){(n)})
#define MAT(o, i) param(p, P_MATRIX, 2, (int64_t[]){(o), (i)})
#define CONV(o, i, k) param(p, P_MATRIX, 4, (int64_t[]){(o), (i), (k), (k)})

/* ---- options ---- */

typedef struct opts {
    int json, threads, reps, tiny, latent, batch, size, synthetic;
    rb_dtype dt;
    const char *file, *tokenizer;
} opts;

static int usage(FILE *f) {
    fprintf(f,
            "usage: relbooth bench unet [--arch sdxl|tiny] [--latent N] [--batch N] [--dtype bf16|f32]\n"
            "       relbooth bench vae [--decode] [--size N] [--dtype f32|bf16] [--tiny]\n"
            "       relbooth bench text [--tokenizer DIR] [--dtype bf16|f32] [--tiny]\n"
            "       relbooth bench open FILE | --synthetic [--tiny]\n"
            "  common: [--json] [-t threads (2)] [-r timed reps after one warm-up; 0: time the cold call alone]\n"
            "  Full-size SDXL models (base UNet, VAE decoder, both text encoders) with random weights built\n"
            "  in memory; prints FLOPs, seconds, efficiency vs this run's GEMM peak and peak RSS.\n"
            "  open --synthetic writes a temporary SDXL-UNet-size bf16 safetensors, times rb_st_open cold\n"
            "  (page cache dropped) and warm, then deletes it. --tiny: small configs (for tests).\n");
    return f == stdout ? RB_EXIT_OK : RB_EXIT_USAGE;
}

static int parse(int argc, char **argv, opts *o) {
    const char *suite = argv[1];
    memset(o, 0, sizeof *o);
    o->threads = 2, o->latent = 64, o->batch = 2, o->size = 512;
    o->reps = !strcmp(suite, "unet") ? 1 : !strcmp(suite, "open") ? 1 : 3;
    o->dt = !strcmp(suite, "vae") ? RB_F32 : RB_BF16; /* the SDXL VAE config has force_upcast */
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json"))
            o->json = 1;
        else if (!strcmp(a, "--tiny"))
            o->tiny = 1;
        else if (!strcmp(a, "--decode"))
            ; /* the only VAE direction benchmarked */
        else if (!strcmp(a, "--synthetic"))
            o->synthetic = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return usage(stdout) + 100;
        else if (!v && a[0] == '-')
            return usage(stderr);
        else if (!strcmp(a, "--arch")) {
            if (strcmp(v, "sdxl") && strcmp(v, "tiny"))
                return fprintf(stderr, "relbooth bench: --arch %s (have: sdxl, tiny)\n", v), RB_EXIT_USAGE;
            o->tiny = !strcmp(v, "tiny"), i++;
        } else if (!strcmp(a, "--dtype")) {
            if (strcmp(v, "bf16") && strcmp(v, "f32"))
                return fprintf(stderr, "relbooth bench: --dtype %s (have: bf16, f32)\n", v), RB_EXIT_USAGE;
            o->dt = !strcmp(v, "bf16") ? RB_BF16 : RB_F32, i++;
        } else if (!strcmp(a, "--latent"))
            o->latent = atoi(v), i++;
        else if (!strcmp(a, "--batch"))
            o->batch = atoi(v), i++;
        else if (!strcmp(a, "--size"))
            o->size = atoi(v), i++;
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads"))
            o->threads = atoi(v), i++;
        else if (!strcmp(a, "-r") || !strcmp(a, "--reps"))
            o->reps = atoi(v), i++;
        else if (!strcmp(a, "--tokenizer"))
            o->tokenizer = v, i++;
        else if (a[0] != '-' && !o->file && !strcmp(suite, "open"))
            o->file = a;
        else
            return usage(stderr);
    }
    if (o->threads < 1 || o->reps < 0 || o->reps > 100 || o->batch < 1 || o->batch > 64 || o->latent < 8 ||
        o->latent > 512 || o->latent % 8 || o->size < 64 || o->size > 4096 || o->size % 64) {
        fprintf(stderr, "relbooth bench: bad sizes (threads >= 1, reps >= 0; latent multiple of 8 in 8..512; size multiple "
                        "of 64 in 64..4096; batch 1..64)\n");
        return RB_EXIT_USAGE;
    }
    if (!strcmp(suite, "open") && !o->file == !o->synthetic) {
        fprintf(stderr, "relbooth bench open: give FILE or --synthetic\n");
        return RB_EXIT_USAGE;
    }
    return -1;
}

/* the common result line / object */
static void report(const opts *o, const char *what, double seconds, double cpu, double gflop, double peak,
                   const char *extra) {
    double eff = gflop > 0 && peak > 0 ? gflop / seconds / peak : 0;
    if (o->json)
        printf("{\"bench\": \"%s\", \"dtype\": \"%s\", \"threads\": %d, \"seconds\": %.6f, \"gflop\": %.6f, "
               "\"gflops\": %.1f, \"peak_gflops\": %.1f, \"efficiency\": %.4f, \"peak_rss_mib\": %.1f, \"cpu_seconds\": %.3f, \"load1\": %.2f%s}\n",
               what, rb_dtype_name(o->dt), o->threads, seconds, gflop, gflop / seconds, peak, eff, bench_peak_rss_mib(), cpu,
               bench_load1(), extra ? extra : "");
    else
        printf("%s (%s, %d threads): %.3f s, %.1f GFLOP, %.1f GFLOP/s = %.1f%% of this run's %s GEMM peak %.1f GFLOP/s; "
               "peak RSS %.0f MiB; CPU time %.2f s (%.2f s per thread); load %.2f\n",
               what, rb_dtype_name(o->dt), o->threads, seconds, gflop, gflop / seconds, eff * 100, rb_dtype_name(o->dt),
               peak, bench_peak_rss_mib(), cpu, cpu / o->threads, bench_load1());
}

/* ================================ UNet ================================ */

static void unet_config(rb_unet_config *c, int tiny) {
    /* stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (attention_head_dim [5, 10, 20] is the
     * head count in diffusers' naming; head width 64) */
    *c = (rb_unet_config){.in_channels = 4, .out_channels = 4, .n_blocks = 3, .block_out = {320, 640, 1280},
                          .down_attn = {0, 1, 1}, .up_attn = {1, 1, 0}, .mid_attn = 1, .layers_per_block = 2,
                          .transformer_layers = {1, 2, 10}, .heads = {5, 10, 20}, .cross_attention_dim = 2048,
                          .use_linear_projection = 1, .norm_groups = 32, .norm_eps = 1e-5f, .flip_sin_to_cos = 1,
                          .freq_shift = 0, .text_time = 1, .addition_time_embed_dim = 256, .add_embed_in = 2816,
                          .time_embed_dim = 1280};
    if (tiny) { /* same block kinds, 1 transformer layer each, widths 32/64/64 */
        c->block_out[0] = 32, c->block_out[1] = c->block_out[2] = 64;
        c->transformer_layers[1] = c->transformer_layers[2] = 1;
        c->heads[0] = 1, c->heads[1] = c->heads[2] = 2;
        c->cross_attention_dim = 64, c->addition_time_embed_dim = 8, c->add_embed_in = 32 + 6 * 8;
        c->time_embed_dim = 128;
    }
}

static int unet_pooled_dim(const rb_unet_config *c) { return c->add_embed_in - 6 * c->addition_time_embed_dim; }

typedef struct unet_fill {
    pool *p;
    /* with names set: collect (name, tensor) pairs for a file */
    int n;
    char **names;
    const rb_tensor **tensors;
} unet_fill;

static void unet_param(void *user, const rb_unet_param *up) {
    unet_fill *u = user;
    pool *p = u->p;
    size_t len = strlen(up->name);
    int kind = !up->f32 ? P_MATRIX : len > 7 && !strcmp(up->name + len - 7, ".weight") ? P_GAIN : P_BIAS;
    rb_tensor *t = param(p, kind, up->ndim, up->shape);
    *up->slot = t;
    if (u->names && t) {
        u->names[u->n] = pool_alloc(p, len + 1);
        if (u->names[u->n])
            memcpy(u->names[u->n], up->name, len + 1);
        u->tensors[u->n] = t;
    }
    u->n++;
}

static rb_status unet_build(rb_unet *m, pool *p, int tiny, unet_fill *u) {
    rb_unet_config cfg;
    unet_config(&cfg, tiny);
    RB_TRY(rb_unet_config_check(&cfg, "bench SDXL UNet config"));
    RB_TRY(rb_unet_init(m, &cfg));
    u->p = p;
    rb_unet_visit_params(m, unet_param, u);
    if (p->s != RB_OK)
        rb_unet_free(m);
    return p->s;
}

/* FLOPs of one forward, from the module structure (see docs/bench.md). */
static double conv_fl(double B, double cin, double cout, double k, double H, double W) {
    return 2.0 * B * cin * cout * k * k * H * W;
}
static double resnet_fl(const rb_unet_resnet *r, double B, double H, double W, double T) {
    double f = conv_fl(B, r->cin, r->cout, 3, H, W) + conv_fl(B, r->cout, r->cout, 3, H, W) + 2.0 * B * T * r->cout;
    if (r->cin != r->cout)
        f += conv_fl(B, r->cin, r->cout, 1, H, W);
    return f;
}
/* Transformer2DModel at N = H*W tokens, context of L tokens of width X:
 *   proj_in + proj_out 4NC^2; per block: attn1 q,k,v,out 8NC^2 + q k^T and P v 4N^2C;
 *   attn2 q,out 4NC^2 + k,v 4LXC + 4NLC; GEGLU ff C->8C->(4C)->C 24NC^2;
 *   MS-Diffusion's masked image attention in attn2 (I image tokens): to_k_ip, to_v_ip 4IXC + 4NIC */
static double transformer_fl(const rb_unet_transformer *t, double B, double N, double L, double X, double I) {
    double C = t->channels;
    double blk = 8 * N * C * C + 4 * N * N * C + 4 * N * C * C + 4 * L * X * C + 4 * N * L * C + 24 * N * C * C +
                 4 * I * X * C + 4 * N * I * C;
    return B * (4 * N * C * C + t->depth * blk);
}
static double block_fl(const rb_unet_block *b, double B, double H, double W, double T, double L, double X,
                       double I) {
    double f = 0;
    for (int j = 0; j < b->n_layers; j++) {
        f += resnet_fl(&b->resnets[j], B, H, W, T);
        if (b->has_attn)
            f += transformer_fl(&b->attns[j], B, H * W, L, X, I);
    }
    return f;
}

double bench_unet_flops(const rb_unet *m, double B, double H, double W, double L, double I) {
    const rb_unet_config *c = &m->cfg;
    double T = c->time_embed_dim, X = c->cross_attention_dim, f = 0;
    f += 2.0 * B * (c->block_out[0] * T + T * T);
    if (c->text_time)
        f += 2.0 * B * (c->add_embed_in * T + T * T);
    f += conv_fl(B, c->in_channels, c->block_out[0], 3, H, W);
    double h = H, w = W;
    for (int i = 0; i < c->n_blocks; i++) {
        f += block_fl(&m->down[i], B, h, w, T, L, X, I);
        if (i < c->n_blocks - 1) { /* every block but the last downsamples (also in a weightless skeleton) */
            h /= 2, w /= 2;
            f += conv_fl(B, c->block_out[i], c->block_out[i], 3, h, w); /* stride 2: output resolution */
        }
    }
    /* mid: resnet, transformer, resnet */
    f += resnet_fl(&m->mid.resnets[0], B, h, w, T) + resnet_fl(&m->mid.resnets[1], B, h, w, T);
    if (c->mid_attn)
        f += transformer_fl(&m->mid.attns[0], B, h * w, L, X, I);
    for (int i = 0; i < c->n_blocks; i++) {
        f += block_fl(&m->up[i], B, h, w, T, L, X, I);
        if (i < c->n_blocks - 1) {
            h *= 2, w *= 2;
            f += conv_fl(B, m->up[i].channels, m->up[i].channels, 3, h, w);
        }
    }
    return f + conv_fl(B, c->block_out[0], c->out_channels, 3, H, W);
}

static rb_status alloc_rand(rb_tensor *t, int ndim, const int64_t *shape, uint64_t seed, float scale) {
    RB_TRY(rb_tensor_alloc(t, RB_F32, ndim, shape, "bench input"));
    float *d = t->data;
    for (int64_t i = 0; i < rb_numel(t); i++)
        d[i] = scale * rb_demo_hash_uniform(seed, (uint64_t)i);
    return RB_OK;
}

static int bench_unet(const opts *o) {
    int64_t B = o->batch, Lat = o->tiny && o->latent == 64 ? 8 : o->latent, Lctx = 77;
    pool p = {.wdt = RB_BF16, .s = RB_OK};
    rb_unet m;
    unet_fill u = {0};
    double t0 = bench_now_s();
    if (unet_build(&m, &p, o->tiny, &u) != RB_OK) {
        pool_free(&p);
        return cli_fail("bench unet");
    }
    double build_s = bench_now_s() - t0;
    rb_arena ar;
    /* activations: skips and one block's working set (flash attention: nothing ~ tokens^2) */
    size_t cap = (size_t)256 << 20;
    if (!o->tiny)
        cap += (size_t)(B * Lat * Lat) * ((size_t)192 << 10); /* a cap: only the pages used count */
    rb_tensor x = {0}, ts = {0}, ehs = {0}, te = {0}, ti = {0};
    int rc = RB_EXIT_OK;
    if (rb_arena_init(&ar, cap, "bench arena") != RB_OK) {
        rb_unet_free(&m), pool_free(&p);
        return cli_fail("bench unet");
    }
    double peak = 0;
    rb_status s = bench_peak_gflops(&ar, o->dt, o->tiny ? 1 : 6, &peak);
    if (s == RB_OK)
        s = alloc_rand(&x, 4, (int64_t[]){B, m.cfg.in_channels, Lat, Lat}, 1, 1.7f);
    if (s == RB_OK)
        s = alloc_rand(&ts, 1, (int64_t[]){1}, 2, 0);
    if (s == RB_OK)
        ((float *)ts.data)[0] = 500;
    if (s == RB_OK)
        s = alloc_rand(&ehs, 3, (int64_t[]){B, Lctx, m.cfg.cross_attention_dim}, 3, 1.7f);
    if (s == RB_OK)
        s = alloc_rand(&te, 2, (int64_t[]){B, unet_pooled_dim(&m.cfg)}, 4, 1.7f);
    if (s == RB_OK)
        s = alloc_rand(&ti, 2, (int64_t[]){B, 6}, 5, 0);
    if (s == RB_OK)
        for (int64_t b = 0; b < B; b++) { /* original size, crop, target size of a 1024^2 image */
            float *t = (float *)ti.data + 6 * b;
            t[0] = t[1] = t[4] = t[5] = 8.0f * (float)Lat, t[2] = t[3] = 0;
        }
    double best = 1e30, best_cpu = 0;
    rb_unet_in in = {&x, &ts, &ehs, &te, &ti, NULL, 0, 0};
    for (int r = 0; r <= o->reps && s == RB_OK; r++) { /* r = 0 warms up */
        rb_ctx c;
        rb_ctx_init(&c, &ar);
        c.matmul_dtype = o->dt;
        size_t mark = rb_arena_mark(&ar);
        rb_unet_out out;
        double ta = bench_now_s(), ca = bench_cpu_s();
        s = rb_unet_forward(&c, &m, &in, &out);
        double t = bench_now_s() - ta, ct = bench_cpu_s() - ca;
        if (s == RB_OK && !isfinite(((float *)out.sample->data)[0]))
            s = rb_error(RB_ERR_INTERNAL, "bench unet: non-finite output");
        rb_arena_reset(&ar, mark);
        if ((r > 0 || o->reps == 0) && t < best)
            best = t, best_cpu = ct;
        if (!o->json && !o->tiny)
            fprintf(stderr, "relbooth bench unet: %s %.2f s\n", r ? "run" : "warm-up", t);
    }
    if (s != RB_OK)
        rc = cli_fail("bench unet");
    else {
        char extra[256];
        snprintf(extra, sizeof extra,
                 ", \"latent\": %d, \"batch\": %d, \"build_s\": %.2f, \"weights_mib\": %.1f, \"weight_cache_mib\": %.1f, "
                 "\"arena_peak_mib\": %.1f",
                 (int)Lat, (int)B, build_s, (double)p.bytes / (1 << 20), (double)rb_dnnl_weight_cache_bytes() / (1 << 20),
                 (double)ar.peak / (1 << 20));
        if (!o->json)
            printf("SDXL UNet%s, latent %dx%d, batch %d, weights %.0f MiB (built in %.1f s), oneDNN weight cache %.0f MiB\n",
                   o->tiny ? " (tiny)" : "", (int)Lat, (int)Lat, (int)B, (double)p.bytes / (1 << 20), build_s,
                   (double)rb_dnnl_weight_cache_bytes() / (1 << 20));
        report(o, "unet", best, best_cpu, bench_unet_flops(&m, (double)B, (double)Lat, (double)Lat, (double)Lctx, 0) * 1e-9, peak, extra);
    }
    rb_tensor *ins[5] = {&x, &ts, &ehs, &te, &ti};
    for (int i = 0; i < 5; i++)
        rb_tensor_free(ins[i]);
    rb_dnnl_cache_clear();
    rb_arena_free(&ar);
    rb_unet_free(&m);
    pool_free(&p);
    return rc;
}

/* ================================ VAE decoder ================================ */

static void vae_resnet(pool *p, rb_vae_resnet *r, int64_t in, int64_t out) {
    r->norm1_w = GAIN(in), r->norm1_b = VEC(in), r->conv1_w = CONV(out, in, 3), r->conv1_b = VEC(out);
    r->norm2_w = GAIN(out), r->norm2_b = VEC(out), r->conv2_w = CONV(out, out, 3), r->conv2_b = VEC(out);
    if (in != out)
        r->short_w = CONV(out, in, 1), r->short_b = VEC(out);
}

/* The decoder half of rb_vae (as rb_vae_load's load_weights builds it), diffusers layout. */
static rb_status vae_build(rb_vae *m, pool *p, const rb_vae_config *c) {
    memset(m, 0, sizeof *m);
    m->cfg = *c;
    m->prefix = "";
    int n = c->n_blocks, lpb = c->layers_per_block;
    const int *boc = c->block_out_channels;
    int64_t lat = c->latent_channels, top = boc[n - 1];
    rb_vae_resnet *next = pool_alloc(p, (size_t)n * (size_t)(lpb + 1) * sizeof *next);
    if (!next)
        return p->s;
    if (c->use_post_quant_conv)
        m->post_quant_w = CONV(lat, lat, 1), m->post_quant_b = VEC(lat);
    m->dec_conv_in_w = CONV(top, lat, 3), m->dec_conv_in_b = VEC(top);
    for (int j = 0; j < 2; j++)
        vae_resnet(p, &m->dec_mid.res[j], top, top);
    rb_vae_attn *a = &m->dec_mid.attn;
    a->norm_w = GAIN(top), a->norm_b = VEC(top);
    a->q_w = MAT(top, top), a->q_b = VEC(top), a->k_w = MAT(top, top), a->k_b = VEC(top);
    a->v_w = MAT(top, top), a->v_b = VEC(top), a->o_w = MAT(top, top), a->o_b = VEC(top);
    int64_t prev = top;
    for (int i = 0; i < n; i++) {
        int64_t out = boc[n - 1 - i];
        m->dec[i].res = next;
        for (int j = 0; j <= lpb; j++)
            vae_resnet(p, next++, j ? out : prev, out);
        if (i < n - 1)
            m->dec[i].sample_w = CONV(out, out, 3), m->dec[i].sample_b = VEC(out);
        prev = out;
    }
    m->dec_norm_out_w = GAIN(boc[0]), m->dec_norm_out_b = VEC(boc[0]);
    m->dec_conv_out_w = CONV(c->out_channels, boc[0], 3), m->dec_conv_out_b = VEC(c->out_channels);
    return p->s;
}

/* decoder FLOPs for an S x S image: convs, the mid block's 4 projections and its two attention products */
static double vae_decode_flops(const rb_vae_config *c, double S) {
    int n = c->n_blocks, lpb = c->layers_per_block;
    const int *boc = c->block_out_channels;
    double lat = c->latent_channels, top = boc[n - 1], h = S / (double)(1 << (n - 1)), N = h * h, f = 0;
    if (c->use_post_quant_conv)
        f += conv_fl(1, lat, lat, 1, h, h);
    f += conv_fl(1, lat, top, 3, h, h);
    for (int j = 0; j < 2; j++)
        f += 2 * conv_fl(1, top, top, 3, h, h);
    f += 4 * 2 * N * top * top + 4 * N * N * top;
    double prev = top;
    for (int i = 0; i < n; i++) {
        double out = boc[n - 1 - i];
        for (int j = 0; j <= lpb; j++) {
            double in = j ? out : prev;
            f += conv_fl(1, in, out, 3, h, h) + conv_fl(1, out, out, 3, h, h);
            if (in != out)
                f += conv_fl(1, in, out, 1, h, h);
        }
        if (i < n - 1) {
            h *= 2;
            f += conv_fl(1, out, out, 3, h, h);
        }
        prev = out;
    }
    return f + conv_fl(1, boc[0], c->out_channels, 3, S, S);
}

static int bench_vae(const opts *o) {
    rb_vae_config cfg;
    rb_vae_config_sdxl(&cfg);
    int S = o->size;
    if (o->tiny) {
        cfg.n_blocks = 2, cfg.block_out_channels[0] = 32, cfg.block_out_channels[1] = 64, cfg.layers_per_block = 1;
        S = o->size == 512 ? 64 : o->size;
    }
    cfg.force_upcast = 0; /* run in --dtype (f32 by default, as force_upcast would) */
    pool p = {.wdt = RB_BF16, .s = RB_OK};
    rb_vae m;
    if (vae_build(&m, &p, &cfg) != RB_OK) {
        pool_free(&p);
        return cli_fail("bench vae");
    }
    int64_t h = S >> (cfg.n_blocks - 1);
    rb_arena ar;
    size_t cap = ((size_t)256 << 20) + (size_t)S * S * 128 * 4 * 16; /* ~16 full-resolution 128-channel f32 maps */
    rb_tensor z = {0};
    if (rb_arena_init(&ar, cap, "bench arena") != RB_OK) {
        pool_free(&p);
        return cli_fail("bench vae");
    }
    double peak = 0, best = 1e30, best_cpu = 0;
    rb_status s = bench_peak_gflops(&ar, o->dt, o->tiny ? 1 : 6, &peak);
    if (s == RB_OK)
        s = alloc_rand(&z, 4, (int64_t[]){1, cfg.latent_channels, h, h}, 11, 1.7f);
    for (int r = 0; r <= o->reps && s == RB_OK; r++) {
        rb_ctx c;
        rb_ctx_init(&c, &ar);
        c.matmul_dtype = o->dt;
        size_t mark = rb_arena_mark(&ar);
        double ta = bench_now_s(), ca = bench_cpu_s();
        rb_tensor *y = rb_vae_decode(&c, &m, &z, 0, NULL);
        double t = bench_now_s() - ta, ct = bench_cpu_s() - ca;
        s = y ? RB_OK : c.status;
        rb_arena_reset(&ar, mark);
        if ((r > 0 || o->reps == 0) && t < best)
            best = t, best_cpu = ct;
    }
    int rc = RB_EXIT_OK;
    if (s != RB_OK)
        rc = cli_fail("bench vae");
    else {
        char extra[128];
        snprintf(extra, sizeof extra, ", \"size\": %d", S);
        if (!o->json)
            printf("SDXL VAE decoder%s, %dx%d image from a %dx%d latent\n", o->tiny ? " (tiny)" : "", S, S, (int)h, (int)h);
        report(o, "vae_decode", best, best_cpu, vae_decode_flops(&cfg, S) * 1e-9, peak, extra);
    }
    rb_tensor_free(&z);
    rb_dnnl_cache_clear();
    rb_arena_free(&ar);
    pool_free(&p);
    return rc;
}

/* ================================ text ================================ */

static rb_status text_build(rb_clip_text *t, pool *p, const rb_clip_text_config *tc, int projection) {
    memset(t, 0, sizeof *t);
    t->cfg = *tc;
    int64_t D = tc->hidden, F = tc->intermediate;
    t->tok_emb = param(p, P_BIAS, 2, (int64_t[]){tc->vocab, D});
    t->pos_emb = param(p, P_BIAS, 2, (int64_t[]){tc->max_positions, D});
    t->layers = pool_alloc(p, (size_t)tc->layers * sizeof *t->layers);
    for (int i = 0; t->layers && i < tc->layers; i++) {
        rb_clip_layer *L = &t->layers[i];
        L->ln1_w = GAIN(D), L->ln1_b = VEC(D);
        L->q_w = MAT(D, D), L->q_b = VEC(D), L->k_w = MAT(D, D), L->k_b = VEC(D);
        L->v_w = MAT(D, D), L->v_b = VEC(D), L->o_w = MAT(D, D), L->o_b = VEC(D);
        L->ln2_w = GAIN(D), L->ln2_b = VEC(D);
        L->fc1_w = MAT(F, D), L->fc1_b = VEC(F), L->fc2_w = MAT(D, F), L->fc2_b = VEC(D);
    }
    t->final_ln_w = GAIN(D), t->final_ln_b = VEC(D);
    if (projection)
        t->projection = MAT(tc->projection_dim, D);
    return p->s;
}

/* 2 * params * tokens of the matrix products, attention scores and values included */
static double text_flops(const rb_clip_text_config *c, double T, int projection) {
    double D = c->hidden, F = c->intermediate;
    return 2.0 * T * c->layers * (4 * D * D + 2 * D * F + 2 * T * D) + (projection ? 2.0 * D * c->projection_dim : 0);
}

static const char *tokenizer_dir(const opts *o, char *buf, size_t n) {
    if (o->tokenizer)
        return o->tokenizer;
    const char *g = getenv("RELBOOTH_GOLDEN");
    snprintf(buf, n, "%s/clip_tokenizer", g ? g : "../shared/golden");
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/tokenizer/vocab.json", buf);
    return access(probe, R_OK) == 0 ? buf : NULL;
}

static int bench_text(const opts *o) {
    static const char *prompt = "A photo of a cat hugging a dog on the beach, golden hour, highly detailed";
    rb_clip_text_config cl, cg;
    rb_clip_vision_config vc;
    rb_clip_model_config_vit_l14(&cl, &vc); /* CLIP-L: 768 x 12, quick-GELU */
    cl.eos_token_id = 2;
    cg = cl;
    cg.hidden = 1280, cg.intermediate = 5120, cg.heads = 20, cg.layers = 32, cg.projection_dim = 1280;
    cg.act = RB_ACT_GELU; /* OpenCLIP bigG */
    if (o->tiny) {
        cl.hidden = 64, cl.intermediate = 128, cl.heads = 2, cl.layers = 2;
        cg.hidden = 64, cg.intermediate = 256, cg.heads = 2, cg.layers = 3, cg.projection_dim = 32;
    }
    char tbuf[4096], d1[4200], d2[4200];
    const char *tdir = tokenizer_dir(o, tbuf, sizeof tbuf);
    rb_clip_tokenizer *tk[2] = {NULL, NULL};
    if (tdir) {
        snprintf(d1, sizeof d1, "%s/tokenizer", tdir);
        snprintf(d2, sizeof d2, "%s/tokenizer_2", tdir);
        if (rb_clip_tokenizer_load(&tk[0], d1) != RB_OK || rb_clip_tokenizer_load(&tk[1], d2) != RB_OK) {
            rb_clip_tokenizer_free(tk[0]);
            return cli_fail("bench text");
        }
    } else if (!o->json)
        printf("note: no tokenizer vocab (--tokenizer DIR or $RELBOOTH_GOLDEN/clip_tokenizer): tokenizer not timed, "
               "fixed ids used\n");
    pool p = {.wdt = RB_BF16, .s = RB_OK};
    rb_clip_text enc[2];
    rb_status s = text_build(&enc[0], &p, &cl, 0);
    if (s == RB_OK)
        s = text_build(&enc[1], &p, &cg, 1);
    rb_arena ar;
    if (s == RB_OK)
        s = rb_arena_init(&ar, (size_t)512 << 20, "bench arena");
    if (s != RB_OK) {
        pool_free(&p);
        rb_clip_tokenizer_free(tk[0]), rb_clip_tokenizer_free(tk[1]);
        return cli_fail("bench text");
    }
    double peak = 0, best[3] = {1e30, 1e30, 1e30}, best_cpu = 0;
    s = bench_peak_gflops(&ar, o->dt, o->tiny ? 1 : 6, &peak);
    int64_t ids[2][RB_CLIP_CONTEXT], mask[RB_CLIP_CONTEXT];
    for (int k = 0; k < 2; k++) /* without a tokenizer: BOS, 20 word ids, EOS, padding */
        for (int j = 0; j < RB_CLIP_CONTEXT; j++)
            ids[k][j] = j == 0 ? 49406 : j <= 20 ? 320 + 37 * j : j == 21 || k == 0 ? 49407 : 0;
    for (int r = 0; r <= o->reps && s == RB_OK; r++) {
        double ta = bench_now_s(), ca = bench_cpu_s();
        for (int k = 0; k < 2 && tk[k] && s == RB_OK; k++)
            s = rb_clip_tokenize(tk[k], prompt, ids[k], mask, NULL);
        double tt = bench_now_s() - ta, te[2] = {0, 0};
        for (int k = 0; k < 2 && s == RB_OK; k++) {
            rb_ctx c;
            rb_ctx_init(&c, &ar);
            c.matmul_dtype = o->dt;
            size_t mark = rb_arena_mark(&ar);
            rb_tensor idt = rb_tensor_wrap(ids[k], RB_I64, 2, (int64_t[]){1, RB_CLIP_CONTEXT});
            rb_clip_text_out out;
            double tb = bench_now_s();
            s = rb_clip_text_forward(&c, &enc[k], &idt, 0, &out);
            te[k] = bench_now_s() - tb;
            rb_arena_reset(&ar, mark);
        }
        if ((r > 0 || o->reps == 0) && tt + te[0] + te[1] < best[0] + best[1] + best[2])
            best[0] = tt, best[1] = te[0], best[2] = te[1], best_cpu = bench_cpu_s() - ca;
    }
    int rc = RB_EXIT_OK;
    if (s != RB_OK)
        rc = cli_fail("bench text");
    else {
        double gf = (text_flops(&cl, RB_CLIP_CONTEXT, 0) + text_flops(&cg, RB_CLIP_CONTEXT, 1)) * 1e-9;
        char extra[256];
        char tks[32] = "null";
        if (tk[0])
            snprintf(tks, sizeof tks, "%.5f", best[0]);
        snprintf(extra, sizeof extra, ", \"tokenizer_s\": %s, \"clip_l_s\": %.4f, \"clip_g_s\": %.4f", tks, best[1],
                 best[2]);
        if (!o->json)
            printf("SDXL prompt encoding%s: tokenizers %s, CLIP-L %.3f s, OpenCLIP bigG %.3f s\n", o->tiny ? " (tiny)" : "",
                   tk[0] ? (snprintf(tbuf, sizeof tbuf, "%.2f ms", best[0] * 1e3), tbuf) : "not timed", best[1],
                   best[2]);
        report(o, "text", best[0] + best[1] + best[2], best_cpu, gf, peak, extra);
    }
    rb_dnnl_cache_clear();
    rb_arena_free(&ar);
    pool_free(&p);
    rb_clip_tokenizer_free(tk[0]), rb_clip_tokenizer_free(tk[1]);
    return rc;
}

/* ================================ open ================================ */

static void count_param(void *user, const rb_unet_param *up) {
    (void)up;
    ++*(int *)user;
}

/* reads one byte per page of every tensor (what a first forward pass does to the mapping) */
static uint64_t touch(const rb_safetensors *f) {
    uint64_t sum = 0;
    for (int i = 0; i < f->n; i++) {
        const unsigned char *d = f->entries[i].t.data;
        size_t n = rb_nbytes(&f->entries[i].t);
        for (size_t k = 0; k < n; k += 4096)
            sum += d[k];
    }
    return sum;
}

static int bench_open(const opts *o) {
    char tmp[4096];
    const char *path = o->file;
    int n_tensors = 0;
    double write_s = 0;
    if (o->synthetic) {
        const char *dir = getenv("TMPDIR");
        snprintf(tmp, sizeof tmp, "%s/relbooth_bench_open_%d.safetensors", dir && *dir ? dir : "/tmp", (int)getpid());
        path = tmp;
        pool p = {.wdt = RB_BF16, .s = RB_OK};
        rb_unet m;
        unet_fill u = {0};
        rb_unet_config cfg;
        unet_config(&cfg, o->tiny);
        rb_status s = rb_unet_init(&m, &cfg);
        if (s == RB_OK) { /* count the parameters first */
            rb_unet_visit_params(&m, count_param, &u.n);
            rb_unet_free(&m);
            u.names = pool_alloc(&p, (size_t)u.n * sizeof *u.names);
            u.tensors = pool_alloc(&p, (size_t)u.n * sizeof *u.tensors);
            n_tensors = u.n, u.n = 0;
            s = u.names && u.tensors ? unet_build(&m, &p, o->tiny, &u) : p.s;
        }
        if (s == RB_OK) {
            double t0 = bench_now_s();
            s = rb_st_write(path, u.n, (const char *const *)u.names, (const rb_tensor *const *)u.tensors, 0, NULL, NULL);
            write_s = bench_now_s() - t0;
            rb_unet_free(&m);
        }
        pool_free(&p);
        if (s != RB_OK)
            return unlink(path), cli_fail("bench open");
    }
    double t_open[2] = {0, 0}, t_touch[2] = {0, 0};
    size_t bytes = 0;
    rb_status s = RB_OK;
    uint64_t sum = 0;
    for (int r = 0; r < 2 && s == RB_OK; r++) {
        if (r == 0 && o->synthetic) { /* first open from disk: drop the file's clean pages */
            int fd = open(path, O_RDONLY);
            if (fd >= 0) {
                posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
                close(fd);
            }
        }
        rb_safetensors f;
        double t0 = bench_now_s();
        s = rb_st_open(&f, path);
        t_open[r] = bench_now_s() - t0;
        if (s != RB_OK)
            break;
        t0 = bench_now_s();
        sum += touch(&f);
        t_touch[r] = bench_now_s() - t0;
        bytes = f.map_size, n_tensors = f.n;
        rb_st_close(&f);
    }
    if (o->synthetic)
        unlink(path);
    if (s != RB_OK)
        return cli_fail("bench open");
    if (o->json)
        printf("{\"bench\": \"open\", \"seconds\": %.4f, \"cold_open_s\": %.4f, \"warm_open_s\": %.4f, \"cold_read_s\": "
               "%.3f, \"warm_read_s\": %.3f, \"write_s\": %.2f, \"gib\": %.3f, \"tensors\": %d, \"peak_rss_mib\": %.1f, "
               "\"load1\": %.2f, \"checksum\": %llu}\n",
               t_open[1], t_open[0], t_open[1], t_touch[0], t_touch[1], write_s, (double)bytes / (1 << 30), n_tensors,
               bench_peak_rss_mib(), bench_load1(), (unsigned long long)sum);
    else
        printf("open %s (%.2f GiB, %d tensors%s): rb_st_open %.4f s %s, %.4f s warm; reading every page %.2f s %s, "
               "%.2f s warm; peak RSS %.0f MiB; load %.2f\n",
               o->synthetic ? "synthetic SDXL UNet" : path, (double)bytes / (1 << 30), n_tensors,
               o->synthetic ? (snprintf(tmp, sizeof tmp, ", written in %.1f s", write_s), tmp) : "", t_open[0],
               o->synthetic ? "cold" : "first", t_open[1], t_touch[0], o->synthetic ? "cold" : "first", t_touch[1],
               bench_peak_rss_mib(), bench_load1());
    return RB_EXIT_OK;
}

int bench_models(int argc, char **argv) {
    opts o;
    int rc = parse(argc, argv, &o);
    if (rc >= 100)
        return rc - 100;
    if (rc >= 0)
        return rc;
    rb_set_num_threads(o.threads);
    if (!strcmp(argv[1], "unet"))
        return bench_unet(&o);
    if (!strcmp(argv[1], "vae"))
        return bench_vae(&o);
    if (!strcmp(argv[1], "text"))
        return bench_text(&o);
    return bench_open(&o);
}
