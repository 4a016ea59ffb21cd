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

/* want_channels: 0 keeps the file's layout (gray stays 1, gray+alpha becomes 4), else 1, 3 or 4. */
rb_status rb_image_load(rb_image *img, const char *path, int want_channels);
rb_status rb_image_decode(rb_image *img, const uint8_t *bytes, size_t n, int want_channels, const char *name);
/* Header only: format, size and stored channels, without decoding pixels. */
rb_status rb_image_probe(rb_image *img, const char *path);
void rb_image_free(rb_image *img);

/* 8-bit PNG (1, 3 or 4 channels) with optional tEXt chunks, written to a temporary file and renamed. */
rb_status rb_png_write(const char *path, const rb_image *img, int n_text, const char *const *keys,
                       const char *const *values);

#endif
