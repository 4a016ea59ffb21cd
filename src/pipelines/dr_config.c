#include "dr_config.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "io/yamldoc.h"

/* `rel` as given when it exists (the official script's behaviour), else next to the YAML file. */
static void resolve(char *out, size_t n, const char *yaml_path, const char *rel) {
    const char *slash = strrchr(yaml_path, '/');
    if (rel[0] == '/' || access(rel, F_OK) == 0 || !slash)
        snprintf(out, n, "%s", rel);
    else
        snprintf(out, n, "%.*s/%s", (int)(slash - yaml_path), yaml_path, rel);
}

/* Nesting depth of a list along its first items ([[1, 2]] -> 2). */
static int depth(rb_yaml *y, yaml_node_t *n) {
    int d = 0;
    for (; rb_yaml_len(n) > 0 && d < 8; n = rb_yaml_item(y, n, 0))
        d++;
    return d;
}

/* The official files wrap boxes and phrases in a batch of one ([[[x0, ...], ...]], [["cat", "dog"]]);
 * unwraps that level when present, so plain lists are accepted too. */
static yaml_node_t *unbatch(rb_yaml *y, yaml_node_t *n, int leaf_depth) {
    return depth(y, n) > leaf_depth && rb_yaml_len(n) == 1 ? rb_yaml_item(y, n, 0) : n;
}

/* The official config's fields; anything else is most likely a typo and an error, not ignored. */
static rb_status check_keys(rb_yaml *y, yaml_node_t *root, const char *path) {
    static const char *const known[] = {"lora_weights", "class_names", "prompt", "images_path", "boxes", "phrases"};
    if (!root || root->type != YAML_MAPPING_NODE)
        return rb_error(RB_ERR_FORMAT, "%s: not a YAML mapping of fields", path);
    for (yaml_node_pair_t *pr = root->data.mapping.pairs.start; pr < root->data.mapping.pairs.top; pr++) {
        const char *k = rb_yaml_str(yaml_document_get_node(&y->doc, pr->key));
        int ok = 0;
        for (size_t i = 0; k && i < sizeof known / sizeof *known; i++)
            ok |= !strcmp(k, known[i]);
        if (!ok)
            return rb_error(RB_ERR_FORMAT, "%s: unknown field '%s' (DreamRelation's config has lora_weights, "
                            "class_names, prompt, images_path, boxes, phrases)", path, k ? k : "(not a string)");
    }
    return RB_OK;
}

rb_status rb_dr_config_load(const char *path, rb_dr_config *st, rb_gen_params *p) {
    rb_yaml y;
    RB_TRY(rb_yaml_load(&y, path));
    yaml_node_t *root = rb_yaml_root(&y);
    rb_status s = check_keys(&y, root, path);
    const char *prompt = rb_yaml_str(rb_yaml_get(&y, root, "prompt"));
    const char *lora = rb_yaml_str(rb_yaml_get(&y, root, "lora_weights"));
    yaml_node_t *imgs = rb_yaml_get(&y, root, "images_path");
    yaml_node_t *boxes = rb_yaml_get(&y, root, "boxes"), *phrases = rb_yaml_get(&y, root, "phrases");
    if (s == RB_OK && (!prompt || !*prompt))
        s = rb_error(RB_ERR_FORMAT, "%s: 'prompt' is missing or not a string", path);
    int n = rb_yaml_len(imgs);
    if (s == RB_OK && (n < 0 || n > RB_MAX_SUBJECTS))
        s = rb_error(RB_ERR_FORMAT, "%s: 'images_path' must be a list of 0..%d paths", path, RB_MAX_SUBJECTS);
    if (s == RB_OK && n > 0) {
        boxes = unbatch(&y, boxes, 2);
        phrases = unbatch(&y, phrases, 1);
        if (rb_yaml_len(boxes) != n || rb_yaml_len(phrases) != n)
            s = rb_error(RB_ERR_FORMAT, "%s: %d images but %d boxes and %d phrases (one of each per subject)", path, n, rb_yaml_len(boxes),
                         rb_yaml_len(phrases));
    }
    for (int i = 0; s == RB_OK && i < n; i++) {
        const char *im = rb_yaml_str(rb_yaml_item(&y, imgs, i)), *ph = rb_yaml_str(rb_yaml_item(&y, phrases, i));
        yaml_node_t *b = rb_yaml_item(&y, boxes, i);
        double v[4];
        int ok = im && ph && rb_yaml_len(b) == 4;
        for (int k = 0; ok && k < 4; k++) /* finite and representable as float (generate checks [0, 1]) */
            ok = rb_yaml_double(rb_yaml_item(&y, b, k), &v[k]) && fabs(v[k]) <= FLT_MAX;
        if (!ok) {
            s = rb_error(RB_ERR_FORMAT, "%s: subject %d needs an image path, a phrase and a box of 4 numbers", path,
                         i + 1);
            break;
        }
        resolve(st->images[i], sizeof st->images[i], path, im);
        snprintf(st->phrases[i], sizeof st->phrases[i], "%s", ph);
        p->subjects[i].image = st->images[i];
        p->subjects[i].phrase = st->phrases[i];
        for (int k = 0; k < 4; k++)
            p->subjects[i].box[k] = (float)v[k];
    }
    if (s == RB_OK) {
        snprintf(st->prompt, sizeof st->prompt, "%s", prompt);
        p->prompt = st->prompt;
        p->n_subjects = n;
        if (lora && *lora) {
            if (p->n_loras >= RB_MAX_LORAS)
                s = rb_error(RB_ERR_INVALID, "%s: too many LoRAs", path);
            else {
                resolve(st->lora, sizeof st->lora, path, lora);
                p->loras[p->n_loras++] = (rb_lora_ref){st->lora, 1.0f};
            }
        }
    }
    rb_yaml_free(&y);
    return s;
}
