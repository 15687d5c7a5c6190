/* The installed vmlease.so, driven through the installed header exactly as
 * libvirtd drives it (tests/packages.sh builds this against
 * /usr/include/vmlease/vmlease.h).
 *
 *   plugin-check SO CONFIG init RC   dlopen, check the table, drvInit must
 *                                    return RC
 *   plugin-check SO CONFIG start UUID
 *                                    a domain start: a forked child registers
 *                                    (REGISTER_ONLY|RESTRICT) and execs
 *                                    "sleep 1000" as QEMU, the parent
 *                                    acquires on its pid. Prints the pid and
 *                                    exits 0 when leased; on a refusal kills
 *                                    the child, prints the plugin's message
 *                                    and exits 1.
 *
 * Built with -rdynamic: the plugin finds virReportErrorHelper here with
 * dlsym(RTLD_DEFAULT), as it finds libvirt's in libvirtd. */
#include <dlfcn.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <vmlease/vmlease.h>

_Static_assert(sizeof(virLockDriver) == 72, "struct _virLockDriver is 72 bytes on LP64");
_Static_assert(sizeof(virLockManagerParam) == 32, "virLockManagerParam is 32 bytes on LP64");

static char last_error[4096];

void virReportErrorHelper(int domcode, int errcode, const char *filename,
                          const char *funcname, size_t linenr, const char *fmt, ...)
{
    va_list ap;
    (void)domcode; (void)errcode; (void)filename; (void)funcname; (void)linenr;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof(last_error), fmt, ap);
    va_end(ap);
}

static int fail(const char *what)
{
    fprintf(stderr, "plugin-check: %s%s%s\n", what, last_error[0] ? ": " : "", last_error);
    return 1;
}

static int parse_uuid(const char *s, unsigned char out[16])
{
    int n = 0;
    for (; *s && n < 32; s++) {
        unsigned int v;
        if (*s == '-')
            continue;
        if (sscanf(s, "%1x", &v) != 1)
            return -1;
        out[n / 2] = (unsigned char)((n % 2) ? (out[n / 2] | v) : (v << 4));
        n++;
    }
    return n == 32 && *s == '\0' ? 0 : -1;
}

/* drvNew with libvirt's five domain parameters, then Acquire. */
static int lease(const virLockDriver *drv, const unsigned char uuid[16], unsigned int pid,
                 unsigned int new_flags, unsigned int acquire_flags, int *fd)
{
    virLockManager man = { drv, NULL };
    virLockManagerParam p[5];
    int rc;

    memset(p, 0, sizeof(p));
    p[0].type_ = 7; p[0].key = "uuid"; memcpy(p[0].value.uuid, uuid, 16);
    p[1].type_ = 0; p[1].key = "name"; p[1].value.cstr = "vmlease-pkgtest";
    p[2].type_ = 4; p[2].key = "id"; p[2].value.ui = 1;
    p[3].type_ = 4; p[3].key = "pid"; p[3].value.ui = pid;
    p[4].type_ = 1; p[4].key = "uri"; p[4].value.cstr = "qemu:///system";
    if (drv->drvNew(&man, 0, 5, p, new_flags) != 0)
        return -1;
    rc = drv->drvAcquire(&man, NULL, acquire_flags, 0, fd);
    drv->drvFree(&man);
    return rc;
}

static int start(const virLockDriver *drv, const char *uuid_text)
{
    unsigned char uuid[16];
    int pipefd[2], status;
    pid_t child;
    char buf[512];
    ssize_t n;

    if (parse_uuid(uuid_text, uuid) != 0)
        return fail("bad UUID");
    if (pipe(pipefd) != 0)
        return fail("pipe");
    child = fork();
    if (child < 0)
        return fail("fork");
    if (child == 0) {
        /* libvirt's pre-exec child: register, then become "QEMU". */
        int fd = -1;
        close(pipefd[0]);
        if (lease(drv, uuid, (unsigned int)getpid(), 1, 1 | 2, &fd) != 0) {
            dprintf(pipefd[1], "%s", last_error[0] ? last_error : "register refused");
            _exit(3);
        }
        close(pipefd[1]);
        /* Not our stdout: the caller reads it up to EOF. */
        fd = open("/dev/null", O_WRONLY);
        if (fd < 0 || dup2(fd, 1) < 0)
            _exit(5);
        execl("/bin/sleep", "sleep", "1000", (char *)NULL);
        _exit(4);
    }
    close(pipefd[1]);
    n = read(pipefd[0], buf, sizeof(buf) - 1);
    close(pipefd[0]);
    if (n > 0) {
        buf[n] = '\0';
        waitpid(child, &status, 0);
        fprintf(stderr, "plugin-check: register refused: %s\n", buf);
        return 1;
    }
    if (lease(drv, uuid, (unsigned int)child, 0, 0, NULL) != 0) {
        kill(child, SIGKILL);
        waitpid(child, &status, 0);
        return fail("acquire refused");
    }
    printf("%d\n", (int)child);
    return 0;
}

int main(int argc, char **argv)
{
    void *h;
    const virLockDriver *drv;
    int rc;

    if (argc != 5) {
        fprintf(stderr, "usage: plugin-check SO CONFIG init RC | start UUID\n");
        return 2;
    }
    h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        fprintf(stderr, "plugin-check: dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    drv = dlsym(h, "virLockDriverImpl");
    if (!drv)
        return fail("no virLockDriverImpl");
    if (drv->version != VIR_LOCK_MANAGER_VERSION)
        return fail("wrong driver version");
    if (!drv->drvInit || !drv->drvDeinit || !drv->drvNew || !drv->drvFree ||
        !drv->drvAddResource || !drv->drvAcquire || !drv->drvRelease || !drv->drvInquire)
        return fail("a NULL entry in virLockDriverImpl");
    rc = drv->drvInit(VIR_LOCK_MANAGER_VERSION, argv[2], 0);
    if (strcmp(argv[3], "init") == 0) {
        if (rc != atoi(argv[4])) {
            fprintf(stderr, "plugin-check: drvInit(%s) returned %d, expected %s\n", argv[2], rc, argv[4]);
            return 1;
        }
        return 0;
    }
    if (rc != 0)
        return fail("drvInit");
    return start(drv, argv[4]);
}
