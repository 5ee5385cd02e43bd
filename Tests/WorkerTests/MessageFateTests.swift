import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import TestSupport
import Testing
@testable import Worker

/// Every message fate of the README's "Failure handling" table, one test each, through the real `MessageProcessor`
/// with in-memory doubles of the queue, the store and the command. (The end-to-end suites run the same fates
/// against moto and real processes.)
@Suite(.timeLimit(.minutes(1)))
struct MessageFateTests {
    /// A processor over doubles, in a task folder of its own.
    struct Fixture {
        let queue = MemoryQueue()
        let store = MemoryStore()
        let clock = ManualClock()
        let lifecycle: Lifecycle
        let deadEnds: DeadEnds
        let processor: MessageProcessor<MemoryQueue, MemoryStore, ScriptedRunner>

        init(
            _ directory: String, runner: ScriptedRunner = .copying, maxAttempts: Int = 3, deadLetterQueue: Bool = false
        ) {
            var config = WorkerConfig(
                queueURL: "https://sqs.us-east-1.amazonaws.com/1/q", inputBucket: "in-bucket",
                outputBucket: "out-bucket", analysisProgram: ["/bin/command"])
            config.maxAttempts = maxAttempts
            config.workDir = directory
            _ = mkdir(directory + "/tasks", 0o700)
            let lifecycle = Lifecycle(grace: 0, clock: clock)
            let deadEnds = DeadEnds { _ in lifecycle.requestStop(.deadEnd) }
            self.lifecycle = lifecycle
            self.deadEnds = deadEnds
            processor = MessageProcessor(
                config: config,
                setting: TaskSetting(program: ["/bin/command"], environmentDirectory: nil, environment: [:]),
                queue: queue, store: store, runner: runner, lifecycle: lifecycle, deadEnds: deadEnds,
                plan: VisibilityPlan(visibilityTimeout: 600), clock: clock, instanceID: "i-test",
                hasRedrivePolicy: deadLetterQueue, retryBackoff: 30, ledger: nil)
        }

        func handle(_ message: SQSMessage) async {
            await processor.handle(message, receivedAt: clock.now, slot: 1, logger: quietLogger)
        }

        func record(_ key: String) -> JSONValue? {
            store.text(S3URI(bucket: "out-bucket", key: key)).flatMap { try? JSONValue.parse($0) }
        }
    }

    // MARK: - The table, row by row

    @Test func exitZeroAndAnOutputNamedUploadsItThenDeletesTheMessage() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir)
            f.store.add(S3URI(bucket: "in-bucket", key: "a/x.txt"), "data")
            await f.handle(received("m1", "a/x.txt"))
            #expect(f.store.text(S3URI(bucket: "out-bucket", key: "a/x.txt.out")) == "data")
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
            #expect(f.lifecycle.counts.succeeded == 1)
        }
    }

    @Test func exitZeroAndNothingPrintedDeletesTheMessage() async throws {
        try await withTemporaryDirectory { dir in
            for printed in ["", "\n  \n"] {
                let f = Fixture(
                    dir,
                    runner: ScriptedRunner { command in
                        write(command.stdout, printed)
                        return .exited(0)
                    })
                f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
                await f.handle(received("m1", "x.txt"))
                #expect(f.store.keys(in: "out-bucket").isEmpty)
                #expect(f.queue.fate(of: "m1") == [.deleted("m1")], "\(printed.debugDescription)")
                #expect(f.lifecycle.counts.noOutput == 1)
            }
        }
    }

    /// A name that leads to no usable file (missing, a folder, a link, outside) is the task's failure, never a silent
    /// delete: the message comes back, and after its attempts a record says why.
    @Test func aNameThatLeadsToNoUsableFileIsATaskFailure() async throws {
        try await withTemporaryDirectory { dir in
            for line in ["/etc/passwd", "no-such-file", ".", "link"] {
                let f = Fixture(
                    dir,
                    runner: ScriptedRunner { command in
                        _ = symlink("/etc/hostname", command.directory + "/link")
                        write(command.stdout, line)
                        return .exited(0)
                    }, maxAttempts: 2)
                f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
                await f.handle(received("m1", "x.txt", count: 1))
                #expect(f.queue.fate(of: "m1") == [.visibility("m1", 30)], "'\(line)'")
                await f.handle(received("m2", "x.txt", count: 2))
                #expect(f.queue.fate(of: "m2") == [.deleted("m2")], "'\(line)'")
                let reason = f.record("_failed/x.txt.json")?["reason"]?.stringValue ?? ""
                #expect(reason.contains("names no usable file") && reason.contains(line), "\(reason)")
                #expect(f.store.keys(in: "out-bucket") == ["_failed/x.txt.json"], "'\(line)' was uploaded")
            }
        }
    }

    @Test func aFailureIsRetriedAfterABackoffThatDoublesWithEachReceive() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir, runner: .failing(3), maxAttempts: 5)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            await f.handle(received("m1", "x.txt", count: 1))
            await f.handle(received("m2", "x.txt", count: 3))
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 30)])
            #expect(f.queue.fate(of: "m2") == [.visibility("m2", 120)])
            #expect(f.store.keys(in: "out-bucket").isEmpty, "a failure was recorded before its attempts were used up")
        }
    }

    @Test func aDownloadOrUploadFailureIsRetriedToo() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            f.store.refuse("out-bucket/x.txt.out", with: serviceError("InternalError", status: 500))
            await f.handle(received("m1", "x.txt"))
            f.store.refuse("in-bucket/y.txt", with: serviceError("SlowDown", status: 503))
            await f.handle(received("m2", "y.txt"))
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 30)])
            #expect(f.queue.fate(of: "m2") == [.visibility("m2", 30)])
        }
    }

    @Test func atMaxAttemptsTheFailureIsRecordedThenTheMessageDeleted() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir, runner: .failing(3), maxAttempts: 3)
            f.store.add(S3URI(bucket: "in-bucket", key: "a/x.txt"), "data")
            await f.handle(received("m1", "a/x.txt", count: 3))
            let record = try #require(f.record("_failed/a/x.txt.json"))
            #expect(record["exitStatus"]?.stringValue == "exit 3")
            #expect(record["attempts"]?.intValue == 3)
            #expect(record["stderrTail"]?.stringValue == "something went wrong\n")
            #expect(record["input"]?.stringValue == "s3://in-bucket/a/x.txt")
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
        }
    }

    @Test func atMaxAttemptsWithADeadLetterQueueTheQueueTakesIt() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir, runner: .failing(3), maxAttempts: 3, deadLetterQueue: true)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            await f.handle(received("m1", "x.txt", count: 3))
            #expect(f.record("_failed/x.txt.json") != nil)
            // Visible at once: SQS moves it to the dead-letter queue at its next receive.
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 0)])
        }
    }

    @Test func aBodyThatCanNeverWorkIsRecordedUnderBadMessagesAndDeleted() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir)
            await f.handle(received("m1", #"{"files": ["a.txt"]}"#))
            let record = try #require(f.record("_failed/_bad-messages/m1.json"))
            #expect(record["reason"]?.stringValue?.contains("wrong shape") == true)
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
            #expect(f.lifecycle.counts.badMessages == 1)
        }
    }

    @Test func aMissingInputIsRecordedAtOnceAndDeleted() async throws {
        try await withTemporaryDirectory { dir in
            let runner = ScriptedRunner.copying
            let f = Fixture(dir, runner: runner)
            await f.handle(received("m1", "gone.txt", count: 1))
            #expect(f.record("_failed/gone.txt.json")?["reason"]?.stringValue?.contains("NoSuchKey") == true)
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
            #expect(runner.count == 0)
        }
    }

    @Test func aStopsGraceEndKillsTheCommandAndReleasesTheMessage() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir, runner: .endless)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            let task = Task { await f.handle(received("m1", "x.txt")) }
            try await Task.sleep(for: .milliseconds(50))
            task.cancel()  // what the daemon does to its slots when a stop's grace runs out
            await task.value
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 0)])
            #expect(f.lifecycle.counts.released == 1)
        }
    }

    @Test func aRecordThatCannotBeWrittenKeepsTheMessage() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir, runner: .failing(1), maxAttempts: 1)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            f.store.refuse("out-bucket/_failed/x.txt.json", with: serviceError("AccessDenied", status: 403))
            await f.handle(received("m1", "x.txt"))
            // Neither deleted nor made visible: it comes back after its visibility timeout.
            #expect(f.queue.fate(of: "m1").isEmpty)
        }
    }

    @Test func aMessagePastItsAttemptsIsSettledWithoutRunning() async throws {
        try await withTemporaryDirectory { dir in
            let runner = ScriptedRunner.copying
            let f = Fixture(dir, runner: runner, maxAttempts: 3)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            f.store.add(
                S3URI(bucket: "out-bucket", key: "_failed/x.txt.json"), #"{"reason": "the attempt that gave up"}"#)
            await f.handle(received("m1", "x.txt", count: 4))
            await f.handle(received("m2", "y.txt", count: 4))
            #expect(runner.count == 0)
            #expect(f.record("_failed/x.txt.json")?["reason"]?.stringValue == "the attempt that gave up")
            #expect(f.record("_failed/y.txt.json")?["reason"]?.stringValue?.contains("not run again") == true)
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
            #expect(f.queue.fate(of: "m2") == [.deleted("m2")])
        }
    }

    @Test func eachInputOfAnS3EventHasItsOwnFate() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir)
            f.store.add(S3URI(bucket: "in-bucket", key: "one.txt"), "1")
            f.store.add(S3URI(bucket: "in-bucket", key: "three.txt"), "3")
            let records = ["one.txt", "two.txt", "three.txt"].map {
                #"{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"in-bucket"},"object":{"key":"\#($0)"}}}"#
            }
            await f.handle(received("m1", #"{"Records":["# + records.joined(separator: ",") + "]}"))
            #expect(f.store.keys(in: "out-bucket") == ["_failed/two.txt.json", "one.txt.out", "three.txt.out"])
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
        }
    }

    @Test func aFailureAtADeadEndReleasesTheMessageInsteadOfGivingItUp() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir, maxAttempts: 1)
            f.store.refuse("in-bucket", with: serviceError("AccessDenied", status: 403))
            for n in 1...3 { await f.handle(received("m\(n)", "k\(n).txt")) }
            #expect(f.deadEnds.deadEnd != nil)
            #expect(f.lifecycle.stopReason == .deadEnd)
            // The first two used up their one attempt before the third showed the dead end; the third goes back.
            #expect(f.queue.fate(of: "m3") == [.visibility("m3", 0)])
            #expect(f.record("_failed/k3.txt.json") == nil)
        }
    }

    @Test func anS3TestEventIsDeleted() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir)
            await f.handle(received("m1", #"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"in-bucket"}"#))
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
            #expect(f.store.keys(in: "out-bucket").isEmpty)
        }
    }

    // MARK: - The heartbeat

    @Test func aLongTaskKeepsItsMessageHiddenEveryHalfTimeout() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir, runner: .endless)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            let task = Task { await f.handle(received("m1", "x.txt")) }
            await f.clock.waitForSleepers(1)
            f.clock.advance(by: .seconds(299))
            #expect(f.queue.fate(of: "m1").isEmpty)
            f.clock.advance(by: .seconds(1))
            await eventually { f.queue.fate(of: "m1").count == 1 }
            await f.clock.waitForSleepers(1)
            f.clock.advance(by: .seconds(300))
            await eventually { f.queue.fate(of: "m1").count == 2 }
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 600), .visibility("m1", 600)])
            task.cancel()
            await task.value
        }
    }

    // MARK: - The decision alone

    @Test func theFateFromTheOutcomesAlone() {
        let failure = TaskFailure(input: S3URI(bucket: "in-bucket", key: "k"), reason: "r", outcome: .exited(1))
        let decide = { (outcomes: [AttemptOutcome], count: Int) in
            MessageFate.after(outcomes, receiveCount: count, maxAttempts: 3, deadEnd: false, retryDelay: 30)
        }
        #expect(decide([.uploaded(key: "k.out", bytes: 1), .noOutput], 1) == .delete)
        #expect(decide([.uploaded(key: "k.out", bytes: 1), .interrupted], 1) == .release)
        #expect(decide([.failed(failure)], 2) == .retry(afterSeconds: 30, recordNow: []))
        #expect(
            decide([.failed(failure), .inputMissing(failure)], 2) == .retry(afterSeconds: 30, recordNow: [failure]))
        #expect(decide([.failed(failure)], 3) == .giveUp([failure], worthRedriving: true))
        #expect(decide([.inputMissing(failure)], 1) == .giveUp([failure], worthRedriving: false))
        #expect(
            MessageFate.after([.failed(failure)], receiveCount: 1, maxAttempts: 3, deadEnd: true, retryDelay: 30)
                == .release)
    }
}
