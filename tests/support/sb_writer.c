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
 * With "rados=NETNS:CONF:CLIENT:POOL:OBJECT" a second worker thread appends
 * the same records (its own sequence and "go") to the RADOS object OBJECT
 * through librados, as QEMU's librbd writes an RBD image: a Ceph client
 * of its own, with no MDS session, whose sockets live in the network
 * namespace /run/netns/NETNS (the host's: a cut storage link cuts it, a
 * blocklist of the host's address refuses it). librados is loaded at run
 * time (dlopen), as vmlease's RADOS worker does: no header needed.
 *
 * With "rados-only" the process writes only the RADOS object (the
 * schedule's stand-in for a storage-fenced host's VM I/O that goes on
 * after the verdict, tests/splitbrain/peer_fence.rs).
 *
 * usage: sb_writer DISK HOST VM INCARNATION INTERVAL_MS [now] [leader-exits]
 *        [rados=NETNS:CONF:CLIENT:POOL:OBJECT] [rados-only]
 * ("now": do not wait for the byte on fd 0)
 *
 * It exits when the test process that started it is gone (reparented), so
 * that a test killed without running its destructors leaves no writer.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
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
/* rados=...: the fields, split in place. */
static char *r_ns, *r_conf, *r_client, *r_pool, *r_obj;

static unsigned long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_BOOTTIME, &t);
    return (unsigned long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void record(char rec[65], unsigned long long seq, unsigned long long t,
                   unsigned long long go)
{
    memset(rec, ' ', 65);
    int n = snprintf(rec, 65, "h=%d vm=%d inc=%d seq=%llu t=%llu go=%llu", host, vm, inc, seq, t,
                     go);
    if (n >= 0 && n < 63)
        rec[n] = ' ';
    rec[63] = '\n';
}

/* The RADOS disk: connect (again after a failure), then append one record
 * per interval; a failed append (refused: blocklisted) is not retried, the
 * next interval makes a new record. */
static void *rados_writer(void *arg)
{
    (void)arg;
    struct timespec pause = {interval / 1000, (interval % 1000) * 1000000L};
    unsigned long long go = now_ms();
    void *lib = dlopen("librados.so.2", RTLD_NOW);
    if (lib == NULL) {
        fprintf(stderr, "sb_writer: %s\n", dlerror());
        exit(1);
    }
    int (*create2)(void **, const char *, const char *, uint64_t) = dlsym(lib, "rados_create2");
    int (*read_file)(void *, const char *) = dlsym(lib, "rados_conf_read_file");
    int (*connect_)(void *) = dlsym(lib, "rados_connect");
    void (*shutdown_)(void *) = dlsym(lib, "rados_shutdown");
    int (*ioctx_create)(void *, const char *, void **) = dlsym(lib, "rados_ioctx_create");
    int (*append)(void *, const char *, const char *, size_t) = dlsym(lib, "rados_append");
    if (!create2 || !read_file || !connect_ || !shutdown_ || !ioctx_create || !append) {
        fprintf(stderr, "sb_writer: librados.so.2 lacks a function\n");
        exit(1);
    }
    char name[128];
    snprintf(name, sizeof(name), "client.%s", r_client);
    void *cluster = NULL, *io = NULL;
    for (unsigned long long seq = 0;; seq++) {
        if (getppid() != parent)
            exit(0);
        unsigned long long t = now_ms();
        if (io == NULL) {
            if (cluster != NULL)
                shutdown_(cluster);
            cluster = NULL;
            if (create2(&cluster, "ceph", name, 0) != 0 || read_file(cluster, r_conf) != 0 ||
                connect_(cluster) != 0 || ioctx_create(cluster, r_pool, &io) != 0)
                io = NULL;
        }
        if (io != NULL) {
            char rec[65];
            record(rec, seq, t, go);
            int rc = append(io, r_obj, rec, 64);
            if (rc < 0 && rc != -ESHUTDOWN)
                fprintf(stderr, "sb_writer: rados append %s: %s\n", r_obj, strerror(-rc));
        }
        nanosleep(&pause, NULL);
    }
    return NULL;
}

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
            record(rec, seq, ms, go);
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
        fprintf(stderr, "usage: sb_writer DISK HOST VM INC INTERVAL_MS [now] [leader-exits] "
                        "[rados=NETNS:CONF:CLIENT:POOL:OBJECT] [rados-only]\n");
        return 2;
    }
    parent = getppid();
    disk = argv[1];
    host = atoi(argv[2]);
    vm = atoi(argv[3]);
    inc = atoi(argv[4]);
    interval = atol(argv[5]);
    int now = 0, leader_exits = 0, rados_only = 0;
    for (int i = 6; i < argc; i++) {
        if (strcmp(argv[i], "now") == 0)
            now = 1;
        else if (strcmp(argv[i], "leader-exits") == 0)
            leader_exits = 1;
        else if (strcmp(argv[i], "rados-only") == 0)
            rados_only = 1;
        else if (strncmp(argv[i], "rados=", 6) == 0) {
            char *p = argv[i] + 6;
            char **f[] = {&r_ns, &r_conf, &r_client, &r_pool, &r_obj};
            for (int k = 0; k < 5; k++) {
                *f[k] = strsep(&p, ":");
                if (*f[k] == NULL || **f[k] == 0) {
                    fprintf(stderr, "sb_writer: bad '%s'\n", argv[i]);
                    return 2;
                }
            }
        }
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
    if (rados_only && r_ns == NULL) {
        fprintf(stderr, "sb_writer: rados-only without rados=...\n");
        return 2;
    }
    if (r_ns != NULL) {
        /* Still one thread: the whole process moves to the host's
         * network namespace (librados's threads inherit it). */
        char path[256];
        snprintf(path, sizeof(path), "/run/netns/%s", r_ns);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) != 0) {
            fprintf(stderr, "sb_writer: setns %s: %s\n", path, strerror(errno));
            return 1;
        }
        close(fd);
        pthread_t rt;
        int e = pthread_create(&rt, NULL, rados_writer, NULL);
        if (e != 0) {
            fprintf(stderr, "sb_writer: pthread_create: %s\n", strerror(e));
            return 1;
        }
        if (rados_only) {
            pthread_join(rt, NULL);
            return 0;
        }
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
