#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *rb_status_str(rb_status s) {
    switch (s) {
    case RB_OK: return "ok";
    case RB_ERR_INVALID: return "invalid argument";
    case RB_ERR_IO: return "i/o error";
    case RB_ERR_FORMAT: return "format error";
    case RB_ERR_OOM: return "out of memory";
    case RB_ERR_UNSUPPORTED: return "unsupported";
    case RB_ERR_CANCELLED: return "cancelled";
    case RB_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

const char *rb_last_error(void) { return last_error; }

void rb_clear_error(void) { last_error[0] = 0; }

rb_status rb_error(rb_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    /* one line: newlines in user-controlled names must not split the message */
    for (char *p = last_error; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return s;
}

rb_status rb_error_prefix(rb_status s, const char *fmt, ...) {
    char prefix[512], old[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    return rb_error(s, "%s: %s", prefix, old);
}
