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
/// What the command left there is untrusted: the folder is walked without following a link; only regular files
/// with one name (no hard link to another file) on the folder's own filesystem, and, with a run-as user, that
/// user's, go up, each opened again beneath the folder and uploaded from the descriptor it was checked on. Anything
/// else saves nothing: one log line, and the last whole checkpoint stays.
struct Checkpoints<Store: ObjectStore>: Sendable {
    let store: Store
    let bucket: String
    /// The daemon's `outputPrefix`: a checkpoint of another run's outputs (another prefix) is not this task's.
    let outputPrefix: String
    /// The daemon's `inputBucket`: an input of another bucket has its checkpoints apart.
    var inputBucket = ""

    /// A checkpoint's files, as `manifest.json` lists them, and what it is a checkpoint of: the input (its bucket,
    /// key and ETag: an input replaced since is another task) and the run's `outputPrefix`.
    struct Manifest: Sendable, Equatable {
        var generation: String
        var files: [String]
        var input: String
        var inputETag: String?
        var outputPrefix: String

        var json: [UInt8] {
            var fields: [String: JSONValue] = [
                "generation": .string(generation), "files": .array(files.map { .string($0) }),
                "input": .string(input), "outputPrefix": .string(outputPrefix),
            ]
            if let inputETag { fields["inputETag"] = .string(inputETag) }
            return Array(JSONValue.object(fields).serialized.utf8)
        }

        init(generation: String, files: [String], input: String, inputETag: String?, outputPrefix: String) {
            self.generation = generation
            self.files = files
            self.input = input
            self.inputETag = inputETag
            self.outputPrefix = outputPrefix
        }

        init?(_ bytes: [UInt8]) {
            guard let json = try? JSONValue.parse(bytes), let generation = json["generation"]?.stringValue,
                let files = json["files"]?.arrayValue, let input = json["input"]?.stringValue
            else { return nil }
            self.generation = generation
            self.files = files.compactMap(\.stringValue)
            self.input = input
            self.inputETag = json["inputETag"]?.stringValue
            self.outputPrefix = json["outputPrefix"]?.stringValue ?? ""
        }

        /// Whether every name in it stays inside the checkpoint: one segment for the generation, relative paths of
        /// plain segments for the files. A manifest is the daemon's own, but the bucket is not only the daemon's.
        var isSafe: Bool {
            func plain<S: StringProtocol>(_ part: S) -> Bool { !part.isEmpty && part != "." && part != ".." }
            return plain(generation) && !generation.contains("/")
                && files.allSatisfy { $0.split(separator: "/", omittingEmptySubsequences: false).allSatisfy(plain) }
        }
    }

    static var limits: (files: Int, depth: Int) { (10_000, 32) }

    /// `<outputPrefix>_checkpoints/<input key>/` (an input of another bucket than `inputBucket` under
    /// `_buckets/<bucket>/`): two runs with their own output prefixes never touch each other's. A key too long to
    /// leave room for the files' names goes by its SHA-256.
    func folder(for input: S3URI) -> String {
        let base = outputPrefix + "_checkpoints/" + (input.bucket == inputBucket ? "" : "_buckets/\(input.bucket)/")
        let plain = base + input.key + "/"
        if plain.utf8.count <= 640 { return plain }
        return base + "_long-keys/" + Digest.sha256(Array(input.key.utf8)).hexString + "/"
    }

    func object(_ key: String) -> S3URI { S3URI(bucket: bucket, key: key) }

    /// The input's checkpoint manifest, when there is one; thrown: an error that is no answer (a throttle, a 5xx).
    func manifest(of input: S3URI, scratch: String, logger: Logger) async throws(AWSError) -> Manifest? {
        defer { unlink(scratch) }
        do {
            _ = try await store.download(object(folder(for: input) + "manifest.json"), to: scratch, logger: logger)
        } catch  where error.httpStatus == 404 {
            return nil
        }
        guard let bytes = LocalFile.read(scratch), let manifest = Manifest(bytes), manifest.isSafe else {
            logger.warning("the task's checkpoint manifest cannot be read; it is not used")
            return nil
        }
        return manifest
    }

    enum Restore: Sendable, Equatable {
        case none
        case restored(files: Int)
        /// The checkpoint could not be read now (a throttle, a 5xx, the network): the task waits rather than start
        /// over and, at its next stop, replace hours of work with minutes.
        case notNow(String)
        /// This machine could not hold it (a full disk): its trouble, as for a download.
        case machine(String)
    }

    /// What an error while reading a checkpoint means for the task: this machine's trouble, a wait, or (a refusal
    /// that waiting will not change) no checkpoint, said once.
    func verdict(_ error: AWSError, _ what: String, logger: Logger) -> Restore {
        if let trouble = NodeTrouble.reason(error) { return .machine("\(what): \(trouble)") }
        if error.isRetryable { return .notNow("\(what) now: \(error)") }
        logger.warning("\(what): it starts from the beginning", metadata: ["error": "\(error)"])
        return .none
    }

    /// Puts the input's last checkpoint into `directory` (the daemon's still, the command not started). `scratch`
    /// is a path of the daemon's own outside it. A checkpoint of another version of the input, or of another run's
    /// outputs, is not used.
    func restore(_ input: S3URI, etag: String?, into directory: String, scratch: String, logger: Logger) async
        -> Restore
    {
        let manifest: Manifest
        do {
            guard let found = try await self.manifest(of: input, scratch: scratch, logger: logger) else { return .none }
            manifest = found
        } catch {
            return verdict(error, "the task's checkpoint cannot be read", logger: logger)
        }
        // Of this version of this input, in this run: without an ETag on either side nothing says so.
        guard manifest.input == input.description, manifest.outputPrefix == outputPrefix, let etag,
            manifest.inputETag == etag
        else {
            logger.notice(
                "the checkpoint found is of another version of the input, or another run's outputs: not used",
                metadata: [
                    "checkpoint.input": "\(manifest.input)", "checkpoint.input_etag": "\(manifest.inputETag ?? "")",
                ])
            return .none
        }
        let folder = folder(for: input)
        for path in manifest.files {
            var folderPath = directory
            for part in path.split(separator: "/").dropLast() {
                folderPath += "/" + part
                _ = mkdir(folderPath, 0o700)
            }
            do {
                _ = try await store.download(
                    object(folder + manifest.generation + "/" + path), to: directory + "/" + path, logger: logger)
            } catch {
                for name in LocalFile.listDirectory(directory) { LocalFile.removeTree(directory + "/" + name) }
                if error.httpStatus == 404 {
                    logger.warning(
                        "the task's checkpoint is missing a file; it starts from the beginning",
                        metadata: ["checkpoint.file": "\(path)"])
                    return .none
                }
                return verdict(error, "the task's checkpoint cannot be read whole", logger: logger)
            }
        }
        logger.info(
            "checkpoint restored",
            metadata: [
                "checkpoint.files": "\(manifest.files.count)", "checkpoint.generation": "\(manifest.generation)",
            ])
        return .restored(files: manifest.files.count)
    }

    /// Uploads `directory` as the input's checkpoint, as a new generation; true once its manifest is in. Nothing is
    /// saved (the last whole checkpoint stays) when the command did not exit within its grace (`killed`: its state
    /// may be half written) or left anything that cannot be kept whole (a link, a FIFO, a tree too deep or too big).
    func save(
        _ input: S3URI, etag: String?, from directory: String, owner: UInt32?, generation: String, killed: Bool,
        scratch: String, logger: Logger
    ) async -> Bool {
        guard !killed else {
            logger.warning(
                "the checkpoint is not saved: the command did not exit within checkpointGrace, and its state may be half written; the last whole checkpoint stays"
            )
            return false
        }
        let root = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else { return false }
        defer { close(root) }
        var rootStat = stat()
        guard fstat(root, &rootStat) == 0 else { return false }
        var skipped: [String] = []
        let paths = Self.regularFiles(in: root, owner: owner, skipped: &skipped)
        guard skipped.isEmpty else {
            logger.warning(
                "the checkpoint is not saved: it holds what cannot be kept (only regular files of the command's own, with one name, are); the last whole checkpoint stays",
                metadata: ["checkpoint.refused": "\(skipped.prefix(10).joined(separator: ", "))"])
            return false
        }
        let previous = try? await self.manifest(of: input, scratch: scratch, logger: logger)
        let folder = folder(for: input)
        var bytes: Int64 = 0
        let started = ContinuousClock.now
        for path in paths {
            // Opened again, beneath the folder and checked on the descriptor that is then read: nothing is held open
            // for the whole walk, and nothing swapped in since the walk is followed.
            guard case .success(let fd) = OutputJudge.open(Array(path.utf8), beneath: directory) else {
                logger.warning("the checkpoint is not saved: \(path) changed while it was saved")
                return false
            }
            defer { close(fd) }
            var st = stat()
            guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_nlink == 1,
                st.st_dev == rootStat.st_dev, owner.map({ st.st_uid == $0 }) ?? true
            else {
                logger.warning("the checkpoint is not saved: \(path) changed while it was saved")
                return false
            }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
            do {
                try await store.upload(
                    file: .descriptor(fd), to: object(folder + generation + "/" + path), write: WriteOptions(),
                    logger: logger)
                bytes += Int64(st.st_size)
            } catch {
                logger.error(
                    "the checkpoint could not be saved; the task will start from its last whole checkpoint",
                    metadata: ["checkpoint.file": "\(path)", "error": "\(error)"])
                return false
            }
        }
        let manifest = Manifest(
            generation: generation, files: paths, input: input.description, inputETag: etag, outputPrefix: outputPrefix)
        do {
            try await store.put(
                manifest.json, to: object(folder + "manifest.json"), contentType: "application/json",
                onlyIfAbsent: false, logger: logger)
        } catch {
            logger.error("the checkpoint's manifest could not be written", metadata: ["error": "\(error)"])
            return false
        }
        let seconds = (started.duration(to: .now) / .milliseconds(1)).rounded() / 1000
        logger.notice(
            "checkpoint saved",
            metadata: [
                "checkpoint.files": "\(paths.count)", "checkpoint.bytes": "\(bytes)",
                "checkpoint.seconds": "\(seconds)",
                "checkpoint.key": "\(folder)",
            ])
        // The generation before goes: only the files its manifest names (a listing of the folder would also find
        // the checkpoints of inputs whose keys start with this one's).
        if let previous, previous.generation != generation, previous.input == input.description {
            for path in previous.files {
                try? await store.delete(object(folder + previous.generation + "/" + path), logger: logger)
            }
        }
        return true
    }

    /// Removes the input's checkpoint: its task is done. The manifest first: a checkpoint half removed is none.
    func remove(_ input: S3URI, scratch: String, logger: Logger) async {
        guard let manifest = try? await self.manifest(of: input, scratch: scratch, logger: logger),
            manifest.input == input.description
        else { return }
        let folder = folder(for: input)
        do {
            try await store.delete(object(folder + "manifest.json"), logger: logger)
        } catch {
            logger.warning(
                "the task's checkpoint could not be removed (the role needs s3:DeleteObject on _checkpoints/)",
                metadata: ["error": "\(error)"])
            return
        }
        for path in manifest.files {
            try? await store.delete(object(folder + manifest.generation + "/" + path), logger: logger)
        }
    }

    /// The regular files under the folder open as `root`, by relative path: each looked at without following a
    /// link, and only kept when it has one name, lies on the folder's filesystem, and is `owner`'s when given.
    /// Anything else is named in `skipped`.
    static func regularFiles(in root: Int32, owner: UInt32?, skipped: inout [String]) -> [String] {
        var rootStat = stat()
        guard fstat(root, &rootStat) == 0 else { return [] }
        var files: [String] = []
        func walk(_ folder: Int32, prefix: String, depth: Int) {
            guard depth < limits.depth else {
                skipped.append(prefix + " (deeper than \(limits.depth) folders)")
                return
            }
            guard let entries = LocalFile.entries(of: folder) else {
                skipped.append(prefix + " (cannot be read)")
                return
            }
            for entry in entries {
                let name = entry.dropLast().map { UInt8(bitPattern: $0) }
                guard let text = String(validating: name, as: UTF8.self), !text.contains("\n") else {
                    skipped.append(prefix + String(decoding: name, as: UTF8.self) + " (not a UTF-8 name)")
                    continue
                }
                let path = prefix + text
                guard files.count < limits.files else {
                    skipped.append(path + " (more than \(limits.files) files)")
                    return
                }
                var st = stat()
                guard fstatat(folder, entry, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
                    skipped.append(path + " (cannot be read)")
                    continue
                }
                guard st.st_dev == rootStat.st_dev else {
                    skipped.append(path + " (another filesystem)")
                    continue
                }
                if let owner, st.st_uid != owner {
                    skipped.append(path + " (not the command's user's)")
                    continue
                }
                switch st.st_mode & S_IFMT {
                case S_IFDIR:
                    let fd = openat(folder, entry, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                    guard fd >= 0 else {
                        skipped.append(path + " (cannot be read)")
                        continue
                    }
                    walk(fd, prefix: path + "/", depth: depth + 1)
                    close(fd)
                case S_IFREG where st.st_nlink == 1: files.append(path)
                case S_IFLNK: skipped.append(path + " (a symbolic link)")
                default: skipped.append(path + (st.st_nlink > 1 ? " (a hard link)" : " (not a regular file)"))
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
        guard fchown(folder, uid, gid) == 0, let names = entries(of: folder) else { return false }
        var ok = true
        for name in names {
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
    var checkpoints: Checkpoints<Store> {
        Checkpoints(
            store: store.base, bucket: config.outputBucket, outputPrefix: config.outputPrefix,
            inputBucket: config.inputBucket)
    }
}
