/* Writes small JPEG and WebP seeds for fuzz_image (the golden data has PNGs and one WebP only):
 * gray, RGB, CMYK (Adobe marker) and progressive JPEG; lossy, lossless and alpha WebP.
 * Built and run by fuzz/seed.sh:  mkimages OUTDIR */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <jpeglib.h>
#include <webp/encode.h>

static uint8_t px[24 * 16 * 4];

static void jpeg(const char *dir, const char *name, int comps, J_COLOR_SPACE cs, int progressive) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f)
        exit(1);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = 24, c.image_height = 16, c.input_components = comps, c.in_color_space = cs;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 80, TRUE);
    if (progressive)
        jpeg_simple_progression(&c);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = px + (size_t)c.next_scanline * 24 * comps;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    fclose(f);
}

static void webp(const char *dir, const char *name, int alpha, int lossless) {
    uint8_t *out = NULL;
    size_t n;
    if (lossless)
        n = alpha ? WebPEncodeLosslessRGBA(px, 24, 16, 24 * 4, &out) : WebPEncodeLosslessRGB(px, 24, 16, 24 * 3, &out);
    else
        n = alpha ? WebPEncodeRGBA(px, 24, 16, 24 * 4, 75, &out) : WebPEncodeRGB(px, 24, 16, 24 * 3, 75, &out);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || !n || fwrite(out, 1, n, f) != n)
        exit(1);
    fclose(f);
    WebPFree(out);
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (uint8_t)(i * 37 + (i / 96) * 11);
    jpeg(argv[1], "gen_gray.jpg", 1, JCS_GRAYSCALE, 0);
    jpeg(argv[1], "gen_rgb.jpg", 3, JCS_RGB, 0);
    jpeg(argv[1], "gen_rgb_progressive.jpg", 3, JCS_RGB, 1);
    jpeg(argv[1], "gen_cmyk.jpg", 4, JCS_CMYK, 0);
    webp(argv[1], "gen_lossy.webp", 0, 0);
    webp(argv[1], "gen_lossy_alpha.webp", 1, 0);
    webp(argv[1], "gen_lossless_alpha.webp", 1, 1);
    return 0;
}
