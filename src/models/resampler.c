/* Grounding resampler, in the order of the reference forward:
 *   latents = LN(latent_proj([phrase, fourier(box)]).view(Q, dim))   (or grounding_latents if dropped)
 *   x = proj_in(x)
 *   depth x: latents += Perceiver(LN1(x), LN2(latents)); latents += FF(latents)
 *   out = norm_out(proj_out(attention_norm(latents))) */
#include "resampler.h"

#include <math.h>
#include <string.h>

#include "core/mem.h"

void rb_fourier_boxes(float *out, const float *box, int n_freqs) {
    for (int k = 0; k < n_freqs; k++) {
        /* torch: 100 ** (arange(F) / F) in float32 */
        float f = powf(100.0f, (float)k / (float)n_freqs);
        for (int j = 0; j < 4; j++) {
            out[k * 8 + j] = sinf(f * box[j]);
            out[k * 8 + 4 + j] = cosf(f * box[j]);
        }
    }
}

rb_status rb_resampler_load(rb_resampler *r, rb_weights *w, const char *p, int dim_head) {
    memset(r, 0, sizeof *r);
    rb_resampler_config *c = &r->cfg;
    const int64_t any2[] = {-1, -1}, any3[] = {-1, -1, -1};
    r->grounding_latents = rb_weights_get(w, 1, 3, any3, "%sgrounding_latents", p);
    r->proj_in_w = rb_weights_get(w, 0, 2, any2, "%sproj_in.weight", p);
    r->proj_out_w = rb_weights_get(w, 0, 2, any2, "%sproj_out.weight", p);
    r->latent_proj0_w = rb_weights_get(w, 0, 2, any2, "%slatent_proj.0.weight", p);
    if (w->status != RB_OK)
        return w->status;
    c->num_queries = (int)r->grounding_latents->shape[1];
    c->dim = (int)r->grounding_latents->shape[2];
    c->embedding_dim = (int)r->proj_in_w->shape[1];
    c->output_dim = (int)r->proj_out_w->shape[0];
    c->dim_head = dim_head;
    c->heads = dim_head > 0 ? c->dim / dim_head : 0;
    int64_t ground_in = r->latent_proj0_w->shape[1], hid = r->latent_proj0_w->shape[0];
    for (c->depth = 0;; c->depth++) {
        char key[256];
        snprintf(key, sizeof key, "%slayers.%d.0.to_q.weight", p, c->depth);
        if (!rb_weights_has(w, key))
            break;
    }
    if (c->heads <= 0 || c->dim % dim_head || c->depth == 0 || c->depth > 64)
        return rb_error(RB_ERR_FORMAT, "%s: resampler: dim %d, dim_head %d, depth %d are inconsistent", w->path, c->dim,
                        dim_head, c->depth);
    const int64_t D = c->dim, Q = c->num_queries, O = c->output_dim;
    const int64_t vD[] = {D}, DD[] = {D, D}, KD[] = {2 * D, D}, FD[] = {-1, D};
    r->latent_proj0_b = rb_weights_get(w, 1, 1, (int64_t[]){hid}, "%slatent_proj.0.bias", p);
    r->latent_proj2_w = rb_weights_get(w, 0, 2, (int64_t[]){Q * D, hid}, "%slatent_proj.2.weight", p);
    r->latent_proj2_b = rb_weights_get(w, 1, 1, (int64_t[]){Q * D}, "%slatent_proj.2.bias", p);
    r->latent_norm_w = rb_weights_get(w, 1, 1, vD, "%slatent_norm.weight", p);
    r->latent_norm_b = rb_weights_get(w, 1, 1, vD, "%slatent_norm.bias", p);
    r->proj_in_b = rb_weights_get(w, 1, 1, vD, "%sproj_in.bias", p);
    r->attention_norm_w = rb_weights_get(w, 1, 1, vD, "%sattention_norm.weight", p);
    r->attention_norm_b = rb_weights_get(w, 1, 1, vD, "%sattention_norm.bias", p);
    r->proj_out_b = rb_weights_get(w, 1, 1, (int64_t[]){O}, "%sproj_out.bias", p);
    r->norm_out_w = rb_weights_get(w, 1, 1, (int64_t[]){O}, "%snorm_out.weight", p);
    r->norm_out_b = rb_weights_get(w, 1, 1, (int64_t[]){O}, "%snorm_out.bias", p);
    r->layers = rb_calloc((size_t)c->depth * sizeof *r->layers, "resampler layers");
    if (!r->layers)
        return RB_ERR_OOM;
    for (int i = 0; i < c->depth; i++) {
        rb_perceiver_layer *L = &r->layers[i];
        L->norm1_w = rb_weights_get(w, 1, 1, vD, "%slayers.%d.0.norm1.weight", p, i);
        L->norm1_b = rb_weights_get(w, 1, 1, vD, "%slayers.%d.0.norm1.bias", p, i);
        L->norm2_w = rb_weights_get(w, 1, 1, vD, "%slayers.%d.0.norm2.weight", p, i);
        L->norm2_b = rb_weights_get(w, 1, 1, vD, "%slayers.%d.0.norm2.bias", p, i);
        L->to_q = rb_weights_get(w, 0, 2, DD, "%slayers.%d.0.to_q.weight", p, i);
        L->to_kv = rb_weights_get(w, 0, 2, KD, "%slayers.%d.0.to_kv.weight", p, i);
        L->to_out = rb_weights_get(w, 0, 2, DD, "%slayers.%d.0.to_out.weight", p, i);
        L->ff_norm_w = rb_weights_get(w, 1, 1, vD, "%slayers.%d.1.0.weight", p, i);
        L->ff_norm_b = rb_weights_get(w, 1, 1, vD, "%slayers.%d.1.0.bias", p, i);
        L->ff1 = rb_weights_get(w, 0, 2, FD, "%slayers.%d.1.1.weight", p, i);
        L->ff2 = rb_weights_get(w, 0, 2, (int64_t[]){D, L->ff1 ? L->ff1->shape[0] : -1}, "%slayers.%d.1.3.weight", p, i);
    }
    if (w->status == RB_OK) {
        c->ff_mult = (int)(r->layers[0].ff1->shape[0] / D);
        c->phrase_embeddings_dim = (int)ground_in - 8 * 8;
        c->fourier_freqs = 8; /* passed explicitly by both projects; 8 freqs x 8 = 64 inputs */
        if (c->phrase_embeddings_dim <= 0)
            return rb_error(RB_ERR_FORMAT, "%s: resampler: latent_proj takes %lld inputs, fewer than the 64 box features",
                            w->path, (long long)ground_in);
    }
    return w->status;
}

void rb_resampler_free(rb_resampler *r) {
    rb_free(r->layers);
    memset(r, 0, sizeof *r);
}

/* latents += to_out(attn(q = to_q(LN2(latents)), k, v = to_kv([LN1(x), LN2(latents)]))) */
static rb_tensor *perceiver(rb_ctx *c, const rb_resampler *r, const rb_perceiver_layer *L, rb_tensor *x,
                            rb_tensor *lat) {
    rb_tensor *xn = rb_layer_norm(c, x, L->norm1_w, L->norm1_b, 1e-5f);
    rb_tensor *ln = rb_layer_norm(c, lat, L->norm2_w, L->norm2_b, 1e-5f);
    rb_tensor *q = rb_linear(c, ln, L->to_q, NULL);
    rb_tensor *kv_in = rb_concat(c, (rb_tensor *[]){xn, ln}, 2, 1);
    rb_tensor *kv = rb_linear(c, kv_in, L->to_kv, NULL);
    rb_tensor *k = rb_slice(c, kv, 2, 0, r->cfg.dim), *v = rb_slice(c, kv, 2, r->cfg.dim, 2 * r->cfg.dim);
    rb_tensor *a = rb_attention(c, q, k, v, r->cfg.heads, NULL, 0.0f);
    return rb_add(c, lat, rb_linear(c, a, L->to_out, NULL));
}

static rb_tensor *feed_forward(rb_ctx *c, const rb_perceiver_layer *L, rb_tensor *lat) {
    rb_tensor *h = rb_linear(c, rb_layer_norm(c, lat, L->ff_norm_w, L->ff_norm_b, 1e-5f), L->ff1, NULL);
    return rb_add(c, lat, rb_linear(c, rb_gelu(c, h, 0), L->ff2, NULL));
}

/* Initial queries [n, Q, dim] from phrase embeddings and boxes (or the learned latents when dropped). */
static rb_tensor *initial_latents(rb_ctx *c, const rb_resampler *r, const float *boxes, rb_tensor *phrases,
                                  const int *drop) {
    const rb_resampler_config *cf = &r->cfg;
    int64_t n = phrases->shape[0], P = cf->phrase_embeddings_dim, G = P + 8 * cf->fourier_freqs;
    rb_tensor *g = rb_ctx_tensor(c, RB_F32, 2, (int64_t[]){n, G});
    if (!g)
        return NULL;
    for (int64_t i = 0; i < n; i++) {
        float *row = (float *)g->data + i * G;
        for (int64_t j = 0; j < P; j++)
            row[j] = (float)rb_tensor_get(phrases, i * P + j);
        rb_fourier_boxes(row + P, boxes + 4 * i, cf->fourier_freqs);
    }
    rb_tensor *h = rb_linear(c, rb_gelu(c, rb_linear(c, g, r->latent_proj0_w, r->latent_proj0_b), 0),
                             r->latent_proj2_w, r->latent_proj2_b);
    rb_tensor *lat = rb_layer_norm(c, rb_reshape(c, h, 3, (int64_t[]){n, cf->num_queries, cf->dim}), r->latent_norm_w,
                                   r->latent_norm_b, 1e-5f);
    if (!lat || !drop)
        return lat;
    size_t per = (size_t)cf->num_queries * cf->dim * sizeof(float);
    for (int64_t i = 0; i < n; i++) /* dropped grounding: the learned latents, without latent_norm */
        if (drop[i])
            memcpy((char *)lat->data + i * per, r->grounding_latents->data, per);
    return lat;
}

rb_tensor *rb_resampler_forward(rb_ctx *c, const rb_resampler *r, rb_tensor *x, const float *boxes,
                                rb_tensor *phrases, const int *drop) {
    if (c->status != RB_OK || !x || !phrases || !boxes)
        return c->status != RB_OK ? NULL : rb_ctx_error(c, RB_ERR_INVALID, "resampler: missing input");
    const rb_resampler_config *cf = &r->cfg;
    if (x->ndim != 3 || x->shape[2] != cf->embedding_dim || phrases->ndim != 2 || phrases->shape[0] != x->shape[0] ||
        phrases->shape[1] != cf->phrase_embeddings_dim)
        return rb_ctx_error(c, RB_ERR_INVALID, "resampler: image tokens must be [n, T, %d] and phrases [n, %d]",
                            cf->embedding_dim, cf->phrase_embeddings_dim);
    for (int64_t i = 0; i < 4 * x->shape[0]; i++)
        if (!isfinite(boxes[i]))
            return rb_ctx_error(c, RB_ERR_INVALID, "resampler: box %lld has a non-finite coordinate", (long long)(i / 4));
    rb_tensor *lat = initial_latents(c, r, boxes, phrases, drop);
    rb_tensor *h = rb_linear(c, x, r->proj_in_w, r->proj_in_b);
    for (int i = 0; i < cf->depth; i++) {
        lat = perceiver(c, r, &r->layers[i], h, lat);
        lat = feed_forward(c, &r->layers[i], lat);
    }
    lat = rb_layer_norm(c, lat, r->attention_norm_w, r->attention_norm_b, 1e-5f);
    return rb_layer_norm(c, rb_linear(c, lat, r->proj_out_w, r->proj_out_b), r->norm_out_w, r->norm_out_b, 1e-5f);
}
