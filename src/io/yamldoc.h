/* YAML documents (configs such as DreamRelation's config/ files), loaded with libyaml into its
 * document tree, with bounded size and typed look-ups. Anchors/aliases are refused (no expansion
 * bombs); only the first document is read. */
#ifndef RB_IO_YAMLDOC_H
#define RB_IO_YAMLDOC_H

#include <yaml.h>

#include "core/status.h"

typedef struct rb_yaml {
    yaml_document_t doc;
    int loaded;
    char path[1024];
} rb_yaml;

rb_status rb_yaml_load(rb_yaml *y, const char *path);
void rb_yaml_free(rb_yaml *y);

/* The root node, a mapping's value by key, a sequence's i-th item (NULL when absent or of another kind). */
yaml_node_t *rb_yaml_root(rb_yaml *y);
yaml_node_t *rb_yaml_get(rb_yaml *y, yaml_node_t *map, const char *key);
int rb_yaml_len(yaml_node_t *seq); /* -1 if not a sequence */
yaml_node_t *rb_yaml_item(rb_yaml *y, yaml_node_t *seq, int i);
/* A scalar's text (NULL if not a scalar), or its value as a finite double (0 on failure). */
const char *rb_yaml_str(yaml_node_t *n);
int rb_yaml_double(yaml_node_t *n, double *out);

#endif
