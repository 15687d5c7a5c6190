/* Runs a command as a child subreaper: every orphan below it (a libvirtd
 * that daemonized, the QEMUs libvirt starts) is reaped at once instead of
 * by a slow PID 1. Exits with the command's status. */
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t child;

static void forward(int sig) { if (child > 0) kill(child, sig); }

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: subreaper COMMAND [ARG...]\n");
        return 2;
    }
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0) {
        perror("prctl");
        return 1;
    }
    child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        execvp(argv[1], argv + 1);
        perror(argv[1]);
        _exit(127);
    }
    signal(SIGTERM, forward);
    signal(SIGINT, forward);
    int status = 0, rc = 0;
    for (;;) {
        pid_t p = wait(&status);
        if (p < 0)
            break;
        if (p == child)
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    return rc;
}
