/* safetensors reader (mmap) and atomic writer.
 *
 * Layout: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets:
 * [begin, end]}, "__metadata__": {str: str}}, then the data; offsets are relative to the end of
 * the header. Everything in the header is untrusted: it is checked against the file size and
 * against itself (dtype x shape = byte count, no overlaps, no duplicates) before any tensor is
 * handed out. */
#include "safetensors.h"

#include "core/file.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "core/mem.h"

int rb_st_sniff(const uint8_t *head, size_t n) {
    if (n < 9)
        return 0;
    uint64_t len = 0;
    for (int i = 7; i >= 0; i--)
        len = len << 8 | head[i];
    return len >= 2 && len <= RB_ST_MAX_HEADER && head[8] == '{';
}

static int cmp_begin(const void *a, const void *b, void *ctx) {
    const size_t *off = ctx;
    size_t x = off[*(const int *)a], y = off[*(const int *)b];
    return x < y ? -1 : x > y;
}

static int cmp_name(const void *a, const void *b, void *ctx) {
    const rb_st_entry *e = ctx;
    return strcmp(e[*(const int *)a].name, e[*(const int *)b].name);
}

static char *dupstr(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = malloc(n);
    if (p)
        memcpy(p, s, n);
    return p;
}

/* Non-negative JSON integer that fits in size_t. */
static int get_size(json_t *v, size_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return 0;
    *out = (size_t)json_integer_value(v);
    return 1;
}

static rb_status parse_meta(rb_safetensors *f, json_t *meta, const char *name) {
    if (!json_is_object(meta))
        return rb_error(RB_ERR_FORMAT, "%s: __metadata__ is not an object", name);
    size_t n = json_object_size(meta);
    f->meta_keys = calloc(n ? n : 1, sizeof(char *));
    f->meta_values = calloc(n ? n : 1, sizeof(char *));
    if (!f->meta_keys || !f->meta_values)
        return rb_error(RB_ERR_OOM, "%s: out of memory for metadata", name);
    const char *k;
    json_t *v;
    json_object_foreach(meta, k, v) {
        if (!json_is_string(v))
            return rb_error(RB_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string", name, k);
        f->meta_keys[f->n_meta] = dupstr(k);
        f->meta_values[f->n_meta] = dupstr(json_string_value(v));
        f->n_meta++;
        if (!f->meta_keys[f->n_meta - 1] || !f->meta_values[f->n_meta - 1])
            return rb_error(RB_ERR_OOM, "%s: out of memory for metadata", name);
    }
    return RB_OK;
}

/* One tensor entry: dtype, shape and offsets, checked against each other and the data size. */
static rb_status parse_entry(rb_st_entry *e, size_t *begin, const char *key, json_t *v, const uint8_t *data,
                             size_t data_size, const char *name) {
    if (!json_is_object(v))
        return rb_error(RB_ERR_FORMAT, "%s: tensor '%.200s': entry is not an object", name, key);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd))
        return rb_error(RB_ERR_FORMAT, "%s: tensor '%.200s': missing dtype", name, key);
    rb_dtype dt;
    if (!rb_dtype_from_safetensors(json_string_value(jd), json_string_length(jd), &dt))
        return rb_error(RB_ERR_UNSUPPORTED, "%s: tensor '%.200s': unknown dtype '%.32s'", name, key,
                        json_string_value(jd));
    if (!json_is_array(js))
        return rb_error(RB_ERR_FORMAT, "%s: tensor '%.200s': shape is not a list", name, key);
    size_t nd = json_array_size(js);
    if (nd > RB_MAX_DIMS)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: tensor '%.200s': %zu dimensions (at most %d supported)", name, key, nd,
                        RB_MAX_DIMS);
    rb_tensor t = {0};
    t.dtype = dt;
    t.ndim = (int)nd;
    size_t bytes = rb_dtype_size(dt);
    for (size_t i = 0; i < nd; i++) {
        size_t d;
        if (!get_size(json_array_get(js, i), &d) || d > (size_t)INT64_MAX)
            return rb_error(RB_ERR_FORMAT, "%s: tensor '%.200s': shape is not a list of non-negative integers", name, key);
        if (!rb_mul_size(bytes, d, &bytes))
            return rb_error(RB_ERR_FORMAT, "%s: tensor '%.200s': shape overflows the size of memory", name, key);
        t.shape[i] = (int64_t)d;
    }
    rb_set_contiguous_strides(&t);
    size_t b, end;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !get_size(json_array_get(jo, 0), &b) ||
        !get_size(json_array_get(jo, 1), &end))
        return rb_error(RB_ERR_FORMAT, "%s: tensor '%.200s': data_offsets is not [begin, end]", name, key);
    if (b > end || end > data_size)
        return rb_error(RB_ERR_FORMAT, "%s: tensor '%.200s': data_offsets [%zu, %zu] outside the %zu data bytes", name,
                        key, b, end, data_size);
    if (end - b != bytes) {
        char sh[128];
        return rb_error(RB_ERR_FORMAT, "%s: tensor '%.200s': %s %s needs %zu bytes but data_offsets span %zu", name, key,
                        rb_dtypes[dt].safetensors, rb_shape_str(&t, sh, sizeof sh), bytes, end - b);
    }
    t.data = (void *)(data + b);
    e->t = t;
    *begin = b;
    e->name = dupstr(key);
    if (!e->name)
        return rb_error(RB_ERR_OOM, "%s: out of memory", name);
    e->t.name = e->name;
    return RB_OK;
}

static rb_status parse(rb_safetensors *f, const uint8_t *buf, size_t size, const char *name) {
    if (size < 8)
        return rb_error(RB_ERR_FORMAT, "%s: %zu bytes is too short for a safetensors file", name, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | buf[i];
    if (hlen > RB_ST_MAX_HEADER)
        return rb_error(RB_ERR_FORMAT, "%s: header length %llu exceeds the 100 MB limit", name,
                        (unsigned long long)hlen);
    if (hlen > size - 8)
        return rb_error(RB_ERR_FORMAT, "%s: header length %llu exceeds the file size %zu", name,
                        (unsigned long long)hlen, size);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return rb_error(RB_ERR_FORMAT, "%s: invalid JSON header: %s (at byte %d)", name, jerr.text, jerr.position);
    rb_status st = RB_OK;
    size_t *begins = NULL;
    if (!json_is_object(root)) {
        st = rb_error(RB_ERR_FORMAT, "%s: JSON header is not an object", name);
        goto done;
    }
    const uint8_t *data = buf + 8 + hlen;
    size_t data_size = size - 8 - (size_t)hlen;
    size_t cap = json_object_size(root);
    f->entries = calloc(cap ? cap : 1, sizeof *f->entries);
    begins = calloc(cap ? cap : 1, sizeof *begins);
    f->by_name = calloc(cap ? cap : 1, sizeof *f->by_name);
    if (!f->entries || !begins || !f->by_name) {
        st = rb_error(RB_ERR_OOM, "%s: out of memory for %zu entries", name, cap);
        goto done;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "__metadata__")) {
            if ((st = parse_meta(f, v, name)) != RB_OK)
                goto done;
            continue;
        }
        if ((st = parse_entry(&f->entries[f->n], &begins[f->n], key, v, data, data_size, name)) != RB_OK)
            goto done;
        f->n++;
    }
    /* Sort by data offset and require each tensor to start at or after the end of the previous one. */
    int *order = f->by_name;
    for (int i = 0; i < f->n; i++)
        order[i] = i;
    qsort_r(order, (size_t)f->n, sizeof *order, cmp_begin, begins);
    rb_st_entry *sorted = calloc((size_t)(f->n ? f->n : 1), sizeof *sorted);
    if (!sorted) {
        st = rb_error(RB_ERR_OOM, "%s: out of memory", name);
        goto done;
    }
    size_t prev_end = 0;
    const char *prev = NULL;
    for (int i = 0; i < f->n; i++) {
        rb_st_entry *e = &f->entries[order[i]];
        size_t b = begins[order[i]];
        if (b < prev_end) {
            st = rb_error(RB_ERR_FORMAT, "%s: tensors '%s' and '%s' overlap (data_offsets)", name, prev, e->name);
            free(sorted);
            goto done;
        }
        if (rb_nbytes(&e->t)) {
            prev_end = b + rb_nbytes(&e->t);
            prev = e->name;
        }
        sorted[i] = *e;
    }
    memcpy(f->entries, sorted, (size_t)f->n * sizeof *sorted);
    free(sorted);
    for (int i = 0; i < f->n; i++)
        order[i] = i;
    qsort_r(order, (size_t)f->n, sizeof *order, cmp_name, f->entries);

    /* Tensors whose data is not aligned to their element size get an aligned copy: the kernels
     * read them through typed pointers. (Files written by the reference writers are aligned.) */
    size_t need = 0;
    for (int i = 0; i < f->n; i++) {
        size_t es = rb_dtype_size(f->entries[i].t.dtype);
        if ((uintptr_t)f->entries[i].t.data % es)
            need += (rb_nbytes(&f->entries[i].t) + 63) & ~(size_t)63;
    }
    if (need) {
        f->aligned = rb_alloc(need, name);
        if (!f->aligned) {
            st = RB_ERR_OOM;
            goto done;
        }
        char *p = f->aligned;
        for (int i = 0; i < f->n; i++) {
            rb_tensor *t = &f->entries[i].t;
            if ((uintptr_t)t->data % rb_dtype_size(t->dtype)) {
                memcpy(p, t->data, rb_nbytes(t));
                t->data = p;
                p += (rb_nbytes(t) + 63) & ~(size_t)63;
            }
        }
    }
done:
    free(begins);
    json_decref(root);
    return st;
}

rb_status rb_st_open_mem(rb_safetensors *f, const void *bytes, size_t n, const char *name) {
    memset(f, 0, sizeof *f);
    f->path = dupstr(name ? name : "<memory>");
    if (!f->path)
        return rb_error(RB_ERR_OOM, "out of memory");
    f->map = (void *)bytes;
    f->map_size = n;
    rb_status st = parse(f, bytes, n, f->path);
    if (st != RB_OK)
        rb_st_close(f);
    return st;
}

rb_status rb_st_open(rb_safetensors *f, const char *path) {
    memset(f, 0, sizeof *f);
    void *map;
    size_t size;
    RB_TRY(rb_map_file(path, &map, &size));
    static const uint8_t empty[1];
    rb_status st = rb_st_open_mem(f, map ? map : empty, size, path);
    if (st != RB_OK) {
        rb_unmap_file(map, size);
        return st;
    }
    f->owns_map = map != NULL;
    return RB_OK;
}

void rb_st_close(rb_safetensors *f) {
    if (!f)
        return;
    for (int i = 0; i < f->n; i++)
        free(f->entries[i].name);
    for (int i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->entries);
    free(f->meta_keys);
    free(f->meta_values);
    free(f->by_name);
    rb_free(f->aligned);
    if (f->owns_map)
        rb_unmap_file(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const rb_tensor *rb_st_get(const rb_safetensors *f, const char *name) {
    int lo = 0, hi = f->n - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(f->entries[f->by_name[mid]].name, name);
        if (!c)
            return &f->entries[f->by_name[mid]].t;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

const char *rb_st_meta(const rb_safetensors *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (!strcmp(f->meta_keys[i], key))
            return f->meta_values[i];
    return NULL;
}

/* ---- writing ---- */

/* Writes a (possibly strided) tensor's elements in row-major order through a 1 MB buffer. */
static rb_status write_tensor(rb_atomic_file *af, const rb_tensor *t) {
    size_t bytes = rb_nbytes(t);
    if (rb_is_contiguous(t))
        return rb_atomic_write(af, t->data, bytes);
    size_t es = rb_dtype_size(t->dtype), cap = (1u << 20) / es * es;
    char *buf = malloc(cap);
    if (!buf)
        return rb_error(RB_ERR_OOM, "%s: out of memory for the write buffer", af->path);
    int64_t idx[RB_MAX_DIMS] = {0}, n = rb_numel(t);
    size_t fill = 0;
    rb_status st = RB_OK;
    for (int64_t i = 0; i < n && st == RB_OK; i++) {
        int64_t off = 0;
        for (int d = 0; d < t->ndim; d++)
            off += idx[d] * t->stride[d];
        memcpy(buf + fill, (const char *)t->data + off * (int64_t)es, es);
        fill += es;
        for (int d = t->ndim - 1; d >= 0; d--) {
            if (++idx[d] < t->shape[d])
                break;
            idx[d] = 0;
        }
        if (fill == cap || i == n - 1) {
            st = rb_atomic_write(af, buf, fill);
            fill = 0;
        }
    }
    free(buf);
    return st;
}

static char *build_header(int n, const char *const *names, const rb_tensor *const *tensors, int n_meta,
                          const char *const *mk, const char *const *mv, const char *path, rb_status *st) {
    json_t *root = json_object();
    size_t off = 0;
    char *s = NULL;
    *st = RB_OK;
    if (!root)
        goto oom;
    if (n_meta > 0) {
        json_t *m = json_object();
        if (!m || json_object_set_new(root, "__metadata__", m))
            goto oom;
        for (int i = 0; i < n_meta; i++)
            if (!mk[i] || !mv[i] || json_object_set_new(m, mk[i], json_string(mv[i]))) {
                *st = rb_error(RB_ERR_INVALID, "%s: invalid metadata entry %d", path, i);
                goto fail;
            }
    }
    for (int i = 0; i < n; i++) {
        const rb_tensor *t = tensors[i];
        if (!names[i] || !t || !strcmp(names[i], "__metadata__") || json_object_get(root, names[i])) {
            *st = rb_error(RB_ERR_INVALID, "%s: tensor %d: missing, reserved or duplicate name '%s'", path, i,
                           names[i] ? names[i] : "(null)");
            goto fail;
        }
        if ((unsigned)t->dtype >= RB_DTYPE_COUNT || t->ndim < 0 || t->ndim > RB_MAX_DIMS || (!t->data && rb_numel(t))) {
            *st = rb_error(RB_ERR_INVALID, "%s: tensor '%.200s': invalid dtype, rank or data", path, names[i]);
            goto fail;
        }
        json_t *e = json_object(), *shape = json_array(), *offs = json_array();
        if (!e || !shape || !offs) {
            json_decref(e), json_decref(shape), json_decref(offs);
            goto oom;
        }
        size_t end = off + rb_nbytes(t);
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)end));
        json_object_set_new(e, "dtype", json_string(rb_dtypes[t->dtype].safetensors));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", offs);
        if (json_object_set_new(root, names[i], e))
            goto oom;
        off = end;
    }
    s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s)
        goto oom;
    json_decref(root);
    return s;
oom:
    *st = rb_error(RB_ERR_OOM, "%s: out of memory for the header", path);
fail:
    json_decref(root);
    return NULL;
}

rb_status rb_st_write(const char *path, int n, const char *const *names, const rb_tensor *const *tensors,
                      int n_meta, const char *const *meta_keys, const char *const *meta_values) {
    rb_status st;
    char *json = build_header(n, names, tensors, n_meta, meta_keys, meta_values, path, &st);
    if (!json)
        return st;
    size_t jlen = strlen(json), padded = (jlen + 7) & ~(size_t)7;
    char *hdr = malloc(8 + padded);
    if (!hdr) {
        free(json);
        return rb_error(RB_ERR_OOM, "%s: out of memory", path);
    }
    for (int i = 0; i < 8; i++)
        hdr[i] = (char)((uint64_t)padded >> (8 * i));
    memcpy(hdr + 8, json, jlen);
    memset(hdr + 8 + jlen, ' ', padded - jlen);
    free(json);
    rb_atomic_file af;
    st = rb_atomic_open(&af, path);
    if (st == RB_OK) {
        st = rb_atomic_write(&af, hdr, 8 + padded);
        for (int i = 0; i < n && st == RB_OK; i++)
            st = write_tensor(&af, tensors[i]);
        st = rb_atomic_commit(&af, st);
    }
    free(hdr);
    return st;
}
