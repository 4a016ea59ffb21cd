/* RelationLoRA training step against golden/relation_lora_train (DreamRelation train.py on the tiny
 * SDXL UNet with the masked IP processors): x_t, eps, z0_hat, L_mse, L_kml (intended and released
 * index mapping), every predicate map / chained segmap / per-layer CAL value, L_cal, both totals, the
 * gradient of every LoRA tensor for every grad_*.safetensors, and the LoRA weights after 3 AdamW steps.
 * Tolerances are 10x the case's fp32-vs-fp64 figures (case.md) unless noted. */
#include "harness.h"
#include "ops/optim.h"
#include "pipelines/relation_loss.h"
#include "sched/scheduler.h"

static int t_verbose(void) { return getenv("VERBOSE") != NULL; }

static rb_unet unet;
static rb_ms_adapter ad;
static rb_safetensors io;
static rb_scheduler sched;
static int ready;

static int setup(void) {
    if (ready)
        return 1;
    char cfg[4096], wts[4096], adp[4096], iop[4096];
    const char *p;
    if (!(p = t_golden_path("relation_lora_train/unet_config.json")))
        return 0;
    snprintf(cfg, sizeof cfg, "%s", p);
    snprintf(wts, sizeof wts, "%s", t_golden_path("relation_lora_train/unet_diffusion_pytorch_model.safetensors"));
    snprintf(adp, sizeof adp, "%s", t_golden_path("relation_lora_train/ms_adapter.safetensors"));
    snprintf(iop, sizeof iop, "%s", t_golden_path("relation_lora_train/io.safetensors"));
    rb_sched_config sc;
    rb_sched_config_init(&sc);
    if (rb_unet_load(&unet, cfg, wts) != RB_OK || rb_ms_adapter_load(&ad, adp, &unet, 8) != RB_OK ||
        rb_st_open(&io, iop) != RB_OK || rb_sched_init(&sched, &sc, RB_SAMPLER_EULER) != RB_OK) {
        CHECK(0, "setup: %s", rb_last_error());
        return 0;
    }
    return ready = 1;
}

static const rb_tensor *get(const char *fmt, ...) RB_PRINTF(1, 2);
static const rb_tensor *get(const char *fmt, ...) {
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const rb_tensor *t = rb_st_get(&io, name);
    if (!t)
        CHECK(0, "golden tensor %s missing", name);
    return t;
}

static void cmp(const char *what, const rb_tensor *got, const rb_tensor *want, double atol) {
    if (!got || !want) {
        CHECK(0, "%s: missing (%s)", what, rb_last_error());
        return;
    }
    CHECK(rb_numel(got) == rb_numel(want), "%s: %lld values, want %lld", what, (long long)rb_numel(got),
          (long long)rb_numel(want));
    double md;
    CHECK(t_allclose(got->data, want->data, (size_t)rb_numel(want), (float)atol, 0, &md), "%s: max |diff| %g (tol %g)",
          what, md, atol);
}

/* ---- the trainable LoRA set: lora_init.safetensors (PEFT keys) with gradient buffers ---- */

typedef struct {
    rb_lora_set set;
    int n;
    rb_tensor *params[512];
    char keys[512][160]; /* PEFT key of each parameter */
} lora_params;

static int lora_setup(lora_params *L) {
    char path[4096];
    snprintf(path, sizeof path, "%s", t_golden_path("relation_lora_train/lora_init.safetensors"));
    if (rb_lora_load(&L->set, path, NULL) != RB_OK || rb_unet_attach_lora(&unet, &L->set) != RB_OK) {
        CHECK(0, "LoRA: %s", rb_last_error());
        return 0;
    }
    L->n = 0;
    for (int i = 0; i < L->set.n; i++) {
        rb_lora_pair *p = L->set.pairs[i];
        rb_tensor *t[2] = {p->down, p->up};
        for (int k = 0; k < 2; k++) {
            rb_tensor *g = malloc(sizeof *g);
            if (!g || rb_tensor_alloc(g, RB_F32, t[k]->ndim, t[k]->shape, "grad") != RB_OK)
                return 0;
            memset(g->data, 0, rb_nbytes(g));
            t[k]->grad = g;
            t[k]->requires_grad = 1;
            snprintf(L->keys[L->n], sizeof L->keys[0], "%s.%s.weight", p->module, k ? "lora_B" : "lora_A");
            t[k]->name = L->keys[L->n];
            L->params[L->n++] = t[k];
        }
    }
    return 1;
}

static void lora_teardown(lora_params *L) {
    rb_unet_detach_lora(&unet);
    for (int i = 0; i < L->n; i++) {
        rb_tensor_free(L->params[i]->grad);
        free(L->params[i]->grad);
        L->params[i]->grad = NULL;
    }
    rb_lora_free(&L->set);
}

static void zero_grads(lora_params *L) {
    for (int i = 0; i < L->n; i++)
        memset(L->params[i]->grad->data, 0, rb_nbytes(L->params[i]->grad));
}

/* every LoRA gradient against a grad_*.safetensors file */
static void cmp_grads(lora_params *L, const char *file, double atol) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", t_golden_path("relation_lora_train"), file);
    rb_safetensors g;
    REQUIRE(rb_st_open(&g, path) == RB_OK, "%s", rb_last_error());
    CHECK(g.n == L->n && L->n == 136, "%s: %d tensors, we train %d", file, g.n, L->n);
    double worst = 0;
    const char *wk = "";
    for (int i = 0; i < L->n; i++) {
        const rb_tensor *w = rb_st_get(&g, L->keys[i]);
        if (!w || rb_numel(w) != rb_numel(L->params[i])) {
            CHECK(0, "%s: %s missing or misshaped", file, L->keys[i]);
            continue;
        }
        double md;
        t_allclose(L->params[i]->grad->data, w->data, (size_t)rb_numel(w), 0, 0, &md);
        if (md > worst)
            worst = md, wk = L->keys[i];
    }
    CHECK(worst <= atol, "%s: max |grad diff| %g at %s (tol %g)", file, worst, wk, atol);
    if (t_verbose())
        printf("  %s: max |grad diff| %.3g (tol %.3g)\n", file, worst, atol);
    rb_st_close(&g);
}

/* ---- one forward of sub-case a or b ---- */

typedef struct {
    rb_arena act, grads;
    rb_tape tape;
    rb_ctx c;
    rb_unet_proc *procs;
    rb_rel_attn_call call;
    rb_tensor x_t, *eps;
    rb_tensor ehs, te, ti; /* UNet inputs: recomputed blocks read them again in backward */
    int64_t t;
    float abar;
} fwd;

/* The arenas and the tape live across forwards (reset, not freed: no fresh page faults each time).
 * recompute: transformer blocks recomputed in backward, with in-block CAL (what training runs);
 * else the whole forward on the tape with the maps stored (so they can be inspected). */
static int forward(fwd *f, char sub, int check_eps, int recompute) {
    if (!f->act.base) {
        memset(f, 0, sizeof *f);
        if (rb_arena_init(&f->act, (size_t)768 << 20, "act") || rb_arena_init(&f->grads, (size_t)768 << 20, "grads") ||
            rb_tape_init(&f->tape, 4096, &f->grads))
            return 0;
    }
    free(f->procs);
    f->procs = NULL;
    rb_arena_reset(&f->act, 0);
    rb_arena_reset(&f->grads, 0);
    rb_tape_reset(&f->tape);
    rb_ctx_init(&f->c, &f->act);
    f->c.tape = &f->tape;
    const rb_tensor *z0 = get("z0"), *noise = get("noise");
    f->t = (int64_t)rb_tensor_get(get("timestep_%c", sub), 0);
    f->abar = sched.alphas_cumprod[f->t];
    /* the golden's table is a float32 cumprod, ours accumulates in double (as golden/schedulers): 2 ulp apart at t = 700 */
    float ga = ((float *)get("alphas_cumprod_t_%c", sub)->data)[0];
    CHECK(fabsf(f->abar - ga) <= 2.5e-7f * ga, "alphas_cumprod[%lld] %.9g, golden %.9g", (long long)f->t, f->abar, ga);
    rb_tensor *xt = rb_ctx_tensor(&f->c, RB_F32, 4, z0->shape);
    if (!xt || rb_sched_add_noise(&sched, f->t, z0->data, noise->data, xt->data, rb_numel(z0)) != RB_OK)
        return 0;
    f->x_t = *xt;
    cmp("x_t", xt, get("%c.noisy_model_input", sub), 2.5e-6);
    static int64_t span[2];
    const rb_tensor *pi = get("phrase_idxes");
    span[0] = (int64_t)rb_tensor_get(pi, 0), span[1] = (int64_t)rb_tensor_get(pi, 1);
    f->call.ms = (rb_ms_call){.adapter = &ad, .n_subjects = 2, .boxes = get("boxes")->data, .scale = 0.6f};
    f->call.pred_span = span;
    f->call.max_hw = 32 * 32;
    f->call.segmaps = recompute ? get("object_segmaps") : NULL;
    f->procs = calloc((size_t)unet.n_attn, sizeof *f->procs);
    rb_rel_procs(&unet, &f->call, f->procs);
    rb_tensor tt = rb_tensor_wrap(&f->t, RB_I64, 1, (int64_t[]){1});
    rb_tensor *ts = rb_ctx_tensor(&f->c, RB_I64, 1, (int64_t[]){1});
    *(int64_t *)ts->data = f->t;
    (void)tt;
    f->ehs = *get("encoder_hidden_states"), f->te = *get("text_embeds"), f->ti = *get("time_ids");
    rb_unet_in in = {.sample = xt, .timestep = ts, .encoder_hidden_states = &f->ehs, .text_embeds = &f->te,
                     .time_ids = &f->ti, .procs = f->procs, .recompute = recompute};
    rb_unet_out out;
    if (rb_unet_forward(&f->c, &unet, &in, &out) != RB_OK) {
        CHECK(0, "forward: %s", rb_last_error());
        return 0;
    }
    f->eps = out.sample;
    if (check_eps) /* case.md: ~1e-5 relative on eps (fp32 vs fp64 2e-6) */
        cmp("eps", f->eps, get("%c.eps_pred", sub), 2e-5);
    return 1;
}

static void fwd_free(fwd *f) {
    free(f->procs);
    rb_tape_free(&f->tape);
    rb_arena_free(&f->act);
    rb_arena_free(&f->grads);
}

static rb_rel_loss_in loss_in(fwd *f) {
    rb_rel_loss_in in = {.x_t = &f->x_t, .eps = f->eps, .noise = get("noise"), .timesteps = &f->t,
                         .alphas_cumprod = sched.alphas_cumprod, .keypoints = get("keypoints"),
                         .concept_latents = get("concept_latents"), .n_entities = 2,
                         .segmaps = get("object_segmaps"), .attn = &f->call};
    return in;
}

/* maps, segmaps and per-layer losses of the CAL, in the reference's layer order */
static void check_cal_parts(fwd *f, char sub) {
    CHECK(f->call.n_maps == (int)rb_tensor_get(get("%c.cal.num_layers", sub), 0), "%d stored layers, want %g",
          f->call.n_maps, rb_tensor_get(get("%c.cal.num_layers", sub), 0));
    rb_tensor *ll[RB_REL_MAX_MAPS], *seg[RB_REL_MAX_MAPS];
    rb_tape_entry *keep = NULL;
    (void)keep;
    rb_tensor *cal = rb_rel_cal(&f->c, &f->call, get("object_segmaps"), ll, seg);
    REQUIRE(cal, "cal: %s", rb_last_error());
    for (int i = 0; i < f->call.n_maps; i++) {
        const char *L = f->call.map_layer[i];
        char what[256];
        snprintf(what, sizeof what, "%c map %s", sub, L);
        cmp(what, f->call.maps[i], get("%c.cal.map.%s", sub, L), 1.4e-6);
        snprintf(what, sizeof what, "%c segmap %s", sub, L);
        cmp(what, seg[i], get("%c.cal.segmap_used.%s", sub, L), 0);
        snprintf(what, sizeof what, "%c layer loss %s", sub, L);
        cmp(what, ll[i], get("%c.cal.layer_loss.%s", sub, L), 1.4e-6);
    }
    cmp("L_cal", cal, get("%c.L_cal", sub), 10 * (sub == 'a' ? 7.58e-10 : 8.65e-10));
}

static fwd F; /* one fixture for all forwards */

/* sum_k w_k * grad_k of the parameters (double), against a file: the gradient of a weighted sum of
 * losses is that weighted sum of their gradients */
static void cmp_grad_combo(lora_params *L, float *const *g, const double *w, int n, const char *file, double atol) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", t_golden_path("relation_lora_train"), file);
    rb_safetensors gf;
    REQUIRE(rb_st_open(&gf, path) == RB_OK, "%s", rb_last_error());
    double worst = 0;
    size_t off = 0;
    for (int i = 0; i < L->n; i++) {
        const rb_tensor *t = rb_st_get(&gf, L->keys[i]);
        int64_t m = rb_numel(L->params[i]);
        REQUIRE(t && rb_numel(t) == m, "%s: %s", file, L->keys[i]);
        for (int64_t j = 0; j < m; j++) {
            double v = 0;
            for (int k = 0; k < n; k++)
                v += w[k] * g[k][off + (size_t)j];
            double d = fabs(v - ((const float *)t->data)[j]);
            worst = d > worst ? d : worst;
        }
        off += (size_t)m;
    }
    CHECK(worst <= atol, "%s (as a sum of the part gradients): max |diff| %g (tol %g)", file, worst, atol);
    if (t_verbose())
        printf("  %s (sum of parts): max |grad diff| %.3g (tol %.3g)\n", file, worst, atol);
    rb_st_close(&gf);
}

static size_t n_values(lora_params *L) {
    size_t n = 0;
    for (int i = 0; i < L->n; i++)
        n += (size_t)rb_numel(L->params[i]);
    return n;
}

static void save_grads(lora_params *L, float *dst) {
    for (int i = 0; i < L->n; i++) {
        memcpy(dst, L->params[i]->grad->data, rb_nbytes(L->params[i]->grad));
        dst += rb_numel(L->params[i]);
    }
}

/* sub-case b (t = 700): no KML; CAL and MSE gradients. The maps and values with the whole forward on
 * the tape; the gradients with the blocks recomputed in backward and in-block CAL, and the total's
 * gradient both ways: recomputation must give the same loss and gradients. */
static void t_case_b(void) {
    if (!setup())
        return;
    lora_params L;
    REQUIRE(lora_setup(&L), "lora setup");
    size_t nv = n_values(&L);
    float *g_taped = malloc(nv * sizeof(float)), *g_rec = malloc(nv * sizeof(float));
    float total_taped = 0;
    REQUIRE(g_taped && g_rec, "alloc");
    if (forward(&F, 'b', 1, 0)) {
        rb_ctx *c = &F.c;
        rb_rel_loss_in in = loss_in(&F);
        rb_rel_loss_config cfg;
        rb_rel_loss_config_official(&cfg);
        rb_rel_loss_out o;
        REQUIRE(rb_rel_loss(c, &cfg, &in, &o) == RB_OK, "loss: %s", rb_last_error());
        CHECK(!o.kml && !o.z0_hat && o.cal, "t = 700 > 333: no KML, CAL active");
        cmp("b.L_mse", o.mse, get("b.L_mse"), 2.01e-7);
        cmp("b.total", o.total, get("b.loss_total_cal0.001"), 1.9e-7);
        total_taped = ((float *)o.total->data)[0];
        rb_tensor *z0 = rb_rel_pred_x0(c, &F.x_t, F.eps, &F.abar);
        cmp("b.z0_hat", z0, get("b.z0_hat"), 6.34e-5);
        check_cal_parts(&F, 'b');
        zero_grads(&L);
        REQUIRE(rb_backward(c, o.total) == RB_OK, "%s", rb_last_error());
        cmp_grads(&L, "grad_b.total_cal0.001.safetensors", 10 * 1.3255e-08);
        save_grads(&L, g_taped);
    }
    if (forward(&F, 'b', 0, 1)) {
        rb_ctx *c = &F.c;
        rb_rel_loss_in in = loss_in(&F);
        rb_rel_loss_config cfg;
        rb_rel_loss_config_official(&cfg);
        rb_rel_loss_out o;
        REQUIRE(rb_rel_loss(c, &cfg, &in, &o) == RB_OK, "loss: %s", rb_last_error());
        CHECK(F.call.n_maps == (int)rb_tensor_get(get("b.cal.num_layers"), 0) && !F.call.maps[0],
              "in-block CAL: %d layers, maps not kept", F.call.n_maps);
        cmp("b.L_cal (in-block)", o.cal, get("b.L_cal"), 10 * 8.65e-10);
        cmp("b.total (recompute)", o.total, get("b.loss_total_cal0.001"), 1.9e-7);
        CHECK(((float *)o.total->data)[0] == total_taped, "total %.9g recomputing vs %.9g taped",
              ((float *)o.total->data)[0], total_taped);
        zero_grads(&L);
        REQUIRE(rb_backward(c, o.total) == RB_OK, "%s", rb_last_error());
        cmp_grads(&L, "grad_b.total_cal0.001.safetensors", 10 * 1.3255e-08);
        save_grads(&L, g_rec);
        double md = 0, gmax = 0;
        for (size_t i = 0; i < nv; i++) {
            md = fmax(md, fabs((double)g_rec[i] - g_taped[i]));
            gmax = fmax(gmax, fabs((double)g_taped[i]));
        }
        /* the same float operations in the same order (f32): bit-identical */
        CHECK(gmax > 0 && md == 0, "recomputed vs taped gradients differ by %g (max |grad| %g)", md, gmax);
        if (t_verbose())
            printf("  recompute vs taped: max |grad diff| %.3g (max |grad| %.3g)\n", md, gmax);
        zero_grads(&L);
        REQUIRE(rb_backward(c, o.mse) == RB_OK, "%s", rb_last_error());
        cmp_grads(&L, "grad_b.mse.safetensors", 10 * 1.2677e-08);
    }
    free(g_taped);
    free(g_rec);
    lora_teardown(&L);
}

/* one AdamW iteration's checks: loss, norm before clipping, weights after the step */
static void check_adamw(lora_params *L, int step, float loss, double norm) {
    const float *want_loss = get("adamw.loss")->data, *want_norm = get("adamw.grad_norm_before_clip")->data;
    const double fp64[3] = {1.419989e-06, 1.419590e-06, 1.422946e-06};
    CHECK(fabsf(loss - want_loss[step - 1]) <= 4.5e-7f, "step %d loss %.9g want %.9g", step, loss, want_loss[step - 1]);
    CHECK(fabs(norm - want_norm[step - 1]) <= 1e-6 * want_norm[step - 1], "step %d grad norm %.9g want %.9g", step, norm,
          want_norm[step - 1]);
    char path[4096];
    snprintf(path, sizeof path, "%s/lora_after_adamw_step%d.safetensors", t_golden_path("relation_lora_train"), step);
    rb_safetensors w;
    REQUIRE(rb_st_open(&w, path) == RB_OK, "%s", rb_last_error());
    double worst = 0;
    for (int i = 0; i < L->n; i++) {
        const rb_tensor *t = rb_st_get(&w, L->keys[i]);
        double md = 1e30;
        if (t && rb_numel(t) == rb_numel(L->params[i]))
            t_allclose(L->params[i]->data, t->data, (size_t)rb_numel(t), 0, 0, &md);
        worst = md > worst ? md : worst;
    }
    /* case.md: elements with |g| ~ eps flip; fp32 vs fp64 differ by up to 1.42e-6 */
    CHECK(worst <= 10 * fp64[step - 1], "after step %d: max |w diff| %g (tol %g)", step, worst, 10 * fp64[step - 1]);
    if (t_verbose())
        printf("  AdamW step %d: max |w diff| %.3g, loss %.9g, norm %.9g\n", step, worst, loss, norm);
    rb_st_close(&w);
}

/* sub-case a (t = 250): every loss part and gradient, then 3 AdamW iterations (the first from these
 * gradients: same weights, same batch). The maps are checked on a fully taped forward; every gradient
 * and step runs as training does, with the blocks recomputed and in-block CAL. */
static void t_case_a_and_adamw(void) {
    if (!setup())
        return;
    lora_params L;
    REQUIRE(lora_setup(&L), "lora setup");
    size_t nv = n_values(&L);
    float *g[3] = {malloc(nv * sizeof(float)), malloc(nv * sizeof(float)), malloc(nv * sizeof(float))};
    rb_adam opt;
    rb_adam_config ac;
    rb_adam_config_init(&ac); /* AdamW, betas (0.9, 0.999), eps 1e-8 */
    ac.lr = 1e-4, ac.weight_decay = 1e-4;
    REQUIRE(g[0] && g[1] && g[2] && rb_adam_init(&opt, &ac, L.n, L.params) == RB_OK, "%s", rb_last_error());
    if (forward(&F, 'a', 1, 0)) {
        rb_rel_loss_in in = loss_in(&F);
        rb_rel_loss_config cfg;
        rb_rel_loss_config_official(&cfg);
        rb_rel_loss_out o;
        REQUIRE(rb_rel_loss(&F.c, &cfg, &in, &o) == RB_OK, "loss: %s", rb_last_error());
        cmp("a.total 0.1/0.001 (taped)", o.total, get("a.loss_total_kml0.1_cal0.001"), 4.5e-7);
        check_cal_parts(&F, 'a');
    }
    for (int step = 1; step <= 3; step++) {
        if (!forward(&F, 'a', 0, 1))
            break;
        rb_ctx *c = &F.c;
        rb_rel_loss_in in = loss_in(&F);
        rb_rel_loss_config cfg;
        rb_rel_loss_config_official(&cfg); /* w_kml 0.1 for t <= 333, w_cal 1e-3 */
        rb_rel_loss_out o;
        REQUIRE(rb_rel_loss(c, &cfg, &in, &o) == RB_OK, "loss: %s", rb_last_error());
        if (step == 1) {
            CHECK(o.kml && o.cal, "t = 250: KML and CAL active");
            cmp("a.z0_hat", o.z0_hat, get("a.z0_hat"), 1.4e-5);
            cmp("a.L_mse", o.mse, get("a.L_mse"), 1.03e-7);
            cmp("a.L_kml", o.kml, get("a.L_kml"), 1.81e-6);
            cmp("a.total 0.1/0.001", o.total, get("a.loss_total_kml0.1_cal0.001"), 4.5e-7);
            const rb_tensor *kp = get("keypoints"), *ti = get("a.kml.target_index_hw"),
                            *ri = get("a.kml.reference_index_hw"), *bi = get("a.released_bug.reference_index_hw");
            int bad = 0;
            for (int e = 0; e < 2; e++)
                for (int j = 0; j < 17; j++) {
                    const float *t = (const float *)kp->data + (e * 17 + j) * 2;
                    const float *r = (const float *)kp->data + ((2 + e) * 17 + j) * 2;
                    int row = e * 17 + j;
                    bad += rb_rel_kp_index(t[1], 64, 64) != (int64_t)rb_tensor_get(ti, row * 2) ||
                           rb_rel_kp_index(t[0], 64, 64) != (int64_t)rb_tensor_get(ti, row * 2 + 1) ||
                           rb_rel_kp_index(r[1], 64, 64) != (int64_t)rb_tensor_get(ri, row * 2) ||
                           rb_rel_kp_index(r[0], 64, 64) != (int64_t)rb_tensor_get(ri, row * 2 + 1) ||
                           rb_rel_kp_index(r[1], 4, 64) != (int64_t)rb_tensor_get(bi, row * 2) ||
                           rb_rel_kp_index(r[0], 4, 64) != (int64_t)rb_tensor_get(bi, row * 2 + 1);
                }
            CHECK(bad == 0, "%d keypoint index rows differ", bad);
            rb_tensor *bug = rb_rel_kml(c, o.z0_hat, get("concept_latents"), kp, 2, 4, NULL);
            cmp("a.released_bug.L_kml", bug, get("a.released_bug.L_kml"), 1.69e-6);
            cmp("a.L_cal (in-block)", o.cal, get("a.L_cal"), 10 * 7.58e-10);
            rb_tensor *tot2 = rb_add(c, rb_add(c, o.mse, rb_scale(c, o.kml, 1e-3f)), rb_scale(c, o.cal, 1e-3f));
            cmp("a.total 0.001/0.001", tot2, get("a.loss_total_kml0.001_cal0.001"), 2.87e-7);
            /* the parts, each by its own backward pass over the same tape */
            rb_tensor *part[3] = {o.mse, o.kml, o.cal};
            const char *file[3] = {"grad_a.mse.safetensors", "grad_a.kml.safetensors", "grad_a.cal.safetensors"};
            const double tol[3] = {10 * 1.2756e-08, 10 * 3.3632e-08, 10 * 8.9977e-10};
            for (int i = 0; i < 3; i++) {
                zero_grads(&L);
                REQUIRE(rb_backward(c, part[i]) == RB_OK, "backward %s: %s", file[i], rb_last_error());
                cmp_grads(&L, file[i], tol[i]);
                save_grads(&L, g[i]);
            }
            cmp_grad_combo(&L, g, (const double[]){1, 1e-3, 1e-3}, 3, "grad_a.total_kml0.001_cal0.001.safetensors",
                           10 * 1.1965e-08);
        }
        zero_grads(&L);
        double norm = 0;
        REQUIRE(rb_backward(c, o.total) == RB_OK, "backward: %s", rb_last_error());
        if (step == 1)
            cmp_grads(&L, "grad_a.total_kml0.1_cal0.001.safetensors", 10 * 2.5682e-08);
        REQUIRE(rb_clip_grad_norm(L.n, L.params, 1.0, 0, &norm) == RB_OK && rb_adam_step(&opt) == RB_OK, "step %d: %s",
                step, rb_last_error());
        check_adamw(&L, step, ((float *)o.total->data)[0], norm);
    }
    for (int i = 0; i < 3; i++)
        free(g[i]);
    rb_adam_free(&opt);
    lora_teardown(&L);
}

static void t_kp_index(void) {
    /* float32 product then truncation toward zero; out-of-range clamped */
    CHECK(rb_rel_kp_index(0.5f, 64, 64) == 32 && rb_rel_kp_index(0.9999f, 64, 64) == 63, "index");
    CHECK(rb_rel_kp_index(1.0f, 64, 64) == 63 && rb_rel_kp_index(-0.1f, 64, 64) == 0, "clamp");
    CHECK(rb_rel_kp_index(0.99f, 4, 64) == 3, "released x4 mapping");
}

int main(void) {
    RUN(t_kp_index);
    RUN(t_case_b);
    RUN(t_case_a_and_adamw);
    fwd_free(&F);
    if (ready) {
        rb_st_close(&io);
        rb_ms_adapter_free(&ad);
        rb_unet_free(&unet);
        rb_sched_free(&sched);
    }
    return t_done();
}
