/* Private to src/io: the per-codec decoders behind rb_image_decode / rb_image_probe.
 *
 * Each decoder fills `img` with the codec's native 8-bit layout (channels 1 = gray, 2 = gray+alpha,
 * 3 = RGB, 4 = RGBA; data from rb_alloc), or with header_only set, only the size and source fields
 * (data NULL). image.c then converts to the channel count the caller asked for.
 * On error nothing is left allocated; *short_input (may be NULL) is set to 1 when the failure was
 * running out of bytes, so the prober knows that reading more of the file may help. */
#ifndef RB_IO_IMAGE_CODEC_H
#define RB_IO_IMAGE_CODEC_H

#include "io/image.h"

rb_status rb_png_decode_mem(rb_image *img, const uint8_t *bytes, size_t n, const char *name, int header_only,
                            int *short_input);
rb_status rb_jpeg_decode_mem(rb_image *img, const uint8_t *bytes, size_t n, const char *name, int header_only,
                             int *short_input);
rb_status rb_webp_decode_mem(rb_image *img, const uint8_t *bytes, size_t n, const char *name, int header_only,
                             int *short_input);

/* Checks a header's size before anything is allocated: 0 < w, h; w * h <= RB_IMAGE_MAX_PIXELS; and
 * w * h * channels fits in size_t (-> *bytes). RB_ERR_FORMAT naming `name` otherwise. */
rb_status rb_image_check_size(const char *name, const char *fmt, int64_t w, int64_t h, int channels, size_t *bytes);

#endif
