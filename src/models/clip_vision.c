/* CLIP vision transformer, as transformers' CLIPVisionModelWithProjection:
 *   x = cat(class_embedding, conv_p(pixels) as row-major patch tokens) + position_embedding
 *   x = pre_layrnorm(x)                                         -> hidden_states[0]
 *   per layer: x = x + out_proj(attn(layer_norm1(x))); x = x + fc2(act(fc1(layer_norm2(x))))
 *   pooled = post_layernorm(x[:, 0]); image_embeds = visual_projection(pooled)
 * open_clip's VisionTransformer (pool_type "tok", no attentional pool, no LayerScale) computes the
 * same function with other key names; its ln_post is applied to every token before pooling, which
 * gives the same pooled vector. */
#include "clip_vision.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/mem.h"
#include "io/json.h"

/* ---- configs ---- */


static rb_status check_sizes(const rb_clip_vision_config *c, const char *path) {
    if (c->hidden <= 0 || c->heads <= 0 || c->hidden % c->heads || c->layers < 1 || c->layers > 64 ||
        c->intermediate <= 0 || c->patch_size <= 0 || c->image_size < c->patch_size || c->channels <= 0)
        return rb_error(RB_ERR_FORMAT,
                        "%s: inconsistent sizes (hidden %d, heads %d, layers %d, intermediate %d, image %d, patch %d)",
                        path, c->hidden, c->heads, c->layers, c->intermediate, c->image_size, c->patch_size);
    return RB_OK;
}

/* transformers CLIPVisionConfig (defaults as its constructor), flat or nested in a CLIPConfig */
static rb_status load_hf_config(rb_clip_vision_config *c, const char *path) {
    json_t *root;
    RB_TRY(rb_json_load_object(path, &root));
    json_t *j = json_is_object(json_object_get(root, "vision_config")) ? json_object_get(root, "vision_config") : root;
    *c = (rb_clip_vision_config){.hidden = 768, .intermediate = 3072, .heads = 12, .layers = 12, .image_size = 224,
                                 .patch_size = 32, .channels = 3, .projection_dim = 512, .layer_norm_eps = 1e-5f,
                                 .act = RB_ACT_QUICK_GELU, .layout = RB_CLIP_LAYOUT_HF};
    rb_status s = RB_OK;
    if (s == RB_OK) s = rb_json_get_int(j, "hidden_size", &c->hidden, path);
    if (s == RB_OK) s = rb_json_get_int(j, "intermediate_size", &c->intermediate, path);
    if (s == RB_OK) s = rb_json_get_int(j, "num_attention_heads", &c->heads, path);
    if (s == RB_OK) s = rb_json_get_int(j, "num_hidden_layers", &c->layers, path);
    if (s == RB_OK) s = rb_json_get_int(j, "image_size", &c->image_size, path);
    if (s == RB_OK) s = rb_json_get_int(j, "patch_size", &c->patch_size, path);
    if (s == RB_OK) s = rb_json_get_int(j, "num_channels", &c->channels, path);
    /* a CLIPConfig keeps projection_dim at the top level */
    if (s == RB_OK) s = rb_json_get_int(json_object_get(j, "projection_dim") ? j : root, "projection_dim", &c->projection_dim, path);
    json_t *eps = json_object_get(j, "layer_norm_eps");
    if (json_is_number(eps))
        c->layer_norm_eps = (float)json_number_value(eps);
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    if (act && !strcmp(act, "gelu"))
        c->act = RB_ACT_GELU;
    else if (act && strcmp(act, "quick_gelu") && s == RB_OK)
        s = rb_error(RB_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported", path, act);
    json_decref(root);
    return s == RB_OK ? check_sizes(c, path) : s;
}

/* an open_clip option that must be absent, null, false or equal to `ok_str` (what we implement) */
static rb_status reject_option(json_t *vc, const char *key, const char *ok_str, const char *path) {
    json_t *v = json_object_get(vc, key);
    if (!v || json_is_null(v) || json_is_false(v) || (ok_str && json_is_string(v) && !strcmp(json_string_value(v), ok_str)))
        return RB_OK;
    return rb_error(RB_ERR_UNSUPPORTED, "%s: vision_cfg.%s is not supported", path, key);
}

/* open_clip model json: {"embed_dim", "quick_gelu"?, "vision_cfg": {image_size, layers, width,
 * head_width (64), mlp_ratio (4.0), patch_size}}; as open_clip's VisionTransformer: heads =
 * width / head_width, mlp width = int(width * mlp_ratio), LayerNorm eps 1e-5, GELU unless quick_gelu. */
static rb_status load_open_clip_config(rb_clip_vision_config *c, const char *path) {
    json_t *root;
    RB_TRY(rb_json_load_object(path, &root));
    json_t *vc = json_object_get(root, "vision_cfg");
    rb_status s = json_is_object(vc) ? RB_OK : rb_error(RB_ERR_FORMAT, "%s: missing 'vision_cfg'", path);
    *c = (rb_clip_vision_config){.image_size = 224, .patch_size = 16, .layers = 12, .hidden = 768, .channels = 3,
                                 .layer_norm_eps = 1e-5f, .act = RB_ACT_GELU, .layout = RB_CLIP_LAYOUT_OPEN_CLIP};
    int head_width = 64;
    double mlp_ratio = 4.0;
    if (s == RB_OK) s = rb_json_get_int(root, "embed_dim", &c->projection_dim, path);
    if (s == RB_OK && json_is_array(json_object_get(vc, "image_size"))) {
        json_t *a = json_object_get(vc, "image_size");
        json_t *h = json_array_get(a, 0), *w = json_array_get(a, 1);
        if (json_array_size(a) != 2 || !json_is_integer(h) || !json_is_integer(w) ||
            json_integer_value(h) != json_integer_value(w) || json_integer_value(h) <= 0 || json_integer_value(h) >= (1 << 24))
            s = rb_error(RB_ERR_UNSUPPORTED, "%s: vision_cfg.image_size must be square", path);
        else
            c->image_size = (int)json_integer_value(h);
    } else if (s == RB_OK) {
        s = rb_json_get_int(vc, "image_size", &c->image_size, path);
    }
    if (s == RB_OK) s = rb_json_get_int(vc, "layers", &c->layers, path);
    if (s == RB_OK) s = rb_json_get_int(vc, "width", &c->hidden, path);
    if (s == RB_OK) s = rb_json_get_int(vc, "head_width", &head_width, path);
    if (s == RB_OK) s = rb_json_get_int(vc, "patch_size", &c->patch_size, path);
    json_t *r = json_object_get(vc, "mlp_ratio");
    if (json_is_number(r))
        mlp_ratio = json_number_value(r);
    static const char *const unsupported[] = {"ls_init_value", "attentional_pool", "global_average_pool",
                                              "no_ln_pre", "final_ln_after_pool", "act_kwargs", "norm_kwargs",
                                              "timm_model_name", "hf_model_name"};
    for (size_t i = 0; s == RB_OK && i < sizeof unsupported / sizeof *unsupported; i++)
        s = reject_option(vc, unsupported[i], NULL, path);
    if (s == RB_OK) s = reject_option(vc, "pool_type", "tok", path);
    if (json_is_true(json_object_get(root, "quick_gelu")))
        c->act = RB_ACT_QUICK_GELU;
    json_decref(root);
    if (s != RB_OK)
        return s;
    if (head_width <= 0 || c->hidden % head_width || !(mlp_ratio > 0 && mlp_ratio < 64))
        return rb_error(RB_ERR_FORMAT, "%s: width %d, head_width %d, mlp_ratio %g are inconsistent", path, c->hidden,
                        head_width, mlp_ratio);
    c->heads = c->hidden / head_width;
    c->intermediate = (int)((double)c->hidden * mlp_ratio); /* python int() truncates */
    return check_sizes(c, path);
}

/* ---- weights: one key table, two layouts ---- */

enum { K_PATCH, K_CLASS, K_POS, K_PRE_W, K_PRE_B, K_POST_W, K_POST_B, K_PROJ, K_GLOBAL };
enum { L_LN1_W, L_LN1_B, L_O_W, L_O_B, L_LN2_W, L_LN2_B, L_FC1_W, L_FC1_B, L_FC2_W, L_FC2_B, L_PER_LAYER };

/* "%s" = the layout's prefix ("vision_model." or e.g. "visual."); layer keys get "%s%d." first */
static const char *const global_keys[2][K_GLOBAL] = {
    {"%sembeddings.patch_embedding.weight", "%sembeddings.class_embedding", "%sembeddings.position_embedding.weight",
     "%spre_layrnorm.weight", "%spre_layrnorm.bias", "%spost_layernorm.weight", "%spost_layernorm.bias",
     "visual_projection.weight"},
    {"%sconv1.weight", "%sclass_embedding", "%spositional_embedding", "%sln_pre.weight", "%sln_pre.bias",
     "%sln_post.weight", "%sln_post.bias", "%sproj"},
};
static const char *const layer_prefix[2] = {"%sencoder.layers.%d.", "%stransformer.resblocks.%d."};
static const char *const layer_keys[2][L_PER_LAYER] = {
    {"layer_norm1.weight", "layer_norm1.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
     "layer_norm2.weight", "layer_norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"},
    {"ln_1.weight", "ln_1.bias", "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias",
     "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"},
};
/* transformers keeps q, k, v apart; open_clip packs them into in_proj [3D, D] (rows q | k | v) */
static const char *const hf_qkv_keys[6] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                           "self_attn.v_proj.weight", "self_attn.q_proj.bias",
                                           "self_attn.k_proj.bias", "self_attn.v_proj.bias"};

static rb_tensor *get_key(rb_weights *w, int f32, int ndim, const int64_t *shape, const char *prefix,
                          const char *key) {
    char name[512];
    snprintf(name, sizeof name, key, prefix);
    return rb_weights_get(w, f32, ndim, shape, "%s", name);
}

static rb_status load_weights(rb_clip_vision *m, const char *prefix) {
    const rb_clip_vision_config *c = &m->cfg;
    rb_weights *w = &m->w;
    int lay = c->layout;
    const char *const *gk = global_keys[lay];
    int64_t D = c->hidden, F = c->intermediate, g = c->image_size / c->patch_size, p = c->patch_size;
    m->patch_w = get_key(w, 0, 4, (int64_t[]){D, c->channels, p, p}, prefix, gk[K_PATCH]);
    m->class_emb = get_key(w, 1, 1, (int64_t[]){D}, prefix, gk[K_CLASS]);
    m->pos_emb = get_key(w, 1, 2, (int64_t[]){1 + g * g, D}, prefix, gk[K_POS]);
    m->pre_ln_w = get_key(w, 1, 1, (int64_t[]){D}, prefix, gk[K_PRE_W]);
    m->pre_ln_b = get_key(w, 1, 1, (int64_t[]){D}, prefix, gk[K_PRE_B]);
    m->post_ln_w = get_key(w, 1, 1, (int64_t[]){D}, prefix, gk[K_POST_W]);
    m->post_ln_b = get_key(w, 1, 1, (int64_t[]){D}, prefix, gk[K_POST_B]);
    if (c->projection_dim > 0) {
        int64_t E = c->projection_dim;
        /* open_clip's [D, E] goes to rb_matmul, which wants f32 */
        if (lay == RB_CLIP_LAYOUT_HF)
            m->proj = get_key(w, 0, 2, (int64_t[]){E, D}, prefix, gk[K_PROJ]);
        else
            m->proj = get_key(w, 1, 2, (int64_t[]){D, E}, prefix, gk[K_PROJ]);
    }
    m->layers = rb_calloc((size_t)c->layers * sizeof *m->layers, "CLIP vision layers");
    m->qkv_views = rb_calloc((size_t)c->layers * 6 * sizeof *m->qkv_views, "CLIP vision layers");
    if (!m->layers || !m->qkv_views)
        return RB_ERR_OOM;
    const int64_t vecD[] = {D}, vecF[] = {F}, DD[] = {D, D}, FD[] = {F, D}, DF[] = {D, F};
    const int64_t *shapes[L_PER_LAYER] = {vecD, vecD, DD, vecD, vecD, vecD, FD, vecF, DF, vecD};
    for (int i = 0; i < c->layers && w->status == RB_OK; i++) {
        rb_clip_layer *L = &m->layers[i];
        char lp[256];
        snprintf(lp, sizeof lp, layer_prefix[lay], prefix, i);
        rb_tensor **dst[L_PER_LAYER] = {&L->ln1_w, &L->ln1_b, &L->o_w,   &L->o_b,   &L->ln2_w,
                                        &L->ln2_b, &L->fc1_w, &L->fc1_b, &L->fc2_w, &L->fc2_b};
        for (int k = 0; k < L_PER_LAYER; k++) {
            int matrix = k == L_O_W || k == L_FC1_W || k == L_FC2_W; /* stored dtype; vectors as f32 */
            *dst[k] = rb_weights_get(w, !matrix, matrix ? 2 : 1, shapes[k], "%s%s", lp, layer_keys[lay][k]);
        }
        rb_tensor **qkv[6] = {&L->q_w, &L->k_w, &L->v_w, &L->q_b, &L->k_b, &L->v_b};
        if (lay == RB_CLIP_LAYOUT_HF) {
            for (int k = 0; k < 6; k++)
                *qkv[k] = rb_weights_get(w, k >= 3, k < 3 ? 2 : 1, k < 3 ? DD : vecD, "%s%s", lp, hf_qkv_keys[k]);
            continue;
        }
        rb_tensor *in_w = rb_weights_get(w, 0, 2, (int64_t[]){3 * D, D}, "%sattn.in_proj_weight", lp);
        rb_tensor *in_b = rb_weights_get(w, 1, 1, (int64_t[]){3 * D}, "%sattn.in_proj_bias", lp);
        if (!in_w || !in_b)
            break;
        /* row slices of a contiguous matrix are contiguous: usable as linear weights directly */
        for (int k = 0; k < 6; k++) {
            rb_tensor *v = &m->qkv_views[i * 6 + k];
            rb_status s = rb_view_slice(v, k < 3 ? in_w : in_b, 0, (k % 3) * D, (k % 3 + 1) * D);
            if (s != RB_OK)
                return s;
            *qkv[k] = v;
        }
    }
    return w->status; /* its message names the file and the tensor */
}

rb_status rb_clip_vision_load(rb_clip_vision *m, const char *dir) {
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    RB_TRY(load_hf_config(&m->cfg, path));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    RB_TRY(rb_weights_open(&m->w, path));
    /* CLIPVisionModel checkpoints have no projection */
    if (!rb_weights_has(&m->w, "visual_projection.weight"))
        m->cfg.projection_dim = 0;
    rb_status s = load_weights(m, "vision_model.");
    if (s != RB_OK)
        rb_clip_vision_free(m);
    return s;
}

rb_status rb_clip_vision_load_open_clip(rb_clip_vision *m, const char *config_path, const char *weights_path) {
    memset(m, 0, sizeof *m);
    RB_TRY(load_open_clip_config(&m->cfg, config_path));
    RB_TRY(rb_weights_open(&m->w, weights_path));
    /* a CLIP state dict, a DDP one, a training checkpoint {"state_dict": {"module.visual...."}} (a
     * PyTorch file: nested dict keys are joined with '.'), or a vision tower alone */
    static const char *const prefixes[] = {"visual.", "module.visual.", "state_dict.module.visual.",
                                           "state_dict.visual.", ""};
    const char *prefix = NULL;
    for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes && !prefix; i++) {
        char name[96];
        snprintf(name, sizeof name, "%sconv1.weight", prefixes[i]);
        if (rb_weights_has(&m->w, name))
            prefix = prefixes[i];
    }
    rb_status s = prefix ? RB_OK
                         : rb_error(RB_ERR_FORMAT, "%s: no open_clip vision tower (visual.conv1.weight) found", weights_path);
    if (s == RB_OK && m->cfg.projection_dim > 0) {
        char name[96];
        snprintf(name, sizeof name, "%sproj", prefix);
        if (!rb_weights_has(&m->w, name)) /* output_dim None in open_clip: no projection */
            m->cfg.projection_dim = 0;
    }
    if (s == RB_OK)
        s = load_weights(m, prefix);
    if (s != RB_OK)
        rb_clip_vision_free(m);
    return s;
}

void rb_clip_vision_free(rb_clip_vision *m) {
    rb_free(m->layers);
    rb_free(m->qkv_views);
    rb_weights_close(&m->w);
    memset(m, 0, sizeof *m);
}

/* ---- forward ---- */

rb_tensor *rb_clip_vision_embed(rb_ctx *c, const rb_clip_vision *m, rb_tensor *pixels, rb_tensor *pos) {
    if (c->status != RB_OK || !pixels)
        return c->status != RB_OK ? NULL : rb_ctx_error(c, RB_ERR_INVALID, "CLIP vision: pixels are NULL");
    const rb_clip_vision_config *cf = &m->cfg;
    char b[64];
    if (pixels->ndim != 4 || pixels->shape[1] != cf->channels || pixels->shape[2] < cf->patch_size ||
        pixels->shape[3] < cf->patch_size)
        return rb_ctx_error(c, RB_ERR_INVALID, "CLIP vision: pixels must be [B, %d, H >= %d, W >= %d], got %s",
                            cf->channels, cf->patch_size, cf->patch_size, rb_shape_str(pixels, b, sizeof b));
    int64_t B = pixels->shape[0], D = cf->hidden;
    int64_t gh = pixels->shape[2] / cf->patch_size, gw = pixels->shape[3] / cf->patch_size, T = 1 + gh * gw;
    if (!pos)
        pos = m->pos_emb;
    if (rb_numel(pos) != T * D)
        return rb_ctx_error(c, RB_ERR_INVALID,
                            "CLIP vision: %lld x %lld patches need %lld positions, the position embedding is %s",
                            (long long)gh, (long long)gw, (long long)T, rb_shape_str(pos, b, sizeof b));
    /* conv [B, D, gh, gw] -> [B, D, gh*gw] -> [B, gh*gw, D] (patch k = y * gw + x) */
    rb_tensor *patches = rb_conv2d(c, pixels, m->patch_w, NULL, cf->patch_size, cf->patch_size, 0, 0);
    patches = rb_permute(c, rb_reshape(c, patches, 3, (int64_t[]){B, D, gh * gw}), (int[]){0, 2, 1});
    /* the class token repeated over the batch: B views of [1, 1, D] concatenated */
    rb_tensor **rows = rb_arena_alloc(c->arena, (size_t)(B + 1) * sizeof *rows);
    rb_tensor *cls = rb_arena_alloc(c->arena, sizeof *cls);
    if (!rows || !cls)
        return rb_ctx_fail(c, RB_ERR_OOM);
    rb_status s = rb_view_reshape(cls, m->class_emb, 3, (int64_t[]){1, 1, D});
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    for (int64_t i = 0; i < B; i++)
        rows[i] = cls;
    rb_tensor *x = rb_concat(c, (rb_tensor *[]){rb_concat(c, rows, (int)B, 0), patches}, 2, 1);
    return rb_add(c, x, rb_reshape(c, pos, 3, (int64_t[]){1, T, D}));
}

rb_tensor *rb_clip_vision_layer(rb_ctx *c, const rb_clip_vision *m, int i, rb_tensor *x) {
    if (i < 0 || i >= m->cfg.layers)
        return rb_ctx_error(c, RB_ERR_INVALID, "CLIP vision: layer %d of %d", i, m->cfg.layers);
    const rb_clip_layer *L = &m->layers[i];
    float eps = m->cfg.layer_norm_eps;
    rb_tensor *h = rb_layer_norm(c, x, L->ln1_w, L->ln1_b, eps);
    rb_tensor *q = rb_linear(c, h, L->q_w, L->q_b);
    rb_tensor *k = rb_linear(c, h, L->k_w, L->k_b);
    rb_tensor *v = rb_linear(c, h, L->v_w, L->v_b);
    rb_tensor *a = rb_attention(c, q, k, v, m->cfg.heads, NULL, 0.0f); /* bidirectional */
    x = rb_add(c, x, rb_linear(c, a, L->o_w, L->o_b));
    h = rb_linear(c, rb_layer_norm(c, x, L->ln2_w, L->ln2_b, eps), L->fc1_w, L->fc1_b);
    h = m->cfg.act == RB_ACT_GELU ? rb_gelu(c, h, 0) : rb_quick_gelu(c, h);
    return rb_add(c, x, rb_linear(c, h, L->fc2_w, L->fc2_b));
}

rb_status rb_clip_vision_forward(rb_ctx *c, const rb_clip_vision *m, rb_tensor *pixels, int collect_hidden,
                                 rb_clip_vision_out *out) {
    memset(out, 0, sizeof *out);
    if (c->status != RB_OK)
        return c->status;
    const rb_clip_vision_config *cf = &m->cfg;
    if (pixels && pixels->ndim == 4 && (pixels->shape[2] != cf->image_size || pixels->shape[3] != cf->image_size))
        return rb_error(RB_ERR_INVALID, "CLIP vision: pixels must be %d x %d, got %lld x %lld", cf->image_size,
                        cf->image_size, (long long)pixels->shape[2], (long long)pixels->shape[3]);
    rb_tensor *x = rb_clip_vision_embed(c, m, pixels, NULL);
    x = rb_layer_norm(c, x, m->pre_ln_w, m->pre_ln_b, cf->layer_norm_eps);
    if (collect_hidden)
        out->hidden[0] = x;
    for (int i = 0; i < cf->layers; i++) {
        if (i == cf->layers - 1)
            out->penultimate = x;
        /* inference drops each layer's scratch (bigG on two references: ~3 GB otherwise); the hidden
         * states collected so far lie below the mark and stay */
        size_t mk = rb_arena_mark(c->arena);
        x = rb_ctx_keep(c, mk, rb_clip_vision_layer(c, m, i, x));
        if (collect_hidden)
            out->hidden[i + 1] = x;
    }
    out->last_hidden = x;
    if (!x)
        return c->status;
    int64_t B = x->shape[0], D = cf->hidden;
    rb_tensor *cls = rb_reshape(c, rb_slice(c, x, 1, 0, 1), 2, (int64_t[]){B, D});
    out->pooled = rb_layer_norm(c, cls, m->post_ln_w, m->post_ln_b, cf->layer_norm_eps);
    if (m->proj)
        out->image_embeds = cf->layout == RB_CLIP_LAYOUT_HF ? rb_linear(c, out->pooled, m->proj, NULL)
                                                             : rb_matmul(c, out->pooled, m->proj, 0);
    return c->status;
}
