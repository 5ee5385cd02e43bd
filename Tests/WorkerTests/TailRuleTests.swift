import AWSServices
import TaskLedger
import Testing
import TestSupport
@testable import Worker

/// The tail rule's decision and the wait after a release, without a server.
struct TailRuleTests {
    func counts(_ visible: Int, _ inFlight: Int, _ delayed: Int = 0) -> SQSClient.MessageCounts {
        SQSClient.MessageCounts(visible: visible, inFlight: inFlight, delayed: delayed)
    }

    @Test func anIdleWorkerLeavesOnlyWhatBusyWorkersAndTheKeeperWillTakeBack() {
        let view = Ledger.FleetView(busy: 2, idle: ["i-a"])
        // In flight no more than the busy ones, and another idle worker (lower id) keeps the tail: leave.
        #expect(TailRule.mayLeave(counts: counts(0, 2), others: view, me: "i-b"))
        // The keeper itself stays: the lowest idle id.
        #expect(!TailRule.mayLeave(counts: counts(0, 2), others: view, me: "i-0"))
        #expect(TailRule.keeper(me: "i-0", others: view) == "i-0")
        // More in flight than busy workers: a message no one holds (its worker died, or released): stay.
        #expect(!TailRule.mayLeave(counts: counts(0, 3), others: view, me: "i-b"))
        // Something visible or delayed is work to take: stay.
        #expect(!TailRule.mayLeave(counts: counts(1, 1), others: view, me: "i-b"))
        #expect(!TailRule.mayLeave(counts: counts(0, 1, 1), others: view, me: "i-b"))
        // The only idle worker is the keeper: it stays, however many are busy.
        #expect(!TailRule.mayLeave(counts: counts(0, 1), others: .init(busy: 5, idle: []), me: "i-z"))
        // An empty queue is the ordinary drain, not the tail.
        #expect(!TailRule.mayLeave(counts: counts(0, 0), others: view, me: "i-b"))
    }

    /// A worker that released a message for a retry waits for it: the delay and a poll's worth after it.
    @Test func aReleasedMessageHoldsItsReleaserBack() {
        let clock = ManualClock()
        let lifecycle = Lifecycle(grace: 0, clock: clock)
        #expect(!lifecycle.awaitsReleasedWork)
        lifecycle.releasedForRetry(seconds: 10)
        #expect(lifecycle.awaitsReleasedWork)
        clock.advance(by: .seconds(39))
        #expect(lifecycle.awaitsReleasedWork)
        clock.advance(by: .seconds(2))
        #expect(!lifecycle.awaitsReleasedWork)
        // A shorter release after a longer one does not shorten the wait.
        lifecycle.releasedForRetry(seconds: 100)
        lifecycle.releasedForRetry(seconds: 0)
        clock.advance(by: .seconds(60))
        #expect(lifecycle.awaitsReleasedWork)
    }
}
