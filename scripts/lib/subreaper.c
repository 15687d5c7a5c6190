/* subreaper COMMAND [ARG...]: runs COMMAND as a child subreaper; the
 * anchor of a test "host" (its namespaces' first process) in both
 * multi-host harnesses, scripts/lib/vmhosts.sh and tests/support/libvirt.
 *
 * PID 1 in the test sandbox reaps orphans 1-2 s late, and libvirt waits
 * for a killed QEMU to disappear. Every process orphaned below this one
 * (the QEMUs libvirt double-forks, the daemons a host's anchor shell
 * starts in the background) is reparented here and reaped at once.
 * SIGTERM and SIGINT are forwarded to COMMAND.
 *
 * When COMMAND exits, the host is over: whatever is left below is
 * SIGKILLed and reaped, then this exits with COMMAND's status. So a test
 * process that dies without cleaning up (its pipe to the anchor shell
 * closes) leaves no libvirtd or QEMU behind. The shell harness's COMMAND
 * (vmhost-init.sh, ending in `exec sleep`) exits only when the host is
 * taken down or fails to start, where the same holds.
 *
 * Built with `cc -O2 -Wall -pthread` by both: vmhosts.sh (vmh_init) and
 * tests/support/util.rs (c_program, C_FLAGS). */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child;

static void forward(int sig)
{
    if (child > 0)
        kill(child, sig);
}

/* SIGKILLs every process whose parent is this one. */
static void kill_children(void)
{
    char path[300], buf[512], *p;
    struct dirent *e;
    DIR *d = opendir("/proc");
    FILE *f;
    long ppid;

    if (d == NULL)
        return;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
        f = fopen(path, "r");
        if (f == NULL)
            continue;
        /* pid (comm) state ppid ...; comm may hold spaces and ')' */
        p = fgets(buf, sizeof buf, f) ? strrchr(buf, ')') : NULL;
        fclose(f);
        if (p != NULL && sscanf(p + 1, " %*c %ld", &ppid) == 1 && ppid == (long)getpid())
            kill((pid_t)atol(e->d_name), SIGKILL);
    }
    closedir(d);
}

int main(int argc, char **argv)
{
    int status, rc = 1;
    pid_t p;

    if (argc < 2) {
        fprintf(stderr, "usage: subreaper COMMAND [ARG...]\n");
        return 2;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
        perror("subreaper: prctl(PR_SET_CHILD_SUBREAPER)");
        return 1;
    }
    child = fork();
    if (child < 0) {
        perror("subreaper: fork");
        return 1;
    }
    if (child == 0) {
        execvp(argv[1], argv + 1);
        perror(argv[1]);
        _exit(127);
    }
    signal(SIGTERM, forward);
    signal(SIGINT, forward);
    for (;;) {
        p = wait(&status);
        if (p == child) {
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            break;
        }
        if (p < 0 && errno != EINTR)
            return 1; /* ECHILD before COMMAND exited: cannot happen */
    }
    child = 0;
    /* Killing a parent orphans its children to us: repeat until none. */
    for (;;) {
        kill_children();
        p = waitpid(-1, NULL, WNOHANG);
        if (p < 0 && errno == ECHILD)
            return rc;
        if (p == 0)
            usleep(10000);
    }
}
