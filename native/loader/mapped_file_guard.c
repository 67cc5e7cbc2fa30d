/* mapped_file_guard.c — SIGBUS from a truncated memory-mapped file as a one-line error (qrt_mapped_file_guard.h).
 *
 * The handler does only async-signal-safe things: open/read/close of /proc/self/maps, unlink, write and _exit,
 * with hand-written parsing over stack buffers (no stdio, no malloc). The temporary-output table is filled by the
 * writers (Python's atomic writer, through cffi) and read by the handler: a slot's path is written before its flag
 * says it is in use, and the handler reads only slots in use.
 */
#include "qrt.h"

#ifdef __linux__
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define MAX_TEMPS 8
#define MAX_PATH 4096
#define MAX_PROGRAM 64

enum { SLOT_FREE = 0, SLOT_FILLING = 1, SLOT_USED = 2 };

typedef struct {
    atomic_int state;
    char path[MAX_PATH];
} temp_slot;

static temp_slot temps[MAX_TEMPS];
static char program[MAX_PROGRAM] = "qrt";
static atomic_int installed;
static atomic_int reporting;
static struct sigaction previous;

static size_t text_length(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static void put(const char *s) {
    if (write(STDERR_FILENO, s, text_length(s)) < 0) return;
}

static uintptr_t parse_hex(const char **p) {
    uintptr_t value = 0;
    for (;; (*p)++) {
        const char c = **p;
        const int digit = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (digit < 0) return value;
        value = value * 16 + (uintptr_t)digit;
    }
}

/* One /proc/self/maps line, "start-end perms offset dev inode   /path": 1 and the path if it maps addr from a
 * file. */
static int line_maps_file(const char *line, uintptr_t addr, char *path, size_t cap) {
    const char *p = line;
    const uintptr_t start = parse_hex(&p);
    if (*p++ != '-') return 0;
    const uintptr_t end = parse_hex(&p);
    if (addr < start || addr >= end) return 0;
    for (int field = 0; field < 4; field++) { /* perms, offset, dev, inode */
        while (*p == ' ') p++;
        while (*p && *p != ' ') p++;
    }
    while (*p == ' ') p++;
    if (*p != '/') return 0; /* anonymous, [heap], [stack]: not a file */
    size_t n = 0;
    for (; p[n] && n + 1 < cap; n++) path[n] = p[n];
    path[n] = 0;
    return 1;
}

/* The file mapped at addr, read from /proc/self/maps line by line; 1 if there is one. */
static int mapped_file_at(uintptr_t addr, char *path, size_t cap) {
    const int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    char chunk[2048], line[MAX_PATH + 256];
    size_t len = 0;
    int found = 0, too_long = 0;
    ssize_t got;
    while (!found && (got = read(fd, chunk, sizeof chunk)) > 0) {
        for (ssize_t i = 0; i < got && !found; i++) {
            if (chunk[i] != '\n') {
                if (len + 1 < sizeof line) line[len++] = chunk[i];
                else too_long = 1;
                continue;
            }
            line[len] = 0;
            found = !too_long && line_maps_file(line, addr, path, cap);
            len = 0;
            too_long = 0;
        }
    }
    close(fd);
    return found;
}

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    (void)sig;
    (void)context;
    char path[MAX_PATH];
    const int sent = info->si_code <= 0; /* kill() or raise(), not a fault: there is no address to look up */
    if (sent || !mapped_file_at((uintptr_t)info->si_addr, path, sizeof path)) {
        /* Not a file that shrank: a bug, for the handler installed before (or the default action). Returning re-runs
         * a faulting access under it; a sent signal is sent again. */
        sigaction(SIGBUS, &previous, NULL);
        if (sent) raise(SIGBUS);
        return;
    }
    if (atomic_exchange(&reporting, 1))
        for (;;) pause(); /* another thread faulted first and is reporting; _exit ends this one too */
    for (int i = 0; i < MAX_TEMPS; i++)
        if (atomic_load(&temps[i].state) == SLOT_USED) unlink(temps[i].path);
    put(program);
    put(": error: ");
    put(path);
    put(" changed while being read (truncated?)\n");
    _exit(1);
}

int qrt_mapped_file_guard_install(const char *name) {
    if (atomic_exchange(&installed, 1)) return 0;
    if (name && *name) {
        strncpy(program, name, MAX_PROGRAM - 1);
        program[MAX_PROGRAM - 1] = 0;
    }
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigbus;
    action.sa_flags = SA_SIGINFO;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGBUS, &action, &previous) != 0) {
        atomic_store(&installed, 0);
        return -1;
    }
    return 0;
}

int qrt_mapped_file_guard_add_temp(const char *path) {
    if (!path || strlen(path) >= MAX_PATH) return -1;
    for (int i = 0; i < MAX_TEMPS; i++) {
        int expected = SLOT_FREE;
        if (!atomic_compare_exchange_strong(&temps[i].state, &expected, SLOT_FILLING)) continue;
        strcpy(temps[i].path, path);
        atomic_store(&temps[i].state, SLOT_USED);
        return 0;
    }
    return -1;
}

void qrt_mapped_file_guard_remove_temp(const char *path) {
    if (!path) return;
    for (int i = 0; i < MAX_TEMPS; i++) {
        if (atomic_load(&temps[i].state) != SLOT_USED || strcmp(temps[i].path, path) != 0) continue;
        int expected = SLOT_USED;
        if (!atomic_compare_exchange_strong(&temps[i].state, &expected, SLOT_FILLING)) continue;
        temps[i].path[0] = 0;
        atomic_store(&temps[i].state, SLOT_FREE);
        return;
    }
}

#else /* no SIGBUS guard on this system */

int qrt_mapped_file_guard_install(const char *name) {
    (void)name;
    return -1;
}

int qrt_mapped_file_guard_add_temp(const char *path) {
    (void)path;
    return 0;
}

void qrt_mapped_file_guard_remove_temp(const char *path) { (void)path; }

#endif
