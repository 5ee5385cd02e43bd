import AWSServices
import TestSupport
import Testing
@testable import Worker

/// The slot's loop over the in-memory queue: it receives, processes each message to its fate, and stops as the
/// daemon asks (a stop ends a long poll at once; at the grace's end what runs is released, and so is what was held).
@Suite(.timeLimit(.minutes(1)))
struct SlotLoopTests {
    func loop(_ f: MessageFateTests.Fixture, once: Bool = false, batch: Int? = nil) -> SlotLoop<
        MemoryQueue, MemoryStore, ScriptedRunner
    > {
        SlotLoop(
            slot: 1, processor: f.processor, once: once, waitSeconds: 20, fixedBatch: batch,
            receiveOutage: .seconds(600))
    }

    @Test func aSlotSettlesEveryMessageThenAStopEndsItsLongPoll() async throws {
        try await withTemporaryDirectory { dir in
            let f = MessageFateTests.Fixture(dir)
            for n in 1...5 { f.store.add(S3URI(bucket: "in-bucket", key: "k\(n).txt"), "\(n)") }
            f.queue.add((1...5).map { received("m\($0)", "k\($0).txt") })
            let slot = Task { await loop(f).run(logger: quietLogger) }
            await eventually { f.queue.events.filter { if case .deleted = $0 { true } else { false } }.count == 5 }
            // Nothing is left: the slot waits in a 20 s long poll, which a stop ends at once.
            let stopped = ContinuousClock.now
            f.lifecycle.requestStop(.signal)
            await slot.value
            #expect(ContinuousClock.now - stopped < .seconds(5))
            #expect(f.store.keys(in: "out-bucket") == (1...5).map { "k\($0).txt.out" })
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
            try await Task.sleep(for: .milliseconds(50))
            #expect(f.queue.fate(of: "m1").isEmpty, "a running task was cut short before its grace ran out")
            slot.cancel()
            await slot.value
            #expect(f.queue.fate(of: "m1") == [.visibility("m1", 0)])
            #expect(f.queue.fate(of: "m2") == [.visibility("m2", 0)])
            #expect(f.queue.fate(of: "m3") == [.visibility("m3", 0)])
        }
    }
}
