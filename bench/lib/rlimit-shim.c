/*
 * LD_PRELOAD shim for the sanlock benchmark baseline only: this sandbox
 * lacks CAP_SYS_RESOURCE, so sanlock's attempts to raise RLIMIT_MEMLOCK
 * and RLIMIT_RTPRIO fail and the daemon exits. For those two resources,
 * setrlimit() and prlimit() pretend to succeed (the limit stays as it
 * was); every other call goes to libc unchanged. Never for production.
 *
 *   cc -shared -fPIC -O2 -o rlimit-shim.so rlimit-shim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/types.h>

static int faked(int resource)
{
    return resource == RLIMIT_MEMLOCK || resource == RLIMIT_RTPRIO;
}

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
    static int (*real)(__rlimit_resource_t, const struct rlimit *);
    if (faked(resource))
        return 0;
    if (!real)
        real = (int (*)(__rlimit_resource_t, const struct rlimit *))dlsym(RTLD_NEXT, "setrlimit");
    return real(resource, rlim);
}

int prlimit(pid_t pid, __rlimit_resource_t resource, const struct rlimit *new_limit,
            struct rlimit *old_limit)
{
    static int (*real)(pid_t, __rlimit_resource_t, const struct rlimit *, struct rlimit *);
    if (!real)
        real = (int (*)(pid_t, __rlimit_resource_t, const struct rlimit *, struct rlimit *))
            dlsym(RTLD_NEXT, "prlimit");
    if (new_limit && faked(resource)) {
        if (old_limit)
            return real(pid, resource, NULL, old_limit);
        return 0;
    }
    return real(pid, resource, new_limit, old_limit);
}
