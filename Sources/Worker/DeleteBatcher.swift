import AWSCore
import AWSServices
import Logging
import Synchronization

/// What the batcher needs from SQS (the client, or a recording double in unit tests).
public protocol BatchDeleting: Sendable {
    func deleteMessageBatch(queueURL: String, entries: [(id: String, receiptHandle: String)],
                            logger: Logger) async throws(AWSError) -> SQSBatchResult
    func deleteMessage(queueURL: String, receiptHandle: String, logger: Logger) async throws(AWSError)
}

extension SQSClient: BatchDeleting {}

/// Deletes settled messages ten to a `DeleteMessageBatch` call instead of one `DeleteMessage` each: SQS bills per
/// request, and with short tasks the delete was a quarter of the daemon's requests and CPU per task.
///
/// A message waits at most `linger` before its batch goes. That must stay well inside the time its visibility has
/// left once the heartbeat stops: half a visibility timeout, less the latency of the last extension, which under
/// load can take seconds. So batching waits only on queues whose timeout is long (`linger(visibilityTimeout:)`); on
/// short ones each delete goes at once. The tenth message sends the batch at once, from the slot that added it. `finish()` sends what is left when the daemon stops. A crash before a batch goes loses
/// nothing: those messages come back after their visibility timeout and are processed again, as a crash between
/// the upload and a single delete always allowed.
public final class DeleteBatcher: Sendable {
    struct Pending: Sendable {
        var messageID: String
        var receiptHandle: String
        var logger: Logger
    }

    struct State {
        var pending: [Pending] = []
        /// The sleeping timer of the open batch, if any.
        var timer: (id: Int, task: Task<Void, Never>)?
        /// Batches sent by timers that fired, still on their way (`finish()` waits for them).
        var timersSending = 0
        var nextID = 0
    }

    public static let maxBatch = 10

    let client: any BatchDeleting
    let queueURL: String
    let linger: Duration
    /// Told how each message's delete ended (nil: deleted), by message id: the daemon's dead-end watch.
    let outcome: @Sendable (_ messageID: String, _ error: AWSError?) -> Void
    /// Batches go one message per call once `DeleteMessageBatch` is refused where `DeleteMessage` works.
    let fallback = BatchFallback(batchAction: "DeleteMessageBatch", singleAction: "DeleteMessage")
    private let state = Mutex(State())

    public init(client: any BatchDeleting, queueURL: String, linger: Duration,
                outcome: @escaping @Sendable (_ messageID: String, _ error: AWSError?) -> Void = { _, _ in }) {
        self.client = client
        self.queueURL = queueURL
        self.linger = linger
        self.outcome = outcome
    }

    /// The linger for a queue's visibility timeout: a second from 20 s up (ten seconds or more are left when the
    /// heartbeat stops), none below, where a message is deleted as soon as it is settled.
    public static func linger(visibilityTimeout: Int) -> Duration {
        visibilityTimeout >= 20 ? .seconds(1) : .zero
    }

    /// Queues the message for deletion; sends the batch now when this message fills it.
    public func delete(_ message: SQSMessage, logger: Logger) async {
        let full: [Pending]? = state.withLock { state in
            state.pending.append(Pending(messageID: message.messageID, receiptHandle: message.receiptHandle, logger: logger))
            if state.pending.count >= Self.maxBatch || linger == .zero { return Self.take(&state) }
            if state.timer == nil {
                let id = state.nextID
                state.nextID += 1
                state.timer = (id, Task { await self.timerFired(id) })
            }
            return nil
        }
        if let full { await send(full) }
    }

    /// Sends everything pending and waits for batches already on their way.
    public func finish() async {
        let batch = state.withLock { Self.take(&$0) }
        if !batch.isEmpty { await send(batch) }
        while state.withLock({ $0.timersSending }) > 0 { try? await Task.sleep(for: .milliseconds(10)) }
    }

    /// Takes the open batch and stops its timer, if it is still asleep.
    private static func take(_ state: inout State) -> [Pending] {
        state.timer?.task.cancel()
        state.timer = nil
        defer { state.pending = [] }
        return state.pending
    }

    private func timerFired(_ id: Int) async {
        try? await Task.sleep(for: linger)
        // No longer the open batch's timer: the batch was taken, full or by finish(), while this one slept.
        let batch: [Pending]? = state.withLock { state in
            guard state.timer?.id == id else { return nil }
            state.timer = nil  // first, so that take() does not cancel this task (and its request) while it sends
            state.timersSending += 1
            return Self.take(&state)
        }
        guard let batch else { return }
        await send(batch)
        state.withLock { $0.timersSending -= 1 }
    }

    private func send(_ batch: [Pending]) async {
        // SQS refuses a whole batch that names a receipt handle twice; a second delete of one message adds nothing.
        var seen = Set<String>()
        let batch = batch.filter { seen.insert($0.receiptHandle).inserted }
        guard let first = batch.first else { return }
        let entries = batch.enumerated().map { (id: String($0.offset), receiptHandle: $0.element.receiptHandle) }
        let (client, queueURL) = (self.client, self.queueURL)
        var failures: [Int: AWSError] = [:]
        do {
            let result = try await fallback.send(
                entries, id: \.id,
                batch: { entries throws(AWSError) in
                    try await client.deleteMessageBatch(queueURL: queueURL, entries: entries, logger: first.logger)
                },
                single: { entry throws(AWSError) in
                    try await client.deleteMessage(queueURL: queueURL, receiptHandle: entry.receiptHandle,
                                                   logger: batch[Int(entry.id)!].logger)
                },
                logger: first.logger)
            for failure in result.failed {
                guard let index = Int(failure.id), batch.indices.contains(index) else { continue }
                failures[index] = failure.error
            }
        } catch {
            for index in batch.indices { failures[index] = error }
        }
        for (index, pending) in batch.enumerated() {
            if let error = failures[index] {
                pending.logger.error("could not delete the message; it will be processed again",
                                     metadata: ["error": "\(error)"])
            }
            outcome(pending.messageID, failures[index])
        }
    }
}
