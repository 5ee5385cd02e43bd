import AWSCore
import AWSServices
import Logging
import Synchronization

/// What the batcher needs from SQS (the client, or a recording double in unit tests).
public protocol BatchDeleting: Sendable {
    func deleteMessageBatch(
        queueURL: String, entries: [(id: String, receiptHandle: String)],
        logger: Logger
    ) async throws(AWSError) -> SQSBatchResult
    func deleteMessage(queueURL: String, receiptHandle: String, logger: Logger) async throws(AWSError)
}

extension SQSClient: BatchDeleting {}

/// Deletes settled messages ten to a `DeleteMessageBatch` call instead of one `DeleteMessage` each: SQS bills per
/// request, and with short tasks the delete was a quarter of the daemon's requests and CPU per task.
///
/// A message waits at most `linger` (`VisibilityPlan.deleteLinger`) before its batch goes; the tenth message sends
/// the batch at once, from the slot that added it. `withDeleteBatcher` runs the batcher for a scope: beside the scope
/// a flusher sends each batch whose linger is over, and at the scope's end whatever is left goes. A crash before a
/// batch goes loses nothing: those messages come back after their visibility timeout and are processed again, as a
/// crash between the upload and a single delete always allowed.
///
/// Sends run to their end even in a cancelled task (`uncancelled`): a stop's grace cancels the slots, not their
/// deletes.
public final class DeleteBatcher: Sendable {
    struct Pending: Sendable {
        var messageID: String
        var receiptHandle: String
        var logger: Logger
    }

    struct State {
        var pending: [Pending] = []
        /// When the open batch must go at the latest.
        var due: ContinuousClock.Instant?
        /// The flusher, asleep until a batch opens.
        var flusher: CheckedContinuation<Void, Never>?
    }

    public static let maxBatch = 10

    let client: any BatchDeleting
    let queueURL: String
    let linger: Duration
    let clock: any WorkerClock
    /// Told how each message's delete ended (nil: deleted), by message id: the daemon's dead-end watch.
    let outcome: @Sendable (_ messageID: String, _ error: AWSError?) -> Void
    /// Batches go one message per call once `DeleteMessageBatch` is refused where `DeleteMessage` works.
    let fallback = BatchFallback(batchAction: "DeleteMessageBatch", singleAction: "DeleteMessage")
    private let state = Mutex(State())

    public init(
        client: any BatchDeleting, queueURL: String, linger: Duration, clock: any WorkerClock = SystemClock(),
        outcome: @escaping @Sendable (_ messageID: String, _ error: AWSError?) -> Void = { _, _ in }
    ) {
        self.client = client
        self.queueURL = queueURL
        self.linger = linger
        self.clock = clock
        self.outcome = outcome
    }

    /// Queues the message for deletion; sends the batch now when this message fills it (or there is no linger).
    public func delete(_ message: SQSMessage, logger: Logger) async {
        let now = clock.now
        let (full, wake): ([Pending]?, CheckedContinuation<Void, Never>?) = state.withLock { state in
            state.pending.append(
                Pending(messageID: message.messageID, receiptHandle: message.receiptHandle, logger: logger))
            if state.pending.count >= Self.maxBatch || linger == .zero { return (Self.take(&state), nil) }
            guard state.due == nil else { return (nil, nil) }
            state.due = now + linger
            defer { state.flusher = nil }
            return (nil, state.flusher)
        }
        wake?.resume()
        if let full { await uncancelled { await self.send(full) } }
    }

    /// Sends each batch whose linger is over, until the calling task is cancelled.
    func runFlusher() async {
        while !Task.isCancelled {
            guard let due = state.withLock({ $0.due }) else {
                await waitForABatch()
                continue
            }
            do { try await clock.sleep(until: due) } catch { return }
            // Taken full (or by the end of the scope) while this slept: nothing is due any more.
            let batch = state.withLock { $0.due == due ? Self.take(&$0) : [] }
            if !batch.isEmpty { await uncancelled { await self.send(batch) } }
        }
    }

    private func waitForABatch() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { state -> Bool in
                    if state.due != nil || Task.isCancelled { return true }
                    state.flusher = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { state in
                defer { state.flusher = nil }
                return state.flusher
            }?.resume()
        }
    }

    /// Sends everything pending (at the end of `withDeleteBatcher`).
    func finish() async {
        let batch = state.withLock { Self.take(&$0) }
        if !batch.isEmpty { await uncancelled { await self.send(batch) } }
    }

    /// Takes the open batch.
    private static func take(_ state: inout State) -> [Pending] {
        state.due = nil
        defer { state.pending = [] }
        return state.pending
    }

    /// Rounds of a batch's delete: entries that failed with an error that may pass (SQS's own fault, a throttle) go
    /// again, after 0.2 s, then 0.4 s: a message whose delete is given up on runs again.
    static let rounds = 3

    private func send(_ batch: [Pending]) async {
        // SQS refuses a whole batch that names a receipt handle twice; a second delete of one message adds nothing.
        var seen = Set<String>()
        let batch = batch.filter { seen.insert($0.receiptHandle).inserted }
        guard let first = batch.first else { return }
        let (client, queueURL) = (self.client, self.queueURL)
        var remaining = batch.enumerated().map { (id: String($0.offset), receiptHandle: $0.element.receiptHandle) }
        // Each entry's end: nil for deleted, else the error it was given up with.
        var settled: [Int: AWSError?] = [:]
        for round in 1...Self.rounds {
            var failures: [Int: AWSError] = [:]
            do {
                let result = try await fallback.send(
                    remaining, id: \.id,
                    batch: { entries throws(AWSError) in
                        try await client.deleteMessageBatch(queueURL: queueURL, entries: entries, logger: first.logger)
                    },
                    single: { entry throws(AWSError) in
                        try await client.deleteMessage(
                            queueURL: queueURL, receiptHandle: entry.receiptHandle,
                            logger: batch[Int(entry.id)!].logger)
                    },
                    logger: first.logger)
                for failure in result.failed {
                    guard let index = Int(failure.id), batch.indices.contains(index) else { continue }
                    failures[index] = failure.error
                }
            } catch {
                for entry in remaining { failures[Int(entry.id)!] = error }
            }
            let lastRound = round == Self.rounds
            remaining = remaining.filter { entry in
                let index = Int(entry.id)!
                guard let error = failures[index] else {
                    settled[index] = .some(nil)
                    return false
                }
                if error.isRetryable && !lastRound { return true }
                settled[index] = .some(error)
                return false
            }
            if remaining.isEmpty { break }
            try? await Task.sleep(for: .milliseconds(200 << (round - 1)))
        }
        for (index, pending) in batch.enumerated() {
            let error = settled[index] ?? nil
            if let error {
                pending.logger.error(
                    "could not delete the message; it will be processed again",
                    metadata: ["error": "\(error)"])
            }
            outcome(pending.messageID, error)
        }
    }
}

/// Runs `body` with `batcher`: a flusher beside it sends each batch whose linger is over, and when `body` returns the
/// flusher stops and what is left is sent.
public func withDeleteBatcher<T: Sendable>(_ batcher: DeleteBatcher, _ body: () async -> T) async -> T {
    await withTaskGroup(of: Void.self) { group in
        group.addTask { await batcher.runFlusher() }
        let result = await body()
        group.cancelAll()
        await group.waitForAll()
        await batcher.finish()
        return result
    }
}
