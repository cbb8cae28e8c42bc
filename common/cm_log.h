/* cm_log: leveled logging to stderr and cm_assert for our own invariants.
 *
 * Log lines are "kolm[<tag> <pid>] LEVEL message" so that the gateway's and the
 * workers' lines interleave readably on one terminal. The tag is set once per
 * process (cm_log_init). cm_assert is for invariants of our own code only: client
 * and peer input is never asserted, it is validated and answered with an error. */
#ifndef CM_LOG_H
#define CM_LOG_H

#include <stdarg.h>
#include <stddef.h>

typedef enum cm_log_level {
    CM_LOG_DEBUG = 0,
    CM_LOG_INFO = 1,
    CM_LOG_WARN = 2,
    CM_LOG_ERROR = 3,
} cm_log_level;

/* Sets the process tag ("gateway", "worker0"; copied) and the minimum level.
 * KOLM_LOG=debug|info|warn|error in the environment overrides `level`. */
void cm_log_init(const char *tag, cm_log_level level);
void cm_log(cm_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define cm_debug(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)
#define cm_info(...) cm_log(CM_LOG_INFO, __VA_ARGS__)
#define cm_warn(...) cm_log(CM_LOG_WARN, __VA_ARGS__)
#define cm_error(...) cm_log(CM_LOG_ERROR, __VA_ARGS__)

/* Formats an error message into err[0..errlen) (the "char *err, size_t errlen"
 * out-parameters of loaders); a NULL err or zero errlen is allowed and ignored. */
void cm_set_err(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Logs file, line and the failed expression, then aborts. */
void cm_assert_fail(const char *expr, const char *file, int line) __attribute__((noreturn));
#define cm_assert(e) ((e) ? (void)0 : cm_assert_fail(#e, __FILE__, __LINE__))

#endif
