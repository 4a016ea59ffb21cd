/* DreamRelation's local tokens: CLIPSelf dense features of an open_clip ViT + roi_align pooling.
 * Reference: DreamRelation src/modules/image_encoder.py (ImageEncoder.forward) and the vendored
 * open_clip's transformer.py (`_extract_roi_features_v2`, `forward_without_attn`,
 * `rescale_positional_embedding`), torchvision's roi_align CPU kernel. */
#include "local_tokens.h"

#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/mem.h"

/* src/modules/open_clip/model_configs/ViT-bigG-14.json (vision part; the text tower is never run) */
static const char bigg_config[] =
    "{\"embed_dim\": 1280, \"vision_cfg\": {\"image_size\": 224, \"layers\": 48, \"width\": 1664, "
    "\"head_width\": 104, \"mlp_ratio\": 4.9231, \"patch_size\": 14}}\n";

/* ---- loading ---- */

static rb_status load_builtin_bigg(rb_local_encoder *e, const char *weights_path) {
    /* rb_clip_vision_load_open_clip reads a json file: hand it the built-in one through a temp file */
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/relbooth-bigg-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    int fd = mkstemp(path);
    if (fd < 0)
        return rb_error(RB_ERR_IO, "%s: cannot create a temporary file for the ViT-bigG-14 config", path);
    size_t n = sizeof bigg_config - 1;
    ssize_t w = write(fd, bigg_config, n);
    close(fd);
    rb_status s = w == (ssize_t)n ? rb_clip_vision_load_open_clip(&e->vis, path, weights_path)
                                  : rb_error(RB_ERR_IO, "%s: write failed", path);
    unlink(path);
    return s;
}

rb_status rb_local_encoder_load(rb_local_encoder *e, const char *weights_path, const char *config_path) {
    memset(e, 0, sizeof *e);
    if (!weights_path)
        return rb_error(RB_ERR_INVALID, "local encoder: no checkpoint path");
    rb_status s;
    if (config_path) {
        s = rb_clip_vision_load_open_clip(&e->vis, config_path, weights_path);
    } else {
        char dir[4096], cfg[4200];
        snprintf(dir, sizeof dir, "%s", weights_path);
        snprintf(cfg, sizeof cfg, "%s/open_clip_config.json", dirname(dir));
        struct stat st;
        s = stat(cfg, &st) == 0 ? rb_clip_vision_load_open_clip(&e->vis, cfg, weights_path)
                                : load_builtin_bigg(e, weights_path);
    }
    if (s == RB_OK && e->vis.cfg.layout != RB_CLIP_LAYOUT_OPEN_CLIP) {
        rb_clip_vision_free(&e->vis);
        s = rb_error(RB_ERR_INVALID, "%s: not an open_clip vision tower", weights_path);
    }
    return s;
}

void rb_local_encoder_free(rb_local_encoder *e) { rb_clip_vision_free(&e->vis); }

/* ---- dense features ---- */

rb_tensor *rb_local_position_embedding(rb_ctx *c, const rb_local_encoder *e, int64_t gh, int64_t gw) {
    if (c->status != RB_OK)
        return NULL;
    const rb_clip_vision *m = &e->vis;
    int64_t D = m->cfg.hidden, g0 = m->cfg.image_size / m->cfg.patch_size;
    if (gh < 1 || gw < 1)
        return rb_ctx_error(c, RB_ERR_INVALID, "local encoder: empty %lld x %lld patch grid", (long long)gh,
                            (long long)gw);
    if (gh == g0 && gw == g0)
        return m->pos_emb;
    /* [1 + g0*g0, D]: class entry apart; grid rows -> [1, D, g0, g0] planes -> bicubic -> rows again */
    rb_tensor grid, cls;
    rb_status s = rb_view_slice(&grid, m->pos_emb, 0, 1, 1 + g0 * g0);
    if (s == RB_OK)
        s = rb_view_slice(&cls, m->pos_emb, 0, 0, 1);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    rb_tensor *planes = rb_permute(c, rb_reshape(c, &grid, 4, (int64_t[]){1, g0, g0, D}), (int[]){0, 3, 1, 2});
    rb_tensor *up = rb_permute(c, rb_interpolate_bicubic(c, planes, gh, gw), (int[]){0, 2, 3, 1});
    return rb_concat(c, (rb_tensor *[]){&cls, rb_reshape(c, up, 2, (int64_t[]){gh * gw, D})}, 2, 0);
}

/* open_clip ResidualAttentionBlock.forward_without_attn: the attention is replaced by its value path
 * (MaskCLIP): x + out_proj(V), V = the value third of in_proj(ln_1(x)); then x + mlp(ln_2(x)). */
static rb_tensor *block_without_attn(rb_ctx *c, const rb_clip_vision *m, int i, rb_tensor *x) {
    const rb_clip_layer *L = &m->layers[i];
    float eps = m->cfg.layer_norm_eps;
    rb_tensor *v = rb_linear(c, rb_layer_norm(c, x, L->ln1_w, L->ln1_b, eps), L->v_w, L->v_b);
    x = rb_add(c, x, rb_linear(c, v, L->o_w, L->o_b));
    rb_tensor *h = rb_linear(c, rb_layer_norm(c, x, L->ln2_w, L->ln2_b, eps), L->fc1_w, L->fc1_b);
    h = m->cfg.act == RB_ACT_GELU ? rb_gelu(c, h, 0) : rb_quick_gelu(c, h);
    return rb_add(c, x, rb_linear(c, h, L->fc2_w, L->fc2_b));
}

rb_tensor *rb_local_dense(rb_ctx *c, const rb_local_encoder *e, rb_tensor *pixels, rb_tensor **ln_post_out) {
    if (ln_post_out)
        *ln_post_out = NULL;
    if (c->status != RB_OK)
        return NULL;
    const rb_clip_vision *m = &e->vis;
    const rb_clip_vision_config *cf = &m->cfg;
    char b[64];
    if (!pixels || pixels->ndim != 4 || pixels->shape[1] != cf->channels || pixels->shape[2] < cf->patch_size ||
        pixels->shape[3] < cf->patch_size)
        return rb_ctx_error(c, RB_ERR_INVALID, "local encoder: pixels must be [n, %d, H >= %d, W >= %d], got %s",
                            cf->channels, cf->patch_size, cf->patch_size,
                            pixels ? rb_shape_str(pixels, b, sizeof b) : "NULL");
    int64_t n = pixels->shape[0], D = cf->hidden;
    int64_t gh = pixels->shape[2] / cf->patch_size, gw = pixels->shape[3] / cf->patch_size;
    size_t mk = rb_arena_mark(c->arena);
    rb_tensor *pos = rb_local_position_embedding(c, e, gh, gw);
    rb_tensor *x = rb_clip_vision_embed(c, m, pixels, pos);
    x = rb_ctx_keep(c, mk, rb_layer_norm(c, x, m->pre_ln_w, m->pre_ln_b, cf->layer_norm_eps));
    for (int i = 0; i < cf->layers - 1; i++) {
        mk = rb_arena_mark(c->arena);
        x = rb_ctx_keep(c, mk, rb_clip_vision_layer(c, m, i, x));
    }
    /* the reference also runs the normal last block and discards its output: not needed here */
    mk = rb_arena_mark(c->arena);
    x = rb_ctx_keep(c, mk, block_without_attn(c, m, cf->layers - 1, x));
    /* drop the class token, ln_post on the patch tokens, no projection, L2 over channels */
    rb_tensor *ln = rb_layer_norm(c, rb_slice(c, x, 1, 1, 1 + gh * gw), m->post_ln_w, m->post_ln_b,
                                  cf->layer_norm_eps);
    if (ln_post_out)
        *ln_post_out = ln;
    /* F.normalize(x, dim=-1): x / max(||x||, 1e-12) */
    rb_tensor *dense = rb_l2_normalize(c, ln, 1e-12f);
    return rb_reshape(c, dense, 4, (int64_t[]){n, gh, gw, D});
}

/* ---- roi_align pooling ---- */

/* The bilinear taps of one roi_align box (torchvision roi_align_kernel.cpp, aligned=True, output
 * 1 x 1, adaptive sampling): positions in float as torchvision computes them. Box k = i * P + j:
 * x over [i/P, (i+1)/P) * gw, y over [j/P, (j+1)/P) * gh (generate_bboxes puts x outer). Writes
 * up to 4 * max_pts (cell index, weight) pairs, weights already divided by the point count; returns
 * the number of taps, or -1 when the sampling grid exceeds max_pts. */
static int64_t box_taps(int64_t *idx, double *wt, int64_t max_pts, int64_t gh, int64_t gw, int P, int k) {
    int i = k / P, j = k % P;
    /* torch.tensor(generate_bboxes(P), dtype=float32) * feature size, in float32 */
    float x0 = (float)((double)i / P) * (float)gw, x1 = (float)((double)(i + 1) / P) * (float)gw;
    float y0 = (float)((double)j / P) * (float)gh, y1 = (float)((double)(j + 1) / P) * (float)gh;
    float sx = x0 - 0.5f, sy = y0 - 0.5f, bw = (x1 - 0.5f) - sx, bh = (y1 - 0.5f) - sy;
    int64_t nx = (int64_t)ceilf(bw), ny = (int64_t)ceilf(bh);
    if (nx < 1 || ny < 1 || nx * ny > max_pts)
        return nx * ny > max_pts ? -1 : 0;
    double inv_count = 1.0 / (double)(nx * ny);
    int64_t t = 0;
    for (int64_t iy = 0; iy < ny; iy++) {
        float y = sy + ((float)iy + 0.5f) * bh / (float)ny;
        for (int64_t ix = 0; ix < nx; ix++) {
            float x = sx + ((float)ix + 0.5f) * bw / (float)nx;
            if (y < -1.0f || y > (float)gh || x < -1.0f || x > (float)gw)
                continue; /* contributes 0 (but still counts) */
            float yy = y <= 0 ? 0 : y, xx = x <= 0 ? 0 : x;
            int64_t yl = (int64_t)yy, xl = (int64_t)xx, yh, xh;
            if (yl >= gh - 1) {
                yh = yl = gh - 1;
                yy = (float)yl;
            } else {
                yh = yl + 1;
            }
            if (xl >= gw - 1) {
                xh = xl = gw - 1;
                xx = (float)xl;
            } else {
                xh = xl + 1;
            }
            float ly = yy - (float)yl, lx = xx - (float)xl, hy = 1.0f - ly, hx = 1.0f - lx;
            const int64_t cells[4] = {yl * gw + xl, yl * gw + xh, yh * gw + xl, yh * gw + xh};
            const float w[4] = {hy * hx, hy * lx, ly * hx, ly * lx};
            for (int q = 0; q < 4; q++) {
                idx[t] = cells[q];
                wt[t++] = (double)w[q] * inv_count;
            }
        }
    }
    return t;
}

/* Sampling points per box are at most (ceil(g / P) + 1)^2 */
static int64_t max_points(int64_t gh, int64_t gw, int P) { return (gh / P + 2) * (gw / P + 2); }

void local_pool_forward(float *out, const float *dense, int64_t n, int64_t gh, int64_t gw, int64_t D, int P,
                        int official, int64_t *idx_scratch, double *wt_scratch, double *acc_scratch) {
    int64_t mp = max_points(gh, gw, P), K = (int64_t)P * P;
#pragma omp parallel for schedule(static)
    for (int64_t bk = 0; bk < n * K; bk++) {
        int64_t b = bk / K, k = bk % K, src = official ? 0 : b;
        int64_t *idx = idx_scratch + bk * 4 * mp;
        double *wt = wt_scratch + bk * 4 * mp, *acc = acc_scratch + bk * D;
        int64_t nt = box_taps(idx, wt, mp, gh, gw, P, (int)k);
        for (int64_t d = 0; d < D; d++)
            acc[d] = 0;
        const float *img = dense + src * gh * gw * D;
        for (int64_t t = 0; t < nt; t++) {
            const float *row = img + idx[t] * D;
            double w = wt[t];
            for (int64_t d = 0; d < D; d++)
                acc[d] += w * (double)row[d];
        }
        float *o = out + bk * D;
        for (int64_t d = 0; d < D; d++)
            o[d] = (float)acc[d];
    }
}

/* serial over boxes (official pooling sends every box to image 0), vectorised over channels */
void local_pool_backward(float *ddense, const float *dout, int64_t n, int64_t gh, int64_t gw, int64_t D, int P,
                         int official, int64_t *idx_scratch, double *wt_scratch) {
    int64_t mp = max_points(gh, gw, P), K = (int64_t)P * P;
    for (int64_t bk = 0; bk < n * K; bk++) {
        int64_t b = bk / K, k = bk % K, src = official ? 0 : b;
        int64_t nt = box_taps(idx_scratch, wt_scratch, mp, gh, gw, P, (int)k);
        float *img = ddense + src * gh * gw * D;
        const float *g = dout + bk * D;
        for (int64_t t = 0; t < nt; t++) {
            float *row = img + idx_scratch[t] * D, w = (float)wt_scratch[t];
            for (int64_t d = 0; d < D; d++)
                row[d] += w * g[d];
        }
    }
}

static rb_status pool_backward(rb_ctx *c, rb_tape_entry *en) {
    rb_tensor *x = en->in[0];
    if (!rb_needs_grad(x))
        return RB_OK;
    rb_tensor *gx = rb_grad_of(c, x), *gy = en->out->grad;
    int P = (int)en->i[0];
    int64_t mp = max_points(x->shape[1], x->shape[2], P);
    int64_t *idx = rb_arena_alloc(c->arena, (size_t)(4 * mp) * sizeof *idx);
    double *wt = rb_arena_alloc(c->arena, (size_t)(4 * mp) * sizeof *wt);
    if (!gx || !gy || !idx || !wt)
        return rb_error(RB_ERR_OOM, "local_pool backward: out of memory");
    local_pool_backward(gx->data, gy->data, en->out->shape[0], x->shape[1], x->shape[2], x->shape[3], P,
                        (int)en->i[1], idx, wt);
    return RB_OK;
}

rb_tensor *rb_local_pool(rb_ctx *c, rb_tensor *dense, int n_pool, int official_pooling) {
    if (c->status != RB_OK)
        return NULL;
    char b[64];
    if (!dense || dense->ndim != 4 || dense->dtype != RB_F32 || dense->shape[0] < 1)
        return rb_ctx_error(c, RB_ERR_INVALID, "local_pool: dense features must be f32 [n, gh, gw, D], got %s",
                            dense ? rb_shape_str(dense, b, sizeof b) : "NULL");
    int64_t n = dense->shape[0], gh = dense->shape[1], gw = dense->shape[2], D = dense->shape[3];
    if (n_pool < 1 || n_pool > 64)
        return rb_ctx_error(c, RB_ERR_INVALID, "local_pool: n_pool %d is not in [1, 64]", n_pool);
    rb_tensor *x = rb_is_contiguous(dense) ? dense : rb_contiguous(c, dense);
    int64_t K = (int64_t)n_pool * n_pool, mp = max_points(gh, gw, n_pool);
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){n, K, D});
    size_t taps = 0, accs = 0;
    if (!rb_mul_size((size_t)(n * K), (size_t)(4 * mp), &taps) || !rb_mul_size((size_t)(n * K), (size_t)D, &accs))
        return rb_ctx_error(c, RB_ERR_INVALID, "local_pool: size overflow");
    size_t mark = rb_arena_mark(c->arena);
    int64_t *idx = rb_arena_alloc(c->arena, taps * sizeof *idx);
    double *wt = rb_arena_alloc(c->arena, taps * sizeof *wt);
    double *acc = rb_arena_alloc(c->arena, accs * sizeof *acc);
    if (!x || !out || !idx || !wt || !acc)
        return rb_ctx_fail(c, RB_ERR_OOM);
    local_pool_forward(out->data, x->data, n, gh, gw, D, n_pool, official_pooling, idx, wt, acc);
    rb_arena_reset(c->arena, mark); /* scratch after the output */
    rb_tape_entry *en = rb_tape_record(c, "local_pool", pool_backward, out, 1, &x);
    if (en) {
        en->i[0] = n_pool;
        en->i[1] = official_pooling != 0;
    }
    return out;
}

rb_tensor *rb_local_tokens(rb_ctx *c, const rb_local_encoder *e, rb_tensor *pixels_896, int n_pool,
                           int official_pooling) {
    return rb_local_pool(c, rb_local_dense(c, e, pixels_896, NULL), n_pool, official_pooling);
}

rb_tensor *rb_local_concat(rb_ctx *c, rb_tensor *global_tokens, rb_tensor *local_tokens) {
    if (c->status != RB_OK)
        return NULL;
    char b1[64], b2[64];
    if (!global_tokens || !local_tokens || global_tokens->ndim != 3 || local_tokens->ndim != 3 ||
        global_tokens->shape[0] != local_tokens->shape[0] || global_tokens->shape[2] != local_tokens->shape[2])
        return rb_ctx_error(c, RB_ERR_INVALID,
                            "local_concat: global [n, T, D] and local [n, P, D] tokens disagree: %s vs %s",
                            global_tokens ? rb_shape_str(global_tokens, b1, sizeof b1) : "NULL",
                            local_tokens ? rb_shape_str(local_tokens, b2, sizeof b2) : "NULL");
    return rb_concat(c, (rb_tensor *[]){global_tokens, local_tokens}, 2, 1);
}
