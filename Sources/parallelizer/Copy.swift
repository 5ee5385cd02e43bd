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

    @Option(name: .customLong("multipart-threshold-mib"), help: "Upload files larger than this many MiB in parts.")
    var multipartThresholdMiB: Int = 64

    @Option(name: .customLong("part-size-mib"), help: "Part size in MiB for multipart uploads.")
    var partSizeMiB: Int = 16

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
    }

    func run() async throws {
        let logger = global.logger("parallelizer.cp")
        var options = S3Client.Options()
        options.multipartThreshold = Int64(multipartThresholdMiB) << 20
        options.partSize = Int64(partSizeMiB) << 20
        options.checksum = Self.checksums[checksum]!
        let s3 = try S3Client(context: try await global.context(logger: logger), options: options)
        let clock = ContinuousClock()
        let started = clock.now
        let bytes: Int64
        if let from = S3URI(source) {
            bytes = try await s3.getObject(bucket: from.bucket, key: from.key, to: destination, logger: logger).size
        } else {
            let to = S3URI(destination)!
            guard let size = LocalFile.size(source) else { throw ValidationError("cannot read \(source)") }
            try await s3.putObject(bucket: to.bucket, key: to.key, file: source, logger: logger)
            bytes = size
        }
        let seconds =
            Double((clock.now - started).components.attoseconds) / 1e18
            + Double((clock.now - started).components.seconds)
        logger.notice(
            "copied",
            metadata: [
                "bytes": "\(bytes)", "seconds": "\(seconds)",
                "mb_per_s": "\(Int(Double(bytes) / 1e6 / max(seconds, 1e-9)))",
            ])
    }
}
