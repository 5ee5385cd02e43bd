/* Preloaded before libfaketime (LD_PRELOAD="shim.so libfaketime.so.1"). libfaketime 0.9.10 rewrites every
 * absolute timerfd_settime deadline as if it were CLOCK_REALTIME, even on CLOCK_MONOTONIC/CLOCK_BOOTTIME timers and
 * with FAKETIME_DONT_FAKE_MONOTONIC=1 (wolfcw/libfaketime#378): with FAKETIME=+N the deadline moves N s into the
 * past, which is negative (EINVAL, the timer never fires) while the machine has been up less than N s, and in the
 * past (the timer fires at once, over and over) after. libdispatch arms all its timers that way, so Swift's
 * Task.sleep either never returns or spins. This shim remembers each timerfd's clock and hands only wall-clock
 * timers to libfaketime; monotonic ones go to the kernel unchanged. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536
static unsigned char wall_clock[MAX_FDS];  /* 1: the timerfd counts CLOCK_REALTIME(_ALARM) */

int timerfd_create(int clockid, int flags) {
    int fd = (int)syscall(SYS_timerfd_create, clockid, flags);
    if (fd >= 0 && fd < MAX_FDS) wall_clock[fd] = (clockid == CLOCK_REALTIME || clockid == CLOCK_REALTIME_ALARM);
    return fd;
}

int timerfd_settime(int fd, int flags, const struct itimerspec *new_value, struct itimerspec *old_value) {
    if (fd >= 0 && fd < MAX_FDS && wall_clock[fd]) {
        int (*next)(int, int, const struct itimerspec *, struct itimerspec *) = dlsym(RTLD_NEXT, "timerfd_settime");
        if (next) return next(fd, flags, new_value, old_value);
    }
    return (int)syscall(SYS_timerfd_settime, fd, flags, new_value, old_value);
}

int timerfd_gettime(int fd, struct itimerspec *curr_value) {
    if (fd >= 0 && fd < MAX_FDS && wall_clock[fd]) {
        int (*next)(int, struct itimerspec *) = dlsym(RTLD_NEXT, "timerfd_gettime");
        if (next) return next(fd, curr_value);
    }
    return (int)syscall(SYS_timerfd_gettime, fd, curr_value);
}
