import AWSCore
import AWSServices
import FoundationEssentials
import Logging
import TaskLedger

/// `parallelizer reconcile`: every input of a run beside what became of it, from the traces the fleet leaves: its
/// output (`OutputContract`), its failure record (`_failed/`), the dead-letter queue, and the queue. Each input gets
/// one state; with `enqueueMissing`, exactly the inputs with no trace are sent again.
///
/// Memory stays flat whatever the run's size: the inputs are walked a listing page at a time (S3 lists keys in
/// order), and each page's outputs and records are looked up with one ranged listing walk each
/// (`S3Client.existingKeys`). Only the queues' inputs are held, as a set: the dead-letter queue holds the run's
/// failures, and the queue is read only when asked (`readQueue`).
///
/// The live queue is not read by default: a receive counts against a message's attempts, and near the dead-letter
/// queue's `maxReceiveCount` it could move the message there. So while the queue holds messages, an input with no
/// other trace is `unsettled` (queued or lost, nobody can tell without reading); once the queue is empty it is
/// `missing`. With `readQueue`, its messages are received, each receive noted as unrun (as the daemon notes its own
/// releases, so it spends no attempt), and made visible again at the end.
public struct Reconcile: Sendable {
    public enum State: Sendable, Equatable {
        case done
        /// A failure record, and the reason it gives.
        case failed(String)
        /// In the dead-letter queue (the reason from its failure record, when there is one).
        case deadLettered(String?)
        /// A message for it waits in the queue (read with `readQueue`).
        case queued
        /// No trace, while the queue holds messages that were not read.
        case unsettled
        /// No trace at all: its message was lost (deleted by hand, purged, never sent).
        case missing

        public var name: String {
            switch self {
            case .done: return "done"
            case .failed: return "failed"
            case .deadLettered: return "dead-lettered"
            case .queued: return "queued"
            case .unsettled: return "unsettled"
            case .missing: return "missing"
            }
        }

        /// The line `reconcile` prints: state, key, and the reason when there is one, tab-separated.
        public func line(_ key: String) -> String {
            switch self {
            case .failed(let reason), .deadLettered(let reason?): return "\(name)\t\(key)\t\(reason)"
            default: return "\(name)\t\(key)"
            }
        }
    }

    public struct Options: Sendable {
        /// The inputs: every key under this prefix.
        public var inputs: S3URI
        /// The outputs' bucket and `outputPrefix`; failure records are at the bucket's top (`_failed/`).
        public var results: S3URI
        /// The daemon's `inputPrefix`, and the name the command gives its output (`{name}` is the input's file
        /// name), as for `enqueue --skip-done`.
        public var inputPrefix = ""
        public var outputName: String
        public var queueURL: String
        public var enqueueMissing = false
        public var bodyForm: BodyForm = .json
        public var readQueue = false
        /// How long the queues' messages stay hidden while they are read.
        public var hold = 300

        public init(inputs: S3URI, results: S3URI, outputName: String, queueURL: String) {
            self.inputs = inputs
            self.results = results
            self.outputName = outputName
            self.queueURL = queueURL
        }
    }

    public struct Totals: Sendable, Equatable {
        public var counts: [String: Int] = [:]
        public var sent = 0
        public var sendFailed = 0
        public init() {}

        public var summary: String {
            let order = ["done", "failed", "dead-lettered", "queued", "unsettled", "missing"]
            return order.map { "\($0) \(counts[$0, default: 0])" }.joined(separator: ", ")
        }
    }

    /// What the daemon's formats say, from the `Worker` module: where an input's failure record is, and which
    /// input keys a message body names (empty for a body that names none).
    public struct Formats: Sendable {
        public var recordKey: @Sendable (String) -> String
        public var inputKeys: @Sendable (String) -> [S3URI]
        public init(
            recordKey: @escaping @Sendable (String) -> String, inputKeys: @escaping @Sendable (String) -> [S3URI]
        ) {
            self.recordKey = recordKey
            self.inputKeys = inputKeys
        }
    }

    public enum Refusal: Error, CustomStringConvertible {
        case queueNotEmpty(Int)
        public var description: String {
            switch self {
            case .queueNotEmpty(let n):
                return
                    "--enqueue-missing sends only what is lost for sure: the queue holds \(n) messages (visible, in flight or delayed); run it once the queue is drained"
            }
        }
    }

    let options: Options
    let formats: Formats
    let context: AWSContext

    public init(options: Options, formats: Formats, context: AWSContext) {
        self.options = options
        self.formats = formats
        self.context = context
    }

    /// Walks the inputs, calling `emit` for each in key order; returns the totals.
    public func run(logger: Logger, emit: (String, State) -> Void) async throws -> Totals {
        let sqs = SQSClient(context: context)
        let s3 = try S3Client(context: context)
        let attributes = try await sqs.getQueueAttributes(queueURL: options.queueURL, logger: logger)
        let counts = SQSClient.MessageCounts(attributes: attributes)
        // Sending again is for what is lost for sure: messages in flight (a worker's, or waiting out a retry's
        // backoff) cannot be read, so a queue that holds anything at all refuses it, before anything is read.
        if options.enqueueMissing && counts.total > 0 { throw Refusal.queueNotEmpty(counts.total) }
        let redrive = RedrivePolicy(attributes: attributes)
        var held: [(queue: String, handle: String)] = []
        do {
            var deadLettered = Set<[UInt8]>()
            if let redrive {
                let dlq = try await sqs.queueURL(ofARN: redrive.deadLetterTargetARN, logger: logger)
                deadLettered = try await read(
                    dlq, noteReceives: false, maxReceiveCount: nil, held: &held, sqs: sqs, s3: s3, logger: logger)
            }
            var queued = Set<[UInt8]>()
            if options.readQueue {
                queued = try await read(
                    options.queueURL, noteReceives: true, maxReceiveCount: redrive?.maxReceiveCount, held: &held,
                    sqs: sqs, s3: s3, logger: logger)
            }
            let totals = try await walk(
                counts: counts, deadLettered: deadLettered, queued: queued, sqs: sqs, s3: s3, logger: logger,
                emit: emit)
            await release(held, sqs: sqs, logger: logger)
            return totals
        } catch {
            // Whatever happened, what was read goes back at once.
            await release(held, sqs: sqs, logger: logger)
            throw error
        }
    }

    func release(_ held: [(queue: String, handle: String)], sqs: SQSClient, logger: Logger) async {
        for (queue, handle) in held {
            try? await sqs.changeMessageVisibility(
                queueURL: queue, receiptHandle: handle, timeout: 0, logger: logger)
        }
    }

    func walk(
        counts: SQSClient.MessageCounts, deadLettered: Set<[UInt8]>, queued: Set<[UInt8]>, sqs: SQSClient,
        s3: S3Client, logger: Logger, emit: (String, State) -> Void
    ) async throws -> Totals {
        let noTrace: State = options.readQueue || counts.total == 0 ? .missing : .unsettled
        let done = DoneCheck(
            sources: [
                .outputs(
                    bucket: options.results.bucket, outputPrefix: options.results.key,
                    inputPrefix: options.inputPrefix, outputName: options.outputName)
            ], s3: s3, dynamo: nil)
        var totals = Totals()
        let enqueuer = Enqueuer(sqs: sqs, queueURL: options.queueURL)
        try await s3.listAll(bucket: options.inputs.bucket, prefix: options.inputs.key, logger: logger) {
            page throws(AWSError) in
            // A key ending in `/` is a folder's marker (the console makes them), never an input, as for enqueue.
            let keys = page.map(\.key).filter { !$0.hasSuffix("/") }
            let finished = try await done.done(keys, logger: logger)
            var recordKeys: [[UInt8]: String] = [:]
            for key in keys where !finished.contains(key) { recordKeys[Array(formats.recordKey(key).utf8)] = key }
            let recorded = try await s3.existingKeys(
                bucket: options.results.bucket, prefix: "_failed/", among: Array(recordKeys.keys), logger: logger)
            var missing: [String] = []
            for key in keys {
                let bytes = Array(key.utf8)
                let state: State
                if finished.contains(key) {
                    state = .done
                } else if recorded.contains(Array(formats.recordKey(key).utf8)) {
                    let reason = await self.reason(recordKey: formats.recordKey(key), s3: s3, logger: logger)
                    state = deadLettered.contains(bytes) ? .deadLettered(reason) : .failed(reason)
                } else if deadLettered.contains(bytes) {
                    state = .deadLettered(nil)
                } else if queued.contains(bytes) {
                    state = .queued
                } else {
                    state = noTrace
                    if noTrace == .missing { missing.append(key) }
                }
                totals.counts[state.name, default: 0] += 1
                emit(key, state)
            }
            if options.enqueueMissing && !missing.isEmpty {
                let bodies = missing.compactMap {
                    options.bodyForm.body(bucket: options.inputs.bucket, key: $0, inputPrefix: options.inputPrefix)
                }
                let sent = await enqueuer.send(bodies, logger: logger)
                totals.sent += sent.sent
                totals.sendFailed += sent.failed + (missing.count - bodies.count)
            }
        }
        return totals
    }

    /// The reason a failure record gives ("failed" when it cannot be read).
    func reason(recordKey: String, s3: S3Client, logger: Logger) async -> String {
        guard
            let bytes = try? await s3.getObjectBytes(
                bucket: options.results.bucket, key: recordKey, limit: 1 << 20, logger: logger),
            let json = try? JSONValue.parse(bytes), let reason = json["reason"]?.stringValue
        else { return "a failure record (unreadable): s3://\(options.results.bucket)/\(recordKey)" }
        return reason.replacingAll("\t", with: " ").replacingAll("\n", with: " ")
    }

    /// Receives every message of `queue` (hidden for `hold` seconds while the walk lasts) and returns the input
    /// keys of this run's bucket they name. With `noteReceives`, each receive is noted as unrun in the results'
    /// `_parallelizer/releases/`, as the daemon notes its own releases: reading spends no attempt.
    ///
    /// Memory grows with what the queues hold (the dead-letter queue holds the run's failures). A message seen twice
    /// means the hold ran out before the read did (a queue too large to read within `hold`): the read ends there, and
    /// says so.
    func read(
        _ queue: String, noteReceives: Bool, maxReceiveCount: Int?, held: inout [(queue: String, handle: String)],
        sqs: SQSClient, s3: S3Client, logger: Logger
    ) async throws -> Set<[UInt8]> {
        var keys = Set<[UInt8]>()
        var seen = Set<String>()
        var emptyReplies = 0
        // An empty reply from a short poll may miss messages on other servers: two in a row end the read.
        read: while emptyReplies < 2 {
            let messages = try await sqs.receiveMessages(
                queueURL: queue, maxMessages: 10, waitSeconds: 1, visibilityTimeout: options.hold, logger: logger)
            if messages.isEmpty {
                emptyReplies += 1
                continue
            }
            emptyReplies = 0
            for message in messages {
                held.append((queue, message.receiptHandle))
                guard seen.insert(message.messageID).inserted else {
                    logger.warning(
                        "a message came back while the queue was read: it holds more than can be read within the hold; what is left is not shown",
                        metadata: ["queue": "\(queue)", "hold_s": "\(options.hold)"])
                    break read
                }
                if noteReceives {
                    let key =
                        OutputContract.releaseNotesPrefix(outputPrefix: options.results.key) + message.messageID + "/"
                        + String(message.receiveCount)
                    do {
                        try await s3.putObject(
                            bucket: options.results.bucket, key: key, bytes: [],
                            contentType: "application/octet-stream", logger: logger)
                    } catch {
                        logger.warning(
                            "could not note reconcile's receive as unrun: it counts as one of the message's attempts",
                            metadata: ["sqs.message_id": "\(message.messageID)", "error": "\(error)"])
                    }
                    if let maxReceiveCount, message.receiveCount >= maxReceiveCount {
                        logger.warning(
                            "reconcile's receive brought the message to the dead-letter queue's maxReceiveCount: its next receive moves it there",
                            metadata: [
                                "sqs.message_id": "\(message.messageID)", "receive_count": "\(message.receiveCount)",
                            ])
                    }
                }
                for input in formats.inputKeys(message.body) where input.bucket == options.inputs.bucket {
                    keys.insert(Array(input.key.utf8))
                }
            }
        }
        return keys
    }
}
