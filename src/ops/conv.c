/* rb_conv2d on oneDNN convolution primitives: forward (inference) and backward data in c->matmul_dtype
 * (f32 accumulation, f32 results), backward weights in f32. Every primitive is created with format_tag_any so oneDNN uses its
 * blocked layouts; src/ops/dnnl.c reorders NCHW/OIHW buffers in and out (and caches the reordered
 * frozen weights of the forward pass). */
#include "conv.h"

#include <string.h>

#include "dnnl.h"
#include "ops.h"

enum { CONV_FWD, CONV_BWD_DATA, CONV_BWD_WEIGHTS };

typedef struct conv_key {
    int kind, prop, cdt, wdt, bias, pad_;
    rb_conv_shape s;
} conv_key;

rb_status conv2d_shape(rb_conv_shape *s) {
    if (s->N < 0 || s->C <= 0 || s->H <= 0 || s->W <= 0 || s->O <= 0 || s->kh <= 0 || s->kw <= 0)
        return rb_error(RB_ERR_INVALID, "conv2d: empty or negative dims");
    if (s->sh < 1 || s->sw < 1 || s->ph < 0 || s->pw < 0)
        return rb_error(RB_ERR_INVALID, "conv2d: stride %lldx%lld / padding %lldx%lld invalid for a %lldx%lld kernel",
                        (long long)s->sh, (long long)s->sw, (long long)s->ph, (long long)s->pw, (long long)s->kh,
                        (long long)s->kw);
    if (s->H + 2 * s->ph < s->kh || s->W + 2 * s->pw < s->kw)
        return rb_error(RB_ERR_INVALID, "conv2d: %lldx%lld kernel larger than the padded %lldx%lld input",
                        (long long)s->kh, (long long)s->kw, (long long)s->H, (long long)s->W);
    s->Ho = (s->H + 2 * s->ph - s->kh) / s->sh + 1;
    s->Wo = (s->W + 2 * s->pw - s->kw) / s->sw + 1;
    return RB_OK;
}

static rb_status md_tag(dnnl_memory_desc_t *md, int64_t a, int64_t b, int64_t c, int64_t d, dnnl_data_type_t dt,
                        dnnl_format_tag_t tag) {
    dnnl_dims_t dims = {a, b, c, d};
    return rb_dnnl_check(dnnl_memory_desc_init_by_tag(md, 4, dims, dt, tag), "conv memory descriptor");
}

/* Forward descriptor with every layout left to oneDNN. */
static rb_status fwd_desc(dnnl_convolution_desc_t *cd, const rb_conv_shape *s, dnnl_prop_kind_t prop,
                          dnnl_data_type_t cdt, int bias) {
    dnnl_memory_desc_t src, wei, dst, b;
    RB_TRY(md_tag(&src, s->N, s->C, s->H, s->W, cdt, dnnl_format_tag_any));
    RB_TRY(md_tag(&wei, s->O, s->C, s->kh, s->kw, cdt, dnnl_format_tag_any));
    RB_TRY(md_tag(&dst, s->N, s->O, s->Ho, s->Wo, dnnl_f32, dnnl_format_tag_any));
    dnnl_dims_t bd = {s->O};
    RB_TRY(rb_dnnl_check(dnnl_memory_desc_init_by_tag(&b, 1, bd, dnnl_f32, dnnl_a), "conv bias"));
    dnnl_dims_t st = {s->sh, s->sw}, pl = {s->ph, s->pw}, pr = {s->ph, s->pw};
    return rb_dnnl_check(dnnl_convolution_forward_desc_init(cd, prop, dnnl_convolution_direct, &src, &wei,
                                                            bias ? &b : NULL, &dst, st, pl, pr),
                         "convolution");
}

static rb_status conv_build(const void *desc, dnnl_engine_t eng, dnnl_primitive_desc_t *pd, rb_dnnl_arg_spec *args,
                            int *n_args) {
    const conv_key *k = desc;
    const rb_conv_shape *s = &k->s;
    dnnl_memory_desc_t src_u, wei_u, dst_u, bias_u;
    RB_TRY(md_tag(&src_u, s->N, s->C, s->H, s->W, dnnl_f32, dnnl_nchw));
    RB_TRY(md_tag(&wei_u, s->O, s->C, s->kh, s->kw, (dnnl_data_type_t)k->wdt, dnnl_oihw));
    RB_TRY(md_tag(&dst_u, s->N, s->O, s->Ho, s->Wo, dnnl_f32, dnnl_nchw));
    dnnl_dims_t bd = {s->O};
    RB_TRY(rb_dnnl_check(dnnl_memory_desc_init_by_tag(&bias_u, 1, bd, dnnl_f32, dnnl_a), "conv bias"));
    dnnl_primitive_attr_t attr;
    RB_TRY(rb_dnnl_attr(&attr, 0));
    dnnl_convolution_desc_t cd;
    rb_status st;
    int n = 0;
    if (k->prop == CONV_FWD) {
        st = fwd_desc(&cd, s, dnnl_forward_inference, (dnnl_data_type_t)k->cdt, k->bias);
        if (st == RB_OK)
            st = rb_dnnl_check(dnnl_primitive_desc_create(pd, &cd, attr, eng, NULL), "convolution");
        args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_SRC, RB_DNNL_IN, src_u};
        args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_WEIGHTS, RB_DNNL_IN, wei_u};
        if (k->bias)
            args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_BIAS, RB_DNNL_IN, bias_u};
        args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_DST, RB_DNNL_OUT, dst_u};
    } else {
        /* backward primitives need the forward pd they belong to as a hint */
        dnnl_primitive_desc_t hint = NULL;
        dnnl_data_type_t cdt = (dnnl_data_type_t)k->cdt; /* backward data: diff_dst and weights in cdt */
        st = fwd_desc(&cd, s, dnnl_forward_training, cdt, k->bias);
        if (st == RB_OK)
            st = rb_dnnl_check(dnnl_primitive_desc_create(&hint, &cd, attr, eng, NULL), "convolution (hint)");
        dnnl_memory_desc_t src, wei, dst, b = bias_u;
        if (st == RB_OK)
            st = md_tag(&src, s->N, s->C, s->H, s->W, dnnl_f32, dnnl_format_tag_any);
        if (st == RB_OK)
            st = md_tag(&wei, s->O, s->C, s->kh, s->kw, cdt, dnnl_format_tag_any);
        if (st == RB_OK)
            st = md_tag(&dst, s->N, s->O, s->Ho, s->Wo, cdt, dnnl_format_tag_any);
        if (st == RB_OK) {
            dnnl_dims_t sd = {s->sh, s->sw}, pl = {s->ph, s->pw}, pr = {s->ph, s->pw};
            if (k->prop == CONV_BWD_DATA)
                st = rb_dnnl_check(dnnl_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &src, &wei,
                                                                            &dst, sd, pl, pr),
                                   "convolution backward data");
            else
                st = rb_dnnl_check(dnnl_convolution_backward_weights_desc_init(
                                       &cd, dnnl_convolution_direct, &src, &wei, k->bias ? &b : NULL, &dst, sd, pl, pr),
                                   "convolution backward weights");
        }
        if (st == RB_OK)
            st = rb_dnnl_check(dnnl_primitive_desc_create(pd, &cd, attr, eng, hint), "convolution backward");
        if (hint)
            dnnl_primitive_desc_destroy(hint);
        if (k->prop == CONV_BWD_DATA) {
            args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_DIFF_DST, RB_DNNL_IN, dst_u};
            args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_WEIGHTS, RB_DNNL_IN, wei_u};
            args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_DIFF_SRC, RB_DNNL_ACC, src_u};
        } else {
            wei_u.data_type = dnnl_f32;
            args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_SRC, RB_DNNL_IN, src_u};
            args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_DIFF_DST, RB_DNNL_IN, dst_u};
            args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_DIFF_WEIGHTS, RB_DNNL_ACC, wei_u};
            if (k->bias)
                args[n++] = (rb_dnnl_arg_spec){DNNL_ARG_DIFF_BIAS, RB_DNNL_ACC, bias_u};
        }
    }
    dnnl_primitive_attr_destroy(attr);
    *n_args = n;
    return st;
}

static void key_init(conv_key *k, int prop, rb_dtype compute, rb_dtype wdt, int bias, const rb_conv_shape *s) {
    memset(k, 0, sizeof *k);
    k->kind = 'C';
    k->prop = prop;
    k->cdt = rb_dnnl_dt(compute);
    k->wdt = rb_dnnl_dt(wdt);
    k->bias = bias;
    k->s = *s;
}

rb_status conv2d_forward(rb_arena *scratch, float *out, const float *inp, const void *weight, rb_dtype wdt,
                         const float *bias, const rb_conv_shape *s, rb_dtype compute, int frozen) {
    conv_key k;
    key_init(&k, CONV_FWD, compute, wdt, bias != NULL, s);
    void *ptrs[4];
    int n = 0;
    ptrs[n++] = (void *)inp;
    ptrs[n++] = (void *)weight;
    if (bias)
        ptrs[n++] = (void *)bias;
    ptrs[n++] = out;
    return rb_dnnl_exec(&k, sizeof k, conv_build, scratch, ptrs, frozen ? 2u : 0u);
}

rb_status conv2d_backward(rb_arena *scratch, float *dinp, float *dweight, float *dbias, const float *dout,
                          const float *inp, const void *weight, rb_dtype wdt, const rb_conv_shape *s,
                          rb_dtype compute) {
    conv_key k;
    if (dinp) {
        key_init(&k, CONV_BWD_DATA, compute, wdt, 0, s);
        RB_TRY(rb_dnnl_exec(&k, sizeof k, conv_build, scratch, (void *[]){(void *)dout, (void *)weight, dinp}, 0));
    }
    if (dweight) {
        key_init(&k, CONV_BWD_WEIGHTS, RB_F32, RB_F32, dbias != NULL, s);
        void *ptrs[4] = {(void *)inp, (void *)dout, dweight, dbias};
        RB_TRY(rb_dnnl_exec(&k, sizeof k, conv_build, scratch, ptrs, 0));
    } else if (dbias) { /* bias alone: sum of dout over N, Ho, Wo */
        int64_t hw = s->Ho * s->Wo;
#pragma omp parallel for schedule(static)
        for (int64_t o = 0; o < s->O; o++) {
            double acc = 0;
            for (int64_t n = 0; n < s->N; n++) {
                const float *p = dout + (n * s->O + o) * hw;
                float part = 0;
                for (int64_t i = 0; i < hw; i++)
                    part += p[i];
                acc += part;
            }
            dbias[o] += (float)acc;
        }
    }
    return RB_OK;
}

/* ---- tensor level ---- */

static float *grad_ptr(rb_ctx *c, rb_tensor *t, int *err) {
    if (!rb_needs_grad(t))
        return NULL;
    rb_tensor *g = rb_grad_of(c, t);
    if (!g)
        *err = 1;
    return g ? g->data : NULL;
}

static rb_conv_shape shape_of(const rb_tensor *x, const rb_tensor *w, const int64_t *i) {
    rb_conv_shape s = {x->shape[0], x->shape[1], x->shape[2], x->shape[3], w->shape[0], w->shape[2], w->shape[3],
                       i[0],        i[1],        i[2],        i[3],        0,           0};
    return s;
}

static rb_status conv_bw(rb_ctx *c, rb_tape_entry *e) {
    rb_tensor *x = e->in[0], *w = e->in[1], *b = e->in[2];
    rb_conv_shape s = shape_of(x, w, e->i);
    RB_TRY(conv2d_shape(&s));
    int err = 0;
    float *dx = grad_ptr(c, x, &err), *dw = grad_ptr(c, w, &err), *db = grad_ptr(c, b, &err);
    if (err)
        return c->status;
    if (s.N == 0)
        return RB_OK;
    return conv2d_backward(c->arena, dx, dw, db, e->out->grad->data, e->saved[0]->data, w->data, w->dtype, &s,
                           c->matmul_dtype);
}

rb_tensor *rb_conv2d(rb_ctx *c, rb_tensor *x, rb_tensor *w, rb_tensor *b, int stride_h, int stride_w, int pad_h,
                     int pad_w) {
    if (c->status != RB_OK)
        return NULL;
    if (!x || !w)
        return rb_ctx_error(c, RB_ERR_INVALID, "conv2d: missing input or weight");
    char xs[64], ws[64];
    if (x->dtype != RB_F32 || (w->dtype != RB_F32 && w->dtype != RB_BF16 && w->dtype != RB_F16) ||
        (b && b->dtype != RB_F32 && b->dtype != RB_BF16 && b->dtype != RB_F16))
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "conv2d: x must be f32 and weight/bias f32, bf16 or f16");
    if (c->matmul_dtype != RB_F32 && c->matmul_dtype != RB_BF16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "conv2d: compute dtype %s (want f32 or bf16)",
                            rb_dtype_name(c->matmul_dtype));
    if (x->ndim != 4 || w->ndim != 4 || x->shape[1] != w->shape[1])
        return rb_ctx_error(c, RB_ERR_INVALID, "conv2d: x %s and weight %s (want [N, C, H, W] and [O, C, kh, kw])",
                            rb_shape_str(x, xs, sizeof xs), rb_shape_str(w, ws, sizeof ws));
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[0]))
        return rb_ctx_error(c, RB_ERR_INVALID, "conv2d: bias %s, want [%lld]", rb_shape_str(b, xs, sizeof xs),
                            (long long)w->shape[0]);
    if (!rb_is_contiguous(w))
        return rb_ctx_error(c, RB_ERR_INVALID, "conv2d: weight must be contiguous");
    int64_t params[4] = {stride_h, stride_w, pad_h, pad_w};
    rb_conv_shape s = shape_of(x, w, params);
    rb_status st = conv2d_shape(&s);
    if (st != RB_OK)
        return rb_ctx_fail(c, st);
    rb_tensor *out = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){s.N, s.O, s.Ho, s.Wo});
    if (!out)
        return NULL;
    rb_tensor *xc = x;
    if (!rb_is_contiguous(x)) {
        xc = rb_ctx_tensor(c, RB_F32, 4, x->shape);
        if (!xc || rb_tensor_copy(xc, x) != RB_OK)
            return rb_ctx_fail(c, RB_ERR_OOM);
    }
    const float *bias = NULL;
    if (b && b->dtype == RB_F32 && rb_is_contiguous(b)) {
        bias = b->data;
    } else if (b) {
        rb_tensor *bf = rb_ctx_tensor(c, RB_F32, 1, b->shape);
        if (!bf || rb_tensor_copy(bf, b) != RB_OK)
            return rb_ctx_fail(c, RB_ERR_OOM);
        bias = bf->data;
    }
    if (s.N > 0 && (st = conv2d_forward(c->arena, out->data, xc->data, w->data, w->dtype, bias, &s, c->matmul_dtype,
                                        !w->requires_grad)) != RB_OK)
        return rb_ctx_fail(c, st);
    rb_tape_entry *e = rb_tape_record(c, "conv2d", conv_bw, out, 3, (rb_tensor *[]){x, w, b});
    if (e) {
        e->saved[0] = xc;
        memcpy(e->i, params, sizeof params);
    }
    return c->status == RB_OK ? out : NULL;
}
