/* Zip central-directory reader. Only what the format guarantees is trusted: nothing. Counts,
 * sizes and offsets are compared with the buffer before use, and a record's local header must
 * agree with its central entry (name length, method) before its data is exposed. */
#include "zip.h"

#include <stdlib.h>
#include <string.h>

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

int rb_zip_sniff(const uint8_t *head, size_t n) {
    return n >= 4 && head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4;
}

static int cmp_entry(const void *a, const void *b) {
    const rb_zip_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    return c ? c : (x->name_len > y->name_len) - (x->name_len < y->name_len);
}

/* Zip64 extended information (extra id 1): 64-bit values for the fields saturated at 0xffffffff. */
static int read_zip64_extra(rb_zip_entry *e, const uint8_t *x, size_t n, int need_u, int need_c, int need_o) {
    while (n >= 4) {
        uint16_t id = rd16(x), len = rd16(x + 2);
        if ((size_t)len + 4 > n)
            return 0;
        if (id == 1) {
            const uint8_t *p = x + 4;
            size_t left = len;
            if (need_u) {
                if (left < 8) return 0;
                e->usize = rd64(p), p += 8, left -= 8;
            }
            if (need_c) {
                if (left < 8) return 0;
                e->csize = rd64(p), p += 8, left -= 8;
            }
            if (need_o) {
                if (left < 8) return 0;
                e->local_offset = rd64(p);
            }
            return 1;
        }
        x += 4 + len;
        n -= 4 + (size_t)len;
    }
    return !(need_u || need_c || need_o);
}

rb_status rb_zip_open(rb_zip *z, const uint8_t *buf, size_t size, const char *what) {
    memset(z, 0, sizeof *z);
    z->buf = buf, z->size = size, z->what = what;
    /* end of central directory: 22 bytes + a comment of at most 65535 bytes */
    if (size < 22)
        return rb_error(RB_ERR_FORMAT, "%s: too short for a zip archive", what);
    size_t eocd = SIZE_MAX;
    size_t lo = size > 22 + 65535 ? size - 22 - 65535 : 0;
    for (size_t p = size - 22 + 1; p-- > lo;)
        if (buf[p] == 'P' && buf[p + 1] == 'K' && buf[p + 2] == 5 && buf[p + 3] == 6) {
            eocd = p;
            break;
        }
    if (eocd == SIZE_MAX)
        return rb_error(RB_ERR_FORMAT, "%s: zip end-of-central-directory record not found (truncated file?)", what);
    const uint8_t *e = buf + eocd;
    if (rd16(e + 4) != 0 || rd16(e + 6) != 0)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: multi-disk zip archives are not supported", what);
    uint64_t count = rd16(e + 10), cd_size = rd32(e + 12), cd_off = rd32(e + 16);
    if (count == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu) {
        /* zip64: locator right before the EOCD points at the zip64 EOCD record */
        if (eocd < 20 || rd32(buf + eocd - 20) != 0x07064b50)
            return rb_error(RB_ERR_FORMAT, "%s: zip64 locator missing", what);
        uint64_t z64 = rd64(buf + eocd - 20 + 8);
        if (z64 > eocd - 20 || eocd - 20 - z64 < 56 || rd32(buf + z64) != 0x06064b50)
            return rb_error(RB_ERR_FORMAT, "%s: zip64 end-of-central-directory record out of range", what);
        count = rd64(buf + z64 + 32), cd_size = rd64(buf + z64 + 40), cd_off = rd64(buf + z64 + 48);
    }
    if (cd_off > size || cd_size > size - cd_off || cd_off + cd_size > eocd)
        return rb_error(RB_ERR_FORMAT, "%s: zip central directory (offset %llu, %llu bytes) outside the file", what,
                        (unsigned long long)cd_off, (unsigned long long)cd_size);
    if (count > cd_size / 46)
        return rb_error(RB_ERR_FORMAT, "%s: zip declares %llu entries in a %llu-byte directory", what,
                        (unsigned long long)count, (unsigned long long)cd_size);
    z->entries = calloc(count ? (size_t)count : 1, sizeof *z->entries);
    if (!z->entries)
        return rb_error(RB_ERR_OOM, "%s: out of memory for %llu zip entries", what, (unsigned long long)count);
    const uint8_t *p = buf + cd_off, *end = p + cd_size;
    for (uint64_t i = 0; i < count; i++) {
        if (end - p < 46 || rd32(p) != 0x02014b50) {
            rb_zip_close(z);
            return rb_error(RB_ERR_FORMAT, "%s: zip central directory entry %llu is damaged", what, (unsigned long long)i);
        }
        rb_zip_entry *ze = &z->entries[z->n];
        ze->flags = rd16(p + 8), ze->method = rd16(p + 10);
        ze->csize = rd32(p + 20), ze->usize = rd32(p + 24), ze->local_offset = rd32(p + 42);
        size_t nl = rd16(p + 28), xl = rd16(p + 30), cl = rd16(p + 32);
        if ((size_t)(end - p) < 46 + nl + xl + cl) {
            rb_zip_close(z);
            return rb_error(RB_ERR_FORMAT, "%s: zip central directory entry %llu overruns the directory", what,
                            (unsigned long long)i);
        }
        ze->name = (const char *)p + 46, ze->name_len = nl;
        if (!read_zip64_extra(ze, p + 46 + nl, xl, ze->usize == 0xffffffffu, ze->csize == 0xffffffffu,
                              ze->local_offset == 0xffffffffu)) {
            /* the message first: ze lives in z->entries, which rb_zip_close frees */
            rb_status st = rb_error(RB_ERR_FORMAT, "%s: zip entry '%.*s' has a damaged zip64 field", what,
                                    (int)(nl > 200 ? 200 : nl), ze->name);
            rb_zip_close(z);
            return st;
        }
        z->n++;
        p += 46 + nl + xl + cl;
    }
    qsort(z->entries, z->n, sizeof *z->entries, cmp_entry);
    for (size_t i = 1; i < z->n; i++)
        if (!cmp_entry(&z->entries[i - 1], &z->entries[i])) {
            rb_status st = rb_error(RB_ERR_FORMAT, "%s: zip entry '%.*s' appears twice", what,
                                    (int)(z->entries[i].name_len > 200 ? 200 : z->entries[i].name_len), z->entries[i].name);
            rb_zip_close(z);
            return st;
        }
    return RB_OK;
}

void rb_zip_close(rb_zip *z) {
    if (z) {
        free(z->entries);
        z->entries = NULL;
        z->n = 0;
    }
}

const rb_zip_entry *rb_zip_find(const rb_zip *z, const char *name, size_t len) {
    rb_zip_entry key = {.name = name, .name_len = len};
    return bsearch(&key, z->entries, z->n, sizeof key, cmp_entry);
}

rb_status rb_zip_data(const rb_zip *z, const rb_zip_entry *e, const uint8_t **data, size_t *size) {
    int nl = (int)(e->name_len > 200 ? 200 : e->name_len);
    if (e->flags & 1)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: zip record '%.*s' is encrypted", z->what, nl, e->name);
    if (e->method != 0)
        return rb_error(RB_ERR_UNSUPPORTED,
                        "%s: zip record '%.*s' is compressed (method %u); only stored records are read", z->what, nl,
                        e->name, e->method);
    if (e->csize != e->usize)
        return rb_error(RB_ERR_FORMAT, "%s: stored zip record '%.*s' has different sizes (%llu vs %llu)", z->what, nl,
                        e->name, (unsigned long long)e->csize, (unsigned long long)e->usize);
    if (e->local_offset > z->size || z->size - e->local_offset < 30 || rd32(z->buf + e->local_offset) != 0x04034b50)
        return rb_error(RB_ERR_FORMAT, "%s: zip record '%.*s': local header at %llu is missing", z->what, nl, e->name,
                        (unsigned long long)e->local_offset);
    const uint8_t *h = z->buf + e->local_offset;
    uint64_t start = e->local_offset + 30 + rd16(h + 26) + rd16(h + 28);
    if (start > z->size || rd16(h + 26) != e->name_len || memcmp(h + 30, e->name, e->name_len) ||
        rd16(h + 8) != e->method)
        return rb_error(RB_ERR_FORMAT, "%s: zip record '%.*s': local header disagrees with the directory", z->what, nl,
                        e->name);
    if (e->usize > z->size - start)
        return rb_error(RB_ERR_FORMAT, "%s: zip record '%.*s' declares %llu bytes at offset %llu but the file has %zu",
                        z->what, nl, e->name, (unsigned long long)e->usize, (unsigned long long)start, z->size);
    *data = z->buf + start;
    *size = (size_t)e->usize;
    return RB_OK;
}
