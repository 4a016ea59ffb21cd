/* Image loading: format sniffing by content, file reading, channel conversion (PIL's rules), probing.
 * The codecs live in png.c, jpeg.c and webp.c (image_codec.h). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/mem.h"
#include "io/image_codec.h"

/* Larger files are refused before reading: 2^28 RGBA pixels are 1 GiB uncompressed. */
#define MAX_FILE_BYTES ((size_t)1 << 30)

rb_image_format rb_image_sniff(const uint8_t *head, size_t n) {
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (!head)
        return RB_IMG_UNKNOWN;
    if (n >= 8 && memcmp(head, png_sig, 8) == 0)
        return RB_IMG_PNG;
    if (n >= 3 && head[0] == 0xff && head[1] == 0xd8 && head[2] == 0xff)
        return RB_IMG_JPEG;
    if (n >= 12 && memcmp(head, "RIFF", 4) == 0 && memcmp(head + 8, "WEBP", 4) == 0)
        return RB_IMG_WEBP;
    return RB_IMG_UNKNOWN;
}

const char *rb_image_format_name(rb_image_format f) {
    switch (f) {
    case RB_IMG_PNG: return "PNG";
    case RB_IMG_JPEG: return "JPEG";
    case RB_IMG_WEBP: return "WebP";
    case RB_IMG_UNKNOWN: break;
    }
    return "unknown";
}

rb_status rb_image_check_size(const char *name, const char *fmt, int64_t w, int64_t h, int channels,
                              size_t *bytes) {
    /* w, h < 2^31 each, so w * h cannot overflow int64 before the comparison */
    if (w <= 0 || h <= 0)
        return rb_error(RB_ERR_FORMAT, "%s: %s: empty image (%lldx%lld)", name, fmt, (long long)w, (long long)h);
    if (w > INT32_MAX || h > INT32_MAX || w * h > RB_IMAGE_MAX_PIXELS)
        return rb_error(RB_ERR_FORMAT, "%s: %s: image size %lldx%lld exceeds the limit of %lld pixels", name, fmt,
                        (long long)w, (long long)h, (long long)RB_IMAGE_MAX_PIXELS);
    if (!rb_mul_size((size_t)(w * h), (size_t)channels, bytes))
        return rb_error(RB_ERR_FORMAT, "%s: %s: image size overflows", name, fmt);
    return RB_OK;
}

/* PIL's ITU-R 601-2 luma in 16-bit fixed point (Convert.c L24): L = R*0.299 + G*0.587 + B*0.114,
 * rounded; this, not (R*299 + G*587 + B*114) / 1000, is what Image.convert("L") computes. */
static inline uint8_t luma(const uint8_t *p) {
    return (uint8_t)((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
}

/* Native layout sc (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) -> dc (1, 3 or 4), as PIL's convert():
 * alpha is dropped without compositing, gray is replicated, a missing alpha is opaque. */
static void convert_pixels(uint8_t *dst, int dc, const uint8_t *src, int sc, size_t npix) {
    for (size_t i = 0; i < npix; i++, src += sc, dst += dc) {
        if (dc == 1) {
            dst[0] = sc <= 2 ? src[0] : luma(src);
        } else {
            if (sc <= 2)
                dst[0] = dst[1] = dst[2] = src[0];
            else
                memcpy(dst, src, 3);
            if (dc == 4)
                dst[3] = sc == 2 ? src[1] : sc == 4 ? src[3] : 255;
        }
    }
}

static rb_status decode_any(rb_image *img, const uint8_t *bytes, size_t n, const char *name, int header_only,
                            int *short_input) {
    if (short_input)
        *short_input = 0;
    if (n == 0)
        return rb_error(RB_ERR_FORMAT, "%s: empty file", name);
    switch (rb_image_sniff(bytes, n)) {
    case RB_IMG_PNG: return rb_png_decode_mem(img, bytes, n, name, header_only, short_input);
    case RB_IMG_JPEG: return rb_jpeg_decode_mem(img, bytes, n, name, header_only, short_input);
    case RB_IMG_WEBP: return rb_webp_decode_mem(img, bytes, n, name, header_only, short_input);
    case RB_IMG_UNKNOWN: break;
    }
    if (short_input && n < 12)
        *short_input = 1;
    uint8_t h[4] = {0};
    memcpy(h, bytes, n < 4 ? n : 4);
    return rb_error(RB_ERR_FORMAT, "%s: not a PNG, JPEG or WebP file (starts with %02x %02x %02x %02x)", name, h[0],
                    h[1], h[2], h[3]);
}

rb_status rb_image_decode(rb_image *img, const uint8_t *bytes, size_t n, int want_channels, const char *name) {
    if (!name)
        name = "<memory>";
    if (!img || (!bytes && n))
        return rb_error(RB_ERR_INVALID, "%s: rb_image_decode: missing image or bytes", name);
    memset(img, 0, sizeof *img);
    if (want_channels != 0 && want_channels != 1 && want_channels != 3 && want_channels != 4)
        return rb_error(RB_ERR_INVALID, "%s: want_channels must be 0, 1, 3 or 4 (got %d)", name, want_channels);
    RB_TRY(decode_any(img, bytes, n, name, 0, NULL));
    int sc = img->channels;
    int dc = want_channels ? want_channels : sc == 2 ? 4 : sc;
    if (dc == sc)
        return RB_OK;
    size_t npix = (size_t)img->width * (size_t)img->height, nbytes = npix * (size_t)dc; /* checked by codec */
    uint8_t *out = rb_alloc(nbytes, "image pixels");
    if (!out) {
        rb_image_free(img);
        return RB_ERR_OOM;
    }
    convert_pixels(out, dc, img->data, sc, npix);
    rb_free(img->data);
    img->data = out;
    img->channels = dc;
    return RB_OK;
}

/* Opens a regular file and returns its size; directories and devices are I/O errors. */
static rb_status open_image_file(const char *path, int *fd_out, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rb_error(RB_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rb_status s = rb_error(RB_ERR_IO, "%s: %s", path, strerror(errno));
        close(fd);
        return s;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return rb_error(RB_ERR_IO, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
    }
    if ((uint64_t)st.st_size > MAX_FILE_BYTES) {
        close(fd);
        return rb_error(RB_ERR_FORMAT, "%s: file of %lld bytes is larger than the %zu bytes accepted for an image",
                        path, (long long)st.st_size, MAX_FILE_BYTES);
    }
    *fd_out = fd;
    *size = (size_t)st.st_size;
    return RB_OK;
}

/* Reads up to n bytes from offset `at` (fewer if the file shrank); *got is what was read. */
static rb_status read_at(int fd, const char *path, uint8_t *buf, size_t n, size_t at, size_t *got) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = pread(fd, buf + done, n - done, (off_t)(at + done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return rb_error(RB_ERR_IO, "%s: %s", path, strerror(errno));
        if (r == 0)
            break;
        done += (size_t)r;
    }
    *got = done;
    return RB_OK;
}

rb_status rb_image_load(rb_image *img, const char *path, int want_channels) {
    if (!img || !path)
        return rb_error(RB_ERR_INVALID, "rb_image_load: missing image or path");
    memset(img, 0, sizeof *img);
    int fd;
    size_t size, got = 0;
    RB_TRY(open_image_file(path, &fd, &size));
    uint8_t *buf = size ? rb_alloc(size, "image file") : NULL;
    rb_status s = size && !buf ? RB_ERR_OOM : RB_OK;
    if (s == RB_OK && size)
        s = read_at(fd, path, buf, size, 0, &got);
    close(fd);
    if (s == RB_OK)
        s = rb_image_decode(img, buf, got, want_channels, path);
    rb_free(buf);
    return s;
}

rb_status rb_image_probe(rb_image *img, const char *path) {
    if (!img || !path)
        return rb_error(RB_ERR_INVALID, "rb_image_probe: missing image or path");
    memset(img, 0, sizeof *img);
    int fd;
    size_t size;
    RB_TRY(open_image_file(path, &fd, &size));
    /* Headers are tiny, but a JPEG's SOF may follow large EXIF/ICC segments and a PNG's tRNS may follow
     * big text chunks: read 64 KiB and grow only while the codec says it ran out of bytes. */
    size_t want = size < 65536 ? size : 65536, have = 0;
    uint8_t *buf = NULL;
    rb_status s;
    for (;;) {
        uint8_t *nb = rb_alloc(want ? want : 1, "image header");
        if (!nb) {
            s = RB_ERR_OOM;
            break;
        }
        if (have)
            memcpy(nb, buf, have);
        rb_free(buf);
        buf = nb;
        size_t got = 0;
        s = read_at(fd, path, buf + have, want - have, have, &got);
        if (s != RB_OK)
            break;
        have += got;
        int short_input = 0;
        s = decode_any(img, buf, have, path, 1, &short_input);
        if (s == RB_OK || !short_input || have < want || have >= size)
            break;
        want = size - have > 7 * have ? 8 * have : size;
    }
    close(fd);
    rb_free(buf);
    if (s != RB_OK)
        memset(img, 0, sizeof *img);
    else if (img->channels == 2)
        img->channels = 4; /* what rb_image_load(..., 0) returns */
    return s;
}

void rb_image_free(rb_image *img) {
    if (!img)
        return;
    rb_free(img->data);
    memset(img, 0, sizeof *img);
}
