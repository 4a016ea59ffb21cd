/* The generation pipeline, in the order of diffusers' StableDiffusionXLPipeline and MS-Diffusion's
 * MSAdapter.generate (which DreamRelation's Pipeline follows):
 *   1. text:  prompt_embeds = [CLIP-L hidden[-2] | bigG hidden[-2]], pooled = bigG text_embeds;
 *             phrase embeddings = CLIP-L pooled output of each phrase
 *   2. image: CLIP vision hidden[-2] of each reference -> grounding resampler -> [4 dummy | 16 per subject]
 *   3. denoise with CFG: rows [uncond | cond]; the uncond row gets zero image tokens and zero boxes
 *   4. VAE decode, image / 2 + 0.5 clamped, to 8 bit as diffusers' numpy_to_pil ((x * 255).round()).
 * Every stage loads its models, runs, and releases them (unless p->models keeps them loaded for the
 * next call: the C API's keep_models); results that later stages need are copied into a small `keep` arena. Where each model comes from (a diffusers folder or one checkpoint file)
 * is gen_load.c's business. */
#include "generate.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#include "core/mem.h"
#include "core/rng.h"
#include "models/clip_text.h"
#include "models/clip_vision.h"
#include "models/image_processor.h"
#include "models/local_tokens.h"
#include "models/ms_adapter.h"
#include "models/vae.h"
#include "pipelines/gen_load.h"
#include "text/clip_tokenizer.h"
#include "text/phrase_span.h"

const char *const rb_default_negative_prompt = "monochrome, lowres, bad anatomy, worst quality, low quality";

void rb_gen_params_init(rb_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->width = p->height = 1024;
    p->steps = 30;
    p->guidance = 5.0f;
    p->seed = 42;
    p->noise = RB_NOISE_CUDA;
    p->sampler = RB_SAMPLER_EULER;
    p->batch_count = 1;
    p->ip_scale = 0.6f;
    p->resampler_dim_head = 64;
    p->ref_resize = 512;
    p->local_pool = RB_LOCAL_DEFAULT_POOL;
    p->auto_layout_start = 5;
    p->auto_layout_threshold = 0.5f;
    p->compute = RB_F32;
    p->negative_prompt = rb_default_negative_prompt;
}

typedef struct run {
    const rb_gen_params *p;
    rb_arena keep, work;
    /* from the text stage */
    rb_tensor *prompt_embeds, *neg_embeds; /* [1, 77, D] */
    rb_tensor *pooled, *neg_pooled;        /* [1, P] */
    rb_tensor *phrase_embeds;              /* [n, D_L] */
    int64_t spans[RB_MAX_SUBJECTS][2];     /* each phrase's token span in the prompt (automatic layout) */
    /* from the image stage */
    rb_tensor *image_tokens; /* [1, 4 + 16 n, D] */
    rb_unet_config unet_cfg;
} run;

static void progress(const run *r, const char *stage, int done, int total) {
    if (r->p->progress)
        r->p->progress(r->p->user, stage, done, total);
}

static void warn(const rb_gen_params *p, const char *fmt, ...) RB_PRINTF(2, 3);
static void warn(const rb_gen_params *p, const char *fmt, ...) {
    if (!p->warn)
        return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    p->warn(p->user, msg);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void path_join(char *out, size_t n, const char *dir, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

/* Copies a tensor into the keep arena (it must outlive the stage's work arena). */
static rb_tensor *keep(run *r, const rb_tensor *t) {
    if (!t)
        return NULL;
    rb_tensor *k = rb_arena_tensor(&r->keep, RB_F32, t->ndim, t->shape);
    if (k && rb_tensor_copy(k, t) != RB_OK)
        return NULL;
    return k;
}

/* ---- stage 1: text ---- */

typedef struct text_models {
    rb_clip_tokenizer *tok1, *tok2;
    rb_clip_text te1, te2;
} text_models;

/* The models of one run. rb_generate releases each part when its stage is done; with p->models (the
 * C API's keep_models, src/pipelines/api.c) the parts stay loaded in that cache for the next call. */
struct rb_gen_models {
    int have_text, have_ad, have_unet, have_vae;
    text_models text;
    rb_ms_adapter ad;
    rb_unet unet;
    rb_lora_set loras[RB_MAX_LORAS];
    int n_loras;
    rb_vae vae;
};

static void release_text(rb_gen_models *M) {
    rb_clip_text_free(&M->text.te1);
    rb_clip_text_free(&M->text.te2);
    rb_clip_tokenizer_free(M->text.tok1);
    rb_clip_tokenizer_free(M->text.tok2);
    memset(&M->text, 0, sizeof M->text);
    M->have_text = 0;
}

static void release_unet(rb_gen_models *M) {
    rb_unet_free(&M->unet);
    for (int i = 0; i < M->n_loras; i++)
        rb_lora_free(&M->loras[i]);
    M->n_loras = 0;
    M->have_unet = 0;
    if (M->have_ad)
        rb_ms_adapter_free(&M->ad);
    M->have_ad = 0;
}

static void release_vae(rb_gen_models *M) {
    rb_vae_free(&M->vae);
    M->have_vae = 0;
}

rb_status rb_gen_models_new(rb_gen_models **out) {
    *out = rb_calloc(sizeof **out, "kept models");
    return *out ? RB_OK : RB_ERR_OOM;
}

void rb_gen_models_free(rb_gen_models *M) {
    if (!M)
        return;
    release_text(M);
    release_unet(M);
    release_vae(M);
    rb_free(M);
}

static rb_tensor *ids_tensor(rb_ctx *c, const rb_clip_tokenizer *tok, const char *text) {
    rb_tensor *ids = rb_ctx_tensor(c, RB_I64, 2, (int64_t[]){1, RB_CLIP_CONTEXT});
    if (ids && rb_clip_tokenize(tok, text, ids->data, NULL, NULL) != RB_OK)
        return rb_ctx_fail(c, RB_ERR_INVALID);
    return ids;
}

/* [1, 77, D_L + D_G] penultimate states of both encoders, and the bigG projected pooled output. */
static rb_status encode_prompt(rb_ctx *c, const text_models *m, const char *text, rb_tensor **embeds,
                               rb_tensor **pooled) {
    rb_clip_text_out o1, o2;
    RB_TRY(rb_clip_text_forward(c, &m->te1, ids_tensor(c, m->tok1, text), 0, &o1));
    RB_TRY(rb_clip_text_forward(c, &m->te2, ids_tensor(c, m->tok2, text), 0, &o2));
    if (!o2.text_embeds)
        return rb_error(RB_ERR_FORMAT, "text_encoder_2 has no text_projection (not an SDXL checkpoint?)");
    *embeds = rb_concat(c, (rb_tensor *[]){o1.penultimate, o2.penultimate}, 2, 2);
    *pooled = o2.text_embeds;
    return c->status;
}

static rb_status stage_text(run *r, rb_gen_models *M) {
    const rb_gen_params *p = r->p;
    text_models m = M->text;
    rb_status s = RB_OK;
    if (!M->have_text) {
        if ((s = rb_gen_load_tokenizers(p, &m.tok1, &m.tok2)) != RB_OK ||
            (s = rb_gen_load_text_encoders(p, &m.te1, &m.te2)) != RB_OK)
            goto done;
    }
    progress(r, "text", 0, 1);
    { /* CLIP sees 77 tokens (BOS + 75 + EOS); longer prompts are cut there, as diffusers does */
        int64_t ids[RB_CLIP_CONTEXT];
        int n_tok = 0;
        if ((s = rb_clip_tokenize(m.tok1, p->prompt, ids, NULL, &n_tok)) != RB_OK)
            goto done;
        int dropped = n_tok > RB_CLIP_CONTEXT ? n_tok - RB_CLIP_CONTEXT : 0;
        if (p->report)
            p->report->prompt_tokens = n_tok, p->report->prompt_dropped = dropped;
        if (dropped)
            warn(p, "the prompt is %d tokens, over CLIP's %d: the last %d are dropped (truncated as the reference does)",
                 n_tok, RB_CLIP_CONTEXT, dropped);
    }
    rb_ctx c;
    rb_ctx_init(&c, &r->work);
    c.matmul_dtype = p->compute;
    rb_tensor *e, *pl;
    if ((s = encode_prompt(&c, &m, p->prompt, &e, &pl)) != RB_OK)
        goto done;
    r->prompt_embeds = keep(r, e);
    r->pooled = keep(r, pl);
    if (p->negative_prompt) {
        if ((s = encode_prompt(&c, &m, p->negative_prompt, &e, &pl)) != RB_OK)
            goto done;
        r->neg_embeds = keep(r, e);
        r->neg_pooled = keep(r, pl);
    } else { /* force_zeros_for_empty_prompt */
        r->neg_embeds = rb_arena_zeros(&r->keep, RB_F32, 3, r->prompt_embeds->shape);
        r->neg_pooled = rb_arena_zeros(&r->keep, RB_F32, 2, r->pooled->shape);
    }
    if (p->n_subjects > 0) { /* phrase embeddings: CLIP-L pooled output */
        int64_t n = p->n_subjects;
        rb_tensor *ids = rb_ctx_tensor(&c, RB_I64, 2, (int64_t[]){n, RB_CLIP_CONTEXT});
        for (int64_t i = 0; ids && i < n; i++)
            if ((s = rb_clip_tokenize(m.tok1, p->subjects[i].phrase, (int64_t *)ids->data + i * RB_CLIP_CONTEXT, NULL,
                                      NULL)) != RB_OK)
                goto done;
        rb_clip_text_out o;
        if ((s = rb_clip_text_forward(&c, &m.te1, ids, 0, &o)) != RB_OK)
            goto done;
        r->phrase_embeds = keep(r, o.pooled);
        for (int64_t i = 0; p->auto_layout && i < n; i++) {
            if ((s = rb_phrase_span(m.tok1, p->prompt, p->subjects[i].phrase, r->spans[i])) != RB_OK)
                goto done;
            if (r->spans[i][1] <= r->spans[i][0]) {
                s = rb_error(RB_ERR_INVALID, "automatic layout: phrase '%s' is not a word sequence of the prompt",
                             p->subjects[i].phrase);
                goto done;
            }
        }
    }
    s = c.status;
    if (s == RB_OK && (!r->prompt_embeds || !r->pooled || !r->neg_embeds || !r->neg_pooled ||
                       (p->n_subjects && !r->phrase_embeds)))
        s = RB_ERR_OOM;
    progress(r, "text", 1, 1);
done:
    M->text = m;
    M->have_text = s == RB_OK || M->have_text; /* a failed load leaves nothing half-kept */
    if (!M->have_text || !p->models)
        release_text(M);
    rb_arena_reset(&r->work, 0);
    return s;
}

/* ---- stage 2: subjects -> image tokens ---- */

/* Pixel tensors [n, 3, size, size] of the references through one processor config. */
static rb_status pixels(rb_ctx *c, const rb_image *imgs, int n, const rb_preprocess_config *pc, rb_tensor **out) {
    int oh, ow;
    RB_TRY(rb_preprocess_output_size(pc, imgs[0].width, imgs[0].height, &oh, &ow));
    rb_tensor *px = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){n, 3, oh, ow});
    if (!px)
        return c->status;
    for (int i = 0; i < n; i++) {
        int h, w;
        RB_TRY(rb_preprocess_output_size(pc, imgs[i].width, imgs[i].height, &h, &w));
        if (h != oh || w != ow)
            return rb_error(RB_ERR_UNSUPPORTED, "subject %d: the image processor gives a %dx%d crop, not %dx%d", i + 1,
                            w, h, ow, oh);
        RB_TRY(rb_image_preprocess(&imgs[i], pc, (float *)px->data + (int64_t)i * 3 * oh * ow));
    }
    *out = px;
    return RB_OK;
}

/* The references, RGB, resized to ref_resize x ref_resize first when asked (DreamRelation's
 * `.convert("RGB").resize((512, 512))`, Pillow's default bicubic). */
static rb_status load_references(const rb_gen_params *p, rb_image *imgs) {
    for (int i = 0; i < p->n_subjects; i++) {
        rb_image img = {0};
        rb_status s = rb_image_load(&img, p->subjects[i].image, 3);
        if (s == RB_OK && p->ref_resize > 0) {
            s = rb_image_resize(&imgs[i], &img, p->ref_resize, p->ref_resize, RB_RESAMPLE_BICUBIC);
            rb_image_free(&img);
        } else {
            imgs[i] = img;
        }
        if (s != RB_OK)
            return rb_error_prefix(s, "subject %d", i + 1);
    }
    return RB_OK;
}

/* Resampler input: CLIP hidden_states[-2] of the 224 crops [n, 257, D], plus N*N local tokens per
 * subject from the 896 crops when a local encoder is given. */
static rb_tensor *image_features(run *r, rb_ctx *c, const rb_image *imgs) {
    const rb_gen_params *p = r->p;
    char path[4096];
    rb_preprocess_config pc;
    path_join(path, sizeof path, p->image_encoder, "preprocessor_config.json");
    rb_clip_vision enc;
    rb_status s = rb_preprocess_config_load(&pc, path);
    if (s != RB_OK || (s = rb_clip_vision_load(&enc, p->image_encoder)) != RB_OK)
        return rb_ctx_fail(c, s);
    rb_tensor *px = NULL, *feat = NULL;
    rb_clip_vision_out o;
    if ((s = pixels(c, imgs, p->n_subjects, &pc, &px)) == RB_OK && (s = rb_clip_vision_forward(c, &enc, px, 0, &o)) == RB_OK)
        feat = o.penultimate;
    rb_clip_vision_free(&enc);
    if (!feat || !p->local_encoder)
        return feat ? feat : rb_ctx_fail(c, s);
    /* CLIPImageProcessor(size=896, crop_size=896) */
    rb_local_encoder le;
    if ((s = rb_local_encoder_load(&le, p->local_encoder, p->local_encoder_config)) != RB_OK)
        return rb_ctx_fail(c, s);
    pc.shortest_edge = pc.crop_h = pc.crop_w = RB_LOCAL_DEFAULT_IMAGE;
    rb_tensor *px896 = NULL;
    if ((s = pixels(c, imgs, p->n_subjects, &pc, &px896)) != RB_OK)
        feat = rb_ctx_fail(c, s);
    else
        feat = rb_local_concat(c, feat, rb_local_tokens(c, &le, px896, p->local_pool, p->official_pooling));
    rb_local_encoder_free(&le);
    return feat;
}

static rb_status stage_image(run *r, rb_ms_adapter *ad) {
    const rb_gen_params *p = r->p;
    rb_image imgs[RB_MAX_SUBJECTS] = {0};
    progress(r, "image", 0, 1);
    rb_ctx c;
    rb_ctx_init(&c, &r->work);
    c.matmul_dtype = p->compute;
    rb_status s = load_references(p, imgs);
    if (s == RB_OK) {
        float boxes[4 * RB_MAX_SUBJECTS];
        for (int i = 0; i < p->n_subjects; i++)
            memcpy(boxes + 4 * i, p->subjects[i].box, sizeof p->subjects[i].box);
        rb_tensor *feat = image_features(r, &c, imgs);
        rb_tensor *tok = rb_resampler_forward(&c, &ad->resampler, feat, boxes, r->phrase_embeds, NULL);
        r->image_tokens = keep(r, rb_ms_image_tokens(&c, ad, tok));
        s = c.status != RB_OK ? c.status : r->image_tokens ? RB_OK : RB_ERR_OOM;
    }
    for (int i = 0; i < p->n_subjects; i++)
        rb_image_free(&imgs[i]);
    rb_arena_reset(&r->work, 0);
    progress(r, "image", 1, 1);
    return s;
}

/* ---- stage 3: denoising ---- */

/* The UNet context for CFG: rows [uncond | cond] of [text | image tokens (zeros for uncond)]. */
static rb_tensor *unet_context(run *r, rb_ctx *c) {
    rb_tensor *u = r->neg_embeds, *k = r->prompt_embeds;
    if (r->image_tokens) {
        rb_tensor *z = rb_arena_zeros(c->arena, RB_F32, 3, r->image_tokens->shape);
        if (!z)
            return rb_ctx_fail(c, RB_ERR_OOM);
        u = rb_concat(c, (rb_tensor *[]){u, z}, 2, 1);
        k = rb_concat(c, (rb_tensor *[]){k, r->image_tokens}, 2, 1);
    }
    return rb_concat(c, (rb_tensor *[]){u, k}, 2, 0);
}

static rb_status initial_noise(run *r, rb_rng *g, rb_tensor *lat) {
    if (r->p->initial_latents) {
        memcpy(lat->data, r->p->initial_latents, rb_nbytes(lat));
        return RB_OK;
    }
    return rb_rng_randn(g, lat->data, rb_numel(lat));
}

/* One image's denoising loop; `call` configures the masked processors (NULL: plain SDXL). */
static rb_status denoise_steps(run *r, rb_unet *unet, rb_ms_call *call, rb_scheduler *sch, rb_rng *g, rb_tensor *lat) {
    const rb_gen_params *p = r->p;
    int64_t n = rb_numel(lat);
    RB_TRY(initial_noise(r, g, lat));
    for (int64_t i = 0; i < n; i++)
        ((float *)lat->data)[i] *= sch->init_noise_sigma;
    rb_unet_proc *procs = NULL;
    if (call) {
        procs = rb_arena_alloc(&r->keep, (size_t)unet->n_attn * sizeof *procs);
        if (!procs)
            return RB_ERR_OOM;
        rb_ms_procs(unet, call, procs);
    }
    rb_ctx c;
    rb_ctx_init(&c, &r->work);
    c.matmul_dtype = p->compute;
    rb_tensor *ctx = unet_context(r, &c);
    rb_tensor *te = rb_concat(&c, (rb_tensor *[]){r->neg_pooled, r->pooled}, 2, 0);
    rb_tensor *ti = rb_ctx_tensor(&c, RB_F32, 2, (int64_t[]){2, 6});
    rb_tensor *t = rb_ctx_tensor(&c, RB_F32, 0, NULL);
    rb_tensor *x2 = rb_ctx_tensor(&c, RB_F32, 4, (int64_t[]){2, lat->shape[1], lat->shape[2], lat->shape[3]});
    rb_tensor *eps = rb_ctx_tensor(&c, RB_F32, 4, lat->shape);
    rb_tensor *noise = p->sampler == RB_SAMPLER_EULER_A ? rb_ctx_tensor(&c, RB_F32, 4, lat->shape) : NULL;
    if (!ctx || !te || !ti || !t || !x2 || !eps || (p->sampler == RB_SAMPLER_EULER_A && !noise))
        return c.status;
    const float ids[6] = {(float)p->height, (float)p->width, 0, 0, (float)p->height, (float)p->width};
    for (int row = 0; row < 2; row++)
        memcpy((float *)ti->data + 6 * row, ids, sizeof ids);
    size_t mark = rb_arena_mark(&r->work);
    progress(r, "denoise", 0, sch->n_steps);
    for (int i = 0; i < sch->n_steps; i++) {
        if (p->cancel && *p->cancel)
            return rb_error(RB_ERR_CANCELLED, "generation cancelled at step %d of %d", i + 1, sch->n_steps);
        rb_sched_scale_input(sch, i, lat->data, x2->data, n);
        memcpy((float *)x2->data + n, x2->data, (size_t)n * sizeof(float));
        *(float *)t->data = sch->timesteps[i];
        rb_unet_in in = {.sample = x2, .timestep = t, .encoder_hidden_states = ctx, .text_embeds = te,
                         .time_ids = ti, .procs = procs};
        rb_unet_out out;
        RB_TRY(rb_unet_forward(&c, unet, &in, &out));
        const float *u = out.sample->data, *k = u + n;
        for (int64_t j = 0; j < n; j++) /* classifier-free guidance */
            ((float *)eps->data)[j] = u[j] + p->guidance * (k[j] - u[j]);
        if (noise)
            RB_TRY(rb_rng_randn(g, noise->data, n));
        RB_TRY(rb_sched_step(sch, i, eps->data, lat->data, noise ? noise->data : NULL, NULL, n));
        if (p->on_step) {
            rb_gen_step st = {i, sch->n_steps, sch->timesteps[i], x2, out.sample, ctx, lat};
            p->on_step(p->user, &st);
        }
        rb_arena_reset(&r->work, mark);
        if (p->report)
            p->report->steps_run++;
        progress(r, "denoise", i + 1, sch->n_steps);
    }
    return RB_OK;
}

static rb_status denoise(run *r, rb_unet *unet, const rb_ms_adapter *ad, rb_scheduler *sch, rb_rng *g,
                         rb_tensor *lat) {
    const rb_gen_params *p = r->p;
    if (!ad)
        return denoise_steps(r, unet, NULL, sch, g, lat);
    float boxes[2 * 4 * RB_MAX_SUBJECTS] = {0}; /* row 0 (uncond) stays zero: no image there */
    for (int i = 0; i < p->n_subjects; i++)
        memcpy(boxes + 4 * (p->n_subjects + i), p->subjects[i].box, sizeof p->subjects[i].box);
    rb_ms_call call = {.adapter = ad, .n_subjects = p->n_subjects, .scale = p->ip_scale, .boxes = boxes};
    rb_ms_layout layout = {0};
    if (p->auto_layout) { /* fresh state per image: the maps are kept over its steps */
        RB_TRY(rb_ms_layout_init(&layout, unet->n_attn, (const int64_t(*)[2])r->spans, p->auto_layout_start,
                                 p->auto_layout_threshold));
        call.layout = &layout;
    }
    rb_status s = denoise_steps(r, unet, &call, sch, g, lat);
    rb_ms_layout_free(&layout);
    return s;
}

/* ---- stage 4: decode ---- */

static rb_status decode(run *r, const rb_vae *vae, rb_tensor *lat, rb_image *img) {
    rb_ctx c;
    rb_ctx_init(&c, &r->work);
    size_t mark = rb_arena_mark(&r->work);
    rb_tensor *z = rb_scale(&c, lat, 1.0f / vae->cfg.scaling_factor);
    rb_tensor *x = rb_vae_decode(&c, vae, z, 0, NULL);
    if (!x)
        return c.status;
    int64_t H = x->shape[2], W = x->shape[3], plane = H * W;
    memset(img, 0, sizeof *img);
    img->data = rb_alloc((size_t)(3 * plane), "output image");
    if (!img->data)
        return RB_ERR_OOM;
    img->width = (int)W, img->height = (int)H, img->channels = 3, img->format = RB_IMG_PNG;
    const float *px = x->data;
    for (int64_t i = 0; i < plane; i++)
        for (int ch = 0; ch < 3; ch++) {
            float v = px[ch * plane + i] / 2.0f + 0.5f;
            v = v < 0 ? 0 : v > 1 ? 1 : v;
            img->data[i * 3 + ch] = (uint8_t)nearbyintf(v * 255.0f);
        }
    rb_arena_reset(&r->work, mark);
    return RB_OK;
}

/* ---- the run ---- */

static rb_status check_params(const rb_gen_params *p) {
    if (!p->model || !p->prompt)
        return rb_error(RB_ERR_INVALID, "generate: a model (folder or single file) and a prompt are required");
    if (p->width < 64 || p->height < 64 || p->width % 8 || p->height % 8 || p->width > 4096 || p->height > 4096)
        return rb_error(RB_ERR_INVALID, "generate: size %dx%d (multiples of 8, 64..4096)", p->width, p->height);
    if (p->steps < 1 || p->steps > RB_SCHED_MAX_STEPS || p->batch_count < 1 || p->batch_count > 1000)
        return rb_error(RB_ERR_INVALID, "generate: %d steps, %d images", p->steps, p->batch_count);
    if (!isfinite(p->guidance) || !isfinite(p->ip_scale))
        return rb_error(RB_ERR_INVALID, "generate: guidance and scale must be finite");
    if (p->n_subjects < 0 || p->n_subjects > RB_MAX_SUBJECTS || p->n_loras < 0 || p->n_loras > RB_MAX_LORAS)
        return rb_error(RB_ERR_INVALID, "generate: at most %d subjects and %d LoRAs", RB_MAX_SUBJECTS, RB_MAX_LORAS);
    if (p->n_subjects && (!p->ms_adapter || !p->image_encoder))
        return rb_error(RB_ERR_INVALID, "generate: subjects need an MS-Diffusion adapter and an image encoder");
    for (int i = 0; i < p->n_subjects; i++) {
        const float *b = p->subjects[i].box;
        if (!p->subjects[i].image || !*p->subjects[i].image)
            return rb_error(RB_ERR_INVALID, "subject %d: no reference image", i + 1);
        if (!p->subjects[i].phrase || !*p->subjects[i].phrase)
            return rb_error(RB_ERR_INVALID, "subject %d (%s): the phrase is empty", i + 1, p->subjects[i].image);
        for (int k = 0; k < 4; k++)
            if (!isfinite(b[k]) || b[k] < 0 || b[k] > 1)
                return rb_error(RB_ERR_INVALID, "subject %d: box coordinates must be in [0, 1]", i + 1);
        if (b[2] <= b[0] || b[3] <= b[1])
            return rb_error(RB_ERR_INVALID, "subject %d: box (%g, %g, %g, %g) is empty (x1 <= x0 or y1 <= y0)", i + 1,
                            b[0], b[1], b[2], b[3]);
        rb_image hdr; /* unreadable references fail here, before any model is loaded */
        rb_status st = rb_image_probe(&hdr, p->subjects[i].image);
        if (st != RB_OK)
            return rb_error_prefix(st, "subject %d", i + 1);
    }
    return rb_gen_check_sources(p);
}

static rb_status load_scheduler(const rb_gen_params *p, rb_scheduler *sch) {
    rb_sched_config sc;
    RB_TRY(rb_gen_load_sched_config(p, &sc));
    sc.karras |= p->karras;
    RB_TRY(rb_sched_init(sch, &sc, p->sampler));
    return rb_sched_set_timesteps(sch, p->steps);
}

/* A LoRA made for another architecture matches none of this UNet's projections: it loads (its keys are
 * only "unused") but would change nothing, so it is an error naming what did not match. Text-encoder
 * pairs and leftover keys of a LoRA that does fit are warnings: generation applies UNet pairs only. */
static rb_status check_lora(const rb_gen_params *p, const rb_lora_set *set) {
    const char *path = set->path ? set->path : "LoRA";
    int n_unet = 0;
    const rb_lora_pair *other = NULL;
    for (int i = 0; i < set->n; i++) {
        if (!strcmp(set->pairs[i]->component, "unet"))
            n_unet++;
        else if (!other)
            other = set->pairs[i];
    }
    if (n_unet == 0) {
        if (set->n_unused)
            return rb_error(RB_ERR_UNSUPPORTED, "%s: no key matches this SDXL UNet (a LoRA for another architecture?); "
                            "unmatched keys: '%s'%s%s%s (%d in all)", path, set->unused[0],
                            set->n_unused > 1 ? ", '" : "", set->n_unused > 1 ? set->unused[1] : "",
                            set->n_unused > 1 ? "'" : "", set->n_unused);
        if (other)
            return rb_error(RB_ERR_UNSUPPORTED, "%s: only text-encoder modules (first %s.%s); generation applies "
                            "UNet LoRAs", path, other->component, other->module);
        return rb_error(RB_ERR_FORMAT, "%s: holds no LoRA pairs", path);
    }
    if (other)
        warn(p, "%s: text-encoder modules are not applied (first %s.%s)", path, other->component, other->module);
    if (set->n_unused)
        warn(p, "%s: %d keys match nothing and are ignored (first '%s')", path, set->n_unused, set->unused[0]);
    return RB_OK;
}

/* Out-of-memory errors say what was asked for (the failing allocation's message) and how to allow it. */
static rb_status oom_hint(rb_status s) {
    if (s != RB_ERR_OOM)
        return s;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", rb_last_error());
    size_t lim = rb_get_mem_limit();
    if (lim)
        return rb_error(RB_ERR_OOM, "%s; raise RELBOOTH_MEM_LIMIT (now %.2f GiB) or use smaller -W/-H", msg,
                        (double)lim / (double)(1 << 30));
    return rb_error(RB_ERR_OOM, "%s; not enough memory on this machine (RELBOOTH_MEM_LIMIT caps it; "
                    "1024x1024 SDXL needs ~12 GiB in f32)", msg);
}

static rb_status generate(const rb_gen_params *p, rb_image *images);

/* LoRAs and the adapter are loaded and checked against a UNet skeleton (names and shapes, no weights)
 * before anything heavy runs, so that a file for another architecture fails in a moment. Kept models
 * (the C API's keep_models) are loaded once. */
static rb_status load_lora_and_adapter(const rb_gen_params *p, run *r, rb_gen_models *M) {
    if (M->n_loras == p->n_loras && (M->have_ad || !p->n_subjects))
        return RB_OK;
    rb_unet skel = {0};
    rb_status s = rb_unet_init(&skel, &r->unet_cfg);
    for (int i = M->n_loras; s == RB_OK && i < p->n_loras; i++) {
        rb_lora_options o = rb_lora_defaults();
        o.scale = p->loras[i].scale;
        o.log_unused = 0; /* check_lora reports them in one line */
        if ((s = rb_lora_load(&M->loras[i], p->loras[i].path, &o)) != RB_OK)
            break;
        M->n_loras = i + 1;
        if ((s = check_lora(p, &M->loras[i])) == RB_OK)
            s = rb_unet_attach_lora(&skel, &M->loras[i]);
    }
    if (s == RB_OK && p->n_subjects && !M->have_ad && /* the adapter is indexed by the UNet's processors */
        (s = rb_ms_adapter_load(&M->ad, p->ms_adapter, &skel, p->resampler_dim_head)) == RB_OK)
        M->have_ad = 1;
    rb_unet_free(&skel);
    if (s != RB_OK)
        release_unet(M); /* nothing half-loaded stays */
    return s;
}

/* The UNet with the loaded LoRAs attached. */
static rb_status load_unet(const rb_gen_params *p, rb_gen_models *M) {
    if (M->have_unet)
        return RB_OK;
    rb_status s = rb_gen_load_unet(p, &M->unet);
    for (int i = 0; s == RB_OK && i < M->n_loras; i++)
        s = rb_unet_attach_lora(&M->unet, &M->loras[i]);
    if (s != RB_OK) {
        rb_unet_free(&M->unet);
        return s;
    }
    M->have_unet = 1;
    return RB_OK;
}

rb_status rb_generate(const rb_gen_params *p, rb_image *images) {
    if (p->report)
        memset(p->report, 0, sizeof *p->report);
    double t0 = now_s();
    rb_status s = oom_hint(generate(p, images));
    if (p->report)
        p->report->total_s = now_s() - t0;
    return s;
}

static rb_status generate(const rb_gen_params *p, rb_image *images) {
    RB_TRY(check_params(p));
    rb_gen_report dummy = {0}, *rep = p->report ? p->report : &dummy;
    double t = now_s();
    for (int i = 0; i < p->batch_count; i++)
        memset(&images[i], 0, sizeof images[i]);
    run r = {.p = p};
    rb_scheduler *sch = rb_calloc(sizeof *sch, "scheduler");
    rb_gen_models *M = p->models;
    if (!M && rb_gen_models_new(&M) != RB_OK)
        M = NULL;
    rb_status s = !sch || !M ? RB_ERR_OOM : RB_OK;
    if (s == RB_OK)
        s = rb_arena_init(&r.keep, (size_t)64 << 20, "generate: kept tensors");
    if (s == RB_OK)
        s = rb_arena_init(&r.work, p->arena_bytes ? p->arena_bytes : (size_t)6 << 30, "generate: activations");
    if (s == RB_OK)
        s = load_scheduler(p, sch);
    if (s == RB_OK)
        s = rb_gen_unet_config(p, &r.unet_cfg);
    if (s == RB_OK)
        s = load_lora_and_adapter(p, &r, M);
    if (s == RB_OK)
        s = stage_text(&r, M);
    rep->text_s = now_s() - t, t = now_s();
    if (s == RB_OK && p->n_subjects) {
        s = stage_image(&r, &M->ad);
        rep->image_s = now_s() - t;
    }
    t = now_s();
    rb_arena_reset(&r.work, 0); /* the text and image stages' scratch pages are not carried into denoising */
    rb_arena_trim(&r.work);
    if (s == RB_OK)
        s = load_unet(p, M);
    rep->unet_s = now_s() - t, t = now_s();
    rb_tensor *lat = NULL;
    if (s == RB_OK) {
        lat = rb_arena_tensor(&r.keep, RB_F32, 4, (int64_t[]){1, r.unet_cfg.in_channels, p->height / 8, p->width / 8});
        s = lat ? RB_OK : RB_ERR_OOM;
    }
    rb_rng g;
    if (p->noise == RB_NOISE_CPU)
        rb_rng_torch_cpu(&g, p->seed);
    else
        rb_rng_torch_cuda(&g, p->seed);
    /* denoise every image, then decode them with the UNet released */
    rb_tensor **all = s == RB_OK ? rb_arena_alloc(&r.keep, (size_t)p->batch_count * sizeof *all) : NULL;
    if (s == RB_OK && !all)
        s = RB_ERR_OOM;
    for (int b = 0; s == RB_OK && b < p->batch_count; b++) {
        if ((s = denoise(&r, &M->unet, p->n_subjects ? &M->ad : NULL, sch, &g, lat)) == RB_OK && !(all[b] = keep(&r, lat)))
            s = RB_ERR_OOM;
        rb_arena_reset(&r.work, 0);
    }
    rep->denoise_s = now_s() - t;
    rep->step_s = rep->steps_run ? rep->denoise_s / rep->steps_run : 0;
    if (M && !p->models)
        release_unet(M);
    t = now_s();
    if (s == RB_OK && !M->have_vae && (s = rb_gen_load_vae(p, &M->vae)) == RB_OK)
        M->have_vae = 1;
    for (int b = 0; s == RB_OK && b < p->batch_count; b++) {
        progress(&r, "decode", b, p->batch_count);
        s = decode(&r, &M->vae, all[b], &images[b]);
    }
    rep->decode_s = now_s() - t;
    if (M != p->models)
        rb_gen_models_free(M);
    if (sch)
        rb_sched_free(sch);
    rb_free(sch);
    rb_arena_free(&r.keep);
    rb_arena_free(&r.work);
    if (s != RB_OK)
        for (int i = 0; i < p->batch_count; i++)
            rb_image_free(&images[i]);
    return s;
}

void rb_gen_params_describe(const rb_gen_params *p, uint64_t seed, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "%s\nNegative prompt: %s\nSteps: %d, Sampler: %s%s, CFG scale: %g, Seed: %llu, "
                                        "Size: %dx%d, Noise: %s",
                                p->prompt, p->negative_prompt ? p->negative_prompt : "", p->steps,
                                rb_sampler_name(p->sampler), p->karras ? " Karras" : "", p->guidance,
                                (unsigned long long)seed, p->width, p->height, p->noise == RB_NOISE_CPU ? "cpu" : "cuda");
    for (int i = 0; i < p->n_loras && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, ", LoRA: %s (%g)", p->loras[i].path, p->loras[i].scale);
    if (p->n_subjects && k < n)
        k += (size_t)snprintf(buf + k, n - k, ", Image scale: %g", p->ip_scale);
    for (int i = 0; i < p->n_subjects && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, ", Subject %d: %s [%g %g %g %g] %s", i + 1, p->subjects[i].phrase,
                              p->subjects[i].box[0], p->subjects[i].box[1], p->subjects[i].box[2], p->subjects[i].box[3],
                              p->subjects[i].image);
}
