import AWSServices
import Synchronization
import Testing
@testable import Worker

@Suite struct ReceiveAheadTests {
    @Test func takesOneUntilItKnowsHowLongMessagesTake() {
        var sizer = ReceiveSizer(visibilityTimeout: 60)
        #expect(sizer.batchSize == 1)
        sizer.record(seconds: 0.05)
        #expect(sizer.batchSize == 10)  // 2 s of 50 ms tasks is 40: capped at SQS's 10
    }

    @Test func holdsAboutTwoSecondsOfWork() {
        var sizer = ReceiveSizer(visibilityTimeout: 60)
        sizer.record(seconds: 0.5)
        #expect(sizer.batchSize == 4)
        sizer = ReceiveSizer(visibilityTimeout: 60)
        sizer.record(seconds: 3)
        #expect(sizer.batchSize == 1)  // longer than the horizon: one at a time, as without receiving ahead
    }

    @Test func aSlowMessageShrinksTheNextReceiveAtOnce() {
        var sizer = ReceiveSizer(visibilityTimeout: 60)
        for _ in 0..<20 { sizer.record(seconds: 0.01) }
        #expect(sizer.batchSize == 10)
        sizer.record(seconds: 30)  // the average jumps to about 9 s
        #expect(sizer.batchSize == 1)
        // ... and recovers over a few fast ones.
        for _ in 0..<20 { sizer.record(seconds: 0.01) }
        #expect(sizer.batchSize == 10)
    }

    @Test func aShortVisibilityTimeoutShortensTheHorizon() {
        #expect(ReceiveSizer(visibilityTimeout: 60).horizon == 2)
        #expect(ReceiveSizer(visibilityTimeout: 4).horizon == 1)
        var sizer = ReceiveSizer(visibilityTimeout: 2)
        sizer.record(seconds: 0.1)
        #expect(sizer.batchSize == 5)  // 0.5 s of work, not 2 s
    }

    @Test func heldMessagesAreStartedInOrder() {
        let released = Mutex<[String]>([])
        let held = HeldMessages([message(1), message(2), message(3)], receivedAt: .now, visibilityTimeout: 60) { late in
            released.withLock { $0 += late.map(\.messageID) }
        }
        #expect(held.next()?.messageID == "id-1")
        #expect(held.next()?.messageID == "id-2")
        #expect(held.takeAll().map(\.messageID) == ["id-3"])
        #expect(held.next() == nil)
        #expect(released.withLock { $0 }.isEmpty)
    }

    @Test func messagesHeldForHalfTheirTimeoutAreReleased() async throws {
        let released = Mutex<[String]>([])
        // A 1 s visibility timeout: what is not started after 0.5 s goes back.
        let held = HeldMessages([message(1), message(2), message(3)], receivedAt: .now, visibilityTimeout: 1) { late in
            released.withLock { $0 += late.map(\.messageID) }
        }
        #expect(held.next()?.messageID == "id-1")  // started: the slot is now busy with it
        for _ in 0..<100 where released.withLock({ $0.isEmpty }) { try await Task.sleep(for: .milliseconds(20)) }
        #expect(released.withLock { $0 } == ["id-2", "id-3"])
        #expect(held.next() == nil, "a released message must not be started too")
        #expect(held.takeAll().isEmpty)
    }

    @Test func takingTheRestStopsTheTimer() async throws {
        let released = Mutex<[String]>([])
        let held = HeldMessages([message(1), message(2)], receivedAt: .now, visibilityTimeout: 1) { late in
            released.withLock { $0 += late.map(\.messageID) }
        }
        #expect(held.takeAll().count == 2)
        try await Task.sleep(for: .milliseconds(800))
        #expect(released.withLock { $0 }.isEmpty, "the timer released messages already handed out")
    }
}
