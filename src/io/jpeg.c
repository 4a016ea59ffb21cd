/* JPEG through libjpeg-turbo, decoding untrusted bytes from memory.
 *
 * libjpeg's default error manager calls exit(); ours formats the message and longjmps back to the
 * setjmp in jpeg_run. Corrupt-data warnings that mean the pixels are wrong (premature end of data,
 * bad Huffman code, lost sync) become errors too: libjpeg would otherwise fill the rest of the image
 * with grey and report success. Decoding uses libjpeg's defaults (ISLOW IDCT, fancy upsampling), the
 * same as PIL, so the pixels match PIL's. */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

#include "core/mem.h"
#include "io/image_codec.h"

typedef struct {
    struct jpeg_error_mgr pub; /* first: libjpeg hands us a pointer to it */
    jmp_buf jmp;
    char msg[JMSG_LENGTH_MAX];
    int short_input;
} jpeg_err;

typedef struct {
    const char *name;
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    int created;
    uint8_t *pixels, *cmyk_row; /* owned, released by rb_jpeg_decode_mem */
} jpeg_job;

static void on_error_exit(j_common_ptr c) {
    jpeg_err *e = (jpeg_err *)c->err;
    c->err->format_message(c, e->msg);
    longjmp(e->jmp, 1);
}

static void on_emit(j_common_ptr c, int level) {
    if (level >= 0)
        return; /* trace messages */
    switch (c->err->msg_code) {
    case JWRN_JPEG_EOF: /* "Premature end of JPEG file" */
        ((jpeg_err *)c->err)->short_input = 1;
        on_error_exit(c);
        break;
    case JWRN_HIT_MARKER: /* "premature end of data segment" */
    case JWRN_HUFF_BAD_CODE:
    case JWRN_MUST_RESYNC:
    case JWRN_BOGUS_PROGRESSION:
    case JWRN_NOT_SEQUENTIAL:
        on_error_exit(c);
        break;
    default: /* e.g. extraneous bytes before a marker, common in camera files and harmless */
        break;
    }
}

static void on_output(j_common_ptr c) { (void)c; } /* never print to stderr */

/* PIL's CMYK -> RGB (Convert.c cmyk2rgb): R = (255 - K) - (C * (255 - K) / 255, rounded), where PIL reads
 * CMYK JPEGs with Adobe's inverted polarity ("CMYK;I"), i.e. C = 255 - stored byte, 255 - K = stored K. */
static inline uint8_t muldiv255(int a, int b) {
    int t = a * b + 128;
    return (uint8_t)((t + (t >> 8)) >> 8);
}

static void cmyk_row_to_rgb(uint8_t *rgb, const uint8_t *cmyk, int w) {
    for (int x = 0; x < w; x++) {
        int nk = cmyk[4 * x + 3];
        for (int c = 0; c < 3; c++)
            rgb[3 * x + c] = (uint8_t)(nk - muldiv255(255 - cmyk[4 * x + c], nk));
    }
}

static rb_status jpeg_run(jpeg_job *j, const uint8_t *bytes, size_t n, rb_image *img, int header_only) {
    struct jpeg_decompress_struct *ci = &j->cinfo;
    ci->err = jpeg_std_error(&j->err.pub);
    j->err.pub.error_exit = on_error_exit;
    j->err.pub.emit_message = on_emit;
    j->err.pub.output_message = on_output;
    if (setjmp(j->err.jmp))
        return rb_error(RB_ERR_FORMAT, "%s: JPEG: %s", j->name, j->err.msg);
    j->created = 1; /* before: jpeg_destroy of a zeroed struct is a no-op if creation fails half-way */
    jpeg_create_decompress(ci);
    jpeg_mem_src(ci, bytes, (unsigned long)n);
    if (jpeg_read_header(ci, TRUE) != JPEG_HEADER_OK)
        return rb_error(RB_ERR_FORMAT, "%s: JPEG: no image (tables only)", j->name);

    int ch, cmyk = 0;
    switch (ci->jpeg_color_space) {
    case JCS_GRAYSCALE: ci->out_color_space = JCS_GRAYSCALE; ch = 1; break;
    case JCS_YCbCr:
    case JCS_RGB: ci->out_color_space = JCS_RGB; ch = 3; break;
    case JCS_CMYK:
    case JCS_YCCK: ci->out_color_space = JCS_CMYK; ch = 3; cmyk = 1; break; /* YCCK -> CMYK by libjpeg */
    default:
        return rb_error(RB_ERR_UNSUPPORTED, "%s: JPEG: unsupported color space %d with %d components", j->name,
                        (int)ci->jpeg_color_space, ci->num_components);
    }
    size_t bytes_out;
    RB_TRY(rb_image_check_size(j->name, "JPEG", ci->image_width, ci->image_height, ch, &bytes_out));
    img->width = (int)ci->image_width;
    img->height = (int)ci->image_height;
    img->channels = ch;
    img->source_channels = ci->num_components;
    img->source_bit_depth = ci->data_precision;
    img->format = RB_IMG_JPEG;
    if (header_only)
        return RB_OK;

    jpeg_start_decompress(ci);
    if (ci->output_components != (cmyk ? 4 : ch) || ci->output_width != ci->image_width ||
        ci->output_height != ci->image_height)
        return rb_error(RB_ERR_INTERNAL, "%s: JPEG: unexpected output layout", j->name);
    j->pixels = rb_alloc(bytes_out, "JPEG pixels");
    if (!j->pixels)
        return RB_ERR_OOM;
    if (cmyk && !(j->cmyk_row = rb_alloc((size_t)img->width * 4, "JPEG CMYK row")))
        return RB_ERR_OOM;
    size_t stride = (size_t)img->width * ch;
    while (ci->output_scanline < ci->output_height) {
        JDIMENSION y = ci->output_scanline;
        JSAMPROW row = cmyk ? j->cmyk_row : j->pixels + (size_t)y * stride;
        if (jpeg_read_scanlines(ci, &row, 1) != 1)
            return rb_error(RB_ERR_FORMAT, "%s: JPEG: no data for row %u", j->name, (unsigned)y);
        if (cmyk)
            cmyk_row_to_rgb(j->pixels + (size_t)y * stride, j->cmyk_row, img->width);
    }
    jpeg_finish_decompress(ci);
    img->data = j->pixels;
    j->pixels = NULL;
    return RB_OK;
}

rb_status rb_jpeg_decode_mem(rb_image *img, const uint8_t *bytes, size_t n, const char *name, int header_only,
                             int *short_input) {
    jpeg_job *j = rb_calloc(sizeof *j, "JPEG decoder");
    memset(img, 0, sizeof *img);
    if (!j)
        return RB_ERR_OOM;
    j->name = name;
    rb_status s = jpeg_run(j, bytes, n, img, header_only);
    if (j->created)
        jpeg_destroy_decompress(&j->cinfo);
    if (short_input)
        *short_input = j->err.short_input;
    rb_free(j->pixels);
    rb_free(j->cmyk_row);
    rb_free(j);
    if (s != RB_OK)
        memset(img, 0, sizeof *img);
    return s;
}
