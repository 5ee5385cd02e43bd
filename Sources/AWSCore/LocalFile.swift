@preconcurrency import Glibc
import HTTPCurl

/// Small whole-file helpers for config-sized files (credentials, user-data). Large files are never read this way.
public enum LocalFile {
    /// The file's bytes, or nil if it cannot be opened. Refuses files over `limit` bytes.
    public static func read(_ path: String, limit: Int = 16 << 20) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = fread(&buffer, 1, buffer.count, file)
            if n <= 0 { break }
            bytes.append(contentsOf: buffer[0..<n])
            if bytes.count > limit { return nil }
        }
        return ferror(file) == 0 ? bytes : nil
    }

    public static func readText(_ path: String) -> String? {
        read(path).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The size of a regular file, or nil.
    public static func size(_ path: String) -> Int64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int64(st.st_size)
    }

    /// The size of a file given by path or by an open descriptor.
    public static func size(_ source: FileSource) -> Int64? {
        switch source {
        case .path(let path): return size(path)
        case .descriptor(let fd):
            var st = stat()
            guard fstat(fd, &st) == 0 else { return nil }
            return Int64(st.st_size)
        }
    }

    /// Writes `bytes` to `path` (truncating).
    @discardableResult
    public static func write(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) -> Bool {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return false }
            offset += n
        }
        return true
    }

    /// Writes `bytes` to a file beside `path`, flushes it and renames it into place: a reader sees the old content or
    /// the new, never half of it, even when the writer is killed.
    @discardableResult
    public static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) -> Bool {
        let temporary = path + ".tmp-\(getpid())"
        guard write(temporary, bytes, mode: mode) else {
            unlink(temporary)
            return false
        }
        let fd = open(temporary, O_RDONLY | O_CLOEXEC)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
        guard rename(temporary, path) == 0 else {
            unlink(temporary)
            return false
        }
        return true
    }

    /// The names in a folder, without `.` and `..`; empty if it cannot be read.
    public static func listDirectory(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// Removes a file or a folder tree. Links are removed, never followed, so nothing outside `path` is touched:
    /// the parent folder is opened, and the rest goes through descriptors (`removeTree(in:_:)`).
    public static func removeTree(_ path: String) {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        guard let slash = trimmed.lastIndex(of: "/") else {
            removeTree(in: AT_FDCWD, trimmed)
            return
        }
        let parentPath = slash == trimmed.startIndex ? "/" : String(trimmed[..<slash])
        let name = String(trimmed[trimmed.index(after: slash)...])
        guard !name.isEmpty, name != ".", name != ".." else { return }
        let parent = open(parentPath, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard parent >= 0 else { return }
        defer { close(parent) }
        removeTree(in: parent, name)
    }

    /// The last `bytes` bytes of a file (all of it when smaller), or nil if it cannot be read. For big logs and
    /// stdout files, of which only the end matters.
    public static func tail(_ path: String, bytes: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return tail(fd, bytes: bytes)
    }

    /// The last `bytes` of an open file, read at its offsets (the descriptor's position is left alone).
    public static func tail(_ fd: Int32, bytes: Int) -> [UInt8]? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        let size = Int(st.st_size)
        let window = min(size, bytes)
        var buffer = [UInt8](repeating: 0, count: window)
        let got = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, window, off_t(size - window)) }
        return got >= 0 ? Array(buffer.prefix(got)) : nil
    }

    /// `path` with every symbolic link resolved, or nil when it does not exist.
    public static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// Removes `name` in the folder open as `parent`, and everything under it, through descriptors only: each
    /// folder is opened with `O_NOFOLLOW` relative to its parent, and entries are removed with `unlinkat`. A
    /// symbolic link is removed, never followed, so nothing outside the tree can be reached even if the tree is
    /// changed while this runs.
    ///
    /// A command can leave a chain of folders tens of thousands deep. No more than `maxDepth` descriptors are held
    /// at once: a subtree deeper than that is moved up into the top folder (`renameat`) and removed from there on
    /// the next pass, so neither the descriptors nor the stack grow with the depth.
    public static func removeTree(in parent: Int32, _ name: String) {
        _ = removeTree(in: parent, name, maxDepth: 48)
    }

    /// Returns the most folder descriptors it held at once (for the tests).
    static func removeTree(in parent: Int32, _ name: String, maxDepth: Int) -> Int {
        let cName = Array(name.utf8CString)
        if unlinkat(parent, cName, 0) == 0 || errno == ENOENT { return 0 }
        let top = openat(parent, cName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard top >= 0 else { return 0 }
        var remover = TreeRemover(top: top, maxDepth: maxDepth)
        // Pass after pass while each removes or moves something: what resists (a busy mount point) ends it, and so
        // does a tree that grows while it is removed (a process still writing): one pass per subtree moved up,
        // and one more, are all a tree that holds still needs.
        var passes = 0
        while remover.progress && passes <= remover.moved + 1 {
            passes += 1
            remover.progress = false
            for entry in entries(of: top) ?? [] { remover.remove(entry, in: top, depth: 1) }
        }
        close(top)
        _ = unlinkat(parent, cName, AT_REMOVEDIR)
        return remover.mostHeld
    }

    private struct TreeRemover {
        let top: Int32
        let maxDepth: Int
        var progress = true
        var moved = 0
        var mostHeld = 1

        mutating func remove(_ name: [CChar], in dir: Int32, depth: Int) {
            if unlinkat(dir, name, 0) == 0 {
                progress = true
                return
            }
            if errno == ENOENT { return }
            if depth >= maxDepth {
                moved += 1
                if renameat(dir, name, top, Array(".deep-\(moved)-\(UInt32.random(in: 0...UInt32.max))".utf8CString))
                    == 0
                {
                    progress = true
                }
                return
            }
            let fd = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { return }
            mostHeld = max(mostHeld, depth + 1)
            for entry in LocalFile.entries(of: fd) ?? [] { remove(entry, in: fd, depth: depth + 1) }

            close(fd)
            if unlinkat(dir, name, AT_REMOVEDIR) == 0 { progress = true }
        }
    }

    /// The names in the folder open as `fd` (which stays open), as the bytes they are, NUL-terminated for the `*at`
    /// calls, without `.` and `..`: a command may make files whose names are not UTF-8. None when the folder cannot
    /// be read.
    public static func entries(of fd: Int32) -> [[CChar]]? {
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { return nil }
        guard let dir = fdopendir(copy) else {
            close(copy)
            return nil
        }
        defer { closedir(dir) }  // closes the copy
        rewinddir(dir)
        var names: [[CChar]] = []
        while let entry = readdir(dir) {
            let entryName = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                let bytes = raw.bindMemory(to: CChar.self)
                return Array(bytes.prefix { $0 != 0 }) + [0]
            }
            if entryName != [46, 0] && entryName != [46, 46, 0] { names.append(entryName) }
        }
        return names
    }
}

/// A file body's source (`HTTPCurl.FileSource`), for the layers above that speak only AWSCore.
public typealias FileSource = HTTPCurl.FileSource
