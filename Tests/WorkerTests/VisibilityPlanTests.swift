import AWSServices
import FoundationEssentials
import Logging
import Synchronization
import Testing
import TestSupport
@testable import Worker

/// The intervals the daemon derives from the visibility timeout, and how they must relate for every timeout SQS
/// allows (1 s to 12 h).
struct VisibilityPlanTests {
    static let timeouts = Array(1...600) + [900, 1200, 3600, 7200, 43199, 43200]

    @Test func theDerivedIntervals() {
        let plan = VisibilityPlan(visibilityTimeout: 600)
        #expect(plan.heartbeatInterval == .seconds(300))
        #expect(plan.holdLimit == .seconds(300))
        #expect(plan.receiveHorizon == 2)
        #expect(plan.deleteLinger == .seconds(1))
        #expect(plan.retryDelay(receiveCount: 1, base: 30) == 30)
        #expect(plan.retryDelay(receiveCount: 3, base: 30) == 120)
        #expect(plan.retryDelay(receiveCount: 9, base: 30) == 600)  // capped at one timeout
        #expect(VisibilityPlan(visibilityTimeout: 4).receiveHorizon == 1)
        #expect(VisibilityPlan(visibilityTimeout: 1).heartbeatInterval == .seconds(1))
    }

    @Test func shortVisibilityTimeoutsGetNoLinger() {
        #expect(VisibilityPlan(visibilityTimeout: 600).deleteLinger == .seconds(1))
        #expect(VisibilityPlan(visibilityTimeout: 20).deleteLinger == .seconds(1))
        #expect(VisibilityPlan(visibilityTimeout: 19).deleteLinger == .zero)
        #expect(VisibilityPlan(visibilityTimeout: 1).deleteLinger == .zero)
    }

    @Test(arguments: timeouts)
    func theIntervalsFitInsideTheTimeout(_ timeout: Int) {
        let plan = VisibilityPlan(visibilityTimeout: timeout)
        let t = Duration.seconds(timeout)
        // A slot takes only what it expects to start before it would release it.
        #expect(Duration.milliseconds(Int(plan.receiveHorizon * 1000)) <= plan.holdLimit)
        // A held message goes back while it is still hidden.
        #expect(plan.holdLimit < t)
        // The heartbeat extends before the message lapses (with half the timeout in hand), except at 1 s where
        // the shortest heartbeat is the timeout itself.
        #expect(plan.heartbeatInterval <= t)
        if timeout >= 2 { #expect(plan.heartbeatInterval * 2 <= t) }
        // A message started just before its release gets its first heartbeat before it lapses.
        #expect(plan.holdLimit + .seconds(1) <= t || timeout < 2)
        // A batched delete goes out with ten seconds or more left once the last heartbeat stopped.
        if plan.deleteLinger > .zero { #expect(t - plan.heartbeatInterval - plan.deleteLinger >= .seconds(9)) }
        // A retried message is back within one timeout.
        #expect(plan.retryDelay(receiveCount: 20, base: 30) <= timeout)
    }

    @Test func extensionsStopAtSQSsTwelveHours() {
        let plan = VisibilityPlan(visibilityTimeout: 600)
        #expect(plan.extensionSeconds(secondsSinceReceive: 0) == 600)
        #expect(plan.extensionSeconds(secondsSinceReceive: 43200 - 60 - 100) == 100)
        #expect(plan.extensionSeconds(secondsSinceReceive: 43200) == 0)
    }
}

extension VisibilityPlanTests {
    /// A message first received 13 hours ago (its first worker was lost, its visibility lapsed, it came back) still
    /// gets full extensions: SQS's 12 hours count from this receive. Counted from the first receive, it got none, and
    /// another worker took the message mid-task.
    @Test func theTwelveHoursCountFromThisReceive() async {
        let clock = ManualClock()
        let firstReceived = Int64(Date().timeIntervalSince1970 - 13 * 3600) * 1000
        let message = SQSMessage(
            messageID: "m", receiptHandle: "rh", body: "k",
            attributes: ["ApproximateFirstReceiveTimestamp": "\(firstReceived)", "ApproximateReceiveCount": "2"])
        let asked = Mutex<[Int]>([])
        let release = Mutex<CheckedContinuation<Void, Never>?>(nil)
        let plan = VisibilityPlan(visibilityTimeout: 600)
        let heartbeat = Task {
            await withHeartbeat(
                for: message, receivedAt: clock.now, plan: plan, clock: clock, logger: Logger(label: "test"),
                extend: { seconds in
                    asked.withLock { $0.append(seconds) }
                    return true
                }
            ) {
                await withCheckedContinuation { continuation in release.withLock { $0 = continuation } }
            }
        }
        await clock.waitForSleepers(1)
        clock.advance(by: plan.heartbeatInterval)
        await eventually { asked.withLock { $0.count } == 1 }
        // Close to the 12 hours of this receive, the extension shrinks to what is left.
        await clock.waitForSleepers(1)
        clock.advance(by: .seconds(43200 - 60 - 300 - 100))
        await eventually { asked.withLock { $0.count } == 2 }
        await eventually { release.withLock { $0 != nil } }
        release.withLock { $0?.resume() }
        await heartbeat.value
        #expect(asked.withLock { $0 } == [600, 100])
    }
}
