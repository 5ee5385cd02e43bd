import AWSServices
import AWSSigV4
import Testing
@testable import Operators
import TaskLedger

/// The controller's rules and `status`'s fleet summary, with the clock as a parameter.
struct FleetPolicyTests {
    let policy = FleetPolicy(stuckAfter: 900, drainedFor: 30)
    let now = 1_800_000_000.0

    func counts(_ visible: Int, _ inFlight: Int = 0, _ delayed: Int = 0) -> SQSClient.MessageCounts {
        SQSClient.MessageCounts(visible: visible, inFlight: inFlight, delayed: delayed)
    }

    func instance(_ id: String, launchedAgo: Double = 3600) -> EC2Instance {
        EC2Instance(
            instanceID: id, state: "running",
            launchTime: CivilTime(epochSeconds: Int64(now - launchedAgo)).iso8601)
    }

    @Test func aStuckInstanceIsTerminatedOnlyWhileWorkWaits() {
        let beats = [
            "i-stuck": InstanceHeartbeat(
                instanceID: "i-stuck", startedEpoch: now - 3000, lastCompletionEpoch: now - 1000),
            "i-busy": InstanceHeartbeat(instanceID: "i-busy", startedEpoch: now - 3000, lastCompletionEpoch: now - 10),
        ]
        var memory = FleetPolicy.Memory()
        let decisions = policy.decide(
            .init(
                now: now, queue: counts(40, 5), instances: [instance("i-stuck"), instance("i-busy")],
                heartbeats: beats), memory: &memory)
        #expect(decisions.map(\.instanceID) == ["i-stuck"])
        #expect(decisions.first?.reason.contains("no task completed for 1000 s while 40 messages wait") == true)
        // Nothing visible (the rest is in flight): a slow last task is not a stuck worker.
        let tail = policy.decide(
            .init(now: now, queue: counts(0, 3), instances: [instance("i-stuck")], heartbeats: beats),
            memory: &memory)
        #expect(tail.isEmpty)
    }

    @Test func anInstanceThatNeverCompletedIsJudgedFromItsStartOrLaunch() {
        var memory = FleetPolicy.Memory()
        let beats = ["i-started": InstanceHeartbeat(instanceID: "i-started", startedEpoch: now - 1200)]
        let decisions = policy.decide(
            .init(
                now: now, queue: counts(10),
                instances: [
                    instance("i-started"), instance("i-silent", launchedAgo: 2000),
                    instance("i-new", launchedAgo: 100),
                ],
                heartbeats: beats), memory: &memory)
        #expect(decisions.map(\.instanceID) == ["i-started", "i-silent"])
        #expect(decisions[0].reason.hasPrefix("no task completed since start"))
    }

    @Test func withoutALedgerNoOneIsJudgedStuck() {
        var memory = FleetPolicy.Memory()
        let decisions = policy.decide(
            .init(
                now: now, queue: counts(10), instances: [instance("i-a", launchedAgo: 99_999)],
                heartbeats: nil), memory: &memory)
        #expect(decisions.isEmpty)
    }

    @Test func theFleetStopsOnlyAfterTheQueueStaysDrainedForTheInterval() {
        var memory = FleetPolicy.Memory()
        let fleet = [instance("i-a"), instance("i-b")]
        #expect(
            policy.decide(.init(now: now, queue: counts(0), instances: fleet, heartbeats: nil), memory: &memory).isEmpty
        )
        #expect(memory.drainedSince == now)
        #expect(
            policy.decide(.init(now: now + 10, queue: counts(0), instances: fleet, heartbeats: nil), memory: &memory)
                .isEmpty)
        // Work reappears (a failed task came back): the clock restarts.
        #expect(
            policy.decide(.init(now: now + 20, queue: counts(1), instances: fleet, heartbeats: nil), memory: &memory)
                .isEmpty)
        #expect(memory.drainedSince == nil)
        _ = policy.decide(.init(now: now + 25, queue: counts(0), instances: fleet, heartbeats: nil), memory: &memory)
        #expect(
            policy.decide(.init(now: now + 50, queue: counts(0), instances: fleet, heartbeats: nil), memory: &memory)
                .isEmpty)
        let stop = policy.decide(
            .init(now: now + 55, queue: counts(0), instances: fleet, heartbeats: nil), memory: &memory)
        #expect(stop.map(\.instanceID) == ["i-a", "i-b"])
        #expect(stop.first?.reason == "the queue has been drained for 30 s")
        // Delayed messages are work too.
        var other = FleetPolicy.Memory()
        _ = policy.decide(.init(now: now, queue: counts(0, 0, 2), instances: fleet, heartbeats: nil), memory: &other)
        #expect(other.drainedSince == nil)
    }

    @Test func statusSummarisesRateDurationsETAAndStuckInstances() {
        let a = InstanceHeartbeat(
            instanceID: "i-a", startedEpoch: now - 4000, lastCompletionEpoch: now - 5, tasksDone: 30,
            recentDurations: [1, 2, 3, 4, 10], recentCompletions: (0..<30).map { now - 290 + Double($0) * 9.5 })
        let b = InstanceHeartbeat(
            instanceID: "i-b", startedEpoch: now - 4000, lastCompletionEpoch: now - 2000, tasksDone: 3,
            recentDurations: [5], recentCompletions: [now - 2100, now - 2050, now - 2000])
        let fleet = FleetStatus.summarize([b, a], queue: counts(90, 6), now: now, stuckAfter: 900)
        #expect(fleet.instances.map(\.instanceID) == ["i-a", "i-b"])
        #expect(fleet.instances.map(\.looksStuck) == [false, true])
        #expect(fleet.instances[1].lastCompletionAgoSeconds == 2000)
        #expect(fleet.tasksPerMinute == 6)  // 30 completions in the last 5 minutes
        #expect(fleet.etaSeconds == 960)  // 96 messages at 0.1 per second
        #expect(fleet.durationP50Seconds == 3 && fleet.durationP95Seconds == 10)
        #expect(fleet.text.contains("LOOKS STUCK"))
        let idle = FleetStatus.summarize([b], queue: counts(5), now: now, stuckAfter: 900)
        #expect(idle.etaSeconds == nil && idle.tasksPerMinute == 0)
    }

    @Test func ledgerKeysSortAttemptsAndNameTheQueue() {
        #expect(LedgerSchema.taskSortKey(inputKey: "a/b.txt", attempt: 2) == "task#a/b.txt#0002")
        #expect(LedgerSchema.queueName("https://sqs.eu-west-1.amazonaws.com/123456789012/jobs") == "jobs")
        #expect(LedgerSchema.instanceSortKey("i-1") == "instance#i-1")
    }
}
