import AWSCore
@preconcurrency import Glibc

/// One task's folder, made so that a hostile command cannot turn the daemon's own file work against it.
///
///     tasks/<slot>-<message>-<random>/   the daemon's (root's), mode 0711 with a run-as user: it may pass through
///         stdout.log, stderr.log         the daemon's, 0600; the command writes to them only through write-only
///                                        descriptors it is given, and the daemon reads them back through its own
///         data/                          the input, and whatever the command writes; the daemon's until the input
///                                        is in place, then handed to the run-as user (`handOver`)
///         tmp/                           the command's /tmp and /var/tmp, where it gets a mount namespace
///         checkpoint/                    with `checkpoint`: PARALLELIZER_CHECKPOINT_DIR, the last checkpoint put
///                                        back in it while it is the daemon's, then handed over with data/
///
/// Everything after the creation goes through descriptors: the logs are never opened by name again (a link put in
/// their place would lead nowhere), the input is downloaded while no process of the user can reach the folder, and
/// the folder is removed with `unlinkat` on descriptors, never following a link (`LocalFile.removeTree(in:_:)`).
struct TaskFolder {
    let path: String
    /// The data folder: the input goes here, and here the command runs when there is no environment.
    let data: String
    /// The folder bound on the command's /tmp.
    let tmp: String
    /// `PARALLELIZER_CHECKPOINT_DIR` (made only with `checkpoint`).
    var checkpoint: String { path + "/checkpoint" }
    /// The daemon's descriptors on the logs (read and write; it reads them back).
    let stdout: Int32
    let stderr: Int32
    /// The command's: write-only, appending.
    let commandStdout: Int32
    let commandStderr: Int32
    private let tasks: Int32
    private let root: Int32
    private let name: String
    private let user: RunAsUser?

    struct Failure: Error, CustomStringConvertible {
        var description: String
        /// The `errno` of the call that failed (ENOSPC, EMFILE: the machine's trouble).
        var errno: Int32 = 0
    }

    /// Makes `name` in the folder `tasksPath`, for a command that runs as `user` (nil: as the daemon's user).
    static func make(in tasksPath: String, name: String, user: RunAsUser?, checkpoint: Bool = false)
        throws(Failure) -> TaskFolder
    {
        let path = tasksPath + "/" + name
        // (`errno` is read at the call, before any clean-up can change it.)
        func failure(_ what: String, _ code: Int32) -> Failure {
            Failure(
                description: "cannot create the task folder \(path) (\(what)): \(String(cString: strerror(code)))",
                errno: code)
        }
        let tasks = open(tasksPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard tasks >= 0 else { throw failure("tasks", errno) }
        guard mkdirat(tasks, name, user == nil ? 0o700 : 0o711) == 0 else {
            let code = errno
            close(tasks)
            throw failure("mkdir", code)
        }
        let root = openat(tasks, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        var made = TaskFolder(
            path: path, data: path + "/data", tmp: path + "/tmp", stdout: -1, stderr: -1, commandStdout: -1,
            commandStderr: -1, tasks: tasks, root: root, name: name, user: user)
        guard root >= 0 else {
            let code = errno
            made.remove()
            throw failure("open", code)
        }
        guard mkdirat(root, "data", 0o700) == 0, mkdirat(root, "tmp", 0o700) == 0,
            !checkpoint || mkdirat(root, "checkpoint", 0o700) == 0
        else {
            let code = errno
            made.remove()
            throw failure("data", code)
        }
        if let user, fchownat(root, "tmp", user.uid, user.gid, AT_SYMLINK_NOFOLLOW) != 0 {
            let code = errno
            made.remove()
            throw failure("chown", code)
        }
        let flags = O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        let appending = O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC
        let stdout = openat(root, "stdout.log", flags, 0o600)
        let stderr = openat(root, "stderr.log", flags, 0o600)
        made = TaskFolder(
            path: path, data: path + "/data", tmp: path + "/tmp", stdout: stdout, stderr: stderr,
            commandStdout: stdout >= 0 ? openat(root, "stdout.log", appending) : -1,
            commandStderr: stderr >= 0 ? openat(root, "stderr.log", appending) : -1, tasks: tasks, root: root,
            name: name, user: user)
        guard made.stdout >= 0, made.stderr >= 0, made.commandStdout >= 0, made.commandStderr >= 0 else {
            let code = errno
            made.remove()
            throw failure("logs", code)
        }
        return made
    }

    /// Gives the data folder and the input in it (`input`, a name in it) to the run-as user. Before this, the
    /// folder is the daemon's alone (0700): the download cannot be redirected by a link planted there. Through
    /// descriptors, without following links.
    func handOver(input: String, checkpoint: Bool = false) throws(Failure) {
        guard let user else { return }
        if checkpoint {
            // Everything in it was made here by the daemon, while no process of the user could reach it.
            let folder = openat(root, "checkpoint", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard folder >= 0, LocalFile.chownTree(folder, uid: user.uid, gid: user.gid) else {
                if folder >= 0 { close(folder) }
                throw Failure(description: "cannot give \(self.checkpoint) to \(user.name)")
            }
            close(folder)
        }
        let data = openat(root, "data", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard data >= 0 else {
            throw Failure(description: "cannot open \(self.data): \(String(cString: strerror(errno)))")
        }
        defer { close(data) }
        guard fchownat(data, input, user.uid, user.gid, AT_SYMLINK_NOFOLLOW) == 0 || errno == ENOENT,
            fchown(data, user.uid, user.gid) == 0
        else {
            throw Failure(description: "cannot give \(self.data) to \(user.name): \(String(cString: strerror(errno)))")
        }
    }

    /// The last `bytes` of what the command wrote to stderr.
    func stderrTail(bytes: Int) -> String {
        LocalFile.tail(stderr, bytes: bytes).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Closes the logs and removes the folder, whatever the command left in it.
    func remove() {
        for fd in [stdout, stderr, commandStdout, commandStderr, root] where fd >= 0 { close(fd) }
        LocalFile.removeTree(in: tasks, name)
        close(tasks)
    }
}
