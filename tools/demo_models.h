/* Random-weight model sets in the official on-disk layouts (tools/demo_models.c): `relbooth demo`'s
 * tiny one, and the full-size SDXL + MS-Diffusion + RelationLoRA set of `relbooth bench generate`. */
#ifndef RB_TOOLS_DEMO_MODELS_H
#define RB_TOOLS_DEMO_MODELS_H

#include <stdint.h>

#include "core/tensor.h"

#define DEMO_PHRASE_DIM 16 /* text_encoder (CLIP-L-like) width: the resampler's phrase embeddings */
#define DEMO_VISION_DIM 32 /* image encoder width */
#define DEMO_RESAMPLER_DEPTH 2
#define DEMO_RESAMPLER_DIM_HEAD 8

typedef struct rb_demo_opts {
    int full;      /* 0: the demo's tiny models, f32, torch CPU randn (deterministic for a seed);
                    * 1: full size (SDXL base, CLIP ViT-bigG/14 vision, MS-Diffusion's resampler), matrices
                    *    bf16 from a parallel hash, norms/biases f32, written tensor by tensor (streaming) */
    uint64_t seed;
    const char *tokenizer_dir; /* full: a folder with tokenizer/ and tokenizer_2/ (vocab.json, merges.txt) to
                                * copy; NULL: the demo's byte-level vocabulary (the text encoders still have
                                * CLIP's 49408 rows) */
    /* called after every tensor: bytes of `file` written so far and its total */
    void (*progress)(void *user, const char *file, double done, double total);
    void *user;
} rb_demo_opts;

/* Writes into `out`: <sdxl>/ (a diffusers SDXL folder: "tiny-sdxl", or "sdxl" when full), image_encoder/,
 * ms_adapter.bin, pytorch_lora_weights.safetensors (rank 4). Deterministic for a seed. */
rb_status rb_demo_write_models(const char *out, uint64_t seed);
rb_status rb_demo_write_models_opts(const char *out, const rb_demo_opts *o);

/* ms_adapter.bin as MS-Diffusion's torch.save writes it: {"image_proj": OrderedDict, "ms_adapter":
 * OrderedDict, "dummy_image_tokens": Parameter}, from flat names "image_proj.<k>", "ms_adapter.<k>",
 * "dummy_image_tokens". */
rb_status rb_demo_write_adapter(const char *path, int n, const char *const *names, const rb_tensor *const *ts);

/* A 128x128 PNG of a drawn subject: a cat-like (bear = 0) or bear-like (bear = 1) head (tools/cmd_demo.c). */
rb_status rb_demo_draw_subject(const char *path, int bear);

/* splitmix64 of (seed, i) -> uniform in [-1, 1): the random weights of the full-size sets (also bench
 * unet/vae/text's), parallel and independent of the thread count. */
float rb_demo_hash_uniform(uint64_t seed, uint64_t i);

#endif
