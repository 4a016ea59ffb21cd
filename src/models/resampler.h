/* MS-Diffusion's grounding resampler (msdiffusion/models/projection.py, copied verbatim by
 * DreamRelation): per subject, 16 queries initialised from the phrase embedding and a Fourier
 * embedding of the box, refined by Perceiver attention over the image encoder's tokens, projected to
 * the UNet's cross-attention width. Weights: the `image_proj` dict of ms_adapter.bin (or the same
 * keys in safetensors). */
#ifndef RB_MODELS_RESAMPLER_H
#define RB_MODELS_RESAMPLER_H

#include "models/weights.h"
#include "ops/ops.h"

typedef struct rb_resampler_config {
    int dim, depth, dim_head, heads, num_queries, embedding_dim, output_dim, ff_mult;
    int phrase_embeddings_dim, fourier_freqs;
} rb_resampler_config;

typedef struct rb_perceiver_layer {
    rb_tensor *norm1_w, *norm1_b, *norm2_w, *norm2_b, *to_q, *to_kv, *to_out; /* attention */
    rb_tensor *ff_norm_w, *ff_norm_b, *ff1, *ff2;                             /* feed-forward */
} rb_perceiver_layer;

typedef struct rb_resampler {
    rb_resampler_config cfg;
    rb_tensor *grounding_latents; /* [1, Q, dim] used when grounding is dropped */
    rb_tensor *latent_proj0_w, *latent_proj0_b, *latent_proj2_w, *latent_proj2_b, *latent_norm_w, *latent_norm_b;
    rb_tensor *proj_in_w, *proj_in_b, *attention_norm_w, *attention_norm_b;
    rb_tensor *proj_out_w, *proj_out_b, *norm_out_w, *norm_out_b;
    rb_perceiver_layer *layers;
} rb_resampler;

/* Sizes are read from the weight shapes (heads = dim / dim_head, dim_head given: 64 in the official
 * model); `prefix` is "image_proj." for ms_adapter.bin. */
rb_status rb_resampler_load(rb_resampler *r, rb_weights *w, const char *prefix, int dim_head);
void rb_resampler_free(rb_resampler *r);

/* x: [n, T, embedding_dim] image tokens (CLIP hidden_states[-2], plus local tokens),
 * boxes: [n, 4] (x0, y0, x1, y1 in [0, 1]), phrases: [n, phrase_embeddings_dim], drop: n flags (1 =
 * use the learned grounding latents) or NULL -> [n, num_queries, output_dim] */
rb_tensor *rb_resampler_forward(rb_ctx *c, const rb_resampler *r, rb_tensor *x, const float *boxes,
                                rb_tensor *phrases, const int *drop);

/* Fourier box embedding: out[k*8 + s*4 + j] = (s ? cos : sin)(100^(k/F) * box[j]), 8F values. */
void rb_fourier_boxes(float *out, const float *box, int n_freqs);

#endif
