import AWSCore
import AWSServices
@preconcurrency import Glibc
import Logging

/// The execution environment: a `.zip` or `.tar.gz` fetched from S3 once at start and unpacked under the work dir,
/// in this process (zlib; no `unzip` or `tar`, which not every AMI has). Only regular files, folders and links that
/// stay inside are written, up to `maxBytes` in all; an archive with anything else (a device node, a FIFO, a hard
/// link, a path or link leading out) is refused whole, naming the entry. Files get their executable bits.
struct EnvironmentArchive {
    struct Failure: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    let s3: S3Client
    /// The most its files may hold, unpacked (`environmentMaxMiB`).
    var maxBytes: Int64 = 4096 << 20

    /// Downloads and unpacks; returns the folder the command runs in (`environmentPrefix` inside the archive).
    func prepare(bucket: String, key: String, prefix: String?, workDir: String, logger: Logger) async throws -> String {
        let archive = workDir + "/environment.archive"
        let target = workDir + "/environment"
        LocalFile.removeTree(target)
        guard mkdir(target, 0o755) == 0 else { throw Failure(message: "cannot create \(target)") }
        try await s3.getObject(bucket: bucket, key: key, to: archive, logger: logger)
        defer { unlink(archive) }
        try Self.unpack(archive, into: target, maxBytes: maxBytes)
        var directory = LocalFile.realPath(target) ?? target
        if let prefix, !prefix.isEmpty {
            let root = directory
            guard let real = LocalFile.realPath(root + "/" + prefix.trimmingSlashes),
                real.hasPrefix(root + "/") || real == root
            else {
                throw Failure(message: "environmentPrefix '\(prefix)' is not a folder inside the environment archive")
            }
            var st = stat()
            guard stat(real, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
                throw Failure(message: "environmentPrefix '\(prefix)' is not a folder inside the environment archive")
            }
            directory = real
        }
        logger.info("environment ready", metadata: ["env.archive": "s3://\(bucket)/\(key)", "env.dir": "\(directory)"])
        return directory
    }

    /// Unpacks a zip or a gzip'd tar (told apart by their first bytes) into `target`.
    static func unpack(_ archive: String, into target: String, maxBytes: Int64) throws(Failure) {
        let fd = open(archive, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure(message: "cannot open \(archive)") }
        defer { close(fd) }
        var magic = [UInt8](repeating: 0, count: 4)
        let got = magic.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 4, 0) }
        do {
            let unpacker = try Unpacker(into: target, maxBytes: maxBytes)
            if got == 4 && magic[0] == 0x50 && magic[1] == 0x4b {
                try ZipArchive(fd: fd).unpack(into: unpacker)
            } else if got >= 2 && magic[0] == 0x1f && magic[1] == 0x8b {
                try TarArchive(fd: fd).unpack(into: unpacker)
            } else {
                throw Unpacker.Refusal(description: "it is neither a zip nor a gzip'd tar archive")
            }
            try unpacker.checkLinks()

        } catch {
            throw Failure(message: "the environment archive is refused: \(error)")
        }
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
