import AWSCore
@preconcurrency import Glibc

/// This machine's own trouble: a full disk or quota, no descriptors or processes left, a read-only or failing
/// filesystem. It is neither the task's fault nor AWS's, and another worker would do the task: the message goes
/// back without spending an attempt (`AttemptOutcome.deferred`), and a worker that meets it on several tasks in a
/// row leaves for a replacement (`DeadEnds.nodeTrouble`). A node with a full disk fails fast, so without this it
/// would take more messages than any healthy worker and turn them all into failures.
enum NodeTrouble {
    /// The `errno`s that are the machine's.
    static let errnos: Set<Int32> = [ENOSPC, EDQUOT, EMFILE, ENFILE, EROFS, EIO, ENOMEM, EAGAIN]

    /// The machine's trouble behind `error`, when it is that: a local file call that failed with one of `errnos`.
    static func reason(_ error: AWSError) -> String? {
        guard case .transport(.localFile) = error.kind, errnos.contains(error.systemErrno) else { return nil }
        return error.message
    }

    static func reason(errno code: Int32, _ what: String) -> String? {
        errnos.contains(code) ? "\(what): \(String(cString: strerror(code)))" : nil
    }

    /// Whether the filesystem under `path` is out of room (under 1 MiB, or no inodes, left to an unprivileged
    /// writer): a command that failed meanwhile most likely failed of it.
    static func fullDisk(under path: String) -> String? {
        var fs = statvfs()
        guard statvfs(path, &fs) == 0 else { return nil }
        let (free, overflow) = UInt64(fs.f_bavail).multipliedReportingOverflow(by: UInt64(fs.f_frsize))
        if overflow { return nil }
        if free < 1 << 20 { return "the disk of \(path) is full (\(free / 1024) KiB left)" }
        if fs.f_files > 0 && fs.f_favail == 0 { return "the disk of \(path) has no inodes left" }
        return nil
    }
}
