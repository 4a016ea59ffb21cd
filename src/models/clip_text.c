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

rb_status rb_clip_text_load(rb_clip_text *m, const char *dir) {
    memset(m, 0, sizeof *m);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    RB_TRY(load_config(&m->cfg, path));
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    RB_TRY(rb_weights_open(&m->w, path));
    const rb_clip_text_config *c = &m->cfg;
    rb_weights *w = &m->w;
    int64_t D = c->hidden, F = c->intermediate;
    m->tok_emb = rb_weights_get(w, 0, 2, (int64_t[]){c->vocab, D}, "text_model.embeddings.token_embedding.weight");
    m->pos_emb = rb_weights_get(w, 1, 2, (int64_t[]){c->max_positions, D},
                                "text_model.embeddings.position_embedding.weight");
    m->layers = rb_calloc((size_t)c->layers * sizeof *m->layers, "CLIP text layers");
    if (!m->layers) {
        rb_clip_text_free(m);
        return RB_ERR_OOM;
    }
    const int64_t vecD[] = {D}, vecF[] = {F}, DD[] = {D, D}, FD[] = {F, D}, DF[] = {D, F};
    for (int i = 0; i < c->layers; i++) {
        rb_clip_layer *L = &m->layers[i];
        const char *p = "text_model.encoder.layers";
        L->ln1_w = rb_weights_get(w, 1, 1, vecD, "%s.%d.layer_norm1.weight", p, i);
        L->ln1_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.layer_norm1.bias", p, i);
        L->q_w = rb_weights_get(w, 0, 2, DD, "%s.%d.self_attn.q_proj.weight", p, i);
        L->q_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.self_attn.q_proj.bias", p, i);
        L->k_w = rb_weights_get(w, 0, 2, DD, "%s.%d.self_attn.k_proj.weight", p, i);
        L->k_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.self_attn.k_proj.bias", p, i);
        L->v_w = rb_weights_get(w, 0, 2, DD, "%s.%d.self_attn.v_proj.weight", p, i);
        L->v_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.self_attn.v_proj.bias", p, i);
        L->o_w = rb_weights_get(w, 0, 2, DD, "%s.%d.self_attn.out_proj.weight", p, i);
        L->o_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.self_attn.out_proj.bias", p, i);
        L->ln2_w = rb_weights_get(w, 1, 1, vecD, "%s.%d.layer_norm2.weight", p, i);
        L->ln2_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.layer_norm2.bias", p, i);
        L->fc1_w = rb_weights_get(w, 0, 2, FD, "%s.%d.mlp.fc1.weight", p, i);
        L->fc1_b = rb_weights_get(w, 1, 1, vecF, "%s.%d.mlp.fc1.bias", p, i);
        L->fc2_w = rb_weights_get(w, 0, 2, DF, "%s.%d.mlp.fc2.weight", p, i);
        L->fc2_b = rb_weights_get(w, 1, 1, vecD, "%s.%d.mlp.fc2.bias", p, i);
    }
    m->final_ln_w = rb_weights_get(w, 1, 1, vecD, "text_model.final_layer_norm.weight");
    m->final_ln_b = rb_weights_get(w, 1, 1, vecD, "text_model.final_layer_norm.bias");
    m->projection = rb_weights_opt(w, 0, 2, (int64_t[]){-1, D}, "text_projection.weight");
    rb_status s = w->status;
    if (s != RB_OK)
        rb_clip_text_free(m);
    return s;
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
        out->text_embeds = rb_linear(c, pooled, m->projection, NULL);
    return c->status;
}
