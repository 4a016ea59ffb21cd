/* CLIP text transformer, as transformers' CLIPTextModel:
 *   x = token_embedding(ids) + position_embedding(0..L-1)
 *   per layer: x = x + out_proj(attn(layer_norm1(x), causal)); x = x + fc2(act(fc1(layer_norm2(x))))
 *   last_hidden = final_layer_norm(x); pooled = last_hidden[b, eos_position(b)] */
#include "clip_text.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/mem.h"
#include "io/json.h"

/* A CLIPTextConfig, flat, or nested as "text_config" of a CLIPConfig (a CLIPModel checkpoint). The
 * nested form is what save_pretrained writes as a diff against CLIPTextConfig's defaults, so absent
 * keys take those defaults there (and projection_dim falls back to the CLIPConfig's); a flat config
 * must name its sizes. */
static rb_status load_config(rb_clip_text_config *c, const char *path) {
    json_t *root;
    RB_TRY(rb_json_load_object(path, &root));
    json_t *j = json_object_get(root, "text_config");
    int nested = json_is_object(j);
    if (nested) {
        json_t *pd = json_object_get(root, "projection_dim");
        *c = (rb_clip_text_config){.hidden = 512, .intermediate = 2048, .heads = 8, .layers = 12,
                                   .max_positions = 77, .vocab = 49408,
                                   .projection_dim = json_is_integer(pd) ? (int)json_integer_value(pd) : 512,
                                   .eos_token_id = 49407};
    } else {
        j = root;
    }
    static const struct {
        const char *key;
        size_t off;
    } ints[] = {
        {"hidden_size", offsetof(rb_clip_text_config, hidden)},
        {"intermediate_size", offsetof(rb_clip_text_config, intermediate)},
        {"num_attention_heads", offsetof(rb_clip_text_config, heads)},
        {"num_hidden_layers", offsetof(rb_clip_text_config, layers)},
        {"max_position_embeddings", offsetof(rb_clip_text_config, max_positions)},
        {"vocab_size", offsetof(rb_clip_text_config, vocab)},
        {"projection_dim", offsetof(rb_clip_text_config, projection_dim)},
        {"eos_token_id", offsetof(rb_clip_text_config, eos_token_id)},
    };
    rb_status s = RB_OK;
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        json_t *v = json_object_get(j, ints[i].key);
        int *dst = (int *)((char *)c + ints[i].off);
        if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) < (1 << 24))
            *dst = (int)json_integer_value(v);
        else if ((v || !nested) && strcmp(ints[i].key, "projection_dim") && strcmp(ints[i].key, "eos_token_id"))
            s = rb_error(RB_ERR_FORMAT, "%s: missing or invalid '%s'", path, ints[i].key);
    }
    json_t *eps = json_object_get(j, "layer_norm_eps");
    c->layer_norm_eps = json_is_number(eps) ? (float)json_number_value(eps) : 1e-5f;
    const char *act = json_string_value(json_object_get(j, "hidden_act"));
    if (!act || !strcmp(act, "quick_gelu"))
        c->act = RB_ACT_QUICK_GELU;
    else if (!strcmp(act, "gelu"))
        c->act = RB_ACT_GELU;
    else
        s = rb_error(RB_ERR_UNSUPPORTED, "%s: hidden_act '%s' is not supported", path, act);
    json_decref(root);
    if (s == RB_OK && (c->heads <= 0 || c->hidden % c->heads || c->layers > 64 || c->layers < 1))
        s = rb_error(RB_ERR_FORMAT, "%s: inconsistent sizes (hidden %d, heads %d, layers %d)", path, c->hidden,
                     c->heads, c->layers);
    return s;
}

rb_status rb_clip_text_config_load(rb_clip_text_config *cfg, const char *path) { return load_config(cfg, path); }

/* ---- key table: every parameter's name in the transformers and in the OpenCLIP layout ---- */

typedef enum { S_D, S_F, S_DD, S_FD, S_DF } shape_kind; /* [D], [F], [D, D], [F, D], [D, F] */

/* Per layer: transformers name under `text_model.encoder.layers.{i}.`, OpenCLIP name under
 * `transformer.resblocks.{i}.`. OpenCLIP packs q, k, v as the row blocks of attn.in_proj_weight
 * [3D, D] / in_proj_bias [3D]: `part` selects rows [part D, (part + 1) D) through a view. */
static const struct layer_key {
    size_t off;
    const char *hf, *oc;
    shape_kind shape;
    int part; /* -1: the whole tensor */
} layer_keys[] = {
    {offsetof(rb_clip_layer, ln1_w), "layer_norm1.weight", "ln_1.weight", S_D, -1},
    {offsetof(rb_clip_layer, ln1_b), "layer_norm1.bias", "ln_1.bias", S_D, -1},
    {offsetof(rb_clip_layer, q_w), "self_attn.q_proj.weight", "attn.in_proj_weight", S_DD, 0},
    {offsetof(rb_clip_layer, q_b), "self_attn.q_proj.bias", "attn.in_proj_bias", S_D, 0},
    {offsetof(rb_clip_layer, k_w), "self_attn.k_proj.weight", "attn.in_proj_weight", S_DD, 1},
    {offsetof(rb_clip_layer, k_b), "self_attn.k_proj.bias", "attn.in_proj_bias", S_D, 1},
    {offsetof(rb_clip_layer, v_w), "self_attn.v_proj.weight", "attn.in_proj_weight", S_DD, 2},
    {offsetof(rb_clip_layer, v_b), "self_attn.v_proj.bias", "attn.in_proj_bias", S_D, 2},
    {offsetof(rb_clip_layer, o_w), "self_attn.out_proj.weight", "attn.out_proj.weight", S_DD, -1},
    {offsetof(rb_clip_layer, o_b), "self_attn.out_proj.bias", "attn.out_proj.bias", S_D, -1},
    {offsetof(rb_clip_layer, ln2_w), "layer_norm2.weight", "ln_2.weight", S_D, -1},
    {offsetof(rb_clip_layer, ln2_b), "layer_norm2.bias", "ln_2.bias", S_D, -1},
    {offsetof(rb_clip_layer, fc1_w), "mlp.fc1.weight", "mlp.c_fc.weight", S_FD, -1},
    {offsetof(rb_clip_layer, fc1_b), "mlp.fc1.bias", "mlp.c_fc.bias", S_F, -1},
    {offsetof(rb_clip_layer, fc2_w), "mlp.fc2.weight", "mlp.c_proj.weight", S_DF, -1},
    {offsetof(rb_clip_layer, fc2_b), "mlp.fc2.bias", "mlp.c_proj.bias", S_D, -1},
};

/* Model-level tensors; the projection is [P, D] in transformers, [D, P] in OpenCLIP. */
enum { K_TOK, K_POS, K_FINAL_W, K_FINAL_B, K_PROJ, K_LAYER0, K_N };
static const char *const top_keys[K_N][2] = {
    [K_TOK] = {"text_model.embeddings.token_embedding.weight", "token_embedding.weight"},
    [K_POS] = {"text_model.embeddings.position_embedding.weight", "positional_embedding"},
    [K_FINAL_W] = {"text_model.final_layer_norm.weight", "ln_final.weight"},
    [K_FINAL_B] = {"text_model.final_layer_norm.bias", "ln_final.bias"},
    [K_PROJ] = {"text_projection.weight", "text_projection"},
    [K_LAYER0] = {"text_model.encoder.layers.%d.", "transformer.resblocks.%d."},
};

static const char *layout_prefix(rb_clip_text_layout l) {
    return l == RB_CLIP_TEXT_SGM_L ? "conditioner.embedders.0.transformer."
           : l == RB_CLIP_TEXT_SGM_G ? "conditioner.embedders.1.model."
                                     : "";
}

typedef struct keys {
    const char *prefix;
    int oc; /* OpenCLIP names */
} keys;

static void top_name(const keys *k, int which, char *out, size_t n) {
    snprintf(out, n, "%s%s", k->prefix, top_keys[which][k->oc]);
}

static void layer_name(const keys *k, int layer, const struct layer_key *lk, char *out, size_t n) {
    char mid[64];
    snprintf(mid, sizeof mid, top_keys[K_LAYER0][k->oc], layer);
    snprintf(out, n, "%s%s%s", k->prefix, mid, k->oc ? lk->oc : lk->hf);
}

/* A tensor's shape without marking it used; NULL when absent. */
static const rb_tensor *peek(const rb_weights *w, const char *name) {
    int32_t i;
    return rb_strmap_get(&w->index, name, strlen(name), &i) ? w->tensors[i] : NULL;
}

/* The config from the tensor shapes (rules in clip_text.h). */
static rb_status detect_config(rb_clip_text_config *c, const rb_weights *w, const keys *k, rb_clip_text_layout l) {
    char name[512];
    top_name(k, K_TOK, name, sizeof name);
    const rb_tensor *tok = peek(w, name);
    top_name(k, K_POS, name, sizeof name);
    const rb_tensor *pos = peek(w, name);
    if (!tok || tok->ndim != 2 || !pos || pos->ndim != 2)
        return rb_error(RB_ERR_FORMAT, "%s: no CLIP text encoder under '%s' (%s missing or not 2-D)", w->path,
                        k->prefix, name);
    *c = (rb_clip_text_config){.vocab = (int)tok->shape[0], .hidden = (int)tok->shape[1],
                               .max_positions = (int)pos->shape[0], .layer_norm_eps = 1e-5f,
                               .act = l == RB_CLIP_TEXT_SGM_G ? RB_ACT_GELU : RB_ACT_QUICK_GELU, .eos_token_id = 2};
    c->heads = c->hidden >= 64 ? c->hidden / 64 : 1;
    while (c->layers < 64) {
        layer_name(k, c->layers, &layer_keys[0], name, sizeof name);
        if (!peek(w, name))
            break;
        c->layers++;
    }
    layer_name(k, 0, &layer_keys[12], name, sizeof name); /* fc1 / c_fc weight [F, D] */
    const rb_tensor *fc = peek(w, name);
    c->intermediate = fc && fc->ndim == 2 ? (int)fc->shape[0] : 0;
    top_name(k, K_PROJ, name, sizeof name);
    const rb_tensor *proj = peek(w, name);
    c->projection_dim = proj && proj->ndim == 2 ? (int)proj->shape[k->oc ? 1 : 0] : c->hidden;
    if (c->layers < 1 || c->intermediate < 1 || c->hidden % c->heads)
        return rb_error(RB_ERR_FORMAT, "%s: CLIP text encoder under '%s': %d layers, MLP width %d, hidden %d",
                        w->path, k->prefix, c->layers, c->intermediate, c->hidden);
    fprintf(stderr,
            "relbooth: %s: CLIP text encoder '%s' config from shapes: hidden %d, layers %d, heads %d, mlp %d, "
            "positions %d, vocab %d, projection %d, %s\n",
            w->path, k->prefix, c->hidden, c->layers, c->heads, c->intermediate, c->max_positions, c->vocab,
            c->projection_dim, c->act == RB_ACT_GELU ? "gelu" : "quick_gelu");
    return RB_OK;
}

static void load_layer(rb_weights *w, const keys *k, const rb_clip_text_config *c, int i, rb_clip_layer *L) {
    int64_t D = c->hidden, F = c->intermediate;
    const int64_t shapes[][2] = {[S_D] = {D}, [S_F] = {F}, [S_DD] = {D, D}, [S_FD] = {F, D}, [S_DF] = {D, F}};
    char name[512];
    for (size_t j = 0; j < sizeof layer_keys / sizeof *layer_keys; j++) {
        const struct layer_key *lk = &layer_keys[j];
        rb_tensor **slot = (rb_tensor **)((char *)L + lk->off);
        int vec = lk->shape == S_D || lk->shape == S_F, packed = k->oc && lk->part >= 0;
        int64_t shape[2] = {shapes[lk->shape][0], shapes[lk->shape][1]};
        if (packed)
            shape[0] *= 3;
        layer_name(k, i, lk, name, sizeof name);
        rb_tensor *t = rb_weights_get(w, vec, vec ? 1 : 2, shape, "%s", name);
        if (t && packed) { /* rows [part D, (part + 1) D): a contiguous view, no copy */
            rb_tensor *view = &L->packed[2 * lk->part + vec];
            if ((w->status = rb_view_slice(view, t, 0, lk->part * D, (lk->part + 1) * D)) != RB_OK)
                t = NULL;
            else
                t = view;
        }
        *slot = t;
    }
}

rb_status rb_clip_text_load_file(rb_clip_text *m, const char *weights_path, rb_clip_text_layout layout,
                                 const rb_clip_text_config *cfg) {
    memset(m, 0, sizeof *m);
    if (layout < RB_CLIP_TEXT_HF || layout > RB_CLIP_TEXT_SGM_G)
        return rb_error(RB_ERR_INVALID, "CLIP text: unknown layout %d", (int)layout);
    keys k = {layout_prefix(layout), layout == RB_CLIP_TEXT_SGM_G};
    RB_TRY(rb_weights_open(&m->w, weights_path));
    rb_weights *w = &m->w;
    rb_status s = RB_OK;
    if (cfg)
        m->cfg = *cfg;
    else
        s = detect_config(&m->cfg, w, &k, layout);
    const rb_clip_text_config *c = &m->cfg;
    if (s == RB_OK && (c->heads <= 0 || c->hidden <= 0 || c->hidden % c->heads || c->layers > 64 || c->layers < 1))
        s = rb_error(RB_ERR_INVALID, "%s: CLIP text config: hidden %d, heads %d, layers %d", weights_path, c->hidden,
                     c->heads, c->layers);
    if (s == RB_OK && !(m->layers = rb_calloc((size_t)c->layers * sizeof *m->layers, "CLIP text layers")))
        s = RB_ERR_OOM;
    if (s != RB_OK) {
        rb_clip_text_free(m);
        return s;
    }
    int64_t D = c->hidden;
    char name[512];
    top_name(&k, K_TOK, name, sizeof name);
    m->tok_emb = rb_weights_get(w, 0, 2, (int64_t[]){c->vocab, D}, "%s", name);
    top_name(&k, K_POS, name, sizeof name);
    m->pos_emb = rb_weights_get(w, 1, 2, (int64_t[]){c->max_positions, D}, "%s", name);
    for (int i = 0; i < c->layers; i++)
        load_layer(w, &k, c, i, &m->layers[i]);
    top_name(&k, K_FINAL_W, name, sizeof name);
    m->final_ln_w = rb_weights_get(w, 1, 1, (int64_t[]){D}, "%s", name);
    top_name(&k, K_FINAL_B, name, sizeof name);
    m->final_ln_b = rb_weights_get(w, 1, 1, (int64_t[]){D}, "%s", name);
    top_name(&k, K_PROJ, name, sizeof name);
    /* OpenCLIP's [D, P] goes through rb_matmul, which wants f32 */
    m->projection = rb_weights_opt(w, k.oc, 2, k.oc ? (int64_t[]){D, -1} : (int64_t[]){-1, D}, "%s", name);
    m->projection_t = k.oc;
    if (k.oc) /* the CLIP loss temperature: part of the checkpoint, not of the text encoder */
        rb_weights_opt(w, 1, 0, NULL, "%slogit_scale", k.prefix);
    s = w->status;
    if (s != RB_OK)
        rb_clip_text_free(m);
    return s;
}

rb_status rb_clip_text_load(rb_clip_text *m, const char *dir) {
    memset(m, 0, sizeof *m);
    char path[4096];
    rb_clip_text_config cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    RB_TRY(load_config(&cfg, path));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    return rb_clip_text_load_file(m, path, RB_CLIP_TEXT_HF, &cfg);
}

void rb_clip_text_free(rb_clip_text *m) {
    rb_free(m->layers);
    rb_weights_close(&m->w);
    memset(m, 0, sizeof *m);
}

/* Additive causal mask [1, 1, L, L]: 0 on and below the diagonal, -inf above. */
static rb_tensor *causal_mask(rb_ctx *c, int64_t L) {
    rb_tensor *mask = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){1, 1, L, L});
    if (!mask)
        return NULL;
    float *p = mask->data;
    for (int64_t i = 0; i < L; i++)
        for (int64_t j = 0; j < L; j++)
            p[i * L + j] = j <= i ? 0.0f : -INFINITY;
    return mask;
}

static rb_tensor *layer_forward(rb_ctx *c, const rb_clip_text *m, const rb_clip_layer *L, rb_tensor *x,
                                rb_tensor *mask) {
    float eps = m->cfg.layer_norm_eps;
    rb_tensor *h = rb_layer_norm(c, x, L->ln1_w, L->ln1_b, eps);
    rb_tensor *q = rb_linear(c, h, L->q_w, L->q_b);
    rb_tensor *k = rb_linear(c, h, L->k_w, L->k_b);
    rb_tensor *v = rb_linear(c, h, L->v_w, L->v_b);
    rb_tensor *a = rb_attention(c, q, k, v, m->cfg.heads, mask, 0.0f);
    x = rb_add(c, x, rb_linear(c, a, L->o_w, L->o_b));
    h = rb_linear(c, rb_layer_norm(c, x, L->ln2_w, L->ln2_b, eps), L->fc1_w, L->fc1_b);
    h = m->cfg.act == RB_ACT_GELU ? rb_gelu(c, h, 0) : rb_quick_gelu(c, h);
    return rb_add(c, x, rb_linear(c, h, L->fc2_w, L->fc2_b));
}

/* Position of the pooled token per row: the first EOS id, or argmax(ids) for eos_token_id == 2. */
static rb_status eos_positions(const rb_clip_text *m, const rb_tensor *ids, int64_t *pos) {
    int64_t B = ids->shape[0], L = ids->shape[1];
    for (int64_t b = 0; b < B; b++) {
        int64_t best = 0;
        double bestv = -1;
        pos[b] = -1;
        for (int64_t i = 0; i < L; i++) {
            double v = rb_tensor_get(ids, b * L + i);
            if (m->cfg.eos_token_id == 2 ? v > bestv : (v == m->cfg.vocab - 1 && pos[b] < 0)) {
                bestv = v;
                best = i;
                if (m->cfg.eos_token_id != 2)
                    pos[b] = i;
            }
        }
        if (pos[b] < 0)
            pos[b] = best;
    }
    return RB_OK;
}

rb_status rb_clip_text_forward(rb_ctx *c, const rb_clip_text *m, rb_tensor *ids, int collect_hidden,
                               rb_clip_text_out *out) {
    memset(out, 0, sizeof *out);
    if (c->status != RB_OK)
        return c->status;
    if (ids->ndim != 2 || ids->shape[1] > m->cfg.max_positions || ids->shape[1] < 1 ||
        (ids->dtype != RB_I64 && ids->dtype != RB_I32))
        return rb_error(RB_ERR_INVALID, "CLIP text: input ids must be [B, L <= %d] integers", m->cfg.max_positions);
    int64_t B = ids->shape[0], L = ids->shape[1], D = m->cfg.hidden;
    rb_tensor pos_view;
    RB_TRY(rb_view_slice(&pos_view, m->pos_emb, 0, 0, L));
    rb_tensor *x = rb_add(c, rb_embedding(c, m->tok_emb, ids), &pos_view);
    rb_tensor *mask = causal_mask(c, L);
    if (collect_hidden)
        out->hidden[0] = x;
    for (int i = 0; i < m->cfg.layers; i++) {
        if (i == m->cfg.layers - 1)
            out->penultimate = x;
        x = layer_forward(c, m, &m->layers[i], x, mask);
        if (collect_hidden)
            out->hidden[i + 1] = x;
    }
    out->last_hidden = rb_layer_norm(c, x, m->final_ln_w, m->final_ln_b, m->cfg.layer_norm_eps);
    if (!out->last_hidden)
        return c->status;
    /* pooled: rows of last_hidden at the EOS positions (inference only: not recorded on the tape) */
    rb_tensor *pooled = rb_ctx_tensor(c, RB_F32, 2, (int64_t[]){B, D});
    int64_t *pos = rb_arena_alloc(c->arena, (size_t)B * sizeof *pos);
    if (!pooled || !pos)
        return c->status != RB_OK ? c->status : (c->status = RB_ERR_OOM);
    eos_positions(m, ids, pos);
    for (int64_t b = 0; b < B; b++)
        memcpy((float *)pooled->data + b * D, (float *)out->last_hidden->data + (b * L + pos[b]) * D,
               (size_t)D * sizeof(float));
    out->pooled = pooled;
    if (m->projection)
        out->text_embeds = m->projection_t ? rb_matmul(c, pooled, m->projection, 0) : rb_linear(c, pooled, m->projection, NULL);
    return c->status;
}
