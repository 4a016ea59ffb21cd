/* CLIPSelf self-distillation of the local image encoder (see distill.h and docs/distill.md).
 * Reference: CLIPSelf src/training/clipself.py (the loss), its grid_distill dataset (boxes and crops),
 * its open_clip transformer.py `_extract_roi_features_v2` (dense features with the projection). */
#include "distill.h"

#include <dirent.h>
#include <libgen.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/mem.h"
#include "io/safetensors.h"
#include "models/image_processor.h"

/* src/modules/open_clip/model_configs/ViT-bigG-14.json (vision part), what rb_local_encoder_load
 * falls back to when no config is found; written next to the output in that case */
static const char bigg_config[] =
    "{\"embed_dim\": 1280, \"vision_cfg\": {\"image_size\": 224, \"layers\": 48, \"width\": 1664, "
    "\"head_width\": 104, \"mlp_ratio\": 4.9231, \"patch_size\": 14}}\n";

void rb_distill_params_init(rb_distill_params *p) {
    memset(p, 0, sizeof *p);
    p->image_size = RB_LOCAL_DEFAULT_IMAGE;
    p->grid_min = p->grid_max = RB_LOCAL_DEFAULT_POOL;
    p->batch = 2;
    p->steps = 1000;
    p->train_blocks = 0;
    rb_adam_config_init(&p->adam); /* AdamW */
    p->adam.lr = 1e-5;
    p->adam.weight_decay = 0.1;
    p->arena_bytes = (size_t)2 << 30;
}

/* ---- the student's parameters ---- */

/* Redirects *slot to an f32 copy we own (with a zeroed gradient when it trains). */
static rb_status add_param(rb_distill *d, rb_tensor **slot, int trains, const char *name) {
    rb_distill_param *p = &d->par[d->n_par];
    const rb_tensor *src = *slot;
    if (!src)
        return RB_OK; /* e.g. no projection */
    snprintf(p->name, sizeof p->name, "visual.%s", name);
    RB_TRY(rb_tensor_alloc(&p->t, RB_F32, src->ndim, src->shape, "distill parameter"));
    d->n_par++;
    RB_TRY(rb_tensor_copy(&p->t, src));
    p->t.name = p->name;
    if (trains) {
        RB_TRY(rb_tensor_alloc(&p->g, RB_F32, src->ndim, src->shape, "distill gradient"));
        memset(p->g.data, 0, rb_nbytes(&p->g));
        p->t.grad = &p->g;
        p->t.requires_grad = 1;
        p->trains = 1;
    }
    *slot = &p->t;
    return RB_OK;
}

/* open_clip's packed in_proj ([3D, D] weight or [3D] bias): the model holds q/k/v row views of the
 * mapped tensor; build one owned f32 tensor from them and point the views (and their gradients)
 * into it, so the optimizer updates one tensor and the file gets the packed key back. */
static rb_status add_in_proj(rb_distill *d, int layer, int bias, int trains) {
    rb_clip_vision *m = &d->student.vis;
    int64_t D = m->cfg.hidden;
    rb_distill_param *p = &d->par[d->n_par];
    snprintf(p->name, sizeof p->name, "visual.transformer.resblocks.%d.attn.in_proj_%s", layer,
             bias ? "bias" : "weight");
    int64_t shape[2] = {3 * D, D};
    RB_TRY(rb_tensor_alloc(&p->t, RB_F32, bias ? 1 : 2, shape, "distill parameter"));
    d->n_par++;
    p->t.name = p->name;
    if (trains) {
        RB_TRY(rb_tensor_alloc(&p->g, RB_F32, bias ? 1 : 2, shape, "distill gradient"));
        memset(p->g.data, 0, rb_nbytes(&p->g));
        p->t.grad = &p->g;
        p->t.requires_grad = 1;
        p->trains = 1;
    }
    for (int k = 0; k < 3; k++) {
        rb_tensor *view = &m->qkv_views[layer * 6 + (bias ? 3 : 0) + k], rows;
        RB_TRY(rb_view_slice(&rows, &p->t, 0, k * D, (k + 1) * D));
        RB_TRY(rb_tensor_copy(&rows, view));
        *view = rows; /* requires_grad comes with the slice; ->grad is set just below */
        if (trains) {
            rb_tensor *gv = &d->qkv_grads[layer * 6 + (bias ? 3 : 0) + k];
            RB_TRY(rb_view_slice(gv, &p->g, 0, k * D, (k + 1) * D)); /* row slices stay contiguous */
            view->grad = gv;
        }
    }
    return RB_OK;
}

static rb_status make_trainable(rb_distill *d) {
    rb_clip_vision *m = &d->student.vis;
    int L = m->cfg.layers, K = d->p.train_blocks;
    if (K <= 0 || K > L)
        K = L;
    int all = K == L;
    d->par = rb_calloc((size_t)(8 + 12 * L) * sizeof *d->par, "distill parameters");
    d->qkv_grads = rb_calloc((size_t)L * 6 * sizeof *d->qkv_grads, "distill parameters");
    if (!d->par || !d->qkv_grads)
        return RB_ERR_OOM;
    /* class and position embeddings stay frozen: the tower reads them through views
     * (rb_clip_vision_embed, rb_local_position_embedding) that do not pass gradients back; CLIPSelf's
     * released scripts lock this group too (--lock-image-unlocked-groups = layers) */
    RB_TRY(add_param(d, &m->patch_w, all, "conv1.weight"));
    RB_TRY(add_param(d, &m->class_emb, 0, "class_embedding"));
    RB_TRY(add_param(d, &m->pos_emb, 0, "positional_embedding"));
    RB_TRY(add_param(d, &m->pre_ln_w, all, "ln_pre.weight"));
    RB_TRY(add_param(d, &m->pre_ln_b, all, "ln_pre.bias"));
    for (int i = 0; i < L; i++) {
        rb_clip_layer *l = &m->layers[i];
        int t = i >= L - K;
        static const char *const keys[10] = {"ln_1.weight",     "ln_1.bias",       "attn.out_proj.weight",
                                             "attn.out_proj.bias", "ln_2.weight",  "ln_2.bias",
                                             "mlp.c_fc.weight", "mlp.c_fc.bias",   "mlp.c_proj.weight",
                                             "mlp.c_proj.bias"};
        rb_tensor **slots[10] = {&l->ln1_w, &l->ln1_b, &l->o_w,   &l->o_b,   &l->ln2_w,
                                 &l->ln2_b, &l->fc1_w, &l->fc1_b, &l->fc2_w, &l->fc2_b};
        RB_TRY(add_in_proj(d, i, 0, t));
        RB_TRY(add_in_proj(d, i, 1, t));
        for (int k = 0; k < 10; k++) {
            char name[96];
            snprintf(name, sizeof name, "transformer.resblocks.%d.%s", i, keys[k]);
            RB_TRY(add_param(d, slots[k], t, name));
        }
    }
    RB_TRY(add_param(d, &m->post_ln_w, 1, "ln_post.weight"));
    RB_TRY(add_param(d, &m->post_ln_b, 1, "ln_post.bias"));
    RB_TRY(add_param(d, &m->proj, 1, "proj"));
    d->train = rb_calloc((size_t)d->n_par * sizeof *d->train, "distill parameters");
    if (!d->train)
        return RB_ERR_OOM;
    for (int i = 0; i < d->n_par; i++)
        if (d->par[i].trains) {
            d->train[d->n_train++] = &d->par[i].t;
            d->n_trained_values += rb_numel(&d->par[i].t);
        }
    return rb_adam_init(&d->opt, &d->p.adam, d->n_train, d->train);
}

/* ---- data ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static rb_status list_images(rb_distill *d, const char *dir) {
    DIR *dp = opendir(dir);
    if (!dp)
        return rb_error(RB_ERR_IO, "%s: cannot open the image folder", dir);
    int cap = 0;
    rb_status s = RB_OK;
    for (struct dirent *de; s == RB_OK && (de = readdir(dp));) {
        if (de->d_name[0] == '.')
            continue;
        size_t n = strlen(dir) + strlen(de->d_name) + 2;
        char *path = rb_alloc(n, "distill file list");
        if (!path) {
            s = RB_ERR_OOM;
            break;
        }
        snprintf(path, n, "%s/%s", dir, de->d_name);
        struct stat st;
        rb_image probe;
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || rb_image_probe(&probe, path) != RB_OK) {
            rb_free(path); /* not an image: skipped */
            continue;
        }
        if (d->n_files == cap) {
            cap = cap ? 2 * cap : 64;
            char **f = rb_alloc((size_t)cap * sizeof *f, "distill file list");
            if (!f) {
                rb_free(path);
                s = RB_ERR_OOM;
                break;
            }
            if (d->files)
                memcpy(f, d->files, (size_t)d->n_files * sizeof *f);
            rb_free(d->files);
            d->files = f;
        }
        d->files[d->n_files++] = path;
    }
    closedir(dp);
    if (s == RB_OK && d->n_files == 0)
        s = rb_error(RB_ERR_INVALID, "%s: no images (PNG, JPEG or WebP) in the folder", dir);
    if (s == RB_OK)
        qsort(d->files, (size_t)d->n_files, sizeof *d->files, cmp_str);
    return s;
}

static rb_status read_config_text(rb_distill *d) {
    const char *path = d->p.teacher_config;
    char dir[4096], guess[4200];
    if (!path) {
        snprintf(dir, sizeof dir, "%s", d->p.teacher);
        snprintf(guess, sizeof guess, "%s/open_clip_config.json", dirname(dir));
        struct stat st;
        if (stat(guess, &st) != 0) {
            snprintf(d->config_text, sizeof d->config_text, "%s", bigg_config);
            return RB_OK;
        }
        path = guess;
    }
    FILE *f = fopen(path, "rb");
    if (!f)
        return rb_error(RB_ERR_IO, "%s: cannot read the open_clip config", path);
    size_t n = fread(d->config_text, 1, sizeof d->config_text - 1, f);
    int big = !feof(f);
    fclose(f);
    if (big)
        return rb_error(RB_ERR_FORMAT, "%s: open_clip config larger than %zu bytes", path, sizeof d->config_text - 1);
    d->config_text[n] = 0;
    return RB_OK;
}

rb_status rb_distill_open(rb_distill *d, const rb_distill_params *p) {
    memset(d, 0, sizeof *d);
    d->p = *p;
    if (!p->teacher)
        return rb_error(RB_ERR_INVALID, "distill: no teacher checkpoint");
    if (p->grid_min < 1 || p->grid_max < p->grid_min || p->grid_max > 64)
        return rb_error(RB_ERR_INVALID, "distill: grid range %d..%d (1 <= min <= max <= 64)", p->grid_min,
                        p->grid_max);
    if (p->batch < 1 || p->steps < 0)
        return rb_error(RB_ERR_INVALID, "distill: batch %d, steps %d", p->batch, p->steps);
    rb_status s = rb_local_encoder_load(&d->teacher, p->teacher, p->teacher_config);
    if (s == RB_OK)
        s = rb_local_encoder_load(&d->student, p->teacher, p->teacher_config);
    int ps = d->teacher.vis.cfg.patch_size;
    if (s == RB_OK && (p->image_size < ps || p->image_size % ps))
        s = rb_error(RB_ERR_INVALID, "distill: image size %d is not a positive multiple of the patch size %d",
                     p->image_size, ps);
    if (s == RB_OK && p->image_size / ps < p->grid_max)
        s = rb_error(RB_ERR_INVALID, "distill: a %d x %d patch grid cannot hold %d x %d boxes", p->image_size / ps,
                     p->image_size / ps, p->grid_max, p->grid_max);
    if (s == RB_OK)
        s = read_config_text(d);
    if (s == RB_OK)
        s = make_trainable(d);
    if (s == RB_OK && p->data)
        s = list_images(d, p->data);
    if (s == RB_OK)
        s = rb_arena_init(&d->work, p->arena_bytes, "distill activations");
    if (s == RB_OK)
        s = rb_arena_init(&d->grads, p->arena_bytes, "distill gradients");
    if (s == RB_OK)
        s = rb_tape_init(&d->tape, 1 << 14, &d->grads);
    if (s == RB_OK)
        rb_rng_torch_cpu(&d->rng, p->seed);
    if (s != RB_OK)
        rb_distill_close(d);
    return s;
}

void rb_distill_close(rb_distill *d) {
    rb_adam_free(&d->opt);
    for (int i = 0; i < d->n_par; i++) {
        rb_tensor_free(&d->par[i].t);
        if (d->par[i].trains)
            rb_tensor_free(&d->par[i].g);
    }
    rb_free(d->par);
    rb_free(d->qkv_grads);
    rb_free(d->train);
    for (int i = 0; i < d->n_files; i++)
        rb_free(d->files[i]);
    rb_free(d->files);
    rb_local_encoder_free(&d->teacher);
    rb_local_encoder_free(&d->student);
    rb_tape_free(&d->tape);
    rb_arena_free(&d->work);
    rb_arena_free(&d->grads);
    memset(d, 0, sizeof *d);
}

/* ---- the loss ---- */

/* Box k = i * P + j of rb_local_pool's order (x outer: x over [i, i+1) / P, y over [j, j+1) / P) in
 * pixels of a w x h image, rounded as PIL's Image.crop rounds, at least one pixel. */
static void box_pixels(int k, int P, int w, int h, int *x0, int *y0, int *x1, int *y1) {
    int i = k / P, j = k % P;
    *x0 = (int)lround((double)i * w / P);
    *x1 = (int)lround((double)(i + 1) * w / P);
    *y0 = (int)lround((double)j * h / P);
    *y1 = (int)lround((double)(j + 1) * h / P);
    if (*x1 <= *x0)
        *x1 = *x0 + 1 <= w ? *x0 + 1 : w, *x0 = *x1 - 1;
    if (*y1 <= *y0)
        *y1 = *y0 + 1 <= h ? *y0 + 1 : h, *y0 = *y1 - 1;
}

/* Student pixels [n, 3, S, S] (the whole image resized to S x S, bicubic, CLIP mean/std) and the
 * teacher's crops [n * P*P, 3, St, St] (each box of the original image, CLIP processor: short edge
 * St, centre crop St, as open_clip's transform at the teacher's size). */
static rb_status make_inputs(rb_distill *d, rb_ctx *c, const rb_image *images, int n, int P, rb_tensor **pixels,
                             rb_tensor **crops) {
    int S = d->p.image_size, St = d->teacher.vis.cfg.image_size;
    *pixels = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){n, 3, S, S});
    *crops = rb_ctx_tensor(c, RB_F32, 4, (int64_t[]){(int64_t)n * P * P, 3, St, St});
    if (!*pixels || !*crops)
        return c->status;
    rb_preprocess_config ps, pt;
    rb_preprocess_config_init(&ps, RB_PREPROCESS_CLIP);
    ps.shortest_edge = 0;
    ps.resize_h = ps.resize_w = S;
    ps.do_center_crop = 0;
    rb_preprocess_config_init(&pt, RB_PREPROCESS_CLIP);
    pt.shortest_edge = pt.crop_h = pt.crop_w = St;
    for (int b = 0; b < n; b++) {
        const rb_image *im = &images[b];
        if (im->channels != 3 || !im->data)
            return rb_error(RB_ERR_INVALID, "distill: image %d must be loaded as RGB", b);
        RB_TRY(rb_image_preprocess(im, &ps, (float *)(*pixels)->data + (size_t)b * 3 * S * S));
        size_t mark = rb_arena_mark(c->arena);
        for (int k = 0; k < P * P; k++) {
            int x0, y0, x1, y1;
            box_pixels(k, P, im->width, im->height, &x0, &y0, &x1, &y1);
            rb_image crop = *im;
            crop.width = x1 - x0;
            crop.height = y1 - y0;
            crop.data = rb_arena_alloc(c->arena, (size_t)crop.width * crop.height * 3);
            if (!crop.data)
                return rb_error(RB_ERR_OOM, "distill: arena full (crops)");
            for (int y = 0; y < crop.height; y++)
                memcpy(crop.data + (size_t)y * crop.width * 3,
                       im->data + ((size_t)(y0 + y) * im->width + (size_t)x0) * 3, (size_t)crop.width * 3);
            float *dst = (float *)(*crops)->data + ((size_t)b * P * P + (size_t)k) * 3 * St * St;
            rb_status s = rb_image_preprocess(&crop, &pt, dst);
            rb_arena_reset(c->arena, mark);
            RB_TRY(s);
        }
    }
    return RB_OK;
}

/* Teacher targets [n, P*P, E]: the crops' image embeddings (pooled -> proj), L2-normalised. */
static rb_tensor *teacher_targets(rb_distill *d, rb_ctx *c, rb_tensor *crops, int n, int P) {
    rb_clip_vision_out o;
    rb_status s = rb_clip_vision_forward(c, &d->teacher.vis, crops, 0, &o);
    if (s != RB_OK)
        return rb_ctx_fail(c, s);
    rb_tensor *emb = o.image_embeds ? o.image_embeds : o.pooled; /* [n*P*P, E] */
    int64_t E = emb->shape[1];
    rb_tensor *t = rb_ctx_tensor(c, RB_F32, 3, (int64_t[]){n, (int64_t)P * P, E});
    if (!t)
        return NULL;
    const float *src = emb->data;
    float *dst = t->data;
    for (int64_t r = 0; r < (int64_t)n * P * P; r++) {
        double ss = 0;
        for (int64_t e = 0; e < E; e++)
            ss += (double)src[r * E + e] * src[r * E + e];
        double inv = 1.0 / fmax(sqrt(ss), 1e-12);
        for (int64_t e = 0; e < E; e++)
            dst[r * E + e] = (float)(src[r * E + e] * inv);
    }
    return t;
}

/* Student box features [n, P*P, E]: dense -> ln_post -> proj -> L2 -> roi_align (CLIPSelf's
 * `_extract_roi_features_v2` with its projection; DreamRelation's inference drops the projection). */
static rb_tensor *student_boxes(rb_distill *d, rb_ctx *c, rb_tensor *pixels, int P) {
    const rb_clip_vision *m = &d->student.vis;
    rb_tensor *ln = NULL;
    rb_local_dense(c, &d->student, pixels, &ln); /* ln: [n, gh*gw, D] */
    if (!ln)
        return NULL;
    int64_t n = pixels->shape[0], gh = pixels->shape[2] / m->cfg.patch_size, gw = pixels->shape[3] / m->cfg.patch_size;
    int64_t D = m->cfg.hidden, E = m->proj ? m->proj->shape[1] : D;
    rb_tensor *x = ln;
    if (m->proj) /* open_clip proj: [D, E], x @ proj */
        x = rb_matmul(c, rb_reshape(c, ln, 2, (int64_t[]){n * gh * gw, D}), m->proj, 0);
    x = rb_l2_normalize(c, x, 1e-12f);
    x = rb_reshape(c, x, 4, (int64_t[]){n, gh, gw, E});
    return rb_local_pool(c, x, P, 0);
}

rb_status rb_distill_loss(rb_distill *d, const rb_image *images, int n, int grid, int with_grad, double *loss) {
    if (n < 1 || grid < 1 || !images)
        return rb_error(RB_ERR_INVALID, "distill: %d images, grid %d", n, grid);
    int gs = d->p.image_size / d->student.vis.cfg.patch_size;
    if (grid > gs)
        return rb_error(RB_ERR_INVALID, "distill: grid %d exceeds the %d x %d patch grid", grid, gs, gs);
    rb_ctx c;
    rb_ctx_init(&c, &d->work);
    rb_tensor *pixels, *crops;
    rb_status s = make_inputs(d, &c, images, n, grid, &pixels, &crops);
    rb_tensor *target = s == RB_OK ? teacher_targets(d, &c, crops, n, grid) : NULL;
    if (s == RB_OK && !target)
        s = c.status;
    if (s == RB_OK && with_grad)
        c.tape = &d->tape;
    rb_tensor *boxes = s == RB_OK ? student_boxes(d, &c, pixels, grid) : NULL;
    rb_tensor *one = s == RB_OK ? rb_ctx_tensor(&c, RB_F32, 0, NULL) : NULL;
    if (one)
        *(float *)one->data = 1.0f;
    /* 1 - mean over boxes and images of cos(student, teacher) */
    rb_tensor *lt = rb_sub(&c, one, rb_mean(&c, rb_cosine_similarity(&c, boxes, target, 1e-8f)));
    if (s == RB_OK && !lt)
        s = c.status;
    if (s == RB_OK && loss) {
        /* the same loss in double from the pooled features (reported; used by the gradient check) */
        int64_t R = rb_numel(target) / target->shape[2], E = target->shape[2];
        const float *a = boxes->data, *t = target->data;
        double acc = 0;
        for (int64_t r = 0; r < R; r++) {
            double dot = 0, na = 0;
            for (int64_t e = 0; e < E; e++) {
                dot += (double)a[r * E + e] * t[r * E + e];
                na += (double)a[r * E + e] * a[r * E + e];
            }
            acc += dot / fmax(sqrt(na), 1e-8); /* the target has unit norm */
        }
        *loss = 1.0 - acc / (double)R;
    }
    if (s == RB_OK && with_grad)
        s = rb_backward(&c, lt);
    rb_tape_reset(&d->tape);
    rb_arena_reset(&d->work, 0);
    rb_arena_reset(&d->grads, 0);
    return s;
}

rb_status rb_distill_step(rb_distill *d, double *loss, int *grid) {
    if (d->n_files == 0)
        return rb_error(RB_ERR_INVALID, "distill: no image folder");
    int n = d->p.batch, P = d->p.grid_min + (int)(rb_rng_mt_next(&d->rng) % (uint32_t)(d->p.grid_max - d->p.grid_min + 1));
    rb_image *imgs = rb_calloc((size_t)n * sizeof *imgs, "distill batch");
    if (!imgs)
        return RB_ERR_OOM;
    rb_status s = RB_OK;
    for (int b = 0; b < n && s == RB_OK; b++)
        s = rb_image_load(&imgs[b], d->files[rb_rng_mt_next(&d->rng) % (uint32_t)d->n_files], 3);
    double l = NAN;
    if (s == RB_OK) {
        rb_adam_zero_grad(&d->opt);
        s = rb_distill_loss(d, imgs, n, P, 1, &l);
    }
    if (s == RB_OK)
        s = rb_adam_step(&d->opt);
    for (int b = 0; b < n; b++)
        rb_image_free(&imgs[b]);
    rb_free(imgs);
    if (s == RB_OK)
        d->step++;
    if (loss)
        *loss = l;
    if (grid)
        *grid = P;
    return s;
}

/* ---- output ---- */

static rb_status write_text_atomic(const char *path, const char *text) {
    char tmp[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return rb_error(RB_ERR_IO, "%s: cannot create a temporary file", path);
    size_t n = strlen(text);
    int ok = write(fd, text, n) == (ssize_t)n && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (ok && rename(tmp, path) == 0)
        return RB_OK;
    unlink(tmp);
    return rb_error(RB_ERR_IO, "%s: write failed", path);
}

rb_status rb_distill_save(const rb_distill *d, const char *path) {
    const char **names = rb_alloc((size_t)d->n_par * sizeof *names, "distill save");
    const rb_tensor **ts = rb_alloc((size_t)d->n_par * sizeof *ts, "distill save");
    rb_status s = names && ts ? RB_OK : RB_ERR_OOM;
    for (int i = 0; s == RB_OK && i < d->n_par; i++) {
        names[i] = d->par[i].name;
        ts[i] = &d->par[i].t;
    }
    char step[32];
    snprintf(step, sizeof step, "%d", d->step);
    const char *mk[] = {"format", "distill_steps"}, *mv[] = {"relbooth-clipself-v1", step};
    if (s == RB_OK)
        s = rb_st_write(path, d->n_par, names, ts, 2, mk, mv);
    rb_free(names);
    rb_free(ts);
    if (s == RB_OK) {
        char dir[4096], cfg[4200];
        snprintf(dir, sizeof dir, "%s", path);
        snprintf(cfg, sizeof cfg, "%s/open_clip_config.json", dirname(dir));
        s = write_text_atomic(cfg, d->config_text);
    }
    return s;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

rb_status rb_distill_run(const rb_distill_params *p, double *final_loss) {
    if (!p->output || !p->data)
        return rb_error(RB_ERR_INVALID, "distill: needs an image folder and an output path");
    rb_distill d;
    RB_TRY(rb_distill_open(&d, p));
    double t0 = now_s(), loss = NAN;
    rb_status s = RB_OK;
    for (int i = 0; i < p->steps && s == RB_OK; i++) {
        int grid = 0;
        s = rb_distill_step(&d, &loss, &grid);
        if (s == RB_OK && p->progress) {
            rb_distill_progress pr = {i + 1, p->steps, loss, grid, now_s() - t0};
            p->progress(p->user, &pr);
        }
    }
    if (s == RB_OK)
        s = rb_distill_save(&d, p->output);
    if (final_loss)
        *final_loss = loss;
    rb_distill_close(&d);
    return s;
}
