import ArgumentParser
import AWSCore
import AWSServices
@preconcurrency import Glibc
import Logging
import Synchronization
import Operators

struct Enqueue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one message per input: every object under s3://bucket/prefix, or the keys in a file.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "The SQS queue URL.")
    var queueURL: String

    @Argument(help: "s3://bucket/prefix to list (not needed with --from-file).")
    var source: String?

    @Option(help: "Read keys from this file, one per line ('-' for standard input) instead of listing a bucket.")
    var fromFile: String?

    @Option(help: "Leave out inputs whose output already exists under s3://bucket/prefix.")
    var skipDone: String?

    @Option(help: "Message body: 'key' (aws-parallelizer's form) or 's3uri' (s3://bucket/key).")
    var bodyForm: String = "key"

    @Option(help: "SendMessageBatch calls in flight at once.")
    var concurrency: Int = 8

    func validate() throws {
        guard source != nil || fromFile != nil else { throw ValidationError("give s3://bucket/prefix or --from-file") }
        if let source, S3URI(source) == nil { throw ValidationError("'\(source)' is not s3://bucket/prefix") }
        if let skipDone, S3URI(skipDone) == nil { throw ValidationError("--skip-done takes s3://bucket/prefix") }
        guard ["key", "s3uri"].contains(bodyForm) else { throw ValidationError("--body-form is key or s3uri") }
        guard bodyForm == "key" || source != nil else { throw ValidationError("--body-form s3uri needs s3://bucket/") }
        guard (1...64).contains(concurrency) else { throw ValidationError("--concurrency is 1...64") }
    }

    func run() async throws {
        let logger = global.logger("parallelizer.enqueue")
        let context = try await global.context(logger: logger)
        let s3 = try S3Client(context: context)
        let clock = ContinuousClock()
        let started = clock.now

        var keys: [String] = []
        if let fromFile {
            let text: String?
            if fromFile == "-" {
                var lines: [String] = []
                while let line = readLine(strippingNewline: true) { lines.append(line) }
                text = lines.joined(separator: "\n")
            } else {
                text = LocalFile.read(fromFile, limit: 1 << 30).map { String(decoding: $0, as: UTF8.self) }
            }
            guard let text else { throw ValidationError("cannot read \(fromFile)") }
            keys = text.split(separator: "\n", omittingEmptySubsequences: true).map {
                String($0.hasSuffix("\r") ? $0.dropLast() : $0)
            }.filter { !$0.isEmpty }
        } else if let source, let uri = S3URI(source) {
            try await s3.listAll(bucket: uri.bucket, prefix: uri.key, logger: logger) { page throws(AWSError) in
                keys += page.map(\.key).filter { !$0.hasSuffix("/") }
            }
        }
        var skipped = 0
        if let skipDone, let out = S3URI(skipDone) {
            var outputs: [String] = []
            try await s3.listAll(bucket: out.bucket, prefix: out.key, logger: logger) { page throws(AWSError) in
                outputs += page.map(\.key)
            }
            let done = Enqueuer.done(inputs: keys, outputs: outputs, outputPrefix: out.key)
            skipped = done.count
            keys = keys.filter { !done.contains($0) }
        }
        let bucket = source.flatMap(S3URI.init)?.bucket ?? ""
        let bodies = bodyForm == "s3uri" ? keys.map { "s3://\(bucket)/\($0)" } : keys
        let total = bodies.count
        let terminal = isatty(2) == 1
        let lastReport = Mutex(clock.now)
        var enqueuer = Enqueuer(sqs: SQSClient(context: context), queueURL: queueURL)
        enqueuer.concurrency = concurrency
        let totals = await enqueuer.send(bodies, logger: logger) { t in
            let done = t.sent + t.failed
            let due = lastReport.withLock { last -> Bool in
                guard clock.now - last >= .seconds(terminal ? 0.2 : 2) || done == total else { return false }
                last = clock.now
                return true
            }
            guard due else { return }
            if terminal {
                let width = 30
                let filled = total == 0 ? width : width * done / total
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                fputs("\r[\(bar)] \(done)/\(total)", stderr)
            } else {
                logger.info(
                    "enqueue progress", metadata: ["sent": "\(t.sent)", "failed": "\(t.failed)", "total": "\(total)"])
            }
        }
        if terminal { fputs("\n", stderr) }
        let elapsed = (clock.now - started).seconds
        let rate = elapsed > 0 ? Double(totals.sent) / elapsed : 0
        print(
            "sent \(totals.sent), skipped \(skipped), failed \(totals.failed) in \(elapsed) s (\(Int(rate)) messages/s)"
        )
        if let stop = totals.stoppedBy {
            logger.critical(
                "enqueue stopped: every further call would fail the same way", metadata: ["error": "\(stop)"])
            throw ExitCode(2)
        }
        if totals.failed > 0 { throw ExitCode(1) }
    }
}
