#ifndef PZ_SPAWN_H
#define PZ_SPAWN_H
#include <sys/types.h>

/// Starts `path` with `argv` and `envp` in a new process group (so the whole tree can be signalled), in `cwd`,
/// with stdin from /dev/null and stdout/stderr on the given descriptors. When `switch_user` is set, the child drops
/// to `uid`/`gid` (supplementary groups cleared, no_new_privs set) before exec. With `new_pid_namespace` (root), it
/// is started as the init of a PID namespace of its own, so that nothing it starts outlives it; then, in a mount
/// namespace of its own, `private_tmp` (when not NULL) is bound on /tmp and /var/tmp, and with `mount_proc` a /proc
/// of the namespace's own is mounted. Before any of that, the child moves itself into the cgroups whose `cgroup.procs`
/// files are open as `cgroup_procs` (write-only, close-on-exec), so its limits hold from its first instruction.
/// Returns 0 and the child's pid, or an errno value: exec failures (not found,
/// not executable) and refused namespaces or mounts are reported here, not as an exit code.
int pz_spawn(const char *_Nonnull path, char *_Nullable const *_Nonnull argv, char *_Nullable const *_Nonnull envp,
             const char *_Nonnull cwd, int stdout_fd, int stderr_fd, int switch_user, uid_t uid, gid_t gid,
             int new_pid_namespace, const char *_Nullable private_tmp, int mount_proc,
             const int *_Nullable cgroup_procs, int cgroup_procs_count, pid_t *_Nonnull out_pid,
             int *_Nonnull out_in_namespace);

/// A descriptor that becomes readable when process `pid` ends (`pidfd_open`, Linux 5.3), or -1 with errno set
/// (ENOSYS on older kernels). Called through syscall(2), because glibc before 2.36 has no wrapper.
int pz_pidfd_open(pid_t pid);

/// openat2(2) (Linux 5.6): opens `path` relative to `dirfd` with `resolve` flags (RESOLVE_BENEATH = 0x08,
/// RESOLVE_NO_SYMLINKS = 0x04, RESOLVE_NO_MAGICLINKS = 0x02). Returns the descriptor, or -1 with errno set (ENOSYS
/// on older kernels). Through syscall(2): glibc has no wrapper, and Swift cannot call a variadic function.
int pz_openat2(int dirfd, const char *_Nonnull path, int flags, unsigned long long resolve);

/// O_PATH (a descriptor that names a place without opening it for reading), which Swift's Glibc module does not
/// export: glibc defines it only under _GNU_SOURCE.
int pz_o_path(void);

#endif
