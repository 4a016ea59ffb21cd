/* torch.save-compatible writer (see torchfile_write.h); the reader is torchfile.c. The pickle is what
 * torch 1.13's Pickler emits for these objects, minus the memo (BINPUT), which a reader never needs:
 *   tensor    = _rebuild_tensor_v2(BINPERSID(('storage', FloatStorage, key, 'cpu', numel)), 0, size, stride,
 *                                  False, OrderedDict())
 *   parameter = _rebuild_parameter(tensor, True, OrderedDict())
 *   group     = OrderedDict() filled by SETITEMS */
#include "torchfile_write.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/mem.h"
#include "core/status.h"

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    rb_status s;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->s != RB_OK)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 4096;
        while (cap < b->n + n)
            cap *= 2;
        uint8_t *q = rb_alloc(cap, "pickle");
        if (q && b->n)
            memcpy(q, b->p, b->n);
        rb_free(b->p);
        if (!q) {
            b->p = NULL;
            b->s = RB_ERR_OOM;
            return;
        }
        b->p = q, b->cap = cap;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void op(buf *b, uint8_t c) { put(b, &c, 1); }

static void put_le(buf *b, uint64_t v, int bytes) {
    uint8_t d[8];
    for (int i = 0; i < bytes; i++)
        d[i] = (uint8_t)(v >> (8 * i));
    put(b, d, (size_t)bytes);
}

static void str(buf *b, const char *s) { /* BINUNICODE */
    op(b, 'X');
    put_le(b, strlen(s), 4);
    put(b, s, strlen(s));
}

static void global(buf *b, const char *module, const char *name) {
    op(b, 'c');
    put(b, module, strlen(module));
    op(b, '\n');
    put(b, name, strlen(name));
    op(b, '\n');
}

static void integer(buf *b, int64_t v) {
    if (v >= 0 && v < 256) {
        op(b, 'K'), put_le(b, (uint64_t)v, 1);
    } else if (v >= 0 && v < 65536) {
        op(b, 'M'), put_le(b, (uint64_t)v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
        op(b, 'J'), put_le(b, (uint64_t)(uint32_t)(int32_t)v, 4);
    } else { /* LONG1, 8 bytes two's complement */
        op(b, 0x8a), op(b, 8), put_le(b, (uint64_t)v, 8);
    }
}

static void empty_ordered_dict(buf *b) {
    global(b, "collections", "OrderedDict");
    op(b, ')');
    op(b, 'R');
}

static void tensor(buf *b, int key, const rb_tensor *t) {
    char k[32];
    snprintf(k, sizeof k, "%d", key);
    global(b, "torch._utils", "_rebuild_tensor_v2");
    op(b, '(');
    op(b, '(');
    str(b, "storage");
    global(b, "torch", t->dtype == RB_BF16 ? "BFloat16Storage" : t->dtype == RB_F16 ? "HalfStorage" : "FloatStorage");
    str(b, k);
    str(b, "cpu");
    integer(b, rb_numel(t));
    op(b, 't');
    op(b, 'Q');
    integer(b, 0);
    int64_t stride = 1, strides[RB_MAX_DIMS];
    for (int d = t->ndim - 1; d >= 0; d--)
        strides[d] = stride, stride *= t->shape[d];
    op(b, '(');
    for (int d = 0; d < t->ndim; d++)
        integer(b, t->shape[d]);
    op(b, 't');
    op(b, '(');
    for (int d = 0; d < t->ndim; d++)
        integer(b, strides[d]);
    op(b, 't');
    op(b, 0x89); /* NEWFALSE: requires_grad */
    empty_ordered_dict(b);
    op(b, 't');
    op(b, 'R');
}

/* ---- zip (stored records, 64-byte aligned data) ---- */

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    static uint32_t table[256];
    if (!table[1])
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

typedef struct zrec {
    char name[512];
    uint32_t crc, size, offset;
} zrec;

typedef struct zw {
    FILE *f;
    uint64_t off;
    zrec *recs;
    int n;
    rb_status s;
    const char *path;
} zw;

static void zput(zw *z, const void *d, size_t n) {
    if (z->s == RB_OK && n && fwrite(d, 1, n, z->f) != n)
        z->s = rb_error(RB_ERR_IO, "%s: write failed", z->path);
    z->off += n;
}

static void zle(zw *z, uint64_t v, int bytes) {
    uint8_t d[8];
    for (int i = 0; i < bytes; i++)
        d[i] = (uint8_t)(v >> (8 * i));
    zput(z, d, (size_t)bytes);
}

static void zrecord(zw *z, const char *name, const void *data, size_t n) {
    if (z->s != RB_OK)
        return;
    if (z->off + n + 1024 > UINT32_MAX) {
        z->s = rb_error(RB_ERR_UNSUPPORTED, "%s: over 4 GiB (zip64 not written)", z->path);
        return;
    }
    zrec *r = &z->recs[z->n++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->crc = crc32_update(0, data, n), r->size = (uint32_t)n, r->offset = (uint32_t)z->off;
    size_t nlen = strlen(r->name);
    uint64_t data_at = z->off + 30 + nlen;
    size_t pad = (size_t)((64 - data_at % 64) % 64);
    if (pad && pad < 4)
        pad += 64;
    zle(z, 0x04034b50, 4);
    zle(z, 20, 2), zle(z, 0x800, 2), zle(z, 0, 2), zle(z, 0, 2), zle(z, 0x21, 2); /* stored, 1980-01-01 */
    zle(z, r->crc, 4), zle(z, n, 4), zle(z, n, 4), zle(z, nlen, 2), zle(z, pad, 2);
    zput(z, r->name, nlen);
    if (pad) { /* extra field "FB" of padding, as torch writes */
        static const uint8_t zeros[128];
        zle(z, 0x4246, 2), zle(z, pad - 4, 2), zput(z, zeros, pad - 4);
    }
    zput(z, data, n);
}

static void zfinish(zw *z) {
    uint64_t cd = z->off;
    for (int i = 0; i < z->n; i++) {
        const zrec *r = &z->recs[i];
        size_t nlen = strlen(r->name);
        zle(z, 0x02014b50, 4);
        zle(z, 20, 2), zle(z, 20, 2), zle(z, 0x800, 2), zle(z, 0, 2), zle(z, 0, 2), zle(z, 0x21, 2);
        zle(z, r->crc, 4), zle(z, r->size, 4), zle(z, r->size, 4), zle(z, nlen, 2), zle(z, 0, 2), zle(z, 0, 2);
        zle(z, 0, 2), zle(z, 0, 2), zle(z, 0, 4), zle(z, r->offset, 4);
        zput(z, r->name, nlen);
    }
    uint64_t cd_size = z->off - cd;
    zle(z, 0x06054b50, 4);
    zle(z, 0, 2), zle(z, 0, 2), zle(z, (uint64_t)z->n, 2), zle(z, (uint64_t)z->n, 2);
    zle(z, cd_size, 4), zle(z, cd, 4), zle(z, 0, 2);
}

rb_status rb_torch_write(const char *path, const char *prefix, int n, const rb_torch_item *items) {
    if (n < 0 || n > 60000 || strlen(prefix) > 200)
        return rb_error(RB_ERR_INVALID, "%s: %d tensors, prefix '%.40s'", path, n, prefix);
    for (int i = 0; i < n; i++)
        if (!items[i].t || !items[i].key ||
            (items[i].t->dtype != RB_F32 && items[i].t->dtype != RB_BF16 && items[i].t->dtype != RB_F16))
            return rb_error(RB_ERR_INVALID, "%s: item %d is not a named f32/bf16/f16 tensor", path, i);
    buf b = {0};
    op(&b, 0x80), op(&b, 2);
    op(&b, '}');
    if (n)
        op(&b, '(');
    for (int i = 0; i < n;) {
        const char *g = items[i].group;
        if (!g) {
            str(&b, items[i].key);
            if (items[i].parameter)
                global(&b, "torch._utils", "_rebuild_parameter"), op(&b, '(');
            tensor(&b, i, items[i].t);
            if (items[i].parameter)
                op(&b, 0x88), empty_ordered_dict(&b), op(&b, 't'), op(&b, 'R');
            i++;
            continue;
        }
        str(&b, g);
        empty_ordered_dict(&b);
        op(&b, '(');
        for (; i < n && items[i].group && !strcmp(items[i].group, g); i++) {
            str(&b, items[i].key);
            tensor(&b, i, items[i].t);
        }
        op(&b, 'u');
    }
    if (n)
        op(&b, 'u');
    op(&b, '.');
    if (b.s != RB_OK) {
        rb_free(b.p);
        return rb_error(b.s, "%s: out of memory", path);
    }
    char tmp[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    zw z = {.path = path};
    z.recs = rb_calloc((size_t)(n + 2) * sizeof *z.recs, "zip records");
    z.f = z.recs ? fopen(tmp, "wb") : NULL;
    if (!z.f) {
        rb_free(b.p);
        rb_free(z.recs);
        return z.recs ? rb_error(RB_ERR_IO, "%s: cannot create", tmp) : RB_ERR_OOM;
    }
    char name[512];
    snprintf(name, sizeof name, "%s/data.pkl", prefix);
    zrecord(&z, name, b.p, b.n);
    rb_free(b.p);
    for (int i = 0; i < n && z.s == RB_OK; i++) {
        rb_tensor c = {0};
        rb_status s = rb_tensor_alloc(&c, items[i].t->dtype, items[i].t->ndim, items[i].t->shape, "torch.save copy");
        if (s == RB_OK && (s = rb_tensor_copy(&c, items[i].t)) == RB_OK) { /* contiguous, little-endian on x86 */
            snprintf(name, sizeof name, "%s/data/%d", prefix, i);
            zrecord(&z, name, c.data, rb_nbytes(&c));
        }
        if (c.data)
            rb_tensor_free(&c);
        if (s != RB_OK)
            z.s = s;
    }
    snprintf(name, sizeof name, "%s/version", prefix);
    zrecord(&z, name, "3\n", 2);
    zfinish(&z);
    if (fclose(z.f) != 0 && z.s == RB_OK)
        z.s = rb_error(RB_ERR_IO, "%s: write failed", tmp);
    rb_free(z.recs);
    if (z.s == RB_OK && rename(tmp, path) != 0)
        z.s = rb_error(RB_ERR_IO, "%s: cannot rename from %s", path, tmp);
    if (z.s != RB_OK)
        unlink(tmp);
    return z.s;
}
