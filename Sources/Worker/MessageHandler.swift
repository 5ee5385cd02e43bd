import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import TaskLedger

/// Processes one received message from start to fate: parse, download, run, judge, upload, then delete, retry
/// later, give up, or release. A failure decides only this message's fate; the slot goes on.
struct MessageHandler: Sendable {
    let config: WorkerConfig
    /// `analysisProgram` with its first word resolved to a path at start-up.
    let program: [String]
    let s3: S3Client
    let sqs: SQSClient
    /// Settled messages leave through here, in batches.
    let deletes: DeleteBatcher
    let lifecycle: Lifecycle
    let runner: ProcessRunner
    /// The unpacked environment (`environmentPrefix`), or nil to run in the task folder.
    let environmentDirectory: String?
    let commandEnvironment: [String: String]
    let user: RunAsUser?
    let instanceID: String
    let hasRedrivePolicy: Bool
    /// Told of every queue and bucket call's end, to tell a task's failure from the daemon's dead end.
    let deadEnds: DeadEnds
    /// Seconds before a failed message is retried, doubled for each earlier receive.
    let retryBackoff: Int
    /// The DynamoDB task ledger, when `ledgerTable` is set. Appending to it never waits for DynamoDB.
    var ledger: Ledger? = nil

    /// How a message whose work is over for good (a bad message, or a task given up) leaves the queue.
    ///
    /// Deleted once its failure record is written. Sent on to the dead-letter queue (made visible at once, so SQS
    /// moves it after `maxReceiveCount` receives) when the queue has one and either the record could not be
    /// written or the failure may pass and be worth a redrive. Otherwise kept, to come back after its visibility
    /// timeout: deleting a message that left no record would lose its input without a trace.
    enum FinalFate: Equatable {
        case delete, deadLetterQueue, keep

        init(recorded: Bool, hasDeadLetterQueue: Bool, worthRedriving: Bool) {
            if hasDeadLetterQueue && (worthRedriving || !recorded) {
                self = .deadLetterQueue
            } else {
                self = recorded ? .delete : .keep
            }
        }
    }

    enum TaskResult {
        case uploaded(key: String, bytes: Int64)
        case noOutput
        case failed(reason: String, outcome: ProcessOutcome?, stderrTail: String)
        /// The input does not exist (404): no retry can bring it back, so the message is given up at once.
        case inputMissing(reason: String)
        case interrupted
    }

    /// `receivedAt` is when the receive returned: a message may have waited behind others the slot took with it, and
    /// its visibility timeout runs from then.
    func handle(_ message: SQSMessage, receivedAt: ContinuousClock.Instant = .now, slot: Int,
                logger baseLogger: Logger) async {
        var logger = baseLogger
        logger[metadataKey: "sqs.message_id"] = "\(message.messageID)"
        await ledger?.received()
        let request: MessageRequest
        do {
            request = try MessageParser(inputBucket: config.inputBucket, inputPrefix: config.inputPrefix).parse(message.body)
        } catch {
            logger.error("bad message: recorded under _failed/ and deleted", metadata: ["reason": "\(error.reason)"])
            lifecycle.count { $0.badMessages += 1 }
            let recorded = await writeFailureRecord(key: "_failed/_bad-messages/\(message.messageID).json", fields: [
                "messageId": .string(message.messageID), "reason": .string(error.reason),
                "body": .string(String(message.body.prefix(4096))), "instanceId": .string(instanceID),
            ], subject: message.messageID, logger: logger)
            switch FinalFate(recorded: recorded, hasDeadLetterQueue: hasRedrivePolicy, worthRedriving: false) {
            case .delete:
                await delete(message, logger: logger)
            case .deadLetterQueue:
                logger.error("bad message left to the dead-letter queue: its record could not be written")
                await changeVisibility(message, to: 0, logger: logger)
            case .keep:
                logger.error("bad message kept: its record could not be written",
                             metadata: ["retry.after_seconds": "\(config.visibilityTimeout)"])
            }
            return
        }
        guard case .tasks(let inputs) = request else {
            logger.info("S3 test event deleted")
            await delete(message, logger: logger)
            return
        }
        // Its attempts are used up (its last failure could not be settled: the record or the delete did not go
        // through): settled now, without downloading or running anything again.
        if message.receiveCount > config.maxAttempts {
            await settleUsedUp(message, inputs: inputs, logger: logger)
            return
        }

        lifecycle.taskStarted()
        defer { lifecycle.taskFinished() }
        let heartbeat = Task { await keepInvisible(message, since: receivedAt, logger: logger) }
        defer { heartbeat.cancel() }

        // Each input (an S3 event may carry several) has its own fate: one that fails does not stop the others.
        var failures: [TaskFailure] = []
        for input in inputs {
            var taskLogger = logger
            taskLogger[metadataKey: "task.key"] = "\(input.key)"
            if input.bucket != config.inputBucket { taskLogger[metadataKey: "task.bucket"] = "\(input.bucket)" }
            let clock = ContinuousClock()
            let started = clock.now
            taskLogger.info("task start", metadata: ["task.attempt": "\(message.receiveCount)"])
            await ledger?.taskStarted(inputKey: input.key, attempt: message.receiveCount, slot: slot,
                                      messageID: message.messageID)
            var bytesIn: Int64 = 0
            let result = await runTask(input, slot: slot, message: message, bytesIn: &bytesIn, logger: taskLogger)
            let seconds = (clock.now - started).seconds
            if let ledger {
                await Self.record(result, input: input, attempt: message.receiveCount, seconds: seconds, bytesIn: bytesIn,
                                  in: ledger)
            }
            switch result {
            case .uploaded(let key, let bytes):
                lifecycle.count { $0.succeeded += 1; $0.bytesOut += bytes }
                taskLogger.info("task done", metadata: ["task.seconds": "\(seconds)", "task.output": "\(key)",
                                                        "task.bytes_out": "\(bytes)", "task.exit_status": "0"])
            case .noOutput:
                lifecycle.count { $0.noOutput += 1 }
                taskLogger.info("task done without output", metadata: ["task.seconds": "\(seconds)", "task.exit_status": "0"])
            case .failed(let reason, let outcome, let tail):
                taskLogger.warning("task failed", metadata: ["task.seconds": "\(seconds)", "reason": "\(reason)",
                                                             "task.exit_status": "\(outcome?.summary ?? "none")"])
                failures.append(TaskFailure(input: input, reason: reason, outcome: outcome, stderrTail: tail,
                                            seconds: seconds, permanent: false))
            case .inputMissing(let reason):
                taskLogger.error("input does not exist", metadata: ["reason": "\(reason)"])
                failures.append(TaskFailure(input: input, reason: reason, outcome: nil, stderrTail: "", seconds: seconds,
                                            permanent: true))
            case .interrupted:
                lifecycle.count { $0.released += 1 }
                heartbeat.cancel()
                await release(message, logger: taskLogger)
                return
            }
        }
        heartbeat.cancel()
        guard !failures.isEmpty else {
            await delete(message, logger: logger)
            return
        }
        // The daemon met a dead end (maybe this very failure was its third): the failure is the set-up's, not the
        // task's. The message goes back at once, for a fleet that is set up right.
        if deadEnds.deadEnd != nil {
            lifecycle.count { $0.released += 1 }
            await release(message, logger: logger)
            return
        }
        let attempts: Logger.Metadata = ["task.attempts": "\(message.receiveCount)"]
        if failures.contains(where: { !$0.permanent }) && message.receiveCount < config.maxAttempts {
            // Inputs that can never work are recorded now, each on its own; the message comes back for the rest
            // (the inputs that worked are done again then, to the same output keys).
            for failure in failures where failure.permanent {
                lifecycle.count { $0.givenUp += 1 }
                await writeFailureRecord(failure, message: message, logger: logger)
            }
            lifecycle.count { $0.failed += 1 }
            let delay = min(config.visibilityTimeout, retryBackoff << min(message.receiveCount - 1, 16))
            logger.info("message will be retried", metadata: ["retry.after_seconds": "\(delay)",
                                                              "task.attempt": "\(message.receiveCount)"])
            await changeVisibility(message, to: delay, logger: logger)
            return
        }
        // Every input is settled: a record for each that failed, then the message leaves.
        var recorded = true
        for failure in failures {
            lifecycle.count { $0.givenUp += 1 }
            if await !writeFailureRecord(failure, message: message, logger: logger) { recorded = false }
        }
        let worthRedriving = failures.contains { !$0.permanent }
        await settle(message, recorded: recorded, worthRedriving: worthRedriving, metadata: attempts, logger: logger)
    }

    /// One input's failure, for its record.
    struct TaskFailure {
        var input: TaskInput
        var reason: String
        var outcome: ProcessOutcome?
        var stderrTail: String
        var seconds: Double
        /// No retry can help (the input does not exist).
        var permanent: Bool
    }

    /// The message of inputs given up leaves the queue by `FinalFate`: deleted once every record is written, or to
    /// the dead-letter queue, or kept.
    func settle(_ message: SQSMessage, recorded: Bool, worthRedriving: Bool, metadata: Logger.Metadata,
                logger: Logger) async {
        switch FinalFate(recorded: recorded, hasDeadLetterQueue: hasRedrivePolicy, worthRedriving: worthRedriving) {
        case .deadLetterQueue:
            logger.error(recorded ? "giving up: failure recorded; the queue's dead-letter queue takes the message"
                                  : "giving up, but the failure record could not be written: left to the dead-letter queue",
                         metadata: metadata)
            await changeVisibility(message, to: 0, logger: logger)
        case .delete:
            logger.error("giving up: failure recorded and message deleted", metadata: metadata)
            await delete(message, logger: logger)
        case .keep:
            logger.error("giving up, but the failure record could not be written: message kept",
                         metadata: metadata.merging(["retry.after_seconds": "\(config.visibilityTimeout)"]) { $1 })
        }
    }

    /// A message received after its `maxAttempts` attempts: an earlier receive gave it up but could not settle it.
    /// Each input gets a record unless one is there already (the attempt that gave up wrote it, with the command's
    /// stderr), then the message leaves as any given-up message does. Nothing is downloaded or run.
    func settleUsedUp(_ message: SQSMessage, inputs: [TaskInput], logger: Logger) async {
        logger.error("attempts used up: settling the message without running it again", metadata: [
            "task.attempts": "\(message.receiveCount)", "max_attempts": "\(config.maxAttempts)"])
        var recorded = true
        for input in inputs {
            lifecycle.count { $0.givenUp += 1 }
            let failure = TaskFailure(
                input: input, reason: "received \(message.receiveCount) times, more than maxAttempts (\(config.maxAttempts)); "
                    + "not run again", outcome: nil, stderrTail: "", seconds: 0, permanent: false)
            if await !writeFailureRecord(failure, message: message, onlyIfAbsent: true, logger: logger) { recorded = false }
        }
        await settle(message, recorded: recorded, worthRedriving: true,
                     metadata: ["task.attempts": "\(message.receiveCount)"], logger: logger)
    }

    // MARK: - One input

    /// One task attempt's line in the ledger.
    static func record(_ result: TaskResult, input: TaskInput, attempt: Int, seconds: Double, bytesIn: Int64,
                       in ledger: Ledger) async {
        switch result {
        case .uploaded(let key, let bytes):
            await ledger.taskEnded(inputKey: input.key, attempt: attempt, outcome: .done, seconds: seconds, bytesIn: bytesIn,
                                   bytesOut: bytes, exitStatus: "exit 0", outputKey: key, reason: nil)
        case .noOutput:
            await ledger.taskEnded(inputKey: input.key, attempt: attempt, outcome: .done, seconds: seconds, bytesIn: bytesIn,
                                   bytesOut: 0, exitStatus: "exit 0", outputKey: nil, reason: "no output named")
        case .failed(let reason, let outcome, _):
            await ledger.taskEnded(inputKey: input.key, attempt: attempt, outcome: .failed, seconds: seconds, bytesIn: bytesIn,
                                   bytesOut: 0, exitStatus: outcome?.summary ?? "none", outputKey: nil, reason: reason)
        case .inputMissing(let reason):
            await ledger.taskEnded(inputKey: input.key, attempt: attempt, outcome: .failed, seconds: seconds, bytesIn: 0,
                                   bytesOut: 0, exitStatus: "none", outputKey: nil, reason: reason)
        case .interrupted:
            await ledger.taskEnded(inputKey: input.key, attempt: attempt, outcome: .released, seconds: seconds,
                                   bytesIn: bytesIn, bytesOut: 0, exitStatus: "interrupted", outputKey: nil,
                                   reason: "released at shutdown")
        }
    }

    func runTask(_ input: TaskInput, slot: Int, message: SQSMessage, bytesIn reportedBytesIn: inout Int64,
                 logger: Logger) async -> TaskResult {
        let root = "\(config.workDir)/tasks/\(slot)-\(message.messageID.prefix(12).filter { $0.isLetter || $0.isNumber })-\(UInt32.random(in: 0..<UInt32.max))"
        let data = root + "/data"
        defer { LocalFile.removeTree(root) }
        guard mkdir(root, 0o700) == 0, mkdir(data, 0o700) == 0 else {
            return .failed(reason: "cannot create task folder \(root): \(String(cString: strerror(errno)))", outcome: nil, stderrTail: "")
        }
        if let user { _ = chown(data, user.uid, user.gid); _ = chown(root, user.uid, user.gid) }
        let inputPath = data + "/" + TaskPaths.localName(forKey: input.key)
        let bytesIn: Int64
        do {
            bytesIn = try await s3.getObject(bucket: input.bucket, key: input.key, to: inputPath, logger: logger).size
        } catch {
            // Only the input bucket's answers say anything about the set-up: a message may name any bucket.
            let ours = input.bucket == config.inputBucket
            // The bucket answered that the key is not there (a bucket that is gone is NoSuchBucket, also a 404).
            if error.httpStatus == 404 && error.setupProblem == nil {
                if ours { deadEnds.succeeded(.getInput) }
                return .inputMissing(reason: "\(error)")
            }
            if ours { deadEnds.failed(.getInput, resource: "s3://\(input.bucket)", subject: message.messageID, error: error) }
            return .failed(reason: "download failed: \(error)", outcome: nil, stderrTail: "")
        }
        if input.bucket == config.inputBucket { deadEnds.succeeded(.getInput) }
        lifecycle.count { $0.bytesIn += bytesIn }
        reportedBytesIn = bytesIn
        if let user { _ = chown(inputPath, user.uid, user.gid) }
        if lifecycle.graceExpired { return .interrupted }

        var environment = commandEnvironment
        environment["PARALLELIZER_INPUT_BUCKET"] = input.bucket
        environment["PARALLELIZER_INPUT_KEY"] = input.key
        environment["PARALLELIZER_TASK_DIR"] = data
        let stdoutPath = root + "/stdout.log"
        let stderrPath = root + "/stderr.log"
        let outcome: ProcessOutcome
        do {
            outcome = try await runner.run(
                argv: program + [inputPath], environment: environment, directory: environmentDirectory ?? data,
                stdoutPath: stdoutPath, stderrPath: stderrPath, user: user, timeout: config.taskTimeout,
                stop: { [lifecycle] in lifecycle.graceExpired })
        } catch {
            return .failed(reason: "\(error)", outcome: nil, stderrTail: "")
        }
        if outcome == .interrupted { return .interrupted }
        guard outcome.succeeded else {
            return .failed(reason: outcome == .timedOut ? "the command ran past taskTimeout (\(config.taskTimeout ?? 0) s)"
                                                          : "the command failed (\(outcome.summary))",
                           outcome: outcome, stderrTail: Self.tail(of: stderrPath, bytes: 64 << 10))
        }
        switch OutputJudge.judge(line: OutputJudge.lastLine(ofFile: stdoutPath), taskDirectory: data) {
        case .none:
            return .noOutput
        case .rejected(let why):
            logger.warning("the command's output line names no usable file; moving on without an output",
                           // A command may print anything as its last line: keep the log line readable.
                           metadata: ["reason": "\(why.count > 300 ? String(why.prefix(300)) + "…" : why)"])
            return .noOutput
        case .file(let path, let name):
            let key = TaskPaths.outputKey(inputKey: input.key, inputPrefix: config.inputPrefix,
                                          outputPrefix: config.outputPrefix, outputName: name)
            // The upload is cancelled when a shutdown's grace runs out (a multipart upload is then aborted).
            let (s3, bucket) = (self.s3, config.outputBucket)
            let result = await lifecycle.cancellingAtGraceEnd {
                try await s3.putObject(bucket: bucket, key: key, file: path, logger: logger)
            }
            if case .failure(let error) = result {
                if lifecycle.graceExpired { return .interrupted }
                if let error = error as? AWSError {
                    deadEnds.failed(.putOutput, resource: "s3://\(bucket)", subject: message.messageID, error: error)
                }
                return .failed(reason: "upload failed: \(error)", outcome: outcome, stderrTail: "")
            }
            deadEnds.succeeded(.putOutput)
            return .uploaded(key: key, bytes: LocalFile.size(path) ?? 0)
        }
    }

    // MARK: - Message fate

    /// Extends the message's invisibility before it lapses, for as long as the task runs, within SQS's 12 hours:
    /// every half timeout, counted from the receive.
    func keepInvisible(_ message: SQSMessage, since receivedAt: ContinuousClock.Instant, logger: Logger) async {
        let firstReceived = Double(message.attributes["ApproximateFirstReceiveTimestamp"] ?? "").map { $0 / 1000 }
            ?? Date().timeIntervalSince1970
        let interval = Duration.seconds(max(1, config.visibilityTimeout / 2))
        var next = receivedAt + interval
        while !Task.isCancelled {
            try? await Task.sleep(until: next, clock: .continuous)
            next = max(next, .now) + interval
            if Task.isCancelled { return }
            let left = 43200 - Int(Date().timeIntervalSince1970 - firstReceived) - 60
            let extend = min(config.visibilityTimeout, max(0, left))
            guard extend > 0 else {
                logger.warning("message reached SQS's 12-hour visibility limit; it may be handed out again")
                return
            }
            if await changeVisibility(message, to: extend, logger: logger,
                                      failure: "could not extend the message's visibility") {
                logger.debug("visibility extended", metadata: ["sqs.visibility_seconds": "\(extend)"])
            }
        }
    }

    func delete(_ message: SQSMessage, logger: Logger) async {
        await deletes.delete(message, logger: logger)
    }

    func release(_ message: SQSMessage, logger: Logger) async {
        logger.notice("task interrupted by a stop; message released")
        await changeVisibility(message, to: 0, logger: logger)
    }

    /// Makes messages the slot received but did not start visible again at once, for any worker to take.
    func release(_ messages: [SQSMessage], reason: String, logger: Logger) async {
        for message in messages {
            logger.notice("message released before its task started", metadata: [
                "sqs.message_id": "\(message.messageID)", "reason": "\(reason)"])
            await changeVisibility(message, to: 0, logger: logger)
        }
    }

    @discardableResult
    func changeVisibility(_ message: SQSMessage, to seconds: Int, logger: Logger,
                          failure: String = "could not change the message's visibility") async -> Bool {
        do {
            try await sqs.changeMessageVisibility(queueURL: config.queueURL, receiptHandle: message.receiptHandle,
                                                  timeout: seconds, logger: logger)
            deadEnds.succeeded(.changeVisibility)
            return true
        } catch {
            logger.warning("\(failure)", metadata: ["error": "\(error)"])
            deadEnds.failed(.changeVisibility, resource: config.queueURL, subject: message.messageID, error: error)
            return false
        }
    }

    /// Writes one input's failure record (`failureRecordKey`). With `onlyIfAbsent`, a record already there is kept
    /// (S3's conditional write, `If-None-Match: *`) and counts as written.
    @discardableResult
    func writeFailureRecord(_ failure: TaskFailure, message: SQSMessage, onlyIfAbsent: Bool = false,
                            logger: Logger) async -> Bool {
        await writeFailureRecord(key: Self.failureRecordKey(forInput: failure.input.key), fields: [
            "input": .string(failure.input.description), "reason": .string(failure.reason),
            "exitStatus": .string(failure.outcome?.summary ?? "none"), "attempts": .number(Double(message.receiveCount)),
            "instanceId": .string(instanceID), "durationSeconds": .number((failure.seconds * 1000).rounded() / 1000),
            "stderrTail": .string(failure.stderrTail), "messageId": .string(message.messageID),
            "time": .string(CivilTime(date: Date()).iso8601),
        ], subject: message.messageID, onlyIfAbsent: onlyIfAbsent, logger: logger)
    }

    /// `_failed/<input key>.json`; when that would pass S3's 1,024-byte limit on keys,
    /// `_failed/_long-keys/<SHA-256 of the input key>.json` (the record names the whole input inside).
    static func failureRecordKey(forInput key: String) -> String {
        let plain = "_failed/" + key + ".json"
        if plain.utf8.count <= MessageParser.maxKeyBytes { return plain }
        return "_failed/_long-keys/" + Digest.sha256(Array(key.utf8)).hexString + ".json"
    }

    /// Returns whether the record was written. When it was not (the output bucket is missing or denied), the
    /// message must not be deleted: it would then leave no trace at all.
    @discardableResult
    func writeFailureRecord(key: String, fields: [String: JSONValue], subject: String, onlyIfAbsent: Bool = false,
                            logger: Logger) async -> Bool {
        let body = Array(JSONValue.object(fields).serialized.utf8)
        do {
            try await s3.putObject(bucket: config.outputBucket, key: key, bytes: body, contentType: "application/json",
                                   ifNoneMatch: onlyIfAbsent ? "*" : nil, logger: logger)
            deadEnds.succeeded(.putOutput)
            return true
        } catch where onlyIfAbsent && error.httpStatus == 412 {
            deadEnds.succeeded(.putOutput)
            logger.info("a failure record is there already; kept", metadata: ["s3.key": "\(key)"])
            return true
        } catch {
            logger.error("could not write the failure record", metadata: ["s3.key": "\(key)", "error": "\(error)"])
            deadEnds.failed(.putOutput, resource: "s3://\(config.outputBucket)", subject: subject, error: error)
            return false
        }
    }

    /// The last `bytes` of a file, as text.
    static func tail(of path: String, bytes: Int) -> String {
        LocalFile.tail(path, bytes: bytes).map { String(decoding: $0, as: UTF8.self) } ?? ""
    }
}

extension Duration {
    /// Seconds with millisecond precision.
    public var seconds: Double {
        let c = components
        return ((Double(c.seconds) + Double(c.attoseconds) / 1e18) * 1000).rounded() / 1000
    }
}
