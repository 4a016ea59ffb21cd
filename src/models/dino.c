/* DINO backbones as transformers 4.36 computes them:
 *   x = cat(cls_token, conv_p(pixels) + bias as row-major patch tokens) + position embeddings
 *   ViT:    x = x + dense(attn(layernorm_before(x)));       x = x + output.dense(gelu(intermediate.dense(layernorm_after(x))))
 *   DINOv2: x = x + lambda1 * dense(attn(norm1(x)));         x = x + lambda2 * fc2(gelu(fc1(norm2(x))))
 *   last_hidden = layernorm(x); cls = last_hidden[:, 0] */
#include "dino.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/mem.h"
#include "ops/resample.h"
#include "io/json.h"


/* defaults as ViTConfig / Dinov2Config */
static rb_status load_config(rb_dino_config *c, const char *path) {
    json_t *j;
    RB_TRY(rb_json_load_object(path, &j));
    const char *type = json_string_value(json_object_get(j, "model_type"));
    rb_status s = RB_OK;
    if (type && !strcmp(type, "vit"))
        *c = (rb_dino_config){.kind = RB_DINO_VIT, .image_size = 224, .patch_size = 16, .layer_norm_eps = 1e-12f};
    else if (type && !strcmp(type, "dinov2"))
        *c = (rb_dino_config){.kind = RB_DINO_V2, .image_size = 224, .patch_size = 16, .layer_norm_eps = 1e-6f};
    else
        s = rb_error(RB_ERR_UNSUPPORTED, "%s: model_type '%s' is not a DINO backbone (vit, dinov2)", path,
                     type ? type : "(missing)");
    c->hidden = 768;
    c->heads = 12;
    c->layers = 12;
    c->channels = 3;
    c->intermediate = 3072;
    c->qkv_bias = 1;
    if (s == RB_OK) s = rb_json_get_int(j, "hidden_size", &c->hidden, path);
    if (s == RB_OK) s = rb_json_get_int(j, "num_attention_heads", &c->heads, path);
    if (s == RB_OK) s = rb_json_get_int(j, "num_hidden_layers", &c->layers, path);
    if (s == RB_OK) s = rb_json_get_int(j, "image_size", &c->image_size, path);
    if (s == RB_OK) s = rb_json_get_int(j, "patch_size", &c->patch_size, path);
    if (s == RB_OK) s = rb_json_get_int(j, "num_channels", &c->channels, path);
    if (s == RB_OK && c->kind == RB_DINO_VIT) {
        s = rb_json_get_int(j, "intermediate_size", &c->intermediate, path);
    } else if (s == RB_OK) {
        json_t *r = json_object_get(j, "mlp_ratio");
        double ratio = json_is_number(r) ? json_number_value(r) : 4.0;
        c->intermediate = ratio > 0 && ratio < 64 ? (int)((double)c->hidden * ratio) : 0; /* int(hidden * ratio) */
        if (json_is_true(json_object_get(j, "use_swiglu_ffn")))
            s = rb_error(RB_ERR_UNSUPPORTED, "%s: use_swiglu_ffn (DINOv2 giant) is not supported", path);
    }
    json_t *qb = json_object_get(j, "qkv_bias");
    if (json_is_boolean(qb))
        c->qkv_bias = json_is_true(qb);
    json_t *eps = json_object_get(j, "layer_norm_eps");
    if (json_is_number(eps))
        c->layer_norm_eps = (float)json_number_value(eps);
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    if (s == RB_OK && act && strcmp(act, "gelu"))
        s = rb_error(RB_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported (gelu only)", path, act);
    json_decref(j);
    if (s == RB_OK && (c->hidden <= 0 || c->heads <= 0 || c->hidden % c->heads || c->layers < 1 ||
                       c->intermediate <= 0 || c->patch_size <= 0 || c->image_size < c->patch_size))
        s = rb_error(RB_ERR_FORMAT, "%s: inconsistent sizes (hidden %d, heads %d, layers %d, image %d, patch %d)",
                     path, c->hidden, c->heads, c->layers, c->image_size, c->patch_size);
    return s;
}

/* ---- load ---- */

rb_status rb_dino_load(rb_dino *m, const char *dir) {
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    RB_TRY(load_config(&m->cfg, path));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    RB_TRY(rb_weights_open(&m->w, path));
    const rb_dino_config *c = &m->cfg;
    rb_weights *w = &m->w;
    int v2 = c->kind == RB_DINO_V2;
    int64_t D = c->hidden, F = c->intermediate, p = c->patch_size, g = c->image_size / c->patch_size;
    const int64_t vecD[] = {D}, vecF[] = {F}, DD[] = {D, D}, FD[] = {F, D}, DF[] = {D, F};
    m->patch_w = rb_weights_get(w, 0, 4, (int64_t[]){D, c->channels, p, p}, "embeddings.patch_embeddings.projection.weight");
    m->patch_b = rb_weights_get(w, 1, 1, vecD, "embeddings.patch_embeddings.projection.bias");
    m->cls_token = rb_weights_get(w, 1, 3, (int64_t[]){1, 1, D}, "embeddings.cls_token");
    m->pos_emb = rb_weights_get(w, 1, 3, (int64_t[]){1, 1 + g * g, D}, "embeddings.position_embeddings");
    if (v2) /* present in every Dinov2Model checkpoint; only bool_masked_pos (pretraining) uses it */
        m->mask_token = rb_weights_opt(w, 1, 2, (int64_t[]){1, D}, "embeddings.mask_token");
    m->layers = rb_calloc((size_t)c->layers * sizeof *m->layers, "DINO layers");
    if (!m->layers) {
        rb_dino_free(m);
        return RB_ERR_OOM;
    }
    /* per-layer names: ViT | DINOv2 */
    const char *ln1 = v2 ? "norm1" : "layernorm_before", *ln2 = v2 ? "norm2" : "layernorm_after";
    const char *fc1 = v2 ? "mlp.fc1" : "intermediate.dense", *fc2 = v2 ? "mlp.fc2" : "output.dense";
    for (int i = 0; i < c->layers; i++) {
        rb_dino_layer *L = &m->layers[i];
        const char *P = "encoder.layer";
        L->ln1_w = rb_weights_get(w, 1, 1, vecD, "%s.%d.%s.weight", P, i, ln1);
        L->ln1_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.%s.bias", P, i, ln1);
        L->q_w = rb_weights_get(w, 0, 2, DD, "%s.%d.attention.attention.query.weight", P, i);
        L->k_w = rb_weights_get(w, 0, 2, DD, "%s.%d.attention.attention.key.weight", P, i);
        L->v_w = rb_weights_get(w, 0, 2, DD, "%s.%d.attention.attention.value.weight", P, i);
        if (c->qkv_bias) {
            L->q_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.attention.attention.query.bias", P, i);
            L->k_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.attention.attention.key.bias", P, i);
            L->v_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.attention.attention.value.bias", P, i);
        }
        L->o_w = rb_weights_get(w, 0, 2, DD, "%s.%d.attention.output.dense.weight", P, i);
        L->o_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.attention.output.dense.bias", P, i);
        if (v2) {
            L->ls1 = rb_weights_get(w, 1, 1, vecD, "%s.%d.layer_scale1.lambda1", P, i);
            L->ls2 = rb_weights_get(w, 1, 1, vecD, "%s.%d.layer_scale2.lambda1", P, i);
        }
        L->ln2_w = rb_weights_get(w, 1, 1, vecD, "%s.%d.%s.weight", P, i, ln2);
        L->ln2_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.%s.bias", P, i, ln2);
        L->fc1_w = rb_weights_get(w, 0, 2, FD, "%s.%d.%s.weight", P, i, fc1);
        L->fc1_b = rb_weights_get(w, 1, 1, vecF, "%s.%d.%s.bias", P, i, fc1);
        L->fc2_w = rb_weights_get(w, 0, 2, DF, "%s.%d.%s.weight", P, i, fc2);
        L->fc2_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.%s.bias", P, i, fc2);
    }
    m->ln_w = rb_weights_get(w, 1, 1, vecD, "layernorm.weight");
    m->ln_b = rb_weights_get(w, 1, 1, vecD, "layernorm.bias");
    rb_status s = w->status;
    if (s != RB_OK)
        rb_dino_free(m);
    return s;
}

void rb_dino_free(rb_dino *m) {
    rb_free(m->layers);
    rb_weights_close(&m->w);
    memset(m, 0, sizeof *m);
}

/* ---- position embeddings ---- */

/* torch's cubic convolution kernels (aten/src/ATen/native/UpSample.h), A = -0.75 */
static float cubic1(float x, float A) { return ((A + 2) * x - (A + 3)) * x * x + 1; }      /* |x| <= 1 */
static float cubic2(float x, float A) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; } /* 1 < |x| < 2 */

/* bicubic_taps (ops/resample.h) with a given scale factor: torch's area_pixel_compute_scale uses
 * (float)(1.0 / scale_factor) instead of in / out when interpolate got a scale factor. */
static void taps_with_scale(int64_t *idx, float *w, int64_t in, int64_t out, double scale_factor) {
    float scale = (float)(1.0 / scale_factor);
    const float A = -0.75f;
    for (int64_t o = 0; o < out; o++) {
        float src = scale * ((float)o + 0.5f) - 0.5f; /* cubic: not clamped at 0 */
        /* guard_index_and_lambda */
        int64_t i0 = (int64_t)floorf(src);
        if (i0 > in - 1)
            i0 = in - 1;
        float t = src - (float)i0;
        t = t < 0 ? 0 : t > 1 ? 1 : t;
        float t2 = 1.0f - t;
        w[4 * o + 0] = cubic2(t + 1.0f, A);
        w[4 * o + 1] = cubic1(t, A);
        w[4 * o + 2] = cubic1(t2, A);
        w[4 * o + 3] = cubic2(t2 + 1.0f, A);
        for (int j = 0; j < 4; j++) {
            int64_t k = i0 - 1 + j;
            idx[4 * o + j] = k < 0 ? 0 : k > in - 1 ? in - 1 : k;
        }
    }
}

rb_tensor *rb_dino_position_embeddings(rb_ctx *c, const rb_dino *m, int64_t H, int64_t W) {
    if (c->status != RB_OK)
        return NULL;
    int64_t D = m->cfg.hidden, N = m->pos_emb->shape[1] - 1, p = m->cfg.patch_size;
    int64_t gh = H / p, gw = W / p, n = (int64_t)sqrt((double)N);
    if (gh < 1 || gw < 1)
        return rb_ctx_error(c, RB_ERR_INVALID, "DINO: a %lld x %lld input has no %lld-pixel patch", (long long)H,
                            (long long)W, (long long)p);
    if (gh * gw == N && H == W)
        return m->pos_emb;
    /* python: scale_factor = (gh + 0.1) / sqrt(N) in double; output size floor(n * scale_factor) */
    double sh = ((double)gh + 0.1) / sqrt((double)N), sw = ((double)gw + 0.1) / sqrt((double)N);
    if (n * n != N || (int64_t)floor((double)n * sh) != gh || (int64_t)floor((double)n * sw) != gw)
        return rb_ctx_error(c, RB_ERR_INVALID, "DINO: cannot resample %lld positions to a %lld x %lld grid",
                            (long long)N, (long long)gh, (long long)gw);
    int64_t T = 1 + gh * gw;
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){1, T, D});
    float *grid = rb_arena_alloc(c->arena, (size_t)(N + gh * gw) * (size_t)D * sizeof *grid);
    int64_t *iy = rb_arena_alloc(c->arena, (size_t)(gh + gw) * 4 * sizeof *iy);
    float *wy = rb_arena_alloc(c->arena, (size_t)(gh + gw) * 4 * sizeof *wy);
    if (!out || !grid || !iy || !wy)
        return rb_ctx_fail(c, RB_ERR_OOM);
    int64_t *ix = iy + 4 * gh;
    float *wx = wy + 4 * gh, *res = grid + N * D;
    const float *pe = m->pos_emb->data; /* [1 + n*n, D] contiguous f32 (owned or mapped) */
    /* [n*n, D] -> planes [D, n, n] */
    for (int64_t k = 0; k < N; k++)
        for (int64_t d = 0; d < D; d++)
            grid[d * N + k] = pe[(1 + k) * D + d];
    taps_with_scale(iy, wy, n, gh, sh);
    taps_with_scale(ix, wx, n, gw, sw);
    interpolate_bicubic_forward(res, grid, D, n, n, gh, gw, iy, wy, ix, wx);
    float *o = out->data;
    memcpy(o, pe, (size_t)D * sizeof *o); /* [CLS] position kept */
    for (int64_t k = 0; k < gh * gw; k++)
        for (int64_t d = 0; d < D; d++)
            o[(1 + k) * D + d] = res[d * gh * gw + k];
    return out;
}

/* ---- forward ---- */

static rb_tensor *layer_forward(rb_ctx *c, const rb_dino *m, const rb_dino_layer *L, rb_tensor *x) {
    float eps = m->cfg.layer_norm_eps;
    rb_tensor *h = rb_layer_norm(c, x, L->ln1_w, L->ln1_b, eps);
    rb_tensor *q = rb_linear(c, h, L->q_w, L->q_b);
    rb_tensor *k = rb_linear(c, h, L->k_w, L->k_b);
    rb_tensor *v = rb_linear(c, h, L->v_w, L->v_b);
    rb_tensor *a = rb_linear(c, rb_attention(c, q, k, v, m->cfg.heads, NULL, 0.0f), L->o_w, L->o_b);
    x = rb_add(c, x, L->ls1 ? rb_mul(c, a, L->ls1) : a);
    h = rb_gelu(c, rb_linear(c, rb_layer_norm(c, x, L->ln2_w, L->ln2_b, eps), L->fc1_w, L->fc1_b), 0);
    h = rb_linear(c, h, L->fc2_w, L->fc2_b);
    return rb_add(c, x, L->ls2 ? rb_mul(c, h, L->ls2) : h);
}

rb_status rb_dino_forward(rb_ctx *c, const rb_dino *m, rb_tensor *pixels, rb_dino_out *out) {
    memset(out, 0, sizeof *out);
    if (c->status != RB_OK)
        return c->status;
    const rb_dino_config *cf = &m->cfg;
    char b[64];
    if (!pixels || pixels->ndim != 4 || pixels->shape[1] != cf->channels)
        return rb_error(RB_ERR_INVALID, "DINO: pixels must be [B, %d, H, W], got %s", cf->channels,
                        pixels ? rb_shape_str(pixels, b, sizeof b) : "NULL");
    int64_t B = pixels->shape[0], D = cf->hidden, H = pixels->shape[2], W = pixels->shape[3];
    int64_t gh = H / cf->patch_size, gw = W / cf->patch_size;
    out->pos = rb_dino_position_embeddings(c, m, H, W);
    if (!out->pos)
        return c->status;
    /* conv [B, D, gh, gw] -> [B, gh*gw, D]; [CLS] first */
    rb_tensor *patches = rb_conv2d(c, pixels, m->patch_w, m->patch_b, cf->patch_size, cf->patch_size, 0, 0);
    patches = rb_permute(c, rb_reshape(c, patches, 3, (int64_t[]){B, D, gh * gw}), (int[]){0, 2, 1});
    rb_tensor **rows = rb_arena_alloc(c->arena, (size_t)B * sizeof *rows);
    if (!rows)
        return c->status = RB_ERR_OOM;
    for (int64_t i = 0; i < B; i++)
        rows[i] = m->cls_token;
    rb_tensor *x = rb_concat(c, (rb_tensor *[]){rb_concat(c, rows, (int)B, 0), patches}, 2, 1);
    x = out->embeddings = rb_add(c, x, out->pos);
    for (int i = 0; i < cf->layers; i++)
        x = layer_forward(c, m, &m->layers[i], x);
    x = out->last_hidden = rb_layer_norm(c, x, m->ln_w, m->ln_b, cf->layer_norm_eps);
    out->cls = rb_reshape(c, rb_slice(c, x, 1, 0, 1), 2, (int64_t[]){B, D});
    return c->status;
}
