#include "ms_adapter.h"

#include <math.h>
#include <string.h>

#include "core/mem.h"

rb_status rb_ms_adapter_load(rb_ms_adapter *a, const char *path, const rb_unet *unet, int dim_head) {
    memset(a, 0, sizeof *a);
    a->text_tokens = 77;
    RB_TRY(rb_weights_open(&a->w, path));
    rb_weights *w = &a->w;
    rb_status s = rb_resampler_load(&a->resampler, w, "image_proj.", dim_head);
    int64_t D = unet->cfg.cross_attention_dim;
    if (s == RB_OK)
        a->dummy_tokens = rb_weights_get(w, 1, 3, (int64_t[]){1, -1, D}, "dummy_image_tokens");
    a->n_attn = unet->n_attn;
    a->to_k_ip = rb_calloc((size_t)unet->n_attn * sizeof *a->to_k_ip, "MS adapter");
    a->to_v_ip = rb_calloc((size_t)unet->n_attn * sizeof *a->to_v_ip, "MS adapter");
    if (!a->to_k_ip || !a->to_v_ip)
        s = RB_ERR_OOM;
    for (int i = 0; s == RB_OK && i < unet->n_attn; i++) {
        const rb_unet_attn *at = unet->attn[i];
        if (!at->cross)
            continue;
        const int64_t shape[] = {at->dim, D};
        a->to_k_ip[i] = rb_weights_get(w, 0, 2, shape, "ms_adapter.%d.to_k_ip.weight", i);
        a->to_v_ip[i] = rb_weights_get(w, 0, 2, shape, "ms_adapter.%d.to_v_ip.weight", i);
    }
    if (s == RB_OK)
        s = w->status;
    if (s == RB_OK) {
        a->num_dummy = (int)a->dummy_tokens->shape[1];
        if (a->resampler.cfg.output_dim != D)
            s = rb_error(RB_ERR_FORMAT, "%s: resampler output width %d differs from the UNet's cross-attention width %lld",
                         path, a->resampler.cfg.output_dim, (long long)D);
    }
    if (s == RB_OK && rb_weights_unused(w, 5) > 0)
        s = rb_error(RB_ERR_FORMAT, "%s: tensors the adapter does not use (listed above): not an MS-Diffusion adapter "
                     "for this UNet?", path);
    if (s != RB_OK)
        rb_ms_adapter_free(a);
    return s;
}

void rb_ms_adapter_free(rb_ms_adapter *a) {
    rb_resampler_free(&a->resampler);
    rb_free(a->to_k_ip);
    rb_free(a->to_v_ip);
    rb_weights_close(&a->w);
    memset(a, 0, sizeof *a);
}

void rb_ms_box_cells(const float *box, int64_t h, int64_t w, int64_t *r0, int64_t *r1, int64_t *c0, int64_t *c1) {
    int64_t v[4] = {(int64_t)floorf(box[0] * (float)w), (int64_t)ceilf(box[2] * (float)w),
                    (int64_t)floorf(box[1] * (float)h), (int64_t)ceilf(box[3] * (float)h)};
    int64_t lim[4] = {w, w, h, h};
    for (int i = 0; i < 4; i++)
        v[i] = v[i] < 0 ? 0 : v[i] > lim[i] ? lim[i] : v[i];
    *c0 = v[0], *c1 = v[1], *r0 = v[2], *r1 = v[3];
}

rb_status rb_ms_layout_init(rb_ms_layout *l, int n_attn, const int64_t (*spans)[2], int start_step, float threshold) {
    memset(l, 0, sizeof *l);
    l->n_attn = n_attn, l->spans = spans, l->start_step = start_step, l->mask_threshold = threshold;
    l->sum = rb_calloc((size_t)n_attn * sizeof *l->sum, "auto layout");
    l->count = rb_calloc((size_t)n_attn * sizeof *l->count, "auto layout");
    l->numel = rb_calloc((size_t)n_attn * sizeof *l->numel, "auto layout");
    if (!l->sum || !l->count || !l->numel) {
        rb_ms_layout_free(l);
        return RB_ERR_OOM;
    }
    return RB_OK;
}

void rb_ms_layout_free(rb_ms_layout *l) {
    for (int i = 0; l->sum && i < l->n_attn; i++)
        rb_free(l->sum[i]);
    rb_free(l->sum);
    rb_free(l->count);
    rb_free(l->numel);
    memset(l, 0, sizeof *l);
}

/* Adds this call's phrase maps to the layer's sums: map_j(p) = mean over heads and over the tokens of
 * span j of softmax_t(q_p . k_t / sqrt(d)) over the text tokens. q [B, N, C], k [B, T, C]. */
static rb_status keep_phrase_maps(rb_ms_layout *l, const rb_unet_attn *attn, const rb_tensor *q, const rb_tensor *k,
                                  int n_sub) {
    int64_t B = q->shape[0], N = q->shape[1], C = q->shape[2], T = k->shape[1], H = attn->heads, d = C / H;
    int idx = attn->index;
    if (!l->sum[idx]) {
        l->numel[idx] = B * n_sub * N;
        if (!(l->sum[idx] = rb_calloc((size_t)l->numel[idx] * sizeof(float), "auto layout maps")))
            return RB_ERR_OOM;
    } else if (l->numel[idx] != B * n_sub * N) {
        return rb_error(RB_ERR_INVALID, "%s: auto layout state is for another image size", attn->name);
    }
    const float *qp = q->data, *kp = k->data, scale = 1.0f / sqrtf((float)d);
    float *sum = l->sum[idx];
#pragma omp parallel for collapse(2) schedule(static)
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < N; p++) {
            float s[256], acc[16] = {0};
            for (int64_t h = 0; h < H; h++) {
                const float *qv = qp + (b * N + p) * C + h * d;
                float mx = -INFINITY, z = 0;
                for (int64_t t = 0; t < T && t < 256; t++) {
                    const float *kv = kp + (b * T + t) * C + h * d;
                    float dot = 0;
                    for (int64_t e = 0; e < d; e++)
                        dot += qv[e] * kv[e];
                    s[t] = dot * scale;
                    mx = fmaxf(mx, s[t]);
                }
                for (int64_t t = 0; t < T && t < 256; t++)
                    z += (s[t] = expf(s[t] - mx));
                for (int j = 0; j < n_sub && j < 16; j++) {
                    int64_t a = l->spans[j][0], e = l->spans[j][1];
                    float m = 0;
                    for (int64_t t = a; t < e && t < T; t++)
                        m += s[t] / z;
                    acc[j] += e > a ? m / (float)(e - a) : 0.0f;
                }
            }
            for (int j = 0; j < n_sub && j < 16; j++)
                sum[(b * n_sub + j) * N + p] += acc[j] / (float)H;
        }
    l->count[idx]++;
    return RB_OK;
}

/* Region membership [B, n, N] (1 = pixel p belongs to subject j): from the boxes, or for rows with
 * boxes from the automatic layout's thresholded average maps once enough have been kept. */
static void regions(const rb_ms_call *call, const rb_unet_attn *attn, int64_t B, int64_t h, int64_t w, uint8_t *in) {
    const int n = call->n_subjects;
    const int64_t N = h * w;
    const rb_ms_layout *l = call->layout;
    int pseudo = l && l->sum[attn->index] && l->count[attn->index] >= l->start_step;
    memset(in, 0, (size_t)(B * n * N));
    for (int64_t b = 0; b < B; b++)
        for (int j = 0; j < n; j++) {
            const float *box = call->boxes + (b * n + j) * 4;
            uint8_t *m = in + (b * n + j) * N;
            int any_box = box[0] != 0 || box[1] != 0 || box[2] != 0 || box[3] != 0;
            if (pseudo && any_box) {
                const float *avg = l->sum[attn->index] + (b * n + j) * N; /* sum; the count scales it uniformly */
                float lo = INFINITY, hi = -INFINITY;
                for (int64_t p = 0; p < N; p++)
                    lo = fminf(lo, avg[p]), hi = fmaxf(hi, avg[p]);
                float c = (float)l->count[attn->index];
                lo /= c, hi /= c;
                for (int64_t p = 0; p < N; p++)
                    m[p] = (avg[p] / c - lo) / (hi - lo + 1e-5f) > l->mask_threshold;
                continue;
            }
            int64_t r0, r1, c0, c1;
            rb_ms_box_cells(box, h, w, &r0, &r1, &c0, &c1);
            for (int64_t y = r0; y < r1; y++)
                for (int64_t x = c0; x < c1; x++)
                    m[y * w + x] = 1;
        }
}

/* Additive bias [B, 1, N, L] over the image tokens and the row mask [B, N, 1] (1 inside any region). */
static rb_status region_masks(rb_ctx *c, const rb_ms_call *call, const rb_unet_attn *attn, int64_t B, int64_t h,
                              int64_t w, int64_t L, rb_tensor **bias, rb_tensor **rows) {
    const int64_t N = h * w, nd = call->adapter->num_dummy, n = call->n_subjects, Q = (L - nd) / (n ? n : 1);
    *bias = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){B, 1, N, L});
    *rows = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){B, N, 1});
    uint8_t *in = rb_arena_alloc(c->arena, (size_t)(B * n * N) + 1);
    if (!*bias || !*rows || !in)
        return c->status != RB_OK ? c->status : (c->status = RB_ERR_OOM);
    regions(call, attn, B, h, w, in);
    float *bp = (*bias)->data, *rp = (*rows)->data;
    for (int64_t b = 0; b < B; b++)
        for (int64_t p = 0; p < N; p++) {
            float *row = bp + (b * N + p) * L;
            int inside = 0;
            for (int64_t j = 0; j < n; j++) {
                int m = in[(b * n + j) * N + p];
                inside |= m;
                for (int64_t k = 0; k < Q; k++)
                    row[nd + j * Q + k] = m ? 0.0f : -10000.0f;
            }
            for (int64_t k = 0; k < nd; k++) /* dummy tokens only where no subject is */
                row[k] = inside ? -10000.0f : 0.0f;
            rp[b * N + p] = inside ? 1.0f : 0.0f;
        }
    return RB_OK;
}

rb_tensor *rb_ms_attn2(rb_ctx *c, const rb_unet_attn *attn, rb_tensor *hidden, rb_tensor *context, int64_t height,
                       int64_t width, void *user) {
    const rb_ms_call *call = user;
    const rb_ms_adapter *ad = call->adapter;
    if (c->status != RB_OK)
        return NULL;
    int64_t B = context->shape[0], Lc = context->shape[1], T = ad->text_tokens;
    int64_t L = Lc - T, Q = ad->resampler.cfg.num_queries;
    if (Lc <= T || L != ad->num_dummy + (int64_t)call->n_subjects * Q || !ad->to_k_ip[attn->index])
        return rb_ctx_error(c, RB_ERR_INVALID,
                            "%s: MS-Diffusion context has %lld tokens; expected %lld text + %d dummy + %d x %lld image",
                            attn->name, (long long)Lc, (long long)T, ad->num_dummy, call->n_subjects, (long long)Q);
    rb_tensor *q = rb_unet_attn_proj(c, attn, RB_UNET_Q, hidden);
    rb_tensor *text = rb_slice(c, context, 1, 0, T), *img = rb_slice(c, context, 1, T, Lc);
    rb_tensor *k = rb_unet_attn_proj(c, attn, RB_UNET_K, text);
    rb_tensor *out = rb_attention(c, q, k, rb_unet_attn_proj(c, attn, RB_UNET_V, text), attn->heads, NULL, 0.0f);
    if (call->layout && q && k) {
        rb_status s = keep_phrase_maps(call->layout, attn, q, k, call->n_subjects);
        if (s != RB_OK)
            return rb_ctx_fail(c, s);
    }
    rb_tensor *k_ip = rb_linear(c, img, ad->to_k_ip[attn->index], NULL);
    rb_tensor *v_ip = rb_linear(c, img, ad->to_v_ip[attn->index], NULL);
    float gamma = call->scale;
    if (call->subject_scales && v_ip) {
        /* scaling the probabilities of subject j's columns by s_j = scaling its values (dummy x 1) */
        rb_tensor *sv = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){1, L, 1});
        if (!sv)
            return NULL;
        for (int64_t k = 0; k < L; k++)
            ((float *)sv->data)[k] = k < ad->num_dummy ? 1.0f : call->subject_scales[(k - ad->num_dummy) / Q];
        v_ip = rb_mul(c, v_ip, sv);
        gamma = 1.0f;
    }
    rb_tensor *bias, *rows;
    if (region_masks(c, call, attn, B, height, width, L, &bias, &rows) != RB_OK)
        return NULL;
    rb_tensor *ip = rb_mul(c, rb_attention(c, q, k_ip, v_ip, attn->heads, bias, 0.0f), rows);
    rb_tensor *h = rb_add(c, out, rb_scale(c, ip, gamma));
    return rb_unet_attn_proj(c, attn, RB_UNET_OUT, h);
}

void rb_ms_procs(const rb_unet *unet, rb_ms_call *call, rb_unet_proc *procs) {
    for (int i = 0; i < unet->n_attn; i++) {
        procs[i].fn = unet->attn[i]->cross ? rb_ms_attn2 : NULL;
        procs[i].user = call;
    }
}

rb_tensor *rb_ms_image_tokens(rb_ctx *c, const rb_ms_adapter *a, rb_tensor *tokens) {
    if (!tokens)
        return NULL;
    int64_t D = a->dummy_tokens->shape[2];
    rb_tensor *flat = rb_reshape(c, tokens, 3, (int64_t[]){1, -1, D});
    return rb_concat(c, (rb_tensor *[]){a->dummy_tokens, flat}, 2, 1);
}
