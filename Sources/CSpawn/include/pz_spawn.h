#ifndef PZ_SPAWN_H
#define PZ_SPAWN_H
#include <sys/types.h>

/// Starts `path` with `argv` and `envp` in a new process group (so the whole tree can be signalled), in `cwd`,
/// with stdin from /dev/null and stdout/stderr on the given descriptors. When `switch_user` is set, the child drops
/// to `uid`/`gid` (supplementary groups cleared) before exec. Returns 0 and the child's pid, or an errno value:
/// exec failures (not found, not executable) are reported here, through a close-on-exec pipe, not as an exit code.
int pz_spawn(const char *_Nonnull path, char *_Nullable const *_Nonnull argv, char *_Nullable const *_Nonnull envp,
             const char *_Nonnull cwd, int stdout_fd, int stderr_fd, int switch_user, uid_t uid, gid_t gid,
             pid_t *_Nonnull out_pid);

/// A descriptor that becomes readable when process `pid` ends (`pidfd_open`, Linux 5.3), or -1 with errno set
/// (ENOSYS on older kernels). Called through syscall(2), because glibc before 2.36 has no wrapper.
int pz_pidfd_open(pid_t pid);

#endif
