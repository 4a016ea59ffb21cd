/* Image preprocessing exactly as the reference processors do it (transformers 4.36 CLIPImageProcessor,
 * BitImageProcessor, ViTImageProcessor; Pillow 9.4 resampling), so pixel tensors match the reference
 * bit for bit: the uint8 image after resize and crop is identical, the floats follow numpy's float32
 * arithmetic. docs/preprocessing.md has the details. */
#ifndef RB_MODELS_IMAGE_PROCESSOR_H
#define RB_MODELS_IMAGE_PROCESSOR_H

#include <stdint.h>

#include "core/status.h"
#include "io/image.h"

/* Pillow's numbering (PIL.Image.Resampling), which is what "resample" holds in preprocessor_config.json. */
typedef enum rb_resample {
    RB_RESAMPLE_NEAREST = 0, /* not implemented (Pillow uses its affine transform for it) */
    RB_RESAMPLE_LANCZOS = 1,
    RB_RESAMPLE_BILINEAR = 2,
    RB_RESAMPLE_BICUBIC = 3,
    RB_RESAMPLE_BOX = 4,
    RB_RESAMPLE_HAMMING = 5,
} rb_resample;

/* Pillow's Image.resize((out_w, out_h), filter) of an 8-bit interleaved image with `channels` (1-4)
 * bands, each filtered independently as Pillow does for L and RGB (for RGBA, Pillow premultiplies alpha
 * first; callers drop alpha before resizing, as the processors do). Two separable passes, horizontal
 * then vertical, with Pillow's 22-bit fixed-point coefficients and rounding; a pass whose size does not
 * change is skipped, as Pillow skips it. The result is identical to Pillow's, byte for byte.
 * dst: [out_h, out_w, channels]; src: [src_h, src_w, channels]. */
rb_status rb_pil_resize(uint8_t *dst, int out_w, int out_h, const uint8_t *src, int src_w, int src_h,
                        int channels, rb_resample filter);

/* The window [x0, x0 + win_w) x [y0, y0 + win_h) of the same resize (which must lie inside
 * [0, out_w) x [0, out_h)), computing only what the window needs. dst: [win_h, win_w, channels]. */
rb_status rb_pil_resize_window(uint8_t *dst, int out_w, int out_h, int x0, int y0, int win_w, int win_h,
                               const uint8_t *src, int src_w, int src_h, int channels, rb_resample filter);

/* rb_image convenience: out gets a new image (data from rb_alloc, free with rb_image_free) of the
 * given size with in's channels, e.g. the `.resize((512, 512))` (BICUBIC, Pillow's default) that
 * DreamRelation's inference and the REP metric script apply before the processor. */
rb_status rb_image_resize(rb_image *out, const rb_image *in, int width, int height, rb_resample filter);

typedef enum rb_preprocess_kind {
    RB_PREPROCESS_CLIP = 0, /* CLIPImageProcessor / CLIPFeatureExtractor */
    RB_PREPROCESS_BIT = 1,  /* BitImageProcessor (DINOv2) */
    RB_PREPROCESS_VIT = 2,  /* ViTImageProcessor / ViTFeatureExtractor (DINO v1) */
} rb_preprocess_kind;

/* The settings of preprocessor_config.json. Order of the steps: convert to RGB, resize, center crop,
 * rescale, normalise; output float32 [3, H, W]. */
typedef struct rb_preprocess_config {
    rb_preprocess_kind kind;
    int do_convert_rgb; /* gray is replicated, alpha dropped (PIL convert("RGB")); when 0 the image must be RGB */
    int do_resize;
    int shortest_edge;         /* > 0: resize so the short edge is this (long = int(s * long / short)) */
    int resize_h, resize_w;    /* used when shortest_edge == 0: resize to exactly this */
    rb_resample resample;
    int do_center_crop;
    int crop_h, crop_w;        /* top = floor((H - crop_h) / 2), zero padding where the crop leaves the image */
    int do_rescale;
    double rescale_factor;     /* applied in float64, then cast to float32 (transformers' rescale) */
    int do_normalize;
    float mean[3], std[3];     /* float32, as numpy casts them; (x - mean) / std in float32 */
} rb_preprocess_config;

/* The defaults of the given processor class in transformers 4.36 (CLIP: shortest edge 224, bicubic,
 * crop 224, OpenAI mean/std; BIT: the same; VIT: 224x224 bilinear, no crop, mean = std = 0.5). */
void rb_preprocess_config_init(rb_preprocess_config *cfg, rb_preprocess_kind kind);

/* Reads a transformers preprocessor_config.json: the class from image_processor_type (or
 * feature_extractor_type; other classes are RB_ERR_UNSUPPORTED), its defaults, then every key present.
 * An integer "size" means the shortest edge for CLIP/BIT and a square for VIT, as in transformers. */
rb_status rb_preprocess_config_load(rb_preprocess_config *cfg, const char *path);

/* Output height and width for an input of in_w x in_h (after resize and crop). */
rb_status rb_preprocess_output_size(const rb_preprocess_config *cfg, int in_w, int in_h, int *out_h, int *out_w);

/* The resized (not yet cropped) size, from transformers' get_resize_output_image_size. */
rb_status rb_preprocess_resize_size(const rb_preprocess_config *cfg, int in_w, int in_h, int *out_h, int *out_w);

/* The uint8 image after convert/resize/crop: dst [H, W, 3] with H, W from rb_preprocess_output_size. */
rb_status rb_image_preprocess_u8(const rb_image *img, const rb_preprocess_config *cfg, uint8_t *dst);

/* The full processor: out float32 [3, H, W] (CHW) with H, W from rb_preprocess_output_size. */
rb_status rb_image_preprocess(const rb_image *img, const rb_preprocess_config *cfg, float *out);

#endif
