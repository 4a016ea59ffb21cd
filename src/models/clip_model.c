/* CLIPModel = CLIPTextModelWithProjection + CLIPVisionModelWithProjection of one checkpoint plus
 * logit_scale (transformers modeling_clip.CLIPModel):
 *   text_embeds  = text_projection(text_model(ids).pooler_output)
 *   image_embeds = visual_projection(vision_model(pixels).pooler_output)
 *   logits_per_image = exp(logit_scale) * normalize(image_embeds) @ normalize(text_embeds)^T */
#include "clip_model.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/mem.h"

void rb_clip_model_config_vit_l14(rb_clip_text_config *text, rb_clip_vision_config *vision) {
    if (text)
        *text = (rb_clip_text_config){.hidden = 768, .intermediate = 3072, .heads = 12, .layers = 12,
                                      .max_positions = 77, .vocab = 49408, .projection_dim = 768,
                                      .layer_norm_eps = 1e-5f, .act = RB_ACT_QUICK_GELU, .eos_token_id = 2};
    if (vision)
        *vision = (rb_clip_vision_config){.hidden = 1024, .intermediate = 4096, .heads = 16, .layers = 24,
                                          .image_size = 224, .patch_size = 14, .channels = 3, .projection_dim = 768,
                                          .layer_norm_eps = 1e-5f, .act = RB_ACT_QUICK_GELU,
                                          .layout = RB_CLIP_LAYOUT_HF};
}

rb_status rb_clip_model_load(rb_clip_model *m, const char *dir) {
    memset(m, 0, sizeof *m);
    /* both towers map the same model.safetensors (shared pages); each ignores the other's keys */
    RB_TRY(rb_clip_text_load(&m->text, dir));
    rb_status s = rb_clip_vision_load(&m->vision, dir);
    if (s != RB_OK) {
        rb_clip_text_free(&m->text);
        return s;
    }
    rb_tensor *ls = rb_weights_get(&m->text.w, 1, 0, NULL, "logit_scale");
    if (ls)
        m->logit_scale = *(const float *)ls->data;
    s = m->text.w.status;
    if (s == RB_OK && (!m->text.projection || !m->vision.proj))
        s = rb_error(RB_ERR_FORMAT, "%s/model.safetensors: a CLIPModel needs text_projection.weight and "
                     "visual_projection.weight", dir);
    if (s == RB_OK && m->text.projection->shape[0] != m->vision.proj->shape[0])
        s = rb_error(RB_ERR_FORMAT, "%s/model.safetensors: text_projection gives %lld features, visual_projection %lld",
                     dir, (long long)m->text.projection->shape[0], (long long)m->vision.proj->shape[0]);
    if (s != RB_OK)
        rb_clip_model_free(m);
    return s;
}

void rb_clip_model_free(rb_clip_model *m) {
    if (m->block) {
        rb_free(m->block); /* weights, headers and layer arrays; no files are open */
    } else {
        rb_clip_text_free(&m->text);
        rb_clip_vision_free(&m->vision);
    }
    memset(m, 0, sizeof *m);
}

/* The mask must only cut padding after the pooled token, where causal attention makes it a no-op:
 * this is what CLIPProcessor(padding=True) produces. */
static rb_status check_mask(const rb_clip_model *m, const rb_tensor *ids, const rb_tensor *mask) {
    int64_t B = ids->shape[0], L = ids->shape[1];
    if (mask->ndim != 2 || mask->shape[0] != B || mask->shape[1] != L)
        return rb_error(RB_ERR_INVALID, "CLIP text: attention mask must be [%lld, %lld]", (long long)B, (long long)L);
    for (int64_t b = 0; b < B; b++) {
        int64_t ones = 0, pooled = 0;
        double best = -1;
        while (ones < L && rb_tensor_get(mask, b * L + ones) != 0)
            ones++;
        for (int64_t i = ones; i < L; i++)
            if (rb_tensor_get(mask, b * L + i) != 0)
                return rb_error(RB_ERR_UNSUPPORTED, "CLIP text: attention mask row %lld is not 1...1 0...0 "
                                "(left padding is not supported)", (long long)b);
        /* the pooled position, as the text tower finds it */
        for (int64_t i = 0; i < L; i++) {
            double v = rb_tensor_get(ids, b * L + i);
            if (m->text.cfg.eos_token_id == 2 ? v > best : (v == m->text.cfg.vocab - 1)) {
                best = v;
                pooled = i;
                if (m->text.cfg.eos_token_id != 2)
                    break;
            }
        }
        if (pooled >= ones)
            return rb_error(RB_ERR_UNSUPPORTED, "CLIP text: attention mask row %lld masks the pooled (EOS) token",
                            (long long)b);
    }
    return RB_OK;
}

rb_tensor *rb_clip_model_text_features(rb_ctx *c, const rb_clip_model *m, rb_tensor *ids, rb_tensor *mask) {
    if (c->status != RB_OK || !ids)
        return NULL;
    if (mask && ids->ndim == 2) {
        rb_status s = check_mask(m, ids, mask);
        if (s != RB_OK)
            return rb_ctx_fail(c, s);
    }
    rb_clip_text_out out;
    rb_status s = rb_clip_text_forward(c, &m->text, ids, 0, &out);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    if (!out.text_embeds)
        return rb_ctx_error(c, RB_ERR_INVALID, "CLIP text: the model has no text_projection");
    return out.text_embeds;
}

rb_tensor *rb_clip_model_image_features(rb_ctx *c, const rb_clip_model *m, rb_tensor *pixels) {
    if (c->status != RB_OK || !pixels)
        return NULL;
    rb_clip_vision_out out;
    rb_status s = rb_clip_vision_forward(c, &m->vision, pixels, 0, &out);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    if (!out.image_embeds)
        return rb_ctx_error(c, RB_ERR_INVALID, "CLIP vision: the model has no visual_projection");
    return out.image_embeds;
}

rb_tensor *rb_clip_model_logits_per_image(rb_ctx *c, const rb_clip_model *m, rb_tensor *img, rb_tensor *txt) {
    if (c->status != RB_OK || !img || !txt)
        return NULL;
    /* x / ||x|| as transformers does it (no eps: a zero feature gives NaN there too; rb_l2_normalize's
     * eps only guards the division) */
    rb_tensor *ni = rb_l2_normalize(c, img, 0.0f), *nt = rb_l2_normalize(c, txt, 0.0f);
    return rb_scale(c, rb_matmul(c, ni, nt, 1), expf(m->logit_scale));
}
