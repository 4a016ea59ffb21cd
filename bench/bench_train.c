/* `relbooth bench train [--size 512] [--json] [--no-cal] [--no-recompute] [--f32] [-t threads] [-r reps] [--warmup n]`:
 * the time of one RelationLoRA training step at batch 1, as `relbooth train` runs it, on a full-size
 * SDXL UNet with random weights (no files needed):
 *
 *   forward through the UNet with rank-4 LoRA on every attn2 q/k/v/out, MS-Diffusion's masked
 *   cross-attention over [77 text | 4 dummy | 2 x 16 image] tokens and the predicate-map store
 *   (rb_rel_attn2), then rb_rel_loss (MSE + KML + CAL, the official recipe's weights, t = 200 so KML
 *   is on), rb_backward for the LoRA gradients and one AdamW step.
 *
 * Weights: matrices and convolutions bf16 (what an fp16/bf16 checkpoint loads as, ~5 GB), norms and
 * biases f32, filled by a counter hash: uniform with variance 1/fan_in (norm weights 1, biases 0).
 * Forward matmuls/convs run in c->matmul_dtype (bf16 by default; backward is f32 throughout, and the
 * fused attention falls back to f32 when taped). As `relbooth train` does, the UNet recomputes each
 * transformer block in backward (rb_unet_in.recompute), with CAL too: each stored layer's CAL term is
 * computed inside its block (in-block CAL, relation_loss.h). --no-recompute keeps the whole forward
 * on the tape instead (for comparison).
 *
 * Reported: the best step time of `reps` timed steps after `warmup` untimed ones, split into
 * forward (+loss) / backward / optimizer, and the process's peak RSS (getrusage). --tiny swaps in a
 * toy UNet (the golden unet_sdxl sizes) for tests. */
#include "bench_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cli.h"
#include "core/mem.h"
#include "models/lora.h"
#include "models/ms_adapter.h"
#include "models/unet.h"
#include "ops/optim.h"
#include "ops/tape.h"
#include "pipelines/relation_loss.h"
#include "pipelines/train.h"

/* ---- deterministic fill ---- */

/* splitmix64 of (seed, index) -> uniform in [-1, 1): independent of thread count and order */
static inline float hash_uniform(uint64_t seed, uint64_t i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + i + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16); /* round to nearest even (values are finite) */
}

/* t (f32 or bf16) = uniform(-a, a) with a = amp * sqrt(3): variance amp^2 */
static void fill_uniform(rb_tensor *t, uint64_t seed, float amp) {
    int64_t n = rb_numel(t);
    float a = amp * sqrtf(3.0f);
    if (t->dtype == RB_BF16) {
        uint16_t *p = t->data;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            p[i] = f32_to_bf16(a * hash_uniform(seed, (uint64_t)i));
    } else {
        float *p = t->data;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < n; i++)
            p[i] = a * hash_uniform(seed, (uint64_t)i);
    }
}

static void fill_const(rb_tensor *t, float v) {
    float *p = t->data;
    for (int64_t i = 0; i < rb_numel(t); i++)
        p[i] = v;
}

/* ---- random UNet weights ---- */

typedef struct weight_store {
    int n, cap;
    rb_tensor *t; /* [cap] */
    rb_status status;
    double bytes;
} weight_store;

static void count_param(void *user, const rb_unet_param *p) {
    (void)p;
    ((weight_store *)user)->cap++;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static void make_param(void *user, const rb_unet_param *p) {
    weight_store *ws = user;
    if (ws->status != RB_OK || ws->n >= ws->cap)
        return;
    rb_tensor *t = &ws->t[ws->n];
    rb_status s = rb_tensor_alloc(t, p->f32 ? RB_F32 : RB_BF16, p->ndim, p->shape, p->name);
    if (s != RB_OK) {
        ws->status = s;
        return;
    }
    ws->n++;
    ws->bytes += (double)rb_nbytes(t);
    if (p->ndim == 1) /* norms and biases */
        fill_const(t, strstr(p->name, "norm") && ends_with(p->name, ".weight") ? 1.0f : 0.0f);
    else {
        int64_t fan_in = 1;
        for (int d = 1; d < p->ndim; d++)
            fan_in *= p->shape[d];
        fill_uniform(t, 1000u + (uint64_t)ws->n, 1.0f / sqrtf((float)fan_in));
    }
    *p->slot = t;
}

static void free_store(weight_store *ws) {
    for (int i = 0; i < ws->n; i++)
        rb_tensor_free(&ws->t[i]);
    rb_free(ws->t);
    memset(ws, 0, sizeof *ws);
}

static void config_sdxl(rb_unet_config *c, int tiny) {
    memset(c, 0, sizeof *c);
    c->in_channels = c->out_channels = 4;
    c->n_blocks = 3;
    static const int out_full[3] = {320, 640, 1280}, out_tiny[3] = {8, 16, 32};
    static const int tl_full[3] = {1, 2, 10}, tl_tiny[3] = {1, 1, 2};
    static const int heads_full[3] = {5, 10, 20}, heads_tiny[3] = {1, 2, 4}; /* diffusers' attention_head_dim */
    for (int i = 0; i < 3; i++) {
        c->block_out[i] = tiny ? out_tiny[i] : out_full[i];
        c->transformer_layers[i] = tiny ? tl_tiny[i] : tl_full[i];
        c->heads[i] = tiny ? heads_tiny[i] : heads_full[i];
        c->down_attn[i] = i > 0;  /* DownBlock2D, CrossAttnDownBlock2D x2 */
        c->up_attn[i] = i < 2;    /* CrossAttnUpBlock2D x2, UpBlock2D */
    }
    c->mid_attn = 1;
    c->layers_per_block = 2;
    c->cross_attention_dim = tiny ? 36 : 2048;
    c->use_linear_projection = 1;
    c->norm_groups = tiny ? 4 : 32;
    c->norm_eps = 1e-5f;
    c->flip_sin_to_cos = 1;
    c->freq_shift = 0;
    c->text_time = 1;
    c->addition_time_embed_dim = tiny ? 8 : 256;
    c->add_embed_in = tiny ? 60 : 2816;
    c->time_embed_dim = 4 * c->block_out[0];
}

/* ---- the bench ---- */

typedef struct bench_opts {
    int size, json, tiny, cal, recompute, threads, reps, warmup;
    rb_dtype mm;
} bench_opts;

typedef struct bench_state {
    rb_unet unet;
    weight_store ws;
    rb_ms_adapter ad;
    rb_tensor *ip; /* [2 * n_attn] to_k_ip/to_v_ip of the cross-attentions */
    rb_tensor dummy;
    rb_lora_set lora;
    int n_params;
    rb_tensor **params;
    rb_tensor *grads; /* [n_params] */
    rb_adam opt;
    rb_arena keep, work, gradarena;
    rb_tape tape;
    rb_unet_proc *procs;
    float abar[1000];
} bench_state;

#define N_SUBJ 2
#define N_QUERY 16
#define N_DUMMY 4

static rb_tensor *randn_tensor(rb_arena *a, int ndim, const int64_t *shape, uint64_t seed, float amp) {
    rb_tensor *t = rb_arena_tensor(a, RB_F32, ndim, shape);
    if (t)
        fill_uniform(t, seed, amp);
    return t;
}

static rb_status setup(bench_state *B, const bench_opts *o) {
    rb_unet_config cfg;
    config_sdxl(&cfg, o->tiny);
    RB_TRY(rb_unet_config_check(&cfg, o->tiny ? "tiny SDXL config" : "SDXL config"));
    RB_TRY(rb_unet_init(&B->unet, &cfg));
    rb_unet_visit_params(&B->unet, count_param, &B->ws);
    if (!(B->ws.t = rb_calloc((size_t)B->ws.cap * sizeof *B->ws.t, "bench UNet tensors")))
        return RB_ERR_OOM;
    rb_unet_visit_params(&B->unet, make_param, &B->ws);
    RB_TRY(B->ws.status);
    /* MS-Diffusion adapter: to_k_ip/to_v_ip per cross-attention and the dummy tokens (no resampler:
     * the image tokens are random) */
    int64_t D = cfg.cross_attention_dim;
    rb_ms_adapter *ad = &B->ad;
    ad->n_attn = B->unet.n_attn, ad->text_tokens = 77, ad->num_dummy = N_DUMMY;
    ad->resampler.cfg.num_queries = N_QUERY;
    ad->to_k_ip = rb_calloc((size_t)B->unet.n_attn * sizeof *ad->to_k_ip, "bench adapter");
    ad->to_v_ip = rb_calloc((size_t)B->unet.n_attn * sizeof *ad->to_v_ip, "bench adapter");
    B->ip = rb_calloc((size_t)B->unet.n_attn * 2 * sizeof *B->ip, "bench adapter");
    if (!ad->to_k_ip || !ad->to_v_ip || !B->ip)
        return RB_ERR_OOM;
    for (int i = 0; i < B->unet.n_attn; i++) {
        const rb_unet_attn *a = B->unet.attn[i];
        if (!a->cross)
            continue;
        for (int k = 0; k < 2; k++) {
            rb_tensor *t = &B->ip[2 * i + k];
            RB_TRY(rb_tensor_alloc(t, RB_BF16, 2, (int64_t[]){a->dim, D}, "bench to_k_ip/to_v_ip"));
            fill_uniform(t, 50000u + 2u * (uint64_t)i + (uint64_t)k, 1.0f / sqrtf((float)D));
        }
        ad->to_k_ip[i] = &B->ip[2 * i], ad->to_v_ip[i] = &B->ip[2 * i + 1];
    }
    RB_TRY(rb_tensor_alloc(&B->dummy, RB_F32, 3, (int64_t[]){1, N_DUMMY, D}, "bench dummy tokens"));
    fill_uniform(&B->dummy, 7, 1.0f);
    ad->dummy_tokens = &B->dummy;
    /* LoRA rank 4 (alpha 4) on every attn2 q/k/v/out: A ~ U with std 1/r, B small (not zero, so
     * every gradient is non-trivial) */
    rb_lora_init(&B->lora);
    RB_TRY(rb_train_lora_pairs(&B->lora, &B->unet, 4, 4.0f));
    for (int i = 0; i < B->lora.n; i++) {
        fill_uniform(B->lora.pairs[i]->down, 90000u + (uint64_t)i + 1, 0.25f);
        fill_uniform(B->lora.pairs[i]->up, 190000u + (uint64_t)i + 1, 1e-3f);
    }
    B->n_params = 2 * B->lora.n;
    B->params = rb_calloc((size_t)B->n_params * sizeof *B->params, "bench LoRA parameters");
    B->grads = rb_calloc((size_t)B->n_params * sizeof *B->grads, "bench LoRA gradients");
    if (!B->params || !B->grads)
        return RB_ERR_OOM;
    for (int i = 0; i < B->lora.n; i++) {
        rb_lora_pair *pr = B->lora.pairs[i];
        rb_tensor *t[2] = {pr->down, pr->up};
        for (int k = 0; k < 2; k++) {
            rb_tensor *g = &B->grads[2 * i + k];
            RB_TRY(rb_tensor_alloc(g, RB_F32, t[k]->ndim, t[k]->shape, "bench LoRA gradient"));
            memset(g->data, 0, rb_nbytes(g));
            t[k]->grad = g, t[k]->requires_grad = 1;
            B->params[2 * i + k] = t[k];
        }
    }
    RB_TRY(rb_unet_attach_lora(&B->unet, &B->lora));
    rb_adam_config ac;
    rb_adam_config_init(&ac);
    ac.lr = 1e-4;
    RB_TRY(rb_adam_init(&B->opt, &ac, B->n_params, B->params));
    /* arenas: reserved, touched only as used (so RSS shows what a step really needs); the high-water
     * marks are reported. Recomputing: 16 GiB at 1024 px (measured high-water: docs/bench-train.md) */
    double px = (double)o->size * o->size / (1024.0 * 1024.0);
    size_t ab = o->tiny ? (size_t)256 << 20
                        : (size_t)fmax(1024.0 * (1 << 20), px * (o->recompute ? 16.0 : 40.0) * (1 << 30));
    RB_TRY(rb_arena_init(&B->keep, (size_t)64 << 20, "bench keep"));
    RB_TRY(rb_arena_init(&B->work, ab, "bench activations"));
    RB_TRY(rb_arena_init(&B->gradarena, ab / 2, "bench gradients"));
    RB_TRY(rb_tape_init(&B->tape, 1 << 15, &B->gradarena));
    if (!(B->procs = rb_arena_alloc(&B->keep, (size_t)B->unet.n_attn * sizeof *B->procs)))
        return RB_ERR_OOM;
    /* DDPM scaled_linear betas 0.00085 .. 0.012 over 1000 steps (SDXL's scheduler) */
    double a = 1.0, s0 = sqrt(0.00085), s1 = sqrt(0.012);
    for (int i = 0; i < 1000; i++) {
        double b = s0 + (s1 - s0) * i / 999.0;
        a *= 1.0 - b * b;
        B->abar[i] = (float)a;
    }
    return RB_OK;
}

static void teardown(bench_state *B) {
    rb_adam_free(&B->opt);
    rb_unet_detach_lora(&B->unet);
    rb_lora_free(&B->lora);
    for (int i = 0; i < B->n_params && B->grads; i++)
        rb_tensor_free(&B->grads[i]);
    rb_free(B->grads);
    rb_free(B->params);
    for (int i = 0; B->ip && i < 2 * B->unet.n_attn; i++)
        if (B->ip[i].data)
            rb_tensor_free(&B->ip[i]);
    rb_free(B->ip);
    rb_free(B->ad.to_k_ip);
    rb_free(B->ad.to_v_ip);
    if (B->dummy.data)
        rb_tensor_free(&B->dummy);
    rb_unet_free(&B->unet);
    free_store(&B->ws);
    rb_tape_free(&B->tape);
    rb_arena_free(&B->gradarena);
    rb_arena_free(&B->work);
    rb_arena_free(&B->keep);
}

typedef struct step_result {
    double fwd, bwd, opt, loss, mse, kml, cal, grad_sq;
    int n_maps;
} step_result;

static rb_status one_step(bench_state *B, const bench_opts *o, step_result *r) {
    rb_ctx c;
    rb_ctx_init(&c, &B->work);
    c.matmul_dtype = o->mm;
    const rb_unet_config *cfg = &B->unet.cfg;
    int64_t h = o->size / 8, D = cfg->cross_attention_dim;
    int64_t L = 77 + N_DUMMY + N_SUBJ * N_QUERY, P = cfg->add_embed_in - 6 * cfg->addition_time_embed_dim;
    rb_arena *w = &B->work;
    rb_tensor *xt = randn_tensor(w, 4, (int64_t[]){1, 4, h, h}, 1, 1.0f);
    rb_tensor *noise = randn_tensor(w, 4, (int64_t[]){1, 4, h, h}, 2, 1.0f);
    rb_tensor *ctx = randn_tensor(w, 3, (int64_t[]){1, L, D}, 3, 1.0f);
    rb_tensor *pooled = randn_tensor(w, 2, (int64_t[]){1, P}, 4, 1.0f);
    rb_tensor *cl = randn_tensor(w, 5, (int64_t[]){1, N_SUBJ, 4, h, h}, 5, 1.0f);
    rb_tensor *kp = randn_tensor(w, 4, (int64_t[]){1, 2 * N_SUBJ, 17, 2}, 6, 0.2f);
    rb_tensor *seg = rb_arena_tensor(w, RB_F32, 3, (int64_t[]){1, h, h});
    rb_tensor *tid = rb_arena_tensor(w, RB_F32, 2, (int64_t[]){1, 6});
    rb_tensor *ts = rb_arena_tensor(w, RB_I64, 1, (int64_t[]){1});
    if (!xt || !noise || !ctx || !pooled || !cl || !kp || !seg || !tid || !ts)
        return RB_ERR_OOM;
    float *k = kp->data; /* keypoints in [0.15, 0.85) */
    for (int64_t i = 0; i < rb_numel(kp); i++)
        k[i] += 0.5f;
    float *sg = seg->data; /* object segmap: the left subject's box */
    for (int64_t y = 0; y < h; y++)
        for (int64_t x = 0; x < h; x++)
            sg[y * h + x] = y >= h / 8 && y < 7 * h / 8 && x >= h / 8 && x < h / 2;
    float *ti = tid->data;
    ti[0] = ti[1] = ti[4] = ti[5] = (float)o->size, ti[2] = ti[3] = 0;
    int64_t t = 200; /* <= 333: KML is on (official recipe) */
    *(int64_t *)ts->data = t;
    static const float boxes[N_SUBJ * 4] = {0.1f, 0.1f, 0.5f, 0.9f, 0.5f, 0.1f, 0.9f, 0.9f};
    static const int64_t span[2] = {5, 7};
    rb_rel_loss_config lc;
    rb_rel_loss_config_official(&lc);
    if (!o->cal)
        lc.w_cal = 0.0f;
    rb_rel_attn_call call = {.ms = {.adapter = &B->ad, .n_subjects = N_SUBJ, .boxes = boxes, .scale = 1.0f},
                             .pred_span = o->cal ? span : NULL, .max_hw = lc.cal_max_hw,
                             .segmaps = o->cal ? seg : NULL};
    rb_rel_procs(&B->unet, &call, B->procs);
    rb_status s = RB_OK;
    double t0 = bench_now_s();
    c.tape = &B->tape;
    rb_unet_in in = {.sample = xt, .timestep = ts, .encoder_hidden_states = ctx, .text_embeds = pooled,
                     .time_ids = tid, .procs = B->procs, .recompute = o->recompute};
    rb_unet_out uo;
    rb_rel_loss_out lo;
    if ((s = rb_unet_forward(&c, &B->unet, &in, &uo)) != RB_OK)
        goto out;
    rb_rel_loss_in li = {.x_t = xt, .eps = uo.sample, .noise = noise, .timesteps = &t, .alphas_cumprod = B->abar,
                         .keypoints = kp, .concept_latents = cl, .n_entities = N_SUBJ, .segmaps = seg, .attn = &call};
    if ((s = rb_rel_loss(&c, &lc, &li, &lo)) != RB_OK)
        goto out;
    double t1 = bench_now_s();
    if ((s = rb_backward(&c, lo.total)) != RB_OK)
        goto out;
    double t2 = bench_now_s();
    r->grad_sq = 0;
    for (int i = 0; i < B->n_params; i++) {
        const float *g = B->grads[i].data;
        for (int64_t j = 0; j < rb_numel(&B->grads[i]); j++)
            r->grad_sq += (double)g[j] * g[j];
    }
    if ((s = rb_adam_step(&B->opt)) != RB_OK)
        goto out;
    rb_adam_zero_grad(&B->opt);
    double t3 = bench_now_s();
    r->fwd = t1 - t0, r->bwd = t2 - t1, r->opt = t3 - t2;
    r->loss = ((float *)lo.total->data)[0], r->mse = ((float *)lo.mse->data)[0];
    r->kml = lo.kml ? ((float *)lo.kml->data)[0] : NAN;
    r->cal = lo.cal ? ((float *)lo.cal->data)[0] : NAN;
    r->n_maps = call.n_maps;
out:
    if (s != RB_OK && c.status != RB_OK)
        s = c.status;
    rb_tape_reset(&B->tape);
    rb_arena_reset(&B->work, 0);
    rb_arena_reset(&B->gradarena, 0);
    return s;
}

static int usage(FILE *f) {
    fprintf(f, "usage: relbooth bench train [--size N] [--json] [--no-cal] [--no-recompute] [--f32] [-t threads] [-r reps] "
               "[--warmup n]\n"
               "  one RelationLoRA training step (UNet forward + backward for the LoRA gradients, keypoint and\n"
               "  attention losses, AdamW) at N x N (default 512), batch 1, on a random-weight SDXL UNet.\n"
               "  --no-cal: no attention loss\n"
               "  --no-recompute: keep every transformer block's forward on the tape (default: recomputed in backward)\n"
               "  --f32: f32 forward matmuls (default bf16 forward, f32 backward)\n");
    return f == stdout ? RB_EXIT_OK : RB_EXIT_USAGE;
}

static const char *fmt_opt(double v, char *buf) {
    if (isnan(v))
        return "null";
    snprintf(buf, 32, "%.6g", v);
    return buf;
}

int bench_train_main(int argc, char **argv) {
    bench_opts o = {.size = 512, .cal = 1, .recompute = 1, .threads = 2, .reps = 1, .warmup = 1, .mm = RB_BF16};
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            o.json = 1;
        else if (!strcmp(argv[i], "--tiny"))
            o.tiny = 1;
        else if (!strcmp(argv[i], "--no-cal"))
            o.cal = 0;
        else if (!strcmp(argv[i], "--no-recompute"))
            o.recompute = 0;
        else if (!strcmp(argv[i], "--f32"))
            o.mm = RB_F32;
        else if (!strcmp(argv[i], "--size") && i + 1 < argc)
            o.size = atoi(argv[++i]);
        else if ((!strcmp(argv[i], "-t") || !strcmp(argv[i], "--threads")) && i + 1 < argc)
            o.threads = atoi(argv[++i]);
        else if ((!strcmp(argv[i], "-r") || !strcmp(argv[i], "--reps")) && i + 1 < argc)
            o.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--warmup") && i + 1 < argc)
            o.warmup = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(stdout);
        else
            return usage(stderr);
    }
    if (o.size < 64 || o.size % 64 || o.size > 4096 || o.threads < 1 || o.reps < 1 || o.reps > 100 || o.warmup < 0 ||
        o.warmup > 100) {
        fprintf(stderr, "relbooth bench train: --size must be a multiple of 64 in [64, 4096]; threads, reps >= 1\n");
        return RB_EXIT_USAGE;
    }
    rb_set_num_threads(o.threads);
    bench_state *B = rb_calloc(sizeof *B, "bench state");
    if (!B)
        return cli_fail("bench train");
    double t0 = bench_now_s();
    rb_status s = setup(B, &o);
    double setup_s = bench_now_s() - t0;
    step_result best = {.fwd = INFINITY}, r;
    double best_total = INFINITY;
    for (int i = 0; s == RB_OK && i < o.warmup + o.reps; i++) {
        memset(&r, 0, sizeof r);
        if ((s = one_step(B, &o, &r)) != RB_OK)
            break;
        double tot = r.fwd + r.bwd + r.opt;
        if (!o.json)
            fprintf(stderr, "bench train: step %d%s: %.2f s (forward %.2f, backward %.2f, AdamW %.3f), loss %.6g\n", i + 1,
                    i < o.warmup ? " (warm-up)" : "", tot, r.fwd, r.bwd, r.opt, r.loss);
        if (i >= o.warmup && tot < best_total)
            best_total = tot, best = r;
    }
    int rc = RB_EXIT_OK;
    if (s != RB_OK)
        rc = cli_fail("bench train");
    else {
        double rss = bench_peak_rss_mib(), wmib = B->ws.bytes / (1 << 20);
        const char *dt = o.mm == RB_BF16 ? "bf16" : "f32";
        char b1[32], b2[32];
        if (o.json)
            printf("{\"suite\": \"train\", \"model\": \"%s\", \"size\": %d, \"batch\": 1, \"seconds\": %.3f, "
                   "\"forward_s\": %.3f, \"backward_s\": %.3f, \"optimizer_s\": %.4f, \"peak_rss_mib\": %.1f, "
                   "\"weights_mib\": %.1f, \"activations_peak_mib\": %.1f, \"grads_peak_mib\": %.1f, \"recompute\": %s, \"cal\": %s, \"matmul_dtype\": \"%s\", \"threads\": %d, "
                   "\"reps\": %d, \"warmup\": %d, \"lora_params\": %d, \"cal_maps\": %d, \"loss\": %.6g, "
                   "\"mse\": %.6g, \"kml\": %s, \"cal_loss\": %s, \"grad_norm\": %.6g}\n",
                   o.tiny ? "tiny" : "sdxl", o.size, best_total, best.fwd, best.bwd, best.opt, rss, wmib,
                   B->work.peak / 1048576.0, B->gradarena.peak / 1048576.0, o.recompute ? "true" : "false", o.cal ? "true" : "false", dt, o.threads, o.reps, o.warmup, B->n_params,
                   best.n_maps, best.loss, best.mse, fmt_opt(best.kml, b1), fmt_opt(best.cal, b2), sqrt(best.grad_sq));
        else
            printf("train step %s %dx%d batch 1 (%s forward, %s, %d threads): %.2f s (forward+loss %.2f, backward %.2f, "
                   "AdamW %.3f), best of %d after %d warm-up\npeak RSS %.0f MiB (UNet weights %.0f MiB, arena high-water: activations "
                   "%.0f MiB, gradients %.0f MiB; setup %.1f s); "
                   "loss %.6g (mse %.6g, kml %s, cal %s, %d CAL maps), LoRA grad norm %.4g\n",
                   o.tiny ? "tiny UNet" : "SDXL UNet", o.size, o.size, dt,
                   o.cal ? (o.recompute ? "CAL on, recompute" : "CAL on, no recompute")
                         : (o.recompute ? "no CAL, recompute" : "no CAL, no recompute"),
                   o.threads, best_total, best.fwd, best.bwd,
                   best.opt, o.reps, o.warmup, rss, wmib, B->work.peak / 1048576.0, B->gradarena.peak / 1048576.0, setup_s, best.loss, best.mse, fmt_opt(best.kml, b1),
                   fmt_opt(best.cal, b2), best.n_maps, sqrt(best.grad_sq));
    }
    teardown(B);
    rb_free(B);
    return rc;
}
