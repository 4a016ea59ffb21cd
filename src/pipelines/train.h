/* RelationLoRA fine-tuning (`relbooth train`): DreamRelation's train.py loop on a relation dataset
 * (src/pipelines/relation_data.h) with the losses of src/pipelines/relation_loss.h.
 *
 * Stages: (1) text encoders -> prompt embeddings, pooled embedding, phrase embeddings and predicate
 * token span of every item, then freed; (2) UNet + MS-Diffusion adapter; (3) CLIP vision features of
 * every item's concept images, then the vision model is freed; (4) the VAE, which stays for the loop.
 * Per micro-batch (batch size 1): load + transform the sample, VAE-encode target and concepts
 * (latent_dist.sample() * scaling_factor), draw noise and t, resampler image tokens from the sample's
 * boxes, UNet forward with the tape, loss / (micro-batches per step), backward. Per step: clip, Adam
 * or AdamW, zero_grad, metrics line, checkpoint every N steps. docs/train.md has the details. */
#ifndef RB_PIPELINES_TRAIN_H
#define RB_PIPELINES_TRAIN_H

#include <stddef.h>
#include <stdint.h>

#include "models/lora.h"
#include "ops/optim.h"
#include "pipelines/relation_loss.h"

typedef struct rb_train_progress {
    int step, steps;          /* optimizer steps done / total */
    double loss, mse, kml, cal; /* means over the step's micro-batches (kml/cal: NaN when never active) */
    double grad_norm;         /* before clipping */
    double seconds;           /* since the start of this run (not counting a resumed run's past) */
    double eta;               /* seconds left, estimated */
} rb_train_progress;

typedef struct rb_train_params {
    const char *model;         /* diffusers SDXL folder (tokenizer(_2), text_encoder(_2), unet, vae, scheduler) */
    const char *data;          /* dataset folder (official layout) or manifest .json */
    const char *ms_adapter;    /* ms_adapter.bin / .safetensors */
    const char *image_encoder; /* CLIP vision folder */
    int resampler_dim_head;    /* 64 for the released adapter */
    float ip_scale;            /* 0.6 */
    const char *output_dir;    /* created if missing */
    int resolution;            /* dataset canvas size (1024); latents are resolution / 8 */
    int rank;                  /* LoRA rank (4) */
    float alpha;               /* LoRA alpha (= rank) */
    rb_rel_loss_config loss;
    rb_adam_config adam;
    int batch;                 /* samples per step, run as micro-batches of one */
    int accum;                 /* gradient accumulation: micro-batches per step = batch * accum */
    double max_grad_norm;      /* <= 0: no clipping */
    int max_steps;
    int checkpoint_every;      /* 0: only the final weights */
    uint64_t seed;
    const char *resume;        /* a checkpoint folder, or "latest" (the newest under output_dir), or NULL */
    int stop_after;            /* > 0: stop (as if interrupted) after this step, after its checkpoint */
    int init_b_std_x1000;      /* tests: B ~ N(0, (x/1000)^2) instead of zero so that A gets gradients at once */
    size_t arena_bytes;        /* activations (0: 12 GiB x (resolution/1024)^2, at least 512 MiB); gradients get half */
    rb_dtype compute;          /* RB_F32 (default: the reference's numbers) or RB_BF16: matrix products in bf16 with f32
                                * accumulation, forward and input gradients; LoRA weight gradients and AdamW stay f32 */
    void (*progress)(void *user, const rb_train_progress *p);
    void *user;
    volatile int *cancel;
} rb_train_params;

/* recipe "paper" (lambda_kml 1e-3 at every t, no CAL, Adam lr 1e-4 without weight decay, batch 8) or
 * "official" (train.sh: lambda_kml 0.1 for t <= 333, lambda_cal 1e-3, AdamW lr 1e-4 wd 1e-4, batch 1 x
 * accumulation 4); both: rank 4, clip 1.0, 500 steps, seed 0, adapter scale 0.6. RB_ERR_INVALID for
 * another name. Fields may be overridden afterwards. */
rb_status rb_train_params_init(rb_train_params *p, const char *recipe);

typedef struct rb_train_result {
    int steps;               /* optimizer steps done in total (including a resumed run's) */
    int resumed_from;        /* step of the checkpoint resumed, or 0 */
    double final_loss;
    double seconds;
    char lora_path[4096];    /* output_dir/pytorch_lora_weights.safetensors (empty when stopped early) */
    char last_checkpoint[4096];
} rb_train_result;

rb_status rb_train(const rb_train_params *p, rb_train_result *res);

/* RelationLoRA's pairs (what trains): rank r, alpha, on attn2.to_q/to_k/to_v/to_out.0 of every
 * transformer block, in the UNet's attention order, added zero-initialised to `set` (rb_lora_init'ed). */
rb_status rb_train_lora_pairs(rb_lora_set *set, const rb_unet *unet, int rank, float alpha);


#endif
