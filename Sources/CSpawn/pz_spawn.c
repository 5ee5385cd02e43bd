#define _GNU_SOURCE
#include "pz_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

// Between fork and exec only async-signal-safe calls are made: the parent has other threads.
static void child_fail(int fd, int code) {
    ssize_t ignored = write(fd, &code, sizeof code);
    (void)ignored;
    _exit(127);
}

int pz_spawn(const char *path, char *const *argv, char *const *envp, const char *cwd, int stdout_fd, int stderr_fd,
             int switch_user, uid_t uid, gid_t gid, pid_t *out_pid) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) return errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        return e;
    }
    if (pid == 0) {
        close(pipefd[0]);
        setpgid(0, 0);
        // Default signal handling and an empty mask: the daemon blocks SIGTERM/SIGINT for its own handling.
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull < 0 || dup2(devnull, 0) < 0) child_fail(pipefd[1], errno);
        if (dup2(stdout_fd, 1) < 0 || dup2(stderr_fd, 2) < 0) child_fail(pipefd[1], errno);
        if (switch_user) {
            if (setgroups(0, NULL) != 0) child_fail(pipefd[1], errno);
            if (setgid(gid) != 0) child_fail(pipefd[1], errno);
            if (setuid(uid) != 0) child_fail(pipefd[1], errno);
        }
        if (chdir(cwd) != 0) child_fail(pipefd[1], errno);
        // Close every other inherited descriptor (the daemon's sockets and files).
        // The error pipe stays open until exec closes it (O_CLOEXEC).
#ifdef SYS_close_range
        int keep = pipefd[1];
        int ok = (keep <= 3 || syscall(SYS_close_range, 3, (unsigned)(keep - 1), 0) == 0)
                 && syscall(SYS_close_range, (unsigned)(keep + 1), ~0U, 0) == 0;
        if (!ok)
#endif
        {
            for (int fd = 3; fd < 4096; fd++) {
                if (fd != pipefd[1]) close(fd);
            }
        }
        execve(path, argv, envp);
        child_fail(pipefd[1], errno);
    }
    close(pipefd[1]);
    int child_errno = 0;
    ssize_t n;
    do {
        n = read(pipefd[0], &child_errno, sizeof child_errno);
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == (ssize_t)sizeof child_errno) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
        return child_errno != 0 ? child_errno : ECHILD;
    }
    *out_pid = pid;
    return 0;
}
