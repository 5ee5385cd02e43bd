import AWSServices
import Synchronization
import TestSupport
import Testing
@testable import Worker

@Suite struct ReceiveAheadTests {
    @Test func takesOneUntilItKnowsHowLongMessagesTake() {
        var sizer = ReceiveSizer(plan: VisibilityPlan(visibilityTimeout: 60))
        #expect(sizer.batchSize == 1)
        sizer.record(seconds: 0.05)
        #expect(sizer.batchSize == 10)  // 2 s of 50 ms tasks is 40: capped at SQS's 10
    }

    @Test func holdsAboutTwoSecondsOfWork() {
        var sizer = ReceiveSizer(plan: VisibilityPlan(visibilityTimeout: 60))
        sizer.record(seconds: 0.5)
        #expect(sizer.batchSize == 4)
        sizer = ReceiveSizer(plan: VisibilityPlan(visibilityTimeout: 60))
        sizer.record(seconds: 3)
        #expect(sizer.batchSize == 1)  // longer than the horizon: one at a time, as without receiving ahead
    }

    @Test func aSlowMessageShrinksTheNextReceiveAtOnce() {
        var sizer = ReceiveSizer(plan: VisibilityPlan(visibilityTimeout: 60))
        for _ in 0..<20 { sizer.record(seconds: 0.01) }
        #expect(sizer.batchSize == 10)
        sizer.record(seconds: 30)  // the average jumps to about 9 s
        #expect(sizer.batchSize == 1)
        // ... and recovers over a few fast ones.
        for _ in 0..<20 { sizer.record(seconds: 0.01) }
        #expect(sizer.batchSize == 10)
    }

    @Test func aShortVisibilityTimeoutShortensTheHorizon() {
        #expect(ReceiveSizer(plan: VisibilityPlan(visibilityTimeout: 60)).horizon == 2)
        #expect(ReceiveSizer(plan: VisibilityPlan(visibilityTimeout: 4)).horizon == 1)
        var sizer = ReceiveSizer(plan: VisibilityPlan(visibilityTimeout: 2))
        sizer.record(seconds: 0.1)
        #expect(sizer.batchSize == 5)  // 0.5 s of work, not 2 s
    }

    /// Records what the hold timer releases.
    final class Released: Sendable {
        let ids = Mutex<[String]>([])
        var all: [String] { ids.withLock { $0 } }
        func release(_ late: [SQSMessage]) async { ids.withLock { $0 += late.map(\.messageID) } }
    }

    @Test func heldMessagesAreStartedInOrder() async {
        let released = Released()
        let clock = ManualClock()
        await withHeldMessages(
            [message(1), message(2), message(3)], receivedAt: clock.now,
            plan: VisibilityPlan(visibilityTimeout: 60), clock: clock, release: released.release
        ) { held in
            #expect(held.next()?.messageID == "id-1")
            #expect(held.next()?.messageID == "id-2")
            #expect(held.takeAll().map(\.messageID) == ["id-3"])
            #expect(held.next() == nil)
        }
        #expect(released.all.isEmpty)
    }

    @Test func messagesHeldForHalfTheirTimeoutAreReleased() async throws {
        let released = Released()
        let clock = ManualClock()
        // A 1 s visibility timeout: what is not started after 0.5 s goes back.
        await withHeldMessages(
            [message(1), message(2), message(3)], receivedAt: clock.now,
            plan: VisibilityPlan(visibilityTimeout: 1), clock: clock, release: released.release
        ) { held in
            #expect(held.next()?.messageID == "id-1")  // started: the slot is now busy with it
            await clock.waitForSleepers(1)
            clock.advance(by: .milliseconds(499))
            #expect(released.all.isEmpty, "released before half the timeout")
            clock.advance(by: .milliseconds(1))
            await eventually { !released.all.isEmpty }
            #expect(released.all == ["id-2", "id-3"])
            #expect(held.next() == nil, "a released message must not be started too")
            #expect(held.takeAll().isEmpty)
        }
    }

    /// Messages taken at a stop (to be released by the slot) are not released a second time by the timer.
    @Test func takingTheRestLeavesTheTimerNothing() async throws {
        let released = Released()
        let clock = ManualClock()
        await withHeldMessages(
            [message(1), message(2)], receivedAt: clock.now, plan: VisibilityPlan(visibilityTimeout: 1),
            clock: clock, release: released.release
        ) { held in
            #expect(held.takeAll().count == 2)
            await clock.waitForSleepers(1)
            clock.advance(by: .milliseconds(800))
            // The timer woke (its sleep returned); leaving the scope waits for it to end.
            #expect(clock.sleepers == 0, "the hold timer was not due yet")
        }
        #expect(released.all.isEmpty, "the timer released messages already handed out")
    }
}
