import AWSCore
@preconcurrency import Glibc

/// One task's folder, made so that a hostile command cannot turn the daemon's own file work against it.
///
///     tasks/<slot>-<message>-<random>/   the daemon's (root's), mode 0711 with a run-as user: it may pass through
///         stdout.log, stderr.log         the daemon's, 0600; the command writes to them only through the
///                                        descriptors it is given, and the daemon reads them back through its own
///         data/                          the command's: the input, and whatever it writes
///
/// Everything after the creation goes through descriptors: the logs are never opened by name again (a link put in
/// their place would lead nowhere), and the folder is removed with `unlinkat` on descriptors, never following a
/// link (`LocalFile.removeTree(in:_:)`).
struct TaskFolder {
    let path: String
    /// The data folder: the input goes here, and here the command runs when there is no environment.
    let data: String
    let stdout: Int32
    let stderr: Int32
    private let tasks: Int32
    private let name: String

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Makes `name` in the folder `tasksPath`; `user` gets the data folder.
    static func make(in tasksPath: String, name: String, user: RunAsUser?) throws(Failure) -> TaskFolder {
        let path = tasksPath + "/" + name
        func failure(_ what: String) -> Failure {
            Failure(description: "cannot create the task folder \(path) (\(what)): \(String(cString: strerror(errno)))")
        }
        let tasks = open(tasksPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard tasks >= 0 else { throw failure("tasks") }
        guard mkdirat(tasks, name, user == nil ? 0o700 : 0o711) == 0 else {
            close(tasks)
            throw failure("mkdir")
        }
        var made = TaskFolder(path: path, data: path + "/data", stdout: -1, stderr: -1, tasks: tasks, name: name)
        let root = openat(tasks, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else {
            made.remove()
            throw failure("open")
        }
        defer { close(root) }
        guard mkdirat(root, "data", 0o700) == 0 else {
            made.remove()
            throw failure("data")
        }
        if let user, fchownat(root, "data", user.uid, user.gid, AT_SYMLINK_NOFOLLOW) != 0 {
            made.remove()
            throw failure("chown")
        }
        let flags = O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC
        made = TaskFolder(
            path: path, data: path + "/data", stdout: openat(root, "stdout.log", flags, 0o600),
            stderr: openat(root, "stderr.log", flags, 0o600), tasks: tasks, name: name)
        guard made.stdout >= 0, made.stderr >= 0 else {
            made.remove()
            throw failure("logs")
        }
        return made
    }

    /// The last `bytes` of what the command wrote to stderr.
    func stderrTail(bytes: Int) -> String {
        LocalFile.tail(stderr, bytes: bytes).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Closes the logs and removes the folder, whatever the command left in it.
    func remove() {
        if stdout >= 0 { close(stdout) }
        if stderr >= 0 { close(stderr) }
        LocalFile.removeTree(in: tasks, name)
        close(tasks)
    }
}
