/* Minimal zip reader over bytes in memory (a mapped file), enough for PyTorch checkpoints:
 * central directory (incl. zip64), stored records. Every size and offset is checked against
 * the buffer; compressed or encrypted records are listed but refused by rb_zip_data. */
#ifndef RB_IO_ZIP_H
#define RB_IO_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef struct rb_zip_entry {
    const char *name; /* points into the buffer; not NUL-terminated */
    size_t name_len;
    uint16_t method, flags;
    uint64_t csize, usize, local_offset;
} rb_zip_entry;

typedef struct rb_zip {
    const uint8_t *buf;
    size_t size;
    const char *what; /* file name for messages */
    size_t n;
    rb_zip_entry *entries; /* sorted by name */
} rb_zip;

/* 1 if the bytes start like a zip archive. */
int rb_zip_sniff(const uint8_t *head, size_t n);
rb_status rb_zip_open(rb_zip *z, const uint8_t *buf, size_t size, const char *what);
void rb_zip_close(rb_zip *z);
/* Entry by exact name, or NULL. */
const rb_zip_entry *rb_zip_find(const rb_zip *z, const char *name, size_t len);
/* Address and size of a stored record's bytes (checked against the buffer). */
rb_status rb_zip_data(const rb_zip *z, const rb_zip_entry *e, const uint8_t **data, size_t *size);

#endif
