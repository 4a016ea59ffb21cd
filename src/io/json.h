/* Small JSON files (configs, manifests): read with a size limit, parsed with jansson. */
#ifndef RB_IO_JSON_H
#define RB_IO_JSON_H

#include <jansson.h>

#include "core/status.h"

#define RB_JSON_MAX_BYTES (64u << 20)

/* Parses `path` (any JSON value). RB_ERR_IO when it cannot be read, RB_ERR_FORMAT for a syntax error
 * (the message names the file and the line). The caller owns *out (json_decref). */
rb_status rb_json_load(const char *path, json_t **out);

/* Parses `path`, which must hold a JSON object. RB_ERR_IO when it cannot be read, RB_ERR_FORMAT
 * when it is not a JSON object (the message names the file, and the line for syntax errors). The
 * caller owns *out (json_decref). */
rb_status rb_json_load_object(const char *path, json_t **out);

/* Integer `key` of object j (0 <= value < 2^24, sizes of a model config) into *dst: absent or null
 * keeps *dst (the default); present but not such an integer is RB_ERR_FORMAT naming `path` and key. */
rb_status rb_json_get_int(json_t *j, const char *key, int *dst, const char *path);

#endif
