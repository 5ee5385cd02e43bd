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

    /// Removes a file or a folder tree. Links are removed, never followed, so nothing outside `path` is touched.
    public static func removeTree(_ path: String) {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            for name in listDirectory(path) { removeTree(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
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
    public static func removeTree(in parent: Int32, _ name: String) {
        removeTree(in: parent, cName: Array(name.utf8CString))
    }

    /// Names as the bytes they are: a command may make files whose names are not UTF-8.
    private static func removeTree(in parent: Int32, cName: [CChar]) {
        if unlinkat(parent, cName, 0) == 0 || errno == ENOENT { return }
        let fd = openat(parent, cName, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return }
        guard let dir = fdopendir(fd) else {
            close(fd)
            return
        }
        var names: [[CChar]] = []
        while let entry = readdir(dir) {
            let entryName = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                let bytes = raw.bindMemory(to: CChar.self)
                return Array(bytes.prefix { $0 != 0 }) + [0]
            }
            if entryName != [46, 0] && entryName != [46, 46, 0] { names.append(entryName) }
        }
        for entryName in names { removeTree(in: fd, cName: entryName) }
        closedir(dir)  // closes fd
        _ = unlinkat(parent, cName, AT_REMOVEDIR)
    }
}

/// A file body's source (`HTTPCurl.FileSource`), for the layers above that speak only AWSCore.
public typealias FileSource = HTTPCurl.FileSource
