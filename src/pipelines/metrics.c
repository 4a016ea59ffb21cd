/* RelationBench scores: CLIP-T, CLIP-R, CLIP-I, DINO (see metrics.h, docs/eval.md "Scores").
 * The computation follows the public reproduction's functions (compute_clip_text_similarity,
 * compute_clip_image_similarity, compute_dino_similarity): processor -> features -> x / ||x|| ->
 * cosine. Batching the texts (prompt + predicate padded together) changes nothing: padding follows
 * the pooled EOS token and the text tower is causal. */
#include "metrics.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/mem.h"
#include "relbooth.h"

/* ---- score conventions ---- */

static const char *const scale_names[] = {"cosine", "x100", "clipscore-w2.5"};
static const char *const scale_formulas[] = {"cos", "max(100*cos, 0)", "2.5*max(cos, 0)"};

const char *rb_score_scale_name(rb_score_scale s) { return (unsigned)s < 3 ? scale_names[s] : "?"; }
const char *rb_score_scale_formula(rb_score_scale s) { return (unsigned)s < 3 ? scale_formulas[s] : "?"; }

rb_status rb_score_scale_parse(const char *name, rb_score_scale *out) {
    for (int i = 0; i < 3; i++)
        if (name && !strcmp(name, scale_names[i])) {
            *out = (rb_score_scale)i;
            return RB_OK;
        }
    if (name && (!strcmp(name, "w2.5") || !strcmp(name, "clipscore"))) {
        *out = RB_SCORE_W25;
        return RB_OK;
    }
    return rb_error(RB_ERR_INVALID, "score scale '%s': expected cosine, x100 or clipscore-w2.5", name ? name : "");
}

double rb_score_apply(rb_score_scale s, double cosine) {
    if (isnan(cosine))
        return cosine; /* a score not computed stays NAN (fmax would make it 0) */
    switch (s) {
    case RB_SCORE_X100: return fmax(100.0 * cosine, 0.0);
    case RB_SCORE_W25: return 2.5 * fmax(cosine, 0.0);
    default: return cosine;
    }
}

double rb_metrics_cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    /* F.cosine_similarity: x.y / max(||x|| ||y||, eps), eps 1e-8 */
    double den = sqrt(aa) * sqrt(bb);
    return ab / (den > 1e-8 ? den : 1e-8);
}

/* ---- setup ---- */

void rb_metrics_config_init(rb_metrics_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->dino_pool = RB_DINO_POOL_CLS;
    cfg->ref_resize = 512;
    cfg->matmul_dtype = RB_F32;
}

int rb_metrics_clip_dim(const rb_metrics *m) { return (int)m->clip.vision.proj->shape[0]; }
int rb_metrics_dino_dim(const rb_metrics *m) { return m->has_dino ? m->dino.cfg.hidden : 0; }

/* f32 bytes of one encoder pass over T tokens of width D, MLP F, `layers` layers (every op output
 * stays in the arena until the pass ends), with slack */
static size_t pass_bytes(int64_t B, int64_t T, int64_t D, int64_t F, int64_t layers) {
    return (size_t)(4 * B * T * (14 * D + 2 * F) * (layers + 2)) + ((size_t)16 << 20);
}

static size_t arena_size(const rb_metrics *m) {
    const rb_clip_vision_config *v = &m->clip.vision.cfg;
    const rb_clip_text_config *t = &m->clip.text.cfg;
    int64_t gv = v->image_size / v->patch_size;
    /* texts: a batch of 2 (prompt + predicate) at the full context, the worst case */
    size_t need = pass_bytes(1, 1 + gv * gv, v->hidden, v->intermediate, v->layers);
    size_t text = pass_bytes(2, t->max_positions, t->hidden, t->intermediate, t->layers);
    need = text > need ? text : need;
    if (m->has_dino) {
        const rb_dino_config *d = &m->dino.cfg;
        int oh = 224, ow = 224;
        rb_preprocess_output_size(&m->dino_pre, 1024, 1024, &oh, &ow);
        int64_t T = 1 + (int64_t)(oh / d->patch_size) * (ow / d->patch_size);
        size_t dn = pass_bytes(1, T, d->hidden, d->intermediate, d->layers);
        need = dn > need ? dn : need;
    }
    return need;
}

/* the models are in place: processors, arena, context */
static rb_status finish_open(rb_metrics *m) {
    if (m->cfg.arena_bytes == 0)
        m->cfg.arena_bytes = arena_size(m);
    RB_TRY(rb_arena_init(&m->arena, m->cfg.arena_bytes, "metrics activations"));
    rb_ctx_init(&m->ctx, &m->arena);
    m->ctx.matmul_dtype = m->cfg.matmul_dtype;
    return RB_OK;
}

static rb_status load_preprocess(rb_preprocess_config *p, const char *dir, rb_preprocess_kind fallback) {
    char path[4096];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        rb_preprocess_config_init(p, fallback);
        return RB_OK;
    }
    fclose(f);
    return rb_preprocess_config_load(p, path);
}

rb_status rb_metrics_open(rb_metrics *m, const rb_metrics_config *cfg) {
    memset(m, 0, sizeof *m);
    m->cfg = *cfg;
    if (!cfg->clip_dir)
        return rb_error(RB_ERR_INVALID, "metrics: no CLIP model folder given");
    rb_status s = rb_clip_model_load(&m->clip, cfg->clip_dir);
    if (s == RB_OK)
        s = load_preprocess(&m->clip_pre, cfg->clip_dir, RB_PREPROCESS_CLIP);
    if (s == RB_OK)
        s = rb_clip_tokenizer_load(&m->tok, cfg->tokenizer_dir ? cfg->tokenizer_dir : cfg->clip_dir);
    if (s == RB_OK && cfg->dino_dir) {
        s = rb_dino_load(&m->dino, cfg->dino_dir);
        m->has_dino = s == RB_OK;
        if (s == RB_OK)
            s = load_preprocess(&m->dino_pre, cfg->dino_dir,
                                m->dino.cfg.kind == RB_DINO_V2 ? RB_PREPROCESS_BIT : RB_PREPROCESS_VIT);
    }
    if (s == RB_OK)
        s = finish_open(m);
    if (s != RB_OK)
        rb_metrics_close(m);
    return s;
}

void rb_metrics_close(rb_metrics *m) {
    rb_clip_model_free(&m->clip);
    if (m->tok)
        rb_clip_tokenizer_free(m->tok);
    if (m->dino_block)
        rb_free(m->dino_block);
    else if (m->has_dino)
        rb_dino_free(&m->dino);
    rb_arena_free(&m->arena);
    memset(m, 0, sizeof *m);
}

/* ---- text ---- */

rb_status rb_metrics_tokenize(const rb_metrics *m, const char *const *texts, int n, int64_t *ids, int64_t *mask,
                              int max_len, int *len) {
    if (max_len < RB_CLIP_CONTEXT)
        return rb_error(RB_ERR_INVALID, "metrics: token rows of %d < %d", max_len, RB_CLIP_CONTEXT);
    int32_t bpe[RB_CLIP_CONTEXT];
    int longest = 0;
    for (int i = 0; i < n; i++) {
        int k = rb_clip_encode(m->tok, texts[i], bpe, RB_CLIP_CONTEXT - 2);
        if (k < 0)
            return RB_ERR_FORMAT;
        if (k > RB_CLIP_CONTEXT - 2)
            k = RB_CLIP_CONTEXT - 2; /* truncation=True: BOS + 75 + EOS */
        int64_t *row = ids + (size_t)i * (size_t)max_len, *mrow = mask + (size_t)i * (size_t)max_len;
        row[0] = rb_clip_tokenizer_bos(m->tok);
        for (int j = 0; j < k; j++)
            row[1 + j] = bpe[j];
        row[k + 1] = rb_clip_tokenizer_eos(m->tok);
        for (int j = 0; j < max_len; j++)
            mrow[j] = j < k + 2;
        for (int j = k + 2; j < max_len; j++)
            row[j] = rb_clip_tokenizer_pad(m->tok);
        longest = k + 2 > longest ? k + 2 : longest;
    }
    *len = longest;
    return RB_OK;
}

/* normalised text features of ids [n, L] (row stride `stride`) into out [n, E] */
static rb_status text_features_ids(rb_metrics *m, const int64_t *ids, const int64_t *mask, int n, int L,
                                   int stride, float *out) {
    rb_ctx *c = &m->ctx;
    size_t mark = rb_arena_mark(&m->arena);
    rb_tensor *t_ids = rb_ctx_tensor(c, RB_I64, 2, (int64_t[]){n, L});
    rb_tensor *t_mask = rb_ctx_tensor(c, RB_I64, 2, (int64_t[]){n, L});
    if (t_ids && t_mask)
        for (int i = 0; i < n; i++) {
            memcpy((int64_t *)t_ids->data + (size_t)i * L, ids + (size_t)i * stride, (size_t)L * sizeof *ids);
            memcpy((int64_t *)t_mask->data + (size_t)i * L, mask + (size_t)i * stride, (size_t)L * sizeof *mask);
        }
    rb_tensor *f = rb_l2_normalize(c, rb_clip_model_text_features(c, &m->clip, t_ids, t_mask), 0.0f);
    if (f)
        memcpy(out, f->data, (size_t)rb_numel(f) * sizeof(float));
    rb_status s = c->status;
    rb_ctx_clear(c);
    rb_arena_reset(&m->arena, mark);
    return s;
}

rb_status rb_metrics_text_features(rb_metrics *m, const char *const *texts, int n, float *out) {
    size_t cells;
    if (n < 1 || !rb_mul_size((size_t)n, RB_CLIP_CONTEXT, &cells))
        return rb_error(RB_ERR_INVALID, "metrics: %d texts", n);
    int64_t *ids = rb_alloc(2 * cells * sizeof *ids, "metrics token ids");
    if (!ids)
        return RB_ERR_OOM;
    int L = 0;
    rb_status s = rb_metrics_tokenize(m, texts, n, ids, ids + cells, RB_CLIP_CONTEXT, &L);
    if (s == RB_OK)
        s = text_features_ids(m, ids, ids + cells, n, L, RB_CLIP_CONTEXT, out);
    rb_free(ids);
    return s;
}

/* ---- images ---- */

/* PIL .convert("RGB") of an 8-bit image: gray replicated, alpha dropped */
static rb_status to_rgb(rb_image *out, const rb_image *in) {
    size_t n;
    if (!rb_mul_size((size_t)in->width * 3, (size_t)in->height, &n))
        return rb_error(RB_ERR_INVALID, "metrics: image too large");
    *out = *in;
    out->channels = 3;
    out->data = rb_alloc(n, "metrics RGB image");
    if (!out->data)
        return RB_ERR_OOM;
    size_t px = (size_t)in->width * (size_t)in->height;
    for (size_t i = 0; i < px; i++)
        for (int k = 0; k < 3; k++)
            out->data[3 * i + k] = in->data[i * (size_t)in->channels + (in->channels >= 3 ? (size_t)k : 0)];
    return RB_OK;
}

/* processor output of img -> a [1, 3, H, W] tensor in the arena */
static rb_tensor *pixels_of(rb_ctx *c, const rb_image *img, const rb_preprocess_config *pre) {
    int h = 0, w = 0;
    rb_status s = rb_preprocess_output_size(pre, img->width, img->height, &h, &w);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    rb_tensor *px = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){1, 3, h, w});
    if (px && (s = rb_image_preprocess(img, pre, px->data)) != RB_OK)
        return rb_ctx_fail(c, s);
    return px;
}

/* [1, D] DINO embedding of pixels, un-normalised */
static rb_tensor *dino_embedding(rb_ctx *c, const rb_metrics *m, rb_tensor *px) {
    rb_dino_out o;
    rb_status s = rb_dino_forward(c, &m->dino, px, &o);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    if (m->cfg.dino_pool == RB_DINO_POOL_CLS)
        return o.cls;
    /* mean over the T tokens: [B, T, D] -> [B, D] */
    int64_t B = o.last_hidden->shape[0], T = o.last_hidden->shape[1], D = o.last_hidden->shape[2];
    rb_tensor *mean = rb_ctx_tensor(c, RB_F32, 2, (int64_t[]){B, D});
    double *acc = rb_arena_alloc(c->arena, (size_t)D * sizeof *acc);
    if (!mean || !acc)
        return rb_ctx_fail(c, c->status != RB_OK ? c->status : RB_ERR_OOM);
    const float *x = o.last_hidden->data;
    for (int64_t b = 0; b < B; b++) {
        memset(acc, 0, (size_t)D * sizeof *acc);
        for (int64_t t = 0; t < T; t++)
            for (int64_t d = 0; d < D; d++)
                acc[d] += x[(b * T + t) * D + d];
        for (int64_t d = 0; d < D; d++)
            ((float *)mean->data)[b * D + d] = (float)(acc[d] / (double)T);
    }
    return mean;
}

rb_status rb_metrics_image_features(rb_metrics *m, const rb_image *img, int is_reference, float *clip, float *dino) {
    rb_image rgb = {0}, sized = {0};
    const rb_image *use = img;
    rb_status s = RB_OK;
    if (is_reference && m->cfg.ref_resize > 0) {
        if (img->channels != 3)
            s = to_rgb(&rgb, img);
        if (s == RB_OK)
            s = rb_image_resize(&sized, img->channels != 3 ? &rgb : img, m->cfg.ref_resize, m->cfg.ref_resize,
                                RB_RESAMPLE_BICUBIC);
        use = &sized;
    }
    rb_ctx *c = &m->ctx;
    size_t mark = rb_arena_mark(&m->arena);
    if (s == RB_OK) {
        rb_tensor *f = rb_l2_normalize(c, rb_clip_model_image_features(c, &m->clip, pixels_of(c, use, &m->clip_pre)), 0.0f);
        if (f)
            memcpy(clip, f->data, (size_t)rb_numel(f) * sizeof(float));
        rb_arena_reset(&m->arena, mark);
        if (m->has_dino && dino) {
            f = rb_l2_normalize(c, dino_embedding(c, m, pixels_of(c, use, &m->dino_pre)), 0.0f);
            if (f)
                memcpy(dino, f->data, (size_t)rb_numel(f) * sizeof(float));
        }
        s = c->status;
    }
    rb_ctx_clear(c);
    rb_arena_reset(&m->arena, mark);
    rb_image_free(&rgb);
    rb_image_free(&sized);
    return s;
}

/* ---- scores ---- */

/* the texts already tokenised: ids/mask [n_texts, L] (row stride `stride`), prompt first when
 * has_prompt, then the predicate when has_predicate */
static rb_status score_tokens(rb_metrics *m, const rb_image *gen, const int64_t *ids, const int64_t *mask, int L,
                              int stride, int has_prompt, int has_predicate, const float *ref_clip,
                              const float *ref_dino, int n_refs, rb_metrics_scores *out) {
    if (n_refs < 0 || n_refs > RB_METRICS_MAX_REFS)
        return rb_error(RB_ERR_INVALID, "metrics: %d references (at most %d)", n_refs, RB_METRICS_MAX_REFS);
    int E = rb_metrics_clip_dim(m), Dd = rb_metrics_dino_dim(m);
    float *buf = rb_alloc((size_t)(3 * E + (Dd > 0 ? Dd : 1)) * sizeof(float), "metrics features");
    if (!buf)
        return RB_ERR_OOM;
    float *img = buf, *txt = buf + E, *dino = buf + 3 * E;
    rb_status s = rb_metrics_image_features(m, gen, 0, img, Dd > 0 ? dino : NULL);
    int nt = has_prompt + has_predicate;
    if (s == RB_OK && nt > 0)
        s = text_features_ids(m, ids, mask, nt, L, stride, txt);
    if (s == RB_OK) {
        out->clip_t = has_prompt ? rb_metrics_cosine(img, txt, E) : NAN;
        out->clip_r = has_predicate ? rb_metrics_cosine(img, txt + (size_t)has_prompt * E, E) : NAN;
        out->n_refs = n_refs;
        double si = 0, sd = 0;
        for (int r = 0; r < n_refs; r++) {
            out->clip_i[r] = rb_metrics_cosine(img, ref_clip + (size_t)r * E, E);
            out->dino[r] = Dd > 0 && ref_dino ? rb_metrics_cosine(dino, ref_dino + (size_t)r * Dd, Dd) : NAN;
            si += out->clip_i[r];
            sd += out->dino[r];
        }
        out->clip_i_mean = n_refs ? si / n_refs : NAN;
        out->dino_mean = n_refs ? sd / n_refs : NAN;
    }
    rb_free(buf);
    return s;
}

rb_status rb_metrics_score(rb_metrics *m, const rb_image *generated, const char *prompt, const char *predicate,
                           const float *ref_clip, const float *ref_dino, int n_refs, rb_metrics_scores *out) {
    memset(out, 0, sizeof *out);
    const char *texts[2];
    int n = 0;
    if (prompt)
        texts[n++] = prompt;
    if (predicate)
        texts[n++] = predicate;
    int64_t ids[2 * RB_CLIP_CONTEXT], mask[2 * RB_CLIP_CONTEXT];
    int L = 0;
    if (n)
        RB_TRY(rb_metrics_tokenize(m, texts, n, ids, mask, RB_CLIP_CONTEXT, &L));
    return score_tokens(m, generated, ids, mask, L, RB_CLIP_CONTEXT, prompt != NULL, predicate != NULL, ref_clip,
                        ref_dino, n_refs, out);
}

void rb_metrics_scores_print(FILE *f, const rb_metrics_scores *s, rb_score_scale scale) {
    double ci = 0, cd = 0;
    for (int r = 0; r < s->n_refs; r++) {
        ci += rb_score_apply(scale, s->clip_i[r]);
        cd += rb_score_apply(scale, s->dino[r]);
    }
    const char *fmt = scale == RB_SCORE_COSINE || scale == RB_SCORE_W25 ? "%s %.4f  " : "%s %.2f  ";
    fprintf(f, fmt, "CLIP-T", rb_score_apply(scale, s->clip_t));
    fprintf(f, fmt, "CLIP-R", rb_score_apply(scale, s->clip_r));
    fprintf(f, fmt, "CLIP-I", s->n_refs ? ci / s->n_refs : NAN);
    fprintf(f, fmt, "DINO", s->n_refs ? cd / s->n_refs : NAN);
    fprintf(f, "(%s = %s)\n", rb_score_scale_name(scale), rb_score_scale_formula(scale));
}

/* ---- benchmark: full-size models with random weights built in memory ---- */

/* One rb_alloc block for a model's weights, tensor headers and layer arrays, filled in two passes:
 * counting (nothing written; layer arrays go to `scratch`), then for real. */
typedef struct rnd_pool {
    char *base; /* NULL while counting */
    size_t used;
    uint64_t seed;
    rb_dtype wdtype; /* matrices */
    rb_tensor dummy;
    _Alignas(64) char scratch[64 * (sizeof(rb_dino_layer) > sizeof(rb_clip_layer) ? sizeof(rb_dino_layer)
                                                                                    : sizeof(rb_clip_layer))];
} rnd_pool;

static void *pool_bytes(rnd_pool *p, size_t n) {
    size_t off = (p->used + 63) & ~(size_t)63;
    p->used = off + n;
    return p->base ? p->base + off : NULL;
}

static void *pool_layers(rnd_pool *p, int n, size_t size) {
    void *a = pool_bytes(p, (size_t)n * size);
    if (!a) {
        memset(p->scratch, 0, sizeof p->scratch);
        return p->scratch;
    }
    memset(a, 0, (size_t)n * size);
    return a;
}

/* uniform in [-1, 1) from a hash of (seed, index): parallel and reproducible */
static float hash_uniform(uint64_t seed, uint64_t i) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

enum { P_MATRIX, P_GAIN, P_SMALL };

/* a parameter of `shape`: P_MATRIX ~U(+-sqrt(3 / fan_in)) (variance 1/fan_in, fan_in = numel / shape[0])
 * in the pool's matrix dtype; P_GAIN ones; P_SMALL ~U(+-0.1); vectors f32 */
static rb_tensor *param(rnd_pool *p, int kind, int ndim, const int64_t *shape) {
    rb_tensor *t = pool_bytes(p, sizeof *t);
    rb_dtype dt = kind == P_MATRIX ? p->wdtype : RB_F32;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    void *data = pool_bytes(p, (size_t)n * rb_dtypes[dt].size);
    if (!t)
        return &p->dummy;
    *t = rb_tensor_wrap(data, dt, ndim, shape);
    float a = kind == P_MATRIX ? sqrtf(3.0f * (float)shape[0] / (float)n) : 0.1f;
    uint64_t seed = p->seed++ * 0x632BE59BD9B4E019ull;
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float v = kind == P_GAIN ? 1.0f : a * hash_uniform(seed, (uint64_t)i);
        if (dt == RB_F32)
            ((float *)data)[i] = v;
        else
            ((uint16_t *)data)[i] = rb_f32_to_bf16(v);
    }
    return t;
}

#define VEC(n) param(p, P_SMALL, 1, (int64_t[]){(n)})
#define GAIN(n) param(p, P_GAIN, 1, (int64_t[]){(n)})
#define MAT(o, i) param(p, P_MATRIX, 2, (int64_t[]){(o), (i)})

static void rnd_clip_layer(rnd_pool *p, rb_clip_layer *L, int64_t D, int64_t F) {
    L->ln1_w = GAIN(D), L->ln1_b = VEC(D);
    L->q_w = MAT(D, D), L->q_b = VEC(D), L->k_w = MAT(D, D), L->k_b = VEC(D);
    L->v_w = MAT(D, D), L->v_b = VEC(D), L->o_w = MAT(D, D), L->o_b = VEC(D);
    L->ln2_w = GAIN(D), L->ln2_b = VEC(D);
    L->fc1_w = MAT(F, D), L->fc1_b = VEC(F), L->fc2_w = MAT(D, F), L->fc2_b = VEC(D);
}

static void rnd_clip(rnd_pool *p, rb_clip_model *m, const rb_clip_text_config *tc, const rb_clip_vision_config *vc) {
    rb_clip_text *t = &m->text;
    t->cfg = *tc;
    int64_t D = tc->hidden;
    t->tok_emb = param(p, P_SMALL, 2, (int64_t[]){tc->vocab, D});
    t->pos_emb = param(p, P_SMALL, 2, (int64_t[]){tc->max_positions, D});
    t->layers = pool_layers(p, tc->layers, sizeof *t->layers);
    for (int i = 0; i < tc->layers; i++)
        rnd_clip_layer(p, &t->layers[i], D, tc->intermediate);
    t->final_ln_w = GAIN(D), t->final_ln_b = VEC(D);
    t->projection = MAT(tc->projection_dim, D);
    rb_clip_vision *v = &m->vision;
    v->cfg = *vc;
    D = vc->hidden;
    int64_t g = vc->image_size / vc->patch_size;
    v->patch_w = param(p, P_MATRIX, 4, (int64_t[]){D, vc->channels, vc->patch_size, vc->patch_size});
    v->class_emb = VEC(D);
    v->pos_emb = param(p, P_SMALL, 2, (int64_t[]){1 + g * g, D});
    v->pre_ln_w = GAIN(D), v->pre_ln_b = VEC(D);
    v->layers = pool_layers(p, vc->layers, sizeof *v->layers);
    for (int i = 0; i < vc->layers; i++)
        rnd_clip_layer(p, &v->layers[i], D, vc->intermediate);
    v->post_ln_w = GAIN(D), v->post_ln_b = VEC(D);
    v->proj = MAT(vc->projection_dim, D);
    m->logit_scale = logf(100.0f);
}

static void rnd_dino(rnd_pool *p, rb_dino *m, const rb_dino_config *dc) {
    m->cfg = *dc;
    int64_t D = dc->hidden, F = dc->intermediate, g = dc->image_size / dc->patch_size;
    m->patch_w = param(p, P_MATRIX, 4, (int64_t[]){D, dc->channels, dc->patch_size, dc->patch_size});
    m->patch_b = VEC(D);
    m->cls_token = param(p, P_SMALL, 3, (int64_t[]){1, 1, D});
    m->pos_emb = param(p, P_SMALL, 3, (int64_t[]){1, 1 + g * g, D});
    m->layers = pool_layers(p, dc->layers, sizeof *m->layers);
    for (int i = 0; i < dc->layers; i++) {
        rb_dino_layer *L = &m->layers[i];
        L->ln1_w = GAIN(D), L->ln1_b = VEC(D);
        L->q_w = MAT(D, D), L->q_b = VEC(D), L->k_w = MAT(D, D), L->k_b = VEC(D);
        L->v_w = MAT(D, D), L->v_b = VEC(D), L->o_w = MAT(D, D), L->o_b = VEC(D);
        L->ln2_w = GAIN(D), L->ln2_b = VEC(D);
        L->fc1_w = MAT(F, D), L->fc1_b = VEC(F), L->fc2_w = MAT(D, F), L->fc2_b = VEC(D);
    }
    m->ln_w = GAIN(D), m->ln_b = VEC(D);
}

/* the benchmark's scorer: CLIP ViT-L/14 + DINO ViT-S/16 (facebook/dino-vits16 sizes), random, no
 * tokenizer (the benchmark feeds token ids) */
static rb_status open_random(rb_metrics *m, rb_dtype matmul_dtype) {
    memset(m, 0, sizeof *m);
    rb_metrics_config_init(&m->cfg);
    m->cfg.matmul_dtype = matmul_dtype;
    rb_clip_text_config tc;
    rb_clip_vision_config vc;
    rb_clip_model_config_vit_l14(&tc, &vc);
    rb_dino_config dc = {.kind = RB_DINO_VIT, .hidden = 384, .intermediate = 1536, .heads = 6, .layers = 12,
                         .image_size = 224, .patch_size = 16, .channels = 3, .qkv_bias = 1, .layer_norm_eps = 1e-12f};
    for (int model = 0; model < 2; model++) {
        rnd_pool *p = rb_calloc(sizeof *p, "random model");
        if (!p)
            return RB_ERR_OOM;
        p->seed = 1 + (uint64_t)model * 1000003;
        p->wdtype = RB_F32; /* as the released checkpoints */
        for (int pass = 0; pass < 2; pass++) {
            if (pass == 1) {
                void *block = rb_alloc(p->used, "random model weights");
                if (!block) {
                    rb_free(p);
                    rb_metrics_close(m);
                    return RB_ERR_OOM;
                }
                *(model ? &m->dino_block : &m->clip.block) = block;
                p->base = block;
                p->used = 0;
                p->seed = 1 + (uint64_t)model * 1000003;
            }
            if (model == 0)
                rnd_clip(p, &m->clip, &tc, &vc);
            else
                rnd_dino(p, &m->dino, &dc);
        }
        rb_free(p);
    }
    m->has_dino = 1;
    rb_preprocess_config_init(&m->clip_pre, RB_PREPROCESS_CLIP);
    rb_preprocess_config_init(&m->dino_pre, RB_PREPROCESS_VIT);
    rb_status s = finish_open(m);
    if (s != RB_OK)
        rb_metrics_close(m);
    return s;
}

#undef VEC
#undef GAIN
#undef MAT

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* 2 * params * tokens of the matrix products (attention scores and values included) */
static double encoder_gflop(int64_t T, int64_t D, int64_t F, int64_t layers) {
    return 2.0 * (double)T * (double)layers * (4.0 * D * D + 2.0 * D * F + 2.0 * T * D) * 1e-9;
}

rb_status rb_metrics_bench(int threads, rb_dtype matmul_dtype, int reps, rb_metrics_bench_result *out) {
    memset(out, 0, sizeof *out);
    if (threads > 0)
        rb_set_num_threads(threads);
    out->threads = rb_get_num_threads();
    out->matmul_dtype = matmul_dtype;
    if (reps < 1)
        reps = 1;
    rb_metrics m;
    double t0 = now_s();
    RB_TRY(open_random(&m, matmul_dtype));
    out->build_s = now_s() - t0;
    /* a smooth 1024x1024 RGB "generated" image and a different "reference" */
    rb_image gen = {.width = 1024, .height = 1024, .channels = 3}, ref = gen;
    gen.data = rb_alloc((size_t)1024 * 1024 * 3 * 2, "bench images");
    if (!gen.data) {
        rb_metrics_close(&m);
        return RB_ERR_OOM;
    }
    ref.data = gen.data + (size_t)1024 * 1024 * 3;
    for (size_t i = 0; i < (size_t)1024 * 1024 * 3; i++) {
        size_t y = i / 3072, x = i / 3 % 1024, k = i % 3;
        gen.data[i] = (uint8_t)((x * (k + 1) + y * 3) / 5);
        ref.data[i] = (uint8_t)((x * 2 + y * (k + 2)) / 7);
    }
    int E = rb_metrics_clip_dim(&m), Dd = rb_metrics_dino_dim(&m);
    float *ref_clip = rb_alloc((size_t)(E + Dd) * sizeof(float), "bench features"), *ref_dino = ref_clip + E;
    /* "A cat is hugging a dog on the beach." and "hugging" as CLIPProcessor(padding=True) gives them */
    static const int64_t prompt[14] = {49406, 320, 2368, 533, 27058, 320, 1929, 525, 518, 2117, 269, 49407, 49407, 49407};
    int64_t ids[2 * 14], mask[2 * 14];
    for (int j = 0; j < 14; j++) {
        ids[j] = prompt[j], mask[j] = j < 12;
        ids[14 + j] = j == 0 ? 49406 : j == 1 ? 27058 : 49407, mask[14 + j] = j < 3;
    }
    rb_status s = ref_clip ? RB_OK : RB_ERR_OOM;
    double best[6] = {1e30, 1e30, 1e30, 1e30, 1e30, 1e30};
    for (int r = 0; r <= reps && s == RB_OK; r++) { /* r = 0 warms up (oneDNN primitives, page faults) */
        double ta = now_s();
        s = rb_metrics_image_features(&m, &ref, 1, ref_clip, ref_dino);
        double tb = now_s();
        rb_metrics_scores sc;
        if (s == RB_OK)
            s = score_tokens(&m, &gen, ids, mask, 14, 14, 1, 1, ref_clip, ref_dino, 1, &sc);
        double tc = now_s();
        /* the parts, separately */
        rb_ctx *c = &m.ctx;
        size_t mark = rb_arena_mark(&m.arena);
        rb_tensor *pc = pixels_of(c, &gen, &m.clip_pre), *pd = pixels_of(c, &gen, &m.dino_pre);
        double td = now_s();
        rb_clip_model_image_features(c, &m.clip, pc);
        double te = now_s();
        dino_embedding(c, &m, pd);
        double tf = now_s();
        rb_arena_reset(&m.arena, mark);
        if (s == RB_OK)
            s = c->status;
        float txt[2 * 1024];
        if (s == RB_OK && E <= 1024)
            s = text_features_ids(&m, ids, mask, 2, 14, 14, txt);
        double tg = now_s();
        if (r == 0 || s != RB_OK)
            continue;
        double t[6] = {tb - ta, tc - tb, td - tc, te - td, tf - te, tg - tf};
        for (int k = 0; k < 6; k++)
            best[k] = t[k] < best[k] ? t[k] : best[k];
    }
    if (s == RB_OK) {
        out->reference_s = best[0];
        out->total_s = best[1];
        out->preprocess_s = best[2];
        out->clip_image_s = best[3];
        out->dino_s = best[4];
        out->clip_text_s = best[5];
        const rb_clip_vision_config *vc = &m.clip.vision.cfg;
        const rb_clip_text_config *tc = &m.clip.text.cfg;
        int64_t gv = vc->image_size / vc->patch_size, gd = 224 / m.dino.cfg.patch_size;
        out->gflop = encoder_gflop(1 + gv * gv, vc->hidden, vc->intermediate, vc->layers) +
                     2 * encoder_gflop(14, tc->hidden, tc->intermediate, tc->layers) +
                     encoder_gflop(1 + gd * gd, m.dino.cfg.hidden, m.dino.cfg.intermediate, m.dino.cfg.layers);
    }
    rb_free(ref_clip);
    rb_free(gen.data);
    rb_metrics_close(&m);
    return s;
}
