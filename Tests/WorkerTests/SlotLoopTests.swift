import AWSCore
import AWSServices
import Synchronization
import TestSupport
import Testing
@testable import Worker

/// The slot's loop over the in-memory queue: it receives, processes each message to its fate, and stops as the
/// daemon asks (a stop ends a long poll at once; at the grace's end what runs is released, and so is what was held).
@Suite(.timeLimit(.minutes(1)))
struct SlotLoopTests {
    /// A slot over the fixture; its long polls last `waitSeconds` (a stop lets the one under way end).
    func loop(
        _ f: MessageFateTests.Fixture, once: Bool = false, batch: Int? = nil, prefetch: Bool = false,
        waitSeconds: Int = 1
    ) -> SlotLoop<MemoryQueue, MemoryStore, ScriptedRunner> {
        SlotLoop(
            slot: 1, processor: f.processor, once: once, waitSeconds: waitSeconds, fixedBatch: batch,
            receiveOutage: .seconds(600), prefetch: prefetch)
    }

    /// The inputs in the slot's task folders now, by name.
    static func inputsOnDisk(_ dir: String) -> [String] {
        LocalFile.listDirectory(dir + "/tasks").flatMap { task in
            LocalFile.listDirectory(dir + "/tasks/" + task + "/data").filter { $0.hasSuffix(".txt") }
        }.sorted()
    }

    /// In a pipeline, while one command runs the slot receives the next message and downloads its input (it is on
    /// disk before the running command ends), and the commands never overlap; every message is settled. Without
    /// prefetch, the next input is never there while a command runs.
    @Test(arguments: [true, false])
    func theNextInputIsDownloadedWhileTheCommandRuns(prefetch: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let running = AtomicCount()
            let overlapped = OneShotFlag()
            let sawNextInput = AtomicCount()
            let runner = ScriptedRunner { command in
                if running.add(1) > 1 { overlapped.set() }
                defer { running.add(-1) }
                // k<n>.txt: wait a while for k<n+1>.txt, the next input, to appear beside this one.
                let me = Int(command.argv.last!.split(separator: "/").last!.dropFirst().dropLast(4))!
                let deadline = ContinuousClock.now + .seconds(prefetch ? 3 : 1)
                while ContinuousClock.now < deadline {
                    if Self.inputsOnDisk(dir).contains("k\(me + 1).txt") {
                        sawNextInput.add(1)
                        break
                    }
                    try? await Task.sleep(for: .milliseconds(5))
                }
                return await ScriptedRunner.copying.script(command)
            }
            let f = MessageFateTests.Fixture(dir, runner: runner)
            for n in 1...4 { f.store.add(S3URI(bucket: "in-bucket", key: "k\(n).txt"), "\(n)") }
            f.queue.add((1...4).map { received("m\($0)", "k\($0).txt") })
            let slot = Task { await loop(f, prefetch: prefetch).run(logger: quietLogger) }
            await eventually { f.queue.events.filter { if case .deleted = $0 { true } else { false } }.count == 4 }
            f.lifecycle.requestStop(.signal)
            await slot.value
            #expect(f.store.keys(in: "out-bucket") == (1...4).map { "k\($0).txt.out" })
            #expect(!overlapped.isSet, "two commands of one slot ran at once")
            // The first task runs alone (the slot takes messages ahead only once it knows its tasks are short);
            // then each command but the last saw the next input arrive.
            #expect(sawNextInput.value == (prefetch ? 2 : 0))
            #expect(Self.inputsOnDisk(dir).isEmpty)
        }
    }

    /// A message of several inputs (an S3 event) keeps the slot's commands from its first to its last: the message
    /// taken ahead of it runs after both, never between them.
    @Test func aMessageOfSeveralInputsKeepsTheSlotBetweenItsCommands() async throws {
        try await withTemporaryDirectory { dir in
            let order = Mutex<[String]>([])
            let runner = ScriptedRunner { command in
                let me = String(command.argv.last!.split(separator: "/").last!)
                order.withLock { $0.append(me) }
                // Long enough for the message ahead to be downloaded and waiting.
                if me != "warm.txt" { try? await Task.sleep(for: .milliseconds(100)) }
                return await ScriptedRunner.copying.script(command)
            }
            let f = MessageFateTests.Fixture(dir, runner: runner)
            for key in ["warm.txt", "a1.txt", "a2.txt", "b.txt"] {
                f.store.add(S3URI(bucket: "in-bucket", key: key), key)
            }
            let records = ["a1.txt", "a2.txt"].map {
                #"{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"in-bucket"},"object":{"key":"\#($0)"}}}"#
            }
            f.queue.add([
                received("m0", "warm.txt"), received("mA", #"{"Records":["# + records.joined(separator: ",") + "]}"),
                received("mB", "b.txt"),
            ])
            let slot = Task { await loop(f, prefetch: true).run(logger: quietLogger) }
            await eventually { f.queue.events.filter { if case .deleted = $0 { true } else { false } }.count == 3 }
            f.lifecycle.requestStop(.signal)
            await slot.value
            #expect(order.withLock { $0 } == ["warm.txt", "a1.txt", "a2.txt", "b.txt"])
            #expect(f.store.keys(in: "out-bucket") == ["a1.txt.out", "a2.txt.out", "b.txt.out", "warm.txt.out"])
        }
    }

    /// A stop during the first command of a message of several inputs: its commands have begun, so it finishes
    /// them within the grace (the message is deleted, not released to be done again elsewhere), as without a
    /// pipeline.
    @Test func aStopLetsAMessageThatBeganItsCommandsFinishThem() async throws {
        try await withTemporaryDirectory { dir in
            let inFirst = OneShotFlag()
            let order = Mutex<[String]>([])
            let runner = ScriptedRunner { command in
                let me = String(command.argv.last!.split(separator: "/").last!)
                order.withLock { $0.append(me) }
                if me == "a1.txt" {
                    inFirst.set()
                    try? await Task.sleep(for: .milliseconds(200))
                }
                return await ScriptedRunner.copying.script(command)
            }
            let f = MessageFateTests.Fixture(dir, runner: runner)
            for key in ["warm.txt", "a1.txt", "a2.txt"] { f.store.add(S3URI(bucket: "in-bucket", key: key), key) }
            let records = ["a1.txt", "a2.txt"].map {
                #"{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"in-bucket"},"object":{"key":"\#($0)"}}}"#
            }
            f.queue.add([
                received("m0", "warm.txt"), received("mA", #"{"Records":["# + records.joined(separator: ",") + "]}"),
            ])
            let slot = Task { await loop(f, prefetch: true).run(logger: quietLogger) }
            await eventually { inFirst.isSet }
            f.lifecycle.requestStop(.signal)
            await slot.value
            #expect(order.withLock { $0 } == ["warm.txt", "a1.txt", "a2.txt"])
            #expect(f.queue.fate(of: "mA") == [.deleted("mA")])
        }
    }

    /// A stop while a command runs and the next message's input waits for it: the running task finishes and its
    /// message is deleted; the message ahead is released at once, without its command, and its input is removed.
    @Test func aStopReleasesTheMessageAheadAndRemovesItsInput() async throws {
        try await withTemporaryDirectory { dir in
            let stopped = OneShotFlag()
            let runner = ScriptedRunner { command in
                let me = command.argv.last!.split(separator: "/").last!
                if me == "k2.txt" {
                    // The next message's input is on disk: stop the daemon, then finish this command.
                    while !Self.inputsOnDisk(dir).contains("k3.txt") { try? await Task.sleep(for: .milliseconds(5)) }
                    stopped.set()
                    try? await Task.sleep(for: .milliseconds(100))
                }
                return await ScriptedRunner.copying.script(command)
            }
            let f = MessageFateTests.Fixture(dir, runner: runner)
            for n in 1...3 { f.store.add(S3URI(bucket: "in-bucket", key: "k\(n).txt"), "\(n)") }
            f.queue.add((1...3).map { received("m\($0)", "k\($0).txt") })
            let slot = Task { await loop(f, prefetch: true).run(logger: quietLogger) }
            await eventually { stopped.isSet }
            f.lifecycle.requestStop(.signal)
            await slot.value
            #expect(f.queue.fate(of: "m2") == [.deleted("m2")])
            #expect(f.queue.fate(of: "m3") == [.visibility("m3", 0)])
            // The release is noted: that receive spends none of m3's attempts.
            #expect(f.store.keys(in: "out-bucket") == ["_parallelizer/releases/m3/1", "k1.txt.out", "k2.txt.out"])
            #expect(Self.inputsOnDisk(dir).isEmpty)
            #expect(LocalFile.listDirectory(dir + "/tasks").isEmpty)
        }
    }

    @Test func aSlotSettlesEveryMessageThenAStopEndsItAfterItsLongPoll() async throws {
        try await withTemporaryDirectory { dir in
            let f = MessageFateTests.Fixture(dir)
            for n in 1...5 { f.store.add(S3URI(bucket: "in-bucket", key: "k\(n).txt"), "\(n)") }
            f.queue.add((1...5).map { received("m\($0)", "k\($0).txt") })
            let slot = Task { await loop(f).run(logger: quietLogger) }
            await eventually { f.queue.events.filter { if case .deleted = $0 { true } else { false } }.count == 5 }
            f.lifecycle.requestStop(.signal)
            await slot.value
            #expect(f.store.keys(in: "out-bucket") == (1...5).map { "k\($0).txt.out" })
        }
    }

    /// A stop lets the receive under way end, and what it brings goes back at once, noted as given back unrun: cut
    /// off, a reply SQS had already sent would be lost in flight, and that receive would count as a run (CI saw a
    /// message given up unrun so, at maxAttempts 1).
    @Test func aStopLetsTheReceiveUnderWayEndAndGivesBackWhatItBrings() async throws {
        try await withTemporaryDirectory { dir in
            let f = MessageFateTests.Fixture(dir)
            f.store.add(S3URI(bucket: "in-bucket", key: "k1.txt"), "1")
            let slot = Task { await loop(f, waitSeconds: 20).run(logger: quietLogger) }
            await eventually { f.queue.receives >= 1 }
            f.lifecycle.requestStop(.signal)
            // The reply arrives after the stop.
            f.queue.add([received("m1", "k1.txt")])
            await slot.value
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 0)], "\(f.queue.events)")
            #expect(f.store.keys(in: "out-bucket") == ["_parallelizer/releases/m1/1"])
        }
    }

    @Test func onceTakesOneMessageAndStops() async throws {
        try await withTemporaryDirectory { dir in
            let f = MessageFateTests.Fixture(dir)
            for n in 1...3 { f.store.add(S3URI(bucket: "in-bucket", key: "k\(n).txt"), "\(n)") }
            f.queue.add((1...3).map { received("m\($0)", "k\($0).txt") })
            await loop(f, once: true).run(logger: quietLogger)
            #expect(f.queue.events == [.received("m1"), .deleted("m1")])
            #expect(f.lifecycle.stopReason == .once)
        }
    }

    /// Without a pipeline too, a stop lets the running command finish, and its message is settled as done. The
    /// command ends only once the stop was asked for: had the stop cut it short, it would have seen the cancel.
    @Test func aStopLetsTheRunningCommandFinishWithoutAPipeline() async throws {
        try await withTemporaryDirectory { dir in
            let running = OneShotFlag()
            let go = OneShotFlag()
            let cancelled = OneShotFlag()
            let runner = ScriptedRunner { command in
                running.set()
                while !go.isSet && !Task.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
                if Task.isCancelled {
                    cancelled.set()
                    return .interrupted
                }
                return await ScriptedRunner.copying.script(command)
            }
            let f = MessageFateTests.Fixture(dir, runner: runner)
            f.store.add(S3URI(bucket: "in-bucket", key: "k1.txt"), "1")
            f.queue.add([received("m1", "k1.txt")])
            let slot = Task { await loop(f).run(logger: quietLogger) }
            await eventually { running.isSet }
            f.lifecycle.requestStop(.signal)
            go.set()
            await slot.value
            #expect(!cancelled.isSet, "the stop cut the running command short")
            #expect(f.queue.fate(of: "m1") == [.deleted("m1")])
        }
    }

    /// At a stop, running tasks go on; when the grace runs out, the daemon cancels the slot: the running task's
    /// message is released, and so are the messages held behind it, which never started.
    @Test func theGracesEndReleasesTheRunningMessageAndThoseHeldBehindIt() async throws {
        try await withTemporaryDirectory { dir in
            let f = MessageFateTests.Fixture(dir, runner: .endless)
            for n in 1...3 { f.store.add(S3URI(bucket: "in-bucket", key: "k\(n).txt"), "\(n)") }
            f.queue.add((1...3).map { received("m\($0)", "k\($0).txt") })
            let slot = Task { await loop(f, batch: 3).run(logger: quietLogger) }
            await f.clock.waitForSleepers(2)  // the hold timer and the running task's heartbeat
            f.lifecycle.requestStop(.signal)
            // (That a stop alone lets a running command finish is aStopLetsAMessageThatBeganItsCommandsFinishThem's.)
            slot.cancel()
            await slot.value
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 0)])
            #expect(f.queue.fate(of: "m2") == [.visibility("m2", 0)])
            #expect(f.queue.fate(of: "m3") == [.visibility("m3", 0)])
        }
    }
}

/// A flag one task sets and another polls.
final class OneShotFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}

/// A count several tasks change.
final class AtomicCount: Sendable {
    private let count = Atomic<Int>(0)
    /// Adds `n`; returns the new count.
    @discardableResult func add(_ n: Int) -> Int { count.add(n, ordering: .relaxed).newValue }
    var value: Int { count.load(ordering: .relaxed) }
}
