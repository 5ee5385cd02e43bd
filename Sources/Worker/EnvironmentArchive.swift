import AWSCore
import AWSServices
@preconcurrency import Glibc
import Logging

/// The execution environment: a `.zip` or `.tar.gz` fetched from S3 once at start and unpacked under the work dir
/// with the system's `unzip` or `tar`. Entries that would land outside it (absolute paths, `..`, links pointing out)
/// are refused before anything is extracted, and files get their executable bits.
struct EnvironmentArchive {
    struct Failure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    let s3: S3Client
    let runner = ProcessRunner()

    /// Downloads and unpacks; returns the folder the command runs in (`environmentPrefix` inside the archive).
    func prepare(bucket: String, key: String, prefix: String?, workDir: String, logger: Logger) async throws -> String {
        let archive = workDir + "/environment" + (key.hasSuffix(".zip") ? ".zip" : ".tar.gz")
        let target = workDir + "/environment"
        LocalFile.removeTree(target)
        guard mkdir(target, 0o755) == 0 else { throw Failure(message: "cannot create \(target)") }
        try await s3.getObject(bucket: bucket, key: key, to: archive, logger: logger)
        defer { unlink(archive) }
        let isZip = key.hasSuffix(".zip")
        let listing = try await capture(isZip ? ["unzip", "-Z1", archive] : ["tar", "-tzf", archive], in: workDir)
        for entry in listing.split(separator: "\n").map(String.init) where !entry.isEmpty {
            let parts = entry.split(separator: "/")
            if entry.hasPrefix("/") || parts.contains("..") {
                throw Failure(message: "the environment archive has an entry that escapes its folder: '\(entry)'")
            }
        }
        _ = try await capture(
            isZip
                ? ["unzip", "-q", "-o", archive, "-d", target]
                : ["tar", "-xzf", archive, "-C", target, "--no-same-owner", "--no-same-permissions"],
            in: workDir)
        try secure(target, root: target)
        var directory = target
        if let prefix, !prefix.isEmpty {
            directory = target + "/" + prefix.trimmingSlashes
            guard let real = OutputJudge.realPath(directory),
                real.hasPrefix(OutputJudge.realPath(target)! + "/") || real == OutputJudge.realPath(target)
            else {
                throw Failure(message: "environmentPrefix '\(prefix)' is not a folder inside the environment archive")
            }
            var st = stat()
            guard stat(real, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                throw Failure(message: "environmentPrefix '\(prefix)' is not a folder inside the environment archive")
            }
        }
        logger.info("environment ready", metadata: ["env.archive": "s3://\(bucket)/\(key)", "env.dir": "\(directory)"])
        return directory
    }

    /// Refuses links that resolve outside `root`; makes files readable and executable.
    func secure(_ path: String, root: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        let type = st.st_mode & S_IFMT
        if type == S_IFLNK {
            guard let real = OutputJudge.realPath(path), let realRoot = OutputJudge.realPath(root),
                real.hasPrefix(realRoot + "/")
            else {
                throw Failure(message: "the environment archive has a link pointing outside it: '\(path)'")
            }
            return
        }
        if type == S_IFDIR {
            _ = chmod(path, 0o755)
            for name in LocalFile.listDirectory(path) { try secure(path + "/" + name, root: root) }
        } else if type == S_IFREG {
            _ = chmod(path, 0o755)
        }
    }

    /// Runs a tool and returns its stdout; throws with its stderr when it fails.
    func capture(_ argv: [String], in directory: String) async throws -> String {
        let out = directory + "/.env-tool.out", err = directory + "/.env-tool.err"
        defer {
            unlink(out)
            unlink(err)
        }
        guard let program = ProcessRunner.resolve(argv[0], in: "/nonexistent", path: "/usr/bin:/bin:/usr/local/bin")
        else {
            throw Failure(message: "\(argv[0]) is not installed")
        }
        let outcome = try await runner.run(
            argv: [program] + argv.dropFirst(), environment: ["PATH": "/usr/bin:/bin", "LC_ALL": "C"],
            directory: directory, stdoutPath: out, stderrPath: err, user: nil,
            timeout: 600)
        guard outcome.succeeded else {
            let message = (LocalFile.tail(err, bytes: 500).map { String(decoding: $0, as: UTF8.self) } ?? "")
                .trimmingSpaces
            throw Failure(message: "\(argv[0]) failed (\(outcome.summary)): \(message)")
        }
        return LocalFile.readText(out) ?? ""
    }
}

extension String {
    var trimmingSlashes: String {
        var s = Substring(self)
        while s.hasPrefix("/") { s = s.dropFirst() }
        while s.hasSuffix("/") { s = s.dropLast() }
        return String(s)
    }
}
