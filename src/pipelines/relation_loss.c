#include "relation_loss.h"
#include "relation_data.h"

#include <math.h>
#include <string.h>

void rb_rel_loss_config_paper(rb_rel_loss_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->w_kml = 1e-3f;
    cfg->kml_t_max = -1;
    cfg->w_cal = 0.0f;
    cfg->cal_max_hw = 32 * 32;
}

void rb_rel_loss_config_official(rb_rel_loss_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->w_kml = 0.1f;
    cfg->kml_t_max = 333;
    cfg->w_cal = 1e-3f;
    cfg->cal_max_hw = 32 * 32;
}

/* ---- predicate attention maps (get_predicate_attention_maps) ---- */

/* map [B, N, 1] = mean over heads of mean over span tokens of softmax(q k^T d^-0.5) over the T text tokens.
 * q: [B, N, C], k: [B, T, C]. The two means are one matmul with a constant selection vector per row
 * (weights 1/(heads*span) on the span's columns), which gives the same value as the reference's two means
 * up to float rounding. */
static rb_tensor *predicate_map(rb_ctx *c, rb_tensor *q, rb_tensor *k, int heads, const int64_t *span, int64_t B) {
    if (!q || !k)
        return NULL;
    int64_t N = q->shape[1], C = q->shape[2], T = k->shape[1], D = C / heads;
    rb_tensor *qh = rb_permute(c, rb_reshape(c, q, 4, (int64_t[]){B, N, heads, D}), (int[]){0, 2, 1, 3});
    rb_tensor *kh = rb_permute(c, rb_reshape(c, k, 4, (int64_t[]){B, T, heads, D}), (int[]){0, 2, 1, 3});
    rb_tensor *p = rb_softmax(c, rb_scale(c, rb_matmul(c, qh, kh, 1), 1.0f / sqrtf((float)D))); /* [B, H, N, T] */
    p = rb_reshape(c, rb_permute(c, p, (int[]){0, 2, 1, 3}), 3, (int64_t[]){B, N, heads * T}); /* [B, N, H*T] */
    if (!p)
        return NULL;
    rb_tensor *rows[16];
    if (B > 16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "CAL: batch %lld > 16", (long long)B);
    for (int64_t b = 0; b < B; b++) {
        int64_t s0 = span[2 * b], s1 = span[2 * b + 1];
        if (s0 < 0 || s1 <= s0 || s1 > T)
            return rb_ctx_error(c, RB_ERR_INVALID, "CAL: predicate token span [%lld, %lld) of row %lld is not inside "
                                "the %lld text tokens", (long long)s0, (long long)s1, (long long)b, (long long)T);
        rb_tensor *sel = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){1, heads * T, 1});
        if (!sel)
            return NULL;
        float *sd = sel->data;
        memset(sd, 0, (size_t)(heads * T) * sizeof *sd);
        for (int h = 0; h < heads; h++)
            for (int64_t t = s0; t < s1; t++)
                sd[h * T + t] = 1.0f / (float)(heads * (s1 - s0));
        rows[b] = rb_matmul(c, rb_slice(c, p, 0, b, b + 1), sel, 0); /* [1, N, 1] */
    }
    return B == 1 ? rows[0] : rb_concat(c, rows, (int)B, 0);
}

/* F.interpolate(x, size=(oh, ow), mode="nearest") of [B, ih, iw]: src = min(floor(dst * (float)in/out), in - 1). */
static void nearest(float *out, const float *in, int64_t B, int64_t ih, int64_t iw, int64_t oh, int64_t ow) {
    float sh = (float)ih / (float)oh, sw = (float)iw / (float)ow;
    for (int64_t b = 0; b < B; b++)
        for (int64_t y = 0; y < oh; y++) {
            int64_t sy = (int64_t)floorf((float)y * sh);
            sy = sy < ih - 1 ? sy : ih - 1;
            for (int64_t x = 0; x < ow; x++) {
                int64_t sx = (int64_t)floorf((float)x * sw);
                sx = sx < iw - 1 ? sx : iw - 1;
                out[(b * oh + y) * ow + x] = in[(b * ih + sy) * iw + sx];
            }
        }
}

static int check_segmaps(rb_ctx *c, const rb_tensor *segmaps, int64_t B) {
    if (!segmaps || segmaps->ndim != 3 || segmaps->shape[0] != B || segmaps->dtype != RB_F32 ||
        !rb_is_contiguous(segmaps)) {
        rb_ctx_error(c, RB_ERR_INVALID, "CAL: object segmaps must be f32 [%lld, H, W]", (long long)B);
        return 0;
    }
    return 1;
}

/* The segmap [B, h_i, w_i] stored layer i uses: the released loop re-assigns object_segmaps at every
 * layer, so each resize starts from the previous layer's (replayed from the original, so that a block
 * recomputed in backward finds its layer's map without state). */
static rb_tensor *chained_segmap(rb_ctx *c, const rb_rel_attn_call *call, int i) {
    const rb_tensor *s0 = call->segmaps;
    int64_t B = s0->shape[0], ch = s0->shape[1], cw = s0->shape[2];
    const float *cur = s0->data;
    rb_tensor *seg = NULL;
    for (int j = 0; j <= i; j++) {
        int64_t h = call->map_h[j], w = call->map_w[j];
        if (!(seg = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){B, h, w})))
            return NULL;
        nearest(seg->data, cur, B, ch, cw, h, w);
        cur = seg->data, ch = h, cw = w;
    }
    return seg;
}

/* One layer's CAL term [B]: sum(map bg)/(sum bg + 1e-5) - sum(map obj)/(sum obj + 1e-5) per row, for a
 * map [B, N, 1] and the layer's segmap [B, h, w] (N = h*w, bg = 1 - obj). */
static rb_tensor *layer_term(rb_ctx *c, rb_tensor *map, const rb_tensor *seg, int64_t B, int64_t N) {
    rb_tensor *bg = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){B, N, 1});
    rb_tensor *objt = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){B, N, 1});
    if (!bg || !objt || !map)
        return NULL;
    if (B > 16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "CAL: batch %lld > 16", (long long)B);
    const float *od = seg->data;
    float *bd = bg->data;
    for (int64_t p = 0; p < B * N; p++)
        bd[p] = 1.0f - od[p];
    memcpy(objt->data, od, (size_t)(B * N) * sizeof(float));
    rb_tensor *rows[16];
    for (int64_t b = 0; b < B; b++) {
        double sb = 0, so = 0; /* torch sums a 0/1 map exactly */
        for (int64_t p = 0; p < N; p++)
            sb += bd[b * N + p], so += od[b * N + p];
        rb_tensor *m = rb_slice(c, map, 0, b, b + 1);
        rb_tensor *fb = rb_scale(c, rb_sum(c, rb_mul(c, m, rb_slice(c, bg, 0, b, b + 1))), 1.0f / ((float)sb + 1e-5f));
        rb_tensor *fo = rb_scale(c, rb_sum(c, rb_mul(c, m, rb_slice(c, objt, 0, b, b + 1))), 1.0f / ((float)so + 1e-5f));
        rows[b] = rb_reshape(c, rb_sub(c, fb, fo), 1, (int64_t[]){1});
    }
    return B == 1 ? rows[0] : rb_concat(c, rows, (int)B, 0); /* [B] */
}

/* ---- the auxiliary-loss op of in-block CAL ---- */

/* dh += dout; d(term)[b] += dL/dL_cal * (1/n_maps) / B: the factor the gradient of
 * L_cal = mean_b(sum_i term_i[b]) * (1/n_maps) gives every term, computed as rb_rel_cal's backward
 * computes it (scale, then mean). */
static rb_status cal_aux_backward(rb_ctx *c, rb_tape_entry *e) {
    const rb_rel_attn_call *call = e->user;
    rb_tensor *h = e->in[0], *term = e->in[1];
    const float *dout = e->out->grad->data;
    if (rb_needs_grad(h)) {
        rb_tensor *gh = rb_grad_of(c, h);
        if (!gh)
            return c->status;
        float *g = gh->data;
        int64_t n = rb_numel(h);
#pragma omp parallel for simd schedule(static) if (n > 65536)
        for (int64_t i = 0; i < n; i++)
            g[i] += dout[i];
    }
    const rb_tensor *cg = call->cal ? call->cal->grad : NULL;
    float dcal = cg ? ((const float *)cg->data)[0] : 0.0f;
    if (rb_needs_grad(term) && dcal != 0.0f) {
        rb_tensor *gt = rb_grad_of(c, term);
        if (!gt)
            return c->status;
        int64_t B = rb_numel(term);
        float w = (float)((double)(dcal * (1.0f / (float)call->n_maps)) * (1.0 / (double)B));
        for (int64_t b = 0; b < B; b++)
            ((float *)gt->data)[b] += w;
    }
    return RB_OK;
}

/* out = h (a view of the same data), recorded with the layer's term as a second input. */
static rb_tensor *cal_aux(rb_ctx *c, rb_tensor *h, rb_tensor *term, rb_rel_attn_call *call) {
    if (c->status != RB_OK || !h || !term)
        return NULL;
    rb_tensor *out = rb_arena_alloc(c->arena, sizeof *out);
    if (!out)
        return rb_ctx_fail(c, RB_ERR_OOM);
    *out = *h;
    out->grad = NULL, out->requires_grad = 0, out->name = NULL;
    rb_tape_entry *e = rb_tape_record(c, "cal_aux", cal_aux_backward, out, 2, (rb_tensor *[]){h, term});
    if (e)
        e->user = call;
    return c->status == RB_OK ? out : NULL;
}

rb_tensor *rb_rel_attn2(rb_ctx *c, const rb_unet_attn *attn, rb_tensor *hidden, rb_tensor *context, int64_t height,
                        int64_t width, void *user) {
    rb_rel_attn_call *call = user;
    rb_tensor *out = rb_ms_attn2(c, attn, hidden, context, height, width, &call->ms);
    if (!out || !call->pred_span || height * width > call->max_hw)
        return out;
    int64_t B = context->shape[0];
    int i;
    if (call->segmaps && call->cal) { /* a block recomputed in backward: find its layer */
        for (i = 0; i < call->n_maps && call->map_attn[i] != attn->index; i++)
            ;
        if (i == call->n_maps)
            return rb_ctx_error(c, RB_ERR_INTERNAL, "CAL: %s was not stored in the forward", attn->name);
    } else {
        if (call->n_maps >= RB_REL_MAX_MAPS)
            return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "CAL: more than %d stored layers", RB_REL_MAX_MAPS);
        if (call->segmaps && (B > 16 || !check_segmaps(c, call->segmaps, B)))
            return B > 16 ? rb_ctx_error(c, RB_ERR_UNSUPPORTED, "CAL: batch %lld > 16", (long long)B) : NULL;
        i = call->n_maps;
    }
    /* the query and the text keys again (the masked processor keeps them inside) */
    int64_t T = call->ms.adapter->text_tokens;
    rb_tensor *q = rb_unet_attn_proj(c, attn, RB_UNET_Q, hidden);
    rb_tensor *k = rb_unet_attn_proj(c, attn, RB_UNET_K, rb_slice(c, context, 1, 0, T));
    rb_tensor *m = predicate_map(c, q, k, attn->heads, call->pred_span, B);
    if (!m)
        return NULL;
    if (!call->segmaps || !call->cal) {
        call->n_maps++;
        call->maps[i] = call->segmaps ? NULL : m;
        call->map_h[i] = height;
        call->map_w[i] = width;
        call->map_layer[i] = attn->name;
        call->map_attn[i] = attn->index;
    }
    if (!call->segmaps)
        return out;
    rb_tensor *term = layer_term(c, m, chained_segmap(c, call, i), B, height * width);
    if (!term)
        return NULL;
    if (!call->cal)
        for (int64_t b = 0; b < B; b++)
            call->layer_value[i][b] = ((const float *)term->data)[b];
    return cal_aux(c, out, term, call);
}

void rb_rel_procs(const rb_unet *unet, rb_rel_attn_call *call, rb_unet_proc *procs) {
    call->n_maps = 0;
    call->cal = NULL;
    for (int i = 0; i < unet->n_attn; i++) {
        procs[i].fn = unet->attn[i]->cross ? rb_rel_attn2 : NULL;
        procs[i].user = call;
    }
}

/* ---- z0_hat and KML ---- */

/* a constant [B, 1, 1, 1] tensor */
static rb_tensor *per_row(rb_ctx *c, int64_t B, const float *v) {
    rb_tensor *t = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){B, 1, 1, 1});
    if (t)
        memcpy(t->data, v, (size_t)B * sizeof *v);
    return t;
}

rb_tensor *rb_rel_pred_x0(rb_ctx *c, rb_tensor *x_t, rb_tensor *eps, const float *abar) {
    if (c->status != RB_OK || !x_t || !eps)
        return NULL;
    int64_t B = x_t->shape[0];
    float sb[16], ia[16];
    if (B > 16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "pred_x0: batch %lld > 16", (long long)B);
    for (int64_t b = 0; b < B; b++) { /* DDPMScheduler.step: beta_prod_t ** 0.5, alpha_prod_t ** 0.5 in float32 */
        sb[b] = sqrtf(1.0f - abar[b]);
        ia[b] = 1.0f / sqrtf(abar[b]);
    }
    rb_tensor *num = rb_sub(c, x_t, rb_mul(c, eps, per_row(c, B, sb)));
    return rb_mul(c, num, per_row(c, B, ia));
}

int64_t rb_rel_kp_index(float kp, int64_t scale, int64_t limit) {
    float v = kp * (float)scale; /* float32 product, then .to(torch.int64) truncates toward zero */
    int64_t i = (int64_t)v;
    return i < 0 ? 0 : i >= limit ? limit - 1 : i;
}

rb_tensor *rb_rel_kml(rb_ctx *c, rb_tensor *z0_hat, const rb_tensor *concept_latents, const rb_tensor *keypoints, int n,
                      int ref_scale, const int *active) {
    if (c->status != RB_OK || !z0_hat)
        return NULL;
    const int K = RB_RELATION_KEYPOINTS;
    int64_t B = z0_hat->shape[0], C = z0_hat->shape[1], H = z0_hat->shape[2], W = z0_hat->shape[3];
    const rb_tensor *cl = concept_latents, *kp = keypoints;
    if (!cl || cl->ndim != 5 || cl->shape[0] != B || cl->shape[1] != n || cl->shape[2] != C || cl->shape[3] != H ||
        cl->shape[4] != W || cl->dtype != RB_F32 || !rb_is_contiguous(cl))
        return rb_ctx_error(c, RB_ERR_INVALID, "KML: concept latents must be f32 [%lld, %d, %lld, %lld, %lld]",
                            (long long)B, n, (long long)C, (long long)H, (long long)W);
    if (!kp || kp->ndim != 4 || kp->shape[0] != B || kp->shape[1] != 2 * n || kp->shape[2] != K || kp->shape[3] != 2 ||
        kp->dtype != RB_F32 || !rb_is_contiguous(kp))
        return rb_ctx_error(c, RB_ERR_INVALID, "KML: keypoints must be f32 [%lld, %d, %d, 2]", (long long)B, 2 * n, K);
    int64_t rs = ref_scale > 0 ? ref_scale : W, P = (int64_t)n * K;
    rb_tensor *flat = rb_reshape(c, z0_hat, 3, (int64_t[]){B, C, H * W});
    rb_tensor *tg[16], *rf[16];
    int na = 0;
    if (B > 16)
        return rb_ctx_error(c, RB_ERR_UNSUPPORTED, "KML: batch %lld > 16", (long long)B);
    for (int64_t b = 0; b < B && flat; b++) {
        if (active && !active[b])
            continue;
        rb_tensor *idx = rb_ctx_tensor(c, RB_I64, 3, (int64_t[]){1, C, P});
        rb_tensor *ref = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){1, C, P});
        if (!idx || !ref)
            return NULL;
        int64_t *ix = idx->data;
        float *rd = ref->data;
        const float *kd = (const float *)kp->data + b * 2 * n * K * 2;
        const float *cd = (const float *)cl->data + b * n * C * H * W;
        for (int e = 0; e < n; e++)
            for (int j = 0; j < K; j++) {
                const float *t = kd + (e * K + j) * 2, *r = kd + ((n + e) * K + j) * 2;
                /* W for both axes, as the reference (square latents) */
                int64_t th = rb_rel_kp_index(t[1], W, H), tw = rb_rel_kp_index(t[0], W, W);
                int64_t rh = rb_rel_kp_index(r[1], rs, H), rw = rb_rel_kp_index(r[0], rs, W);
                for (int64_t ch = 0; ch < C; ch++) {
                    ix[ch * P + e * K + j] = th * W + tw;
                    rd[ch * P + e * K + j] = cd[((int64_t)e * C + ch) * H * W + rh * W + rw];
                }
            }
        tg[na] = rb_gather(c, rb_slice(c, flat, 0, b, b + 1), 2, idx);
        rf[na++] = ref;
    }
    if (c->status != RB_OK || na == 0)
        return NULL;
    rb_tensor *t = na == 1 ? tg[0] : rb_concat(c, tg, na, 0), *r = na == 1 ? rf[0] : rb_concat(c, rf, na, 0);
    return rb_mse(c, r, t); /* mean over the rows x 4 channels */
}

/* ---- CAL ---- */

/* value [] = mean over rows of (sum over layers of term [B]) * (1/n), by the ops rb_rel_cal uses */
static rb_tensor *cal_of_sum(rb_ctx *c, rb_tensor *sum, int n_maps) {
    return rb_scale(c, rb_mean(c, sum), 1.0f / (float)n_maps);
}

/* no gradient of its own: the blocks' auxiliary ops read this node's gradient */
static rb_status cal_collect_backward(rb_ctx *c, rb_tape_entry *e) {
    (void)c, (void)e;
    return RB_OK;
}

rb_tensor *rb_rel_cal_collect(rb_ctx *c, rb_rel_attn_call *call, rb_tensor *anchor) {
    if (c->status != RB_OK || call->n_maps == 0 || !call->segmaps)
        return NULL;
    int64_t B = call->segmaps->shape[0];
    struct rb_tape *tape = c->tape;
    c->tape = NULL; /* values only */
    rb_tensor *sum = NULL;
    for (int i = 0; i < call->n_maps; i++) {
        rb_tensor *t = rb_ctx_tensor(c, RB_F32, 1, (int64_t[]){B});
        if (!t)
            break;
        memcpy(t->data, call->layer_value[i], (size_t)B * sizeof(float));
        sum = sum ? rb_add(c, sum, t) : t;
    }
    rb_tensor *v = cal_of_sum(c, sum, call->n_maps);
    c->tape = tape;
    if (!v)
        return NULL;
    v->requires_grad = 0;
    rb_tape_record(c, "cal_collect", cal_collect_backward, v, 1, &anchor);
    call->cal = v;
    return c->status == RB_OK ? v : NULL;
}

rb_tensor *rb_rel_cal(rb_ctx *c, const rb_rel_attn_call *call, const rb_tensor *segmaps, rb_tensor **layer_loss,
                      rb_tensor **segmap_used) {
    if (c->status != RB_OK || call->n_maps == 0)
        return NULL;
    int64_t B = call->maps[0] ? call->maps[0]->shape[0] : 0;
    if (!call->maps[0])
        return rb_ctx_error(c, RB_ERR_INVALID, "CAL: the maps were not stored (in-block CAL: use rb_rel_cal_collect)");
    if (!check_segmaps(c, segmaps, B))
        return NULL;
    const float *cur = segmaps->data;
    int64_t ch = segmaps->shape[1], cw = segmaps->shape[2];
    rb_tensor *sum = NULL;
    for (int i = 0; i < call->n_maps; i++) {
        int64_t h = call->map_h[i], w = call->map_w[i];
        rb_tensor *seg = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){B, h, w});
        if (!seg)
            return NULL;
        nearest(seg->data, cur, B, ch, cw, h, w);
        cur = seg->data, ch = h, cw = w;
        rb_tensor *ll = layer_term(c, call->maps[i], seg, B, h * w);
        if (!ll)
            return NULL;
        if (layer_loss)
            layer_loss[i] = ll;
        if (segmap_used)
            segmap_used[i] = seg;
        sum = sum ? rb_add(c, sum, ll) : ll;
    }
    /* mean over layers ([B], as released), then over rows (the released code needs B = 1) */
    return cal_of_sum(c, sum, call->n_maps);
}

/* ---- the whole loss ---- */

rb_status rb_rel_loss(rb_ctx *c, const rb_rel_loss_config *cfg, const rb_rel_loss_in *in, rb_rel_loss_out *out) {
    memset(out, 0, sizeof *out);
    if (c->status != RB_OK)
        return c->status;
    if (!in->x_t || !in->eps || !in->noise || !rb_same_shape(in->eps, in->noise))
        return c->status = rb_error(RB_ERR_INVALID, "loss: eps and noise must have the same shape");
    int64_t B = in->eps->shape[0];
    if (B > 16)
        return c->status = rb_error(RB_ERR_UNSUPPORTED, "loss: batch %lld > 16", (long long)B);
    out->mse = rb_mse(c, in->eps, (rb_tensor *)in->noise);
    rb_tensor *total = out->mse;
    int active[16], any = 0;
    float abar[16];
    for (int64_t b = 0; b < B; b++) {
        int64_t t = in->timesteps[b];
        active[b] = cfg->kml_t_max < 0 || t <= cfg->kml_t_max;
        any |= active[b];
        abar[b] = in->alphas_cumprod[t];
    }
    if (cfg->w_kml != 0.0f && any) {
        out->z0_hat = rb_rel_pred_x0(c, in->x_t, in->eps, abar);
        out->kml = rb_rel_kml(c, out->z0_hat, in->concept_latents, in->keypoints, in->n_entities, cfg->kml_ref_scale,
                              active);
        total = rb_add(c, total, rb_scale(c, out->kml, cfg->w_kml));
    }
    if (cfg->w_cal != 0.0f) {
        if (!in->attn || in->attn->n_maps == 0)
            return c->status = rb_error(RB_ERR_INVALID, "loss: CAL weight %g but no predicate map was stored",
                                        (double)cfg->w_cal);
        out->cal = in->attn->segmaps ? rb_rel_cal_collect(c, in->attn, in->eps)
                                     : rb_rel_cal(c, in->attn, in->segmaps, NULL, NULL);
        total = rb_add(c, total, rb_scale(c, out->cal, cfg->w_cal));
    }
    out->total = total;
    return c->status;
}
