/* DINO backbones for the DINO image-similarity metric, in the transformers layout (config.json +
 * model.safetensors, keys `embeddings.*`, `encoder.layer.{i}.*`, `layernorm.*`):
 *   ViTModel (DINO v1, e.g. facebook/dino-vits16, loaded without the pooling layer) and
 *   Dinov2Model (e.g. facebook/dinov2-small: LayerScale, position grid resampled to the input).
 * The image embedding is the final-LayerNormed [CLS] token. */
#ifndef RB_MODELS_DINO_H
#define RB_MODELS_DINO_H

#include "models/weights.h"
#include "ops/ops.h"

typedef enum { RB_DINO_VIT = 0, RB_DINO_V2 } rb_dino_kind;

typedef struct rb_dino_config {
    rb_dino_kind kind;
    int hidden, intermediate, heads, layers, image_size, patch_size, channels, qkv_bias;
    float layer_norm_eps;
} rb_dino_config;

typedef struct rb_dino_layer {
    rb_tensor *ln1_w, *ln1_b;                          /* layernorm_before / norm1 */
    rb_tensor *q_w, *q_b, *k_w, *k_b, *v_w, *v_b;      /* [D, D], [D] (biases NULL without qkv_bias) */
    rb_tensor *o_w, *o_b;                              /* attention.output.dense */
    rb_tensor *ls1, *ls2;                              /* DINOv2 LayerScale [D] (NULL for ViT) */
    rb_tensor *ln2_w, *ln2_b;                          /* layernorm_after / norm2 */
    rb_tensor *fc1_w, *fc1_b, *fc2_w, *fc2_b;          /* [F, D], [F], [D, F], [D] */
} rb_dino_layer;

typedef struct rb_dino {
    rb_dino_config cfg;
    rb_weights w;
    rb_tensor *patch_w, *patch_b; /* [D, C, p, p], [D] */
    rb_tensor *cls_token;         /* [1, 1, D] */
    rb_tensor *mask_token;        /* DINOv2 [1, D]: masked-image-modelling only, loaded but unused here */
    rb_tensor *pos_emb;           /* [1, 1 + (image_size/p)^2, D] */
    rb_dino_layer *layers;
    rb_tensor *ln_w, *ln_b;       /* final layernorm */
} rb_dino;

/* `dir`/config.json (model_type "vit" or "dinov2") + `dir`/model.safetensors. */
rb_status rb_dino_load(rb_dino *m, const char *dir);
void rb_dino_free(rb_dino *m);

typedef struct rb_dino_out {
    rb_tensor *pos;         /* [1, T, D] position embeddings used (resampled when the grid differs) */
    rb_tensor *embeddings;  /* [B, T, D] patches + [CLS] + positions (T = 1 + grid_h * grid_w) */
    rb_tensor *last_hidden; /* [B, T, D] after the final LayerNorm */
    rb_tensor *cls;         /* [B, D] last_hidden[:, 0]: the DINO image embedding */
} rb_dino_out;

/* pixels [B, C, H, W] f32 (already normalised); H, W >= patch. For a grid other than the
 * checkpoint's (always possible for DINOv2; for ViT this is interpolate_pos_encoding=True) the
 * position embeddings are resampled as transformers 4.36 does. */
rb_status rb_dino_forward(rb_ctx *c, const rb_dino *m, rb_tensor *pixels, rb_dino_out *out);

/* Position embeddings [1, 1 + gh*gw, D] for an H x W input (gh = H / p, gw = W / p): the
 * checkpoint's when the patch count matches it and H == W (transformers' test), else the [CLS] entry followed by the grid resampled with
 * F.interpolate(bicubic, align_corners=False, scale_factor=((gh + 0.1) / n, (gw + 0.1) / n)) (n =
 * checkpoint grid side). Not recorded on the tape (a frozen parameter). The +0.1 makes the output size floor(gh + 0.1) = gh, and torch then uses the
 * given scale factor, so source = (i + 0.5) * n / (gh + 0.1) - 0.5, not (i + 0.5) * n / gh - 0.5. */
rb_tensor *rb_dino_position_embeddings(rb_ctx *c, const rb_dino *m, int64_t H, int64_t W);

#endif
