import AWSCore
import AWSServices
import Logging
import Synchronization
import TestSupport
import Testing
import Worker

/// Records each DeleteMessageBatch call; answers after `delay`, and fails the entries or the whole call when told to.
final class RecordingDeleter: BatchDeleting {
    let calls = Mutex<[[String]]>([])
    /// Entries answered so far (counted after the delay).
    let answered = Atomic<Int>(0)
    let failHandles: Set<String>
    let failCall: Bool
    let delay: Duration

    init(failHandles: Set<String> = [], failCall: Bool = false, delay: Duration = .zero) {
        self.failHandles = failHandles
        self.failCall = failCall
        self.delay = delay
    }

    var batches: [[String]] { calls.withLock { $0 } }

    func deleteMessageBatch(queueURL: String, entries: [(id: String, receiptHandle: String)],
                            logger: Logger) async throws(AWSError) -> SQSBatchResult {
        calls.withLock { $0.append(entries.map(\.receiptHandle)) }
        if delay > .zero { try? await Task.sleep(for: delay) }
        answered.add(entries.count, ordering: .relaxed)
        if failCall { throw AWSError.client("sqs", "connection refused") }
        let failed = entries.filter { failHandles.contains($0.receiptHandle) }
        return SQSBatchResult(
            successful: entries.filter { !failHandles.contains($0.receiptHandle) }.map(\.id),
            failed: failed.map { .init(id: $0.id, code: "ReceiptHandleIsInvalid", message: "stale", senderFault: true) })
    }
}

func message(_ n: Int) -> SQSMessage {
    SQSMessage(messageID: "id-\(n)", receiptHandle: "rh-\(n)", body: "k\(n)", attributes: [:])
}

@Suite(.timeLimit(.minutes(1)))
struct DeleteBatcherTests {
    @Test func fullBatchesGoAtOnceAndTheRestAfterTheLinger() async throws {
        let deleter = RecordingDeleter()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .milliseconds(300))
        for n in 0..<25 { await batcher.delete(message(n), logger: quietLogger) }
        // The 10th and the 20th message each sent their batch before `delete` returned.
        #expect(deleter.batches.map(\.count) == [10, 10])
        #expect(deleter.batches.first == (0..<10).map { "rh-\($0)" })
        let deadline = ContinuousClock.now + .seconds(10)
        while deleter.batches.count < 3 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(deleter.batches.map(\.count) == [10, 10, 5])
        await batcher.finish()
        #expect(deleter.batches.count == 3, "finish sent an empty batch")
    }

    @Test func finishSendsWhatIsLeftWithoutWaitingOutTheLinger() async throws {
        let deleter = RecordingDeleter()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600))
        for n in 0..<3 { await batcher.delete(message(n), logger: quietLogger) }
        #expect(deleter.batches.isEmpty)
        let started = ContinuousClock.now
        await batcher.finish()
        #expect(deleter.batches == [["rh-0", "rh-1", "rh-2"]])
        #expect(ContinuousClock.now - started < .seconds(5))
    }

    @Test func finishWaitsForABatchAlreadyOnItsWay() async throws {
        // Slow to answer: finish() must not return before the timer's call has.
        let deleter = RecordingDeleter(delay: .milliseconds(500))
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .milliseconds(50))
        await batcher.delete(message(1), logger: quietLogger)
        try await Task.sleep(for: .milliseconds(200))  // the timer has fired and is sending
        await batcher.finish()
        #expect(deleter.answered.load(ordering: .relaxed) == 1)
    }

    @Test func eachMessageThatWasNotDeletedGetsItsOwnErrorLine() async throws {
        let logs = CapturedLogs()
        let deleter = RecordingDeleter(failHandles: ["rh-4"])
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600))
        for n in 0..<10 {
            var logger = logs.logger()
            logger[metadataKey: "sqs.message_id"] = "id-\(n)"
            await batcher.delete(message(n), logger: logger)
        }
        let errors = logs.lines.filter { $0.hasPrefix("error") }
        #expect(errors.count == 1)
        #expect(errors.first?.contains("could not delete the message; it will be processed again") == true)
        #expect(errors.first?.contains("sqs.message_id=id-4") == true)
        #expect(errors.first?.contains("ReceiptHandleIsInvalid") == true)

        let down = CapturedLogs()
        let failing = DeleteBatcher(client: RecordingDeleter(failCall: true), queueURL: "q", linger: .seconds(3600))
        for n in 0..<3 { await failing.delete(message(n), logger: down.logger()) }
        await failing.finish()
        #expect(down.lines.filter { $0.hasPrefix("error") && $0.contains("connection refused") }.count == 3)
    }

    @Test func aMessageQueuedTwiceIsDeletedOnce() async {
        let deleter = RecordingDeleter()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600))
        for n in [1, 2, 1] { await batcher.delete(message(n), logger: quietLogger) }
        await batcher.finish()
        #expect(deleter.batches == [["rh-1", "rh-2"]])
    }

    @Test func shortVisibilityTimeoutsGetNoLinger() {
        #expect(DeleteBatcher.linger(visibilityTimeout: 600) == .seconds(1))
        #expect(DeleteBatcher.linger(visibilityTimeout: 20) == .seconds(1))
        #expect(DeleteBatcher.linger(visibilityTimeout: 19) == .zero)
        #expect(DeleteBatcher.linger(visibilityTimeout: 1) == .zero)
    }

    /// Without a linger, each settled message is deleted before `delete` returns: nothing waits for a batch.
    @Test func withoutALingerEachDeleteGoesAtOnce() async {
        let deleter = RecordingDeleter()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .zero)
        for n in 0..<3 {
            await batcher.delete(message(n), logger: quietLogger)
            #expect(deleter.batches.count == n + 1)
        }
        #expect(deleter.batches == [["rh-0"], ["rh-1"], ["rh-2"]])
    }
}
