/* A stand-in QEMU for tests/splitbrain.rs: it waits for the controller's
 * "CPUs started" byte on fd 0 (sent only after the plugin's acquire
 * succeeded; EOF means the start was refused), then appends one 64-byte
 * record per interval to its disk file, each with O_APPEND + fsync, until
 * it is killed; each record carries the CLOCK_BOOTTIME time at which its
 * attempt began (before the open when the file had to be (re)opened). A failed write or fsync (hung, evicted or aborted mount)
 * closes the file and tries again at the next interval, as a guest would.
 *
 * usage: sb_writer DISK HOST VM INCARNATION INTERVAL_MS [now]
 * ("now": do not wait for the byte on fd 0)
 *
 * It exits when the test process that started it is gone (reparented), so
 * that a test killed without running its destructors leaves no writer.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: sb_writer DISK HOST VM INC INTERVAL_MS [now]\n");
        return 2;
    }
    pid_t parent = getppid();
    const char *disk = argv[1];
    int host = atoi(argv[2]), vm = atoi(argv[3]), inc = atoi(argv[4]);
    long interval = atol(argv[5]);
    if (argc < 7 || strcmp(argv[6], "now") != 0) {
        char b;
        ssize_t n;
        do
            n = read(0, &b, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1)
            return 0; /* the start was refused: never ran */
    }
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
            return 0;
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
}
