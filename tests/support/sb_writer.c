/* A stand-in QEMU for tests/splitbrain.rs and tests/watchdog_daemon.rs,
 * shaped like QEMU: the main thread (the thread-group leader, whose pid
 * libvirt registers) starts a worker thread that does the disk I/O, as
 * QEMU's I/O threads do. It waits for the controller's "CPUs started" byte
 * on fd 0 (sent only after the plugin's acquire succeeded; EOF means the
 * start was refused), then the worker appends one 64-byte record per
 * interval to its disk file, each with O_APPEND + fsync, until the process
 * is killed; each record carries the CLOCK_BOOTTIME time at which its
 * attempt began (before the open when the file had to be (re)opened). A
 * failed write or fsync (hung, evicted or aborted mount) closes the file
 * and tries again at the next interval, as a guest would.
 *
 * When SIGKILL arrives while the worker is inside a write on hung storage
 * (D state), the leader exits at once (it shows 'Z' in /proc) and the
 * worker stays until its I/O completes: the process is not dead yet. With
 * "leader-exits" the leader calls pthread_exit as soon as the worker runs,
 * so the process writes on with a zombie leader.
 *
 * usage: sb_writer DISK HOST VM INCARNATION INTERVAL_MS [now] [leader-exits]
 * ("now": do not wait for the byte on fd 0)
 *
 * It exits when the test process that started it is gone (reparented), so
 * that a test killed without running its destructors leaves no writer.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pid_t parent;
static const char *disk;
static int host, vm, inc;
static long interval;

static void *writer(void *arg)
{
    (void)arg;
    struct timespec pause = {interval / 1000, (interval % 1000) * 1000000L};
    int fd = -1;
    /* When this instance began trying to write ("go" in every record): from
     * then on it is a live writer, even while CephFS holds its open or its
     * appends back behind another client's. */
    struct timespec g;
    clock_gettime(CLOCK_BOOTTIME, &g);
    unsigned long long go = (unsigned long long)g.tv_sec * 1000 + g.tv_nsec / 1000000;
    for (unsigned long long seq = 0;; seq++) {
        if (getppid() != parent)
            exit(0);
        /* The record's time is when this attempt began, before a
         * (re)open: CephFS can hold a second writer's open back for as
         * long as another client keeps writing the file, and that writer
         * was alive and trying to write all along. */
        struct timespec t;
        clock_gettime(CLOCK_BOOTTIME, &t);
        if (fd < 0)
            fd = open(disk, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            unsigned long long ms = (unsigned long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
            char rec[65];
            memset(rec, ' ', sizeof(rec));
            int n = snprintf(rec, sizeof(rec), "h=%d vm=%d inc=%d seq=%llu t=%llu go=%llu", host,
                             vm, inc, seq, ms, go);
            if (n >= 0 && n < 63)
                rec[n] = ' ';
            rec[63] = '\n';
            if (write(fd, rec, 64) != 64 || fsync(fd) != 0) {
                close(fd);
                fd = -1;
            }
        }
        nanosleep(&pause, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: sb_writer DISK HOST VM INC INTERVAL_MS [now] [leader-exits]\n");
        return 2;
    }
    parent = getppid();
    disk = argv[1];
    host = atoi(argv[2]);
    vm = atoi(argv[3]);
    inc = atoi(argv[4]);
    interval = atol(argv[5]);
    int now = 0, leader_exits = 0;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "now") == 0)
            now = 1;
        else if (strcmp(argv[i], "leader-exits") == 0)
            leader_exits = 1;
        else {
            fprintf(stderr, "sb_writer: unknown option '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!now) {
        char b;
        ssize_t n;
        do
            n = read(0, &b, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1)
            return 0; /* the start was refused: never ran */
    }
    pthread_t t;
    int e = pthread_create(&t, NULL, writer, NULL);
    if (e != 0) {
        fprintf(stderr, "sb_writer: pthread_create: %s\n", strerror(e));
        return 1;
    }
    if (leader_exits)
        pthread_exit(NULL); /* the process lives on in the worker */
    /* QEMU's main loop: the leader waits while the worker does the I/O. */
    pthread_join(t, NULL);
    return 0;
}
