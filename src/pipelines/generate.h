/* Text-to-image with SDXL, and relation-aware customized generation (DreamRelation = MS-Diffusion's
 * identity injection + RelationLoRA [+ local tokens]): the whole run from a diffusers SDXL folder, or
 * a single SDXL checkpoint file plus its tokenizers, to images. Models are loaded in stages and released when their stage is done (text encoders, then
 * the image encoder and resampler, then the UNet, then the VAE), so peak memory is the largest
 * stage, not the sum. With no subjects it is plain SDXL (+ LoRA). */
#ifndef RB_PIPELINES_GENERATE_H
#define RB_PIPELINES_GENERATE_H

#include <stdint.h>

#include "core/tensor.h"
#include "io/image.h"
#include "sched/scheduler.h"

#define RB_MAX_SUBJECTS 8
#define RB_MAX_LORAS 8

typedef struct rb_subject {
    const char *image;  /* reference photo (PNG/JPEG/WebP) */
    const char *phrase; /* "cat" */
    float box[4];       /* x0, y0, x1, y1 in [0, 1] of the output image */
} rb_subject;

typedef struct rb_lora_ref {
    const char *path;
    float scale;
} rb_lora_ref;

/* Initial noise: torch.Generator("cuda") (the default of the official pipelines on a GPU) or the CPU one. */
typedef enum { RB_NOISE_CUDA = 0, RB_NOISE_CPU = 1 } rb_noise;

typedef struct rb_gen_step {
    int step, steps;
    float timestep;
    const rb_tensor *unet_sample;    /* [2B, 4, h, w] UNet input (scaled), uncond rows first */
    const rb_tensor *noise_pred;     /* [2B, 4, h, w] raw UNet output */
    const rb_tensor *context;        /* [2B, L, D] encoder_hidden_states */
    const rb_tensor *latents;        /* [B, 4, h, w] after the scheduler step */
} rb_gen_step;

/* What a run measured (filled when rb_gen_params.report is set): wall seconds per stage, each including
 * the loading of its models, and the prompt's token count before CLIP's 77-token truncation. */
typedef struct rb_gen_report {
    double text_s;    /* tokenizers + text encoders + prompt / negative prompt / phrase embeddings */
    double image_s;   /* adapter + image encoder (+ local encoder) + resampler; 0 without subjects */
    double unet_s;    /* UNet load + LoRA attach */
    double denoise_s; /* every denoising step of every image */
    double step_s;    /* mean seconds per UNet step (one CFG call of two rows + the scheduler step) */
    double decode_s;  /* VAE load + decode of every image */
    double total_s;
    int steps_run;
    int prompt_tokens;  /* the prompt's CLIP-L tokens with BOS/EOS, before truncation */
    int prompt_dropped; /* tokens cut off by the 77-token limit (0 if it fits) */
} rb_gen_report;
/* Models kept loaded between rb_generate calls (the C API's keep_models: include/relbooth.h,
 * src/pipelines/api.c). Without it every run loads its models in stages and releases them. */
typedef struct rb_gen_models rb_gen_models;
rb_status rb_gen_models_new(rb_gen_models **out);
void rb_gen_models_free(rb_gen_models *m);

typedef struct rb_gen_params {
    const char *model; /* diffusers SDXL folder (model_index.json, unet/, vae/, text_encoder(_2)/, tokenizer(_2)/),
                        * or a single SDXL checkpoint file (SGM layout; see pipelines/gen_load.h) */
    const char *tokenizers_dir;   /* single file only (required there): folder with tokenizer/ and tokenizer_2/
                                   * (and optionally scheduler/scheduler_config.json; else SDXL's default).
                                   * Real single files hold no tokenizers: diffusers' from_single_file
                                   * fetches them from the base repository too */
    const char *model_config_dir; /* single file only (optional): {unet,vae,text_encoder,text_encoder_2}/config.json
                                   * overriding the configs detected from the tensor shapes / the SDXL VAE
                                   * preset (for models whose head counts the shapes do not give) */
    const char *prompt;
    const char *negative_prompt; /* NULL: zero embeddings (SDXL's force_zeros_for_empty_prompt) */
    int width, height, steps;
    float guidance;
    uint64_t seed;
    rb_noise noise;
    rb_sampler sampler;
    int karras;      /* Karras sigmas (DPM-Solver++) */
    int batch_count; /* images, one after another from the same generator */
    rb_lora_ref loras[RB_MAX_LORAS];
    int n_loras;
    /* subjects: MS-Diffusion identity injection */
    const char *ms_adapter;       /* ms_adapter.bin or .safetensors */
    const char *image_encoder;    /* CLIP vision folder (config.json, model.safetensors, preprocessor_config.json) */
    int resampler_dim_head;       /* 64 for the released adapter */
    int ref_resize;               /* > 0: references are resized to this square first (DreamRelation: 512; MS-Diffusion: 0) */
    const char *local_encoder;    /* DreamRelation's CLIPSelf checkpoint (epoch_6.pt) or NULL: local tokens off */
    const char *local_encoder_config; /* open_clip json, or NULL (next to the checkpoint, else ViT-bigG-14) */
    int local_pool;               /* N: N x N local tokens per subject (4) */
    int official_pooling;         /* 1: the released code's pooling (every subject from image 0) */
    int auto_layout;              /* 1: MS-Diffusion's automatic layout: from auto_layout_start kept text-attention
                                     maps on, each subject's region comes from its phrase's attention, not its box */
    int auto_layout_start;        /* 5 */
    float auto_layout_threshold;  /* 0.5 */
    float ip_scale;               /* gamma, 0.6 */
    rb_subject subjects[RB_MAX_SUBJECTS];
    int n_subjects;
    rb_dtype compute;             /* RB_F32 or RB_BF16 matrix products */
    size_t arena_bytes;           /* working memory for activations (0: 6 GiB; 1024x1024 SDXL needs ~3) */
    const float *initial_latents; /* tests: use these [1, 4, h, w] instead of the generator's noise */
    void (*on_step)(void *user, const rb_gen_step *s); /* after every step (for tests and previews) */
    void (*progress)(void *user, const char *stage, int done, int total);
    void *user;
    volatile int *cancel; /* set to non-zero to stop at the next step (RB_ERR_CANCELLED) */
    void (*warn)(void *user, const char *msg); /* one-line warnings (long prompt, LoRA keys ignored); NULL: none */
    rb_gen_report *report;                     /* NULL, or filled with timings and token counts */
    rb_gen_models *models; /* NULL: staged loading; else the text encoders, adapter, UNet + LoRAs and VAE are
                            * loaded into it once and kept (every call must name the same model files and
                            * LoRAs; the image and local encoders are still loaded per call) */
} rb_gen_params;

/* The official DreamRelation defaults: 1024x1024, 30 Euler steps, guidance 5.0, gamma 0.6, seed 42,
 * CUDA-compatible noise, negative prompt "monochrome, lowres, bad anatomy, worst quality, low quality". */
void rb_gen_params_init(rb_gen_params *p);
extern const char *const rb_default_negative_prompt;

/* Runs the pipeline; images[batch_count] receive 8-bit RGB images (free with rb_image_free). */
rb_status rb_generate(const rb_gen_params *p, rb_image *images);

/* The generation parameters as one line of text (for the PNG "parameters" chunk). */
void rb_gen_params_describe(const rb_gen_params *p, uint64_t seed, char *buf, size_t n);

#endif
