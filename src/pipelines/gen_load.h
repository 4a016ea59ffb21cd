/* Where the components of a generation run come from (internal to src/pipelines/generate.c).
 *
 * p->model a diffusers SDXL folder: every component from its subfolder (tokenizer/, tokenizer_2/,
 * text_encoder/, text_encoder_2/, unet/, vae/, scheduler/).
 *
 * p->model a single SDXL checkpoint file (.safetensors in the SGM layout, as published by Stability
 * and most fine-tunes): UNet `model.diffusion_model.*`, VAE `first_stage_model.*`, CLIP-L
 * `conditioner.embedders.0.transformer.*`, OpenCLIP bigG `conditioner.embedders.1.model.*`.
 * Such files hold no tokenizers (diffusers' from_single_file fetches them from the base repository),
 * so p->tokenizers_dir must name a folder with tokenizer/ and tokenizer_2/ (e.g. a download of
 * stabilityai/stable-diffusion-xl-base-1.0 without its weights); its scheduler/scheduler_config.json
 * is used when present, else SDXL's default (Euler discrete, scaled-linear betas 0.00085..0.012,
 * leading spacing, steps_offset 1). Configs come from the tensor shapes (UNet, text encoders) and
 * the SDXL VAE preset, unless p->model_config_dir has {unet,vae,text_encoder,text_encoder_2}/config.json
 * (each optional): needed for models whose head counts or VAE sizes the shapes do not determine. */
#ifndef RB_PIPELINES_GEN_LOAD_H
#define RB_PIPELINES_GEN_LOAD_H

#include "models/clip_text.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipelines/generate.h"
#include "sched/scheduler.h"
#include "text/clip_tokenizer.h"

/* 1 when p->model is a regular file (a single checkpoint), 0 for a folder (or a missing path). */
int rb_gen_single_file(const rb_gen_params *p);
/* Parameter checks that depend on the model's kind. */
rb_status rb_gen_check_sources(const rb_gen_params *p);

rb_status rb_gen_load_sched_config(const rb_gen_params *p, rb_sched_config *sc);
rb_status rb_gen_load_tokenizers(const rb_gen_params *p, rb_clip_tokenizer **tok1, rb_clip_tokenizer **tok2);
rb_status rb_gen_load_text_encoders(const rb_gen_params *p, rb_clip_text *te1, rb_clip_text *te2);
rb_status rb_gen_unet_config(const rb_gen_params *p, rb_unet_config *cfg);
rb_status rb_gen_load_unet(const rb_gen_params *p, rb_unet *m);
rb_status rb_gen_load_vae(const rb_gen_params *p, rb_vae *m);

#endif
