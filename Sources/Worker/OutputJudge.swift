internal import CSpawn
import AWSCore
@preconcurrency import Glibc

/// Decides what a finished command produced: the last non-empty line of its stdout names its one output file.
///
/// The command is untrusted, and so is every name it prints. A name is resolved the way the command meant it
/// (relative names against its working directory), must lead to a regular file inside the task's data folder or
/// the environment folder without crossing a symbolic link, and is opened once, there and then: the upload reads
/// from that descriptor, so nothing can be swapped in between the check and the read.
public enum OutputJudge {
    public enum Verdict: Sendable, Equatable {
        /// An open, regular file inside one of the folders: upload it under `name`. The caller closes it.
        case file(descriptor: Int32, name: String)
        /// No output named: the command printed nothing (aws-parallelizer's "move on").
        case none
        /// A name was printed but does not lead to an acceptable file: a task failure, with the reason.
        case rejected(String)
    }

    /// The last non-empty line of a (possibly huge) stdout, read through its descriptor: only the last 64 KiB.
    /// Bytes, not text: a file name may be in any encoding (Latin-1 among them).
    public static func lastLine(of descriptor: Int32) -> [UInt8]? {
        lastLine(in: LocalFile.tail(descriptor, bytes: 64 << 10) ?? [])
    }

    /// The same for a file by path (tests, tools).
    public static func lastLine(ofFile path: String) -> String? {
        lastLine(in: LocalFile.tail(path, bytes: 64 << 10) ?? []).map { String(decoding: $0, as: UTF8.self) }
    }

    static func lastLine(in bytes: [UInt8]) -> [UInt8]? {
        // From the end, line by line (split on the bytes, not on Characters over the whole tail).
        var end = bytes.endIndex
        while end > bytes.startIndex {
            let start = bytes[..<end].lastIndex(where: { $0 == 0x0a || $0 == 0x0d }).map { $0 + 1 } ?? bytes.startIndex
            let line = trimmed(bytes[start..<end])
            if !line.isEmpty { return Array(line) }
            end = start - 1
        }
        return nil
    }

    static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let space = { (b: UInt8) in b == 0x20 || b == 0x09 }
        guard let first = bytes.firstIndex(where: { !space($0) }), let last = bytes.lastIndex(where: { !space($0) })
        else { return [] }
        return bytes[first...last]
    }

    /// Judges the printed `line` (nil: nothing printed). Relative names are taken from `workingDirectory`; the file
    /// must lie inside one of `folders` (absolute paths without symbolic links: the task's data folder, the
    /// environment folder), and, with an `owner` (the run-as user), a file in the first folder (the data folder,
    /// where that user writes) must be that user's: a hard link to a file of root's, where the kernel allows one
    /// (`fs.protected_hardlinks=0`), is refused. (The environment is root's, and the user cannot write there.)
    public static func judge(line: [UInt8]?, workingDirectory: String, folders: [String], owner: UInt32? = nil)
        -> Verdict
    {
        guard let line, !line.isEmpty else { return .none }
        let shown = text(line)
        guard !line.contains(0) else { return .rejected("'\(shown)' has a NUL byte") }
        guard let path = absolutePath(line, workingDirectory: workingDirectory) else {
            return .rejected("'\(shown)' leads out of the root")
        }
        for folder in folders {
            guard let relative = relativePath(path, in: folder) else { continue }
            switch open(relative, beneath: folder) {
            case .success(let fd):
                var st = stat()
                guard fstat(fd, &st) == 0 else {
                    close(fd)
                    return .rejected("'\(shown)' cannot be read")
                }
                guard (st.st_mode & S_IFMT) == S_IFREG else {
                    close(fd)
                    return .rejected("'\(shown)' is \(kind(st.st_mode)), not a regular file")
                }
                if let owner, folder == folders.first, st.st_uid != owner {
                    close(fd)
                    return .rejected("'\(shown)' belongs to uid \(st.st_uid), not to the command's user (uid \(owner))")
                }

                // Opened without blocking (a FIFO must not stall the daemon); a regular file reads the same without.
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
                let last = line.split(separator: UInt8(ascii: "/")).last.map(Array.init) ?? []
                let name = last.isEmpty || last == [0x2e] || last == [0x2e, 0x2e] ? "output" : text(last)
                return .file(descriptor: fd, name: name)
            case .failure(let why):
                return .rejected("'\(shown)' \(why)")
            }
        }
        return .rejected("'\(shown)' is outside the task folder and the environment")
    }

    /// The output line as an absolute, lexically normalised path; nil when `..` would climb above `/`.
    static func absolutePath(_ line: [UInt8], workingDirectory: String) -> [UInt8]? {
        normalised(line.first == UInt8(ascii: "/") ? line : Array(workingDirectory.utf8) + [UInt8(ascii: "/")] + line)
    }

    /// `path` below `folder`, or nil when it is not inside it.
    static func relativePath(_ path: [UInt8], in folder: String) -> [UInt8]? {
        let root = normalised(Array(folder.utf8)) ?? Array(folder.utf8)
        guard path.count > root.count + 1, path.starts(with: root + [UInt8(ascii: "/")]) else { return nil }
        return Array(path[(root.count + 1)...])
    }

    /// Whether the output line names a file inside `folder` (where the judge found it, when it found one there).
    public static func names(_ line: [UInt8]?, inside folder: String, workingDirectory: String) -> Bool {
        guard let line, let path = absolutePath(line, workingDirectory: workingDirectory) else { return false }
        return relativePath(path, in: folder) != nil
    }

    /// A path's bytes with `.` and empty components dropped and `..` applied; nil when `..` would climb above `/`.
    /// Lexical, which is sound here: the opening itself refuses any symbolic link on the way.
    static func normalised(_ path: [UInt8]) -> [UInt8]? {
        var parts: [ArraySlice<UInt8>] = []
        for part in path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if part == [0x2e] { continue }
            if part == [0x2e, 0x2e] {
                guard !parts.isEmpty else { return nil }
                parts.removeLast()
                continue
            }
            parts.append(part)
        }
        return parts.reduce(into: [UInt8]()) { $0 += [UInt8(ascii: "/")] + $1 }
    }

    enum OpenFailure: Error, CustomStringConvertible {
        case missing, link, unreadable(String)
        var description: String {
            switch self {
            case .missing: return "does not exist"
            case .link: return "is a symbolic link, or leads through one"
            case .unreadable(let why): return "cannot be opened: \(why)"
            }
        }
    }

    /// Opens `relative` beneath `folder` without following any symbolic link: `openat2` with `RESOLVE_BENEATH |
    /// RESOLVE_NO_SYMLINKS`, or, on kernels before 5.6, a walk that opens each component with `O_NOFOLLOW`.
    static func open(_ relative: [UInt8], beneath folder: String) -> Result<Int32, OpenFailure> {
        let root = Glibc.open(folder, pz_o_path() | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else { return .failure(.unreadable(String(cString: strerror(errno)))) }
        defer { close(root) }
        let flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC
        let resolveBeneath: UInt64 = 0x08, resolveNoSymlinks: UInt64 = 0x04, resolveNoMagicLinks: UInt64 = 0x02
        let fd = (relative + [0]).withUnsafeBufferPointer { path in
            path.withMemoryRebound(to: CChar.self) {
                pz_openat2(root, $0.baseAddress!, flags, resolveBeneath | resolveNoSymlinks | resolveNoMagicLinks)
            }
        }
        if fd >= 0 { return .success(fd) }
        switch errno {
        case ENOSYS, EINVAL, E2BIG: return walk(relative, from: root, flags: flags)  // no openat2 (before 5.6)
        case ENOENT, ENOTDIR: return .failure(.missing)
        case ELOOP, EXDEV: return .failure(.link)
        default: return .failure(.unreadable(String(cString: strerror(errno))))
        }
    }

    /// Component by component from `root`: every directory opened with `O_NOFOLLOW`, then the file.
    static func walk(_ relative: [UInt8], from root: Int32, flags: Int32) -> Result<Int32, OpenFailure> {
        let parts = relative.split(separator: UInt8(ascii: "/"))
        var current = dup(root)
        defer { close(current) }
        for (index, part) in parts.enumerated() {
            let last = index == parts.count - 1
            let fd = (Array(part) + [0]).withUnsafeBufferPointer { name in
                name.withMemoryRebound(to: CChar.self) {
                    openat(current, $0.baseAddress!, last ? flags : pz_o_path() | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                }
            }
            guard fd >= 0 else {
                switch errno {
                case ENOENT: return .failure(.missing)
                case ELOOP, ENOTDIR: return .failure(.link)
                default: return .failure(.unreadable(String(cString: strerror(errno))))
                }
            }
            if last { return .success(fd) }
            close(current)
            current = fd
        }
        return .failure(.missing)
    }

    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR, S_IFBLK: return "a device"
        case S_IFSOCK: return "a socket"
        default: return "not a regular file"
        }
    }

    /// A name's bytes as text: UTF-8 when they are, otherwise Latin-1 (one character per byte), so that a name in
    /// an older encoding still gives a usable, stable S3 key.
    static func text(_ bytes: [UInt8]) -> String {
        String(validating: bytes, as: UTF8.self) ?? String(bytes.map { Character(Unicode.Scalar($0)) })
    }
}
