/* WebP (lossy VP8, lossless VP8L, extended VP8X with alpha) through libwebp, from memory.
 * libwebp reports errors by status codes (no longjmp needed). The decoder writes straight into our
 * rb_alloc buffer (external memory), with libwebp's default fancy upsampling, as PIL does. */
#include <string.h>

#include <webp/decode.h>

#include "core/mem.h"
#include "io/image_codec.h"

static const char *vp8_status_str(VP8StatusCode s) {
    switch (s) {
    case VP8_STATUS_OK: return "ok";
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "corrupt bitstream";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "truncated file (not enough data)";
    }
    return "unknown error";
}

static rb_status webp_fail(VP8StatusCode st, const char *name, const char *what) {
    rb_status s = st == VP8_STATUS_OUT_OF_MEMORY ? RB_ERR_OOM
                  : st == VP8_STATUS_UNSUPPORTED_FEATURE ? RB_ERR_UNSUPPORTED
                                                         : RB_ERR_FORMAT;
    return rb_error(s, "%s: WebP: %s: %s", name, what, vp8_status_str(st));
}

rb_status rb_webp_decode_mem(rb_image *img, const uint8_t *bytes, size_t n, const char *name, int header_only,
                             int *short_input) {
    memset(img, 0, sizeof *img);
    if (short_input)
        *short_input = 0;
    WebPDecoderConfig cfg;
    if (!WebPInitDecoderConfig(&cfg))
        return rb_error(RB_ERR_INTERNAL, "%s: WebP: library version mismatch", name);
    VP8StatusCode st = WebPGetFeatures(bytes, n, &cfg.input);
    if (st != VP8_STATUS_OK) {
        if (short_input && st == VP8_STATUS_NOT_ENOUGH_DATA)
            *short_input = 1;
        return webp_fail(st, name, "header");
    }
    if (cfg.input.has_animation)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: WebP: animated images are not supported", name);
    int ch = cfg.input.has_alpha ? 4 : 3;
    size_t bytes_out;
    RB_TRY(rb_image_check_size(name, "WebP", cfg.input.width, cfg.input.height, ch, &bytes_out));
    img->width = cfg.input.width;
    img->height = cfg.input.height;
    img->channels = ch;
    img->source_channels = ch;
    img->source_bit_depth = 8;
    img->format = RB_IMG_WEBP;
    if (header_only)
        return RB_OK;

    uint8_t *px = rb_alloc(bytes_out, "WebP pixels");
    if (!px) {
        memset(img, 0, sizeof *img);
        return RB_ERR_OOM;
    }
    cfg.output.colorspace = ch == 4 ? MODE_RGBA : MODE_RGB;
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = px;
    cfg.output.u.RGBA.stride = img->width * ch;
    cfg.output.u.RGBA.size = bytes_out;
    st = WebPDecode(bytes, n, &cfg);
    WebPFreeDecBuffer(&cfg.output); /* no-op for external memory, but the documented pairing */
    if (st != VP8_STATUS_OK) {
        rb_free(px);
        memset(img, 0, sizeof *img);
        if (short_input && st == VP8_STATUS_NOT_ENOUGH_DATA)
            *short_input = 1;
        return webp_fail(st, name, "decoding");
    }
    img->data = px;
    return RB_OK;
}
