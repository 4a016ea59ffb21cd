/* The public generation API of include/relbooth.h: an rb_pipeline holds a copy of its config (and,
 * with keep_models, the models kept loaded between calls: rb_gen_models of generate.c); every
 * rb_pipeline_generate call maps its request onto rb_gen_params and runs rb_generate. The public
 * structs mirror the internal ones field by field so that the public header needs no internal type. */
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "core/mem.h"
#include "core/status.h"
#include "io/image.h"
#include "pipelines/gen_load.h"
#include "pipelines/generate.h"
#include "relbooth.h"

_Static_assert(RB_API_MAX_LORAS == RB_MAX_LORAS && RB_API_MAX_SUBJECTS == RB_MAX_SUBJECTS, "API limits");
_Static_assert((int)RB_API_EULER == (int)RB_SAMPLER_EULER && (int)RB_API_EULER_A == (int)RB_SAMPLER_EULER_A &&
                   (int)RB_API_DPMPP_2M == (int)RB_SAMPLER_DPMPP_2M,
               "sampler numbers");
_Static_assert((int)RB_API_NOISE_CUDA == (int)RB_NOISE_CUDA && (int)RB_API_NOISE_CPU == (int)RB_NOISE_CPU,
               "noise kinds");

struct rb_pipeline {
    rb_pipeline_config cfg; /* strings point at our own copies */
    rb_gen_models *models;  /* keep_models, else NULL */
};

void rb_pipeline_config_init(rb_pipeline_config *c) {
    memset(c, 0, sizeof *c);
    c->resampler_dim_head = 64;
    for (int i = 0; i < RB_API_MAX_LORAS; i++)
        c->loras[i].scale = 1.0f;
}

void rb_generate_request_init(rb_generate_request *r) {
    rb_gen_params d; /* one source of truth for the defaults */
    rb_gen_params_init(&d);
    memset(r, 0, sizeof *r);
    r->negative_prompt = d.negative_prompt;
    r->width = d.width, r->height = d.height, r->steps = d.steps;
    r->guidance = d.guidance, r->ip_scale = d.ip_scale, r->seed = d.seed;
    r->sampler = (rb_api_sampler)d.sampler, r->noise = (rb_api_noise)d.noise;
    r->batch_count = d.batch_count;
}

static rb_status dup_str(const char **dst, const char *src) {
    if (!src) {
        *dst = NULL;
        return RB_OK;
    }
    size_t n = strlen(src) + 1;
    char *d = rb_alloc(n, "pipeline config string");
    if (!d)
        return RB_ERR_OOM;
    memcpy(d, src, n);
    *dst = d;
    return RB_OK;
}

static void free_strs(rb_pipeline_config *c) {
    const char **s[] = {&c->model, &c->tokenizers_dir, &c->model_config_dir, &c->ms_adapter, &c->image_encoder,
                        &c->local_encoder, &c->local_encoder_config};
    for (size_t i = 0; i < sizeof s / sizeof *s; i++)
        rb_free((void *)*s[i]), *s[i] = NULL;
    for (int i = 0; i < RB_API_MAX_LORAS; i++)
        rb_free((void *)c->loras[i].path), c->loras[i].path = NULL;
}

void rb_pipeline_close(rb_pipeline *p) {
    if (!p)
        return;
    rb_gen_models_free(p->models);
    free_strs(&p->cfg);
    rb_free(p);
}

static rb_status check_path(const char *what, const char *path) {
    struct stat st;
    if (path && stat(path, &st) != 0)
        return rb_error(RB_ERR_IO, "pipeline: %s %s not found", what, path);
    return RB_OK;
}

rb_status rb_pipeline_open(const rb_pipeline_config *c, rb_pipeline **out) {
    if (!c || !out)
        return rb_error(RB_ERR_INVALID, "rb_pipeline_open: NULL argument");
    *out = NULL;
    if (!c->model)
        return rb_error(RB_ERR_INVALID, "rb_pipeline_open: a model (SDXL folder or checkpoint file) is required");
    if (c->n_loras < 0 || c->n_loras > RB_API_MAX_LORAS)
        return rb_error(RB_ERR_INVALID, "rb_pipeline_open: %d LoRAs (at most %d)", c->n_loras, RB_API_MAX_LORAS);
    if (!!c->ms_adapter != !!c->image_encoder)
        return rb_error(RB_ERR_INVALID, "rb_pipeline_open: an MS-Diffusion adapter needs an image encoder and back");
    RB_TRY(check_path("model", c->model));
    RB_TRY(check_path("tokenizers folder", c->tokenizers_dir));
    RB_TRY(check_path("MS-Diffusion adapter", c->ms_adapter));
    RB_TRY(check_path("image encoder", c->image_encoder));
    RB_TRY(check_path("local encoder", c->local_encoder));
    for (int i = 0; i < c->n_loras; i++)
        RB_TRY(check_path("LoRA", c->loras[i].path));
    rb_gen_params gp;
    rb_gen_params_init(&gp);
    gp.model = c->model, gp.tokenizers_dir = c->tokenizers_dir;
    RB_TRY(rb_gen_check_sources(&gp));

    rb_pipeline *p = rb_calloc(sizeof *p, "pipeline");
    if (!p)
        return RB_ERR_OOM;
    p->cfg = *c;
    rb_pipeline_config *k = &p->cfg;
    k->model = k->tokenizers_dir = k->model_config_dir = k->ms_adapter = k->image_encoder = NULL;
    k->local_encoder = k->local_encoder_config = NULL;
    for (int i = 0; i < RB_API_MAX_LORAS; i++)
        k->loras[i].path = NULL;
    rb_status s = RB_OK;
    const char **dst[] = {&k->model, &k->tokenizers_dir, &k->model_config_dir, &k->ms_adapter, &k->image_encoder,
                          &k->local_encoder, &k->local_encoder_config};
    const char *src[] = {c->model, c->tokenizers_dir, c->model_config_dir, c->ms_adapter, c->image_encoder,
                         c->local_encoder, c->local_encoder_config};
    for (size_t i = 0; s == RB_OK && i < sizeof dst / sizeof *dst; i++)
        s = dup_str(dst[i], src[i]);
    for (int i = 0; s == RB_OK && i < c->n_loras; i++)
        s = dup_str(&k->loras[i].path, c->loras[i].path);
    if (s == RB_OK && c->keep_models)
        s = rb_gen_models_new(&p->models);
    if (s != RB_OK) {
        rb_pipeline_close(p);
        return rb_error(s, "rb_pipeline_open: out of memory");
    }
    *out = p;
    return RB_OK;
}

/* The request's cancel callback, polled through the step and progress hooks of rb_gen_params. */
typedef struct bridge {
    const rb_generate_request *req;
    volatile int cancelled;
} bridge;

static void poll_cancel(bridge *b) {
    if (b->req->cancel && b->req->cancel(b->req->user))
        b->cancelled = 1;
}

static void on_step(void *user, const rb_gen_step *s) { poll_cancel(user); }

static void on_progress(void *user, const char *stage, int done, int total) {
    bridge *b = user;
    if (b->req->progress)
        b->req->progress(b->req->user, stage, done, total);
    poll_cancel(b);
}

void rb_image_out_free(rb_image_out *img) {
    if (!img)
        return;
    rb_free(img->data);
    memset(img, 0, sizeof *img);
}

rb_status rb_pipeline_generate(rb_pipeline *pl, const rb_generate_request *r, rb_image_out *images) {
    if (!pl || !r || !images)
        return rb_error(RB_ERR_INVALID, "rb_pipeline_generate: NULL argument");
    if (r->batch_count < 1 || r->batch_count > 1000)
        return rb_error(RB_ERR_INVALID, "rb_pipeline_generate: batch_count %d (1..1000)", r->batch_count);
    for (int i = 0; i < r->batch_count; i++)
        memset(&images[i], 0, sizeof images[i]);
    if ((unsigned)r->sampler >= (unsigned)RB_SAMPLER_COUNT || (unsigned)r->noise > (unsigned)RB_API_NOISE_CPU)
        return rb_error(RB_ERR_INVALID, "rb_pipeline_generate: sampler %d, noise %d", (int)r->sampler, (int)r->noise);
    if (r->n_subjects < 0 || r->n_subjects > RB_API_MAX_SUBJECTS)
        return rb_error(RB_ERR_INVALID, "rb_pipeline_generate: %d subjects (at most %d)", r->n_subjects,
                        RB_API_MAX_SUBJECTS);
    const rb_pipeline_config *c = &pl->cfg;
    rb_gen_params p;
    rb_gen_params_init(&p);
    p.model = c->model, p.tokenizers_dir = c->tokenizers_dir, p.model_config_dir = c->model_config_dir;
    p.ms_adapter = c->ms_adapter, p.image_encoder = c->image_encoder, p.resampler_dim_head = c->resampler_dim_head;
    p.local_encoder = c->local_encoder, p.local_encoder_config = c->local_encoder_config;
    for (int i = 0; i < c->n_loras; i++)
        p.loras[i] = (rb_lora_ref){c->loras[i].path, c->loras[i].scale};
    p.n_loras = c->n_loras;
    p.compute = c->bf16 ? RB_BF16 : RB_F32;
    p.arena_bytes = c->work_bytes;
    p.models = pl->models;
    p.prompt = r->prompt, p.negative_prompt = r->negative_prompt;
    for (int i = 0; i < r->n_subjects; i++) {
        p.subjects[i].image = r->subjects[i].image, p.subjects[i].phrase = r->subjects[i].phrase;
        memcpy(p.subjects[i].box, r->subjects[i].box, sizeof p.subjects[i].box);
    }
    p.n_subjects = r->n_subjects;
    p.width = r->width, p.height = r->height, p.steps = r->steps;
    p.guidance = r->guidance, p.ip_scale = r->ip_scale, p.seed = r->seed;
    p.sampler = (rb_sampler)r->sampler, p.karras = r->karras, p.noise = (rb_noise)r->noise;
    p.batch_count = r->batch_count;
    bridge b = {.req = r};
    p.user = &b, p.on_step = on_step, p.progress = on_progress;
    p.cancel = (volatile int *)&b.cancelled;
    poll_cancel(&b);
    if (b.cancelled)
        return rb_error(RB_ERR_CANCELLED, "generation cancelled before it started");

    rb_image *imgs = rb_calloc((size_t)r->batch_count * sizeof *imgs, "generated images");
    if (!imgs)
        return RB_ERR_OOM;
    rb_status s = rb_generate(&p, imgs);
    for (int i = 0; s == RB_OK && i < r->batch_count; i++) /* rb_image's data is rb_alloc'd: hand it over */
        images[i] = (rb_image_out){imgs[i].width, imgs[i].height, imgs[i].channels, imgs[i].data};
    rb_free(imgs);
    return s;
}

rb_status rb_write_png(const char *path, const rb_image_out *img, const char *parameters) {
    if (!path || !img || !img->data || img->width < 1 || img->height < 1 ||
        (img->channels != 1 && img->channels != 3 && img->channels != 4))
        return rb_error(RB_ERR_INVALID, "rb_write_png: %s: no image, or %d channels", path ? path : "(null)",
                        img ? img->channels : 0);
    rb_image im = {.width = img->width, .height = img->height, .channels = img->channels, .format = RB_IMG_PNG,
                   .data = img->data};
    const char *key = "parameters";
    return rb_png_write(path, &im, parameters ? 1 : 0, &key, &parameters);
}
