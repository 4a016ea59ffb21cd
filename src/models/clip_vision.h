/* CLIP vision transformer (the image encoder of IP-Adapter / MS-Diffusion / DreamRelation), as
 * transformers' CLIPVisionModelWithProjection. Two checkpoint layouts load into the same model:
 *   transformers: config.json + model.safetensors with `vision_model.*`, `visual_projection.weight`;
 *   open_clip:    an open_clip model json (embed_dim, vision_cfg) + a state dict with `visual.*`
 *                 (packed q|k|v in_proj, `visual.proj` stored [width, embed]).
 * The building blocks (embedding, one encoder layer) are public so that variants of the forward pass
 * (e.g. DreamRelation's dense local tokens) can be assembled from them. */
#ifndef RB_MODELS_CLIP_VISION_H
#define RB_MODELS_CLIP_VISION_H

#include "models/clip_text.h" /* rb_act, rb_clip_layer */
#include "models/weights.h"
#include "ops/ops.h"

typedef enum { RB_CLIP_LAYOUT_HF = 0, RB_CLIP_LAYOUT_OPEN_CLIP } rb_clip_layout;

typedef struct rb_clip_vision_config {
    int hidden, intermediate, heads, layers, image_size, patch_size, channels;
    int projection_dim; /* 0: no projection in the checkpoint */
    float layer_norm_eps;
    rb_act act;
    rb_clip_layout layout;
} rb_clip_vision_config;

typedef struct rb_clip_vision {
    rb_clip_vision_config cfg;
    rb_weights w;
    rb_tensor *patch_w;              /* [D, C, p, p] conv, stride p, no bias */
    rb_tensor *class_emb;            /* [D] */
    rb_tensor *pos_emb;              /* [1 + (S/p)^2, D] */
    rb_tensor *pre_ln_w, *pre_ln_b;  /* [D] ("pre_layrnorm" / "ln_pre") */
    rb_clip_layer *layers;           /* q/k/v of open_clip are row views of in_proj (in qkv_views) */
    rb_tensor *qkv_views;            /* open_clip: [layers * 6] views (q_w, k_w, v_w, q_b, k_b, v_b) */
    rb_tensor *post_ln_w, *post_ln_b; /* [D] */
    rb_tensor *proj;                 /* HF: [E, D] (a linear weight); open_clip: [D, E]; or NULL */
} rb_clip_vision;

/* transformers layout: `dir`/config.json (a CLIPVisionConfig, or a CLIPConfig with "vision_config")
 * and `dir`/model.safetensors. */
rb_status rb_clip_vision_load(rb_clip_vision *m, const char *dir);
/* open_clip layout: `config_path` is an open_clip model json ({"embed_dim", "vision_cfg": {...},
 * optional "quick_gelu"}); `weights_path` a safetensors or PyTorch state dict whose vision keys are
 * `visual.*`, `module.visual.*` (DDP), `state_dict.module.visual.*` (a training checkpoint
 * {"epoch", "state_dict"}: what open_clip's load_state_dict unwraps) or bare (a vision tower alone).
 * Keys of other towers are left unused. */
rb_status rb_clip_vision_load_open_clip(rb_clip_vision *m, const char *config_path, const char *weights_path);
void rb_clip_vision_free(rb_clip_vision *m);

typedef struct rb_clip_vision_out {
    rb_tensor *last_hidden;  /* [B, T, D] output of the last layer, no post LayerNorm (T = 1 + grid^2) */
    rb_tensor *penultimate;  /* [B, T, D] hidden_states[-2] (what IP-Adapter-plus resamplers consume) */
    rb_tensor *pooled;       /* [B, D] post_layernorm(last_hidden[:, 0]) */
    rb_tensor *image_embeds; /* [B, E] projected pooled, or NULL without a projection */
    rb_tensor *hidden[65];   /* hidden_states[0..layers] when collect_hidden (0 = after pre LayerNorm) */
} rb_clip_vision_out;

/* pixels: [B, C, image_size, image_size] f32 (already normalised). */
rb_status rb_clip_vision_forward(rb_ctx *c, const rb_clip_vision *m, rb_tensor *pixels, int collect_hidden,
                                 rb_clip_vision_out *out);

/* Building blocks. embed: conv patches (row-major grid) with the class token first, plus `pos`
 * ([T, D] or [1, T, D] matching the grid; NULL = the model's own), before the pre LayerNorm ->
 * [B, T, D]. layer: encoder layer i on [B, T, D]. */
rb_tensor *rb_clip_vision_embed(rb_ctx *c, const rb_clip_vision *m, rb_tensor *pixels, rb_tensor *pos);
rb_tensor *rb_clip_vision_layer(rb_ctx *c, const rb_clip_vision *m, int i, rb_tensor *x);

#endif
