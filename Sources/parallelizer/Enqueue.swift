import ArgumentParser
import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import Operators

struct Enqueue: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one message per input: every object under s3://bucket/prefix, or the keys in a file.",
        discussion: """
            Inputs are read and sent a chunk of 1000 at a time, so memory does not grow with their number. Bodies are \
            JSON ({"bucket","key"}) unless --body-form says otherwise: any key, even one that starts with '{' or \
            's3://', is read back exactly. With --resume FILE, the last key of every chunk sent whole is written to \
            FILE, and a run started again with the same FILE goes on after it (at most one chunk is sent twice; a \
            message sent twice only makes a worker write the same output again).
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "The SQS queue URL.")
    var queueURL: String

    @Argument(help: "s3://bucket/prefix to list (not needed with --from-file).")
    var source: String?

    @Option(help: "Read keys from this file, one per line ('-' for standard input) instead of listing a bucket.")
    var fromFile: String?

    @Option(help: "The input bucket named in JSON bodies of keys read with --from-file (default: the daemon's).")
    var inputBucket: String?

    @Option(
        help:
            "Leave out inputs whose output exists under s3://bucket/prefix (the daemon's outputBucket and outputPrefix); needs --output-name."
    )
    var skipDone: String?

    @Option(
        help:
            "With --skip-done: the name the command gives its output, {name} standing for the input's file name ('{name}.out'). Only that exact key counts."
    )
    var outputName: String?

    @Option(
        help:
            "The daemon's inputPrefix: bare-key bodies are relative to it, and with --skip-done outputs keep the input's folder below it."
    )
    var inputPrefix: String = ""

    @Option(help: "Also leave out inputs that this ledger table records as done.")
    var doneInLedger: String?

    @Option(help: "Message body: 'json' (default), 's3uri' (s3://bucket/key) or 'key' (aws-parallelizer's bare key).")
    var bodyForm: String = "json"

    @Option(help: "Keep a checkpoint in this file, and go on from the one there.")
    var resume: String?

    @Option(help: "SendMessageBatch calls in flight at once.")
    var concurrency: Int = 8

    /// Inputs read, checked and sent at a time.
    static let chunk = 1000

    func validate() throws {
        guard (source != nil) != (fromFile != nil) else {
            throw ValidationError("give s3://bucket/prefix or --from-file, not both")
        }
        if let source, S3URI(source) == nil { throw ValidationError("'\(source)' is not s3://bucket/prefix") }
        if let skipDone {
            guard S3URI(skipDone) != nil else { throw ValidationError("--skip-done takes s3://bucket/prefix") }
            guard let outputName, !outputName.isEmpty, !outputName.contains("/") else {
                throw ValidationError(
                    "--skip-done needs --output-name: the file name the command prints for its output, {name} standing for the input's ('{name}.out'); only that exact key counts as done"
                )
            }
        }
        guard let form = BodyForm(rawValue: bodyForm) else {
            throw ValidationError("--body-form is json, s3uri or key")
        }
        if form == .s3uri && source == nil && inputBucket == nil {
            throw ValidationError("--body-form s3uri needs the bucket: list s3://bucket/ or give --input-bucket")
        }
        if let inputBucket, !S3URI.mayBeBucketName(inputBucket) {
            throw ValidationError("'\(inputBucket)' is not a bucket name")
        }
        if resume != nil && fromFile == "-" { throw ValidationError("--resume cannot go on from standard input") }
        guard (1...64).contains(concurrency) else { throw ValidationError("--concurrency is 1...64") }
    }

    func run() async throws {
        let logger = global.logger("parallelizer.enqueue")
        let context = try await global.context(logger: logger)
        let s3 = try S3Client(context: context)
        let form = BodyForm(rawValue: bodyForm)!
        let origin = source ?? fromFile!
        var sources: [DoneCheck.Source] = []
        if let skipDone, let out = S3URI(skipDone), let outputName {
            sources.append(
                .outputs(bucket: out.bucket, outputPrefix: out.key, inputPrefix: inputPrefix, outputName: outputName))
        }
        if let doneInLedger { sources.append(.ledger(table: doneInLedger, queueURL: queueURL)) }
        let doneCheck =
            sources.isEmpty
            ? nil
            : DoneCheck(
                sources: sources, s3: s3,
                dynamo: doneInLedger == nil
                    ? nil : try DynamoDBClient(context: context, region: SQSClient.region(ofQueueURL: queueURL)))

        var start: EnqueueCheckpoint?
        if let resume, let saved = EnqueueCheckpoint.read(resume) {
            guard saved.source == origin else {
                throw ValidationError("\(resume) is the checkpoint of another run (\(saved.source)), not of \(origin)")
            }
            start = saved
            print("resuming after \(saved.source.hasPrefix("s3://") ? "'\(saved.lastKey)'" : "line \(saved.lines)")")
        } else if let resume {
            // Written before anything is sent: a checkpoint that cannot be kept is found now, not after a chunk.
            guard EnqueueCheckpoint(source: origin, lastKey: "", lines: 0, sent: 0).write(resume) else {
                throw ValidationError("cannot write the checkpoint \(resume)")
            }
        }

        var run = Progress(started: ContinuousClock.now, sentBefore: start?.sent ?? 0)
        // Set when a chunk could not be sent whole, or its checkpoint not written: nothing more is sent.
        var stopped = false
        var enqueuer = Enqueuer(sqs: SQSClient(context: context), queueURL: queueURL)
        enqueuer.concurrency = concurrency
        var manifest = RunManifestWriter(sqs: SQSClient(context: context), queueURL: queueURL)
        await manifest.begin(source: origin, resuming: start != nil, logger: logger)
        let bucket = source.flatMap(S3URI.init)?.bucket ?? inputBucket

        /// Sends one chunk; false when the run must stop (a failure: the checkpoint stays before this chunk).
        func send(_ keys: [String], lines: Int) async throws -> Bool {
            guard let last = keys.last else { return true }
            let done = try await doneCheck?.done(keys, logger: logger) ?? []
            run.skipped += done.count
            var bodies: [String] = []
            for key in keys where !done.contains(key) {
                if let body = form.body(bucket: bucket, key: key, inputPrefix: inputPrefix) {
                    bodies.append(body)
                } else {
                    run.failed += 1
                    logger.error(
                        "not sent: a bare-key body cannot carry this key (outside --input-prefix, or it would be read as something else); use --body-form json",
                        metadata: ["key": "\(key)"])
                }
            }
            let totals = await enqueuer.send(bodies, logger: logger)
            run.sent += totals.sent
            run.failed += totals.failed
            if let stop = totals.stoppedBy { run.stoppedBy = stop }
            run.report(logger: logger)
            await manifest.update(sent: run.sent, skipped: run.skipped, logger: logger)
            guard totals.failed == 0 && totals.stoppedBy == nil else {
                stopped = true
                return false
            }
            if let resume,
                !EnqueueCheckpoint(source: origin, lastKey: last, lines: lines, sent: run.sentBefore + run.sent)
                    .write(resume)
            {
                logger.error("cannot write the checkpoint; stopping", metadata: ["file": "\(resume)"])
                run.checkpointLost = true
                stopped = true
                return false
            }
            return true
        }

        do {
            if let source, let uri = S3URI(source) {
                var token: String?
                var first = true
                repeat {
                    let page = try await s3.listObjectsV2(
                        bucket: uri.bucket, prefix: uri.key, continuationToken: token,
                        startAfter: first ? start.flatMap { $0.lastKey.isEmpty ? nil : $0.lastKey } : nil,
                        logger: logger)
                    first = false
                    let keys = page.objects.map(\.key).filter { !$0.hasSuffix("/") }
                    guard try await send(keys, lines: 0) else { break }
                    token = page.nextContinuationToken
                } while token != nil
            } else if let fromFile {
                guard let lines = LineReader(path: fromFile) else { throw ValidationError("cannot read \(fromFile)") }
                var number = 0
                var keys: [String] = []
                while let line = lines.next() {
                    number += 1
                    if number <= start?.lines ?? 0 { continue }
                    let key = line.hasSuffix("\r") ? String(line.dropLast()) : line
                    if !key.isEmpty { keys.append(key) }
                    if keys.count == Self.chunk {
                        guard try await send(keys, lines: number) else { break }
                        keys.removeAll(keepingCapacity: true)
                    }
                }
                if !stopped { _ = try await send(keys, lines: number) }
            }
        } catch {
            // What was sent before a listing or a done-check failed still counts in the manifest.
            await manifest.update(sent: run.sent, skipped: run.skipped, force: true, logger: logger)
            throw error
        }
        await manifest.update(sent: run.sent, skipped: run.skipped, force: true, logger: logger)
        run.finish()
        if let stop = run.stoppedBy {
            logger.critical(
                "enqueue stopped: every further call would fail the same way", metadata: ["error": "\(stop)"])
            throw ExitCode(2)
        }
        if run.failed > 0 || run.checkpointLost {
            if resume != nil {
                logger.error("enqueue stopped at the first chunk with failures; --resume goes on from before it")
            }
            throw ExitCode(1)
        }
    }
}

/// Running totals and the progress shown while they grow: a line on a terminal, a log line every 2 s elsewhere.
struct Progress {
    let started: ContinuousClock.Instant
    let sentBefore: Int
    var sent = 0
    var skipped = 0
    var failed = 0
    var stoppedBy: String?
    var checkpointLost = false
    var lastReport: ContinuousClock.Instant?
    let terminal = isatty(2) == 1

    init(started: ContinuousClock.Instant, sentBefore: Int) {
        self.started = started
        self.sentBefore = sentBefore
    }

    mutating func report(logger: Logger) {
        let now = ContinuousClock.now
        if let lastReport, now - lastReport < .seconds(terminal ? 0.2 : 2) { return }
        lastReport = now
        if terminal {
            fputs("\rsent \(sent), skipped \(skipped), failed \(failed)", stderr)
        } else {
            logger.info(
                "enqueue progress", metadata: ["sent": "\(sent)", "skipped": "\(skipped)", "failed": "\(failed)"])
        }
    }

    func finish() {
        if terminal { fputs("\n", stderr) }
        let elapsed = (ContinuousClock.now - started).seconds
        let rate = elapsed > 0 ? Double(sent) / elapsed : 0
        print("sent \(sent), skipped \(skipped), failed \(failed) in \(elapsed) s (\(Int(rate)) messages/s)")
    }
}

/// Lines of a file (or standard input for `-`), one at a time, without holding the file.
final class LineReader {
    let file: UnsafeMutablePointer<FILE>
    let owned: Bool
    var buffer: UnsafeMutablePointer<CChar>?
    var capacity = 0

    init?(path: String) {
        if path == "-" {
            file = stdin
            owned = false
        } else {
            guard let f = fopen(path, "re") else { return nil }
            file = f
            owned = true
        }
    }

    deinit {
        free(buffer)
        if owned { fclose(file) }
    }

    /// The next line without its `\n`; nil at the end.
    func next() -> String? {
        let count = getline(&buffer, &capacity, file)
        guard count >= 0, let buffer else { return nil }
        let bytes = UnsafeRawBufferPointer(start: buffer, count: count)
        let line = bytes.last == UInt8(ascii: "\n") ? bytes.dropLast() : bytes[...]
        return String(decoding: line, as: UTF8.self)
    }
}

/// Keeps the run manifest on the queue's tags (`RunManifest`) while `enqueue` sends: at its start, every 10 s, and at
/// its end. A queue that may not be tagged (`sqs:TagQueue`, `sqs:ListQueueTags` denied) costs one warning, and
/// `status` then shows no run progress.
struct RunManifestWriter {
    let sqs: SQSClient
    let queueURL: String
    var base: RunManifest?
    var lastWrite = ContinuousClock.now

    init(sqs: SQSClient, queueURL: String) {
        self.sqs = sqs
        self.queueURL = queueURL
    }

    mutating func begin(source: String, resuming: Bool, logger: Logger) async {
        do {
            let existing = try await sqs.runManifest(queueURL: queueURL, logger: logger)
            let counts = SQSClient.MessageCounts(
                attributes: try await sqs.getQueueAttributes(queueURL: queueURL, logger: logger))
            let run = RunManifest.begin(
                existing: existing, queueIsEmpty: counts.total == 0, resuming: resuming, source: source,
                now: Date().timeIntervalSince1970)
            try await sqs.write(run, queueURL: queueURL, logger: logger)
            base = run
        } catch {
            logger.warning(
                "cannot keep the run's manifest on the queue's tags (sqs:ListQueueTags, sqs:TagQueue): status will show no run progress",
                metadata: ["error": "\(error)"])
        }
    }

    /// Writes the totals so far (`sent` and `skipped` by this `enqueue`), at most every 10 s unless `force`.
    mutating func update(sent: Int, skipped: Int, force: Bool = false, logger: Logger) async {
        guard var run = base, force || ContinuousClock.now - lastWrite >= .seconds(10) else { return }
        lastWrite = ContinuousClock.now
        run.sent += sent
        run.skipped += skipped
        run.updated = Date().timeIntervalSince1970
        do {
            try await sqs.write(run, queueURL: queueURL, logger: logger)
        } catch {
            logger.warning("cannot update the run's manifest on the queue's tags", metadata: ["error": "\(error)"])
        }
    }
}
