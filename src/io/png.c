/* PNG through libpng: decoding from memory (untrusted bytes) and atomic writing with text chunks.
 *
 * libpng reports errors by calling our error function, which must not return: it records the message
 * and longjmps back to the setjmp in the *_run functions. Everything those functions allocate lives in
 * a context struct owned by their caller (not in locals of the function that called setjmp, whose
 * values would be indeterminate after the longjmp), and the caller frees it on every path. */
#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/file.h"
#include "core/mem.h"
#include "io/image_codec.h"

typedef struct {
    const char *name;
    char msg[200];
    int short_input;
    /* reading */
    const uint8_t *bytes;
    size_t n, pos;
    /* writing */
    FILE *f;
    int write_errno;
    /* owned resources, released by the caller of *_run */
    png_structp png;
    png_infop info;
    uint8_t *pixels;
    png_bytep *rows;
    png_text *text;
} png_job;

static void on_error(png_structp p, png_const_charp msg) {
    png_job *j = png_get_error_ptr(p);
    snprintf(j->msg, sizeof j->msg, "%s", msg ? msg : "error");
    png_longjmp(p, 1);
}

/* Warnings (bad ancillary CRC, unknown sRGB profile, ...) do not affect the pixels: ignored, as PIL does. */
static void on_warning(png_structp p, png_const_charp msg) {
    (void)p;
    (void)msg;
}

static void read_mem(png_structp p, png_bytep out, size_t len) {
    png_job *j = png_get_io_ptr(p);
    if (len > j->n - j->pos) {
        j->short_input = 1;
        png_error(p, "truncated file (unexpected end of data)");
    }
    memcpy(out, j->bytes + j->pos, len);
    j->pos += len;
}

/* The decoded layout libpng gives after png_set_expand: palette -> RGB(A), tRNS -> alpha. */
static int png_native_channels(int ctype, int has_trns, int *source_channels) {
    switch (ctype) {
    case PNG_COLOR_TYPE_GRAY: *source_channels = 1; return has_trns ? 2 : 1;
    case PNG_COLOR_TYPE_GRAY_ALPHA: *source_channels = 2; return 2;
    case PNG_COLOR_TYPE_RGB: *source_channels = 3; return has_trns ? 4 : 3;
    case PNG_COLOR_TYPE_RGB_ALPHA: *source_channels = 4; return 4;
    case PNG_COLOR_TYPE_PALETTE: *source_channels = has_trns ? 4 : 3; return *source_channels;
    }
    return 0;
}

static rb_status decode_run(png_job *j, rb_image *img, int header_only) {
    if (setjmp(png_jmpbuf(j->png)))
        return rb_error(RB_ERR_FORMAT, "%s: PNG: %s", j->name, j->msg);
    png_set_read_fn(j->png, j, read_mem);
    png_read_info(j->png, j->info);

    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(j->png, j->info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    int has_trns = png_get_valid(j->png, j->info, PNG_INFO_tRNS) != 0;
    int src_ch = 0, ch = png_native_channels(ctype, has_trns, &src_ch);
    if (!ch)
        return rb_error(RB_ERR_FORMAT, "%s: PNG: unknown color type %d", j->name, ctype);
    size_t bytes;
    RB_TRY(rb_image_check_size(j->name, "PNG", w, h, ch, &bytes));
    img->width = (int)w;
    img->height = (int)h;
    img->channels = ch;
    img->source_channels = src_ch;
    img->source_bit_depth = depth;
    img->format = RB_IMG_PNG;
    if (header_only)
        return RB_OK;

    png_set_expand(j->png); /* palette -> RGB, gray < 8 bits -> 8, tRNS -> alpha */
    if (depth == 16)
        png_set_strip_16(j->png); /* keeps the high byte, as PIL does for 16-bit RGB(A)/LA */
    png_set_interlace_handling(j->png);
    png_read_update_info(j->png, j->info);
    if (png_get_channels(j->png, j->info) != ch || png_get_rowbytes(j->png, j->info) != (size_t)w * ch)
        return rb_error(RB_ERR_INTERNAL, "%s: PNG: unexpected decoded layout (%d channels, %zu bytes per row)",
                        j->name, png_get_channels(j->png, j->info), (size_t)png_get_rowbytes(j->png, j->info));

    j->pixels = rb_alloc(bytes, "PNG pixels");
    j->rows = rb_alloc(sizeof(png_bytep) * h, "PNG rows");
    if (!j->pixels || !j->rows)
        return RB_ERR_OOM;
    for (png_uint_32 y = 0; y < h; y++)
        j->rows[y] = j->pixels + (size_t)y * w * ch;
    png_read_image(j->png, j->rows);
    png_read_end(j->png, NULL); /* a file cut after the pixels (no IEND) is still a truncated file */
    img->data = j->pixels;
    j->pixels = NULL;
    return RB_OK;
}

rb_status rb_png_decode_mem(rb_image *img, const uint8_t *bytes, size_t n, const char *name, int header_only,
                            int *short_input) {
    png_job j = {.name = name, .bytes = bytes, .n = n};
    memset(img, 0, sizeof *img);
    /* IHDR must come first (PNG spec 5.6): refuse a hostile size before libpng reads anything else. */
    if (n >= 24 && memcmp(bytes + 12, "IHDR", 4) == 0) {
        int64_t w = png_get_uint_32(bytes + 16), h = png_get_uint_32(bytes + 20);
        size_t unused;
        RB_TRY(rb_image_check_size(name, "PNG", w, h, 1, &unused));
    }
    j.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &j, on_error, on_warning);
    if (!j.png || !(j.info = png_create_info_struct(j.png))) {
        png_destroy_read_struct(&j.png, NULL, NULL);
        return rb_error(RB_ERR_OOM, "%s: PNG: cannot create the decoder", name);
    }
    /* Ancillary chunks (iCCP, zTXt, ...) decompress into at most this much; pixels are bounded by
     * the size check. */
    png_set_chunk_malloc_max(j.png, 16u << 20);
    rb_status s = decode_run(&j, img, header_only);
    png_destroy_read_struct(&j.png, &j.info, NULL);
    rb_free(j.rows);
    rb_free(j.pixels);
    if (short_input)
        *short_input = j.short_input;
    if (s != RB_OK)
        memset(img, 0, sizeof *img);
    return s;
}

/* ---- writing ------------------------------------------------------------------------------- */

static void write_file(png_structp p, png_bytep data, size_t len) {
    png_job *j = png_get_io_ptr(p);
    if (fwrite(data, 1, len, j->f) != len) {
        j->write_errno = errno ? errno : EIO;
        png_error(p, "write failed");
    }
}

static void flush_file(png_structp p) {
    png_job *j = png_get_io_ptr(p);
    if (fflush(j->f) != 0) {
        j->write_errno = errno ? errno : EIO;
        png_error(p, "write failed");
    }
}

/* tEXt keywords: 1-79 printable Latin-1 characters, no leading/trailing space (PNG spec 11.3.4.3). */
static int valid_keyword(const char *k) {
    size_t n = k ? strlen(k) : 0;
    if (n < 1 || n > 79 || k[0] == ' ' || k[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)k[i] < 32 || (unsigned char)k[i] == 127)
            return 0;
    return 1;
}

static int is_ascii(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s >= 128)
            return 0;
    return 1;
}

static rb_status write_run(png_job *j, const rb_image *img, int n_text, const char *const *keys,
                           const char *const *values) {
    static const int ctypes[5] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                                  PNG_COLOR_TYPE_RGB_ALPHA};
    if (setjmp(png_jmpbuf(j->png))) {
        if (j->write_errno)
            return rb_error(RB_ERR_IO, "%s: %s", j->name, strerror(j->write_errno));
        return rb_error(RB_ERR_IO, "%s: PNG: %s", j->name, j->msg);
    }
    png_set_write_fn(j->png, j, write_file, flush_file);
    png_set_IHDR(j->png, j->info, (png_uint_32)img->width, (png_uint_32)img->height, 8, ctypes[img->channels],
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (n_text > 0) {
        j->text = rb_calloc(sizeof(png_text) * (size_t)n_text, "PNG text chunks");
        if (!j->text)
            return RB_ERR_OOM;
        for (int i = 0; i < n_text; i++) {
            /* Values with non-ASCII bytes go to iTXt (UTF-8) rather than Latin-1 tEXt, like PIL does. */
            j->text[i].compression = is_ascii(values[i]) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
            j->text[i].key = (png_charp)keys[i];
            j->text[i].text = (png_charp)values[i];
            j->text[i].text_length = strlen(values[i]);
        }
        png_set_text(j->png, j->info, j->text, n_text);
    }
    png_write_info(j->png, j->info);
    size_t stride = (size_t)img->width * img->channels;
    for (int y = 0; y < img->height; y++)
        png_write_row(j->png, img->data + (size_t)y * stride);
    png_write_end(j->png, j->info);
    return RB_OK;
}

rb_status rb_png_write(const char *path, const rb_image *img, int n_text, const char *const *keys,
                       const char *const *values) {
    if (!path || !*path || !img || !img->data)
        return rb_error(RB_ERR_INVALID, "rb_png_write: missing path or image");
    if (img->channels < 1 || img->channels > 4)
        return rb_error(RB_ERR_INVALID, "%s: cannot write a PNG with %d channels", path, img->channels);
    size_t bytes;
    RB_TRY(rb_image_check_size(path, "PNG", img->width, img->height, img->channels, &bytes));
    if (n_text < 0 || (n_text > 0 && (!keys || !values)))
        return rb_error(RB_ERR_INVALID, "%s: bad text chunk list", path);
    for (int i = 0; i < n_text; i++) {
        if (!valid_keyword(keys[i]))
            return rb_error(RB_ERR_INVALID, "%s: PNG text key %d \"%s\" is not 1-79 printable characters", path,
                            i, keys[i] ? keys[i] : "(null)");
        if (!values[i])
            return rb_error(RB_ERR_INVALID, "%s: PNG text value for \"%s\" is missing", path, keys[i]);
    }

    rb_atomic_file af;
    RB_TRY(rb_atomic_open(&af, path));
    png_job j = {.name = path};
    rb_status s = RB_OK;
    /* libpng writes through stdio on a duplicate of the descriptor; commit syncs and closes the original */
    int fd2 = dup(af.fd);
    j.f = fd2 >= 0 ? fdopen(fd2, "wb") : NULL;
    if (!j.f) {
        s = rb_error(RB_ERR_IO, "%s: %s", path, strerror(errno));
        if (fd2 >= 0)
            close(fd2);
    } else {
        j.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &j, on_error, on_warning);
        if (!j.png || !(j.info = png_create_info_struct(j.png)))
            s = rb_error(RB_ERR_OOM, "%s: PNG: cannot create the encoder", path);
        else
            s = write_run(&j, img, n_text, keys, values);
        png_destroy_write_struct(&j.png, &j.info);
        rb_free(j.text);
        if (fclose(j.f) != 0 && s == RB_OK)
            s = rb_error(RB_ERR_IO, "%s: %s", path, strerror(errno));
    }
    return rb_atomic_commit(&af, s);
}