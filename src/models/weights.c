#include "weights.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core/mem.h"

/* What rb_weights_get hands out: a header that never moves, and the copy it may point to. */
typedef struct owned_ref {
    rb_tensor t;
    void *copy;
} owned_ref;

rb_status rb_weights_open(rb_weights *w, const char *path) {
    memset(w, 0, sizeof *w);
    uint8_t head[16] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return rb_error(RB_ERR_IO, "%s: %s", path, strerror(errno));
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    if (rb_torch_sniff(head, got)) {
        RB_TRY(rb_torch_open(&w->torch, path));
        w->is_torch = 1;
        w->path = w->torch.path;
        w->n = w->torch.n;
    } else {
        RB_TRY(rb_st_open(&w->st, path));
        w->path = w->st.path;
        w->n = w->st.n;
    }
    w->names = rb_calloc(((size_t)w->n + 1) * sizeof *w->names, "weights");
    w->tensors = rb_calloc(((size_t)w->n + 1) * sizeof *w->tensors, "weights");
    w->used = rb_calloc((size_t)w->n + 1, "weights");
    w->cap_owned = w->n + 1;
    w->owned = rb_calloc((size_t)w->cap_owned * sizeof *w->owned, "weights");
    rb_status st = !w->names || !w->tensors || !w->used || !w->owned
                       ? RB_ERR_OOM
                       : rb_strmap_init(&w->index, (uint32_t)w->n);
    for (int i = 0; st == RB_OK && i < w->n; i++) {
        w->names[i] = w->is_torch ? w->torch.entries[i].name : w->st.entries[i].name;
        w->tensors[i] = w->is_torch ? &w->torch.entries[i].t : &w->st.entries[i].t;
        st = rb_strmap_put(&w->index, w->names[i], strlen(w->names[i]), i);
    }
    if (st != RB_OK)
        rb_weights_close(w);
    return st;
}

void rb_weights_close(rb_weights *w) {
    for (int i = 0; i < w->n_owned; i++) {
        owned_ref *r = w->owned[i];
        rb_free(r->copy);
        rb_free(r);
    }
    rb_free(w->owned);
    rb_free(w->used);
    rb_free(w->names);
    rb_free(w->tensors);
    rb_strmap_free(&w->index);
    if (w->is_torch)
        rb_torch_close(&w->torch);
    else
        rb_st_close(&w->st);
    memset(w, 0, sizeof *w);
}

static int find(const rb_weights *w, const char *name) {
    int32_t i;
    return rb_strmap_get(&w->index, name, strlen(name), &i) ? i : -1;
}

int rb_weights_has(const rb_weights *w, const char *name) { return find(w, name) >= 0; }

static rb_tensor *get(rb_weights *w, int required, int f32, int ndim, const int64_t *shape, const char *fmt,
                      va_list ap) {
    if (w->status != RB_OK)
        return NULL;
    char name[512];
    vsnprintf(name, sizeof name, fmt, ap);
    int i = find(w, name);
    if (i < 0) {
        if (required)
            w->status = rb_error(RB_ERR_FORMAT, "%s: missing tensor '%s'", w->path, name);
        return NULL;
    }
    const rb_tensor *t = w->tensors[i];
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++)
        ok = shape[d] < 0 || shape[d] == t->shape[d];
    if (!ok) {
        char got[96];
        w->status = rb_error(RB_ERR_FORMAT, "%s: tensor '%s' has shape %s, expected %d dims", w->path, name,
                             rb_shape_str(t, got, sizeof got), ndim);
        return NULL;
    }
    if (!rb_dtypes[t->dtype].is_float || t->dtype == RB_F8_E4M3 || t->dtype == RB_F8_E5M2 || t->dtype == RB_F64) {
        w->status = rb_error(RB_ERR_UNSUPPORTED, "%s: tensor '%s' has dtype %s (f32, f16 or bf16 expected)",
                             w->path, name, rb_dtype_name(t->dtype));
        return NULL;
    }
    if (w->n_owned == w->cap_owned) { /* a tensor may be requested more than once: grow the list */
        void **o = rb_calloc((size_t)w->cap_owned * 2 * sizeof *o, "weights");
        if (!o) {
            w->status = RB_ERR_OOM;
            return NULL;
        }
        memcpy(o, w->owned, (size_t)w->n_owned * sizeof *o);
        rb_free(w->owned);
        w->owned = o;
        w->cap_owned *= 2;
    }
    owned_ref *ref = rb_calloc(sizeof *ref, "weights");
    if (!ref) {
        w->status = RB_ERR_OOM;
        return NULL;
    }
    w->owned[w->n_owned] = ref;
    rb_tensor *out = &ref->t;
    *out = *t;
    out->name = w->names[i];
    /* copies: f32 requested from f16/bf16 storage, or a strided view (torch files may hold those) */
    if ((f32 && t->dtype != RB_F32) || !rb_is_contiguous(t)) {
        rb_tensor conv;
        if ((w->status = rb_tensor_alloc(&conv, f32 ? RB_F32 : t->dtype, t->ndim, t->shape, name)) != RB_OK)
            return NULL;
        rb_tensor_copy(&conv, t);
        ref->copy = conv.data;
        conv.name = out->name;
        *out = conv;
    }
    w->n_owned++;
    w->used[i] = 1;
    return out;
}

rb_tensor *rb_weights_get(rb_weights *w, int f32, int ndim, const int64_t *shape, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    rb_tensor *t = get(w, 1, f32, ndim, shape, fmt, ap);
    va_end(ap);
    return t;
}

rb_tensor *rb_weights_opt(rb_weights *w, int f32, int ndim, const int64_t *shape, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    rb_tensor *t = get(w, 0, f32, ndim, shape, fmt, ap);
    va_end(ap);
    return t;
}

int rb_weights_unused(const rb_weights *w, int max_print) {
    int n = 0;
    for (int i = 0; i < w->n; i++) {
        if (w->used[i])
            continue;
        if (n < max_print)
            fprintf(stderr, "relbooth: %s: unused tensor %s\n", w->path, w->names[i]);
        n++;
    }
    return n;
}
