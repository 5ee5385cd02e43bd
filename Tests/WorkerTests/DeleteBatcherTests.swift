import AWSCore
import AWSServices
import Logging
import Synchronization
import TestSupport
import Testing
import Worker

/// Records each DeleteMessageBatch and DeleteMessage call; answers after `delay`, and fails the entries, the whole
/// batch call or the single calls when told to.
final class RecordingDeleter: BatchDeleting {
    let calls = Mutex<[[String]]>([])
    let singleCalls = Mutex<[String]>([])
    /// Entries answered so far (counted after the delay).
    let answered = Atomic<Int>(0)
    let failHandles: Set<String>
    let failCall: Bool
    /// Every batch call fails with this error; single calls fail with `refuseSingles` when set.
    let refuseBatch: AWSError?
    let refuseSingles: AWSError?
    let delay: Duration
    /// Handles whose entry fails with SQS's own fault (an error that may pass) this many times first.
    let flaky: Mutex<[String: Int]>

    init(
        failHandles: Set<String> = [], failCall: Bool = false, refuseBatch: AWSError? = nil,
        refuseSingles: AWSError? = nil, delay: Duration = .zero, flaky: [String: Int] = [:]
    ) {
        self.flaky = Mutex(flaky)
        self.failHandles = failHandles
        self.failCall = failCall
        self.refuseBatch = refuseBatch
        self.refuseSingles = refuseSingles
        self.delay = delay
    }

    var batches: [[String]] { calls.withLock { $0 } }
    var singles: [String] { singleCalls.withLock { $0 } }

    func deleteMessageBatch(
        queueURL: String, entries: [(id: String, receiptHandle: String)],
        logger: Logger
    ) async throws(AWSError) -> SQSBatchResult {
        // As the real client: a cancelled task's request never goes out.
        if Task.isCancelled {
            throw AWSError(kind: .transport(.cancelled), service: "sqs", code: "Cancelled", message: "")
        }
        calls.withLock { $0.append(entries.map(\.receiptHandle)) }
        if delay > .zero { try? await Task.sleep(for: delay) }
        answered.add(entries.count, ordering: .relaxed)
        if failCall { throw AWSError.client("sqs", "connection refused") }
        if let refuseBatch { throw refuseBatch }
        let passing = flaky.withLock { left in
            Set(
                entries.filter { (left[$0.receiptHandle] ?? 0) > 0 }.map { entry in
                    left[entry.receiptHandle]! -= 1
                    return entry.receiptHandle
                })
        }
        let failed = entries.filter { failHandles.contains($0.receiptHandle) }
        return SQSBatchResult(
            successful: entries.filter {
                !failHandles.contains($0.receiptHandle) && !passing.contains($0.receiptHandle)
            }
            .map(\.id),
            failed: failed.map { .init(id: $0.id, code: "ReceiptHandleIsInvalid", message: "stale", senderFault: true) }
                + entries.filter { passing.contains($0.receiptHandle) }.map {
                    .init(id: $0.id, code: "InternalError", message: "try again", senderFault: false)
                })
    }

    func deleteMessage(queueURL: String, receiptHandle: String, logger: Logger) async throws(AWSError) {
        singleCalls.withLock { $0.append(receiptHandle) }
        if let refuseSingles { throw refuseSingles }
    }
}

/// An AWS refusal as SQS sends it.
func refusal(_ code: String, status: Int = 403) -> AWSError {
    AWSError(
        kind: .service, service: "sqs", httpStatus: status, code: code, message: "not authorized", requestID: "r-1")
}

func message(_ n: Int) -> SQSMessage {
    SQSMessage(messageID: "id-\(n)", receiptHandle: "rh-\(n)", body: "k\(n)", attributes: [:])
}

@Suite(.timeLimit(.minutes(1)))
struct DeleteBatcherTests {
    @Test func fullBatchesGoAtOnceAndTheRestAfterTheLinger() async throws {
        let deleter = RecordingDeleter()
        let clock = ManualClock()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .milliseconds(300), clock: clock)
        await withDeleteBatcher(batcher) {
            for n in 0..<25 { await batcher.delete(message(n), logger: quietLogger) }
            // The 10th and the 20th message each sent their batch before `delete` returned.
            #expect(deleter.batches.map(\.count) == [10, 10])
            #expect(deleter.batches.first == (0..<10).map { "rh-\($0)" })
            await clock.waitForSleepers(1)
            clock.advance(by: .milliseconds(299))
            #expect(deleter.batches.count == 2, "the batch went before its linger was over")
            clock.advance(by: .milliseconds(1))
            await eventually { deleter.batches.count == 3 }
            #expect(deleter.batches.map(\.count) == [10, 10, 5])
        }
        #expect(deleter.batches.count == 3, "the end of the scope sent an empty batch")
    }

    @Test func theEndOfTheScopeSendsWhatIsLeftWithoutWaitingOutTheLinger() async throws {
        let deleter = RecordingDeleter()
        let clock = ManualClock()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600), clock: clock)
        var ended = ContinuousClock.now
        await withDeleteBatcher(batcher) {
            for n in 0..<3 { await batcher.delete(message(n), logger: quietLogger) }
            #expect(deleter.batches.isEmpty)
            ended = ContinuousClock.now
        }
        #expect(deleter.batches == [["rh-0", "rh-1", "rh-2"]])
        #expect(ContinuousClock.now - ended < .seconds(5))
    }

    /// A stop's grace cancels the slots, and the scope may end in a cancelled task: what waits for its batch is
    /// deleted all the same (the sends run uncancelled).
    @Test func deletesGoOutEvenWhenTheTaskIsCancelled() async throws {
        let deleter = RecordingDeleter()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600), clock: ManualClock())
        let work = Task {
            await withDeleteBatcher(batcher) {
                for n in 0..<12 {
                    await batcher.delete(message(n), logger: quietLogger)
                    if n == 5 { withUnsafeCurrentTask { $0?.cancel() } }
                }
            }
        }
        await work.value
        #expect(deleter.batches.map(\.count) == [10, 2])
    }

    @Test func theEndOfTheScopeWaitsForABatchAlreadyOnItsWay() async throws {
        // Slow to answer: the scope must not end before the flusher's call has.
        let deleter = RecordingDeleter(delay: .milliseconds(500))
        let clock = ManualClock()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .milliseconds(50), clock: clock)
        await withDeleteBatcher(batcher) {
            await batcher.delete(message(1), logger: quietLogger)
            await clock.waitForSleepers(1)
            clock.advance(by: .milliseconds(50))
            await eventually { !deleter.batches.isEmpty }  // the flusher is sending
        }
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
        await withDeleteBatcher(failing) { for n in 0..<3 { await failing.delete(message(n), logger: down.logger()) } }
        #expect(down.lines.filter { $0.hasPrefix("error") && $0.contains("connection refused") }.count == 3)
    }

    /// moto builds the IAM action from the API's name, so a policy that allows `sqs:DeleteMessage` (all AWS needs)
    /// refuses `DeleteMessageBatch` there. The entries go again one per call; once that works, every later batch
    /// goes one per call, said once.
    @Test func aRefusedBatchFallsBackToSingleCallsForGood() async {
        let logs = CapturedLogs()
        let deleter = RecordingDeleter(refuseBatch: refusal("AccessDenied"))
        let outcomes = Mutex<[String: Bool]>([:])
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600)) { id, error in
            outcomes.withLock { $0[id] = error == nil }
        }
        await withDeleteBatcher(batcher) { for n in 0..<25 { await batcher.delete(message(n), logger: logs.logger()) } }
        #expect(deleter.batches.count == 1, "batches were tried again after single calls worked")
        #expect(deleter.singles == (0..<25).map { "rh-\($0)" })
        #expect(outcomes.withLock { $0 } == Dictionary(uniqueKeysWithValues: (0..<25).map { ("id-\($0)", true) }))
        #expect(logs.lines.filter { $0.contains("DeleteMessageBatch is refused but DeleteMessage works") }.count == 1)
        #expect(!logs.lines.contains { $0.hasPrefix("error") })
    }

    /// When the single calls are refused too, the batch was not the problem: each message gets its error (and its
    /// outcome, for the dead-end watch), and the next batch is tried as a batch again.
    @Test func whenSingleCallsAreRefusedTooEachMessageGetsTheError() async {
        let logs = CapturedLogs()
        let deleter = RecordingDeleter(refuseBatch: refusal("AccessDenied"), refuseSingles: refusal("AccessDenied"))
        let failures = Mutex<[String: String]>([:])
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600)) { id, error in
            if let error { failures.withLock { $0[id] = error.code } }
        }
        await withDeleteBatcher(batcher) { for n in 0..<12 { await batcher.delete(message(n), logger: logs.logger()) } }
        #expect(deleter.batches.map(\.count) == [10, 2])
        #expect(deleter.singles.count == 12)
        #expect(failures.withLock { $0 }.count == 12)
        #expect(failures.withLock { $0 }.values.allSatisfy { $0 == "AccessDenied" })
        #expect(logs.lines.filter { $0.hasPrefix("error") && $0.contains("AccessDenied") }.count == 12)
        #expect(!logs.lines.contains { $0.contains("one message per call from now on") })
    }

    /// An error that may pass (throttling, a dropped connection) is not a refusal: no single calls.
    @Test func anErrorThatMayPassIsNotARefusal() async {
        let deleter = RecordingDeleter(refuseBatch: refusal("ThrottlingException", status: 400))
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600))
        await withDeleteBatcher(batcher) { for n in 0..<3 { await batcher.delete(message(n), logger: quietLogger) } }
        #expect(deleter.singles.isEmpty)
        let down = RecordingDeleter(failCall: true)
        let failing = DeleteBatcher(client: down, queueURL: "q", linger: .seconds(3600))
        await withDeleteBatcher(failing) { for n in 0..<3 { await failing.delete(message(n), logger: quietLogger) } }
        #expect(down.singles.isEmpty)
    }

    /// An entry that failed with SQS's own fault (an error that may pass) goes again, alone; one that keeps failing
    /// is given up on after the last round, with its error line; a sender's fault is never sent again.
    @Test func entriesThatFailedWithAnErrorThatMayPassGoAgain() async {
        let deleter = RecordingDeleter(failHandles: ["rh-2"], flaky: ["rh-0": 1, "rh-1": 5])
        let outcomes = Mutex<[String: AWSError?]>([:])
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600), clock: ManualClock()) {
            id, error in outcomes.withLock { $0[id] = error }
        }
        await withDeleteBatcher(batcher) {
            for n in 0..<4 { await batcher.delete(message(n), logger: quietLogger) }
        }
        #expect(deleter.batches == [["rh-0", "rh-1", "rh-2", "rh-3"], ["rh-0", "rh-1"], ["rh-1"]])
        let seen = outcomes.withLock { $0 }
        // Deleted: an outcome without an error.
        #expect(seen.keys.sorted() == ["id-0", "id-1", "id-2", "id-3"])
        #expect(seen["id-0"]! == nil && seen["id-3"]! == nil, "\(seen)")
        #expect(seen["id-1"]??.code == "InternalError" && seen["id-2"]??.code == "ReceiptHandleIsInvalid", "\(seen)")
    }

    @Test func aMessageQueuedTwiceIsDeletedOnce() async {
        let deleter = RecordingDeleter()
        let batcher = DeleteBatcher(client: deleter, queueURL: "q", linger: .seconds(3600))
        await withDeleteBatcher(batcher) {
            for n in [1, 2, 1] { await batcher.delete(message(n), logger: quietLogger) }
        }
        #expect(deleter.batches == [["rh-1", "rh-2"]])
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
