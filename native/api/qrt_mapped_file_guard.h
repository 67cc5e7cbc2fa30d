/* qrt_mapped_file_guard.h — a file truncated while memory-mapped becomes a one-line error instead of a crash.
 *
 * Part of qrt.h (inlined into the cffi cdef: plain declarations only). Reading a page of a mapping beyond the end of
 * a file that shrank after it was mapped raises SIGBUS, which kills qrun and qconv without a word. On Linux the
 * guard catches it, finds the file behind the faulting address in /proc/self/maps, removes the registered temporary
 * outputs, writes "<program>: error: <file> changed while being read (truncated?)" to stderr and exits with status
 * 1. A SIGBUS at an address that is not a file mapping goes to the handler installed before (or the default
 * action): that is a bug, not a user error. On other systems the calls do nothing.
 */

/* Install the SIGBUS handler once per process; the first caller names the program in the message ("qrun").
 * 0, or -1 where there is no guard (not Linux, or sigaction failed). */
int qrt_mapped_file_guard_install(const char *program);
/* A temporary output file the guard unlinks before exiting (at most 8 at once); 0, or -1 when the table is full or
 * the path too long. */
int qrt_mapped_file_guard_add_temp(const char *path);
/* Forget a registered temporary output (renamed into place, or removed). */
void qrt_mapped_file_guard_remove_temp(const char *path);
