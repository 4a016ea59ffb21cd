/* torch.save files: zip and legacy containers around a restricted pickle (see torchfile.h). */
#include "torchfile.h"

#include "core/file.h"

#include <stdlib.h>
#include <string.h>

#include "core/mem.h"
#include "pickle.h"
#include "zip.h"

/* pickle(0x1950a86a20f9469cfc6c) with protocol 2: PROTO 2, LONG1 of 10 bytes, STOP */
static const uint8_t legacy_magic[15] = {0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46,
                                         0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};

#define MAX_DEPTH 64
#define MAX_VISITS (1u << 22)
#define MAX_NAME_BYTES ((size_t)256 << 20)

int rb_torch_sniff(const uint8_t *head, size_t n) {
    return rb_zip_sniff(head, n) || (n >= sizeof legacy_magic && !memcmp(head, legacy_magic, sizeof legacy_magic));
}

/* ---- storages: one per key, with the dtype/numel of its persistent id and its bytes ---- */

typedef struct storage {
    const char *key;
    rb_dtype dtype;
    int64_t numel;
    const uint8_t *data;
} storage;

typedef struct loader {
    rb_torchfile *f;
    const char *what;
    rb_pk_pool pool;
    storage *st;
    size_t n_st;
    size_t visits, name_bytes;
    char *path;
    size_t path_len, path_cap;
    int cap_entries, cap_scalars;
} loader;

static int cmp_storage(const void *a, const void *b) { return strcmp(((const storage *)a)->key, ((const storage *)b)->key); }

static storage *find_storage(loader *L, const char *key) {
    storage k = {.key = key};
    return bsearch(&k, L->st, L->n_st, sizeof k, cmp_storage);
}

/* Collects the distinct storages the pickle referred to; the same key must always carry the
 * same dtype and size. */
static rb_status collect_storages(loader *L) {
    size_t n = 0;
    for (size_t i = 0; i < L->pool.n; i++)
        n += L->pool.nodes[i]->kind == RB_PK_STORAGE;
    L->st = calloc(n ? n : 1, sizeof *L->st);
    if (!L->st)
        return rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
    for (size_t i = 0; i < L->pool.n; i++) {
        rb_pk_value *v = L->pool.nodes[i];
        if (v->kind == RB_PK_STORAGE)
            L->st[L->n_st++] = (storage){.key = v->s, .dtype = v->dtype, .numel = v->i};
    }
    qsort(L->st, L->n_st, sizeof *L->st, cmp_storage);
    size_t k = 0;
    for (size_t i = 0; i < L->n_st; i++) {
        if (k && !strcmp(L->st[k - 1].key, L->st[i].key)) {
            if (L->st[k - 1].dtype != L->st[i].dtype || L->st[k - 1].numel != L->st[i].numel)
                return rb_error(RB_ERR_FORMAT, "%s: storage '%.40s' is declared with two different types or sizes",
                                L->what, L->st[i].key);
            continue;
        }
        L->st[k++] = L->st[i];
    }
    L->n_st = k;
    return RB_OK;
}

/* Points a storage at its bytes, copying them to aligned memory when the file's offset is not a
 * multiple of the element size. */
static rb_status attach(loader *L, storage *s, const uint8_t *data, size_t size) {
    size_t es = rb_dtype_size(s->dtype), want;
    if (!rb_mul_size((size_t)s->numel, es, &want) || want != size)
        return rb_error(RB_ERR_FORMAT, "%s: storage '%.40s' has %zu bytes but %lld elements of %s need %zu", L->what,
                        s->key, size, (long long)s->numel, rb_dtype_name(s->dtype), want);
    if ((uintptr_t)data % es == 0) {
        s->data = data;
        return RB_OK;
    }
    rb_torchfile *f = L->f;
    void **o = realloc(f->owned, (size_t)(f->n_owned + 1) * sizeof *o);
    if (!o)
        return rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
    f->owned = o;
    void *p = rb_alloc(size ? size : 1, L->what);
    if (!p)
        return RB_ERR_OOM;
    memcpy(p, data, size);
    f->owned[f->n_owned++] = p;
    s->data = p;
    return RB_OK;
}

/* ---- flattening the object into (path, tensor) and (path, scalar) ---- */

static rb_status path_push(loader *L, const char *key, size_t *saved) {
    size_t kl = strlen(key), need = L->path_len + kl + 2;
    if (need > 65536)
        return rb_error(RB_ERR_FORMAT, "%s: key path longer than 64 KB", L->what);
    if (need > L->path_cap) {
        char *p = realloc(L->path, need * 2);
        if (!p)
            return rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
        L->path = p;
        L->path_cap = need * 2;
    }
    *saved = L->path_len;
    if (L->path_len)
        L->path[L->path_len++] = '.';
    memcpy(L->path + L->path_len, key, kl + 1);
    L->path_len += kl;
    return RB_OK;
}

static char *name_dup(loader *L) {
    L->name_bytes += L->path_len + 1;
    if (L->name_bytes > MAX_NAME_BYTES) {
        rb_error(RB_ERR_FORMAT, "%s: key paths exceed %zu MB in total", L->what, MAX_NAME_BYTES >> 20);
        return NULL;
    }
    char *s = malloc(L->path_len + 1);
    if (!s) {
        rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
        return NULL;
    }
    memcpy(s, L->path ? L->path : "", L->path_len);
    s[L->path_len] = 0;
    return s;
}

static rb_status add_tensor(loader *L, const rb_pk_value *v) {
    rb_torchfile *f = L->f;
    storage *s = find_storage(L, v->storage->s);
    if (!s || (!s->data && s->numel))
        return rb_error(RB_ERR_FORMAT, "%s: storage '%.40s' has no data", L->what, v->storage->s);
    if (f->n == L->cap_entries) {
        int c = L->cap_entries ? 2 * L->cap_entries : 64;
        rb_torch_entry *e = realloc(f->entries, (size_t)c * sizeof *e);
        if (!e)
            return rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
        f->entries = e;
        L->cap_entries = c;
    }
    rb_torch_entry *e = &f->entries[f->n];
    memset(e, 0, sizeof *e);
    if (!(e->name = name_dup(L)))
        return RB_ERR_OOM;
    f->n++;
    e->t.dtype = v->dtype;
    e->t.ndim = v->ndim;
    for (int d = 0; d < v->ndim; d++)
        e->t.shape[d] = v->shape[d], e->t.stride[d] = v->stride[d];
    /* the VM checked offset + extent < storage numel, and attach() checked the bytes */
    e->t.data = (void *)(s->data ? s->data + (size_t)v->offset * rb_dtype_size(v->dtype) : NULL);
    e->t.name = e->name;
    e->storage_offset = v->offset;
    e->storage_numel = s->numel;
    e->is_param = v->is_param;
    return RB_OK;
}

static rb_status add_scalar(loader *L, const rb_pk_value *v) {
    rb_torchfile *f = L->f;
    if (f->n_scalars == L->cap_scalars) {
        int c = L->cap_scalars ? 2 * L->cap_scalars : 16;
        rb_torch_scalar *e = realloc(f->scalars, (size_t)c * sizeof *e);
        if (!e)
            return rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
        f->scalars = e;
        L->cap_scalars = c;
    }
    rb_torch_scalar *s = &f->scalars[f->n_scalars];
    memset(s, 0, sizeof *s);
    if (!(s->name = name_dup(L)))
        return RB_ERR_OOM;
    f->n_scalars++;
    s->kind = v->kind == RB_PK_NONE ? RB_TS_NONE : v->kind == RB_PK_BOOL ? RB_TS_BOOL : v->kind == RB_PK_INT ? RB_TS_INT
              : v->kind == RB_PK_FLOAT                                  ? RB_TS_FLOAT
                                                                        : RB_TS_STR;
    s->i = v->i;
    s->f = v->f;
    if (v->kind == RB_PK_STR && !(s->s = strdup(v->s)))
        return rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
    return RB_OK;
}

static rb_status flatten(loader *L, const rb_pk_value *v, int depth) {
    if (depth > MAX_DEPTH)
        return rb_error(RB_ERR_FORMAT, "%s: objects nested deeper than %d (cyclic?)", L->what, MAX_DEPTH);
    if (++L->visits > MAX_VISITS)
        return rb_error(RB_ERR_FORMAT, "%s: more than %u objects to list", L->what, MAX_VISITS);
    switch (v->kind) {
    case RB_PK_TENSOR: return add_tensor(L, v);
    case RB_PK_NONE: case RB_PK_BOOL: case RB_PK_INT: case RB_PK_FLOAT: case RB_PK_STR: return add_scalar(L, v);
    case RB_PK_DICT: case RB_PK_LIST: case RB_PK_TUPLE: break;
    default: return RB_OK; /* a bare storage or builder: nothing to list */
    }
    int is_dict = v->kind == RB_PK_DICT;
    size_t step = is_dict ? 2 : 1;
    for (size_t i = 0; i + step - 1 < v->n; i += step) {
        char num[32];
        const char *key = num;
        if (!is_dict) {
            snprintf(num, sizeof num, "%zu", i);
        } else {
            const rb_pk_value *k = v->items[i];
            if (k->kind == RB_PK_STR) {
                if (strlen(k->s) != k->len)
                    return rb_error(RB_ERR_FORMAT, "%s: dict key contains a NUL character", L->what);
                key = k->s;
            } else if (k->kind == RB_PK_INT) {
                snprintf(num, sizeof num, "%lld", (long long)k->i);
            } else {
                return rb_error(RB_ERR_UNSUPPORTED, "%s: dict key that is not a string or an integer", L->what);
            }
        }
        size_t saved = L->path_len;
        RB_TRY(path_push(L, key, &saved));
        rb_status st = flatten(L, v->items[i + step - 1], depth + 1);
        L->path_len = saved;
        if (L->path)
            L->path[saved] = 0;
        if (st != RB_OK)
            return st;
    }
    return RB_OK;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static rb_status check_unique(loader *L) {
    rb_torchfile *f = L->f;
    char **names = malloc((size_t)(f->n ? f->n : 1) * sizeof *names);
    if (!names)
        return rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
    for (int i = 0; i < f->n; i++)
        names[i] = f->entries[i].name;
    qsort(names, (size_t)f->n, sizeof *names, cmp_str);
    rb_status st = RB_OK;
    for (int i = 1; i < f->n && st == RB_OK; i++)
        if (!strcmp(names[i - 1], names[i]))
            st = rb_error(RB_ERR_FORMAT, "%s: two tensors have the key path '%.200s'", L->what, names[i]);
    free(names);
    return st;
}

/* ---- containers ---- */

static rb_status load_zip(loader *L, const uint8_t *buf, size_t size, const rb_pk_value **root) {
    rb_zip z;
    RB_TRY(rb_zip_open(&z, buf, size, L->what));
    rb_status st = RB_OK;
    const rb_zip_entry *pkl = NULL;
    for (size_t i = 0; i < z.n; i++) {
        const rb_zip_entry *e = &z.entries[i];
        size_t k = sizeof "data.pkl" - 1;
        if (e->name_len >= k && !memcmp(e->name + e->name_len - k, "data.pkl", k) &&
            (e->name_len == k || e->name[e->name_len - k - 1] == '/')) {
            if (pkl) {
                st = rb_error(RB_ERR_FORMAT, "%s: the archive has more than one data.pkl record", L->what);
                goto done;
            }
            pkl = e;
        }
    }
    if (!pkl) {
        st = rb_error(RB_ERR_FORMAT, "%s: zip archive without a data.pkl record (not a torch.save file)", L->what);
        goto done;
    }
    size_t plen = pkl->name_len - (sizeof "data.pkl" - 1);
    if (!(L->f->prefix = malloc(plen + 1))) {
        st = rb_error(RB_ERR_OOM, "%s: out of memory", L->what);
        goto done;
    }
    memcpy(L->f->prefix, pkl->name, plen);
    L->f->prefix[plen] = 0;

    char name[512];
    const uint8_t *d;
    size_t dn;
    snprintf(name, sizeof name, "%sbyteorder", L->f->prefix);
    const rb_zip_entry *bo = plen < 400 ? rb_zip_find(&z, name, strlen(name)) : NULL;
    if (bo) {
        if ((st = rb_zip_data(&z, bo, &d, &dn)) != RB_OK)
            goto done;
        if (dn != 6 || memcmp(d, "little", 6)) {
            st = rb_error(RB_ERR_UNSUPPORTED, "%s: byteorder record is not 'little'", L->what);
            goto done;
        }
    }
    if ((st = rb_zip_data(&z, pkl, &d, &dn)) != RB_OK)
        goto done;
    rb_pk_value *r;
    size_t used;
    if ((st = rb_pickle_load(&L->pool, d, dn, L->what, &r, &used)) != RB_OK)
        goto done;
    *root = r;
    if ((st = collect_storages(L)) != RB_OK)
        goto done;
    for (size_t i = 0; i < L->n_st; i++) {
        storage *s = &L->st[i];
        int nl = snprintf(name, sizeof name, "%sdata/%s", L->f->prefix, s->key);
        const rb_zip_entry *e = nl > 0 && (size_t)nl < sizeof name ? rb_zip_find(&z, name, (size_t)nl) : NULL;
        if (!e) {
            st = rb_error(RB_ERR_FORMAT, "%s: record for storage '%.40s' is missing", L->what, s->key);
            goto done;
        }
        if ((st = rb_zip_data(&z, e, &d, &dn)) != RB_OK || (st = attach(L, s, d, dn)) != RB_OK)
            goto done;
    }
done:
    rb_zip_close(&z);
    return st;
}

static rb_status load_legacy(loader *L, const uint8_t *buf, size_t size, const rb_pk_value **root) {
    size_t pos = sizeof legacy_magic, used;
    rb_pk_value *v;
    RB_TRY(rb_pickle_load(&L->pool, buf + pos, size - pos, L->what, &v, &used));
    pos += used;
    if (v->kind != RB_PK_INT || v->i != 1001)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: legacy protocol version is not 1001", L->what);
    RB_TRY(rb_pickle_load(&L->pool, buf + pos, size - pos, L->what, &v, &used));
    pos += used;
    rb_pk_value *le = rb_pk_dict_get(v, "little_endian");
    if (!le || le->kind != RB_PK_BOOL || !le->i)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: legacy file is not little-endian", L->what);
    RB_TRY(rb_pickle_load(&L->pool, buf + pos, size - pos, L->what, &v, &used));
    pos += used;
    *root = v;
    RB_TRY(collect_storages(L));
    rb_pk_value *keys;
    RB_TRY(rb_pickle_load(&L->pool, buf + pos, size - pos, L->what, &keys, &used));
    pos += used;
    if (keys->kind != RB_PK_LIST)
        return rb_error(RB_ERR_FORMAT, "%s: legacy storage key list is not a list", L->what);
    /* then, per key: int64 numel + the raw bytes */
    for (size_t i = 0; i < keys->n; i++) {
        storage *s = keys->items[i]->kind == RB_PK_STR ? find_storage(L, keys->items[i]->s) : NULL;
        if (!s || s->data)
            return rb_error(RB_ERR_FORMAT, "%s: legacy storage key %zu is unknown or repeated", L->what, i);
        if (size - pos < 8)
            return rb_error(RB_ERR_FORMAT, "%s: truncated before storage '%.40s'", L->what, s->key);
        uint64_t numel = 0;
        for (int b = 7; b >= 0; b--)
            numel = numel << 8 | buf[pos + (size_t)b];
        pos += 8;
        if (numel != (uint64_t)s->numel)
            return rb_error(RB_ERR_FORMAT, "%s: storage '%.40s' holds %llu elements, its reference says %lld", L->what,
                            s->key, (unsigned long long)numel, (long long)s->numel);
        size_t bytes;
        if (!rb_mul_size((size_t)numel, rb_dtype_size(s->dtype), &bytes) || bytes > size - pos)
            return rb_error(RB_ERR_FORMAT, "%s: storage '%.40s' (%llu elements) runs past the end of the file",
                            L->what, s->key, (unsigned long long)numel);
        RB_TRY(attach(L, s, buf + pos, bytes));
        pos += bytes;
    }
    for (size_t i = 0; i < L->n_st; i++)
        if (!L->st[i].data && L->st[i].numel)
            return rb_error(RB_ERR_FORMAT, "%s: storage '%.40s' is referenced but not stored", L->what, L->st[i].key);
    return RB_OK;
}

rb_status rb_torch_open_mem(rb_torchfile *f, const void *bytes, size_t n, const char *name) {
    memset(f, 0, sizeof *f);
    f->path = strdup(name ? name : "<memory>");
    if (!f->path)
        return rb_error(RB_ERR_OOM, "out of memory");
    f->map = (void *)bytes;
    f->map_size = n;
    loader L = {.f = f, .what = f->path};
    const rb_pk_value *root = NULL;
    rb_status st;
    if (rb_zip_sniff(bytes, n)) {
        f->format = RB_TORCH_ZIP;
        st = load_zip(&L, bytes, n, &root);
    } else if (n >= sizeof legacy_magic && !memcmp(bytes, legacy_magic, sizeof legacy_magic)) {
        f->format = RB_TORCH_LEGACY;
        st = load_legacy(&L, bytes, n, &root);
    } else {
        st = rb_error(RB_ERR_FORMAT, "%s: not a PyTorch checkpoint (neither a zip archive nor the legacy format)",
                      f->path);
    }
    if (st == RB_OK)
        st = flatten(&L, root, 0);
    if (st == RB_OK)
        st = check_unique(&L);
    rb_pk_pool_free(&L.pool);
    free(L.st);
    free(L.path);
    if (st != RB_OK)
        rb_torch_close(f);
    return st;
}

rb_status rb_torch_open(rb_torchfile *f, const char *path) {
    memset(f, 0, sizeof *f);
    void *map;
    size_t size;
    RB_TRY(rb_map_file(path, &map, &size));
    if (!map)
        return rb_error(RB_ERR_FORMAT, "%s: empty file", path);
    rb_status st = rb_torch_open_mem(f, map, size, path);
    if (st != RB_OK) {
        rb_unmap_file(map, size);
        return st;
    }
    f->owns_map = 1;
    return RB_OK;
}

void rb_torch_close(rb_torchfile *f) {
    if (!f)
        return;
    for (int i = 0; i < f->n; i++)
        free(f->entries[i].name);
    for (int i = 0; i < f->n_scalars; i++) {
        free(f->scalars[i].name);
        free(f->scalars[i].s);
    }
    for (int i = 0; i < f->n_owned; i++)
        rb_free(f->owned[i]);
    free(f->owned);
    free(f->entries);
    free(f->scalars);
    free(f->prefix);
    if (f->owns_map)
        rb_unmap_file(f->map, f->map_size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const rb_tensor *rb_torch_get(const rb_torchfile *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->entries[i].name, name))
            return &f->entries[i].t;
    return NULL;
}

const rb_torch_scalar *rb_torch_scalar_get(const rb_torchfile *f, const char *name) {
    for (int i = 0; i < f->n_scalars; i++)
        if (!strcmp(f->scalars[i].name, name))
            return &f->scalars[i];
    return NULL;
}
