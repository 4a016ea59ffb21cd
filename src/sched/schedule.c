/* Training schedule, timestep spacing and sigmas, reproducing diffusers' arithmetic: torch float32
 * for betas/alphas_cumprod, numpy float64 for np.interp and Karras, cast to float32 at the end. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "core/mem.h"
#include "scheduler.h"
#include "io/json.h"

void rb_sched_config_init(rb_sched_config *c) {
    c->num_train_timesteps = 1000;
    c->beta_start = 0.00085;
    c->beta_end = 0.012;
    c->scaled_linear = 1;
    c->steps_offset = 1;
    c->spacing = RB_SPACING_LEADING;
    c->karras = 0;
    c->epsilon = 1;
}

static const struct {
    const char *name;
    rb_spacing v;
} spacings[] = {{"leading", RB_SPACING_LEADING}, {"trailing", RB_SPACING_TRAILING}, {"linspace", RB_SPACING_LINSPACE}};

rb_status rb_sched_config_load(rb_sched_config *c, const char *path) {
    rb_sched_config_init(c);
    json_t *j;
    RB_TRY(rb_json_load_object(path, &j));
    rb_status st = RB_OK;
    json_t *v;
    if ((v = json_object_get(j, "num_train_timesteps")) && json_is_integer(v)) /* range-checked below */
        c->num_train_timesteps = json_integer_value(v) < 0 || json_integer_value(v) > RB_SCHED_MAX_TRAIN
                                     ? -1 : (int)json_integer_value(v);
    if ((v = json_object_get(j, "beta_start")) && json_is_number(v))
        c->beta_start = json_number_value(v);
    if ((v = json_object_get(j, "beta_end")) && json_is_number(v))
        c->beta_end = json_number_value(v);
    if ((v = json_object_get(j, "steps_offset")) && json_is_integer(v))
        c->steps_offset = (int)json_integer_value(v);
    if ((v = json_object_get(j, "use_karras_sigmas")) && json_is_boolean(v))
        c->karras = json_is_true(v);
    if ((v = json_object_get(j, "beta_schedule")) && json_is_string(v)) {
        const char *b = json_string_value(v);
        if (!strcmp(b, "scaled_linear") || !strcmp(b, "linear"))
            c->scaled_linear = !strcmp(b, "scaled_linear");
        else
            st = rb_error(RB_ERR_UNSUPPORTED, "%s: beta_schedule '%s' is not supported", path, b);
    }
    if ((v = json_object_get(j, "timestep_spacing")) && json_is_string(v)) {
        size_t k;
        for (k = 0; k < sizeof spacings / sizeof *spacings; k++)
            if (!strcmp(json_string_value(v), spacings[k].name))
                break;
        if (k == sizeof spacings / sizeof *spacings)
            st = rb_error(RB_ERR_UNSUPPORTED, "%s: timestep_spacing '%s' is not supported", path, json_string_value(v));
        else
            c->spacing = spacings[k].v;
    }
    if ((v = json_object_get(j, "prediction_type")) && json_is_string(v) && strcmp(json_string_value(v), "epsilon"))
        st = rb_error(RB_ERR_UNSUPPORTED, "%s: prediction_type '%s' is not supported (epsilon only)", path,
                      json_string_value(v));
    if ((v = json_object_get(j, "trained_betas")) && !json_is_null(v))
        st = rb_error(RB_ERR_UNSUPPORTED, "%s: trained_betas are not supported", path);
    json_decref(j);
    /* betas outside [0, 1) make alphas_cumprod <= 0 and every sigma NaN */
    if (st == RB_OK && !(c->beta_start >= 0 && c->beta_start < 1 && c->beta_end >= 0 && c->beta_end < 1))
        st = rb_error(RB_ERR_FORMAT, "%s: beta_start %g / beta_end %g outside [0, 1)", path, c->beta_start, c->beta_end);
    if (st == RB_OK && (c->num_train_timesteps < 2 || c->num_train_timesteps > RB_SCHED_MAX_TRAIN))
        st = rb_error(RB_ERR_FORMAT, "%s: num_train_timesteps %d out of range", path, c->num_train_timesteps);
    return st;
}

static const char *const sampler_names[RB_SAMPLER_COUNT] = {"euler", "euler_a", "dpmpp_2m"};

int rb_sampler_from_name(const char *name, rb_sampler *out) {
    for (int i = 0; i < RB_SAMPLER_COUNT; i++)
        if (!strcmp(name, sampler_names[i])) {
            *out = (rb_sampler)i;
            return 1;
        }
    return 0;
}

const char *rb_sampler_name(rb_sampler s) { return (unsigned)s < RB_SAMPLER_COUNT ? sampler_names[s] : "?"; }

/* torch.linspace(start, end, n, dtype=float32): float32 step, filled symmetrically from both ends. */
static void linspace_f32(float *out, float start, float end, int n) {
    float step = (end - start) / (float)(n - 1);
    int half = n / 2;
    for (int i = 0; i < n; i++)
        out[i] = i < half ? start + step * (float)i : end - step * (float)(n - i - 1);
}

rb_status rb_sched_init(rb_scheduler *s, const rb_sched_config *c, rb_sampler sampler) {
    memset(s, 0, sizeof *s);
    if ((unsigned)sampler >= RB_SAMPLER_COUNT)
        return rb_error(RB_ERR_INVALID, "scheduler: unknown sampler %d", (int)sampler);
    if (c->num_train_timesteps < 2 || c->num_train_timesteps > RB_SCHED_MAX_TRAIN)
        return rb_error(RB_ERR_INVALID, "scheduler: num_train_timesteps %d out of range", c->num_train_timesteps);
    s->cfg = *c;
    s->sampler = sampler;
    int n = c->num_train_timesteps;
    if (c->scaled_linear) {
        linspace_f32(s->betas, (float)sqrt(c->beta_start), (float)sqrt(c->beta_end), n);
        for (int i = 0; i < n; i++)
            s->betas[i] = s->betas[i] * s->betas[i];
    } else {
        linspace_f32(s->betas, (float)c->beta_start, (float)c->beta_end, n);
    }
    double acp = 1.0; /* torch.cumprod on CPU accumulates float32 in double */
    for (int i = 0; i < n; i++) {
        acp *= (double)(1.0f - s->betas[i]);
        s->alphas_cumprod[i] = (float)acp;
    }
    return RB_OK;
}

void rb_sched_free(rb_scheduler *s) {
    rb_free(s->prev_x0);
    s->prev_x0 = NULL;
}

/* Training sigmas sqrt((1 - acp) / acp), in float32 like the reference's numpy array. */
static float train_sigma(const rb_scheduler *s, int t) {
    float a = s->alphas_cumprod[t];
    return sqrtf((1.0f - a) / a);
}

/* np.interp(t, arange(n), sigmas) for t within [0, n-1], in double. */
static double interp_sigma(const rb_scheduler *s, double t) {
    int n = s->cfg.num_train_timesteps;
    if (t <= 0)
        return train_sigma(s, 0);
    if (t >= n - 1)
        return train_sigma(s, n - 1);
    int lo = (int)floor(t);
    double f = t - lo, a = train_sigma(s, lo), b = train_sigma(s, lo + 1);
    return a + (b - a) * f; /* numpy's formula: slope * (x - xp[j]) + fp[j] */
}

/* DPMSolverMultistepScheduler._sigma_to_t: piecewise-linear in log sigma. */
static double sigma_to_t(const rb_scheduler *s, double sigma) {
    int n = s->cfg.num_train_timesteps;
    double ls = log(sigma > 1e-10 ? sigma : 1e-10);
    /* low_idx = last index with log_sigmas[i] <= ls (log_sigmas ascend), clipped to n - 2 */
    int low = 0;
    for (int i = 0; i < n; i++)
        if (ls - (double)logf(train_sigma(s, i)) >= 0)
            low = i;
    if (low > n - 2)
        low = n - 2;
    double lo = logf(train_sigma(s, low)), hi = logf(train_sigma(s, low + 1));
    double w = (lo - ls) / (lo - hi);
    w = w < 0 ? 0 : w > 1 ? 1 : w;
    return (1 - w) * low + w * (low + 1);
}

rb_status rb_sched_set_timesteps(rb_scheduler *s, int n_steps) {
    int N = s->cfg.num_train_timesteps;
    if (n_steps < 1 || n_steps > RB_SCHED_MAX_STEPS || n_steps > N)
        return rb_error(RB_ERR_INVALID, "scheduler: %d steps (1..%d)", n_steps, N < RB_SCHED_MAX_STEPS ? N : RB_SCHED_MAX_STEPS);
    s->n_steps = n_steps;
    s->lower_order_nums = 0;
    double t[RB_SCHED_MAX_STEPS];
    int dpm = s->sampler == RB_SAMPLER_DPMPP_2M;
    switch (s->cfg.spacing) {
    case RB_SPACING_LEADING: {
        /* DPM divides by n + 1 and drops the last of n + 1 points; Euler divides by n */
        int ratio = dpm ? N / (n_steps + 1) : N / n_steps;
        for (int i = 0; i < n_steps; i++)
            t[i] = (double)(n_steps - 1 - i) * ratio + (dpm ? ratio : 0) + s->cfg.steps_offset;
        break;
    }
    case RB_SPACING_TRAILING: {
        double ratio = (double)N / n_steps;
        for (int i = 0; i < n_steps; i++)
            t[i] = round(N - i * ratio) - 1;
        break;
    }
    case RB_SPACING_LINSPACE:
        /* Euler: linspace(0, N-1, n) reversed; DPM: linspace(0, N-1, n+1).round() reversed minus the last */
        for (int i = 0; i < n_steps; i++)
            t[i] = dpm ? round((N - 1) * (double)(n_steps - i) / n_steps)
                       : (N - 1) * (double)(n_steps - 1 - i) / (n_steps > 1 ? n_steps - 1 : 1);
        break;
    }
    for (int i = 0; i < n_steps; i++)
        s->sigmas[i] = (float)interp_sigma(s, t[i]);
    if (s->cfg.karras) {
        /* Karras sigmas (rho = 7) between the extremes of the training sigmas (DPM) or of the spaced
         * sigmas (Euler), with timesteps mapped back through log sigma (rounded for DPM) */
        double smin = dpm ? train_sigma(s, 0) : s->sigmas[n_steps - 1];
        double smax = dpm ? train_sigma(s, N - 1) : s->sigmas[0], rho = 7.0;
        double lo = pow(smin, 1 / rho), hi = pow(smax, 1 / rho);
        for (int i = 0; i < n_steps; i++) {
            double ramp = n_steps > 1 ? (double)i / (n_steps - 1) : 0;
            double sig = pow(hi + ramp * (lo - hi), rho);
            s->sigmas[i] = (float)sig;
            t[i] = dpm ? round(sigma_to_t(s, sig)) : sigma_to_t(s, sig);
        }
    }
    s->sigmas[n_steps] = 0.0f; /* Euler's appended 0; DPM's final_sigmas_type "zero" */
    float smax = 0;
    for (int i = 0; i < n_steps; i++) {
        s->timesteps[i] = (float)t[i];
        if (s->sigmas[i] > smax)
            smax = s->sigmas[i];
    }
    if (dpm)
        s->init_noise_sigma = 1.0f;
    else
        s->init_noise_sigma = s->cfg.spacing == RB_SPACING_LEADING ? sqrtf(smax * smax + 1.0f) : smax;
    return RB_OK;
}

rb_status rb_sched_add_noise(const rb_scheduler *s, int64_t t, const float *x0, const float *noise, float *out,
                             int64_t n) {
    if (t < 0 || t >= s->cfg.num_train_timesteps)
        return rb_error(RB_ERR_INVALID, "add_noise: timestep %lld out of range", (long long)t);
    float a = s->alphas_cumprod[t], sa = sqrtf(a), sb = sqrtf(1.0f - a);
    for (int64_t i = 0; i < n; i++)
        out[i] = sa * x0[i] + sb * noise[i];
    return RB_OK;
}
