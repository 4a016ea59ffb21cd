/* Training state on disk: checkpoints (LoRA weights, optimizer state, generator state, step, data
 * order) written into a temporary folder and renamed into place, metrics.jsonl and the loss-curve PNG. */
#ifndef RB_PIPELINES_TRAIN_IO_H
#define RB_PIPELINES_TRAIN_IO_H

#include "core/rng.h"
#include "models/lora.h"
#include "ops/optim.h"
#include "pipelines/train.h"

typedef struct rb_train_state {
    int step;          /* optimizer steps done */
    int epoch;         /* epochs started */
    int pos;           /* next position in order[] */
    int n_order;
    int *order;        /* the current epoch's permutation of the items */
    rb_rng rng;        /* noise, timesteps, VAE sampling, shuffles */
    uint64_t data_rng; /* the dataset's transform generator */
} rb_train_state;

rb_status rb_train_state_init(rb_train_state *st, int n_items, uint64_t seed, uint64_t data_rng);
void rb_train_state_free(rb_train_state *st);

/* <out>/checkpoint-<step>/{pytorch_lora_weights.safetensors, optimizer.safetensors, state.safetensors},
 * built in <out>/.checkpoint-<step>.tmp and renamed; `dir` receives the folder. */
rb_status rb_train_checkpoint_save(const char *out, const rb_lora_set *lora, const rb_adam *opt,
                                   const rb_train_state *st, char *dir, size_t cap);
/* Loads a checkpoint into a set with the same pairs, an optimizer over its tensors and the state. */
rb_status rb_train_checkpoint_load(const char *dir, rb_lora_set *lora, rb_adam *opt, rb_train_state *st);
/* which: a folder, or "latest" = the checkpoint-<N> with the largest N under out. */
rb_status rb_train_find_checkpoint(const char *out, const char *which, char *dir, size_t cap);

/* One JSON line per step in <out>/metrics.jsonl; truncate keeps the lines with step <= `step`. */
rb_status rb_train_metrics_append(const char *out, const rb_train_progress *p, double lr);
rb_status rb_train_metrics_truncate(const char *out, int step);
/* <out>/loss_curve.png: the loss per step from metrics.jsonl as a line plot. */
rb_status rb_train_loss_curve(const char *out);

#endif
