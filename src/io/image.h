/* Images: PNG, JPEG and WebP decoded by their content (never the file extension: the official
 * DreamRelation data stores WebP under .png names), and PNG written atomically with text chunks. */
#ifndef RB_IO_IMAGE_H
#define RB_IO_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef enum { RB_IMG_UNKNOWN = 0, RB_IMG_PNG, RB_IMG_JPEG, RB_IMG_WEBP } rb_image_format;

typedef struct rb_image {
    int width, height;
    int channels; /* as decoded into `data`: 1 (gray), 3 (RGB) or 4 (RGBA) */
    int source_channels, source_bit_depth; /* what the file stored (palette PNGs report 3 or 4) */
    rb_image_format format;
    uint8_t *data; /* 8-bit, row-major, interleaved; from rb_alloc */
} rb_image;

/* Largest accepted width * height (checked from the header before decoding). */
#define RB_IMAGE_MAX_PIXELS ((int64_t)1 << 28)

rb_image_format rb_image_sniff(const uint8_t *head, size_t n);
const char *rb_image_format_name(rb_image_format f);

/* want_channels: 0 keeps the file's layout (gray stays 1, gray+alpha becomes 4), else 1, 3 or 4.
 * Conversions follow PIL's Image.convert: to RGB drops alpha (no compositing), gray is replicated,
 * to L is PIL's luma (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, a missing alpha is 255.
 * 16-bit PNG samples keep their high byte; CMYK JPEG is converted to RGB as PIL does (docs/images.md).
 * Errors: RB_ERR_IO (cannot open/read, directory), RB_ERR_FORMAT (unknown format, truncated or corrupt
 * data, size over RB_IMAGE_MAX_PIXELS), RB_ERR_UNSUPPORTED (animated WebP, exotic JPEG color space),
 * RB_ERR_OOM; `img` is zeroed and nothing stays allocated. `name` (may be NULL) is used in messages. */
rb_status rb_image_load(rb_image *img, const char *path, int want_channels);
rb_status rb_image_decode(rb_image *img, const uint8_t *bytes, size_t n, int want_channels, const char *name);
/* Header only: format, size, stored channels and bit depth, without decoding pixels (data NULL;
 * channels = what rb_image_load(..., 0) would return). Reads 64 KiB, more only if the header needs it. */
rb_status rb_image_probe(rb_image *img, const char *path);
void rb_image_free(rb_image *img);

/* 8-bit PNG (1, 3 or 4 channels; 2 = gray+alpha also accepted) with optional text chunks (tEXt, or iTXt
 * when a value is not ASCII; keys 1-79 printable characters, e.g. "parameters" as A1111 writes it).
 * Written to "<path>.tmp-XXXXXX" in the same folder, fsync'ed and renamed over `path`, so an interrupted
 * run never leaves a truncated image; on error (RB_ERR_IO: unwritable folder, full disk) the temporary
 * file is removed and an existing `path` is left untouched. */
rb_status rb_png_write(const char *path, const rb_image *img, int n_text, const char *const *keys,
                       const char *const *values);

#endif
