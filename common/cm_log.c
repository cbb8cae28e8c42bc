#include "common/cm_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static char g_tag[32] = "kolm";
static cm_log_level g_level = CM_LOG_INFO;

void cm_log_init(const char *tag, cm_log_level level) {
    snprintf(g_tag, sizeof g_tag, "%s", tag ? tag : "kolm");
    g_level = level;
    const char *env = getenv("KOLM_LOG");
    if (!env)
        return;
    if (!strcasecmp(env, "debug"))
        g_level = CM_LOG_DEBUG;
    else if (!strcasecmp(env, "info"))
        g_level = CM_LOG_INFO;
    else if (!strcasecmp(env, "warn"))
        g_level = CM_LOG_WARN;
    else if (!strcasecmp(env, "error"))
        g_level = CM_LOG_ERROR;
}

void cm_log(cm_log_level level, const char *fmt, ...) {
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    if (level < g_level)
        return;
    char line[2048];
    int n = snprintf(line, sizeof line, "kolm[%s %d] %s ", g_tag, (int)getpid(), names[level]);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}

void cm_assert_fail(const char *expr, const char *file, int line) {
    fprintf(stderr, "kolm[%s %d] FATAL assertion `%s` failed at %s:%d\n", g_tag, (int)getpid(), expr, file,
            line);
    abort();
}

void cm_set_err(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}
