#define _GNU_SOURCE
#include "pz_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// The child is started the way glibc's posix_spawn starts one: clone(CLONE_VM | CLONE_VFORK) on a stack of its own.
// It shares the daemon's memory until exec, so nothing is copied: a fork() copies the page tables of a process with
// a few dozen threads and then takes a copy-on-write fault for every page either side touches before the exec,
// which was the largest single share of the daemon's own CPU per short task. The price is discipline in the child:
//   - only async-signal-safe calls that are plain system calls; nothing that takes a lock or allocates;
//   - no glibc set*id() wrappers: in a multithreaded process they broadcast the change to every thread of the
//     process, and the child would change the daemon's threads; raw syscalls change the calling task alone;
//   - signals are blocked in the parent around the clone, and the child resets every handler to the default before
//     unblocking, so no handler of the daemon ever runs on the daemon's memory from the child;
//   - the result is written to memory the parent reads after the clone returns (the parent is suspended until the
//     child execs or exits), so no error pipe is needed.

struct child_args {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int stdout_fd;
    int stderr_fd;
    int switch_user;
    uid_t uid;
    gid_t gid;
    const char *private_tmp;
    int mount_proc;
    int in_namespace;
    const int *cgroup_procs;
    int cgroup_procs_count;
    sigset_t parent_mask;
    volatile int err;
};

static int child_fail(struct child_args *a, int code) {
    a->err = code != 0 ? code : ECHILD;
    _exit(127);
}

// The kernel's own struct sigaction (the same layout on x86_64 and arm64), for the raw call: glibc's differs.
struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    unsigned long mask;
};

// "/proc/self/fd/<fd>" into `out` (32 bytes), without snprintf (the child may call only plain system calls).
static void fd_path(char *out, int fd) {
    static const char prefix[] = "/proc/self/fd/";
    char digits[12];
    int n = 0;
    do {
        digits[n++] = (char)('0' + fd % 10);
        fd /= 10;
    } while (fd > 0 && n < 11);
    int at = 0;
    for (; prefix[at] != 0; at++) out[at] = prefix[at];
    while (n > 0) out[at++] = digits[--n];
    out[at] = 0;
}

static int child_main(void *arg) {

    struct child_args *a = arg;
    // Every handler back to the default: SIG_IGN stays, except SIGPIPE, which the command gets as usual. Raw calls,
    // because glibc's wrapper refuses its own internal signals, whose handlers are the daemon's too.
    struct kernel_sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    for (int sig = 1; sig < _NSIG; sig++) {
        struct kernel_sigaction old;
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        if (syscall(SYS_rt_sigaction, sig, NULL, &old, sizeof old.mask) != 0) continue;
        if (old.handler == SIG_DFL || (old.handler == SIG_IGN && sig != SIGPIPE)) continue;
        syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof dfl.mask);
    }
    if (setpgid(0, 0) != 0) child_fail(a, errno);
    // Into the task's cgroups before anything of the command runs: "0" written to a cgroup.procs moves the writer
    // (v1 and v2 alike), here the child, still root, in whatever PID namespace it is in.
    for (int i = 0; i < a->cgroup_procs_count; i++) {
        if (write(a->cgroup_procs[i], "0\n", 2) != 2) child_fail(a, errno);
    }
    // In a mount namespace of its own (with the PID namespace), the command gets the task's own /tmp and /var/tmp,
    // and a /proc that shows only its own processes. Mounts are made slaves first (as systemd's PrivateTmp does):
    // nothing mounted here reaches the host, while what the host mounts later (an automounted share) still
    // reaches the command.
    if (a->in_namespace && (a->private_tmp != NULL || a->mount_proc)) {
        if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0) child_fail(a, errno);
        if (a->private_tmp != NULL) {
            // Bound through a descriptor: the folder's path may itself lie under /tmp, and be hidden by the first
            // bind before the second.
            int tmp = open(a->private_tmp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (tmp < 0) child_fail(a, errno);
            char source[32];
            fd_path(source, tmp);
            if (mount(source, "/tmp", NULL, MS_BIND, NULL) != 0) child_fail(a, errno);
            if (access("/var/tmp", F_OK) == 0 && mount(source, "/var/tmp", NULL, MS_BIND, NULL) != 0)
                child_fail(a, errno);
            close(tmp);
        }
        if (a->mount_proc && mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
            child_fail(a, errno);
    }
    int devnull = open("/dev/null", O_RDONLY);
    if (devnull < 0 || dup2(devnull, 0) < 0) child_fail(a, errno);
    if (dup2(a->stdout_fd, 1) < 0 || dup2(a->stderr_fd, 2) < 0) child_fail(a, errno);
    if (a->switch_user) {
        if (syscall(SYS_setgroups, 0, NULL) != 0) child_fail(a, errno);
        if (syscall(SYS_setresgid, a->gid, a->gid, a->gid) != 0) child_fail(a, errno);
        if (syscall(SYS_setresuid, a->uid, a->uid, a->uid) != 0) child_fail(a, errno);
        // No way back up: setuid and setgid programs (crontab, at, su) run without their privilege, so the command
        // cannot have cron or at start something outside its task, where nothing would end it.
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) child_fail(a, errno);
    }
    if (chdir(a->cwd) != 0) child_fail(a, errno);
    // Close every other inherited descriptor (the daemon's sockets and files).
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
#endif
    {
        for (int fd = 3; fd < 4096; fd++) close(fd);
    }
    // An empty mask for the command: the daemon blocks SIGTERM and SIGINT for its own handling.
    unsigned long none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof none);
    execve(a->path, a->argv, a->envp);
    return child_fail(a, errno);
}

enum { CHILD_STACK_SIZE = 64 * 1024 };

int pz_spawn(const char *path, char *const *argv, char *const *envp, const char *cwd, int stdout_fd, int stderr_fd,
             int switch_user, uid_t uid, gid_t gid, int new_pid_namespace, const char *private_tmp, int mount_proc,
             const int *cgroup_procs, int cgroup_procs_count, pid_t *out_pid, int *out_in_namespace) {
    void *stack = mmap(NULL, CHILD_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED) return errno;
    struct child_args args = {
        .path = path, .argv = argv, .envp = envp, .cwd = cwd, .stdout_fd = stdout_fd, .stderr_fd = stderr_fd,
        .switch_user = switch_user, .uid = uid, .gid = gid, .private_tmp = private_tmp, .mount_proc = mount_proc,
        .in_namespace = 0, .cgroup_procs = cgroup_procs, .cgroup_procs_count = cgroup_procs_count, .err = 0,
    };
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &args.parent_mask);
    // Returns once the child has exec'd or exited (CLONE_VFORK). In a PID namespace of its own, the command is that
    // namespace's init: when it exits, the kernel kills every process it left behind, even one that called setsid,
    // before its exit can be collected. The mount namespace comes with it when the command gets a /tmp or a /proc
    // of its own. Without the privilege for them (not root), a process group is all there is; that is decided
    // once, at start-up (new_pid_namespace 0), and a namespace asked for and refused later fails the spawn.
    int flags = CLONE_VM | CLONE_VFORK | SIGCHLD;
    if (new_pid_namespace) {
        flags |= CLONE_NEWPID;
        if (private_tmp != NULL || mount_proc) flags |= CLONE_NEWNS;
        args.in_namespace = 1;
    }
    pid_t pid = clone(child_main, (char *)stack + CHILD_STACK_SIZE, flags, &args);
    int clone_errno = errno;
    *out_in_namespace = pid >= 0 && new_pid_namespace;
    pthread_sigmask(SIG_SETMASK, &args.parent_mask, NULL);
    munmap(stack, CHILD_STACK_SIZE);
    if (pid < 0) return clone_errno;
    if (args.err != 0) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return args.err;
    }
    *out_pid = pid;
    return 0;
}

int pz_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    return (int)syscall(434, pid, 0);
#endif
}

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

struct pz_open_how {
    unsigned long long flags;
    unsigned long long mode;
    unsigned long long resolve;
};

int pz_openat2(int dirfd, const char *path, int flags, unsigned long long resolve) {
    struct pz_open_how how = {.flags = (unsigned long long)(unsigned int)flags, .mode = 0, .resolve = resolve};
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int pz_o_path(void) { return O_PATH; }
