/* Stands in for libvirt's virReportErrorHelper inside the ABI harness: the
 * plugin finds it with dlsym(RTLD_DEFAULT, ...) exactly as in libvirtd, and
 * the harness reads back the last message. */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

static char last[4096];
static int last_code;

void virReportErrorHelper(int domcode, int errcode, const char *filename,
                          const char *funcname, size_t linenr,
                          const char *fmt, ...)
{
    va_list ap;
    (void)domcode; (void)filename; (void)funcname; (void)linenr;
    last_code = errcode;
    va_start(ap, fmt);
    vsnprintf(last, sizeof(last), fmt, ap);
    va_end(ap);
}

const char *harness_last_error(void) { return last; }
int harness_last_code(void) { return last_code; }
void harness_clear_error(void) { last[0] = '\0'; last_code = 0; }
