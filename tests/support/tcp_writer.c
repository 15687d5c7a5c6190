/* A stand-in for a QEMU's storage client (librbd) for tests/tcp_abort.rs:
 * it holds TCP connections to ADDR:PORT and writes to them when told.
 *
 * Commands, one per line on stdin; each answers one line on stdout:
 *   connect        -> "connected N LOCALPORT" (connection N, from 0),
 *                     after sending one byte ("h") on it
 *   write N BYTES  -> "wrote N K": K bytes of 'x' queued on connection N
 *                     without blocking (MSG_DONTWAIT), what a write on a
 *                     cut link leaves in the send queue
 * Nothing else: it waits to be killed. It exits when the test process that
 * started it is gone (reparented), so that a test killed without running
 * its destructors leaves no writer.
 *
 * With "leader-exits" the main thread (the thread-group leader) hands the
 * work to a second thread and exits: /proc/PID/fd is then empty (as for a
 * QEMU whose main thread exited while an I/O thread runs) and the fds
 * show only under /proc/PID/task/TID/fd.
 *
 * usage: tcp_writer ADDR PORT [leader-exits]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CONN 8

static struct sockaddr_in to;
static pid_t parent;

static void *serve(void *unused)
{
    (void)unused;
    int conns[MAX_CONN];
    int n = 0;
    char line[256];
    size_t have = 0;
    for (;;) {
        if (getppid() != parent)
            exit(0);
        struct pollfd p = { .fd = 0, .events = POLLIN };
        int r = poll(&p, 1, 200);
        if (r <= 0 || !(p.revents & (POLLIN | POLLHUP)))
            continue;
        ssize_t got = read(0, line + have, sizeof line - 1 - have);
        if (got <= 0) {
            /* stdin closed: only wait now. */
            while (getppid() == parent)
                usleep(200 * 1000);
            exit(0);
        }
        have += (size_t)got;
        line[have] = 0;
        char *nl;
        while ((nl = strchr(line, '\n')) != NULL) {
            *nl = 0;
            int c, bytes;
            if (strcmp(line, "connect") == 0 && n < MAX_CONN) {
                int s = socket(AF_INET, SOCK_STREAM, 0);
                if (s < 0 || connect(s, (struct sockaddr *)&to, sizeof to) < 0) {
                    printf("error connect: %s\n", strerror(errno));
                } else {
                    struct sockaddr_in me;
                    socklen_t len = sizeof me;
                    getsockname(s, (struct sockaddr *)&me, &len);
                    if (send(s, "h", 1, 0) != 1)
                        printf("error send: %s\n", strerror(errno));
                    else
                        printf("connected %d %d\n", n, ntohs(me.sin_port));
                    conns[n++] = s;
                }
            } else if (sscanf(line, "write %d %d", &c, &bytes) == 2 && c >= 0 && c < n &&
                       bytes > 0 && bytes <= 1 << 20) {
                char *buf = malloc((size_t)bytes);
                memset(buf, 'x', (size_t)bytes);
                ssize_t w = send(conns[c], buf, (size_t)bytes, MSG_DONTWAIT);
                free(buf);
                if (w < 0)
                    printf("error write: %s\n", strerror(errno));
                else
                    printf("wrote %d %zd\n", c, w);
            } else {
                printf("error unknown command '%s'\n", line);
            }
            size_t rest = have - (size_t)(nl + 1 - line);
            memmove(line, nl + 1, rest + 1);
            have = rest;
        }
        if (have >= sizeof line - 1)
            have = 0;
    }
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 4 || (argc == 4 && strcmp(argv[3], "leader-exits") != 0)) {
        fprintf(stderr, "usage: tcp_writer ADDR PORT [leader-exits]\n");
        return 2;
    }
    to.sin_family = AF_INET;
    to.sin_port = htons((unsigned short)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &to.sin_addr) != 1) {
        fprintf(stderr, "tcp_writer: bad address %s\n", argv[1]);
        return 2;
    }
    parent = getppid();
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4) {
        pthread_t t;
        if (pthread_create(&t, NULL, serve, NULL) != 0) {
            fprintf(stderr, "tcp_writer: pthread_create failed\n");
            return 1;
        }
        pthread_exit(NULL);
    }
    serve(NULL);
    return 0;
}
