#include "yamldoc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/file.h"
#include "core/mem.h"

#define RB_YAML_MAX_BYTES (1u << 20)

/* libyaml resolves aliases by node reference (no copies), but a document with them can still make
 * naive walkers loop or explode; configs never need them, so they are refused. */
static int has_alias(const char *text, size_t n) {
    yaml_parser_t p;
    yaml_event_t e;
    int alias = 0, done = 0;
    if (!yaml_parser_initialize(&p))
        return 1;
    yaml_parser_set_input_string(&p, (const unsigned char *)text, n);
    while (!done && !alias) {
        if (!yaml_parser_parse(&p, &e))
            break;
        alias = e.type == YAML_ALIAS_EVENT;
        done = e.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&e);
    }
    yaml_parser_delete(&p);
    return alias;
}

rb_status rb_yaml_load(rb_yaml *y, const char *path) {
    memset(y, 0, sizeof *y);
    snprintf(y->path, sizeof y->path, "%s", path);
    char *text;
    size_t n;
    RB_TRY(rb_read_file(path, RB_YAML_MAX_BYTES, &text, &n));
    if (has_alias(text, n)) {
        rb_free(text);
        return rb_error(RB_ERR_FORMAT, "%s: YAML aliases/anchors are not accepted in configs", path);
    }
    yaml_parser_t p;
    rb_status s = RB_OK;
    if (!yaml_parser_initialize(&p)) {
        rb_free(text);
        return rb_error(RB_ERR_OOM, "%s: cannot initialise the YAML parser", path);
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, n);
    if (!yaml_parser_load(&p, &y->doc))
        s = rb_error(RB_ERR_FORMAT, "%s: invalid YAML at line %zu: %s", path, p.problem_mark.line + 1,
                     p.problem ? p.problem : "parse error");
    else if (!yaml_document_get_root_node(&y->doc)) {
        yaml_document_delete(&y->doc);
        s = rb_error(RB_ERR_FORMAT, "%s: empty YAML document", path);
    } else
        y->loaded = 1;
    yaml_parser_delete(&p);
    rb_free(text);
    return s;
}

void rb_yaml_free(rb_yaml *y) {
    if (y->loaded)
        yaml_document_delete(&y->doc);
    y->loaded = 0;
}

yaml_node_t *rb_yaml_root(rb_yaml *y) { return y->loaded ? yaml_document_get_root_node(&y->doc) : NULL; }

yaml_node_t *rb_yaml_get(rb_yaml *y, yaml_node_t *map, const char *key) {
    if (!map || map->type != YAML_MAPPING_NODE)
        return NULL;
    for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
        yaml_node_t *k = yaml_document_get_node(&y->doc, pr->key);
        if (k && k->type == YAML_SCALAR_NODE && !strcmp((const char *)k->data.scalar.value, key))
            return yaml_document_get_node(&y->doc, pr->value);
    }
    return NULL;
}

int rb_yaml_len(yaml_node_t *seq) {
    if (!seq || seq->type != YAML_SEQUENCE_NODE)
        return -1;
    return (int)(seq->data.sequence.items.top - seq->data.sequence.items.start);
}

yaml_node_t *rb_yaml_item(rb_yaml *y, yaml_node_t *seq, int i) {
    if (i < 0 || i >= rb_yaml_len(seq))
        return NULL;
    return yaml_document_get_node(&y->doc, seq->data.sequence.items.start[i]);
}

const char *rb_yaml_str(yaml_node_t *n) {
    return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

int rb_yaml_double(yaml_node_t *n, double *out) {
    const char *s = rb_yaml_str(n);
    if (!s || !*s)
        return 0;
    char *end;
    double v = strtod(s, &end);
    if (*end || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}
