internal import CSpawn
import AWSCore
@preconcurrency import Glibc

/// Writes an archive's entries under one folder, and only there: regular files, folders, and symbolic links whose
/// target stays inside. Every path is walked from the folder's descriptor one component at a time with `O_NOFOLLOW`
/// (an entry cannot reach through a link the archive made earlier), files are created with `O_EXCL`, and the total
/// size is capped. Anything else (a device node, a FIFO, a hard link, a path that leaves the folder) refuses the
/// whole archive, naming the entry.
final class Unpacker {
    struct Refusal: Error, CustomStringConvertible {
        var description: String
    }

    /// What an archive entry is.
    enum Kind {
        case file
        case directory
        case symlink(target: String)
        /// Anything else, described for the refusal (`a device node`, `a hard link`, `a FIFO`).
        case unsupported(String)
    }

    private let root: Int32
    private let folder: String
    /// The links made, as paths under the folder: checked again once everything is in place (`checkLinks`).
    private var links: [[String]] = []
    let maxBytes: Int64
    private(set) var bytesWritten: Int64 = 0
    private(set) var entries = 0
    static let maxEntries = 1_000_000

    /// Unpacks under `folder` (an existing, empty folder), at most `maxBytes` of file content in all.
    init(into folder: String, maxBytes: Int64) throws(Refusal) {
        root = open(folder, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else {
            throw Refusal(description: "cannot open \(folder): \(String(cString: strerror(errno)))")
        }
        self.maxBytes = maxBytes
        self.folder = folder
    }

    deinit { close(root) }

    /// The entry's path as components: relative, no `..`, no NUL; `./` and empty components dropped. Nil for the
    /// archive's root itself (`./`).
    static func components(of name: String) throws(Refusal) -> [String]? {
        guard !name.utf8.contains(0) else { throw Refusal(description: "'\(name)' has a NUL byte") }
        guard !name.hasPrefix("/") else { throw Refusal(description: "'\(name)' is an absolute path") }
        let parts = name.split(separator: "/", omittingEmptySubsequences: true).map(String.init).filter { $0 != "." }
        guard !parts.contains("..") else { throw Refusal(description: "'\(name)' escapes its folder") }
        return parts.isEmpty ? nil : parts
    }

    /// Adds one entry; for a file, `write` is called with a sink for its content.
    func add(_ name: String, kind: Kind, write: ((Int32) throws(Refusal) -> Void)? = nil) throws(Refusal) {
        entries += 1
        guard entries <= Self.maxEntries else {
            throw Refusal(description: "more than \(Self.maxEntries) entries")
        }
        if case .unsupported(let what) = kind { throw Refusal(description: "'\(name)' is \(what)") }
        guard let parts = try Self.components(of: name) else { return }
        let parent = try folder(for: parts.dropLast(), entry: name)
        defer { if parent != root { close(parent) } }
        let leaf = parts.last!
        switch kind {
        case .directory:
            if mkdirat(parent, leaf, 0o755) != 0 && errno != EEXIST {
                throw Refusal(description: "cannot create '\(name)': \(String(cString: strerror(errno)))")
            }
            // An entry that exists must be a real folder, not a link the archive made.
            let check = openat(parent, leaf, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard check >= 0 else { throw Refusal(description: "'\(name)' leads through a link") }
            close(check)
        case .symlink(let target):
            try checkLink(target, at: parts, entry: name)
            guard symlinkat(target, parent, leaf) == 0 else {
                throw Refusal(description: "cannot create the link '\(name)': \(String(cString: strerror(errno)))")
            }
            links.append(parts)
        case .file:
            let fd = openat(parent, leaf, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o755)
            guard fd >= 0 else {
                throw Refusal(
                    description: errno == EEXIST
                        ? "'\(name)' appears twice" : "cannot create '\(name)': \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
            try write?(fd)
        case .unsupported:
            break
        }
    }

    /// Counts `count` more bytes of file content against the cap.
    func count(_ count: Int, entry: String) throws(Refusal) {
        bytesWritten += Int64(count)
        guard bytesWritten <= maxBytes else {
            throw Refusal(description: "it unpacks to more than \(maxBytes >> 20) MiB (at '\(entry)')")
        }
    }

    /// The folder for an entry's parent components, made as needed, each opened with `O_NOFOLLOW`.
    private func folder(for parts: ArraySlice<String>, entry: String) throws(Refusal) -> Int32 {
        var current = root
        for part in parts {
            if mkdirat(current, part, 0o755) != 0 && errno != EEXIST {
                if current != root { close(current) }
                throw Refusal(description: "cannot create a folder for '\(entry)': \(String(cString: strerror(errno)))")
            }
            let next = openat(current, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if current != root { close(current) }
            guard next >= 0 else { throw Refusal(description: "'\(entry)' leads through a link or a file") }
            current = next
        }
        return current
    }

    /// Checks every link once the archive is unpacked, the way the kernel resolves it: one link's target can lead
    /// through another (`l -> .`, then `x -> l/l/../../etc`), which the lexical check of each alone (`checkLink`)
    /// does not see. `openat2` with `RESOLVE_BENEATH` from the folder refuses any resolution that leaves it; on
    /// kernels before 5.6, the resolved path must lie inside the folder.
    func checkLinks() throws(Refusal) {
        let base = LocalFile.realPath(folder) ?? folder
        for parts in links {
            let path = parts.joined(separator: "/")
            let resolveBeneath: UInt64 = 0x08
            let fd = pz_openat2(root, path, pz_o_path() | O_CLOEXEC, resolveBeneath)
            if fd >= 0 {
                close(fd)
                continue
            }
            switch errno {
            case ENOENT, ENOTDIR:
                continue  // a link to nothing (yet) inside: its lexical check passed
            case EXDEV:
                throw Refusal(description: "'\(path)' is a link that leads outside the archive through another link")
            case ELOOP:
                throw Refusal(description: "'\(path)' is a link in a loop of links")
            case ENOSYS, EINVAL, E2BIG, EPERM:
                // No openat2 (a kernel before 5.6, or a container's seccomp filter): the resolved path is checked.
                guard let real = LocalFile.realPath(base + "/" + path) else {
                    if errno == ELOOP { throw Refusal(description: "'\(path)' is a link in a loop of links") }
                    continue
                }
                if real != base, !real.hasPrefix(base + "/") {
                    throw Refusal(
                        description: "'\(path)' is a link that leads outside the archive through another link")
                }
            default:
                throw Refusal(description: "'\(path)' cannot be checked: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// A link's target must be relative and stay inside the folder, resolved from the link's own folder.
    private func checkLink(
        _ target: String, at parts: [String], entry: String
    ) throws(Refusal) {
        guard !target.hasPrefix("/"), !target.isEmpty, !target.utf8.contains(0) else {
            throw Refusal(description: "'\(entry)' is a link pointing outside the archive ('\(target)')")
        }
        var depth = parts.count - 1
        for part in target.split(separator: "/", omittingEmptySubsequences: true) where part != "." {
            depth += part == ".." ? -1 : 1
            guard depth >= 0 else {
                throw Refusal(description: "'\(entry)' is a link pointing outside the archive ('\(target)')")
            }
        }
    }
}
