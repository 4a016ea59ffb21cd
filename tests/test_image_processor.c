/* Image preprocessing: Pillow-exact resampling (checksums from Pillow 9.4), transformers' size/crop
 * rules and float32 arithmetic, config loading, and the golden pixel_values of clip_vision, clip_metrics,
 * dino and local_tokens. */
#include <stdint.h>
#include <unistd.h>

#include "core/mem.h"
#include "harness.h"
#include "io/image.h"
#include "io/safetensors.h"
#include "models/image_processor.h"

static uint32_t fnv1a(const uint8_t *p, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

/* The synthetic test image: hashed noise, which exercises clipping of the negative filter lobes. */
static uint8_t *noise(int w, int h, int c) {
    uint8_t *p = malloc((size_t)w * h * c);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int k = 0; k < c; k++)
                p[((size_t)y * w + x) * c + k] =
                    (uint8_t)((((uint32_t)x * 73856093u) ^ ((uint32_t)y * 19349663u) ^ ((uint32_t)k * 83492791u)) >> 8);
    return p;
}

/* Reference values from Pillow 9.4.0 (/usr/bin/python3, numpy 1.24):
 *   from PIL import Image; import numpy as np
 *   def noise(w, h, c):
 *       y, x = np.mgrid[0:h, 0:w].astype(np.uint64)
 *       ch = [((((x*73856093) ^ (y*19349663) ^ (k*83492791)) & 0xffffffff) >> 8) & 255 for k in range(c)]
 *       a = np.stack(ch, -1).astype(np.uint8)
 *       return Image.fromarray(a[..., 0] if c == 1 else a, "L" if c == 1 else "RGB")
 *   def fnv(b):
 *       h = 2166136261
 *       for v in b: h = ((h ^ v) * 16777619) & 0xffffffff
 *       return h
 *   r = np.asarray(noise(w, h, c).resize((ow, oh), Image.BICUBIC))  # etc.
 *   print(hex(fnv(r.tobytes())), r.flat[0], r.flat[r.size // 2], r.flat[-1]) */
static const struct {
    int w, h, c, ow, oh;
    rb_resample f;
    uint32_t fnv;
    uint8_t px[3]; /* first, middle (flat index size/2), last byte */
} NOISE_CASES[] = {
    {97, 61, 3, 40, 29, RB_RESAMPLE_BICUBIC, 0x1c13b94cu, {141, 94, 166}},   /* downscale */
    {97, 61, 3, 250, 130, RB_RESAMPLE_BICUBIC, 0x1634b789u, {0, 175, 114}},  /* upscale (clips at 0) */
    {97, 61, 1, 97, 200, RB_RESAMPLE_BILINEAR, 0x37383dc0u, {0, 156, 135}},  /* vertical pass only, L */
    {97, 61, 3, 33, 61, RB_RESAMPLE_LANCZOS, 0xa8c71ca3u, {169, 174, 109}},  /* horizontal pass only */
    {97, 61, 3, 64, 64, RB_RESAMPLE_BOX, 0xc1ea88a1u, {122, 124, 118}},
    {97, 61, 3, 64, 64, RB_RESAMPLE_HAMMING, 0x4344958du, {70, 145, 119}},
    {97, 61, 3, 30, 20, RB_RESAMPLE_BILINEAR, 0xb20daf50u, {137, 130, 155}},
    {97, 61, 3, 13, 7, RB_RESAMPLE_BICUBIC, 0x03cc985au, {131, 127, 129}},
};

static void t_resize_matches_pillow(void) {
    for (size_t i = 0; i < sizeof NOISE_CASES / sizeof NOISE_CASES[0]; i++) {
        int w = NOISE_CASES[i].w, h = NOISE_CASES[i].h, c = NOISE_CASES[i].c;
        int ow = NOISE_CASES[i].ow, oh = NOISE_CASES[i].oh;
        uint8_t *src = noise(w, h, c);
        size_t n = (size_t)ow * oh * c;
        uint8_t *dst = malloc(n);
        rb_status s = rb_pil_resize(dst, ow, oh, src, w, h, c, NOISE_CASES[i].f);
        CHECK(s == RB_OK, "case %zu: %s", i, rb_last_error());
        if (s == RB_OK) {
            CHECK(fnv1a(dst, n) == NOISE_CASES[i].fnv, "case %zu (%dx%d -> %dx%d, filter %d): fnv %08x, Pillow %08x", i,
                  w, h, ow, oh, (int)NOISE_CASES[i].f, fnv1a(dst, n), NOISE_CASES[i].fnv);
            CHECK(dst[0] == NOISE_CASES[i].px[0] && dst[n / 2] == NOISE_CASES[i].px[1] &&
                      dst[n - 1] == NOISE_CASES[i].px[2],
                  "case %zu: pixels %d %d %d, Pillow %d %d %d", i, dst[0], dst[n / 2], dst[n - 1],
                  NOISE_CASES[i].px[0], NOISE_CASES[i].px[1], NOISE_CASES[i].px[2]);
        }
        free(src);
        free(dst);
    }
}

/* Same size: Pillow copies; every filter must give the identity. */
static void t_resize_identity(void) {
    uint8_t *src = noise(23, 17, 3), dst[23 * 17 * 3];
    for (int f = 1; f <= 5; f++) {
        REQUIRE(rb_pil_resize(dst, 23, 17, src, 23, 17, 3, (rb_resample)f) == RB_OK, "%s", rb_last_error());
        CHECK(!memcmp(dst, src, sizeof dst), "filter %d changed the image", f);
    }
    free(src);
}

/* A window of the resize equals the same region of the full resize (the processor crops this way). */
static void t_resize_window(void) {
    const int w = 97, h = 61, ow = 150, oh = 44;
    uint8_t *src = noise(w, h, 3);
    uint8_t *full = malloc((size_t)ow * oh * 3), *win = malloc((size_t)ow * oh * 3);
    const int wins[][4] = {{0, 0, 150, 44}, {37, 5, 40, 30}, {149, 43, 1, 1}, {0, 10, 150, 1}, {60, 0, 1, 44}};
    for (int f = 1; f <= 5; f++) {
        REQUIRE(rb_pil_resize(full, ow, oh, src, w, h, 3, (rb_resample)f) == RB_OK, "%s", rb_last_error());
        for (size_t k = 0; k < sizeof wins / sizeof wins[0]; k++) {
            int x0 = wins[k][0], y0 = wins[k][1], ww = wins[k][2], wh = wins[k][3];
            REQUIRE(rb_pil_resize_window(win, ow, oh, x0, y0, ww, wh, src, w, h, 3, (rb_resample)f) == RB_OK, "%s",
                    rb_last_error());
            int bad = 0;
            for (int y = 0; y < wh; y++)
                bad += memcmp(win + (size_t)y * ww * 3, full + ((size_t)(y0 + y) * ow + x0) * 3, (size_t)ww * 3) != 0;
            CHECK(!bad, "filter %d window %zu: %d rows differ", f, k, bad);
        }
    }
    CHECK(rb_pil_resize_window(win, ow, oh, 140, 0, 20, 1, src, w, h, 3, RB_RESAMPLE_BICUBIC) == RB_ERR_INVALID,
          "window outside the output accepted");
    CHECK(rb_pil_resize(win, 10, 10, src, w, h, 3, RB_RESAMPLE_NEAREST) == RB_ERR_UNSUPPORTED, "NEAREST accepted");
    CHECK(rb_pil_resize(win, 10, 10, src, w, h, 3, (rb_resample)9) == RB_ERR_INVALID, "filter 9 accepted");
    CHECK(rb_pil_resize(win, 0, 10, src, w, h, 3, RB_RESAMPLE_BICUBIC) == RB_ERR_INVALID, "zero width accepted");
    CHECK(rb_pil_resize(win, 10, 10, src, w, h, 5, RB_RESAMPLE_BICUBIC) == RB_ERR_INVALID, "5 channels accepted");
    free(src);
    free(full);
    free(win);
}

/* Golden PNGs resized whole, Pillow checksums:
 *   r = np.asarray(Image.open(path).convert("RGB").resize((ow, oh), filter)); fnv(r.tobytes()) */
static void t_resize_golden_images(void) {
    static const struct {
        const char *path;
        int ow, oh;
        rb_resample f;
        uint32_t fnv;
    } cases[] = {
        {"clip_vision/images/img0_300x200_rgb.png", 336, 224, RB_RESAMPLE_BICUBIC, 0x4cf3ae55u},
        {"clip_vision/images/img1_180x240_rgba.png", 224, 298, RB_RESAMPLE_BICUBIC, 0xfffa1148u},
        {"clip_metrics/images/ref0_256x192_rgb.png", 512, 512, RB_RESAMPLE_BICUBIC, 0x8cca2e29u},
        {"clip_vision/images/img0_300x200_rgb.png", 224, 224, RB_RESAMPLE_BILINEAR, 0xc406e9a4u},
        {"clip_vision/images/img1_180x240_rgba.png", 256, 341, RB_RESAMPLE_BICUBIC, 0x994f72bbu},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *p = t_golden_path(cases[i].path);
        if (!p)
            return;
        rb_image img, out;
        REQUIRE(rb_image_load(&img, p, 3) == RB_OK, "%s", rb_last_error());
        rb_status s = rb_image_resize(&out, &img, cases[i].ow, cases[i].oh, cases[i].f);
        CHECK(s == RB_OK, "%s", rb_last_error());
        if (s == RB_OK) {
            uint32_t got = fnv1a(out.data, (size_t)out.width * out.height * 3);
            CHECK(got == cases[i].fnv, "%s -> %dx%d: fnv %08x, Pillow %08x", cases[i].path, cases[i].ow, cases[i].oh,
                  got, cases[i].fnv);
            rb_image_free(&out);
        }
        rb_image_free(&img);
    }
}

/* transformers' get_resize_output_image_size: (h, w) with new_long = int(size * long / short):
 *   for (w, h, s) in cases: short, long = (w, h) if w <= h else (h, w); nl = int(s * long / short) */
static void t_output_size(void) {
    static const int cases[][5] = {/* w, h, size, out_h, out_w */
                                   {300, 200, 224, 224, 336}, {180, 240, 224, 298, 224}, {1000, 750, 224, 224, 298},
                                   {7, 3, 224, 224, 522},     {512, 512, 224, 224, 224}, {641, 479, 896, 896, 1199},
                                   {200, 300, 256, 384, 256}, {1001, 999, 182, 182, 182}};
    rb_preprocess_config cfg;
    rb_preprocess_config_init(&cfg, RB_PREPROCESS_CLIP);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cfg.shortest_edge = cases[i][2];
        int oh = 0, ow = 0;
        REQUIRE(rb_preprocess_resize_size(&cfg, cases[i][0], cases[i][1], &oh, &ow) == RB_OK, "%s", rb_last_error());
        CHECK(oh == cases[i][3] && ow == cases[i][4], "%dx%d size %d: got h %d w %d, want h %d w %d", cases[i][0],
              cases[i][1], cases[i][2], oh, ow, cases[i][3], cases[i][4]);
    }
    rb_preprocess_config_init(&cfg, RB_PREPROCESS_VIT);
    int oh = 0, ow = 0;
    REQUIRE(rb_preprocess_output_size(&cfg, 300, 200, &oh, &ow) == RB_OK, "%s", rb_last_error());
    CHECK(oh == 224 && ow == 224, "ViT: %dx%d", ow, oh);
}

/* The float32 arithmetic: numpy values of ((u8 * (1/255) in float64 -> float32) - mean32) / std32
 * with OpenAI mean/std for (ch0, ch1, ch2) = (0, 1, 128) and (127, 254, 255):
 *   u = np.array([0, 1, 128, 127, 254, 255], np.uint8).reshape(2, 1, 3)
 *   x = (u.astype(np.float64) * 0.00392156862745098).astype(np.float32); y = (x - mean) / std */
static void t_float_arithmetic(void) {
    uint8_t px[2 * 3] = {0, 1, 128, 127, 254, 255};
    rb_image img = {.width = 1, .height = 2, .channels = 3, .data = px};
    rb_preprocess_config cfg;
    rb_preprocess_config_init(&cfg, RB_PREPROCESS_CLIP);
    cfg.do_resize = 0;
    cfg.do_center_crop = 0;
    float out[6];
    REQUIRE(rb_image_preprocess(&img, &cfg, out) == RB_OK, "%s", rb_last_error());
    /* out is CHW: [c0 y0, c0 y1, c1 y0, c1 y1, c2 y0, c2 y1] */
    const float want[6] = {-0x1.cad1b8p+0f, 0x1.f9c124p-5f, -0x1.bcb1e2p+0f, 0x1.07aa04p+1f, 0x1.5c1b88p-2f,
                           0x1.12acc0p+1f};
    for (int i = 0; i < 6; i++)
        CHECK(out[i] == want[i], "element %d: %a, numpy %a", i, (double)out[i], (double)want[i]);
}

/* Crops larger than the image: transformers pads with zeros at ceil(d / 2), then crops (written here
 * the way center_crop does it, as an independent reference). */
static void t_crop_padding(void) {
    const int W = 5, H = 3;
    uint8_t *src = noise(W, H, 3);
    rb_image img = {.width = W, .height = H, .channels = 3, .data = src};
    rb_preprocess_config cfg;
    rb_preprocess_config_init(&cfg, RB_PREPROCESS_CLIP);
    cfg.do_resize = 0;
    const int crops[][2] = {{6, 8}, {3, 5}, {2, 2}, {7, 4}, {4, 9}}; /* crop h, w */
    for (size_t k = 0; k < sizeof crops / sizeof crops[0]; k++) {
        int ch = crops[k][0], cw = crops[k][1];
        cfg.crop_h = ch;
        cfg.crop_w = cw;
        uint8_t got[9 * 9 * 3];
        REQUIRE(rb_image_preprocess_u8(&img, &cfg, got) == RB_OK, "%s", rb_last_error());
        /* transformers.image_transforms.center_crop */
        int top = (int)floor((H - ch) / 2.0), left = (int)floor((W - cw) / 2.0);
        int nh = ch > H ? ch : H, nw = cw > W ? cw : W;
        int tp = (int)ceil((nh - H) / 2.0), lp = (int)ceil((nw - W) / 2.0);
        int bad = 0;
        for (int y = 0; y < ch; y++)
            for (int x = 0; x < cw; x++)
                for (int c = 0; c < 3; c++) {
                    int ny = y + (top + tp > 0 ? top + tp : 0), nx = x + (left + lp > 0 ? left + lp : 0);
                    int sy = ny - tp, sx = nx - lp;
                    int want = (sy >= 0 && sy < H && sx >= 0 && sx < W) ? src[(sy * W + sx) * 3 + c] : 0;
                    bad += got[(y * cw + x) * 3 + c] != want;
                }
        CHECK(!bad, "crop %dx%d of %dx%d: %d values differ", cw, ch, W, H, bad);
    }
    free(src);
}

/* Gray is replicated and alpha dropped before anything else (PIL convert("RGB")). */
static void t_convert_rgb(void) {
    const int W = 41, H = 29;
    uint8_t *g = noise(W, H, 1), *rgba = noise(W, H, 4);
    uint8_t *g3 = malloc((size_t)W * H * 3), *rgb = malloc((size_t)W * H * 3);
    for (int i = 0; i < W * H; i++)
        for (int c = 0; c < 3; c++) {
            g3[3 * i + c] = g[i];
            rgb[3 * i + c] = rgba[4 * i + c];
        }
    rb_preprocess_config cfg;
    rb_preprocess_config_init(&cfg, RB_PREPROCESS_CLIP);
    cfg.shortest_edge = cfg.crop_h = cfg.crop_w = 20;
    float a[3 * 20 * 20], b[3 * 20 * 20];
    rb_image i1 = {.width = W, .height = H, .channels = 1, .data = g}, i3 = {.width = W, .height = H, .channels = 3, .data = g3};
    REQUIRE(rb_image_preprocess(&i1, &cfg, a) == RB_OK && rb_image_preprocess(&i3, &cfg, b) == RB_OK, "%s",
            rb_last_error());
    CHECK(!memcmp(a, b, sizeof a), "gray differs from replicated RGB");
    rb_image i4 = {.width = W, .height = H, .channels = 4, .data = rgba}, i3b = {.width = W, .height = H, .channels = 3, .data = rgb};
    REQUIRE(rb_image_preprocess(&i4, &cfg, a) == RB_OK && rb_image_preprocess(&i3b, &cfg, b) == RB_OK, "%s",
            rb_last_error());
    CHECK(!memcmp(a, b, sizeof a), "RGBA differs from RGB with alpha dropped");
    cfg.do_convert_rgb = 0;
    CHECK(rb_image_preprocess(&i4, &cfg, a) == RB_ERR_INVALID, "RGBA accepted without do_convert_rgb");
    free(g);
    free(rgba);
    free(g3);
    free(rgb);
}

static const char *write_tmp(const char *name, const char *text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", t_tmpdir(), name);
    FILE *f = fopen(path, "w");
    if (!f)
        return NULL;
    fputs(text, f);
    fclose(f);
    return path;
}

static void t_config_load(void) {
    rb_preprocess_config cfg;
    /* the openai/clip-vit-large-patch14 layout (CLIPFeatureExtractor, integer sizes) */
    const char *p = write_tmp("old_clip.json",
                              "{\"crop_size\": 224, \"do_center_crop\": true, \"do_normalize\": true, \"do_resize\": true,"
                              " \"feature_extractor_type\": \"CLIPFeatureExtractor\", \"image_mean\": [0.48145466,"
                              " 0.4578275, 0.40821073], \"image_std\": [0.26862954, 0.26130258, 0.27577711],"
                              " \"resample\": 3, \"size\": 336}");
    REQUIRE(p && rb_preprocess_config_load(&cfg, p) == RB_OK, "%s", rb_last_error());
    CHECK(cfg.kind == RB_PREPROCESS_CLIP && cfg.shortest_edge == 336 && cfg.crop_h == 224 && cfg.crop_w == 224 &&
              cfg.do_rescale && cfg.rescale_factor == 1.0 / 255 && cfg.resample == RB_RESAMPLE_BICUBIC &&
              cfg.mean[1] == 0.4578275f && cfg.std[2] == 0.27577711f,
          "old CLIP config parsed wrong");
    /* ViT: an integer size is a square, crop keys are not part of the class */
    p = write_tmp("vit.json", "{\"feature_extractor_type\": \"ViTFeatureExtractor\", \"size\": 224, \"resample\": 2,"
                              " \"do_center_crop\": true, \"image_mean\": 0.5, \"image_std\": [0.229, 0.224, 0.225]}");
    REQUIRE(p && rb_preprocess_config_load(&cfg, p) == RB_OK, "%s", rb_last_error());
    CHECK(cfg.kind == RB_PREPROCESS_VIT && cfg.shortest_edge == 0 && cfg.resize_h == 224 && cfg.resize_w == 224 &&
              !cfg.do_center_crop && cfg.resample == RB_RESAMPLE_BILINEAR && cfg.mean[2] == 0.5f &&
              cfg.std[0] == 0.229f,
          "ViT config parsed wrong");
    static const struct {
        const char *json;
        rb_status want;
    } bad[] = {
        {"{\"image_processor_type\": \"SiglipImageProcessor\"}", RB_ERR_UNSUPPORTED},
        {"{\"size\": 224}", RB_ERR_FORMAT},
        {"[1, 2]", RB_ERR_FORMAT},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"size\": -3}", RB_ERR_FORMAT},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"size\": {\"longest_edge\": 3}}", RB_ERR_UNSUPPORTED},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"crop_size\": {\"height\": 3}}", RB_ERR_UNSUPPORTED},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"image_mean\": [1, 2]}", RB_ERR_FORMAT},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"image_std\": [1, 0, 1]}", RB_ERR_FORMAT},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"resample\": 7}", RB_ERR_FORMAT},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"resample\": 0}", RB_ERR_UNSUPPORTED},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"do_resize\": \"yes\"}", RB_ERR_FORMAT},
        {"{\"image_processor_type\": \"ViTImageProcessor\", \"size\": {\"shortest_edge\": 224}}", RB_ERR_FORMAT},
        {"{\"image_processor_type\": \"CLIPImageProcessor\", \"size\": 99999999}", RB_ERR_FORMAT},
        {"{\"image_processor_type\": ", RB_ERR_FORMAT},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = write_tmp("bad.json", bad[i].json);
        REQUIRE(p, "cannot write %s", "bad.json");
        rb_status s = rb_preprocess_config_load(&cfg, p);
        CHECK(s == bad[i].want, "%s: status %d, want %d (%s)", bad[i].json, (int)s, (int)bad[i].want, rb_last_error());
        CHECK(strstr(rb_last_error(), "bad.json") != NULL, "message does not name the file: %s", rb_last_error());
    }
    CHECK(rb_preprocess_config_load(&cfg, "/nonexistent/preprocessor_config.json") == RB_ERR_IO, "missing file");
}

/* ---- golden pixel_values ---- */

/* Preprocesses `images` (paths relative to the golden folder; optionally first resized to 512x512
 * BICUBIC as DreamRelation's inference and REP do) with the config and compares with rows of `tensor`
 * in io.safetensors. The uint8 image is also recovered from the golden floats and must match exactly. */
static void golden_case(const char *config_rel, const rb_preprocess_config *cfg_in, const char *io_rel,
                        const char *tensor, const char *const *images, int n_images, int pre_resize_512) {
    rb_preprocess_config cfg;
    if (config_rel) {
        const char *cp = t_golden_path(config_rel);
        if (!cp)
            return;
        REQUIRE(rb_preprocess_config_load(&cfg, cp) == RB_OK, "%s", rb_last_error());
    } else {
        cfg = *cfg_in;
    }
    const char *iop = t_golden_path(io_rel);
    if (!iop)
        return;
    rb_safetensors st;
    REQUIRE(rb_st_open(&st, iop) == RB_OK, "%s", rb_last_error());
    const rb_tensor *t = rb_st_get(&st, tensor);
    if (!t || t->dtype != RB_F32 || t->ndim != 4 || t->shape[0] < n_images || t->shape[1] != 3) {
        CHECK(0, "%s: %s missing or not F32 [>=%d, 3, H, W]", io_rel, tensor, n_images);
        rb_st_close(&st);
        return;
    }
    int H = (int)t->shape[2], W = (int)t->shape[3];
    size_t n = (size_t)3 * H * W;
    float *out = malloc(n * sizeof(float));
    uint8_t *u8 = malloc(n);
    for (int i = 0; i < n_images; i++) {
        const char *ip = t_golden_path(images[i]);
        rb_image img, big;
        if (!ip || rb_image_load(&img, ip, 3) != RB_OK) {
            CHECK(0, "%s: %s", images[i], rb_last_error());
            continue;
        }
        if (pre_resize_512) {
            rb_status s = rb_image_resize(&big, &img, 512, 512, RB_RESAMPLE_BICUBIC);
            rb_image_free(&img);
            if (s != RB_OK) {
                CHECK(0, "%s", rb_last_error());
                continue;
            }
            img = big;
        }
        int oh, ow;
        rb_status s = rb_preprocess_output_size(&cfg, img.width, img.height, &oh, &ow);
        CHECK(s == RB_OK && oh == H && ow == W, "%s: output %dx%d, golden %dx%d", images[i], ow, oh, W, H);
        if (s == RB_OK && oh == H && ow == W) {
            s = rb_image_preprocess(&img, &cfg, out);
            CHECK(s == RB_OK, "%s", rb_last_error());
            s = s == RB_OK ? rb_image_preprocess_u8(&img, &cfg, u8) : s;
        }
        if (s == RB_OK && oh == H && ow == W) {
            const float *ref = (const float *)t->data + (size_t)i * n;
            double md;
            int ok = t_allclose(out, ref, n, 0, 0, &md); /* observed bit-exact: no tolerance */
            size_t exact = 0, u8bad = 0;
            for (size_t j = 0; j < n; j++) {
                exact += out[j] == ref[j];
                /* round((x * std + mean) * 255) recovers the golden uint8 crop (case.md) */
                int c = (int)(j / ((size_t)H * W));
                size_t pix = j % ((size_t)H * W);
                long v = lround(((double)ref[j] * cfg.std[c] + cfg.mean[c]) * 255.0);
                u8bad += v != u8[pix * 3 + c];
            }
            CHECK(ok, "%s %s[%d]: max |diff| %.3g", io_rel, tensor, i, md);
            CHECK(u8bad == 0, "%s %s[%d]: %zu uint8 values differ from the golden crop", io_rel, tensor, i, u8bad);
            printf("  %s[%d] (%s): max |diff| %.3g, %zu of %zu floats bit-exact, uint8 exact: %s\n", tensor, i,
                   images[i], md, exact, n, u8bad ? "no" : "yes");
        }
        rb_image_free(&img);
    }
    free(out);
    free(u8);
    rb_st_close(&st);
}

static const char *CLIP_IMAGES[] = {"clip_vision/images/img0_300x200_rgb.png", "clip_vision/images/img1_180x240_rgba.png",
                                    "clip_vision/images/img2_224x224_rgb.png"};
static const char *REF_IMAGES[] = {"clip_metrics/images/ref0_256x192_rgb.png", "clip_metrics/images/ref1_160x200_rgb.png"};

static void t_golden_clip_vision(void) {
    golden_case("clip_vision/preprocessor_config.json", NULL, "clip_vision/io.safetensors", "pixel_values",
                CLIP_IMAGES, 3, 0);
}

static void t_golden_clip_metrics(void) {
    /* reference images: .convert("RGB").resize((512, 512)) then CLIPImageProcessor */
    golden_case("clip_metrics/preprocessor_config.json", NULL, "clip_metrics/io.safetensors", "ref_pixel_values",
                REF_IMAGES, 2, 1);
}

static void t_golden_dino(void) {
    golden_case("dino/vit/preprocessor_config.json", NULL, "dino/io.safetensors", "vit.pixel_values", CLIP_IMAGES, 2, 0);
    golden_case("dino/dinov2/preprocessor_config.json", NULL, "dino/io.safetensors", "dinov2.pixel_values",
                CLIP_IMAGES, 2, 0);
}

static void t_golden_local_tokens(void) {
    /* CLIPImageProcessor(size=s, crop_size=s) after the 512x512 resize: s = 224 here (896 officially) and 182 */
    rb_preprocess_config cfg;
    rb_preprocess_config_init(&cfg, RB_PREPROCESS_CLIP);
    golden_case(NULL, &cfg, "local_tokens/io.safetensors", "pixel_values", CLIP_IMAGES, 2, 1);
    cfg.shortest_edge = cfg.crop_h = cfg.crop_w = 182;
    golden_case(NULL, &cfg, "local_tokens/io.safetensors", "pixel_values_extra", CLIP_IMAGES, 2, 1);
}

int main(void) {
    RUN(t_resize_matches_pillow);
    RUN(t_resize_identity);
    RUN(t_resize_window);
    RUN(t_resize_golden_images);
    RUN(t_output_size);
    RUN(t_float_arithmetic);
    RUN(t_crop_padding);
    RUN(t_convert_rgb);
    RUN(t_config_load);
    RUN(t_golden_clip_vision);
    RUN(t_golden_clip_metrics);
    RUN(t_golden_dino);
    RUN(t_golden_local_tokens);
    return t_done();
}
