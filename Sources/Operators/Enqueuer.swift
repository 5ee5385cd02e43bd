import AWSCore
import AWSServices
import FoundationEssentials
import Logging
import Synchronization

/// What `Enqueuer` sends through: SQS, or a double in the unit tests.
public protocol BatchSending: Sendable {
    func sendMessageBatch(queueURL: String, entries: [(id: String, body: String)], logger: Logger)
        async throws(AWSError) -> SQSBatchResult
    @discardableResult
    func sendMessage(queueURL: String, body: String, logger: Logger) async throws(AWSError) -> String
}

extension SQSClient: BatchSending {}

/// Sends one message per input key, ten to a SendMessageBatch call, several calls at once, retrying the entries
/// SQS reports as failed (when the fault is not the sender's).
public struct Enqueuer: Sendable {
    public struct Totals: Sendable, Equatable {
        public var sent = 0
        public var skipped = 0
        public var failed = 0
        /// Why sending stopped before the end: an error that every further call would meet (`setupProblem`).
        public var stoppedBy: String?
        public init() {}
    }

    public let sqs: any BatchSending
    public let queueURL: String
    public var concurrency = 8
    public var maxRetries = 5
    /// Pauses before entries SQS reported as failed go again (0.2 s, doubling to 6.4 s), and before a whole batch
    /// that failed goes again (0.4 s to 12.8 s): on top of the client's own retries of each call.
    static var entryRetry: RetryPolicy { RetryPolicy(maxAttempts: .max, baseDelay: 0.2, maxDelay: 6.4, jitter: .none) }
    static var batchRetry: RetryPolicy { RetryPolicy(maxAttempts: .max, baseDelay: 0.4, maxDelay: 12.8, jitter: .none) }
    /// Batches go one message per call once `SendMessageBatch` is refused where `SendMessage` works.
    let fallback = BatchFallback(batchAction: "SendMessageBatch", singleAction: "SendMessage")

    public init(sqs: any BatchSending, queueURL: String) {
        self.sqs = sqs
        self.queueURL = queueURL
    }

    /// Sends `bodies`; `progress` is called after each batch with the running totals.
    public func send(_ bodies: [String], logger: Logger, progress: @escaping @Sendable (Totals) -> Void = { _ in })
        async -> Totals
    {
        let totals = Running()
        let batches = stride(from: 0, to: bodies.count, by: 10).map { Array(bodies[$0..<min($0 + 10, bodies.count)]) }
        await withTaskGroup(of: Void.self) { group in
            var next = 0
            func launch() {
                let batch = batches[next]
                next += 1
                group.addTask {
                    let (sent, failed, stop) = await sendBatch(batch, logger: logger)
                    let now = totals.value.withLock { t in
                        t.sent += sent
                        t.failed += failed
                        if let stop, t.stoppedBy == nil { t.stoppedBy = "\(stop)" }
                        return t
                    }
                    progress(now)
                }
            }
            while next < min(concurrency, batches.count) { launch() }
            while await group.next() != nil {
                if totals.value.withLock({ $0.stoppedBy != nil }) { break }
                if next < batches.count { launch() }
            }
            await group.waitForAll()
            // After a stop, the batches never sent count as failed.
            let unsent = batches[next...].reduce(0) { $0 + $1.count }
            totals.value.withLock { $0.failed += unsent }
        }
        return totals.value.withLock { $0 }
    }

    final class Running: Sendable {
        let value = Mutex(Totals())
    }

    /// One batch, with its failed entries retried. Returns (sent, failed, and the error that should stop the whole
    /// run: one every further call would meet too, such as a denied `SendMessage` or a queue that is gone).
    func sendBatch(_ bodies: [String], logger: Logger) async -> (Int, Int, AWSError?) {
        var pending = Array(bodies.enumerated().map { (id: "e\($0.offset)", body: $0.element) })
        var sent = 0
        // Entries SQS refused for good (the sender's fault), counted as each round finds them: a refusal in a round
        // where other entries are retried must not be lost.
        var refused = 0
        var attempt = 0
        let (sqs, queueURL) = (self.sqs, self.queueURL)
        while !pending.isEmpty {
            attempt += 1
            do {
                let result = try await fallback.send(
                    pending, id: \.id,
                    batch: { entries throws(AWSError) in
                        try await sqs.sendMessageBatch(queueURL: queueURL, entries: entries, logger: logger)
                    },
                    single: { entry throws(AWSError) in
                        _ = try await sqs.sendMessage(queueURL: queueURL, body: entry.body, logger: logger)
                    },
                    logger: logger)
                sent += result.successful.count
                if let stop = result.failed.lazy.map(\.error).first(where: { $0.setupProblem != nil }) {
                    return (sent, refused + pending.count - result.successful.count, stop)
                }
                let senderFaults = result.failed.filter(\.senderFault)
                for fault in senderFaults {
                    logger.error(
                        "message refused",
                        metadata: [
                            "sqs.code": "\(fault.code)", "reason": "\(fault.message)",
                            "body": "\(pending.first { $0.id == fault.id }?.body ?? "")",
                        ])
                }
                let retry = Set(result.failed.filter { !$0.senderFault }.map(\.id))
                refused += senderFaults.count
                pending = pending.filter { retry.contains($0.id) }
                if pending.isEmpty { return (sent, refused, nil) }
                if attempt > maxRetries { return (sent, pending.count + refused, nil) }
                if !pending.isEmpty {
                    try? await Task.sleep(for: .seconds(Self.entryRetry.delay(beforeRetry: attempt)))
                }
            } catch {
                if error.setupProblem != nil || attempt > maxRetries {
                    logger.error(
                        "batch could not be sent", metadata: ["error": "\(error)", "messages": "\(pending.count)"])
                    return (sent, refused + pending.count, error.setupProblem != nil ? error : nil)
                }
                try? await Task.sleep(for: .seconds(Self.batchRetry.delay(beforeRetry: attempt)))
            }
        }
        return (sent, refused, nil)
    }
}
