/* Image preprocessing as transformers' image processors do it, with Pillow's resampler re-implemented
 * exactly (src/libImaging/Resample.c of Pillow 9.4: precompute_coeffs, normalize_coeffs_8bpc,
 * ImagingResampleHorizontal/Vertical_8bpc, ImagingResampleInner). Every floating-point expression of
 * the coefficient computation is written in the same order as Pillow's, because the 22-bit rounding
 * of the coefficients turns any difference in the last bit into a possible one-level pixel error. */
#include "image_processor.h"

#include <jansson.h>
#include <math.h>
#include <string.h>

#include "core/mem.h"
#include "io/json.h"

/* Pillow is built without FMA contraction (Debian: x86-64 baseline, GNU C); a fused multiply-add in
 * the filter polynomials or in `center` would change coefficients in the last bit. -std=c11 already
 * means -ffp-contract=off for GCC; this keeps it so under other flags and compilers. */
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* ---- Pillow's filters (double precision, Pillow's expressions) ---- */

static double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

static double bilinear_filter(double x) {
    if (x < 0.0)
        x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static double hamming_filter(double x) {
    if (x < 0.0)
        x = -x;
    if (x == 0.0)
        return 1.0;
    if (x >= 1.0)
        return 0.0;
    x = x * M_PI;
    return sin(x) / x * (0.54f + 0.46f * cos(x)); /* float literals, as in Pillow */
}

static double bicubic_filter(double x) {
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

static double sinc_filter(double x) {
    if (x == 0.0)
        return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double lanczos_filter(double x) {
    if (-3.0 <= x && x < 3.0)
        return sinc_filter(x) * sinc_filter(x / 3);
    return 0.0;
}

typedef struct pil_filter {
    double (*fn)(double);
    double support;
    const char *name;
} pil_filter;

static const pil_filter *filter_of(rb_resample r) {
    static const pil_filter box = {box_filter, 0.5, "BOX"}, bilinear = {bilinear_filter, 1.0, "BILINEAR"},
                            hamming = {hamming_filter, 1.0, "HAMMING"}, bicubic = {bicubic_filter, 2.0, "BICUBIC"},
                            lanczos = {lanczos_filter, 3.0, "LANCZOS"};
    switch (r) {
    case RB_RESAMPLE_BOX: return &box;
    case RB_RESAMPLE_BILINEAR: return &bilinear;
    case RB_RESAMPLE_HAMMING: return &hamming;
    case RB_RESAMPLE_BICUBIC: return &bicubic;
    case RB_RESAMPLE_LANCZOS: return &lanczos;
    default: return NULL;
    }
}

/* 8 bits of result + 2 bits of headroom for filters with negative lobes, in a 32-bit int. */
#define PRECISION_BITS (32 - 8 - 2)

/* Pillow's clip8: a table lookup of (ss >> PRECISION_BITS) saturating to [0, 255]. */
static inline uint8_t clip8(int64_t ss) {
    int64_t v = ss >> PRECISION_BITS; /* arithmetic shift (floor), as on every compiler Pillow supports */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* One 1-D pass: for output index xx, source taps bounds[2xx] .. + bounds[2xx+1], fixed-point weights
 * k[xx * ksize ...]. */
typedef struct pil_coeffs {
    int ksize;
    int *bounds;
    int32_t *k;
} pil_coeffs;

static void coeffs_free(pil_coeffs *c) {
    rb_free(c->bounds);
    rb_free(c->k);
    c->bounds = NULL;
    c->k = NULL;
}

/* precompute_coeffs + normalize_coeffs_8bpc. in0/in1 are floats as in Pillow's box argument. */
static rb_status coeffs_make(pil_coeffs *c, int in_size, float in0, float in1, int out_size, const pil_filter *f) {
    memset(c, 0, sizeof *c);
    double filterscale, scale;
    filterscale = scale = (double)(in1 - in0) / out_size;
    if (filterscale < 1.0)
        filterscale = 1.0;
    double support = f->support * filterscale;
    double ksz = ceil(support) * 2 + 1;
    if (!(ksz <= 1 << 20))
        return rb_error(RB_ERR_INVALID, "resize %d -> %d: filter support too large", in_size, out_size);
    int ksize = (int)ceil(support) * 2 + 1;
    size_t nk, nkb, nb;
    if (!rb_mul_size((size_t)out_size, (size_t)ksize, &nk) || !rb_mul_size(nk, sizeof(int32_t), &nkb) ||
        !rb_mul_size((size_t)out_size, 2 * sizeof(int), &nb))
        return rb_error(RB_ERR_INVALID, "resize %d -> %d: coefficient table too large", in_size, out_size);
    double *w = rb_alloc((size_t)ksize * sizeof(double), "resize coefficients");
    c->k = rb_alloc(nkb, "resize coefficients");
    c->bounds = rb_alloc(nb, "resize bounds");
    if (!w || !c->k || !c->bounds) {
        rb_free(w);
        coeffs_free(c);
        return RB_ERR_OOM;
    }
    double inv_filterscale = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        int xmin = (int)(center - support + 0.5); /* truncation toward zero, as Pillow */
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        if (xmax < 0) /* cannot happen for in0 = 0, in1 = in_size; keeps the loops below safe */
            xmax = 0;
        int x;
        for (x = 0; x < xmax; x++) {
            double wx = f->fn((x + xmin - center + 0.5) * inv_filterscale);
            w[x] = wx;
            ww += wx;
        }
        if (ww != 0.0)
            for (x = 0; x < xmax; x++)
                w[x] /= ww;
        for (; x < ksize; x++)
            w[x] = 0;
        int32_t *k = c->k + (size_t)xx * ksize;
        for (x = 0; x < ksize; x++) /* normalize_coeffs_8bpc: round half away from zero */
            k[x] = w[x] < 0 ? (int32_t)(-0.5 + w[x] * (1 << PRECISION_BITS))
                            : (int32_t)(0.5 + w[x] * (1 << PRECISION_BITS));
        c->bounds[2 * xx] = xmin;
        c->bounds[2 * xx + 1] = xmax;
    }
    rb_free(w);
    c->ksize = ksize;
    return RB_OK;
}

/* Horizontal pass over source rows [y_first, y_last), output columns [x0, x0 + win_w).
 * tmp: [y_last - y_first, win_w, C] (written). */
static void resample_horizontal(uint8_t *tmp, const uint8_t *src, int src_w, int C, int y_first, int y_last,
                                int x0, int win_w, const pil_coeffs *hc) {
    size_t work = (size_t)(y_last - y_first) * win_w * C * hc->ksize;
#pragma omp parallel for schedule(static) if (work > (1u << 20))
    for (int y = y_first; y < y_last; y++) {
        const uint8_t *line = src + (size_t)y * src_w * C;
        uint8_t *out = tmp + (size_t)(y - y_first) * win_w * C;
        for (int xw = 0; xw < win_w; xw++) {
            int xx = x0 + xw;
            int xmin = hc->bounds[2 * xx], n = hc->bounds[2 * xx + 1];
            const int32_t *k = hc->k + (size_t)xx * hc->ksize;
            const uint8_t *p = line + (size_t)xmin * C;
            for (int ch = 0; ch < C; ch++) {
                int64_t ss = 1 << (PRECISION_BITS - 1);
                for (int x = 0; x < n; x++)
                    ss += (int64_t)p[x * C + ch] * k[x];
                out[xw * C + ch] = clip8(ss);
            }
        }
    }
}

/* Vertical pass: output rows [y0, y0 + win_h) from tmp rows (tmp row 0 = source row y_first).
 * dst: [win_h, row_len] with row_len = win_w * C (written). */
static void resample_vertical(uint8_t *dst, const uint8_t *tmp, int row_len, int y0, int win_h, int y_first,
                              const pil_coeffs *vc) {
    enum { CHUNK = 256 };
    size_t work = (size_t)win_h * row_len * vc->ksize;
#pragma omp parallel for schedule(static) if (work > (1u << 20))
    for (int yw = 0; yw < win_h; yw++) {
        int yy = y0 + yw;
        int ymin = vc->bounds[2 * yy] - y_first, n = vc->bounds[2 * yy + 1];
        const int32_t *k = vc->k + (size_t)yy * vc->ksize;
        for (int i0 = 0; i0 < row_len; i0 += CHUNK) {
            int m = row_len - i0 < CHUNK ? row_len - i0 : CHUNK;
            int64_t acc[CHUNK];
            for (int i = 0; i < m; i++)
                acc[i] = 1 << (PRECISION_BITS - 1);
            for (int y = 0; y < n; y++) {
                const uint8_t *row = tmp + (size_t)(ymin + y) * row_len + i0;
                int64_t ky = k[y];
                for (int i = 0; i < m; i++)
                    acc[i] += row[i] * ky;
            }
            uint8_t *out = dst + (size_t)yw * row_len + i0;
            for (int i = 0; i < m; i++)
                out[i] = clip8(acc[i]);
        }
    }
}

rb_status rb_pil_resize_window(uint8_t *dst, int out_w, int out_h, int x0, int y0, int win_w, int win_h,
                               const uint8_t *src, int src_w, int src_h, int channels, rb_resample filter) {
    if (!dst || !src)
        return rb_error(RB_ERR_INVALID, "resize: NULL image buffer");
    if (src_w <= 0 || src_h <= 0 || out_w <= 0 || out_h <= 0)
        return rb_error(RB_ERR_INVALID, "resize: sizes must be positive (%dx%d -> %dx%d)", src_w, src_h, out_w,
                        out_h);
    if (channels < 1 || channels > 4)
        return rb_error(RB_ERR_INVALID, "resize: %d channels (1-4 supported)", channels);
    if (win_w <= 0 || win_h <= 0 || x0 < 0 || y0 < 0 || x0 > out_w - win_w || y0 > out_h - win_h)
        return rb_error(RB_ERR_INVALID, "resize: window %dx%d at (%d, %d) outside the %dx%d output", win_w, win_h,
                        x0, y0, out_w, out_h);
    const pil_filter *f = filter_of(filter);
    if (!f)
        return rb_error(filter == RB_RESAMPLE_NEAREST ? RB_ERR_UNSUPPORTED : RB_ERR_INVALID,
                        "resize: resample filter %d %s", (int)filter,
                        filter == RB_RESAMPLE_NEAREST ? "(NEAREST) is not implemented" : "is not a PIL filter");
    size_t C = (size_t)channels, row_len;
    if (!rb_mul_size((size_t)win_w, C, &row_len) || row_len > INT32_MAX)
        return rb_error(RB_ERR_INVALID, "resize: window too wide");

    /* Pillow compares the box with the output size; with the full-image box this is a size change. */
    int need_h = out_w != src_w, need_v = out_h != src_h;
    pil_coeffs hc = {0}, vc = {0};
    int y_first = y0, y_last = y0 + win_h; /* source rows the window needs */
    rb_status s = RB_OK;
    if (need_v) {
        RB_TRY(coeffs_make(&vc, src_h, 0.0f, (float)src_h, out_h, f));
        y_first = vc.bounds[2 * y0];
        y_last = vc.bounds[2 * (y0 + win_h - 1)] + vc.bounds[2 * (y0 + win_h - 1) + 1];
        if (y_last <= y_first) /* degenerate: no source rows; Pillow would output the rounding offset only */
            y_last = y_first + 1;
    }
    uint8_t *tmp = dst; /* without a vertical pass the horizontal pass writes the result directly */
    if (need_v) {
        size_t nt;
        if (!rb_mul_size((size_t)(y_last - y_first), row_len, &nt)) {
            coeffs_free(&vc);
            return rb_error(RB_ERR_INVALID, "resize: intermediate image too large");
        }
        tmp = rb_alloc(nt, "resize intermediate");
        if (!tmp) {
            coeffs_free(&vc);
            return RB_ERR_OOM;
        }
    }
    if (need_h) {
        s = coeffs_make(&hc, src_w, 0.0f, (float)src_w, out_w, f);
        if (s == RB_OK)
            resample_horizontal(tmp, src, src_w, channels, y_first, y_last, x0, win_w, &hc);
        coeffs_free(&hc);
    } else {
        for (int y = y_first; y < y_last; y++)
            memcpy(tmp + (size_t)(y - y_first) * row_len, src + ((size_t)y * src_w + x0) * C, row_len);
    }
    if (need_v) {
        if (s == RB_OK)
            resample_vertical(dst, tmp, (int)row_len, y0, win_h, y_first, &vc);
        rb_free(tmp);
        coeffs_free(&vc);
    }
    return s;
}

rb_status rb_pil_resize(uint8_t *dst, int out_w, int out_h, const uint8_t *src, int src_w, int src_h, int channels,
                        rb_resample filter) {
    return rb_pil_resize_window(dst, out_w, out_h, 0, 0, out_w, out_h, src, src_w, src_h, channels, filter);
}

static rb_status check_image(const rb_image *img) {
    if (!img || !img->data || img->width <= 0 || img->height <= 0)
        return rb_error(RB_ERR_INVALID, "image: empty or NULL");
    if (img->channels != 1 && img->channels != 3 && img->channels != 4)
        return rb_error(RB_ERR_INVALID, "image: %d channels (1, 3 or 4 expected)", img->channels);
    if ((int64_t)img->width * img->height > RB_IMAGE_MAX_PIXELS)
        return rb_error(RB_ERR_INVALID, "image: %dx%d is over the pixel limit", img->width, img->height);
    return RB_OK;
}

rb_status rb_image_resize(rb_image *out, const rb_image *in, int width, int height, rb_resample filter) {
    if (!out)
        return rb_error(RB_ERR_INVALID, "resize: NULL output image");
    memset(out, 0, sizeof *out);
    RB_TRY(check_image(in));
    if (width <= 0 || height <= 0 || (int64_t)width * height > RB_IMAGE_MAX_PIXELS)
        return rb_error(RB_ERR_INVALID, "resize: bad output size %dx%d", width, height);
    size_t n = (size_t)width * height * in->channels;
    uint8_t *data = rb_alloc(n, "resized image");
    if (!data)
        return RB_ERR_OOM;
    rb_status s = rb_pil_resize(data, width, height, in->data, in->width, in->height, in->channels, filter);
    if (s != RB_OK) {
        rb_free(data);
        return s;
    }
    *out = *in;
    out->width = width;
    out->height = height;
    out->data = data;
    return RB_OK;
}

/* ---- processor configuration ---- */

static const float OPENAI_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float OPENAI_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

void rb_preprocess_config_init(rb_preprocess_config *cfg, rb_preprocess_kind kind) {
    memset(cfg, 0, sizeof *cfg);
    cfg->kind = kind;
    cfg->do_convert_rgb = 1;
    cfg->do_resize = 1;
    cfg->do_rescale = 1;
    cfg->rescale_factor = 1.0 / 255.0;
    cfg->do_normalize = 1;
    if (kind == RB_PREPROCESS_VIT) {
        /* ViTImageProcessor: 224x224 BILINEAR, no crop, IMAGENET_STANDARD mean = std = 0.5 */
        cfg->resize_h = cfg->resize_w = 224;
        cfg->resample = RB_RESAMPLE_BILINEAR;
        for (int c = 0; c < 3; c++)
            cfg->mean[c] = cfg->std[c] = 0.5f;
    } else {
        /* CLIPImageProcessor and BitImageProcessor share their defaults */
        cfg->shortest_edge = 224;
        cfg->resample = RB_RESAMPLE_BICUBIC;
        cfg->do_center_crop = 1;
        cfg->crop_h = cfg->crop_w = 224;
        memcpy(cfg->mean, OPENAI_MEAN, sizeof cfg->mean);
        memcpy(cfg->std, OPENAI_STD, sizeof cfg->std);
    }
}

#define MAX_EDGE 65536

static rb_status get_bool(json_t *root, const char *key, int *out, const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return RB_OK;
    if (!json_is_boolean(v))
        return rb_error(RB_ERR_FORMAT, "%s: \"%s\" is not a boolean", path, key);
    *out = json_is_true(v);
    return RB_OK;
}

static rb_status get_edge(json_t *v, const char *what, int *out, const char *path) {
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : -1;
    if (n <= 0 || n > MAX_EDGE)
        return rb_error(RB_ERR_FORMAT, "%s: %s must be an integer in 1..%d", path, what, MAX_EDGE);
    *out = (int)n;
    return RB_OK;
}

/* {"height": h, "width": w} (both required) */
static rb_status get_hw(json_t *v, const char *key, int *h, int *w, const char *path) {
    json_t *jh = json_object_get(v, "height"), *jw = json_object_get(v, "width");
    if (!jh || !jw)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: \"%s\" needs \"height\" and \"width\" (or \"shortest_edge\")", path,
                        key);
    RB_TRY(get_edge(jh, "height", h, path));
    return get_edge(jw, "width", w, path);
}

static rb_status get_size(json_t *root, rb_preprocess_config *cfg, const char *path) {
    json_t *v = json_object_get(root, "size");
    if (!v || json_is_null(v))
        return RB_OK;
    if (json_is_integer(v)) { /* get_size_dict: CLIP/Bit pass default_to_square=False, ViT True */
        int n = 0;
        RB_TRY(get_edge(v, "size", &n, path));
        if (cfg->kind == RB_PREPROCESS_VIT) {
            cfg->shortest_edge = 0;
            cfg->resize_h = cfg->resize_w = n;
        } else {
            cfg->shortest_edge = n;
        }
        return RB_OK;
    }
    if (!json_is_object(v))
        return rb_error(RB_ERR_FORMAT, "%s: \"size\" is neither an integer nor an object", path);
    if (json_object_get(v, "longest_edge") || json_object_get(v, "max_size"))
        return rb_error(RB_ERR_UNSUPPORTED, "%s: \"size\" with a longest edge is not supported", path);
    json_t *se = json_object_get(v, "shortest_edge");
    if (se) {
        if (cfg->kind == RB_PREPROCESS_VIT) /* ViTImageProcessor.resize raises on it */
            return rb_error(RB_ERR_FORMAT, "%s: ViTImageProcessor needs size {height, width}", path);
        return get_edge(se, "size.shortest_edge", &cfg->shortest_edge, path);
    }
    RB_TRY(get_hw(v, "size", &cfg->resize_h, &cfg->resize_w, path));
    cfg->shortest_edge = 0;
    return RB_OK;
}

static rb_status get_crop(json_t *root, rb_preprocess_config *cfg, const char *path) {
    json_t *v = json_object_get(root, "crop_size");
    if (!v || json_is_null(v))
        return RB_OK;
    if (json_is_integer(v)) { /* get_size_dict(crop_size, default_to_square=True) */
        RB_TRY(get_edge(v, "crop_size", &cfg->crop_h, path));
        cfg->crop_w = cfg->crop_h;
        return RB_OK;
    }
    if (!json_is_object(v))
        return rb_error(RB_ERR_FORMAT, "%s: \"crop_size\" is neither an integer nor an object", path);
    return get_hw(v, "crop_size", &cfg->crop_h, &cfg->crop_w, path);
}

/* A number (replicated, as transformers does) or a list of 3; stored as float32 like numpy's cast. */
static rb_status get_triple(json_t *root, const char *key, float out[3], const char *path) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return RB_OK;
    if (json_is_number(v)) {
        for (int c = 0; c < 3; c++)
            out[c] = (float)json_number_value(v);
        return RB_OK;
    }
    if (!json_is_array(v) || json_array_size(v) != 3)
        return rb_error(RB_ERR_FORMAT, "%s: \"%s\" must be a number or a list of 3 numbers", path, key);
    for (int c = 0; c < 3; c++) {
        json_t *e = json_array_get(v, (size_t)c);
        if (!json_is_number(e))
            return rb_error(RB_ERR_FORMAT, "%s: \"%s\"[%d] is not a number", path, key, c);
        out[c] = (float)json_number_value(e);
    }
    return RB_OK;
}

static rb_status parse_config(json_t *root, rb_preprocess_config *cfg, const char *path) {
    json_t *type = json_object_get(root, "image_processor_type");
    if (!type)
        type = json_object_get(root, "feature_extractor_type");
    if (!json_is_string(type))
        return rb_error(RB_ERR_FORMAT, "%s: no image_processor_type / feature_extractor_type", path);
    const char *t = json_string_value(type);
    rb_preprocess_kind kind;
    if (!strcmp(t, "CLIPImageProcessor") || !strcmp(t, "CLIPFeatureExtractor"))
        kind = RB_PREPROCESS_CLIP;
    else if (!strcmp(t, "BitImageProcessor"))
        kind = RB_PREPROCESS_BIT;
    else if (!strcmp(t, "ViTImageProcessor") || !strcmp(t, "ViTFeatureExtractor"))
        kind = RB_PREPROCESS_VIT;
    else
        return rb_error(RB_ERR_UNSUPPORTED, "%s: image processor \"%s\" is not supported", path, t);
    rb_preprocess_config_init(cfg, kind);

    RB_TRY(get_bool(root, "do_resize", &cfg->do_resize, path));
    RB_TRY(get_bool(root, "do_rescale", &cfg->do_rescale, path));
    RB_TRY(get_bool(root, "do_normalize", &cfg->do_normalize, path));
    if (kind != RB_PREPROCESS_VIT) { /* ViTImageProcessor has neither; extra keys are ignored by it */
        RB_TRY(get_bool(root, "do_center_crop", &cfg->do_center_crop, path));
        RB_TRY(get_bool(root, "do_convert_rgb", &cfg->do_convert_rgb, path));
        RB_TRY(get_crop(root, cfg, path));
    }
    RB_TRY(get_size(root, cfg, path));
    json_t *r = json_object_get(root, "resample");
    if (r && !json_is_null(r)) {
        json_int_t n = json_is_integer(r) ? json_integer_value(r) : -1;
        if (n < 0 || n > 5)
            return rb_error(RB_ERR_FORMAT, "%s: \"resample\" must be a PIL filter number 0..5", path);
        cfg->resample = (rb_resample)n;
    }
    json_t *rf = json_object_get(root, "rescale_factor");
    if (rf && !json_is_null(rf)) {
        if (!json_is_number(rf))
            return rb_error(RB_ERR_FORMAT, "%s: \"rescale_factor\" is not a number", path);
        cfg->rescale_factor = json_number_value(rf);
    }
    RB_TRY(get_triple(root, "image_mean", cfg->mean, path));
    RB_TRY(get_triple(root, "image_std", cfg->std, path));
    if (cfg->do_normalize)
        for (int c = 0; c < 3; c++)
            if (!(cfg->std[c] != 0.0f) || !isfinite(cfg->std[c]) || !isfinite(cfg->mean[c]))
                return rb_error(RB_ERR_FORMAT, "%s: image_std must be finite and non-zero", path);
    if (cfg->do_resize && cfg->resample == RB_RESAMPLE_NEAREST)
        return rb_error(RB_ERR_UNSUPPORTED, "%s: resample 0 (NEAREST) is not implemented", path);
    return RB_OK;
}

rb_status rb_preprocess_config_load(rb_preprocess_config *cfg, const char *path) {
    if (!cfg || !path)
        return rb_error(RB_ERR_INVALID, "preprocessor config: NULL argument");
    json_t *root;
    RB_TRY(rb_json_load_object(path, &root));
    rb_preprocess_config tmp;
    rb_status s = parse_config(root, &tmp, path);
    json_decref(root);
    if (s == RB_OK)
        *cfg = tmp;
    return s;
}

/* ---- the processor ---- */

static rb_status check_config(const rb_preprocess_config *cfg) {
    if (!cfg)
        return rb_error(RB_ERR_INVALID, "preprocess: NULL config");
    if (cfg->do_resize) {
        if (cfg->shortest_edge < 0 || cfg->shortest_edge > MAX_EDGE ||
            (cfg->shortest_edge == 0 && (cfg->resize_h <= 0 || cfg->resize_w <= 0 || cfg->resize_h > MAX_EDGE ||
                                         cfg->resize_w > MAX_EDGE)))
            return rb_error(RB_ERR_INVALID, "preprocess: bad resize size");
        if (!filter_of(cfg->resample))
            return rb_error(RB_ERR_UNSUPPORTED, "preprocess: resample filter %d is not implemented", (int)cfg->resample);
    }
    if (cfg->do_center_crop && (cfg->crop_h <= 0 || cfg->crop_w <= 0 || cfg->crop_h > MAX_EDGE || cfg->crop_w > MAX_EDGE))
        return rb_error(RB_ERR_INVALID, "preprocess: bad crop size %dx%d", cfg->crop_w, cfg->crop_h);
    return RB_OK;
}

rb_status rb_preprocess_resize_size(const rb_preprocess_config *cfg, int in_w, int in_h, int *out_h, int *out_w) {
    RB_TRY(check_config(cfg));
    if (in_w <= 0 || in_h <= 0)
        return rb_error(RB_ERR_INVALID, "preprocess: bad input size %dx%d", in_w, in_h);
    int h = in_h, w = in_w;
    if (cfg->do_resize && cfg->shortest_edge > 0) {
        /* transformers' get_resize_output_image_size(default_to_square=False):
         * new_long = int(size * long / short), a float64 division truncated toward zero */
        int sh = w <= h ? w : h, lo = w <= h ? h : w;
        double nl = (double)((int64_t)cfg->shortest_edge * lo) / sh;
        if (!(nl < (double)RB_IMAGE_MAX_PIXELS / cfg->shortest_edge))
            return rb_error(RB_ERR_INVALID, "preprocess: %dx%d resized to short edge %d is too large", in_w, in_h,
                            cfg->shortest_edge);
        int new_long = (int)nl;
        if (w <= h) {
            h = new_long;
            w = cfg->shortest_edge;
        } else {
            h = cfg->shortest_edge;
            w = new_long;
        }
    } else if (cfg->do_resize) {
        h = cfg->resize_h;
        w = cfg->resize_w;
    }
    *out_h = h;
    *out_w = w;
    return RB_OK;
}

rb_status rb_preprocess_output_size(const rb_preprocess_config *cfg, int in_w, int in_h, int *out_h, int *out_w) {
    RB_TRY(rb_preprocess_resize_size(cfg, in_w, in_h, out_h, out_w));
    if (cfg->do_center_crop) {
        *out_h = cfg->crop_h;
        *out_w = cfg->crop_w;
    }
    return RB_OK;
}

static int floor_div2(int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

rb_status rb_image_preprocess_u8(const rb_image *img, const rb_preprocess_config *cfg, uint8_t *dst) {
    RB_TRY(check_image(img));
    RB_TRY(check_config(cfg));
    if (!dst)
        return rb_error(RB_ERR_INVALID, "preprocess: NULL output");
    if (img->channels != 3 && !cfg->do_convert_rgb)
        return rb_error(RB_ERR_INVALID, "preprocess: image has %d channels and do_convert_rgb is off", img->channels);
    int W = img->width, H = img->height, rh, rw, oh, ow;
    RB_TRY(rb_preprocess_resize_size(cfg, W, H, &rh, &rw));
    RB_TRY(rb_preprocess_output_size(cfg, W, H, &oh, &ow));

    /* 1. PIL convert("RGB"): gray replicated, alpha dropped */
    const uint8_t *rgb = img->data;
    uint8_t *conv = NULL;
    size_t npix = (size_t)W * H;
    if (img->channels != 3) {
        conv = rb_alloc(npix * 3, "RGB conversion");
        if (!conv)
            return RB_ERR_OOM;
        const uint8_t *p = img->data;
        for (size_t i = 0; i < npix; i++)
            for (int c = 0; c < 3; c++)
                conv[3 * i + c] = img->channels == 1 ? p[i] : p[4 * i + c];
        rgb = conv;
    }

    /* 2. center crop of the (virtually) resized rh x rw image: crop pixel (y, x) is resized pixel
     * (y + top, x + left) with top = floor((rh - oh) / 2) -- transformers' (h - crop) // 2, and its
     * zero padding (placed at ceil(d / 2)) lands on the same offset when the image is smaller. Only the
     * part of the resized image inside the crop is computed. */
    int top = cfg->do_center_crop ? floor_div2(rh - oh) : 0;
    int left = cfg->do_center_crop ? floor_div2(rw - ow) : 0;
    int wy0 = top > 0 ? top : 0, wx0 = left > 0 ? left : 0;
    int wy1 = top + oh < rh ? top + oh : rh, wx1 = left + ow < rw ? left + ow : rw;
    rb_status s = RB_OK;
    int full = wy0 == top && wx0 == left && wy1 == top + oh && wx1 == left + ow;
    if (!full)
        memset(dst, 0, (size_t)oh * ow * 3);
    if (wy1 > wy0 && wx1 > wx0) {
        int win_h = wy1 - wy0, win_w = wx1 - wx0;
        uint8_t *win = full ? dst : rb_alloc((size_t)win_h * win_w * 3, "crop window");
        if (!win) {
            rb_free(conv);
            return RB_ERR_OOM;
        }
        if (cfg->do_resize)
            s = rb_pil_resize_window(win, rw, rh, wx0, wy0, win_w, win_h, rgb, W, H, 3, cfg->resample);
        else
            for (int y = 0; y < win_h; y++)
                memcpy(win + (size_t)y * win_w * 3, rgb + ((size_t)(wy0 + y) * W + wx0) * 3, (size_t)win_w * 3);
        if (!full) {
            for (int y = 0; y < win_h && s == RB_OK; y++)
                memcpy(dst + ((size_t)(wy0 - top + y) * ow + (wx0 - left)) * 3, win + (size_t)y * win_w * 3,
                       (size_t)win_w * 3);
            rb_free(win);
        }
    }
    rb_free(conv);
    return s;
}

rb_status rb_image_preprocess(const rb_image *img, const rb_preprocess_config *cfg, float *out) {
    if (!out)
        return rb_error(RB_ERR_INVALID, "preprocess: NULL output");
    RB_TRY(check_image(img));
    int oh, ow;
    RB_TRY(rb_preprocess_output_size(cfg, img->width, img->height, &oh, &ow));
    size_t n = (size_t)oh * ow;
    uint8_t *u8 = rb_alloc(n * 3, "preprocessed image");
    if (!u8)
        return RB_ERR_OOM;
    rb_status s = rb_image_preprocess_u8(img, cfg, u8);
    if (s != RB_OK) {
        rb_free(u8);
        return s;
    }
    /* 3. rescale then normalise, per value: transformers' rescale multiplies in float64 and casts to
     * float32; normalize computes (x - mean) / std in float32 with float32 mean/std. A table per
     * channel holds the result for each of the 256 levels. */
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) {
            float x = cfg->do_rescale ? (float)((double)v * cfg->rescale_factor) : (float)v;
            if (cfg->do_normalize)
                x = (x - cfg->mean[c]) / cfg->std[c];
            lut[c][v] = x;
        }
    for (int c = 0; c < 3; c++) {
        float *o = out + (size_t)c * n;
        const float *l = lut[c];
        for (size_t i = 0; i < n; i++)
            o[i] = l[u8[3 * i + c]];
    }
    rb_free(u8);
    return RB_OK;
}
