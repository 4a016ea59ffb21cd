/* Noise schedules and samplers of diffusers, reproduced with the same float32/float64 steps so that
 * whole trajectories match (golden/schedulers): DDPM (betas, alphas_cumprod, add_noise),
 * EulerDiscrete, EulerAncestralDiscrete, and DPM-Solver++ 2M with and without Karras sigmas. */
#ifndef RB_SCHED_SCHEDULER_H
#define RB_SCHED_SCHEDULER_H

#include <stdint.h>

#include "core/status.h"

typedef enum { RB_SPACING_LEADING = 0, RB_SPACING_TRAILING, RB_SPACING_LINSPACE } rb_spacing;

typedef enum {
    RB_SAMPLER_EULER = 0,
    RB_SAMPLER_EULER_A,
    RB_SAMPLER_DPMPP_2M,
    RB_SAMPLER_COUNT
} rb_sampler;

/* The fields of a diffusers scheduler_config.json that SDXL-family checkpoints use. */
typedef struct rb_sched_config {
    int num_train_timesteps; /* 1000 */
    double beta_start, beta_end;
    int scaled_linear;       /* beta_schedule "scaled_linear" (1) or "linear" (0) */
    int steps_offset;        /* 1 for SDXL */
    rb_spacing spacing;      /* "leading" for SDXL */
    int karras;              /* use_karras_sigmas */
    int epsilon;             /* prediction_type "epsilon" (1); "v_prediction" is refused for now */
} rb_sched_config;

void rb_sched_config_init(rb_sched_config *c); /* SDXL base defaults */
/* Reads scheduler_config.json; unknown keys are ignored, unsupported values are errors. */
rb_status rb_sched_config_load(rb_sched_config *c, const char *path);

/* sampler names: "euler", "euler_a", "dpmpp_2m" (Karras from the config or rb_sched_config.karras) */
int rb_sampler_from_name(const char *name, rb_sampler *out);
const char *rb_sampler_name(rb_sampler s);

#define RB_SCHED_MAX_TRAIN 4096
#define RB_SCHED_MAX_STEPS 1000

typedef struct rb_scheduler {
    rb_sched_config cfg;
    rb_sampler sampler;
    float betas[RB_SCHED_MAX_TRAIN];
    float alphas_cumprod[RB_SCHED_MAX_TRAIN];
    int n_steps;
    float timesteps[RB_SCHED_MAX_STEPS];      /* what the UNet is given (DPM: integers stored as float) */
    float sigmas[RB_SCHED_MAX_STEPS + 1];     /* with the final sigma appended */
    float init_noise_sigma;
    /* multistep state (DPM-Solver++): the previous x0 prediction */
    float *prev_x0;
    int64_t prev_numel;
    int lower_order_nums;
} rb_scheduler;

/* Builds the training schedule (betas, alphas_cumprod). The struct is large: allocate it. */
rb_status rb_sched_init(rb_scheduler *s, const rb_sched_config *c, rb_sampler sampler);
void rb_sched_free(rb_scheduler *s);
rb_status rb_sched_set_timesteps(rb_scheduler *s, int n_steps);

/* DDPM forward process: out = sqrt(acp[t]) x0 + sqrt(1 - acp[t]) noise, over n elements. */
rb_status rb_sched_add_noise(const rb_scheduler *s, int64_t t, const float *x0, const float *noise, float *out,
                             int64_t n);

/* The scale applied to the model input at step i (Euler: 1/sqrt(sigma^2 + 1); DPM: 1). */
void rb_sched_scale_input(const rb_scheduler *s, int i, const float *x, float *out, int64_t n);

/* One step i: x (n floats) is replaced by the previous sample. eps is the model's epsilon
 * prediction; noise (n floats) is needed by the ancestral sampler only; pred_x0 may be NULL. */
rb_status rb_sched_step(rb_scheduler *s, int i, const float *eps, float *x, const float *noise, float *pred_x0,
                        int64_t n);

#endif
