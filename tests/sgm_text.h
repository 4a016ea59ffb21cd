/* Test helper: SDXL single-file (SGM) checkpoints built at test time from golden files. The text
 * encoders are rewritten from the transformers layout into the SGM one, spelled here from the
 * layout description (sgm's FrozenCLIPEmbedder / FrozenOpenCLIPEmbedder2 state dicts), not through
 * the library's key table:
 *   CLIP-L: conditioner.embedders.0.transformer. + the transformers name, unchanged;
 *   bigG:   conditioner.embedders.1.model. + token_embedding.weight, positional_embedding,
 *           transformer.resblocks.{i}.{ln_1, attn.in_proj_weight = cat(q, k, v) rows, attn.in_proj_bias,
 *           attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_final, text_projection = W^T [D, P], logit_scale.
 * Other files (the golden SGM UNet and VAE) are appended as they are. */
#ifndef RB_TESTS_SGM_TEXT_H
#define RB_TESTS_SGM_TEXT_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"

typedef struct sgm_list {
    int n;
    char *names[4096];
    rb_tensor *tensors[4096];
    void *bufs[4096]; /* owned data of built tensors (NULL for ones pointing into a source file) */
} sgm_list;

static inline rb_tensor *sgm_push(sgm_list *l, const char *name, const rb_tensor *t, void *buf) {
    if (l->n >= 4096)
        return NULL;
    l->names[l->n] = strdup(name);
    l->tensors[l->n] = malloc(sizeof(rb_tensor));
    *l->tensors[l->n] = *t;
    l->bufs[l->n] = buf;
    return l->tensors[l->n++];
}

/* A new contiguous f32 tensor owned by the list. */
static inline rb_tensor *sgm_new(sgm_list *l, const char *name, int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    void *data = calloc((size_t)(n ? n : 1), sizeof(float));
    rb_tensor t = rb_tensor_wrap(data, RB_F32, ndim, shape);
    return data ? sgm_push(l, name, &t, data) : NULL;
}

static inline void sgm_add_file(sgm_list *l, const rb_safetensors *f) {
    for (int i = 0; i < f->n; i++)
        sgm_push(l, f->entries[i].name, &f->entries[i].t, NULL);
}

/* The golden CLIP-L model.safetensors (transformers names) as SGM embedder 0. */
static inline void sgm_add_clip_l(sgm_list *l, const rb_safetensors *f) {
    char name[512];
    for (int i = 0; i < f->n; i++) {
        snprintf(name, sizeof name, "conditioner.embedders.0.transformer.%s", f->entries[i].name);
        sgm_push(l, name, &f->entries[i].t, NULL);
    }
}

/* Source tensor (f32) by printf-style name, or NULL. */
static inline const rb_tensor *sgm_src(const rb_safetensors *f, const char *fmt, int i) {
    char name[256];
    snprintf(name, sizeof name, fmt, i);
    const rb_tensor *t = rb_st_get(f, name);
    return t && t->dtype == RB_F32 ? t : NULL;
}

static inline void sgm_copy(sgm_list *l, const rb_safetensors *f, const char *src_fmt, const char *dst_fmt, int i) {
    char name[256];
    const rb_tensor *t = sgm_src(f, src_fmt, i);
    snprintf(name, sizeof name, dst_fmt, i);
    if (t)
        sgm_push(l, name, t, NULL);
}

/* The golden bigG model.safetensors (transformers names) as SGM embedder 1 (OpenCLIP names).
 * Returns the number of layers written, or -1 when a source tensor is missing. */
static inline int sgm_add_clip_g(sgm_list *l, const rb_safetensors *f) {
    const char *P = "conditioner.embedders.1.model.";
    char a[256], b[256];
    int layers = 0;
    while (sgm_src(f, "text_model.encoder.layers.%d.layer_norm1.weight", layers))
        layers++;
    const rb_tensor *tok = sgm_src(f, "text_model.embeddings.token_embedding.weight", 0);
    const rb_tensor *proj = sgm_src(f, "text_projection.weight", 0);
    if (!tok || !proj || !layers)
        return -1;
    int64_t D = tok->shape[1], Pd = proj->shape[0];
    snprintf(a, sizeof a, "%stoken_embedding.weight", P);
    sgm_push(l, a, tok, NULL);
    snprintf(a, sizeof a, "%spositional_embedding", P);
    sgm_copy(l, f, "text_model.embeddings.position_embedding.weight", a, 0);
    static const char *const same[][2] = {
        {"layer_norm1.weight", "ln_1.weight"},           {"layer_norm1.bias", "ln_1.bias"},
        {"self_attn.out_proj.weight", "attn.out_proj.weight"}, {"self_attn.out_proj.bias", "attn.out_proj.bias"},
        {"layer_norm2.weight", "ln_2.weight"},           {"layer_norm2.bias", "ln_2.bias"},
        {"mlp.fc1.weight", "mlp.c_fc.weight"},           {"mlp.fc1.bias", "mlp.c_fc.bias"},
        {"mlp.fc2.weight", "mlp.c_proj.weight"},         {"mlp.fc2.bias", "mlp.c_proj.bias"},
    };
    for (int i = 0; i < layers; i++) {
        for (size_t j = 0; j < sizeof same / sizeof *same; j++) {
            snprintf(a, sizeof a, "text_model.encoder.layers.%%d.%s", same[j][0]);
            snprintf(b, sizeof b, "%stransformer.resblocks.%%d.%s", P, same[j][1]);
            sgm_copy(l, f, a, b, i);
        }
        /* in_proj_weight [3D, D] = rows of q, then k, then v; in_proj_bias [3D] likewise */
        static const char *const qkv[3] = {"q", "k", "v"};
        snprintf(a, sizeof a, "%stransformer.resblocks.%d.attn.in_proj_weight", P, i);
        rb_tensor *w = sgm_new(l, a, 2, (int64_t[]){3 * D, D});
        snprintf(a, sizeof a, "%stransformer.resblocks.%d.attn.in_proj_bias", P, i);
        rb_tensor *bias = sgm_new(l, a, 1, (int64_t[]){3 * D});
        for (int p = 0; p < 3; p++) {
            snprintf(a, sizeof a, "text_model.encoder.layers.%%d.self_attn.%s_proj.weight", qkv[p]);
            snprintf(b, sizeof b, "text_model.encoder.layers.%%d.self_attn.%s_proj.bias", qkv[p]);
            const rb_tensor *sw = sgm_src(f, a, i), *sb = sgm_src(f, b, i);
            if (!sw || !sb || !w || !bias)
                return -1;
            memcpy((float *)w->data + p * D * D, sw->data, (size_t)(D * D) * sizeof(float));
            memcpy((float *)bias->data + p * D, sb->data, (size_t)D * sizeof(float));
        }
    }
    snprintf(a, sizeof a, "%sln_final.weight", P);
    sgm_copy(l, f, "text_model.final_layer_norm.weight", a, 0);
    snprintf(a, sizeof a, "%sln_final.bias", P);
    sgm_copy(l, f, "text_model.final_layer_norm.bias", a, 0);
    /* OpenCLIP: x @ text_projection with text_projection [D, P] = (transformers' [P, D] weight)^T */
    snprintf(a, sizeof a, "%stext_projection", P);
    rb_tensor *pt = sgm_new(l, a, 2, (int64_t[]){D, Pd});
    if (!pt)
        return -1;
    for (int64_t r = 0; r < Pd; r++)
        for (int64_t c = 0; c < D; c++)
            ((float *)pt->data)[c * Pd + r] = ((const float *)proj->data)[r * D + c];
    snprintf(a, sizeof a, "%slogit_scale", P);
    rb_tensor *ls = sgm_new(l, a, 0, NULL);
    if (ls)
        *(float *)ls->data = 4.6052f; /* ln 100 */
    return layers;
}

static inline rb_status sgm_write(const sgm_list *l, const char *path) {
    return rb_st_write(path, l->n, (const char *const *)l->names, (const rb_tensor *const *)l->tensors, 0, NULL, NULL);
}

static inline void sgm_free(sgm_list *l) {
    for (int i = 0; i < l->n; i++) {
        free(l->names[i]);
        free(l->tensors[i]);
        free(l->bufs[i]);
    }
    l->n = 0;
}

#endif
