import ArgumentParser
import AWSCore
import AWSServices
import Logging

/// Copies one object between S3 and a local file, streaming in both directions (the old tool's `Download` helper,
/// and what `scripts/bench` measures).
struct Copy: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cp",
        abstract: "Copy one object: s3://bucket/key to a local path, or a local path to s3://bucket/key.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "Source: s3://bucket/key or a local file.")
    var source: String

    @Argument(help: "Destination: a local file or s3://bucket/key.")
    var destination: String

    @Option(
        name: .customLong("multipart-threshold-mib"),
        help: "Upload files larger than this many MiB in parts, and download objects larger than it in ranges.")
    var multipartThresholdMiB: Int = 16

    @Option(name: .customLong("part-size-mib"), help: "MiB per uploaded part and per downloaded range.")
    var partSizeMiB: Int = 16

    @Option(help: "Connections per transfer: parts or ranges in flight at once (1: downloads in one stream).")
    var concurrency: Int = 8

    @Option(
        help: """
            Upload integrity check: crc32c (a trailer computed while sending; one read of the file), sha256 (signed \
            payload hash), md5 (Content-MD5), or none (transport only).
            """)
    var checksum: String = "crc32c"

    static let checksums: [String: S3Client.UploadChecksum] = [
        "crc32c": .crc32cTrailer, "sha256": .sha256, "md5": .contentMD5, "none": .none,
    ]

    func validate() throws {
        guard Self.checksums[checksum] != nil else {
            throw ValidationError("--checksum is crc32c, sha256, md5 or none")
        }
        guard (S3URI(source) == nil) != (S3URI(destination) == nil) else {
            throw ValidationError("exactly one of source and destination must be s3://bucket/key")
        }
        guard multipartThresholdMiB >= 5, partSizeMiB >= 5 else { throw ValidationError("S3 parts are at least 5 MiB") }
        guard (1...64).contains(concurrency) else { throw ValidationError("--concurrency is 1 to 64") }
    }

    func run() async throws {
        let logger = global.logger("parallelizer.cp")
        var options = S3Client.Options()
        options.multipartThreshold = Int64(multipartThresholdMiB) << 20
        options.rangeThreshold = Int64(multipartThresholdMiB) << 20
        options.partSize = Int64(partSizeMiB) << 20
        options.concurrency = concurrency
        options.checksum = Self.checksums[checksum]!
        let s3 = try S3Client(context: try await global.context(logger: logger), options: options)
        let clock = ContinuousClock()
        let started = clock.now
        let bytes: Int64
        var pieces = 1
        if let from = S3URI(source) {
            let info = try await s3.getObject(bucket: from.bucket, key: from.key, to: destination, logger: logger)
            (bytes, pieces) = (info.size, info.pieces)
        } else {
            let to = S3URI(destination)!
            guard let size = LocalFile.size(source) else { throw ValidationError("cannot read \(source)") }
            try await s3.putObject(bucket: to.bucket, key: to.key, file: source, logger: logger)
            bytes = size
            if size > options.multipartThreshold {
                let part = s3.partSize(forUploadOf: size)
                pieces = Int((size + part - 1) / part)
            }
        }
        let seconds =
            Double((clock.now - started).components.attoseconds) / 1e18
            + Double((clock.now - started).components.seconds)
        logger.notice(
            "copied",
            metadata: [
                "bytes": "\(bytes)", "pieces": "\(pieces)", "seconds": "\(seconds)",
                "mb_per_s": "\(Int(Double(bytes) / 1e6 / max(seconds, 1e-9)))",
            ])
    }
}
