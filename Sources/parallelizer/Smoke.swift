import ArgumentParser
import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging

/// A quick end-to-end check of the AWS clients against whatever the environment points at (local moto in the demo):
/// S3 up and down through files, a listing, and an SQS round trip. It leaves nothing behind.
struct Smoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Exercise the S3 and SQS clients end to end and report what each step did.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "Size of the test object in bytes.")
    var size: Int = 8 << 20

    func run() async throws {
        let logger = global.logger("parallelizer.smoke")
        let context = try await global.context(logger: logger)
        let s3 = try S3Client(context: context)
        let sqs = SQSClient(context: context)
        let bucket = "parallelizer-smoke-\(UInt32.random(in: 0..<UInt32.max))"
        let dir = "/tmp/\(bucket)"
        _ = mkdir(dir, 0o700)
        defer {
            _ = unlink("\(dir)/in")
            _ = unlink("\(dir)/out")
            _ = rmdir(dir)
        }

        var pattern = [UInt8](repeating: 0, count: size)
        for i in 0..<size { pattern[i] = UInt8(truncatingIfNeeded: i &* 131) }
        guard LocalFile.write("\(dir)/in", pattern) else { throw ValidationError("cannot write \(dir)/in") }

        let clock = ContinuousClock()
        try await s3.createBucket(bucket, logger: logger)
        var started = clock.now
        try await s3.putObject(bucket: bucket, key: "smoke/input file.bin", file: "\(dir)/in", logger: logger)
        logger.notice("S3 PutObject done", metadata: ["bytes": "\(size)", "seconds": "\(clock.now - started)"])
        started = clock.now
        let info = try await s3.getObject(bucket: bucket, key: "smoke/input file.bin", to: "\(dir)/out", logger: logger)
        let same = LocalFile.read("\(dir)/out", limit: size + 1) == pattern
        logger.notice(
            "S3 GetObject done",
            metadata: [
                "bytes": "\(info.size)", "seconds": "\(clock.now - started)",
                "identical": "\(same)",
            ])
        let page = try await s3.listObjectsV2(bucket: bucket, logger: logger)
        logger.notice("S3 ListObjectsV2 done", metadata: ["keys": "\(page.objects.map(\.key))"])

        let queue = try await sqs.createQueue(name: bucket, logger: logger)
        _ = try await sqs.sendMessageBatch(queueURL: queue, entries: [("1", "smoke/input file.bin")], logger: logger)
        let messages = try await sqs.receiveMessages(queueURL: queue, waitSeconds: 5, logger: logger)
        for message in messages {
            try await sqs.deleteMessage(queueURL: queue, receiptHandle: message.receiptHandle, logger: logger)
        }
        logger.notice("SQS round trip done", metadata: ["received": "\(messages.map(\.body))"])
        try await sqs.deleteQueue(queueURL: queue, logger: logger)
        try await s3.deleteObject(bucket: bucket, key: "smoke/input file.bin", logger: logger)
        guard same, messages.count == 1 else { throw ExitCode.failure }
        print("smoke test passed: S3 put/get/list and SQS send/receive/delete all worked")
    }
}
