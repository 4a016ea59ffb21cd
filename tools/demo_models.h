/* `relbooth demo`'s tiny random-weight model set (tools/demo_models.c). */
#ifndef RB_TOOLS_DEMO_MODELS_H
#define RB_TOOLS_DEMO_MODELS_H

#include <stdint.h>

#include "core/tensor.h"

#define DEMO_PHRASE_DIM 16 /* text_encoder (CLIP-L-like) width: the resampler's phrase embeddings */
#define DEMO_VISION_DIM 32 /* image encoder width */
#define DEMO_RESAMPLER_DEPTH 2
#define DEMO_RESAMPLER_DIM_HEAD 8

/* Writes into `out`: tiny-sdxl/ (a diffusers SDXL folder), image_encoder/, ms_adapter.bin,
 * pytorch_lora_weights.safetensors. Deterministic for a seed. */
rb_status rb_demo_write_models(const char *out, uint64_t seed);

/* ms_adapter.bin as MS-Diffusion's torch.save writes it: {"image_proj": OrderedDict, "ms_adapter":
 * OrderedDict, "dummy_image_tokens": Parameter}, from flat names "image_proj.<k>", "ms_adapter.<k>",
 * "dummy_image_tokens". */
rb_status rb_demo_write_adapter(const char *path, int n, const char *const *names, const rb_tensor *const *ts);

#endif
