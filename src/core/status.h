/* Error reporting: every failing function records one line and returns its status. */
#ifndef RB_CORE_STATUS_H
#define RB_CORE_STATUS_H

#include "relbooth.h"

#if defined(__GNUC__)
#define RB_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define RB_PRINTF(a, b)
#endif

/* Records "message" as this thread's last error and returns s, so callers write
 * `return rb_error(RB_ERR_FORMAT, "%s: header length %llu exceeds file size", path, n);` */
rb_status rb_error(rb_status s, const char *fmt, ...) RB_PRINTF(2, 3);

/* Prefixes the current message with "context: " (for adding a file name on the way up). */
rb_status rb_error_prefix(rb_status s, const char *fmt, ...) RB_PRINTF(2, 3);

#define RB_TRY(expr)                      \
    do {                                  \
        rb_status rb_try_s_ = (expr);     \
        if (rb_try_s_ != RB_OK)           \
            return rb_try_s_;             \
    } while (0)

#endif
