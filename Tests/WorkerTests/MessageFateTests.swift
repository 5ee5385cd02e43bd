import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import TestSupport
import Synchronization
import Testing
@testable import Worker

/// Every message fate of the "Failure handling" table (docs/failures.md), one test each, through the real
/// `MessageProcessor` with in-memory doubles of the queue, the store and the command. (The end-to-end suites run the
/// same fates against moto and real processes.)
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
            _ directory: String, runner: ScriptedRunner = .copying, maxAttempts: Int = 3, deadLetterQueue: Bool = false,
            machineTrouble: @escaping @Sendable (String, Int) -> Void = { _, _ in }
        ) {
            var config = WorkerConfig(
                queueURL: "https://sqs.us-east-1.amazonaws.com/1/q", inputBucket: "in-bucket",
                outputBucket: "out-bucket", analysisProgram: ["/bin/command"])
            config.maxAttempts = maxAttempts
            config.workDir = directory
            _ = mkdir(directory, 0o700)
            _ = mkdir(directory + "/tasks", 0o700)
            let lifecycle = Lifecycle(grace: 0, clock: clock)
            let deadEnds = DeadEnds(
                reached: { _ in lifecycle.requestStop(.deadEnd) }, machineTrouble: machineTrouble)
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
            // A throttle is a wait: back after the same backoff, but noted, so it spends no attempt.
            #expect(f.queue.fate(of: "m2") == [.visibility("m2", 30)])
            #expect(f.store.keys(in: "out-bucket") == ["_parallelizer/releases/m2/1"])
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
            let running = Atomic<Bool>(false)
            let f = Fixture(
                dir,
                runner: ScriptedRunner { _ in
                    running.store(true, ordering: .relaxed)
                    while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
                    return .interrupted
                })
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            let task = Task { await f.handle(received("m1", "x.txt")) }
            await eventually { running.load(ordering: .relaxed) }
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

    /// Receives the daemon gave back unrun (noted under `_parallelizer/releases/`) are no attempts: a message
    /// received four times with maxAttempts 3, two of them releases, has run once, and runs again; one whose
    /// receives were all runs is settled unrun.
    @Test func releasesTheDaemonChoseSpendNoAttempts() async throws {
        try await withTemporaryDirectory { dir in
            let runner = ScriptedRunner.copying
            let f = Fixture(dir, runner: runner, maxAttempts: 3)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            for count in [1, 2] {
                f.store.add(S3URI(bucket: "out-bucket", key: "_parallelizer/releases/m1/\(count)"), "")
            }
            // A note of another message, and one of this message's own receive, count for nothing here.
            f.store.add(S3URI(bucket: "out-bucket", key: "_parallelizer/releases/m10/1"), "")
            f.store.add(S3URI(bucket: "out-bucket", key: "_parallelizer/releases/m1/4"), "")
            await f.handle(received("m1", "x.txt", count: 4))
            #expect(runner.count == 1)
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
            // Its failure at its third run is its last: given up, not retried.
            let failing = ScriptedRunner { _ in .exited(3) }
            let g = Fixture(dir + "/g", runner: failing, maxAttempts: 3)
            g.store.add(S3URI(bucket: "in-bucket", key: "y.txt"), "data")
            g.store.add(S3URI(bucket: "out-bucket", key: "_parallelizer/releases/m2/1"), "")
            await g.handle(received("m2", "y.txt", count: 3))
            #expect(g.queue.fate(of: "m2") == [.visibility("m2", 120)], "ran twice in three receives: retried")
            await g.handle(received("m2", "y.txt", count: 4))
            #expect(g.queue.fate(of: "m2").last == .deleted("m2"), "its third run failed: given up")
            #expect(g.record("_failed/y.txt.json") != nil)
        }
    }

    /// A release the daemon chooses (a stop, the hold timer) leaves its note before the message goes back.
    @Test func aReleaseIsNotedBeforeTheMessageGoesBack() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir)
            await f.processor.release([received("m7", "x.txt", count: 2)], reason: "test", logger: quietLogger)
            #expect(f.store.keys(in: "out-bucket") == ["_parallelizer/releases/m7/2"])
            #expect(f.queue.fate(of: "m7") == [.visibility("m7", 0)])
        }
    }

    // MARK: - Output identity

    /// An output is written create-only with its input and message in its metadata; a key another input's output
    /// holds is never overwritten (the failure names both), this message's own earlier upload settles the task as
    /// done, and an earlier run of the same input from another message is replaced.
    @Test func anOutputKeyIsNeverTakenFromAnotherInput() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir, runner: .naming("result-1.csv"), maxAttempts: 1)
            for key in ["a/x.txt", "a/y.txt"] { f.store.add(S3URI(bucket: "in-bucket", key: key), key) }
            await f.handle(received("m1", "a/x.txt"))
            let output = S3URI(bucket: "out-bucket", key: "a/result-1.csv")
            #expect(f.store.metadata(output)?["parallelizer-input"] == "s3%3A//in-bucket/a/x.txt")
            #expect(f.store.metadata(output)?["parallelizer-message"] == "m1")
            await f.handle(received("m2", "a/y.txt"))
            #expect(f.store.text(output)?.hasSuffix("x.txt") == true, "another input's output was overwritten")
            #expect(f.queue.fate(of: "m2") == [.deleted("m2")])
            let reason = f.record("_failed/a/y.txt.json")?["reason"]?.stringValue ?? ""
            #expect(
                reason.contains("s3://out-bucket/a/result-1.csv holds the output of s3://in-bucket/a/x.txt"),
                "\(reason)")
            // m1 comes back (its delete was lost): its own output is there, so it is done.
            await f.handle(received("m1", "a/x.txt", count: 2))
            #expect(f.queue.fate(of: "m1") == [.deleted("m1"), .deleted("m1")])
            // The same input queued again (another message) replaces its old output.
            f.store.add(S3URI(bucket: "in-bucket", key: "a/x.txt"), "a/x.txt, new")
            await f.handle(received("m3", "a/x.txt"))
            #expect(f.queue.fate(of: "m3") == [.deleted("m3")])
            #expect(f.store.metadata(output)?["parallelizer-message"] == "m3")
            // An object parallelizer did not write is left alone too.
            f.store.add(S3URI(bucket: "out-bucket", key: "b/result-1.csv"), "the operator's own")
            f.store.add(S3URI(bucket: "in-bucket", key: "b/z.txt"), "z")
            await f.handle(received("m4", "b/z.txt"))
            #expect(f.store.text(S3URI(bucket: "out-bucket", key: "b/result-1.csv")) == "the operator's own")
            #expect(f.record("_failed/b/z.txt.json")?["reason"]?.stringValue?.contains("did not write") == true)
            // ...unless the operator says such objects are outputs of an earlier version (adoptUnmarkedOutputs).
            var adopting = f.processor
            adopting.config.adoptUnmarkedOutputs = true
            f.store.add(S3URI(bucket: "out-bucket", key: "c/result-1.csv"), "from the old version")
            f.store.add(S3URI(bucket: "in-bucket", key: "c/w.txt"), "w")
            await adopting.handle(received("m5", "c/w.txt"), receivedAt: f.clock.now, slot: 1, logger: quietLogger)
            #expect(f.store.text(S3URI(bucket: "out-bucket", key: "c/result-1.csv"))?.hasSuffix("/w.txt") == true)
        }
    }

    /// A taken key cannot clear by itself: the task is recorded at once, not retried (its command would run again
    /// only to throw its result away).
    @Test func aTakenOutputKeyIsRecordedAtOnce() async throws {
        try await withTemporaryDirectory { dir in
            let runner = ScriptedRunner.naming("same.csv")
            let f = Fixture(dir, runner: runner, maxAttempts: 3)
            for key in ["x.txt", "y.txt"] { f.store.add(S3URI(bucket: "in-bucket", key: key), key) }
            await f.handle(received("m1", "x.txt"))
            await f.handle(received("m2", "y.txt"))
            #expect(f.queue.fate(of: "m2") == [.deleted("m2")], "retried")
            #expect(runner.count == 2)
            #expect(f.record("_failed/y.txt.json")?["reason"]?.stringValue?.contains("holds the output of") == true)
        }
    }

    /// An input whose encoded name would pass S3's 2 KB of metadata is kept by its SHA-256, and still told apart.
    @Test func aLongInputNameIsKeptByItsHash() {
        let long = S3URI(bucket: "b", key: String(repeating: "é", count: 400))
        let identity = OutputIdentity(input: long, messageID: "m")
        #expect(identity.inputValue.hasPrefix("sha256:") && identity.metadata.map(\.1.utf8.count).reduce(0, +) < 2048)
        let other = OutputIdentity(input: S3URI(bucket: "b", key: String(repeating: "é", count: 401)), messageID: "m")
        let head = S3ObjectHead(etag: "e", size: 1, metadata: Dictionary(uniqueKeysWithValues: identity.metadata))
        #expect(OutputClash.judge(head, mine: identity) == .landedBefore)
        #expect(
            OutputClash.judge(head, mine: other)
                == .taken(by: "the output of an input whose name hashes to \(identity.inputValue)"))
    }

    /// When the notes cannot be read now (a throttle), no verdict rests on a guess: the message comes back later,
    /// unrun, neither run nor settled as used up.
    @Test func notesThatCannotBeReadNowGiveNoVerdict() async throws {
        try await withTemporaryDirectory { dir in
            let runner = ScriptedRunner.copying
            let f = Fixture(dir, runner: runner, maxAttempts: 3)
            f.store.add(S3URI(bucket: "in-bucket", key: "x.txt"), "data")
            f.store.refuse("out-bucket", with: serviceError("SlowDown", status: 503))
            await f.handle(received("m1", "x.txt", count: 5))
            #expect(runner.count == 0)
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 480)])
            #expect(f.record("_failed/x.txt.json") == nil)
        }
    }

    /// A message given back unrun on the last receive its dead-letter queue allows is recorded first: SQS moves it
    /// there at its next receive, before it could run.
    @Test func aReleaseOnTheLastReceiveBeforeTheDeadLetterQueueIsRecorded() async throws {
        try await withTemporaryDirectory { dir in
            let f = Fixture(dir)
            var processor = f.processor
            processor.maxReceiveCount = 4
            await processor.release([received("m1", "x.txt", count: 3)], reason: "test", logger: quietLogger)
            #expect(f.record("_failed/_unrun/m1.json") == nil)
            await processor.release([received("m2", "x.txt", count: 4)], reason: "test", logger: quietLogger)
            #expect(f.record("_failed/_unrun/m2.json")?["reason"]?.stringValue?.contains("maxReceiveCount 4") == true)
        }
    }

    /// Each task gets an id of its own in `PARALLELIZER_TASK_ID`, for naming outputs.
    @Test func eachTaskHasAnIdOfItsOwn() async throws {
        try await withTemporaryDirectory { dir in
            let ids = Mutex<[String]>([])
            let runner = ScriptedRunner { command in
                ids.withLock { $0.append(command.environment["PARALLELIZER_TASK_ID"] ?? "") }
                return .exited(0)
            }
            let f = Fixture(dir, runner: runner)
            for n in 0..<3 { f.store.add(S3URI(bucket: "in-bucket", key: "\(n).txt"), "x") }
            for n in 0..<3 { await f.handle(received("m\(n)", "\(n).txt")) }
            let seen = ids.withLock { $0 }
            #expect(seen.count == 3 && Set(seen).count == 3 && seen.allSatisfy { $0.hasPrefix("i-test-") }, "\(seen)")
        }
    }

    // MARK: - This machine's trouble

    /// A full disk is the machine's trouble, not the task's: the message goes back at once, noted (no attempt), and
    /// three tasks in a row that meet it tell the daemon to leave.
    @Test func aFullDiskReleasesMessagesAndThreeInARowMakeTheWorkerLeave() async throws {
        try await withTemporaryDirectory { dir in
            let left = Mutex<[String]>([])
            let f = Fixture(
                dir, machineTrouble: { reason, count in left.withLock { $0.append("\(count): \(reason)") } })
            var full = AWSError(
                kind: .transport(.localFile), service: "s3", code: "LocalFileError",
                message: "write failed: No space left on device")
            full.systemErrno = ENOSPC
            for n in 0..<4 { f.store.refuse("in-bucket/\(n).txt", with: full) }
            for n in 0..<2 { await f.handle(received("m\(n)", "\(n).txt")) }
            #expect(f.queue.fate(of: "m0") == [.visibility("m0", 0)])
            #expect(f.store.keys(in: "out-bucket") == ["_parallelizer/releases/m0/1", "_parallelizer/releases/m1/1"])
            #expect(left.withLock { $0 }.isEmpty)
            await f.handle(received("m2", "2.txt"))
            #expect(left.withLock { $0 } == ["3: write failed: No space left on device"])
            #expect(f.lifecycle.counts.givenUp == 0 && f.lifecycle.counts.failed == 0)
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
            MessageFate.after(outcomes, runs: count, maxAttempts: 3, deadEnd: false, retryDelay: 30)
        }
        #expect(decide([.uploaded(key: "k.out", bytes: 1), .noOutput], 1) == .delete)
        #expect(decide([.uploaded(key: "k.out", bytes: 1), .interrupted], 1) == .release)
        #expect(decide([.failed(failure)], 2) == .retry(afterSeconds: 30, recordNow: []))
        #expect(
            decide([.failed(failure), .inputMissing(failure)], 2) == .retry(afterSeconds: 30, recordNow: [failure]))
        #expect(decide([.failed(failure)], 3) == .giveUp([failure], worthRedriving: true))
        #expect(decide([.inputMissing(failure)], 1) == .giveUp([failure], worthRedriving: false))
        #expect(
            MessageFate.after([.failed(failure)], runs: 1, maxAttempts: 3, deadEnd: true, retryDelay: 30)
                == .release)
    }
}
