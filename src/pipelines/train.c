/* The RelationLoRA training loop (see train.h and docs/train.md). */
#include "train.h"

#include "core/dist.h"
#include "text/phrase_span.h"

#include <errno.h>
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/file.h"
#include "core/mem.h"
#include "core/rng.h"
#include "models/clip_text.h"
#include "models/clip_vision.h"
#include "models/vae.h"
#include "pipelines/relation_data.h"
#include "pipelines/train_io.h"
#include "sched/scheduler.h"
#include "text/clip_tokenizer.h"

rb_status rb_train_params_init(rb_train_params *p, const char *recipe) {
    memset(p, 0, sizeof *p);
    p->resampler_dim_head = 64;
    p->ip_scale = 0.6f;
    p->resolution = 1024;
    p->rank = 4;
    p->alpha = 4.0f;
    p->max_grad_norm = 1.0;
    p->max_steps = 500;
    p->checkpoint_every = 500;
    p->seed = 0;
    p->compute = RB_F32;
    rb_adam_config_init(&p->adam);
    p->adam.lr = 1e-4;
    if (!recipe || !strcmp(recipe, "official")) {
        rb_rel_loss_config_official(&p->loss);
        p->adam.weight_decay = 1e-4, p->adam.decoupled = 1;
        p->batch = 1, p->accum = 4;
    } else if (!strcmp(recipe, "paper")) {
        rb_rel_loss_config_paper(&p->loss);
        p->adam.weight_decay = 0, p->adam.decoupled = 0;
        p->batch = 8, p->accum = 1;
    } else {
        return rb_error(RB_ERR_INVALID, "recipe '%s': expected paper or official", recipe);
    }
    return RB_OK;
}


/* ---- per-item conditioning, computed once ---- */

typedef struct item_cond {
    rb_tensor *prompt_embeds; /* [1, 77, D] */
    rb_tensor *pooled;        /* [1, P] */
    rb_tensor *phrase_embeds; /* [n, D_L] */
    rb_tensor *clip_feats;    /* [n, T, D_vision] hidden_states[-2] */
    int64_t span[2];
} item_cond;

typedef struct trainer {
    const rb_train_params *p;
    rb_relation_dataset ds;
    rb_arena keep, work, grads;
    rb_tape tape;
    item_cond *cond;
    rb_unet unet;
    rb_ms_adapter ad;
    rb_vae vae;
    rb_scheduler *sched;
    rb_lora_set lora;
    int n_params;
    rb_tensor **params;
    rb_adam opt;
    rb_train_state st;
    rb_unet_proc *procs;
} trainer;

static rb_tensor *keep_copy(trainer *T, const rb_tensor *t) {
    if (!t)
        return NULL;
    rb_tensor *k = rb_arena_tensor(&T->keep, RB_F32, t->ndim, t->shape);
    if (k && rb_tensor_copy(k, t) != RB_OK)
        return NULL;
    return k;
}

static void join(char *out, size_t n, const char *dir, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static rb_status stage_text(trainer *T) {
    const rb_train_params *p = T->p;
    rb_clip_tokenizer *tok1 = NULL, *tok2 = NULL;
    rb_clip_text te1, te2;
    memset(&te1, 0, sizeof te1), memset(&te2, 0, sizeof te2);
    char path[4096];
    rb_status s;
    join(path, sizeof path, p->model, "tokenizer");
    if ((s = rb_clip_tokenizer_load(&tok1, path)) != RB_OK)
        goto done;
    join(path, sizeof path, p->model, "tokenizer_2");
    if ((s = rb_clip_tokenizer_load(&tok2, path)) != RB_OK)
        goto done;
    join(path, sizeof path, p->model, "text_encoder");
    if ((s = rb_clip_text_load(&te1, path)) != RB_OK)
        goto done;
    join(path, sizeof path, p->model, "text_encoder_2");
    if ((s = rb_clip_text_load(&te2, path)) != RB_OK)
        goto done;
    for (int i = 0; i < T->ds.n_items && s == RB_OK; i++) {
        const rb_relation_item *it = &T->ds.items[i];
        item_cond *ic = &T->cond[i];
        rb_ctx c;
        rb_ctx_init(&c, &T->work);
        c.matmul_dtype = p->compute;
        rb_tensor *ids1 = rb_ctx_tensor(&c, RB_I64, 2, (int64_t[]){1, RB_CLIP_CONTEXT});
        rb_tensor *ids2 = rb_ctx_tensor(&c, RB_I64, 2, (int64_t[]){1, RB_CLIP_CONTEXT});
        rb_tensor *idp = rb_ctx_tensor(&c, RB_I64, 2, (int64_t[]){it->n, RB_CLIP_CONTEXT});
        if (!ids1 || !ids2 || !idp) {
            s = c.status;
            break;
        }
        if ((s = rb_clip_tokenize(tok1, it->prompt, ids1->data, NULL, NULL)) != RB_OK ||
            (s = rb_clip_tokenize(tok2, it->prompt, ids2->data, NULL, NULL)) != RB_OK)
            break;
        for (int e = 0; e < it->n && s == RB_OK; e++)
            s = rb_clip_tokenize(tok1, it->entities[e], (int64_t *)idp->data + e * RB_CLIP_CONTEXT, NULL, NULL);
        rb_clip_text_out o1, o2, op;
        if (s != RB_OK || (s = rb_clip_text_forward(&c, &te1, ids1, 0, &o1)) != RB_OK ||
            (s = rb_clip_text_forward(&c, &te2, ids2, 0, &o2)) != RB_OK ||
            (s = rb_clip_text_forward(&c, &te1, idp, 0, &op)) != RB_OK)
            break;
        if (!o2.text_embeds) {
            s = rb_error(RB_ERR_FORMAT, "text_encoder_2 has no text_projection (not an SDXL checkpoint?)");
            break;
        }
        ic->prompt_embeds = keep_copy(T, rb_concat(&c, (rb_tensor *[]){o1.penultimate, o2.penultimate}, 2, 2));
        ic->pooled = keep_copy(T, o2.text_embeds);
        ic->phrase_embeds = keep_copy(T, op.pooled);
        if (!ic->prompt_embeds || !ic->pooled || !ic->phrase_embeds) {
            s = c.status != RB_OK ? c.status : RB_ERR_OOM;
            break;
        }
        const char *pred = it->n_predicate > 0 ? it->predicate[0] : "";
        if ((s = rb_phrase_span(tok1, it->prompt, pred, ic->span)) != RB_OK)
            break;
        if (p->loss.w_cal != 0.0f && ic->span[1] <= ic->span[0])
            s = rb_error(RB_ERR_INVALID, "sample %s: predicate '%s' is not a word sequence of the prompt '%s' "
                         "(the cross-attention loss needs its tokens)", it->id, pred, it->prompt);
        rb_arena_reset(&T->work, 0);
    }
done:
    rb_clip_text_free(&te1);
    rb_clip_text_free(&te2);
    rb_clip_tokenizer_free(tok1);
    rb_clip_tokenizer_free(tok2);
    rb_arena_reset(&T->work, 0);
    return s;
}

/* CLIP vision hidden_states[-2] of every item's concept images (the dataset's own CLIP processing). */
static rb_status stage_image(trainer *T) {
    rb_clip_vision enc;
    RB_TRY(rb_clip_vision_load(&enc, T->p->image_encoder));
    rb_status s = RB_OK;
    uint64_t saved = T->ds.rng_state; /* these loads must not move the data order's generator */
    for (int i = 0; i < T->ds.n_items && s == RB_OK; i++) {
        rb_relation_sample smp;
        if ((s = rb_relation_sample_load(&T->ds, i, &smp)) != RB_OK)
            break;
        rb_ctx c;
        rb_ctx_init(&c, &T->work);
        c.matmul_dtype = T->p->compute;
        rb_clip_vision_out o;
        if ((s = rb_clip_vision_forward(&c, &enc, &smp.concept_images, 0, &o)) == RB_OK &&
            !(T->cond[i].clip_feats = keep_copy(T, o.penultimate)))
            s = c.status != RB_OK ? c.status : RB_ERR_OOM;
        rb_relation_sample_free(&smp);
        rb_arena_reset(&T->work, 0);
    }
    T->ds.rng_state = saved;
    rb_clip_vision_free(&enc);
    return s;
}

/* ---- LoRA parameters ---- */

rb_status rb_train_lora_pairs(rb_lora_set *set, const rb_unet *unet, int rank, float alpha) {
    static const char *proj[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int i = 0; i < unet->n_attn; i++) {
        const rb_unet_attn *a = unet->attn[i];
        for (int k = 0; a->cross && k < 4; k++) {
            char mod[160];
            snprintf(mod, sizeof mod, "%s.%s", a->name, proj[k]);
            int64_t in = k == 1 || k == 2 ? a->context_dim : a->dim;
            if (!rb_lora_add(set, "unet", mod, rank, in, a->dim, alpha))
                return RB_ERR_OOM;
        }
    }
    return RB_OK;
}

static rb_status make_lora(trainer *T) {
    const rb_train_params *p = T->p;
    rb_lora_init(&T->lora);
    RB_TRY(rb_train_lora_pairs(&T->lora, &T->unet, p->rank, p->alpha));
    rb_rng g;
    rb_rng_torch_cpu(&g, p->seed);
    for (int i = 0; i < T->lora.n; i++) { /* in the order the pairs were added: the generator's draws */
        rb_lora_pair *pr = T->lora.pairs[i];
        /* PEFT init_lora_weights="gaussian": A ~ N(0, (1/r)^2), B = 0 */
        int64_t n = rb_numel(pr->down);
        float *d = pr->down->data;
        RB_TRY(rb_rng_randn(&g, d, n));
        for (int64_t j = 0; j < n; j++)
            d[j] /= (float)p->rank;
        if (p->init_b_std_x1000 > 0) {
            float *u = pr->up->data;
            RB_TRY(rb_rng_randn(&g, u, rb_numel(pr->up)));
            for (int64_t j = 0; j < rb_numel(pr->up); j++)
                u[j] *= (float)p->init_b_std_x1000 / 1000.0f;
        }
    }
    T->n_params = 2 * T->lora.n;
    T->params = rb_calloc((size_t)T->n_params * sizeof *T->params, "LoRA parameters");
    if (!T->params)
        return RB_ERR_OOM;
    for (int i = 0; i < T->lora.n; i++) {
        rb_lora_pair *pr = T->lora.pairs[i];
        rb_tensor *t[2] = {pr->down, pr->up};
        for (int k = 0; k < 2; k++) {
            rb_tensor *gt = rb_arena_zeros(&T->keep, RB_F32, t[k]->ndim, t[k]->shape);
            char *name = rb_arena_alloc(&T->keep, 200);
            if (!gt || !name)
                return RB_ERR_OOM;
            snprintf(name, 200, "unet.%s.lora.%s.weight", pr->module, k ? "up" : "down");
            t[k]->grad = gt, t[k]->requires_grad = 1, t[k]->name = name;
            T->params[2 * i + k] = t[k];
        }
    }
    return rb_unet_attach_lora(&T->unet, &T->lora);
}

/* ---- one micro-batch ---- */

typedef struct micro_out {
    double loss, mse, kml, cal;
    int kml_on, cal_on;
} micro_out;

static rb_status micro_batch(trainer *T, int item, double loss_scale, micro_out *mo) {
    const rb_train_params *p = T->p;
    rb_relation_sample smp;
    RB_TRY(rb_relation_sample_load(&T->ds, item, &smp));
    const item_cond *ic = &T->cond[item];
    int n = smp.item->n;
    rb_ctx c;
    rb_ctx_init(&c, &T->work);
    c.matmul_dtype = p->compute;
    rb_status s = RB_OK;
    rb_rng *g = &T->st.rng;
    float sf = T->vae.cfg.scaling_factor;
    int64_t S = p->resolution, h = S / 8;
    /* VAE: latent_dist.sample() * scaling_factor of the target and of every concept image */
    rb_tensor img = smp.image, cimg = smp.concept_images_for_vae;
    rb_tensor *img4 = rb_reshape(&c, &img, 4, (int64_t[]){1, 3, S, S});
    rb_tensor *n1 = rb_ctx_tensor(&c, RB_F32, 4, (int64_t[]){1, 4, h, h});
    rb_tensor *n2 = rb_ctx_tensor(&c, RB_F32, 4, (int64_t[]){n, 4, h, h});
    rb_tensor *noise = rb_ctx_tensor(&c, RB_F32, 4, (int64_t[]){1, 4, h, h});
    rb_tensor *xt = rb_ctx_tensor(&c, RB_F32, 4, (int64_t[]){1, 4, h, h});
    rb_tensor *ts = rb_ctx_tensor(&c, RB_I64, 1, (int64_t[]){1});
    rb_tensor *tid = rb_ctx_tensor(&c, RB_F32, 2, (int64_t[]){1, 6});
    if (!img4 || !n1 || !n2 || !noise || !xt || !ts || !tid) {
        s = c.status;
        goto out;
    }
    rb_vae_posterior post;
    if ((s = rb_rng_randn(g, n1->data, rb_numel(n1))) != RB_OK ||
        (s = rb_vae_encode(&c, &T->vae, img4, n1, 0, NULL, &post)) != RB_OK)
        goto out;
    rb_tensor *z0 = rb_scale(&c, post.sample, sf);
    if ((s = rb_rng_randn(g, n2->data, rb_numel(n2))) != RB_OK ||
        (s = rb_vae_encode(&c, &T->vae, &cimg, n2, 0, NULL, &post)) != RB_OK)
        goto out;
    rb_tensor *cl = rb_reshape(&c, rb_scale(&c, post.sample, sf), 5, (int64_t[]){1, n, 4, h, h});
    /* noise, then t ~ U{0, ..., 999} */
    float u;
    if (!z0 || !cl || (s = rb_rng_randn(g, noise->data, rb_numel(noise))) != RB_OK || (s = rb_rng_rand(g, &u, 1)) != RB_OK)
        goto out;
    int64_t t = (int64_t)(u * (float)T->sched->cfg.num_train_timesteps);
    if (t >= T->sched->cfg.num_train_timesteps)
        t = T->sched->cfg.num_train_timesteps - 1;
    *(int64_t *)ts->data = t;
    if ((s = rb_sched_add_noise(T->sched, t, z0->data, noise->data, xt->data, rb_numel(xt))) != RB_OK)
        goto out;
    /* image tokens from the sample's boxes (frozen resampler) and the UNet context */
    rb_tensor feats = *ic->clip_feats;
    rb_tensor *tok = rb_resampler_forward(&c, &T->ad.resampler, &feats, smp.bboxes.data, ic->phrase_embeds, NULL);
    rb_tensor *ctx = rb_concat(&c, (rb_tensor *[]){ic->prompt_embeds, rb_ms_image_tokens(&c, &T->ad, tok)}, 2, 1);
    float *ti = tid->data;
    ti[0] = (float)smp.original_size[0], ti[1] = (float)smp.original_size[1];
    ti[2] = (float)smp.crop_top_left[0], ti[3] = (float)smp.crop_top_left[1];
    ti[4] = (float)S, ti[5] = (float)S;
    rb_tensor seg = smp.object_segmaps;
    rb_tensor *seg3 = rb_reshape(&c, &seg, 3, (int64_t[]){1, seg.shape[0], seg.shape[1]});
    rb_tensor kp = smp.keypoints;
    rb_tensor *kp4 = rb_reshape(&c, &kp, 4, (int64_t[]){1, 2 * n, RB_RELATION_KEYPOINTS, 2});
    if (!ctx || !seg3 || !kp4) {
        s = c.status;
        goto out;
    }
    /* forward with the tape */
    /* with CAL, each stored layer's term is computed inside its transformer block (in-block CAL,
     * relation_loss.h), so the blocks can be recomputed in backward with the loss on */
    rb_rel_attn_call call = {.ms = {.adapter = &T->ad, .n_subjects = n, .boxes = smp.bboxes.data, .scale = p->ip_scale},
                             .pred_span = p->loss.w_cal != 0.0f ? ic->span : NULL,
                             .max_hw = p->loss.cal_max_hw, .segmaps = p->loss.w_cal != 0.0f ? seg3 : NULL};
    rb_rel_procs(&T->unet, &call, T->procs);
    c.tape = &T->tape;
    /* Transformer blocks are always recomputed in backward: only their inputs and outputs stay on the tape. */
    rb_unet_in in = {.sample = xt, .timestep = ts, .encoder_hidden_states = ctx, .text_embeds = ic->pooled,
                     .time_ids = tid, .procs = T->procs, .recompute = 1};
    rb_unet_out uo;
    if ((s = rb_unet_forward(&c, &T->unet, &in, &uo)) != RB_OK)
        goto out;
    rb_rel_loss_in li = {.x_t = xt, .eps = uo.sample, .noise = noise, .timesteps = &t,
                         .alphas_cumprod = T->sched->alphas_cumprod, .keypoints = kp4, .concept_latents = cl,
                         .n_entities = n, .segmaps = seg3, .attn = &call};
    rb_rel_loss_out lo;
    if ((s = rb_rel_loss(&c, &p->loss, &li, &lo)) != RB_OK)
        goto out;
    rb_tensor *scaled = rb_scale(&c, lo.total, (float)loss_scale); /* accelerate divides by the accumulation */
    if (!scaled || (s = rb_backward(&c, scaled)) != RB_OK) {
        s = s != RB_OK ? s : c.status;
        goto out;
    }
    mo->loss = ((float *)lo.total->data)[0];
    mo->mse = ((float *)lo.mse->data)[0];
    mo->kml_on = lo.kml != NULL, mo->cal_on = lo.cal != NULL;
    mo->kml = lo.kml ? ((float *)lo.kml->data)[0] : 0;
    mo->cal = lo.cal ? ((float *)lo.cal->data)[0] : 0;
out:
    if (s != RB_OK)
        s = rb_error_prefix(s, "sample %s", smp.item->id);
    rb_tape_reset(&T->tape);
    rb_arena_reset(&T->work, 0);
    rb_arena_reset(&T->grads, 0);
    rb_relation_sample_free(&smp);
    return s;
}

/* ---- the run ---- */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static rb_status check_params(const rb_train_params *p) {
    if (!p->model || !p->data || !p->ms_adapter || !p->image_encoder || !p->output_dir)
        return rb_error(RB_ERR_INVALID, "train: model, data, ms_adapter, image_encoder and output_dir are required");
    if (p->resolution < 64 || p->resolution % 64)
        return rb_error(RB_ERR_INVALID, "train: resolution %d must be a multiple of 64", p->resolution);
    if (p->rank < 1 || p->alpha <= 0 || p->batch < 1 || p->accum < 1 || p->max_steps < 1 || p->checkpoint_every < 0)
        return rb_error(RB_ERR_INVALID, "train: rank, alpha, batch, accumulation and steps must be positive");
    if (p->adam.lr <= 0 || p->adam.weight_decay < 0)
        return rb_error(RB_ERR_INVALID, "train: learning rate must be > 0 and weight decay >= 0");
    return RB_OK;
}

static rb_status setup(trainer *T) {
    const rb_train_params *p = T->p;
    rb_relation_data_options o;
    rb_relation_data_options_init(&o);
    o.size = p->resolution, o.mask_res = p->resolution / 8, o.derive_predicate = 1, o.seed = p->seed;
    RB_TRY(rb_relation_dataset_open(&T->ds, p->data, &o));
    if (T->ds.n_items < 1)
        return rb_error(RB_ERR_INVALID, "%s: no samples", p->data);
    /* default: 12 GiB of activations (+ 6 GiB of gradients) reserved at 1024 px, scaled with the pixel
     * count; pages are touched only as used. With the blocks recomputed the bench's step reaches 0.9 + 0.8
     * GiB at 512 px, ~4x that at 1024 (docs/bench-train.md). */
    double px = (double)p->resolution * p->resolution / (1024.0 * 1024.0);
    size_t ab = p->arena_bytes ? p->arena_bytes : (size_t)fmax(512.0 * (1 << 20), px * 12.0 * (1 << 30));
    RB_TRY(rb_arena_init(&T->keep, (size_t)256 << 20, "train keep"));
    RB_TRY(rb_arena_init(&T->work, ab, "train activations"));
    RB_TRY(rb_arena_init(&T->grads, ab / 2, "train gradients"));
    RB_TRY(rb_tape_init(&T->tape, 1 << 14, &T->grads));
    T->cond = rb_arena_alloc(&T->keep, (size_t)T->ds.n_items * sizeof *T->cond);
    if (!T->cond)
        return RB_ERR_OOM;
    memset(T->cond, 0, (size_t)T->ds.n_items * sizeof *T->cond);
    RB_TRY(stage_text(T));
    char path[4096];
    join(path, sizeof path, p->model, "unet");
    RB_TRY(rb_unet_load_dir(&T->unet, path));
    RB_TRY(rb_ms_adapter_load(&T->ad, p->ms_adapter, &T->unet, p->resampler_dim_head));
    RB_TRY(stage_image(T));
    join(path, sizeof path, p->model, "vae");
    RB_TRY(rb_vae_load(&T->vae, path, NULL));
    T->sched = rb_calloc(sizeof *T->sched, "scheduler");
    if (!T->sched)
        return RB_ERR_OOM;
    rb_sched_config sc;
    join(path, sizeof path, p->model, "scheduler/scheduler_config.json");
    RB_TRY(rb_sched_config_load(&sc, path));
    RB_TRY(rb_sched_init(T->sched, &sc, RB_SAMPLER_EULER));
    T->procs = rb_arena_alloc(&T->keep, (size_t)T->unet.n_attn * sizeof *T->procs);
    if (!T->procs)
        return RB_ERR_OOM;
    RB_TRY(make_lora(T));
    return rb_adam_init(&T->opt, &p->adam, T->n_params, T->params);
}

static void teardown(trainer *T) {
    rb_adam_free(&T->opt);
    rb_unet_detach_lora(&T->unet);
    rb_lora_free(&T->lora);
    rb_free(T->params);
    if (T->sched)
        rb_sched_free(T->sched);
    rb_free(T->sched);
    rb_vae_free(&T->vae);
    rb_ms_adapter_free(&T->ad);
    rb_unet_free(&T->unet);
    rb_tape_free(&T->tape);
    rb_arena_free(&T->grads);
    rb_arena_free(&T->work);
    rb_arena_free(&T->keep);
    rb_relation_dataset_close(&T->ds);
    rb_train_state_free(&T->st);
}

/* Data parallelism: sample m of a step is computed by rank m % size, but every rank loads every sample
 * and makes the same random draws (dataset crops, VAE sampling noise, noise, t), so that each
 * sample sees exactly the randomness it would see in one process; gradients are then summed. */
static rb_status skip_micro(trainer *T, int item) {
    rb_relation_sample smp;
    RB_TRY(rb_relation_sample_load(&T->ds, item, &smp));
    int64_t h = T->p->resolution / 8, n = smp.item->n, sizes[3] = {4 * h * h, n * 4 * h * h, 4 * h * h};
    rb_relation_sample_free(&smp);
    float *buf = rb_alloc((size_t)sizes[1] * sizeof(float), "skipped sample");
    if (!buf)
        return RB_ERR_OOM;
    rb_status s = RB_OK;
    for (int i = 0; i < 3 && s == RB_OK; i++) /* the draws of micro_batch, in its order */
        s = rb_rng_randn(&T->st.rng, buf, sizes[i]);
    if (s == RB_OK)
        s = rb_rng_rand(&T->st.rng, buf, 1);
    rb_free(buf);
    return s;
}

/* Sums the ranks' LoRA gradients and step statistics (one process: nothing to do). */
static rb_status reduce_step(trainer *T, double *stats, int n_stats) {
    if (rb_dist_size() == 1)
        return RB_OK;
    for (int i = 0; i < T->n_params; i++)
        RB_TRY(rb_dist_allreduce_sum_f32(T->params[i]->grad->data, (size_t)rb_numel(T->params[i]->grad)));
    return rb_dist_allreduce_sum_f64(stats, (size_t)n_stats);
}

static void next_item(trainer *T, int *item) {
    rb_train_state *st = &T->st;
    if (st->pos >= st->n_order) { /* new epoch: Fisher-Yates shuffle from the training generator */
        for (int i = 0; i < st->n_order; i++)
            st->order[i] = i;
        for (int i = st->n_order - 1; i > 0; i--) {
            int j = (int)(rb_rng_mt_next(&st->rng) % (uint32_t)(i + 1));
            int tmp = st->order[i];
            st->order[i] = st->order[j], st->order[j] = tmp;
        }
        st->pos = 0;
        st->epoch++;
    }
    *item = st->order[st->pos++];
}

rb_status rb_train(const rb_train_params *p, rb_train_result *res) {
    memset(res, 0, sizeof *res);
    RB_TRY(check_params(p));
    if (mkdir(p->output_dir, 0755) != 0 && errno != EEXIST)
        return rb_error(RB_ERR_IO, "%s: cannot create the output folder: %s", p->output_dir, strerror(errno));
    trainer T;
    memset(&T, 0, sizeof T);
    T.p = p;
    rb_status s = setup(&T);
    if (s == RB_OK)
        s = rb_train_state_init(&T.st, T.ds.n_items, p->seed, T.ds.rng_state);
    if (s == RB_OK && p->resume) {
        char dir[4096];
        if ((s = rb_train_find_checkpoint(p->output_dir, p->resume, dir, sizeof dir)) == RB_OK &&
            (s = rb_train_checkpoint_load(dir, &T.lora, &T.opt, &T.st)) == RB_OK) {
            T.ds.rng_state = T.st.data_rng;
            res->resumed_from = T.st.step;
            s = rb_train_metrics_truncate(p->output_dir, T.st.step);
        }
    }
    const int micro = p->batch * p->accum;
    const double t0 = now();
    const int first = T.st.step;
    while (s == RB_OK && T.st.step < p->max_steps) {
        if (p->cancel && *p->cancel) {
            s = rb_error(RB_ERR_CANCELLED, "training cancelled at step %d", T.st.step);
            break;
        }
        rb_train_progress pr = {0};
        double sums[6] = {0}; /* loss, mse, kml, cal, #kml, #cal */
        for (int m = 0; m < micro && s == RB_OK; m++) {
            int item;
            next_item(&T, &item);
            if (m % rb_dist_size() != rb_dist_rank()) {
                s = skip_micro(&T, item);
                continue;
            }
            micro_out mo = {0};
            s = micro_batch(&T, item, 1.0 / micro, &mo);
            if (s == RB_OK) {
                sums[0] += mo.loss, sums[1] += mo.mse;
                sums[2] += mo.kml_on ? mo.kml : 0, sums[4] += mo.kml_on;
                sums[3] += mo.cal_on ? mo.cal : 0, sums[5] += mo.cal_on;
            }
        }
        int failed = s != RB_OK; /* every rank learns of a failure before the collective sums */
        if (rb_dist_any(&failed) != RB_OK || failed) {
            if (s == RB_OK)
                s = rb_error(RB_ERR_INTERNAL, "train: another rank failed at step %d", T.st.step + 1);
            break;
        }
        if ((s = reduce_step(&T, sums, 6)) != RB_OK)
            break;
        const int nk = (int)sums[4], nc = (int)sums[5], lead = rb_dist_rank() == 0;
        double norm = NAN;
        if (p->max_grad_norm > 0)
            s = rb_clip_grad_norm(T.n_params, T.params, p->max_grad_norm, 0, &norm);
        else
            s = rb_clip_grad_norm(T.n_params, T.params, INFINITY, 0, &norm);
        if (s == RB_OK)
            s = rb_adam_step(&T.opt);
        rb_adam_zero_grad(&T.opt);
        if (s != RB_OK)
            break;
        T.st.step++;
        T.st.data_rng = T.ds.rng_state;
        pr.step = T.st.step, pr.steps = p->max_steps;
        pr.loss = sums[0] / micro, pr.mse = sums[1] / micro;
        pr.kml = nk ? sums[2] / nk : NAN, pr.cal = nc ? sums[3] / nc : NAN;
        pr.grad_norm = norm;
        pr.seconds = now() - t0;
        pr.eta = pr.seconds / (T.st.step - first) * (p->max_steps - T.st.step);
        res->final_loss = pr.loss;
        if (lead && (s = rb_train_metrics_append(p->output_dir, &pr, p->adam.lr)) != RB_OK)
            break;
        if (lead && p->progress)
            p->progress(p->user, &pr);
        int stop = p->stop_after > 0 && T.st.step >= p->stop_after;
        if (lead && ((p->checkpoint_every > 0 && T.st.step % p->checkpoint_every == 0) || stop)) {
            if ((s = rb_train_checkpoint_save(p->output_dir, &T.lora, &T.opt, &T.st, res->last_checkpoint,
                                              sizeof res->last_checkpoint)) != RB_OK)
                break;
        }
        if (stop)
            break;
    }
    res->steps = T.st.step;
    res->seconds = now() - t0;
    if (s == RB_OK && rb_dist_rank() == 0) /* one writer for the outputs; every rank holds the same weights */
        s = rb_train_loss_curve(p->output_dir);
    if (s == RB_OK && T.st.step >= p->max_steps && rb_dist_rank() == 0) {
        join(res->lora_path, sizeof res->lora_path, p->output_dir, "pytorch_lora_weights.safetensors");
        s = rb_lora_save(&T.lora, res->lora_path);
    }
    teardown(&T);
    return s;
}
