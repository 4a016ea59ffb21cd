/* CLIPSelf self-distillation of the local image encoder (paper section 3.4.3 and appendix 6.1;
 * CLIPSelf, Wu et al. ICLR 2024, src/training/clipself.py + the grid_distill dataset).
 *
 * A student open_clip ViT, initialised from the teacher checkpoint, gives dense features at the
 * student resolution (rb_local_dense's path: last block without attention, class token dropped,
 * ln_post), which CLIPSelf then projects with the tower's `proj` and L2-normalises; roi_align over an
 * N x N grid of boxes (rb_local_pool) gives one feature per box. The frozen teacher embeds each box's
 * image crop (resized to its input size) with its ordinary image path (class token -> ln_post ->
 * proj). loss = 1 - cos(student box feature, teacher crop embedding), averaged over boxes and images;
 * AdamW on the student's parameters. The result is an open_clip-layout safetensors (`visual.*`) plus
 * open_clip_config.json beside it, which rb_local_encoder_load reads as `--local-encoder`.
 * docs/distill.md has the details and what differs from CLIPSelf. */
#ifndef RB_PIPELINES_DISTILL_H
#define RB_PIPELINES_DISTILL_H

#include "core/rng.h"
#include "io/image.h"
#include "models/local_tokens.h"
#include "ops/optim.h"

typedef struct rb_distill_progress {
    int step, steps;
    double loss;    /* 1 - mean cosine of this step (before the update) */
    int grid;       /* N of this step's N x N boxes */
    double seconds; /* since the start */
} rb_distill_progress;

typedef void (*rb_distill_progress_fn)(void *user, const rb_distill_progress *p);

typedef struct rb_distill_params {
    const char *teacher;        /* open_clip checkpoint (safetensors, state dict .pt, epoch_N.pt) */
    const char *teacher_config; /* open_clip model json; NULL: open_clip_config.json next to it, else ViT-bigG-14 */
    const char *data;           /* a folder of images (PNG/JPEG/WebP by content; other files are skipped) */
    const char *output;         /* output .safetensors; open_clip_config.json is written in its folder */
    int image_size;             /* student input, square, a multiple of the patch size (default 896, as DreamRelation runs it) */
    int grid_min, grid_max;     /* N drawn uniformly in [grid_min, grid_max] per step (default 4..4, the pooling DreamRelation uses) */
    int batch;                  /* images per step (default 2, the paper's batch per GPU) */
    int steps;                  /* optimizer steps (default 1000) */
    int train_blocks;           /* the last K transformer blocks train (and ln_post, proj); <= 0 or >= layers: all,
                                   which also trains conv1 and ln_pre (default all) */
    rb_adam_config adam;        /* AdamW lr 1e-5, weight decay 0.1 (appendix 6.1), betas 0.9/0.999, eps 1e-8 */
    uint64_t seed;              /* image order and grid draws (default 0) */
    size_t arena_bytes;         /* activations (default 2 GiB); the tape's gradients get as much again */
    rb_distill_progress_fn progress;
    void *user;
} rb_distill_params;

void rb_distill_params_init(rb_distill_params *p);

/* One parameter of the student: an f32 copy we own (the model's pointer is redirected to it), its
 * gradient when it trains, and its open_clip key. */
typedef struct rb_distill_param {
    char name[96];
    rb_tensor t, g;
    int trains;
} rb_distill_param;

typedef struct rb_distill {
    rb_distill_params p;
    rb_local_encoder teacher, student; /* teacher: mapped, frozen; student: parameters redirected to `par` */
    rb_distill_param *par;
    int n_par;
    rb_tensor *qkv_grads;         /* [layers * 6] row views of the in_proj gradients (q/k/v views' ->grad) */
    rb_tensor **train;            /* the trained parameters, for the optimizer */
    int n_train;
    int64_t n_trained_values;
    rb_adam opt;
    char **files;                 /* the data folder's images, sorted */
    int n_files;
    rb_rng rng;
    rb_arena work, grads;
    rb_tape tape;
    char config_text[8192];       /* the teacher's open_clip json, copied next to the output */
    int step;
} rb_distill;

/* Loads teacher and student, makes the student's parameters trainable copies, lists the data folder
 * (skipped when p->data is NULL: rb_distill_loss still works on images the caller passes). */
rb_status rb_distill_open(rb_distill *d, const rb_distill_params *p);
void rb_distill_close(rb_distill *d);

/* The loss on `n` images with a `grid` x `grid` box grid. with_grad: also accumulates (+=) the
 * gradients of the trained parameters. *loss gets 1 - mean cosine computed in double from the pooled
 * student features and the teacher embeddings. The work arenas are reset afterwards. */
rb_status rb_distill_loss(rb_distill *d, const rb_image *images, int n, int grid, int with_grad, double *loss);

/* One optimizer step on a batch drawn from the data folder; *loss (may be NULL) gets its loss. */
rb_status rb_distill_step(rb_distill *d, double *loss, int *grid);

/* Writes the student (every `visual.*` tensor, f32) to `path` and open_clip_config.json beside it,
 * both atomically. */
rb_status rb_distill_save(const rb_distill *d, const char *path);

/* open, p->steps steps with progress, save to p->output, close. final_loss may be NULL. */
rb_status rb_distill_run(const rb_distill_params *p, double *final_loss);

#endif
