/* Schedulers against golden/schedulers: whole trajectories of Euler (30, 50 steps), Euler ancestral
 * (given step noise), DPM-Solver++ 2M with and without Karras sigmas, and DDPM betas/add_noise. */
#include "harness.h"
#include "io/safetensors.h"
#include "sched/scheduler.h"

static rb_safetensors io;
static int io_ok;

static const float *get(const char *name, int64_t want_numel) {
    const rb_tensor *t = rb_st_get(&io, name);
    if (!t || (want_numel >= 0 && rb_numel(t) != want_numel)) {
        CHECK(0, "golden tensor %s missing or of unexpected size", name);
        return NULL;
    }
    return t->data;
}

static int open_io(void) {
    if (io_ok)
        return 1;
    const char *p = t_golden_path("schedulers/io.safetensors");
    if (!p)
        return 0;
    if (rb_st_open(&io, p) != RB_OK) {
        CHECK(0, "open %s: %s", p, rb_last_error());
        return 0;
    }
    return io_ok = 1;
}

/* Runs one golden trajectory; rtol on every stored tensor relative to its own max magnitude. */
static void trajectory(const char *prefix, rb_sampler sampler, int steps, int karras) {
    if (!open_io())
        return;
    char cfgpath[8192], key[256];
    snprintf(cfgpath, sizeof cfgpath, "%s/schedulers/scheduler_config.json", t_golden());
    rb_sched_config cfg;
    REQUIRE(rb_sched_config_load(&cfg, cfgpath) == RB_OK, "%s", rb_last_error());
    cfg.karras = karras;
    static rb_scheduler s;
    REQUIRE(rb_sched_init(&s, &cfg, sampler) == RB_OK && rb_sched_set_timesteps(&s, steps) == RB_OK, "%s",
            rb_last_error());
    const int64_t n = 4 * 8 * 8;
    snprintf(key, sizeof key, "%s.timesteps", prefix);
    const rb_tensor *tt = rb_st_get(&io, key);
    REQUIRE(tt && rb_numel(tt) == steps, "timesteps");
    for (int i = 0; i < steps; i++)
        CHECK(s.timesteps[i] == (float)rb_tensor_get(tt, i), "%s t[%d] = %g, want %g", prefix, i, s.timesteps[i],
              rb_tensor_get(tt, i));
    snprintf(key, sizeof key, "%s.sigmas", prefix);
    const float *sig = get(key, steps + 1);
    double md;
    REQUIRE(sig, "sigmas");
    CHECK(t_allclose(s.sigmas, sig, (size_t)steps + 1, 0, 1e-6f, &md), "%s sigmas max diff %g", prefix, md);
    snprintf(key, sizeof key, "%s.init_noise_sigma", prefix);
    const float *ins = get(key, 1);
    REQUIRE(ins, "init sigma");
    CHECK(fabsf(s.init_noise_sigma - ins[0]) <= 1e-6f * ins[0], "%s init_noise_sigma %g vs %g", prefix,
          s.init_noise_sigma, ins[0]);
    snprintf(key, sizeof key, "%s.x_init", prefix);
    const float *x_init = get(key, n);
    snprintf(key, sizeof key, "%s.model_input", prefix);
    const float *mi = get(key, steps * n);
    snprintf(key, sizeof key, "%s.model_output", prefix);
    const float *mo = get(key, steps * n);
    snprintf(key, sizeof key, "%s.prev_sample", prefix);
    const float *ps = get(key, steps * n);
    snprintf(key, sizeof key, "%s.step_noise", prefix);
    const float *noise = sampler == RB_SAMPLER_EULER_A ? get(key, steps * n) : NULL;
    REQUIRE(x_init && mi && mo && ps, "trajectory tensors");
    float x[256], in[256], x0[256], scale = 0;
    for (int64_t k = 0; k < steps * n; k++)
        scale = fmaxf(scale, fabsf(ps[k]));
    memcpy(x, x_init, sizeof x);
    double worst_in = 0, worst_x = 0, drift = 0;
    for (int i = 0; i < steps; i++) {
        rb_sched_scale_input(&s, i, x, in, n);
        t_allclose(in, mi + i * n, (size_t)n, 0, 0, &md);
        worst_in = md > worst_in ? md : worst_in;
        REQUIRE(rb_sched_step(&s, i, mo + i * n, x, noise ? noise + i * n : NULL, x0, n) == RB_OK, "%s",
                rb_last_error());
        t_allclose(x, ps + i * n, (size_t)n, 0, 0, &md);
        worst_x = md > worst_x ? md : worst_x;
        drift = md;
    }
    /* the whole trajectory, run on our own samples, within 1e-6 of the largest value (case.md: "~1e-6
     * relative"); values reach ~45, where one float32 ulp is 3.8e-6 */
    CHECK(worst_in <= 1e-6 * scale && worst_x <= 1e-6 * scale, "%s: max |diff| model_input %g, prev_sample %g (scale %g)",
          prefix, worst_in, worst_x, scale);
    CHECK(drift <= 1e-6 * scale, "%s: final sample off by %g", prefix, drift);
    rb_sched_free(&s);
}

static void t_euler30(void) { trajectory("euler30", RB_SAMPLER_EULER, 30, 0); }
static void t_euler50(void) { trajectory("euler50", RB_SAMPLER_EULER, 50, 0); }
static void t_euler_a20(void) { trajectory("euler_a20", RB_SAMPLER_EULER_A, 20, 0); }
static void t_dpmpp2m20(void) { trajectory("dpmpp2m20", RB_SAMPLER_DPMPP_2M, 20, 0); }
static void t_dpmpp2m_karras20(void) { trajectory("dpmpp2m_karras20", RB_SAMPLER_DPMPP_2M, 20, 1); }

static void t_ddpm(void) {
    if (!open_io())
        return;
    rb_sched_config cfg;
    rb_sched_config_init(&cfg);
    static rb_scheduler s;
    REQUIRE(rb_sched_init(&s, &cfg, RB_SAMPLER_EULER) == RB_OK, "init");
    const float *betas = get("ddpm.betas", 1000), *acp = get("ddpm.alphas_cumprod", 1000);
    const float *sig = get("euler.train_sigmas_ascending", 1000);
    REQUIRE(betas && acp && sig, "tensors");
    double md;
    CHECK(t_allclose(s.betas, betas, 1000, 0, 1e-6f, &md), "betas max diff %g", md);
    CHECK(t_allclose(s.alphas_cumprod, acp, 1000, 0, 1e-6f, &md), "alphas_cumprod max diff %g", md);
    const float *x0 = get("ddpm.add_noise.original_samples", 5 * 256), *nz = get("ddpm.add_noise.noise", 5 * 256);
    const float *want = get("ddpm.add_noise.noisy_samples", 5 * 256);
    const rb_tensor *ts = rb_st_get(&io, "ddpm.add_noise.timesteps");
    REQUIRE(x0 && nz && want && ts, "add_noise tensors");
    float out[256];
    for (int b = 0; b < 5; b++) {
        REQUIRE(rb_sched_add_noise(&s, (int64_t)rb_tensor_get(ts, b), x0 + b * 256, nz + b * 256, out, 256) == RB_OK,
                "add_noise");
        CHECK(t_allclose(out, want + b * 256, 256, 1e-6f, 1e-6f, &md), "add_noise row %d max diff %g", b, md);
    }
    CHECK(rb_sched_add_noise(&s, 1000, x0, nz, out, 1) == RB_ERR_INVALID, "timestep 1000 refused");
    CHECK(rb_sched_set_timesteps(&s, 0) == RB_ERR_INVALID, "0 steps refused");
}

int main(void) {
    RUN(t_ddpm);
    RUN(t_euler30);
    RUN(t_euler50);
    RUN(t_euler_a20);
    RUN(t_dpmpp2m20);
    RUN(t_dpmpp2m_karras20);
    if (io_ok)
        rb_st_close(&io);
    return t_done();
}
