import AWSCore
@preconcurrency import Glibc

/// Decides what a finished command produced: the last non-empty line of its stdout names its one output file.
public enum OutputJudge {
    public enum Verdict: Sendable, Equatable {
        /// A regular file inside the task folder: upload it under `name`.
        case file(path: String, name: String)
        /// No output named (the seed's "move on": delete the message, upload nothing).
        case none
        /// A line was printed but does not name an acceptable file.
        case rejected(String)
    }

    /// The last non-empty line of a (possibly huge) stdout file; only its last 64 KiB are read.
    public static func lastLine(ofFile path: String) -> String? {
        guard let bytes = LocalFile.tail(path, bytes: 64 << 10) else { return nil }
        // From the end, line by line (split on the bytes, not on Characters over the whole tail).
        var end = bytes.endIndex
        while end > bytes.startIndex {
            let start = bytes[..<end].lastIndex(where: { $0 == 0x0a || $0 == 0x0d }).map { $0 + 1 } ?? bytes.startIndex
            let line = String(decoding: bytes[start..<end], as: UTF8.self)[...].trimmingSpaces
            if !line.isEmpty { return line }
            end = start - 1
        }
        return nil
    }

    /// Judges `line` against the task folder: relative paths are taken from the folder; the resolved file (links
    /// followed) must be a regular file inside it. Directories, FIFOs, devices and anything outside are refused.
    public static func judge(line: String?, taskDirectory: String) -> Verdict {
        guard let line, !line.isEmpty else { return .none }
        let candidate = line.hasPrefix("/") ? line : taskDirectory + "/" + line
        guard let root = realPath(taskDirectory) else { return .rejected("the task folder is gone") }
        guard let resolved = realPath(candidate) else { return .rejected("'\(line)' does not exist") }
        guard resolved.hasPrefix(root + "/") else { return .rejected("'\(line)' is outside the task folder") }
        var st = stat()
        guard stat(resolved, &st) == 0 else { return .rejected("'\(line)' cannot be read") }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            let kind =
                (st.st_mode & S_IFMT) == S_IFDIR
                ? "a directory" : (st.st_mode & S_IFMT) == S_IFIFO ? "a FIFO" : "not a regular file"
            return .rejected("'\(line)' is \(kind)")
        }
        let printedName = line.split(separator: "/").last.map(String.init) ?? ""
        let name =
            printedName.isEmpty || printedName == "." || printedName == ".."
            ? TaskPaths.localName(forKey: resolved) : printedName
        return .file(path: resolved, name: name)
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
