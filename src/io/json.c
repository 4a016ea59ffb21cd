#include "json.h"

#include "core/file.h"
#include "core/mem.h"

rb_status rb_json_load(const char *path, json_t **out) {
    *out = NULL;
    char *text;
    size_t len;
    RB_TRY(rb_read_file(path, RB_JSON_MAX_BYTES, &text, &len));
    json_error_t err;
    *out = json_loadb(text, len, 0, &err);
    rb_free(text);
    if (!*out)
        return rb_error(RB_ERR_FORMAT, "%s: invalid JSON at line %d: %s", path, err.line, err.text);
    return RB_OK;
}

rb_status rb_json_load_object(const char *path, json_t **out) {
    *out = NULL;
    json_t *j;
    RB_TRY(rb_json_load(path, &j));
    if (!json_is_object(j)) {
        json_decref(j);
        return rb_error(RB_ERR_FORMAT, "%s: not a JSON object", path);
    }
    *out = j;
    return RB_OK;
}

rb_status rb_json_get_int(json_t *j, const char *key, int *dst, const char *path) {
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v))
        return RB_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (1 << 24))
        return rb_error(RB_ERR_FORMAT, "%s: invalid '%s'", path, key);
    *dst = (int)json_integer_value(v);
    return RB_OK;
}
