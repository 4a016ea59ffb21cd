/* Sampler steps, in float32 in the reference's operation order (diffusers' tensor arithmetic on
 * 0-dim float32 tensors), so trajectories match to float32 rounding. */
#include <math.h>
#include <string.h>

#include "core/mem.h"
#include "scheduler.h"

void rb_sched_scale_input(const rb_scheduler *s, int i, const float *x, float *out, int64_t n) {
    if (s->sampler == RB_SAMPLER_DPMPP_2M) {
        if (out != x)
            memmove(out, x, (size_t)n * sizeof *out);
        return;
    }
    float sigma = s->sigmas[i], d = sqrtf(sigma * sigma + 1.0f);
    for (int64_t k = 0; k < n; k++)
        out[k] = x[k] / d;
}

/* EulerDiscreteScheduler.step with s_churn = 0 (gamma = 0, sigma_hat = sigma). */
static void euler_step(const rb_scheduler *s, int i, const float *eps, float *x, float *pred_x0, int64_t n) {
    float sigma = s->sigmas[i], dt = s->sigmas[i + 1] - sigma;
    for (int64_t k = 0; k < n; k++) {
        float x0 = x[k] - sigma * eps[k];
        float deriv = (x[k] - x0) / sigma;
        if (pred_x0)
            pred_x0[k] = x0;
        x[k] = x[k] + deriv * dt;
    }
}

/* EulerAncestralDiscreteScheduler.step: a deterministic move to sigma_down, then noise * sigma_up. */
static void euler_a_step(const rb_scheduler *s, int i, const float *eps, float *x, const float *noise, float *pred_x0,
                         int64_t n) {
    float from = s->sigmas[i], to = s->sigmas[i + 1];
    float up = sqrtf(to * to * (from * from - to * to) / (from * from));
    float down = sqrtf(to * to - up * up), dt = down - from;
    for (int64_t k = 0; k < n; k++) {
        float x0 = x[k] - from * eps[k];
        float deriv = (x[k] - x0) / from;
        if (pred_x0)
            pred_x0[k] = x0;
        x[k] = x[k] + deriv * dt;
        x[k] = x[k] + noise[k] * up;
    }
}

/* alpha_t = 1 / sqrt(sigma^2 + 1), sigma_t = sigma * alpha_t, lambda = log(alpha_t) - log(sigma_t) */
typedef struct {
    float alpha, sigma, lambda;
} dpm_coef;

static dpm_coef coef(float sigma) {
    dpm_coef c;
    c.alpha = 1.0f / sqrtf(sigma * sigma + 1.0f);
    c.sigma = sigma * c.alpha;
    c.lambda = logf(c.alpha) - logf(c.sigma);
    return c;
}

/* DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint, lower_order_final, final sigma 0):
 * first order at step 0 and at the last step, second-order multistep in between. */
static rb_status dpm_step(rb_scheduler *s, int i, const float *eps, float *x, float *pred_x0, int64_t n) {
    if (s->prev_numel != n) {
        rb_free(s->prev_x0);
        s->prev_x0 = rb_alloc((size_t)n * sizeof(float), "DPM-Solver++ history");
        if (!s->prev_x0)
            return RB_ERR_OOM;
        s->prev_numel = n;
        s->lower_order_nums = 0;
    }
    if (i == 0)
        s->lower_order_nums = 0;
    dpm_coef t = coef(s->sigmas[i + 1]), s0 = coef(s->sigmas[i]);
    float h = t.lambda - s0.lambda, ratio = t.sigma / s0.sigma, e = t.alpha * (expf(-h) - 1.0f);
    int last = i == s->n_steps - 1;
    if (s->lower_order_nums < 1 || last) {
        for (int64_t k = 0; k < n; k++) {
            float x0 = (x[k] - s0.sigma * eps[k]) / s0.alpha;
            if (pred_x0)
                pred_x0[k] = x0;
            s->prev_x0[k] = x0;
            x[k] = ratio * x[k] - e * x0;
        }
    } else {
        dpm_coef s1 = coef(s->sigmas[i - 1]);
        float h0 = s0.lambda - s1.lambda, r0 = h0 / h, inv_r0 = 1.0f / r0;
        for (int64_t k = 0; k < n; k++) {
            float m0 = (x[k] - s0.sigma * eps[k]) / s0.alpha, m1 = s->prev_x0[k];
            float d1 = inv_r0 * (m0 - m1);
            if (pred_x0)
                pred_x0[k] = m0;
            s->prev_x0[k] = m0;
            x[k] = ratio * x[k] - e * m0 - 0.5f * e * d1;
        }
    }
    if (s->lower_order_nums < 2)
        s->lower_order_nums++;
    return RB_OK;
}

rb_status rb_sched_step(rb_scheduler *s, int i, const float *eps, float *x, const float *noise, float *pred_x0,
                        int64_t n) {
    if (i < 0 || i >= s->n_steps)
        return rb_error(RB_ERR_INVALID, "scheduler: step %d of %d", i, s->n_steps);
    switch (s->sampler) {
    case RB_SAMPLER_EULER:
        euler_step(s, i, eps, x, pred_x0, n);
        return RB_OK;
    case RB_SAMPLER_EULER_A:
        if (!noise)
            return rb_error(RB_ERR_INVALID, "scheduler: the ancestral sampler needs noise");
        euler_a_step(s, i, eps, x, noise, pred_x0, n);
        return RB_OK;
    case RB_SAMPLER_DPMPP_2M:
        return dpm_step(s, i, eps, x, pred_x0, n);
    default:
        return rb_error(RB_ERR_INVALID, "scheduler: unknown sampler");
    }
}
