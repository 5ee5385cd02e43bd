import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging

/// Checkpoints (`checkpoint=true`): a long task interrupted by a spot notice or a stop goes on, on any instance,
/// from where it was, instead of from the start.
///
/// The command gets `PARALLELIZER_CHECKPOINT_DIR`, a folder of the task's own. At a stop it gets SIGTERM at once and
/// `checkpointGrace` seconds to write its state there and exit; the daemon uploads the folder to
/// `_checkpoints/<input key>/` in the output bucket and releases the message, spending no attempt. The next attempt,
/// on whatever instance, finds the folder as it was left before its command starts; a task that completes removes
/// it.
///
/// In the bucket, one checkpoint is a generation of files, `_checkpoints/<input key>/<generation>/<path>`, named by
/// `manifest.json` beside them, written last: a save cut short (the instance gone mid-upload) leaves the last whole
/// checkpoint in force, never half of a new one. The generation before is deleted once the new manifest is in.
///
/// What the command left there is untrusted: the folder is walked through descriptors, never following a link;
/// only regular files with one name (no hard link to another file) on the folder's own filesystem, and, with a
/// run-as user, that user's, are uploaded from the descriptor they were checked on. Anything else is left out with
/// one log line.
struct Checkpoints<Store: ObjectStore>: Sendable {
    let store: Store
    let bucket: String

    /// A checkpoint's files, as `manifest.json` lists them.
    struct Manifest: Sendable, Equatable {
        var generation: String
        var files: [String]

        var json: [UInt8] {
            Array(
                JSONValue.object([
                    "generation": .string(generation), "files": .array(files.map { .string($0) }),
                ]).serialized.utf8)
        }

        init(generation: String, files: [String]) {
            self.generation = generation
            self.files = files
        }

        init?(_ bytes: [UInt8]) {
            guard let json = try? JSONValue.parse(bytes), let generation = json["generation"]?.stringValue,
                let files = json["files"]?.arrayValue
            else { return nil }
            self.generation = generation
            self.files = files.compactMap(\.stringValue)
        }
    }

    static var limits: (files: Int, depth: Int) { (10_000, 32) }

    /// `_checkpoints/<input key>/`; a key too long to leave room for the files' names goes by its SHA-256.
    static func folder(for input: S3URI) -> String {
        let plain = "_checkpoints/" + input.key + "/"
        if plain.utf8.count <= 512 { return plain }
        return "_checkpoints/_long-keys/" + Digest.sha256(Array(input.key.utf8)).hexString + "/"
    }

    func object(_ key: String) -> S3URI { S3URI(bucket: bucket, key: key) }

    /// Puts the input's last checkpoint into `directory` (the daemon's still, the command not started). Returns the
    /// number of files restored; a checkpoint that cannot be read whole is no checkpoint (the folder is emptied,
    /// and the command starts from the beginning), said in one line.
    func restore(_ input: S3URI, into directory: String, logger: Logger) async -> Int {
        let folder = Self.folder(for: input)
        let manifestPath = directory + "/.parallelizer-manifest"
        defer { unlink(manifestPath) }
        do {
            _ = try await store.download(object(folder + "manifest.json"), to: manifestPath, logger: logger)
        } catch {
            if error.httpStatus != 404 {
                logger.warning(
                    "cannot read the task's checkpoint; it starts from the beginning", metadata: ["error": "\(error)"])
            }
            return 0
        }
        guard let bytes = LocalFile.read(manifestPath), let manifest = Manifest(bytes) else {
            logger.warning("the task's checkpoint manifest cannot be read; it starts from the beginning")
            return 0
        }
        for path in manifest.files {
            // Names as the save wrote them: relative, no `..`, no empty part.
            let parts = path.split(separator: "/", omittingEmptySubsequences: false)
            guard !parts.isEmpty, parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else { continue }
            var folderPath = directory
            for part in parts.dropLast() {
                folderPath += "/" + part
                _ = mkdir(folderPath, 0o700)
            }
            do {
                _ = try await store.download(
                    object(folder + manifest.generation + "/" + path), to: directory + "/" + path, logger: logger)
            } catch {
                logger.warning(
                    "cannot restore the task's checkpoint whole; it starts from the beginning",
                    metadata: ["checkpoint.file": "\(path)", "error": "\(error)"])
                for name in LocalFile.listDirectory(directory) { LocalFile.removeTree(directory + "/" + name) }
                return 0
            }
        }
        logger.info(
            "checkpoint restored",
            metadata: [
                "checkpoint.files": "\(manifest.files.count)", "checkpoint.generation": "\(manifest.generation)",
            ])
        return manifest.files.count
    }

    /// Uploads `directory` as the input's checkpoint, as a new generation; true once its manifest is in.
    func save(
        _ input: S3URI, from directory: String, owner: UInt32?, generation: String, logger: Logger
    ) async -> Bool {
        let folder = Self.folder(for: input)
        let previous = try? await store.keys(under: object(folder), logger: logger)
        let root = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else { return false }
        defer { close(root) }
        var skipped: [String] = []
        let files = Self.regularFiles(in: root, owner: owner, skipped: &skipped)
        defer { files.forEach { close($0.descriptor) } }
        if !skipped.isEmpty {
            logger.warning(
                "left out of the checkpoint: only regular files of the command's own are kept",
                metadata: ["checkpoint.skipped": "\(skipped.prefix(10).joined(separator: ", "))"])
        }
        var bytes: Int64 = 0
        let started = ContinuousClock.now
        for file in files {
            do {
                try await store.upload(
                    file: .descriptor(file.descriptor), to: object(folder + generation + "/" + file.path),
                    write: WriteOptions(), logger: logger)
                bytes += file.size
            } catch {
                logger.error(
                    "the checkpoint could not be saved; the task will start from its last whole checkpoint",
                    metadata: ["checkpoint.file": "\(file.path)", "error": "\(error)"])
                return false
            }
        }
        do {
            try await store.put(
                Manifest(generation: generation, files: files.map(\.path)).json,
                to: object(folder + "manifest.json"), contentType: "application/json", onlyIfAbsent: false,
                logger: logger)
        } catch {
            logger.error("the checkpoint's manifest could not be written", metadata: ["error": "\(error)"])
            return false
        }
        let seconds = (started.duration(to: .now) / .milliseconds(1)).rounded() / 1000
        logger.notice(
            "checkpoint saved",
            metadata: [
                "checkpoint.files": "\(files.count)", "checkpoint.bytes": "\(bytes)",
                "checkpoint.seconds": "\(seconds)",
                "checkpoint.key": "\(folder)",
            ])
        // The generations before this one go.
        for key in previous ?? [] where !key.hasPrefix(folder + generation + "/") && key != folder + "manifest.json" {
            try? await store.delete(object(key), logger: logger)
        }
        return true
    }

    /// Removes the input's checkpoint: its task is done.
    func remove(_ input: S3URI, logger: Logger) async {
        let folder = Self.folder(for: input)
        guard let keys = try? await store.keys(under: object(folder), logger: logger), !keys.isEmpty else { return }
        // The manifest first: a checkpoint half removed is no checkpoint.
        for key in keys.sorted(by: { a, _ in a == folder + "manifest.json" }) {
            try? await store.delete(object(key), logger: logger)
        }
    }

    struct File {
        var path: String
        var descriptor: Int32
        var size: Int64
    }

    /// The regular files under the folder open as `root`, each opened without following a link and checked on its
    /// descriptor: one name only, on the folder's filesystem, owned by `owner` when given.
    static func regularFiles(in root: Int32, owner: UInt32?, skipped: inout [String]) -> [File] {
        var rootStat = stat()
        guard fstat(root, &rootStat) == 0 else { return [] }
        var files: [File] = []
        func walk(_ folder: Int32, prefix: String, depth: Int) {
            guard depth < limits.depth, let dir = fdopendir(dup(folder)) else { return }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { Array($0.prefix { $0 != 0 }) }
                if name == [0x2e] || name == [0x2e, 0x2e] { continue }
                guard let text = String(validating: name, as: UTF8.self), !text.contains("\n") else {
                    skipped.append(prefix + String(decoding: name, as: UTF8.self) + " (not a UTF-8 name)")
                    continue
                }
                let path = prefix + text
                guard files.count < limits.files else {
                    skipped.append(path + " (more than \(limits.files) files)")
                    return
                }
                let fd = openat(folder, text, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
                guard fd >= 0 else {
                    skipped.append(path + (errno == ELOOP ? " (a symbolic link)" : " (cannot be opened)"))
                    continue
                }
                var st = stat()
                guard fstat(fd, &st) == 0, st.st_dev == rootStat.st_dev else {
                    close(fd)
                    skipped.append(path + " (another filesystem)")
                    continue
                }
                if let owner, st.st_uid != owner {
                    close(fd)
                    skipped.append(path + " (not the command's user's)")
                    continue
                }
                switch st.st_mode & S_IFMT {
                case S_IFDIR:
                    walk(fd, prefix: path + "/", depth: depth + 1)
                    close(fd)
                case S_IFREG where st.st_nlink == 1:
                    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
                    files.append(File(path: path, descriptor: fd, size: Int64(st.st_size)))
                default:
                    close(fd)
                    skipped.append(path + (st.st_nlink > 1 ? " (a hard link)" : " (not a regular file)"))
                }
            }
        }
        walk(root, prefix: "", depth: 0)
        return files
    }
}

extension LocalFile {
    /// Gives the tree under the folder open as `folder` to `uid`/`gid`, never following a link: for a tree the
    /// daemon made itself.
    static func chownTree(_ folder: Int32, uid: UInt32, gid: UInt32) -> Bool {
        guard fchown(folder, uid, gid) == 0, let dir = fdopendir(dup(folder)) else { return false }
        defer { closedir(dir) }
        var ok = true
        while let entry = readdir(dir) {
            let name = withUnsafePointer(to: entry.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name == "." || name == ".." { continue }
            let child = openat(folder, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            if child >= 0 {
                ok = chownTree(child, uid: uid, gid: gid) && ok
                close(child)
            } else if fchownat(folder, name, uid, gid, AT_SYMLINK_NOFOLLOW) != 0 {
                ok = false
            }
        }
        return ok
    }
}

extension MessageProcessor {
    /// On the store itself, not the watched one: a checkpoint is the task's help, and its calls nobody's dead end.
    var checkpoints: Checkpoints<Store> { Checkpoints(store: store.base, bucket: config.outputBucket) }
}
