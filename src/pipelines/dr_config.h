/* DreamRelation's inference config (config/example_two_objects.yaml of the official repository):
 *   lora_weights: path/to/pytorch_lora_weights.safetensors
 *   class_names: ["cat", "dog"]            (unused by the official inference, ignored)
 *   prompt: "A cat is hugging a dog."
 *   images_path: [cat.jpg, dog.jpg]         (one per subject, in the order of boxes and phrases)
 *   boxes: [[[x0, y0, x1, y1], ...]]        (batch of 1, normalised to [0, 1])
 *   phrases: [["cat", "dog"]]
 * Relative paths are taken from the working directory as the official script does, or else from the
 * YAML file's folder. */
#ifndef RB_PIPELINES_DR_CONFIG_H
#define RB_PIPELINES_DR_CONFIG_H

#include "pipelines/generate.h"

typedef struct rb_dr_config {
    char prompt[4096];
    char lora[4096];
    char images[RB_MAX_SUBJECTS][4096];
    char phrases[RB_MAX_SUBJECTS][256];
} rb_dr_config;

/* Fills p's prompt, subjects (images, phrases, boxes) and LoRA (scale 1) from the YAML file; the
 * strings live in `store`, which must outlive p's use. */
rb_status rb_dr_config_load(const char *path, rb_dr_config *store, rb_gen_params *p);

#endif
