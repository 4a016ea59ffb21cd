/* CLIP text encoders of SDXL: CLIPTextModel (text_encoder, OpenAI ViT-L, quick-GELU) and
 * CLIPTextModelWithProjection (text_encoder_2, OpenCLIP bigG, exact GELU, text_projection), in the
 * transformers layout (`text_model.*`, `text_projection.weight`). */
#ifndef RB_MODELS_CLIP_TEXT_H
#define RB_MODELS_CLIP_TEXT_H

#include "models/weights.h"
#include "ops/ops.h"

typedef enum { RB_ACT_QUICK_GELU = 0, RB_ACT_GELU } rb_act;

typedef struct rb_clip_text_config {
    int hidden, intermediate, heads, layers, max_positions, vocab, projection_dim;
    float layer_norm_eps;
    rb_act act;
    int eos_token_id; /* 2 selects transformers' legacy rule: pool at argmax(input_ids) */
} rb_clip_text_config;

typedef struct rb_clip_layer {
    rb_tensor *ln1_w, *ln1_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    rb_tensor *ln2_w, *ln2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} rb_clip_layer;

typedef struct rb_clip_text {
    rb_clip_text_config cfg;
    rb_weights w;
    rb_tensor *tok_emb, *pos_emb; /* [V, D], [P, D] */
    rb_clip_layer *layers;
    rb_tensor *final_ln_w, *final_ln_b;
    rb_tensor *projection; /* [proj, D] or NULL (CLIPTextModel) */
} rb_clip_text;

/* config.json in `dir` (a CLIPTextConfig, or a CLIPConfig whose "text_config" is used: a CLIPModel
 * checkpoint, whose vision keys are then left unused) plus model.safetensors. */
rb_status rb_clip_text_load(rb_clip_text *m, const char *dir);
void rb_clip_text_free(rb_clip_text *m);

typedef struct rb_clip_text_out {
    rb_tensor *last_hidden;    /* [B, L, D] after the final LayerNorm */
    rb_tensor *penultimate;    /* [B, L, D] hidden_states[-2] (SDXL's prompt embedding) */
    rb_tensor *pooled;         /* [B, D] last_hidden at the EOS position */
    rb_tensor *text_embeds;    /* [B, proj] pooled @ text_projection^T, or NULL */
    rb_tensor *hidden[65];     /* hidden_states[0..layers] when collect_hidden, else NULL */
} rb_clip_text_out;

/* ids: [B, L] i64 with L <= max_positions. */
rb_status rb_clip_text_forward(rb_ctx *c, const rb_clip_text *m, rb_tensor *ids, int collect_hidden,
                               rb_clip_text_out *out);

#endif
