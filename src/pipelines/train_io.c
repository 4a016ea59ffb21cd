#include "train_io.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/file.h"
#include "core/mem.h"
#include "io/image.h"
#include "io/safetensors.h"

rb_status rb_train_state_init(rb_train_state *st, int n_items, uint64_t seed, uint64_t data_rng) {
    memset(st, 0, sizeof *st);
    st->order = rb_calloc((size_t)n_items * sizeof *st->order, "data order");
    if (!st->order)
        return RB_ERR_OOM;
    st->n_order = n_items;
    st->pos = n_items; /* the first draw starts epoch 1 */
    rb_rng_torch_cpu(&st->rng, seed);
    st->data_rng = data_rng;
    return RB_OK;
}

void rb_train_state_free(rb_train_state *st) {
    rb_free(st->order);
    st->order = NULL;
}

static rb_status rm_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return RB_OK;
    struct dirent *e;
    char p[4096];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            unlink(p);
        }
    closedir(d);
    rmdir(dir);
    return RB_OK;
}

rb_status rb_train_checkpoint_save(const char *out, const rb_lora_set *lora, const rb_adam *opt,
                                   const rb_train_state *st, char *dir, size_t cap) {
    char tmp[4096], path[4200];
    snprintf(tmp, sizeof tmp, "%s/.checkpoint-%d.tmp", out, st->step);
    snprintf(dir, cap, "%s/checkpoint-%d", out, st->step);
    rm_tree(tmp);
    if (mkdir(tmp, 0755) != 0)
        return rb_error(RB_ERR_IO, "%s: %s", tmp, strerror(errno));
    snprintf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", tmp);
    RB_TRY(rb_lora_save(lora, path));
    snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
    RB_TRY(rb_adam_save(opt, path));
    size_t rn = rb_rng_state_size();
    uint8_t *rb = rb_alloc(rn, "rng state");
    if (!rb)
        return RB_ERR_OOM;
    rb_status s = rb_rng_state_get(&st->rng, rb, rn);
    int64_t order[1];
    (void)order;
    int64_t *ord = rb_alloc((size_t)st->n_order * sizeof *ord, "order");
    if (s == RB_OK && !ord)
        s = RB_ERR_OOM;
    if (s == RB_OK) {
        for (int i = 0; i < st->n_order; i++)
            ord[i] = st->order[i];
        rb_tensor tr = rb_tensor_wrap(rb, RB_U8, 1, (int64_t[]){(int64_t)rn});
        rb_tensor to = rb_tensor_wrap(ord, RB_I64, 1, (int64_t[]){st->n_order});
        char v[4][32];
        snprintf(v[0], 32, "%d", st->step), snprintf(v[1], 32, "%d", st->epoch), snprintf(v[2], 32, "%d", st->pos);
        snprintf(v[3], 32, "%llu", (unsigned long long)st->data_rng);
        const char *keys[5] = {"format", "step", "epoch", "pos", "data_rng"};
        const char *vals[5] = {"relbooth-train-v1", v[0], v[1], v[2], v[3]};
        snprintf(path, sizeof path, "%s/state.safetensors", tmp);
        s = rb_st_write(path, 2, (const char *[]){"rng", "order"}, (const rb_tensor *[]){&tr, &to}, 5, keys, vals);
    }
    rb_free(rb);
    rb_free(ord);
    if (s != RB_OK)
        return s;
    rm_tree(dir); /* a checkpoint of the same step from an earlier run */
    if (rename(tmp, dir) != 0)
        return rb_error(RB_ERR_IO, "%s -> %s: %s", tmp, dir, strerror(errno));
    return RB_OK;
}

static rb_status meta_int(const rb_safetensors *f, const char *key, long long *v) {
    const char *s = rb_st_meta(f, key);
    char *end;
    if (!s || (*v = strtoll(s, &end, 10), *end))
        return rb_error(RB_ERR_FORMAT, "%s: metadata '%s' missing or not a number", f->path, key);
    return RB_OK;
}

rb_status rb_train_checkpoint_load(const char *dir, rb_lora_set *lora, rb_adam *opt, rb_train_state *st) {
    char path[4200];
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    rb_safetensors f;
    RB_TRY(rb_st_open(&f, path));
    long long step, epoch, pos;
    const char *fmt = rb_st_meta(&f, "format"), *dr = rb_st_meta(&f, "data_rng");
    const rb_tensor *tr = rb_st_get(&f, "rng"), *to = rb_st_get(&f, "order");
    rb_status s = fmt && !strcmp(fmt, "relbooth-train-v1") && dr ? RB_OK
                                                                 : rb_error(RB_ERR_FORMAT, "%s: not a relbooth training state", path);
    if (s == RB_OK && (s = meta_int(&f, "step", &step)) == RB_OK && (s = meta_int(&f, "epoch", &epoch)) == RB_OK)
        s = meta_int(&f, "pos", &pos);
    if (s == RB_OK && (!tr || tr->dtype != RB_U8 || !to || to->dtype != RB_I64 || rb_numel(to) != st->n_order ||
                       pos < 0 || pos > st->n_order))
        s = rb_error(RB_ERR_FORMAT, "%s: generator state or data order missing, or made for another dataset "
                     "(%d samples now)", path, st->n_order);
    rb_rng g;
    if (s == RB_OK)
        s = rb_rng_state_set(&g, tr->data, (size_t)rb_numel(tr));
    if (s == RB_OK) {
        st->rng = g;
        st->step = (int)step, st->epoch = (int)epoch, st->pos = (int)pos;
        st->data_rng = strtoull(dr, NULL, 10);
        for (int i = 0; i < st->n_order; i++)
            st->order[i] = (int)((const int64_t *)to->data)[i];
    }
    rb_st_close(&f);
    RB_TRY(s);
    /* weights: every pair of ours must be in the file with the same shapes */
    snprintf(path, sizeof path, "%s/pytorch_lora_weights.safetensors", dir);
    rb_lora_set in;
    RB_TRY(rb_lora_load(&in, path, NULL));
    for (int i = 0; i < lora->n && s == RB_OK; i++) {
        rb_lora_pair *p = lora->pairs[i];
        const rb_lora_pair *q = rb_lora_find_in(&in, p->component, p->module);
        if (!q || !rb_same_shape(q->down, p->down) || !rb_same_shape(q->up, p->up))
            s = rb_error(RB_ERR_FORMAT, "%s: no LoRA of shape rank %d for %s", path, p->rank, p->module);
        else if ((s = rb_tensor_copy(p->down, q->down)) == RB_OK)
            s = rb_tensor_copy(p->up, q->up);
    }
    if (s == RB_OK && in.n != lora->n)
        s = rb_error(RB_ERR_FORMAT, "%s: %d LoRA pairs, the run trains %d", path, in.n, lora->n);
    rb_lora_free(&in);
    RB_TRY(s);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    return rb_adam_load(opt, path);
}

rb_status rb_train_find_checkpoint(const char *out, const char *which, char *dir, size_t cap) {
    if (strcmp(which, "latest")) {
        snprintf(dir, cap, "%s", which);
        return RB_OK;
    }
    DIR *d = opendir(out);
    int best = -1;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            int n;
            char tail;
            if (sscanf(e->d_name, "checkpoint-%d%c", &n, &tail) == 1 && n > best)
                best = n;
        }
        closedir(d);
    }
    if (best < 0)
        return rb_error(RB_ERR_IO, "%s: no checkpoint-<step> folder to resume from", out);
    snprintf(dir, cap, "%s/checkpoint-%d", out, best);
    return RB_OK;
}

/* ---- metrics ---- */

static void num(FILE *f, const char *key, double v) {
    if (isfinite(v))
        fprintf(f, ", \"%s\": %.9g", key, v);
    else
        fprintf(f, ", \"%s\": null", key);
}

rb_status rb_train_metrics_append(const char *out, const rb_train_progress *p, double lr) {
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    FILE *f = fopen(path, p->step == 1 ? "w" : "a");
    if (!f)
        return rb_error(RB_ERR_IO, "%s: %s", path, strerror(errno));
    fprintf(f, "{\"step\": %d", p->step);
    num(f, "loss", p->loss), num(f, "mse", p->mse), num(f, "kml", p->kml), num(f, "cal", p->cal);
    num(f, "grad_norm", p->grad_norm), num(f, "lr", lr), num(f, "seconds", p->seconds);
    fprintf(f, "}\n");
    int bad = fflush(f) != 0;
    bad |= fclose(f) != 0;
    return bad ? rb_error(RB_ERR_IO, "%s: write failed", path) : RB_OK;
}

/* Calls fn for every line of metrics.jsonl that parses, with its step and loss. */
static rb_status each_line(const char *out, void (*fn)(void *, const char *, int, double), void *user) {
    char path[4200], *data = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    if (access(path, F_OK) != 0)
        return RB_OK;
    RB_TRY(rb_read_file(path, (size_t)1 << 30, &data, &len));
    for (char *line = data, *nl; line && *line; line = nl ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        json_t *j = json_loads(line, 0, NULL);
        if (j) {
            json_t *st = json_object_get(j, "step"), *lo = json_object_get(j, "loss");
            if (json_is_integer(st))
                fn(user, line, (int)json_integer_value(st), json_is_number(lo) ? json_number_value(lo) : NAN);
            json_decref(j);
        }
    }
    rb_free(data);
    return RB_OK;
}

typedef struct {
    char *buf;
    size_t n, cap;
    int max_step;
    rb_status s;
} lines;

static void keep_line(void *u, const char *line, int step, double loss) {
    lines *l = u;
    (void)loss;
    size_t k = strlen(line);
    if (step > l->max_step || l->s != RB_OK)
        return;
    if (l->n + k + 2 > l->cap) {
        size_t nc = (l->cap + k + 2) * 2;
        char *b = rb_alloc(nc, "metrics");
        if (!b) {
            l->s = RB_ERR_OOM;
            return;
        }
        if (l->buf)
            memcpy(b, l->buf, l->n);
        rb_free(l->buf);
        l->buf = b, l->cap = nc;
    }
    memcpy(l->buf + l->n, line, k);
    l->n += k;
    l->buf[l->n++] = '\n';
}

rb_status rb_train_metrics_truncate(const char *out, int step) {
    lines l = {NULL, 0, 0, step, RB_OK};
    RB_TRY(each_line(out, keep_line, &l));
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out);
    rb_atomic_file f;
    rb_status s = l.s;
    if (s == RB_OK && (s = rb_atomic_open(&f, path)) == RB_OK)
        s = rb_atomic_commit(&f, l.n ? rb_atomic_write(&f, l.buf, l.n) : RB_OK);
    rb_free(l.buf);
    return s;
}

/* ---- loss curve ---- */

typedef struct {
    double v[100000];
    int n;
} series;

static void add_point(void *u, const char *line, int step, double loss) {
    series *s = u;
    (void)line;
    if (step >= 1 && step <= 100000) {
        s->v[step - 1] = loss;
        if (step > s->n)
            s->n = step;
    }
}

static void put(rb_image *im, int x, int y, uint8_t r, uint8_t g, uint8_t b) {
    if (x < 0 || y < 0 || x >= im->width || y >= im->height)
        return;
    uint8_t *p = im->data + ((size_t)y * im->width + x) * 3;
    p[0] = r, p[1] = g, p[2] = b;
}

static void line(rb_image *im, int x0, int y0, int x1, int y1) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
    for (;;) { /* Bresenham */
        put(im, x0, y0, 200, 40, 40);
        put(im, x0, y0 + 1, 200, 40, 40);
        if (x0 == x1 && y0 == y1)
            break;
        int e2 = 2 * err;
        if (e2 >= dy)
            err += dy, x0 += sx;
        if (e2 <= dx)
            err += dx, y0 += sy;
    }
}

rb_status rb_train_loss_curve(const char *out) {
    series *s = rb_calloc(sizeof *s, "loss curve");
    if (!s)
        return RB_ERR_OOM;
    for (int i = 0; i < 100000; i++)
        s->v[i] = NAN;
    rb_status st = each_line(out, add_point, s);
    const int W = 640, H = 360, L = 40, R = 16, T = 16, B = 32;
    rb_image im = {0};
    im.width = W, im.height = H, im.channels = 3, im.format = RB_IMG_PNG;
    im.data = rb_alloc((size_t)W * H * 3, "loss curve");
    if (st == RB_OK && !im.data)
        st = RB_ERR_OOM;
    if (st == RB_OK) {
        memset(im.data, 255, (size_t)W * H * 3);
        double lo = INFINITY, hi = -INFINITY;
        for (int i = 0; i < s->n; i++)
            if (isfinite(s->v[i]))
                lo = fmin(lo, s->v[i]), hi = fmax(hi, s->v[i]);
        if (!(hi > lo))
            hi = lo + 1, lo -= 1;
        for (int x = L; x < W - R; x++) /* axes */
            put(&im, x, H - B, 0, 0, 0);
        for (int y = T; y <= H - B; y++)
            put(&im, L, y, 0, 0, 0);
        int px = -1, py = -1;
        for (int i = 0; i < s->n; i++) {
            if (!isfinite(s->v[i]))
                continue;
            int x = L + (s->n > 1 ? (int)((double)i / (s->n - 1) * (W - L - R - 1)) : 0);
            int y = T + (int)((hi - s->v[i]) / (hi - lo) * (H - T - B));
            if (px >= 0)
                line(&im, px, py, x, y);
            else
                put(&im, x, y, 200, 40, 40);
            px = x, py = y;
        }
        char desc[160];
        snprintf(desc, sizeof desc, "loss per step: %d steps, min %.6g, max %.6g", s->n, lo, hi);
        char path[4200];
        snprintf(path, sizeof path, "%s/loss_curve.png", out);
        st = rb_png_write(path, &im, 1, (const char *[]){"Description"}, (const char *[]){desc});
    }
    rb_free(im.data);
    rb_free(s);
    return st;
}
