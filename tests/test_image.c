/* Images: PNG/JPEG/WebP decoding by content, PIL-compatible channel conversion, hostile input, atomic
 * PNG writing with text chunks. Fixtures are made at run time with libpng/libjpeg/libwebp themselves. */
#include "harness.h"

#include <dirent.h>
#include <jpeglib.h>
#include <png.h>
#include <signal.h>
#include <stdint.h>
#include <sys/resource.h>
#include <unistd.h>
#include <webp/encode.h>

#include "core/mem.h"
#include "io/image.h"

/* ---- helpers ------------------------------------------------------------------------------- */

static const char *tpath(const char *name) {
    static char buf[8][512];
    static int k;
    char *p = buf[k++ & 7];
    snprintf(p, 512, "%s/%s", t_tmpdir(), name);
    return p;
}

static int write_bytes(const char *path, const void *b, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    int ok = fwrite(b, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

static uint8_t *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc(sz > 0 ? (size_t)sz : 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

/* Deterministic pattern with edges and gradients; value of channel c at (x, y). */
static uint8_t pat(int x, int y, int c) { return (uint8_t)(x * 7 + y * 13 + c * 61 + ((x ^ y) & 8) * 9); }

/* Smooth pattern for lossy codecs (JPEG/WebP keep low frequencies well). */
static uint8_t smooth(int x, int y, int c) { return (uint8_t)(20 + x + y + c * 30); } /* <= 190 for 64x48 */

/* Files in the temp folder whose name contains `frag` (leftover temporaries). */
static int count_files_with(const char *frag) {
    DIR *d = opendir(t_tmpdir());
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strstr(e->d_name, frag) != NULL;
    if (d)
        closedir(d);
    return n;
}

/* Writes any PNG with libpng: `raw` holds rows of w * ch samples of `depth` bits, big-endian as in PNG. */
static int write_png_raw(const char *path, int w, int h, int depth, int ctype, int interlace, const uint8_t *raw,
                         const png_color *pal, int npal, const uint8_t *trns, int ntrns) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(p);
    if (setjmp(png_jmpbuf(p))) {
        png_destroy_write_struct(&p, &info);
        fclose(f);
        return 0;
    }
    png_init_io(p, f);
    png_set_IHDR(p, info, w, h, depth, ctype, interlace, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal)
        png_set_PLTE(p, info, pal, npal);
    if (trns)
        png_set_tRNS(p, info, trns, ntrns, NULL);
    png_write_info(p, info);
    int ch = ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_PALETTE ? 1
             : ctype == PNG_COLOR_TYPE_GRAY_ALPHA                       ? 2
             : ctype == PNG_COLOR_TYPE_RGB                              ? 3
                                                                        : 4;
    size_t stride = ((size_t)w * ch * depth + 7) / 8;
    int passes = png_set_interlace_handling(p);
    for (int pass = 0; pass < passes; pass++)
        for (int y = 0; y < h; y++)
            png_write_row(p, raw + (size_t)y * stride);
    png_write_end(p, info);
    png_destroy_write_struct(&p, &info);
    return fclose(f) == 0;
}

/* JPEG via libjpeg; in_cs JCS_GRAYSCALE / JCS_RGB / JCS_CMYK (Adobe marker written for CMYK). */
static int write_jpeg(const char *path, int w, int h, int comps, J_COLOR_SPACE in_cs, const uint8_t *px,
                      int quality, int progressive) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return 0;
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = w;
    c.image_height = h;
    c.input_components = comps;
    c.in_color_space = in_cs;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    if (progressive)
        jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(px + (size_t)c.next_scanline * w * comps);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return fclose(f) == 0;
}

static uint32_t crc32_png(const uint8_t *b, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= b[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return c ^ 0xffffffffu;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* Expects a decode error: status, message naming the file and containing `what`, nothing leaked. */
static void expect_load_error(const char *path, rb_status want, const char *what) {
    size_t before = rb_mem_in_use();
    rb_image img;
    memset(&img, 0x55, sizeof img);
    rb_status s = rb_image_load(&img, path, 3);
    CHECK(s == want, "%s: status %d (%s), want %d", path, s, rb_last_error(), want);
    CHECK(strstr(rb_last_error(), path) != NULL, "message names the file: %s", rb_last_error());
    CHECK(strstr(rb_last_error(), what) != NULL, "message mentions \"%s\": %s", what, rb_last_error());
    CHECK(img.data == NULL && img.width == 0, "image cleared on error");
    CHECK(rb_mem_in_use() == before, "%s: leaked %zu bytes", path, rb_mem_in_use() - before);
    rb_image_free(&img);
}

/* ---- tests --------------------------------------------------------------------------------- */

static void t_sniff(void) {
    const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const uint8_t jpg[] = {0xff, 0xd8, 0xff, 0xe0};
    const uint8_t webp[] = "RIFF\x10\0\0\0WEBPVP8 ";
    const uint8_t riff_wav[] = "RIFF\x10\0\0\0WAVEfmt ";
    CHECK(rb_image_sniff(png, 8) == RB_IMG_PNG, "png");
    CHECK(rb_image_sniff(png, 7) == RB_IMG_UNKNOWN, "short png");
    CHECK(rb_image_sniff(jpg, 4) == RB_IMG_JPEG, "jpeg");
    CHECK(rb_image_sniff(webp, 16) == RB_IMG_WEBP, "webp");
    CHECK(rb_image_sniff(riff_wav, 16) == RB_IMG_UNKNOWN, "RIFF but not WebP");
    CHECK(strcmp(rb_image_format_name(RB_IMG_WEBP), "WebP") == 0, "name");
}

static void t_png_roundtrip_text(void) {
    const char *keys[] = {"parameters", "Software", "Comment"};
    const char *vals[] = {"a cat hugging a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42", "relbooth",
                          "caf\xc3\xa9 \xe2\x9c\x93"}; /* non-ASCII: written as iTXt (UTF-8) */
    for (int ch = 1; ch <= 4; ch++) {
        if (ch == 2)
            continue;
        int w = 37, h = 23;
        rb_image img = {.width = w, .height = h, .channels = ch};
        img.data = rb_alloc((size_t)w * h * ch, "test");
        REQUIRE(img.data, "alloc");
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < ch; c++)
                    img.data[((size_t)y * w + x) * ch + c] = pat(x, y, c);
        char name[64];
        snprintf(name, sizeof name, "rt%d.png", ch);
        const char *path = tpath(name);
        REQUIRE(rb_png_write(path, &img, 3, keys, vals) == RB_OK, "write: %s", rb_last_error());
        REQUIRE(rb_png_write(path, &img, 3, keys, vals) == RB_OK, "overwrite: %s", rb_last_error());
        rb_image back;
        REQUIRE(rb_image_load(&back, path, 0) == RB_OK, "load: %s", rb_last_error());
        CHECK(back.width == w && back.height == h && back.channels == ch && back.format == RB_IMG_PNG &&
                  back.source_channels == ch && back.source_bit_depth == 8,
              "%dx%dx%d", back.width, back.height, back.channels);
        CHECK(memcmp(back.data, img.data, (size_t)w * h * ch) == 0, "pixels of %d-channel round trip", ch);
        rb_image_free(&back);
        rb_image_free(&img);

        /* text chunks, read back with libpng itself */
        FILE *f = fopen(path, "rb");
        REQUIRE(f, "open");
        png_structp p = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
        png_infop info = png_create_info_struct(p);
        png_init_io(p, f);
        png_read_info(p, info);
        png_textp text;
        int nt = 0;
        png_get_text(p, info, &text, &nt);
        CHECK(nt == 3, "%d text chunks", nt);
        for (int i = 0; i < nt && i < 3; i++) {
            CHECK(strcmp(text[i].key, keys[i]) == 0, "key %s", text[i].key);
            CHECK(strcmp(text[i].text, vals[i]) == 0, "value %s", text[i].text);
        }
        if (nt == 3) {
            CHECK(text[0].compression == PNG_TEXT_COMPRESSION_NONE, "tEXt for ASCII (as A1111 writes it)");
            CHECK(text[2].compression == PNG_ITXT_COMPRESSION_NONE, "iTXt for UTF-8");
        }
        png_destroy_read_struct(&p, &info, NULL);
        fclose(f);
    }
    CHECK(count_files_with(".tmp-") == 0, "no temporary file left");
}

/* Gray, gray+alpha, palette with/without tRNS, 1-bit, 16-bit, Adam7 interlaced. */
static void t_png_variants(void) {
    enum { W = 19, H = 11 };
    static uint8_t raw[W * H * 8], want[W * H * 4];
    rb_image img;

    /* 8-bit gray + alpha: keeps 4 channels by default; to RGB drops alpha; to L keeps gray */
    for (int i = 0; i < W * H; i++)
        raw[2 * i] = (uint8_t)(i * 3), raw[2 * i + 1] = (uint8_t)(255 - i);
    REQUIRE(write_png_raw(tpath("ga.png"), W, H, 8, PNG_COLOR_TYPE_GRAY_ALPHA, 0, raw, NULL, 0, NULL, 0), "w");
    REQUIRE(rb_image_load(&img, tpath("ga.png"), 0) == RB_OK, "%s", rb_last_error());
    CHECK(img.channels == 4 && img.source_channels == 2, "GA -> RGBA");
    int bad = 0;
    for (int i = 0; i < W * H; i++)
        bad += img.data[4 * i] != raw[2 * i] || img.data[4 * i + 2] != raw[2 * i] || img.data[4 * i + 3] != raw[2 * i + 1];
    CHECK(!bad, "GA -> RGBA replicate gray, keep alpha (%d bad)", bad);
    rb_image_free(&img);
    REQUIRE(rb_image_load(&img, tpath("ga.png"), 1) == RB_OK, "%s", rb_last_error());
    bad = 0;
    for (int i = 0; i < W * H; i++)
        bad += img.data[i] != raw[2 * i];
    CHECK(img.channels == 1 && !bad, "GA -> L");
    rb_image_free(&img);

    /* palette: without tRNS -> RGB, with tRNS -> RGBA (indices past the tRNS list are opaque) */
    png_color pal[5] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 200, 77}, {7, 8, 9}};
    uint8_t trns[3] = {0, 128, 255};
    for (int i = 0; i < W * H; i++)
        raw[i] = (uint8_t)(i % 5);
    for (int with_trns = 0; with_trns < 2; with_trns++) {
        const char *path = tpath(with_trns ? "pal_trns.png" : "pal.png");
        REQUIRE(write_png_raw(path, W, H, 8, PNG_COLOR_TYPE_PALETTE, 0, raw, pal, 5, with_trns ? trns : NULL, 3),
                "w");
        REQUIRE(rb_image_load(&img, path, 0) == RB_OK, "%s", rb_last_error());
        int ch = with_trns ? 4 : 3;
        CHECK(img.channels == ch && img.source_channels == ch, "palette channels %d", img.channels);
        bad = 0;
        for (int i = 0; i < W * H; i++) {
            const png_color *c = &pal[i % 5];
            const uint8_t *p = img.data + (size_t)i * ch;
            bad += p[0] != c->red || p[1] != c->green || p[2] != c->blue;
            if (with_trns)
                bad += p[3] != (i % 5 < 3 ? trns[i % 5] : 255);
        }
        CHECK(!bad, "palette colors (%d bad)", bad);
        rb_image_free(&img);
    }
    /* palette -> L: PIL's luma of the palette colour (PIL 9.4: P (10,200,77) -> L 129, red -> 76) */
    REQUIRE(rb_image_load(&img, tpath("pal.png"), 1) == RB_OK, "%s", rb_last_error());
    CHECK(img.data[0] == 76 && img.data[3] == 129, "P -> L %d %d", img.data[0], img.data[3]);
    rb_image_free(&img);

    /* 1-bit gray expands to 0/255 */
    memset(raw, 0, sizeof raw);
    size_t stride1 = (W + 7) / 8;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if ((x + y) % 3 == 0)
                raw[y * stride1 + x / 8] |= (uint8_t)(0x80 >> (x % 8));
    REQUIRE(write_png_raw(tpath("g1.png"), W, H, 1, PNG_COLOR_TYPE_GRAY, 0, raw, NULL, 0, NULL, 0), "w");
    REQUIRE(rb_image_load(&img, tpath("g1.png"), 0) == RB_OK, "%s", rb_last_error());
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            bad += img.data[y * W + x] != ((x + y) % 3 == 0 ? 255 : 0);
    CHECK(img.channels == 1 && img.source_bit_depth == 1 && !bad, "1-bit gray (%d bad)", bad);
    rb_image_free(&img);

    /* 16-bit RGB: PIL 9.4 keeps the high byte (verified: 0x00ff -> 0, 0x80ff -> 128, 0xff00 -> 255, where
     * rounding would give 1, 128, 254). We do the same for 16-bit gray (PIL would clamp there, see docs). */
    const uint16_t v16[6] = {0x00ff, 0x80ff, 0xff00, 0x1234, 0xffff, 0x0100};
    const uint8_t v8[6] = {0, 128, 255, 0x12, 255, 1};
    for (int i = 0; i < 6; i++)
        for (int c = 0; c < 3; c++)
            raw[6 * i + 2 * c] = (uint8_t)(v16[(i + c) % 6] >> 8), raw[6 * i + 2 * c + 1] = (uint8_t)v16[(i + c) % 6];
    REQUIRE(write_png_raw(tpath("rgb16.png"), 6, 1, 16, PNG_COLOR_TYPE_RGB, 0, raw, NULL, 0, NULL, 0), "w");
    REQUIRE(rb_image_load(&img, tpath("rgb16.png"), 0) == RB_OK, "%s", rb_last_error());
    CHECK(img.channels == 3 && img.source_bit_depth == 16, "16-bit RGB");
    bad = 0;
    for (int i = 0; i < 6; i++)
        for (int c = 0; c < 3; c++)
            bad += img.data[3 * i + c] != v8[(i + c) % 6];
    CHECK(!bad, "16-bit RGB high byte (%d bad): %d %d %d", bad, img.data[0], img.data[3], img.data[6]);
    rb_image_free(&img);
    for (int i = 0; i < 6; i++)
        raw[2 * i] = (uint8_t)(v16[i] >> 8), raw[2 * i + 1] = (uint8_t)v16[i];
    REQUIRE(write_png_raw(tpath("g16.png"), 6, 1, 16, PNG_COLOR_TYPE_GRAY, 0, raw, NULL, 0, NULL, 0), "w");
    REQUIRE(rb_image_load(&img, tpath("g16.png"), 3) == RB_OK, "%s", rb_last_error());
    bad = 0;
    for (int i = 0; i < 6; i++)
        bad += img.data[3 * i] != v8[i] || img.data[3 * i + 1] != v8[i];
    CHECK(!bad, "16-bit gray high byte, replicated to RGB");
    rb_image_free(&img);

    /* Adam7 interlaced RGBA, exact */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 4; c++)
                raw[(y * W + x) * 4 + c] = want[(y * W + x) * 4 + c] = pat(x, y, c);
    REQUIRE(write_png_raw(tpath("adam7.png"), W, H, 8, PNG_COLOR_TYPE_RGB_ALPHA, PNG_INTERLACE_ADAM7, raw, NULL, 0,
                          NULL, 0),
            "w");
    REQUIRE(rb_image_load(&img, tpath("adam7.png"), 0) == RB_OK, "%s", rb_last_error());
    CHECK(img.channels == 4 && memcmp(img.data, want, W * H * 4) == 0, "interlaced pixels");
    rb_image_free(&img);
}

/* PIL 9.4 numbers (Image.convert), checked once with /usr/bin/python3 -c "from PIL import Image; ...". */
static void t_pil_conversions(void) {
    /* RGB -> L: PIL computes (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, so x.5 ties go either way:
     * (218,176,79) -> 177 and (240,50,135) -> 116 (exact luma 177.5 and 116.5), (10,200,77) -> 129. */
    const uint8_t px[4][4] = {{218, 176, 79, 0}, {240, 50, 135, 9}, {10, 200, 77, 255}, {255, 0, 0, 128}};
    const uint8_t pil_l[4] = {177, 116, 129, 76};
    uint8_t raw[4 * 4];
    memcpy(raw, px, sizeof raw);
    REQUIRE(write_png_raw(tpath("conv.png"), 4, 1, 8, PNG_COLOR_TYPE_RGB_ALPHA, 0, raw, NULL, 0, NULL, 0), "w");
    rb_image img;
    REQUIRE(rb_image_load(&img, tpath("conv.png"), 1) == RB_OK, "%s", rb_last_error());
    for (int i = 0; i < 4; i++)
        CHECK(img.data[i] == pil_l[i], "RGBA -> L pixel %d: %d, PIL %d", i, img.data[i], pil_l[i]);
    rb_image_free(&img);
    /* RGBA -> RGB drops alpha without compositing, even where alpha is 0 */
    REQUIRE(rb_image_load(&img, tpath("conv.png"), 3) == RB_OK, "%s", rb_last_error());
    for (int i = 0; i < 4; i++)
        CHECK(memcmp(img.data + 3 * i, px[i], 3) == 0, "RGBA -> RGB pixel %d", i);
    rb_image_free(&img);

    /* A sweep of RGB -> L against the exact luma in double: within 1/2 (ties either way). */
    enum { N = 4096 };
    static uint8_t rgb[N * 3];
    uint32_t s = 12345;
    for (int i = 0; i < N * 3; i++)
        s = s * 1664525u + 1013904223u, rgb[i] = (uint8_t)(s >> 24);
    REQUIRE(write_png_raw(tpath("sweep.png"), 64, 64, 8, PNG_COLOR_TYPE_RGB, 0, rgb, NULL, 0, NULL, 0), "w");
    REQUIRE(rb_image_load(&img, tpath("sweep.png"), 1) == RB_OK, "%s", rb_last_error());
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double l = 0.299 * rgb[3 * i] + 0.587 * rgb[3 * i + 1] + 0.114 * rgb[3 * i + 2];
        worst = fmax(worst, fabs(img.data[i] - l));
    }
    CHECK(worst <= 0.5 + 1e-3, "luma error %g", worst);
    rb_image_free(&img);
    /* RGB -> RGBA adds opaque alpha; L -> RGB replicates */
    REQUIRE(rb_image_load(&img, tpath("sweep.png"), 4) == RB_OK, "%s", rb_last_error());
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += memcmp(img.data + 4 * i, rgb + 3 * i, 3) != 0 || img.data[4 * i + 3] != 255;
    CHECK(img.channels == 4 && !bad, "RGB -> RGBA (%d bad)", bad);
    rb_image_free(&img);
    REQUIRE(rb_image_load(&img, tpath("g1.png"), 4) == RB_OK, "%s", rb_last_error());
    CHECK(img.data[0] == 255 && img.data[1] == 255 && img.data[2] == 255 && img.data[3] == 255 && img.data[4] == 0 &&
              img.data[7] == 255,
          "L -> RGBA");
    rb_image_free(&img);
    CHECK(rb_image_load(&img, tpath("sweep.png"), 2) == RB_ERR_INVALID, "want_channels 2 refused");
}

static void t_jpeg(void) {
    enum { W = 64, H = 48 };
    static uint8_t rgb[W * H * 3], gray[W * H];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            for (int c = 0; c < 3; c++)
                rgb[(y * W + x) * 3 + c] = smooth(x, y, c);
            gray[y * W + x] = smooth(x, y, 1);
        }
    for (int prog = 0; prog < 2; prog++) {
        const char *path = tpath(prog ? "prog.jpg" : "base.jpg");
        REQUIRE(write_jpeg(path, W, H, 3, JCS_RGB, rgb, 95, prog), "write jpeg");
        rb_image img;
        REQUIRE(rb_image_load(&img, path, 0) == RB_OK, "%s", rb_last_error());
        CHECK(img.format == RB_IMG_JPEG && img.width == W && img.height == H && img.channels == 3 &&
                  img.source_channels == 3 && img.source_bit_depth == 8,
              "jpeg header");
        int worst = 0;
        double sum = 0;
        for (int i = 0; i < W * H * 3; i++) {
            int d = abs(img.data[i] - rgb[i]);
            worst = d > worst ? d : worst;
            sum += d;
        }
        CHECK(worst <= 8 && sum / (W * H * 3) < 1.5, "%s: max diff %d, mean %g", path, worst, sum / (W * H * 3));
        rb_image_free(&img);
    }
    REQUIRE(write_jpeg(tpath("gray.jpg"), W, H, 1, JCS_GRAYSCALE, gray, 95, 0), "write gray jpeg");
    rb_image img;
    REQUIRE(rb_image_load(&img, tpath("gray.jpg"), 0) == RB_OK, "%s", rb_last_error());
    int worst = 0;
    for (int i = 0; i < W * H; i++)
        worst = abs(img.data[i] - gray[i]) > worst ? abs(img.data[i] - gray[i]) : worst;
    CHECK(img.channels == 1 && img.source_channels == 1 && worst <= 4, "gray jpeg, max diff %d", worst);
    rb_image_free(&img);

    /* CMYK (Adobe, inverted as Photoshop and PIL store it). PIL 9.4 reads CMYK (40,100,200,30), stored as
     * bytes (215,155,55,225), and convert("RGB") gives (190,137,49). A flat image at quality 100 decodes to
     * within a level or so. */
    static uint8_t cmyk[16 * 16 * 4];
    for (int i = 0; i < 16 * 16; i++)
        cmyk[4 * i] = 215, cmyk[4 * i + 1] = 155, cmyk[4 * i + 2] = 55, cmyk[4 * i + 3] = 225;
    REQUIRE(write_jpeg(tpath("cmyk.jpg"), 16, 16, 4, JCS_CMYK, cmyk, 100, 0), "write cmyk jpeg");
    REQUIRE(rb_image_load(&img, tpath("cmyk.jpg"), 0) == RB_OK, "%s", rb_last_error());
    CHECK(img.channels == 3 && img.source_channels == 4, "CMYK -> RGB");
    const uint8_t *p = img.data + (5 * 16 + 5) * 3;
    CHECK(abs(p[0] - 190) <= 2 && abs(p[1] - 137) <= 2 && abs(p[2] - 49) <= 2, "CMYK pixel (%d,%d,%d), PIL (190,137,49)",
          p[0], p[1], p[2]);
    rb_image_free(&img);
}

static void t_webp(void) {
    enum { W = 40, H = 24 };
    static uint8_t rgba[W * H * 4], rgb[W * H * 3];
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            for (int c = 0; c < 3; c++)
                rgba[(y * W + x) * 4 + c] = rgb[(y * W + x) * 3 + c] = smooth(x, y, c);
            rgba[(y * W + x) * 4 + 3] = (uint8_t)(1 + (x * 6 + y) % 255); /* never 0: RGB kept under alpha */
        }
    uint8_t *out = NULL;
    size_t n;
    rb_image img;
    /* lossless RGBA under a .png name (as in the DreamRelation data): exact */
    n = WebPEncodeLosslessRGBA(rgba, W, H, W * 4, &out);
    REQUIRE(n && write_bytes(tpath("ll_rgba.png"), out, n), "encode");
    WebPFree(out);
    REQUIRE(rb_image_load(&img, tpath("ll_rgba.png"), 0) == RB_OK, "%s", rb_last_error());
    CHECK(img.format == RB_IMG_WEBP && img.channels == 4 && img.width == W && img.height == H, "lossless RGBA");
    CHECK(memcmp(img.data, rgba, sizeof rgba) == 0, "lossless RGBA exact");
    rb_image_free(&img);
    /* lossless RGB: no alpha -> 3 channels */
    n = WebPEncodeLosslessRGB(rgb, W, H, W * 3, &out);
    REQUIRE(n && write_bytes(tpath("ll_rgb.webp"), out, n), "encode");
    WebPFree(out);
    REQUIRE(rb_image_load(&img, tpath("ll_rgb.webp"), 0) == RB_OK, "%s", rb_last_error());
    CHECK(img.channels == 3 && img.source_channels == 3 && memcmp(img.data, rgb, sizeof rgb) == 0, "lossless RGB");
    rb_image_free(&img);
    /* lossy with alpha: alpha plane is lossless by default, colour within tolerance */
    n = WebPEncodeRGBA(rgba, W, H, W * 4, 95, &out);
    REQUIRE(n && write_bytes(tpath("lossy_rgba.webp"), out, n), "encode");
    WebPFree(out);
    REQUIRE(rb_image_load(&img, tpath("lossy_rgba.webp"), 0) == RB_OK, "%s", rb_last_error());
    REQUIRE(img.channels == 4, "lossy RGBA channels %d", img.channels);
    int worst = 0, alpha_bad = 0;
    for (int i = 0; i < W * H; i++) {
        for (int c = 0; c < 3; c++)
            worst = abs(img.data[4 * i + c] - rgba[4 * i + c]) > worst ? abs(img.data[4 * i + c] - rgba[4 * i + c])
                                                                       : worst;
        alpha_bad += img.data[4 * i + 3] != rgba[4 * i + 3];
    }
    CHECK(worst <= 12 && alpha_bad == 0, "lossy: max colour diff %d, alpha mismatches %d", worst, alpha_bad);
    rb_image_free(&img);
}

/* Hostile and broken files: each a clear error, nothing leaked. */
static void t_bad_input(void) {
    /* a valid PNG header (correct CRC) declaring 100000 x 100000 */
    uint8_t big[8 + 25 + 12] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    put_be32(big + 8, 13);
    memcpy(big + 12, "IHDR", 4);
    put_be32(big + 16, 100000);
    put_be32(big + 20, 100000);
    big[24] = 8, big[25] = 2;
    put_be32(big + 29, crc32_png(big + 12, 17));
    put_be32(big + 33, 0);
    memcpy(big + 37, "IEND", 4);
    put_be32(big + 41, crc32_png(big + 37, 4));
    REQUIRE(write_bytes(tpath("huge.png"), big, sizeof big), "write");
    expect_load_error(tpath("huge.png"), RB_ERR_FORMAT, "100000x100000");
    rb_image img;
    CHECK(rb_image_probe(&img, tpath("huge.png")) == RB_ERR_FORMAT, "probe refuses it too");

    /* a JPEG whose SOF is patched to 65000 x 65000 */
    size_t n;
    uint8_t *b = read_bytes(tpath("base.jpg"), &n);
    REQUIRE(b, "base.jpg from t_jpeg");
    for (size_t i = 2; i + 9 < n; i++)
        if (b[i] == 0xff && b[i + 1] == 0xc0) {
            b[i + 5] = 0xfd, b[i + 6] = 0xe8, b[i + 7] = 0xfd, b[i + 8] = 0xe8;
            break;
        }
    write_bytes(tpath("huge.jpg"), b, n);
    expect_load_error(tpath("huge.jpg"), RB_ERR_FORMAT, "65000x65000");
    /* truncated JPEG (half the file): libjpeg's "premature end" warning is an error here */
    write_bytes(tpath("trunc.jpg"), b, n / 2);
    expect_load_error(tpath("trunc.jpg"), RB_ERR_FORMAT, "JPEG");
    free(b);
    b = read_bytes(tpath("prog.jpg"), &n);
    write_bytes(tpath("trunc_prog.jpg"), b, n * 2 / 3);
    expect_load_error(tpath("trunc_prog.jpg"), RB_ERR_FORMAT, "JPEG");
    free(b);

    /* truncated PNGs: in the pixel data, and just before IEND; a corrupted IDAT byte (CRC) */
    b = read_bytes(tpath("rt3.png"), &n);
    REQUIRE(b, "rt3.png from t_png_roundtrip_text");
    write_bytes(tpath("trunc.png"), b, n / 2);
    expect_load_error(tpath("trunc.png"), RB_ERR_FORMAT, "truncated");
    write_bytes(tpath("noend.png"), b, n - 12);
    expect_load_error(tpath("noend.png"), RB_ERR_FORMAT, "truncated");
    b[n - 30] ^= 0x5a;
    write_bytes(tpath("crc.png"), b, n);
    expect_load_error(tpath("crc.png"), RB_ERR_FORMAT, "PNG");
    free(b);

    /* truncated WebP, lossy and lossless */
    const char *webps[2] = {"lossy_rgba.webp", "ll_rgba.png"};
    for (int k = 0; k < 2; k++) {
        b = read_bytes(tpath(webps[k]), &n);
        REQUIRE(b, "%s from t_webp", webps[k]);
        write_bytes(tpath("trunc.webp"), b, n * 2 / 3);
        expect_load_error(tpath("trunc.webp"), RB_ERR_FORMAT, "WebP");
        free(b);
    }

    /* random bytes, empty file, a directory, a missing file */
    uint8_t rnd[1000];
    uint32_t s = 7;
    for (size_t i = 0; i < sizeof rnd; i++)
        s = s * 1664525u + 1013904223u, rnd[i] = (uint8_t)(s >> 24);
    write_bytes(tpath("random.png"), rnd, sizeof rnd);
    expect_load_error(tpath("random.png"), RB_ERR_FORMAT, "not a PNG, JPEG or WebP");
    write_bytes(tpath("empty.png"), "", 0);
    expect_load_error(tpath("empty.png"), RB_ERR_FORMAT, "empty");
    expect_load_error(t_tmpdir(), RB_ERR_IO, "directory");
    expect_load_error(tpath("does-not-exist.png"), RB_ERR_IO, "No such file");
    /* PNG signature followed by random bytes */
    memcpy(rnd, big, 8);
    write_bytes(tpath("sig_random.png"), rnd, sizeof rnd);
    expect_load_error(tpath("sig_random.png"), RB_ERR_FORMAT, "PNG");
    /* in-memory decode of garbage without a name */
    CHECK(rb_image_decode(&img, rnd + 8, 100, 3, NULL) == RB_ERR_FORMAT && strstr(rb_last_error(), "<memory>"),
          "memory decode: %s", rb_last_error());
}

static void t_probe(void) {
    struct {
        const char *file;
        rb_image_format fmt;
        int w, h, src_ch, depth, ch;
    } cases[] = {
        {"rt3.png", RB_IMG_PNG, 37, 23, 3, 8, 3},        {"ga.png", RB_IMG_PNG, 19, 11, 2, 8, 4},
        {"pal_trns.png", RB_IMG_PNG, 19, 11, 4, 8, 4},   {"rgb16.png", RB_IMG_PNG, 6, 1, 3, 16, 3},
        {"prog.jpg", RB_IMG_JPEG, 64, 48, 3, 8, 3},      {"cmyk.jpg", RB_IMG_JPEG, 16, 16, 4, 8, 3},
        {"ll_rgba.png", RB_IMG_WEBP, 40, 24, 4, 8, 4},   {"lossy_rgba.webp", RB_IMG_WEBP, 40, 24, 4, 8, 4},
        {"ll_rgb.webp", RB_IMG_WEBP, 40, 24, 3, 8, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rb_image img;
        REQUIRE(rb_image_probe(&img, tpath(cases[i].file)) == RB_OK, "%s: %s", cases[i].file, rb_last_error());
        CHECK(img.format == cases[i].fmt && img.width == cases[i].w && img.height == cases[i].h &&
                  img.source_channels == cases[i].src_ch && img.source_bit_depth == cases[i].depth &&
                  img.channels == cases[i].ch && img.data == NULL,
              "%s: %s %dx%d src %d depth %d ch %d", cases[i].file, rb_image_format_name(img.format), img.width,
              img.height, img.source_channels, img.source_bit_depth, img.channels);
    }
    /* a 300 KB text chunk before the pixels: the prober reads past its first 64 KiB */
    static char longtext[300001];
    memset(longtext, 'x', 300000);
    uint8_t px[4 * 4 * 3] = {0};
    rb_image small = {.width = 4, .height = 4, .channels = 3, .data = px};
    const char *k[] = {"parameters"}, *v[] = {longtext};
    REQUIRE(rb_png_write(tpath("longtext.png"), &small, 1, k, v) == RB_OK, "%s", rb_last_error());
    rb_image img;
    CHECK(rb_image_probe(&img, tpath("longtext.png")) == RB_OK && img.width == 4 && img.channels == 3, "%s",
          rb_last_error());
    CHECK(rb_image_probe(&img, tpath("trunc.png")) == RB_OK && img.width == 37, "probe needs only the header");
    CHECK(rb_image_probe(&img, tpath("random.png")) == RB_ERR_FORMAT, "probe random");
    CHECK(rb_image_probe(&img, tpath("empty.png")) == RB_ERR_FORMAT, "probe empty");
}

static void t_write_errors(void) {
    uint8_t px[64 * 64 * 3];
    uint32_t r = 99; /* noise: incompressible, so the 12 KB image cannot fit under a 2000-byte limit */
    for (size_t i = 0; i < sizeof px; i++)
        r = r * 1664525u + 1013904223u, px[i] = (uint8_t)(r >> 24);
    rb_image img = {.width = 64, .height = 64, .channels = 3, .data = px};
    size_t before = rb_mem_in_use();
    CHECK(rb_png_write(tpath("no-such-dir/x.png"), &img, 0, NULL, NULL) == RB_ERR_IO &&
              strstr(rb_last_error(), "no-such-dir/x.png"),
          "unwritable folder: %s", rb_last_error());
    const char *badkey[] = {""}, *val[] = {"v"};
    CHECK(rb_png_write(tpath("k.png"), &img, 1, badkey, val) == RB_ERR_INVALID, "empty key refused");
    img.channels = 5;
    CHECK(rb_png_write(tpath("k.png"), &img, 0, NULL, NULL) == RB_ERR_INVALID, "5 channels refused");
    img.channels = 3;

    /* A full disk, simulated with a file size limit: the write fails, the old file stays intact and no
     * temporary file is left behind. */
    const char *path = tpath("full.png");
    uint8_t tiny[3] = {1, 2, 3};
    rb_image one = {.width = 1, .height = 1, .channels = 3, .data = tiny};
    REQUIRE(rb_png_write(path, &one, 0, NULL, NULL) == RB_OK, "%s", rb_last_error());
    struct rlimit old, lim;
    REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0, "getrlimit");
    void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
    lim = old;
    lim.rlim_cur = 2000;
    REQUIRE(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit");
    rb_status s = rb_png_write(path, &img, 0, NULL, NULL);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, oldsig);
    CHECK(s == RB_ERR_IO && strstr(rb_last_error(), "full.png"), "full disk: %d %s", s, rb_last_error());
    CHECK(count_files_with(".tmp-") == 0, "temporary file removed");
    rb_image back;
    CHECK(rb_image_load(&back, path, 0) == RB_OK && back.width == 1 && back.data[2] == 3, "old file intact");
    rb_image_free(&back);
    CHECK(rb_mem_in_use() == before, "no leak on write errors");
}

/* clip_vision / clip_metrics golden PNGs: sizes and modes as named; img2 (224x224, no resize, no crop)
 * must reproduce the golden pixel_values exactly: round((pixel_values * std + mean) * 255). */
static float *load_st_tensor(const char *path, const char *name, size_t nfloat) {
    size_t n;
    uint8_t *b = read_bytes(path, &n);
    if (!b || n < 8)
        return free(b), NULL;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | b[i];
    float *out = NULL;
    if (hl < n - 8) {
        char *hdr = malloc(hl + 1), key[128];
        memcpy(hdr, b + 8, hl);
        hdr[hl] = 0;
        snprintf(key, sizeof key, "\"%s\"", name);
        char *p = strstr(hdr, key), *q = p ? strstr(p, "data_offsets") : NULL;
        unsigned long long beg, end;
        if (q && strstr(p, "\"F32\"") && sscanf(q, "data_offsets\":[%llu,%llu]", &beg, &end) == 2 &&
            end - beg == nfloat * 4 && 8 + hl + end <= n) {
            out = malloc(nfloat * 4);
            memcpy(out, b + 8 + hl + beg, nfloat * 4);
        }
        free(hdr);
    }
    free(b);
    return out;
}

static void t_golden_clip(void) {
    const char *files[] = {"clip_vision/images/img0_300x200_rgb.png", "clip_vision/images/img1_180x240_rgba.png",
                           "clip_vision/images/img2_224x224_rgb.png", "clip_metrics/images/ref0_256x192_rgb.png",
                           "clip_metrics/images/ref1_160x200_rgb.png"};
    rb_image img2 = {0};
    for (int i = 0; i < 5; i++) {
        const char *path = t_golden_path(files[i]);
        if (!path)
            return;
        int w, h;
        char mode[8];
        const char *base = strrchr(files[i], '/') + 1;
        REQUIRE(sscanf(strchr(base, '_') + 1, "%dx%d_%7[a-z]", &w, &h, mode) == 3, "name %s", base);
        rb_image img;
        REQUIRE(rb_image_load(&img, path, 0) == RB_OK, "%s", rb_last_error());
        int ch = strcmp(mode, "rgba") == 0 ? 4 : 3;
        CHECK(img.format == RB_IMG_PNG && img.width == w && img.height == h && img.channels == ch, "%s: %dx%dx%d",
              base, img.width, img.height, img.channels);
        if (i == 2)
            img2 = img;
        else
            rb_image_free(&img);
    }
    const char *io = t_golden_path("clip_vision/io.safetensors");
    float *pv = io ? load_st_tensor(io, "pixel_values", 3 * 3 * 224 * 224) : NULL;
    CHECK(pv != NULL, "pixel_values [3,3,224,224] F32 in %s", io ? io : "?");
    if (pv && img2.data) {
        const double mean[3] = {0.48145466, 0.4578275, 0.40821073}, std[3] = {0.26862954, 0.26130258, 0.27577711};
        int bad = 0;
        const float *p2 = pv + 2 * 3 * 224 * 224; /* batch index 2 */
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 224 * 224; i++) {
                double u = ((double)p2[c * 224 * 224 + i] * std[c] + mean[c]) * 255.0;
                bad += (int)lround(u) != img2.data[i * 3 + c];
            }
        CHECK(bad == 0, "img2 decoded pixels vs golden pixel_values: %d mismatches", bad);
    }
    free(pv);
    rb_image_free(&img2);
}

/* relation_data: motion.png holds WebP bytes (lossless for id 0, lossy q90 for id 1); decoded RGB must match
 * Pillow's decode (expected/<id>/motion_decoded_rgb.png) exactly; masks are 8-bit gray 0/255. */
static void t_golden_relation(void) {
    const int mw[2] = {64, 96}, mh[2] = {64, 64};
    for (int id = 0; id < 2; id++) {
        char rel[256];
        snprintf(rel, sizeof rel, "relation_data/data/videos/%d/motion.png", id);
        const char *p = t_golden_path(rel);
        if (!p)
            return;
        rb_image m, e;
        REQUIRE(rb_image_probe(&m, p) == RB_OK && m.format == RB_IMG_WEBP, "%s is WebP: %s", rel, rb_last_error());
        REQUIRE(rb_image_load(&m, p, 3) == RB_OK, "%s", rb_last_error());
        CHECK(m.width == mw[id] && m.height == mh[id], "motion %d: %dx%d", id, m.width, m.height);
        snprintf(rel, sizeof rel, "relation_data/expected/%d/motion_decoded_rgb.png", id);
        REQUIRE(rb_image_load(&e, t_golden_path(rel), 3) == RB_OK, "%s", rb_last_error());
        REQUIRE(e.width == m.width && e.height == m.height, "expected size");
        size_t nb = (size_t)m.width * m.height * 3;
        int bad = 0, worst = 0;
        for (size_t i = 0; i < nb; i++) {
            int d = abs(m.data[i] - e.data[i]);
            bad += d != 0;
            worst = d > worst ? d : worst;
        }
        CHECK(bad == 0, "motion %d vs Pillow decode: %d differ, max %d", id, bad, worst);
        rb_image_free(&e);
        for (int k = 0; k < 2; k++) {
            snprintf(rel, sizeof rel, "relation_data/data/masks/%d/motion%d.png", id, k);
            REQUIRE(rb_image_load(&e, t_golden_path(rel), 0) == RB_OK, "%s", rb_last_error());
            int nonbin = 0, on = 0;
            for (int i = 0; i < e.width * e.height; i++)
                nonbin += e.data[i] != 0 && e.data[i] != 255, on += e.data[i] == 255;
            CHECK(e.channels == 1 && e.width == m.width && e.height == m.height && nonbin == 0 && on > 0,
                  "mask %d/%d: %dx%dx%d, %d non-binary", id, k, e.width, e.height, e.channels, nonbin);
            rb_image_free(&e);
        }
        rb_image_free(&m);
    }
    const char *c = t_golden_path("relation_data/data/videos/1/concept1.png");
    rb_image img;
    REQUIRE(rb_image_load(&img, c, 3) == RB_OK, "%s", rb_last_error());
    CHECK(img.width == 48 && img.height == 64, "concept1 of id 1 is 48x64");
    rb_image_free(&img);
}

int main(void) {
    RUN(t_sniff);
    RUN(t_png_roundtrip_text);
    RUN(t_png_variants);
    RUN(t_pil_conversions);
    RUN(t_jpeg);
    RUN(t_webp);
    RUN(t_bad_input);
    RUN(t_probe);
    RUN(t_write_errors);
    RUN(t_golden_clip);
    RUN(t_golden_relation);
    /* remove the fixtures (a few hundred KB) */
    DIR *d = opendir(t_tmpdir());
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.')
            unlink(tpath(e->d_name));
    if (d)
        closedir(d);
    rmdir(t_tmpdir());
    return t_done();
}
