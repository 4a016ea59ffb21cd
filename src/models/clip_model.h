/* transformers' CLIPModel for scoring (CLIP-T, CLIP-R, CLIP-I): the text tower (models/clip_text.h)
 * and the vision tower (models/clip_vision.h) of one checkpoint, their projections into the joint
 * space and the temperature, in the transformers layout:
 *   config.json (a CLIPConfig: "text_config", "vision_config", "projection_dim") +
 *   model.safetensors (`text_model.*`, `vision_model.*`, `text_projection.weight` [E, Dt],
 *   `visual_projection.weight` [E, Dv], `logit_scale` []),
 * e.g. openai/clip-vit-large-patch14 (the towers' own code computes everything; this file only
 * joins them). */
#ifndef RB_MODELS_CLIP_MODEL_H
#define RB_MODELS_CLIP_MODEL_H

#include "models/clip_text.h"
#include "models/clip_vision.h"

typedef struct rb_clip_model {
    rb_clip_text text;     /* with projection (text_projection.weight) */
    rb_clip_vision vision; /* with projection (visual_projection.weight) */
    float logit_scale;     /* ln of the temperature: logits = exp(logit_scale) * cosine (ln 100 when trained) */
    void *block;           /* an in-memory model (e.g. the benchmark's random one): one rb_alloc block
                            * holding its weights, headers and layer arrays, freed by rb_clip_model_free;
                            * NULL for a loaded model */
} rb_clip_model;

/* The sizes of openai/clip-vit-large-patch14 (its config.json): text 768 wide, 12 layers, 12 heads,
 * MLP 3072, 77 positions, quick-GELU, legacy eos_token_id 2 (pool at argmax(ids)); vision 1024 wide,
 * 24 layers, 16 heads, MLP 4096, patch 14, 224 pixels; joint space 768. */
void rb_clip_model_config_vit_l14(rb_clip_text_config *text, rb_clip_vision_config *vision);

/* `dir`/config.json + `dir`/model.safetensors (a CLIPModel checkpoint; both towers must have their
 * projection, of the same width). */
rb_status rb_clip_model_load(rb_clip_model *m, const char *dir);

void rb_clip_model_free(rb_clip_model *m);

/* get_text_features: text_projection(final-LayerNormed state at the pooled position) -> [B, E], not
 * normalised. ids [B, L] integers (BOS ... EOS, padded after EOS). mask [B, L] (may be NULL): the
 * processor's attention_mask; it must be 1...1 0...0 per row, covering the pooled token, and then
 * changes nothing (attention is causal and padding follows the pooled token); other masks are
 * RB_ERR_UNSUPPORTED. */
rb_tensor *rb_clip_model_text_features(rb_ctx *c, const rb_clip_model *m, rb_tensor *ids, rb_tensor *mask);

/* get_image_features: visual_projection(post_layernorm(CLS)) -> [B, E], not normalised.
 * pixels [B, 3, S, S] as the CLIP image processor gives them. */
rb_tensor *rb_clip_model_image_features(rb_ctx *c, const rb_clip_model *m, rb_tensor *pixels);

/* CLIPModel.forward's logits_per_image [Ni, Nt] = exp(logit_scale) * normalize(img) @ normalize(txt)^T
 * from un-normalised features img [Ni, E], txt [Nt, E]. */
rb_tensor *rb_clip_model_logits_per_image(rb_ctx *c, const rb_clip_model *m, rb_tensor *img, rb_tensor *txt);

#endif
