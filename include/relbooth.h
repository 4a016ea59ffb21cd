/* relbooth: relation-aware customized image generation (DreamRelation) in C11.
 *
 * Public C API. Library functions return an rb_status; on failure a one-line message naming the
 * file or argument and the problem is available from rb_last_error() (per thread). The library
 * never aborts the host process on bad input or when memory runs out.
 */
#ifndef RELBOOTH_H
#define RELBOOTH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RELBOOTH_VERSION "0.1.0"

typedef enum rb_status {
    RB_OK = 0,
    RB_ERR_INVALID = 1,     /* bad argument or inconsistent shapes/dtypes */
    RB_ERR_IO = 2,          /* open/read/write/rename failed */
    RB_ERR_FORMAT = 3,      /* malformed or hostile file contents */
    RB_ERR_OOM = 4,         /* allocation failed or memory budget exceeded */
    RB_ERR_UNSUPPORTED = 5, /* valid input we do not handle (dtype, op, codec) */
    RB_ERR_CANCELLED = 6,   /* a cancel callback asked us to stop */
    RB_ERR_INTERNAL = 7,    /* a library bug or a failing backend (oneDNN) */
} rb_status;

/* Name of a status ("format error", ...). */
const char *rb_status_str(rb_status s);
/* Message of the last error on this thread ("" if none). */
const char *rb_last_error(void);
void rb_clear_error(void);

/* Threads used by the CPU kernels (OpenMP). n <= 0 means all cores. */
void rb_set_num_threads(int n);
int rb_get_num_threads(void);

/* Process-wide budget, in bytes, for memory that relbooth allocates for tensors and arenas
 * (0 = unlimited; default from RELBOOTH_MEM_LIMIT, e.g. "20G"). Requests past it fail with
 * RB_ERR_OOM instead of letting the kernel kill the process. */
void rb_set_mem_limit(size_t bytes);
size_t rb_get_mem_limit(void);
size_t rb_mem_in_use(void);
size_t rb_mem_peak(void);

/* ---- Generation: "load once, generate many" (docs/api.md, docs/api-example.c) ----------------
 * Structs are plain data: call the *_init() function for the defaults, then set fields. Strings are
 * copied by rb_pipeline_open; a request's strings need only live for its rb_pipeline_generate call. */

#define RB_API_MAX_LORAS 8
#define RB_API_MAX_SUBJECTS 8

typedef struct rb_pipeline rb_pipeline;

typedef struct rb_pipeline_lora {
    const char *path; /* pytorch_lora_weights.safetensors (diffusers, PEFT or kohya keys) */
    float scale;      /* 1.0 */
} rb_pipeline_lora;

typedef struct rb_pipeline_config {
    const char *model;            /* SDXL diffusers folder, or one SGM checkpoint file (required) */
    const char *tokenizers_dir;   /* single file only: folder with tokenizer/ and tokenizer_2/ */
    const char *model_config_dir; /* single file only, optional: {unet,vae,text_encoder,text_encoder_2}/config.json */
    const char *ms_adapter;       /* MS-Diffusion ms_adapter.bin / .safetensors, or NULL (no subjects) */
    const char *image_encoder;    /* CLIP vision folder (config.json, model.safetensors, preprocessor_config.json) */
    int resampler_dim_head;       /* 64 (the released adapter) */
    const char *local_encoder;    /* DreamRelation's epoch_6.pt or NULL (local tokens off) */
    const char *local_encoder_config; /* open_clip json or NULL */
    rb_pipeline_lora loras[RB_API_MAX_LORAS]; /* RelationLoRA(s), attached to the UNet */
    int n_loras;
    int bf16;                     /* 1: bf16 matrix products (f32 accumulation); 0: f32 */
    size_t work_bytes;            /* activation arena per call (0: 6 GiB; 1024x1024 needs ~3) */
    int keep_models;              /* 1: keep text encoders, adapter, UNet + LoRAs and VAE loaded between
                                     calls (fast, peak = their sum); 0: load them in stages on every call
                                     (peak = the largest stage) */
} rb_pipeline_config;

typedef struct rb_api_subject {
    const char *image;  /* reference photo (PNG/JPEG/WebP) */
    const char *phrase; /* the prompt's word for it: "cat" */
    float box[4];       /* x0, y0, x1, y1 in [0, 1] of the output image */
} rb_api_subject;

typedef enum { RB_API_EULER = 0, RB_API_EULER_A = 1, RB_API_DPMPP_2M = 2 } rb_api_sampler;
typedef enum { RB_API_NOISE_CUDA = 0, RB_API_NOISE_CPU = 1 } rb_api_noise;

typedef struct rb_generate_request {
    const char *prompt;          /* required */
    const char *negative_prompt; /* default "monochrome, lowres, bad anatomy, worst quality, low quality";
                                    NULL: zero embeddings */
    rb_api_subject subjects[RB_API_MAX_SUBJECTS]; /* need the config's ms_adapter and image_encoder */
    int n_subjects;
    int width, height;    /* 1024 x 1024 (multiples of 8) */
    int steps;            /* 30 */
    float guidance;       /* 5.0 */
    float ip_scale;       /* 0.6: weight of the subjects' image tokens */
    uint64_t seed;        /* 42 */
    rb_api_sampler sampler; /* Euler (DreamRelation's) */
    int karras;           /* Karras sigmas (DPM-Solver++) */
    rb_api_noise noise;   /* torch.Generator("cuda")-compatible noise (the official pipelines on a GPU) */
    int batch_count;      /* images, one after another from the same generator: 1 */
    void (*progress)(void *user, const char *stage, int done, int total); /* "text", "image", "denoise", "decode" */
    int (*cancel)(void *user); /* polled every step; non-zero stops with RB_ERR_CANCELLED */
    void *user;
} rb_generate_request;

typedef struct rb_image_out {
    int width, height, channels; /* channels = 3 (RGB) */
    uint8_t *data;               /* height * width * channels bytes, row-major, interleaved */
} rb_image_out;

void rb_pipeline_config_init(rb_pipeline_config *c);
void rb_generate_request_init(rb_generate_request *r);
/* Checks the config and its files; with keep_models the models load on the first generate call and stay. */
rb_status rb_pipeline_open(const rb_pipeline_config *c, rb_pipeline **out);
/* images[r->batch_count] receive the images (free each with rb_image_out_free); on failure all are empty. */
rb_status rb_pipeline_generate(rb_pipeline *p, const rb_generate_request *r, rb_image_out *images);
void rb_pipeline_close(rb_pipeline *p); /* NULL is fine */
void rb_image_out_free(rb_image_out *img);
/* Writes an 8-bit PNG (channels 1, 3 or 4); `parameters` (or NULL) goes into a "parameters" text chunk. */
rb_status rb_write_png(const char *path, const rb_image_out *img, const char *parameters);

#ifdef __cplusplus
}
#endif
#endif
