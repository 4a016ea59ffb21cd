/* Adam / AdamW and gradient clipping, matching torch 1.13 on CPU bit for bit.
 *
 * Why the arithmetic looks the way it does: torch computes the scalars (1 - lr*wd, 1 - beta1,
 * lr / bias_correction1, ...) as Python doubles, rounds each to float32 when it meets a float32
 * tensor, and runs these tensor kernels (ATen, AVX2 build):
 *   mul_(s)              p * s
 *   add_(g, alpha=a)     fma(g, a, self)           (vec::fmadd)
 *   addcmul_(g, g, v)    fma(v * g, g, self)       (self + v*t1*t2 on Vectorized<float>, which GCC
 *                                                  contracts: torch is built with -ffp-contract=fast)
 *   sqrt() / s           sqrt(v) / s
 *   add_(eps)            x + eps
 *   addcdiv_(m, d, v)    self + (v * m) / d
 * The library is compiled as ISO C11, where GCC does not contract a*b+c into an fma on its own, so
 * the explicit fmaf calls below are exactly the fused operations torch does. Checked bit for bit
 * against torch 1.13.1 (Debian, AVX2 kernels) on 1089 elements x 3 steps (tests/test_optim.c). */
#include "optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "io/safetensors.h"

#define ADAM_FORMAT "relbooth-adam-v1"

void rb_adam_config_init(rb_adam_config *cfg) {
    cfg->lr = 1e-3;
    cfg->beta1 = 0.9;
    cfg->beta2 = 0.999;
    cfg->eps = 1e-8;
    cfg->weight_decay = 1e-2;
    cfg->decoupled = 1;
}

static rb_status check_config(const rb_adam_config *c) {
    /* the same ranges torch.optim.Adam(W) accepts */
    if (!(c->lr >= 0))
        return rb_error(RB_ERR_INVALID, "adam: invalid learning rate %g", c->lr);
    if (!(c->eps >= 0))
        return rb_error(RB_ERR_INVALID, "adam: invalid eps %g", c->eps);
    if (!(c->beta1 >= 0 && c->beta1 < 1) || !(c->beta2 >= 0 && c->beta2 < 1))
        return rb_error(RB_ERR_INVALID, "adam: invalid betas (%g, %g)", c->beta1, c->beta2);
    if (!(c->weight_decay >= 0))
        return rb_error(RB_ERR_INVALID, "adam: invalid weight_decay %g", c->weight_decay);
    return RB_OK;
}

static const char *param_label(const rb_tensor *p, int i, char *buf, size_t n) {
    if (p->name)
        return p->name;
    snprintf(buf, n, "%d", i);
    return buf;
}

rb_status rb_adam_init(rb_adam *opt, const rb_adam_config *cfg, int n, rb_tensor *const *params) {
    memset(opt, 0, sizeof *opt);
    if (!cfg || n < 1 || !params)
        return rb_error(RB_ERR_INVALID, "adam: need a config and at least one parameter");
    RB_TRY(check_config(cfg));
    size_t total = 0; /* floats of m (and of v) */
    for (int i = 0; i < n; i++) {
        rb_tensor *p = params[i];
        char buf[32];
        if (!p)
            return rb_error(RB_ERR_INVALID, "adam: parameter %d is NULL", i);
        if (p->dtype != RB_F32 || !rb_is_contiguous(p))
            return rb_error(RB_ERR_INVALID, "adam: parameter %s must be f32 and contiguous (is %s)",
                            param_label(p, i, buf, sizeof buf), rb_dtype_name(p->dtype));
        if (!rb_add_size(total, (size_t)rb_numel(p), &total))
            return rb_error(RB_ERR_OOM, "adam: parameter sizes overflow");
    }
    /* layout: params[n], exp_avg[n], exp_avg_sq[n], steps[n], then m and v, each 64-byte aligned */
    size_t head = (size_t)n * (3 * sizeof(void *) + sizeof(int64_t)), bytes, fl;
    head = (head + RB_ALIGN - 1) & ~(size_t)(RB_ALIGN - 1);
    if (!rb_mul_size(total, 2 * sizeof(float), &fl) || !rb_add_size(fl, (size_t)n * 2 * RB_ALIGN, &fl) ||
        !rb_add_size(head, fl, &bytes))
        return rb_error(RB_ERR_OOM, "adam: state size overflows");
    char *b = rb_calloc(bytes, "adam state");
    if (!b)
        return RB_ERR_OOM;
    opt->block = b;
    opt->cfg = *cfg;
    opt->n = n;
    opt->params = (rb_tensor **)b;
    opt->exp_avg = (float **)(b + (size_t)n * sizeof(void *));
    opt->exp_avg_sq = (float **)(b + (size_t)n * 2 * sizeof(void *));
    opt->steps = (int64_t *)(b + (size_t)n * 3 * sizeof(void *));
    char *s = b + head;
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < n; i++) {
            (k ? opt->exp_avg_sq : opt->exp_avg)[i] = (float *)s;
            s += ((size_t)rb_numel(params[i]) * sizeof(float) + RB_ALIGN - 1) & ~(size_t)(RB_ALIGN - 1);
        }
    }
    for (int i = 0; i < n; i++)
        opt->params[i] = params[i];
    return RB_OK;
}

void rb_adam_free(rb_adam *opt) {
    rb_free(opt->block);
    memset(opt, 0, sizeof *opt);
}

/* torch.optim.AdamW._single_tensor_adamw for one tensor at step `step` (>= 1):
 *   p = p * (1 - lr*wd); m = fma(g, 1-b1, m*b1); v = fma((1-b2)*g, g, v*b2);
 *   p = p + (-step_size * m) / (sqrt(v) / sqrt(bc2) + eps)
 * and torch.optim.Adam (decoupled = 0): g' = fma(p, wd, g) (grad.add(param, alpha=wd)) instead of
 * the decay of p. p, m, v are updated in place (=). */
static void adam_kernel(float *p, float *m, float *v, const float *g, int64_t n, const rb_adam_config *c,
                        int64_t step) {
    double bc1 = 1.0 - pow(c->beta1, (double)step), bc2 = 1.0 - pow(c->beta2, (double)step);
    const float decay = (float)(1.0 - c->lr * c->weight_decay), wd = (float)c->weight_decay;
    const float b1 = (float)c->beta1, omb1 = (float)(1.0 - c->beta1);
    const float b2 = (float)c->beta2, omb2 = (float)(1.0 - c->beta2);
    const float neg_step = (float)-(c->lr / bc1), bc2_sqrt = (float)sqrt(bc2), eps = (float)c->eps;
    const int decoupled = c->decoupled, l2 = !c->decoupled && c->weight_decay != 0;
#pragma omp parallel for schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
        float gi = g[i], pi = p[i];
        if (decoupled)
            pi = pi * decay;
        else if (l2)
            gi = fmaf(pi, wd, gi);
        float mi = fmaf(gi, omb1, m[i] * b1);
        float vi = fmaf(omb2 * gi, gi, v[i] * b2);
        float denom = sqrtf(vi) / bc2_sqrt + eps;
        p[i] = pi + (neg_step * mi) / denom;
        m[i] = mi;
        v[i] = vi;
    }
}

static rb_status check_grad(const rb_tensor *p, int i) {
    const rb_tensor *g = p->grad;
    char buf[32];
    if (g->dtype != RB_F32 || !rb_is_contiguous(g) || !rb_same_shape(g, p)) {
        char gs[64], ps[64];
        return rb_error(RB_ERR_INVALID, "adam: gradient of %s must be f32, contiguous and %s (is %s %s)",
                        param_label(p, i, buf, sizeof buf), rb_shape_str(p, ps, sizeof ps),
                        rb_dtype_name(g->dtype), rb_shape_str(g, gs, sizeof gs));
    }
    return RB_OK;
}

rb_status rb_adam_step(rb_adam *opt) {
    RB_TRY(check_config(&opt->cfg));
    for (int i = 0; i < opt->n; i++)
        if (opt->params[i]->grad)
            RB_TRY(check_grad(opt->params[i], i));
    for (int i = 0; i < opt->n; i++) {
        rb_tensor *p = opt->params[i];
        if (!p->grad)
            continue;
        opt->steps[i]++;
        adam_kernel(p->data, opt->exp_avg[i], opt->exp_avg_sq[i], p->grad->data, rb_numel(p), &opt->cfg,
                    opt->steps[i]);
    }
    opt->t++;
    return RB_OK;
}

void rb_adam_zero_grad(rb_adam *opt) {
    for (int i = 0; i < opt->n; i++) {
        rb_tensor *g = opt->params[i]->grad;
        if (g)
            memset(g->data, 0, rb_nbytes(g));
    }
}

/* ---- gradient clipping ---- */

rb_status rb_clip_grad_norm(int n, rb_tensor *const *params, double max_norm, int error_if_nonfinite,
                            double *total_norm) {
    if (total_norm)
        *total_norm = 0;
    if (n < 0 || (n > 0 && !params) || !(max_norm >= 0))
        return rb_error(RB_ERR_INVALID, "clip_grad_norm: invalid arguments (n %d, max_norm %g)", n, max_norm);
    double ss = 0;
    for (int i = 0; i < n; i++) {
        const rb_tensor *g = params[i] ? params[i]->grad : NULL;
        if (!g)
            continue;
        if (g->dtype != RB_F32 || !rb_is_contiguous(g))
            return rb_error(RB_ERR_INVALID, "clip_grad_norm: gradient %d must be f32 and contiguous", i);
        const float *d = g->data;
        int64_t m = rb_numel(g);
        double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (m > 65536)
        for (int64_t k = 0; k < m; k++)
            s += (double)d[k] * d[k];
        ss += s;
    }
    double total = sqrt(ss);
    if (total_norm)
        *total_norm = total;
    if (!isfinite(total) && error_if_nonfinite)
        return rb_error(RB_ERR_INVALID, "clip_grad_norm: the total gradient norm is %g; gradients left as they are",
                        total);
    /* torch: clip_coef = max_norm / (total_norm + 1e-6) on a float32 tensor, where python_float / tensor
     * is tensor.reciprocal() * python_float; then clamp(max=1) (NaN stays NaN) and grad.mul_(coef). */
    float coef = (1.0f / ((float)total + 1e-6f)) * (float)max_norm;
    if (coef > 1.0f)
        coef = 1.0f;
    for (int i = 0; i < n; i++) {
        const rb_tensor *g = params[i] ? params[i]->grad : NULL;
        if (!g)
            continue;
        float *d = g->data;
        int64_t m = rb_numel(g);
#pragma omp parallel for schedule(static) if (m > 65536)
        for (int64_t k = 0; k < m; k++)
            d[k] = d[k] * coef;
    }
    return RB_OK;
}

/* ---- state files ---- */

/* "<label><suffix>" strings for every parameter, in one rb_alloc block; NULL on OOM. */
static char **make_keys(const rb_adam *opt, const char *suffix) {
    size_t bytes = (size_t)opt->n * sizeof(char *);
    char buf[32];
    for (int i = 0; i < opt->n; i++)
        bytes += strlen(param_label(opt->params[i], i, buf, sizeof buf)) + strlen(suffix) + 1;
    char **keys = rb_alloc(bytes, "adam keys");
    if (!keys)
        return NULL;
    char *s = (char *)(keys + opt->n);
    for (int i = 0; i < opt->n; i++) {
        keys[i] = s;
        s += sprintf(s, "%s%s", param_label(opt->params[i], i, buf, sizeof buf), suffix) + 1;
    }
    return keys;
}

static rb_status check_unique(const rb_adam *opt, char **keys) {
    for (int i = 0; i < opt->n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(keys[i], keys[j]))
                return rb_error(RB_ERR_INVALID, "adam: parameters %d and %d have the same name \"%s\"", j, i,
                                keys[i]);
    return RB_OK;
}

static const char *const cfg_keys[] = {"format", "n_params", "step",         "lr",       "beta1",
                                       "beta2",  "eps",      "weight_decay", "decoupled"};
enum { N_CFG_META = sizeof cfg_keys / sizeof cfg_keys[0], META_LEN = 32 };

rb_status rb_adam_save(const rb_adam *opt, const char *path) {
    int n = opt->n, n_meta = N_CFG_META + n;
    char **km = make_keys(opt, ".exp_avg"), **kv = make_keys(opt, ".exp_avg_sq"), **ks = make_keys(opt, ".step");
    /* one block: wrapped tensors [2n], their pointers [2n], their names [2n], meta keys, values, text */
    size_t bytes = (size_t)n * 2 * (sizeof(rb_tensor) + sizeof(void *) + sizeof(char *)) +
                   (size_t)n_meta * (2 * sizeof(char *) + META_LEN);
    char *blk = rb_alloc(bytes, "adam save");
    rb_status s = RB_OK;
    if (!km || !kv || !ks || !blk) {
        s = RB_ERR_OOM;
        goto done;
    }
    if ((s = check_unique(opt, km)) != RB_OK)
        goto done;
    rb_tensor *ts = (rb_tensor *)blk;
    const rb_tensor **tp = (const rb_tensor **)(ts + 2 * n);
    const char **names = (const char **)(tp + 2 * n);
    const char **mk = names + 2 * n, **mv = mk + n_meta;
    char *text = (char *)(mv + n_meta);
    for (int i = 0; i < n; i++) {
        const rb_tensor *p = opt->params[i];
        ts[2 * i] = rb_tensor_wrap(opt->exp_avg[i], RB_F32, p->ndim, p->shape);
        ts[2 * i + 1] = rb_tensor_wrap(opt->exp_avg_sq[i], RB_F32, p->ndim, p->shape);
        tp[2 * i] = &ts[2 * i];
        tp[2 * i + 1] = &ts[2 * i + 1];
        names[2 * i] = km[i];
        names[2 * i + 1] = kv[i];
    }
    for (int k = 0; k < n_meta; k++) {
        mk[k] = k < N_CFG_META ? cfg_keys[k] : ks[k - N_CFG_META];
        mv[k] = text + (size_t)k * META_LEN;
    }
    const rb_adam_config *c = &opt->cfg;
    /* %.17g: every double reads back as the same double */
    snprintf(text + 0 * META_LEN, META_LEN, "%s", ADAM_FORMAT);
    snprintf(text + 1 * META_LEN, META_LEN, "%d", n);
    snprintf(text + 2 * META_LEN, META_LEN, "%lld", (long long)opt->t);
    snprintf(text + 3 * META_LEN, META_LEN, "%.17g", c->lr);
    snprintf(text + 4 * META_LEN, META_LEN, "%.17g", c->beta1);
    snprintf(text + 5 * META_LEN, META_LEN, "%.17g", c->beta2);
    snprintf(text + 6 * META_LEN, META_LEN, "%.17g", c->eps);
    snprintf(text + 7 * META_LEN, META_LEN, "%.17g", c->weight_decay);
    snprintf(text + 8 * META_LEN, META_LEN, "%d", c->decoupled ? 1 : 0);
    for (int i = 0; i < n; i++)
        snprintf(text + (size_t)(N_CFG_META + i) * META_LEN, META_LEN, "%lld", (long long)opt->steps[i]);
    s = rb_st_write(path, 2 * n, names, tp, n_meta, mk, mv);
    if (s != RB_OK)
        rb_error_prefix(s, "adam: saving state");
done:
    rb_free(km);
    rb_free(kv);
    rb_free(ks);
    rb_free(blk);
    return s;
}

/* Metadata value of key as a double / a non-negative integer (errors name the file and the key). */
static rb_status meta_double(const rb_safetensors *f, const char *path, const char *key, double *out) {
    const char *v = rb_st_meta(f, key);
    char *end;
    if (!v)
        return rb_error(RB_ERR_FORMAT, "%s: adam state has no metadata \"%s\"", path, key);
    *out = strtod(v, &end);
    if (end == v || *end)
        return rb_error(RB_ERR_FORMAT, "%s: metadata \"%s\" = \"%s\" is not a number", path, key, v);
    return RB_OK;
}

static rb_status meta_int(const rb_safetensors *f, const char *path, const char *key, int64_t max, int64_t *out) {
    const char *v = rb_st_meta(f, key);
    char *end;
    if (!v)
        return rb_error(RB_ERR_FORMAT, "%s: adam state has no metadata \"%s\"", path, key);
    long long x = strtoll(v, &end, 10);
    if (end == v || *end || x < 0 || x > max)
        return rb_error(RB_ERR_FORMAT, "%s: metadata \"%s\" = \"%s\" is not an integer in [0, %lld]", path, key,
                        v, (long long)max);
    *out = x;
    return RB_OK;
}

static rb_status check_state(const rb_adam *opt, const rb_safetensors *f, const char *path, char **km, char **kv,
                             char **ks, int64_t *steps, int64_t *t) {
    const char *fmt = rb_st_meta(f, "format");
    if (!fmt || strcmp(fmt, ADAM_FORMAT))
        return rb_error(RB_ERR_FORMAT, "%s: not an adam state file (format \"%s\", expected \"%s\")", path,
                        fmt ? fmt : "(none)", ADAM_FORMAT);
    int64_t np, dec;
    RB_TRY(meta_int(f, path, "n_params", INT32_MAX, &np));
    if (np != opt->n || f->n != 2 * opt->n)
        return rb_error(RB_ERR_INVALID, "%s: state of %lld parameters (%d tensors), optimizer has %d parameters",
                        path, (long long)np, f->n, opt->n);
    /* The config must match exactly: the state of another config is not this optimizer's state. */
    const rb_adam_config *c = &opt->cfg;
    const double mine[5] = {c->lr, c->beta1, c->beta2, c->eps, c->weight_decay};
    for (int k = 0; k < 5; k++) {
        double v = 0;
        RB_TRY(meta_double(f, path, cfg_keys[3 + k], &v));
        if (v != mine[k])
            return rb_error(RB_ERR_INVALID, "%s: saved %s %.17g differs from the optimizer's %.17g", path,
                            cfg_keys[3 + k], v, mine[k]);
    }
    RB_TRY(meta_int(f, path, "decoupled", 1, &dec));
    if ((dec != 0) != (c->decoupled != 0))
        return rb_error(RB_ERR_INVALID, "%s: saved state is for %s, the optimizer is %s", path,
                        dec ? "AdamW" : "Adam", c->decoupled ? "AdamW" : "Adam");
    RB_TRY(meta_int(f, path, "step", INT64_MAX, t));
    for (int i = 0; i < opt->n; i++) {
        const rb_tensor *p = opt->params[i];
        const char *key[2] = {km[i], kv[i]};
        for (int k = 0; k < 2; k++) {
            const rb_tensor *s = rb_st_get(f, key[k]);
            char a[64], b[64];
            if (!s)
                return rb_error(RB_ERR_INVALID, "%s: no tensor \"%s\"", path, key[k]);
            if (s->dtype != RB_F32 || !rb_same_shape(s, p))
                return rb_error(RB_ERR_INVALID, "%s: \"%s\" is %s %s, expected f32 %s", path, key[k],
                                rb_dtype_name(s->dtype), rb_shape_str(s, a, sizeof a), rb_shape_str(p, b, sizeof b));
        }
        RB_TRY(meta_int(f, path, ks[i], INT64_MAX, &steps[i]));
    }
    return RB_OK;
}

rb_status rb_adam_load(rb_adam *opt, const char *path) {
    char **km = make_keys(opt, ".exp_avg"), **kv = make_keys(opt, ".exp_avg_sq"), **ks = make_keys(opt, ".step");
    int64_t *steps = rb_alloc((size_t)opt->n * sizeof *steps, "adam load"), t = 0;
    rb_safetensors f;
    int opened = 0;
    rb_status s = RB_OK;
    if (!km || !kv || !ks || !steps) {
        s = RB_ERR_OOM;
        goto done;
    }
    if ((s = check_unique(opt, km)) != RB_OK || (s = rb_st_open(&f, path)) != RB_OK)
        goto done;
    opened = 1;
    if ((s = check_state(opt, &f, path, km, kv, ks, steps, &t)) != RB_OK)
        goto done;
    for (int i = 0; i < opt->n; i++) {
        const rb_tensor *p = opt->params[i];
        rb_tensor m = rb_tensor_wrap(opt->exp_avg[i], RB_F32, p->ndim, p->shape);
        rb_tensor v = rb_tensor_wrap(opt->exp_avg_sq[i], RB_F32, p->ndim, p->shape);
        /* copies cannot fail here: dtypes and shapes were checked */
        if ((s = rb_tensor_copy(&m, rb_st_get(&f, km[i]))) != RB_OK ||
            (s = rb_tensor_copy(&v, rb_st_get(&f, kv[i]))) != RB_OK)
            goto done;
        opt->steps[i] = steps[i];
    }
    opt->t = t;
done:
    if (opened)
        rb_st_close(&f);
    rb_free(km);
    rb_free(kv);
    rb_free(ks);
    rb_free(steps);
    return s;
}
