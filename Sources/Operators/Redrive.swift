import AWSCore
import AWSServices
import FoundationEssentials
import Logging

/// Moves a queue's dead letters back into it, for another try once the cause is fixed.
///
/// SQS's own move task (`StartMessageMoveTask`) where the queue allows it; else, and when only some are asked for,
/// message by message: receive from the dead-letter queue, send to the queue, and only then delete from the
/// dead-letter queue. Cut off midway, a message is at worst in both queues (it runs twice, and its output is the
/// same), never in neither.
public struct Redrive: Sendable {
    public struct Outcome: Sendable, Equatable, Codable {
        /// `move task` or `receive, send, delete`.
        public var method: String
        public var moved: Int
        /// Messages that could not be sent: left in the dead-letter queue.
        public var failed: Int
    }

    let sqs: SQSClient
    public var pollInterval: Double = 2

    public init(sqs: SQSClient) { self.sqs = sqs }

    /// The dead-letter queue the queue's redrive policy names: its URL and ARN.
    public func deadLetterQueue(of queueURL: String, logger: Logger) async throws(AWSError) -> (
        url: String, arn: String
    )? {
        let attributes = try await sqs.getQueueAttributes(queueURL: queueURL, names: ["RedrivePolicy"], logger: logger)
        guard let policy = attributes["RedrivePolicy"], let json = try? JSONValue.parse(policy),
            let arn = json["deadLetterTargetArn"]?.stringValue, let name = arn.split(separator: ":").last
        else { return nil }
        return (try await sqs.getQueueURL(name: String(name), logger: logger), arn)
    }

    /// Moves the dead letters of `queueURL` back, at most `limit` of them (nil: all).
    public func run(
        queueURL: String, limit: Int?, progress: @Sendable (Int) -> Void = { _ in }, logger: Logger
    ) async throws(AWSError) -> Outcome {
        guard let dlq = try await deadLetterQueue(of: queueURL, logger: logger) else {
            throw AWSError.client("sqs", "the queue has no dead-letter queue (no RedrivePolicy)")
        }
        if limit == nil {
            do {
                return try await moveTask(from: dlq.arn, to: queueURL, progress: progress, logger: logger)
            } catch  where error.isThrottle {
                throw error
            } catch {
                logger.notice(
                    "SQS's move task is not available here; moving message by message (receive, send, delete)",
                    metadata: ["error": "\(error)"])
            }
        }
        return try await moveByHand(from: dlq.url, to: queueURL, limit: limit, progress: progress, logger: logger)
    }

    /// `StartMessageMoveTask` back to the queue, followed to its end by `ListMessageMoveTasks`.
    func moveTask(
        from source: String, to queueURL: String, progress: @Sendable (Int) -> Void, logger: Logger
    ) async throws(AWSError) -> Outcome {
        let queueARN = try await sqs.getQueueAttributes(queueURL: queueURL, names: ["QueueArn"], logger: logger)[
            "QueueArn"]
        let handle = try await sqs.startMessageMoveTask(sourceARN: source, destinationARN: queueARN, logger: logger)
        logger.info("move task started", metadata: ["task": "\(handle)"])
        while true {
            try? await Task.sleep(nanoseconds: UInt64(pollInterval * 1_000_000_000))
            guard
                let task = try await sqs.listMessageMoveTasks(sourceARN: source, logger: logger).first(where: {
                    $0.taskHandle == nil || $0.taskHandle == handle
                })
            else { continue }
            progress(task.moved)
            switch task.status {
            case "COMPLETED": return Outcome(method: "move task", moved: task.moved, failed: 0)
            case "FAILED", "CANCELLED":
                throw AWSError(
                    kind: .service, service: "sqs", code: "MoveTask\(task.status.capitalized)",
                    message:
                        "the move task ended \(task.status): \(task.failureReason ?? "no reason given") (\(task.moved) moved)"
                )
            default: continue
            }
        }
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
            let messages = try await sqs.receiveMessages(
                queueURL: dlq, maxMessages: want, waitSeconds: 2, visibilityTimeout: 120, logger: logger
            ).filter { !failed.contains($0.messageID) }
            if messages.isEmpty {
                empty += 1
                continue
            }
            empty = 0
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
        return Outcome(method: "receive, send, delete", moved: moved, failed: failed.count)
    }
}
