/* AutoencoderKL (the SDXL / SD1.x VAE), as diffusers' AutoencoderKL with DownEncoderBlock2D /
 * UpDecoderBlock2D blocks. Weights in the diffusers layout (`encoder.down_blocks.*`, current and
 * pre-0.14 attention names) or the SGM/LDM single-file layout (`encoder.down.*`, optionally under
 * `first_stage_model.`), mapped by a key table in vae.c.
 *
 * Inference only in the usual sense: the forward passes are built from recorded ops, but with a
 * tape the arena is never reset and the posterior's std is treated as a constant (gradients reach
 * the mean only). Without a tape, each block's temporaries are released as soon as its output
 * exists, so arena use is bounded by one block's working set plus the live activations. */
#ifndef RB_MODELS_VAE_H
#define RB_MODELS_VAE_H

#include "models/weights.h"
#include "ops/ops.h"

#define RB_VAE_MAX_BLOCKS 8

typedef struct rb_vae_config {
    int in_channels, out_channels, latent_channels;
    int n_blocks, block_out_channels[RB_VAE_MAX_BLOCKS];
    int layers_per_block, norm_num_groups;
    int sample_size;        /* tile size in pixels for tiled encode/decode */
    float scaling_factor;   /* not applied by encode/decode: pipelines divide latents by it */
    float shift_factor;     /* 0 when null (SD/SDXL) */
    int mid_block_add_attention, use_quant_conv, use_post_quant_conv;
    int force_upcast;       /* run in f32 even when the context asks for bf16 matmuls */
} rb_vae_config;

/* Presets for single files that come without a config.json. */
void rb_vae_config_sdxl(rb_vae_config *cfg); /* stabilityai/sdxl-vae: scaling 0.13025, sample 1024 */
void rb_vae_config_sd15(rb_vae_config *cfg); /* SD 1.x: scaling 0.18215, sample 512 */
rb_status rb_vae_config_load(rb_vae_config *cfg, const char *config_json);

typedef struct rb_vae_resnet { /* ResnetBlock2D without time embedding */
    rb_tensor *norm1_w, *norm1_b, *conv1_w, *conv1_b, *norm2_w, *norm2_b, *conv2_w, *conv2_b;
    rb_tensor *short_w, *short_b; /* 1x1 conv when in != out channels, else NULL */
} rb_vae_resnet;

typedef struct rb_vae_attn { /* single-head self-attention over H*W tokens, with GroupNorm */
    rb_tensor *norm_w, *norm_b, *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b; /* q..o weights [C, C] */
    rb_tensor views[4]; /* [C, C] views of SGM [C, C, 1, 1] conv weights */
} rb_vae_attn;

typedef struct rb_vae_mid {
    rb_vae_resnet res[2];
    rb_vae_attn attn; /* unused when !mid_block_add_attention */
} rb_vae_mid;

typedef struct rb_vae_block {
    rb_vae_resnet *res;           /* layers_per_block (encoder) or layers_per_block + 1 (decoder) */
    rb_tensor *sample_w, *sample_b; /* downsample / upsample conv, NULL in the last block */
} rb_vae_block;

typedef enum { RB_VAE_LAYOUT_DIFFUSERS = 0, RB_VAE_LAYOUT_SGM = 1, RB_VAE_LAYOUT_DIFFUSERS_LEGACY = 2 } rb_vae_layout;

typedef struct rb_vae {
    rb_vae_config cfg;
    rb_weights w;
    rb_vae_layout layout;
    const char *prefix; /* "" or "first_stage_model." */
    rb_vae_resnet *res_store;
    rb_tensor *enc_conv_in_w, *enc_conv_in_b, *enc_norm_out_w, *enc_norm_out_b, *enc_conv_out_w, *enc_conv_out_b;
    rb_vae_block enc[RB_VAE_MAX_BLOCKS];
    rb_vae_mid enc_mid;
    rb_tensor *quant_w, *quant_b, *post_quant_w, *post_quant_b; /* NULL when the config disables them */
    rb_tensor *dec_conv_in_w, *dec_conv_in_b, *dec_norm_out_w, *dec_norm_out_b, *dec_conv_out_w, *dec_conv_out_b;
    rb_vae_block dec[RB_VAE_MAX_BLOCKS]; /* diffusers order: dec[0] works at the lowest resolution */
    rb_vae_mid dec_mid;
} rb_vae;

/* `path` is a diffusers folder (config.json + diffusion_pytorch_model.safetensors) or a .safetensors
 * file in either layout. cfg NULL: config.json from the folder (or next to the file). */
rb_status rb_vae_load(rb_vae *m, const char *path, const rb_vae_config *cfg);
void rb_vae_free(rb_vae *m);
/* Tensors of the VAE's layout (under its prefix) that the loader did not use; lists up to max_print. */
int rb_vae_unused(const rb_vae *m, int max_print);

/* Activations after each stage, named like the diffusers modules (the golden `intermediate.*`
 * tensors). Collecting them keeps every activation alive (no arena reuse). */
#define RB_VAE_TRACE_MAX 32
typedef struct rb_vae_trace {
    int n;
    char names[RB_VAE_TRACE_MAX][48]; /* "encoder.down_blocks.0", "quant_conv", "decoder.conv_out", ... */
    rb_tensor *t[RB_VAE_TRACE_MAX];
} rb_vae_trace;

typedef struct rb_vae_posterior {
    rb_tensor *mean, *logvar, *std; /* [N, latent, H/f, W/f]; logvar clamped to [-30, 20] */
    rb_tensor *sample;              /* mean + std * noise, or NULL when no noise was given */
} rb_vae_posterior;

/* image [N, in, H, W] in [-1, 1] (H, W multiples of 2^(n_blocks-1)); noise [N, latent, h, w] or
 * NULL. tiled: as diffusers' enable_tiling() (only images larger than sample_size are tiled). */
rb_status rb_vae_encode(rb_ctx *c, const rb_vae *m, rb_tensor *image, rb_tensor *noise, int tiled,
                        rb_vae_trace *trace, rb_vae_posterior *out);
/* z [N, latent, h, w] (already divided by scaling_factor) -> image [N, out, h*f, w*f] (not clamped). */
rb_tensor *rb_vae_decode(rb_ctx *c, const rb_vae *m, rb_tensor *z, int tiled, rb_vae_trace *trace);

#endif
