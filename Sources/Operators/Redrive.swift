import AWSCore
import AWSServices
import FoundationEssentials
import Logging

/// Moves a queue's dead letters back into it, for another try once the cause is fixed.
///
/// SQS's own move task (`StartMessageMoveTask`, without a destination: each message goes back to the queue it came
/// from) where the service offers it; else, and when only some are asked for, message by message: receive from the
/// dead-letter queue, send to the queue, and only then delete from the dead-letter queue. Cut off midway, a message
/// is at worst in both queues (it runs twice, and its output is the same), never in neither. What is still in the
/// dead-letter queue at the end (hidden by an earlier run cut short, or refused) is reported, and fails the command.
public struct Redrive: Sendable {
    public struct Outcome: Sendable, Equatable, Codable {
        /// `move task` or `receive, send, delete`.
        public var method: String
        public var moved: Int
        /// Messages that could not be sent: left in the dead-letter queue.
        public var failed: Int
        /// Messages still in the dead-letter queue when it ended (visible or hidden).
        public var left: Int
    }

    let sqs: SQSClient
    public var pollInterval: Double = 2
    /// How long a move task is followed before the command gives up on it (it goes on in SQS).
    public var moveTaskDeadline: Double = 3600

    public init(sqs: SQSClient) { self.sqs = sqs }

    /// The dead-letter queue the queue's redrive policy names: its URL (in the ARN's region and account) and ARN.
    public func deadLetterQueue(of queueURL: String, logger: Logger) async throws(AWSError) -> (
        url: String, arn: String
    )? {
        let attributes = try await sqs.getQueueAttributes(queueURL: queueURL, names: ["RedrivePolicy"], logger: logger)
        guard let policy = RedrivePolicy(attributes: attributes) else { return nil }
        return (try await sqs.queueURL(ofARN: policy.deadLetterTargetARN, logger: logger), policy.deadLetterTargetARN)
    }

    /// Moves the dead letters of `queueURL` back, at most `limit` of them (nil: all).
    public func run(
        queueURL: String, limit: Int?, progress: @Sendable (Int) -> Void = { _ in }, logger: Logger
    ) async throws(AWSError) -> Outcome {
        guard let dlq = try await deadLetterQueue(of: queueURL, logger: logger) else {
            throw AWSError.client("sqs", "the queue has no dead-letter queue (no RedrivePolicy)")
        }
        if dlq.url.hasSuffix(".fifo") {
            throw AWSError.client(
                "sqs", "the dead-letter queue is a FIFO queue: redrive it in the SQS console (message groups)")
        }
        if limit == nil {
            let handle: String?
            do {
                handle = try await sqs.startMessageMoveTask(sourceARN: dlq.arn, destinationARN: nil, logger: logger)
            } catch  where Self.moveTaskUnavailable(error) {
                logger.notice(
                    "SQS's move task is not available here; moving message by message (receive, send, delete)",
                    metadata: ["error": "\(error)"])
                handle = nil
            }
            if let handle {
                var outcome = try await followMoveTask(handle, source: dlq.arn, progress: progress, logger: logger)
                outcome.left = try await sqs.messageCounts(queueURL: dlq.url, logger: logger).total
                return outcome
            }
        }
        // By hand, messages of another queue that shares the dead-letter queue would come here.
        let sources = try await sqs.deadLetterSourceQueues(of: dlq.url, logger: logger)
        if sources.count > 1 {
            throw AWSError.client(
                "sqs",
                "the dead-letter queue takes the dead letters of \(sources.count) queues: moved by hand, the others' would come here; use SQS's move task (redrive without --max, where the service offers it)"
            )
        }
        var outcome = try await moveByHand(
            from: dlq.url, to: queueURL, limit: limit, progress: progress, logger: logger)
        outcome.left = try await sqs.messageCounts(queueURL: dlq.url, logger: logger).total
        return outcome
    }

    /// A move task the service does not offer (an SQS-compatible server, a region or queue without it), or that the
    /// operator may not start: the hand-moved way may still work. Anything else (a task already running, a throttle)
    /// is the answer.
    static func moveTaskUnavailable(_ error: AWSError) -> Bool {
        if error.setupProblem == .denied || error.setupProblem == .unknownAction { return true }
        if ["UnsupportedOperation", "InvalidAction", "UnknownOperationException"].contains(error.shortCode) {
            return true
        }
        // A server error after the client's retries (moto answers an operation it lacks so): the hand-moved way
        // uses other calls.
        return error.httpStatus >= 500 && !error.isThrottle
    }

    /// Follows the task `handle` (`ListMessageMoveTasks`) to its end. A task is listed with its handle only while it
    /// runs; once ended, it is the newest task listed, started no earlier than this command.
    func followMoveTask(
        _ handle: String, source: String, progress: @Sendable (Int) -> Void, logger: Logger
    ) async throws(AWSError) -> Outcome {
        logger.info("move task started", metadata: ["task": "\(handle)"])
        let started = Date().timeIntervalSince1970
        while Date().timeIntervalSince1970 - started < moveTaskDeadline {
            try? await Task.sleep(nanoseconds: UInt64(pollInterval * 1_000_000_000))
            let tasks = try await sqs.listMessageMoveTasks(sourceARN: source, logger: logger)
            let ours =
                tasks.first { $0.taskHandle == handle }
                ?? tasks.filter { $0.taskHandle == nil && ($0.startedEpoch ?? 0) >= started - 60 }
                .max { ($0.startedEpoch ?? 0) < ($1.startedEpoch ?? 0) }
            guard let task = ours else { continue }
            progress(task.moved)
            switch task.status {
            case "COMPLETED": return Outcome(method: "move task", moved: task.moved, failed: 0, left: 0)
            case "FAILED", "CANCELLED":
                throw AWSError(
                    kind: .service, service: "sqs", code: "MoveTask\(task.status.capitalized)",
                    message:
                        "the move task ended \(task.status): \(task.failureReason ?? "no reason given") (\(task.moved) moved)"
                )
            default: continue
            }
        }
        throw AWSError.client(
            "sqs", "the move task \(handle) has not ended within \(Int(moveTaskDeadline)) s; it goes on in SQS")
    }

    /// Receive from the dead-letter queue, send to the queue, delete what was sent.
    func moveByHand(
        from dlq: String, to queueURL: String, limit: Int?, progress: @Sendable (Int) -> Void, logger: Logger
    ) async throws(AWSError) -> Outcome {
        var moved = 0
        var failed: Set<String> = []
        var empty = 0
        while limit.map({ moved < $0 }) ?? true, empty < 2 {
            let want = min(10, limit.map { $0 - moved } ?? 10)
            // Hidden long enough to be sent and deleted; a message whose send failed comes back after it.
            let received = try await sqs.receiveMessages(
                queueURL: dlq, maxMessages: want, waitSeconds: 2, visibilityTimeout: 120, logger: logger)
            let messages = received.filter { !failed.contains($0.messageID) }
            if received.isEmpty {
                empty += 1
                continue
            }
            empty = 0
            if messages.isEmpty { continue }
            let entries = messages.enumerated().map { (id: "m\($0.offset)", body: $0.element.body) }
            let sent = try await sqs.sendMessageBatch(queueURL: queueURL, entries: entries, logger: logger)
            let sentIDs = Set(sent.successful)
            for failure in sent.failed {
                if let index = Int(failure.id.dropFirst()), index < messages.count {
                    failed.insert(messages[index].messageID)
                    logger.warning(
                        "not moved: the queue refused it; it stays in the dead-letter queue",
                        metadata: [
                            "sqs.message_id": "\(messages[index].messageID)",
                            "error": "\(failure.code): \(failure.message)",
                        ])
                }
            }
            let deletions = entries.enumerated().filter { sentIDs.contains($0.element.id) }.map {
                (id: $0.element.id, receiptHandle: messages[$0.offset].receiptHandle)
            }
            if !deletions.isEmpty {
                let deleted = try await sqs.deleteMessageBatch(queueURL: dlq, entries: deletions, logger: logger)
                for failure in deleted.failed {
                    // Sent and not deleted: it will be moved again (a second run of it), never lost.
                    logger.warning(
                        "moved, but not deleted from the dead-letter queue: it may be moved again",
                        metadata: ["entry": "\(failure.id)", "error": "\(failure.code)"])
                }
            }
            moved += sentIDs.count
            progress(moved)
        }
        return Outcome(method: "receive, send, delete", moved: moved, failed: failed.count, left: 0)
    }
}
