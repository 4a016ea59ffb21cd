/* CLIP text encoders of SDXL: CLIPTextModel (text_encoder, OpenAI ViT-L, quick-GELU) and
 * CLIPTextModelWithProjection (text_encoder_2, OpenCLIP bigG, exact GELU, text_projection), in the
 * transformers layout (`text_model.*`, `text_projection.weight`) or in the SGM single-file layout of
 * SDXL checkpoints (`conditioner.embedders.0.transformer.text_model.*`: transformers names;
 * `conditioner.embedders.1.model.*`: OpenCLIP names, q/k/v packed in `attn.in_proj_*`,
 * `text_projection` stored [D, P]). */
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
    rb_tensor packed[6]; /* OpenCLIP: q, k, v weight and bias row views into attn.in_proj_* (q_w.. point here) */
} rb_clip_layer;

typedef struct rb_clip_text {
    rb_clip_text_config cfg;
    rb_weights w;
    rb_tensor *tok_emb, *pos_emb; /* [V, D], [P, D] */
    rb_clip_layer *layers;
    rb_tensor *final_ln_w, *final_ln_b;
    rb_tensor *projection; /* [proj, D] (a linear weight), [D, proj] when projection_t, or NULL (CLIPTextModel) */
    int projection_t;      /* OpenCLIP's text_projection: text_embeds = pooled @ projection */
} rb_clip_text;

typedef enum {
    RB_CLIP_TEXT_HF = 0, /* transformers: text_model.*, text_projection.weight (a model.safetensors) */
    RB_CLIP_TEXT_SGM_L,  /* SDXL single file, CLIP-L: conditioner.embedders.0.transformer. + transformers names */
    RB_CLIP_TEXT_SGM_G,  /* SDXL single file, OpenCLIP bigG: conditioner.embedders.1.model. + OpenCLIP names */
} rb_clip_text_layout;

/* Reads a config.json (a CLIPTextConfig, or a CLIPConfig whose "text_config" is used). */
rb_status rb_clip_text_config_load(rb_clip_text_config *cfg, const char *path);

/* config.json in `dir` (a CLIPTextConfig, or a CLIPConfig whose "text_config" is used: a CLIPModel
 * checkpoint, whose vision keys are then left unused) plus model.safetensors. */
rb_status rb_clip_text_load(rb_clip_text *m, const char *dir);
/* One encoder from a weights file in `layout` (a file may hold other models' tensors too: only this
 * encoder's keys are read). cfg NULL: the config comes from the tensor shapes and is logged in one
 * line: hidden, vocab = token embedding [V, D]; max_positions = position embedding rows; layers =
 * count of layers; intermediate = fc1 / c_fc rows; projection_dim = projection width (hidden when
 * absent); heads = hidden / 64 (at least 1: right for CLIP-L 768 -> 12 and bigG 1280 -> 20, not
 * for models with other head widths, which need cfg); act quick-GELU for HF / SGM_L, GELU for
 * SGM_G; layer_norm_eps 1e-5; eos_token_id 2 (pool at argmax(ids), as OpenAI CLIP and OpenCLIP do). */
rb_status rb_clip_text_load_file(rb_clip_text *m, const char *weights_path, rb_clip_text_layout layout,
                                 const rb_clip_text_config *cfg);
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
