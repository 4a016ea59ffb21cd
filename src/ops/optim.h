/* Optimizers and gradient utilities for training: Adam / AdamW and global-norm gradient clipping,
 * written to give the same float32 results as torch 1.13 on CPU (torch.optim.Adam/AdamW with the
 * default single-tensor implementation, torch.nn.utils.clip_grad_norm_).
 *
 * Parameters are leaf tensors (f32, contiguous) whose owner allocated ->grad (f32, contiguous, same
 * shape). A parameter whose ->grad is NULL at a step is skipped, as torch skips `p.grad is None`. */
#ifndef RB_OPS_OPTIM_H
#define RB_OPS_OPTIM_H

#include "core/tensor.h"

/* Scalars are doubles because torch computes them as Python floats (1 - lr*wd, lr / (1 - beta1^t), ...)
 * and only then rounds to float32; keeping them double reproduces its arithmetic exactly. */
typedef struct rb_adam_config {
    double lr, beta1, beta2, eps, weight_decay;
    int decoupled; /* 1: AdamW (p *= 1 - lr*wd before the update); 0: Adam (g += wd*p, L2 style) */
} rb_adam_config;

/* torch.optim.AdamW defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-2, decoupled 1.
 * (torch.optim.Adam's defaults differ only in weight_decay 0 and decoupled 0.) */
void rb_adam_config_init(rb_adam_config *cfg);

typedef struct rb_adam {
    rb_adam_config cfg; /* may be changed between steps (e.g. cfg.lr by a schedule) */
    int n;
    rb_tensor **params;  /* n borrowed pointers; the tensors must outlive the optimizer */
    float **exp_avg;     /* m per parameter (numel floats, zero at start) */
    float **exp_avg_sq;  /* v per parameter */
    int64_t *steps;      /* per-parameter step count, as torch's state['step'] */
    int64_t t;           /* number of rb_adam_step calls */
    void *block;         /* the one allocation behind everything above */
} rb_adam;

/* Keeps the list of parameters (each f32 and contiguous) and allocates zeroed state. */
rb_status rb_adam_init(rb_adam *opt, const rb_adam_config *cfg, int n, rb_tensor *const *params);
void rb_adam_free(rb_adam *opt);

/* One update of every parameter that has a gradient. All gradients are checked (f32, contiguous,
 * the parameter's shape) before anything is changed, so an error leaves parameters and state as
 * they were. */
rb_status rb_adam_step(rb_adam *opt);

/* Sets every parameter's gradient to zero (torch's zero_grad(set_to_none=False)). */
void rb_adam_zero_grad(rb_adam *opt);

/* Saves the state to a safetensors file (written atomically): for every parameter, keyed by its
 * ->name or else its index, tensors "<key>.exp_avg" and "<key>.exp_avg_sq" (f32, the parameter's
 * shape); metadata "format" = "relbooth-adam-v1", "n_params", "step", "<key>.step", and the config
 * ("lr", "beta1", "beta2", "eps", "weight_decay" printed with %.17g so they read back exactly;
 * "decoupled" 0/1). Keys must be unique. */
rb_status rb_adam_save(const rb_adam *opt, const char *path);

/* Loads state saved by rb_adam_save into an optimizer set up with the same parameters (same keys
 * and shapes) and the same config (every field must match exactly; set opt->cfg first). Every
 * check is done before anything is copied, so on error the optimizer is unchanged. Stepping after
 * a load gives bit-identical results to never having saved. */
rb_status rb_adam_load(rb_adam *opt, const char *path);

/* torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2): total = 2-norm of all gradients
 * together (accumulated in double; params without a gradient are skipped), then every gradient is
 * multiplied by min(max_norm / (total + 1e-6), 1) in float32 as torch does. *total_norm (may be
 * NULL) receives the total before clipping. A non-finite total is an error (RB_ERR_INVALID, the
 * gradients untouched) when error_if_nonfinite is set; otherwise the gradients are scaled as torch
 * does (by NaN for a NaN norm, by 0 for an infinite one). max_norm must be >= 0. */
rb_status rb_clip_grad_norm(int n, rb_tensor *const *params, double max_norm, int error_if_nonfinite,
                            double *total_norm);

#endif
