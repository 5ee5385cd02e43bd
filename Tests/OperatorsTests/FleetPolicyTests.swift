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

    /// Stuck means no heartbeat for `stuckAfter`, or a task past its own `taskTimeout` plus the grace: a worker
    /// whose one task has run for hours while it beats is not stuck, however long since its last completion.
    @Test func aStuckInstanceIsOneThatStoppedBeatingNotOneWithALongTask() {
        let beats = [
            "i-silent": InstanceHeartbeat(
                instanceID: "i-silent", startedEpoch: now - 3000, lastCompletionEpoch: now - 1000,
                updatedEpoch: now - 1000),
            // A 30-minute task, 25 minutes in; no completion for an hour; still beating.
            "i-long": InstanceHeartbeat(
                instanceID: "i-long", startedEpoch: now - 7200, lastCompletionEpoch: now - 3600,
                updatedEpoch: now - 30, runningTasks: 1, oldestTaskStartedEpoch: now - 1500, taskTimeout: 2400),
            // Beating, but its task has run past its timeout and the grace: the daemon lost control of it.
            "i-overrun": InstanceHeartbeat(
                instanceID: "i-overrun", startedEpoch: now - 9000, updatedEpoch: now - 10, runningTasks: 1,
                oldestTaskStartedEpoch: now - 3000, taskTimeout: 2400),
        ]
        var memory = FleetPolicy.Memory()
        let fleet = [instance("i-silent"), instance("i-long"), instance("i-overrun")]
        let decisions = policy.decide(
            .init(now: now, queue: counts(40, 5), instances: fleet, heartbeats: beats), memory: &memory)
        #expect(decisions.map(\.instanceID) == ["i-silent", "i-overrun"])
        #expect(decisions[0].reason.hasPrefix("no heartbeat for 1000 s, while 40 messages wait"), "\(decisions[0])")
        #expect(decisions[1].reason.hasPrefix("a task has run 3000 s, past its taskTimeout of 2400 s"))
        // Only in flight (the tail): a silent worker still holds messages hostage, and goes.
        let tail = policy.decide(
            .init(now: now, queue: counts(0, 3), instances: fleet, heartbeats: beats), memory: &memory)
        #expect(tail.map(\.instanceID) == ["i-silent", "i-overrun"])
        // A daemon that stopped (a dead end that kept its instance up) goes once it has been stopped that long.
        var stopped = InstanceHeartbeat(instanceID: "i-stopped", state: "stopped", updatedEpoch: now - 1000)
        stopped.stopReason = "dead end"
        #expect(policy.stuckReason(nil, heartbeat: stopped, now: now) == "its daemon stopped 1000 s ago (dead end)")
        #expect(policy.stuckReason(nil, heartbeat: stopped, now: now - 500) == nil)
    }

    @Test func anInstanceNeverHeardFromIsJudgedFromItsLaunch() {
        var memory = FleetPolicy.Memory()
        let decisions = policy.decide(
            .init(
                now: now, queue: counts(10),
                instances: [instance("i-silent", launchedAgo: 2000), instance("i-new", launchedAgo: 100)],
                heartbeats: [:]), memory: &memory)
        #expect(decisions.map(\.instanceID) == ["i-silent"])
        #expect(decisions[0].reason.hasPrefix("no heartbeat since its launch 2000 s ago"))
    }

    /// Up to the target while messages wait, never more than wait or than `maxSize`, counting only instances that
    /// stay; none once the queue has drained after work, and none before work was ever seen.
    @Test func launchesKeepTheFleetAtSizeWhileWorkWaits() {
        var sized = policy
        sized.target = 5
        var memory = FleetPolicy.Memory()
        let two = [instance("i-a"), instance("i-b")]
        func launch(_ queue: SQSClient.MessageCounts, _ fleet: [EC2Instance], terminating: Set<String> = []) -> Int? {
            let snapshot = FleetPolicy.Snapshot(now: now, queue: queue, instances: fleet, heartbeats: nil)
            _ = sized.decide(snapshot, memory: &memory)
            return sized.launch(snapshot, terminating: terminating, memory: memory)?.count
        }
        #expect(launch(counts(100), two) == 3)
        #expect(launch(counts(100), two, terminating: ["i-a"]) == 4)
        #expect(launch(counts(2), two) == 2, "no more instances than messages wait")
        #expect(launch(counts(0, 40), two) == nil, "nothing waits to be taken: the tail needs no new worker")
        sized.maxSize = 3
        #expect(launch(counts(100), two) == 1)
        #expect(launch(counts(100), two + [instance("i-c")]) == nil)
        // Drained after work: nothing more, even when a message comes back.
        #expect(launch(counts(0), two) == nil)
        #expect(memory.drainedAfterWork)
        #expect(launch(counts(5), []) == nil)
        // No target: the controller launches nothing (only retires).
        #expect(
            policy.launch(
                .init(now: now, queue: counts(9), instances: [], heartbeats: nil), terminating: [], memory: .init())
                == nil)
        // An empty queue before any work (enqueue has not run yet) is not a drain.
        var fresh = FleetPolicy.Memory()
        _ = sized.decide(.init(now: now, queue: counts(0), instances: [], heartbeats: nil), memory: &fresh)
        #expect(!fresh.drainedAfterWork)
    }

    /// A launched instance gone young and never heard from is a failed launch; one heard from resets the count,
    /// and so does one that lived long; instances the controller terminated itself are not counted.
    @Test func failedLaunchesAreCountedInARow() {
        var memory = FleetPolicy.Memory()
        memory.launched = ["i-1": now - 60, "i-2": now - 50, "i-3": now - 40, "i-old": now - 5000]
        let snapshot = FleetPolicy.Snapshot(now: now, queue: counts(10), instances: [instance("i-3")], heartbeats: [:])
        let failed = policy.noteDepartures(snapshot, terminatedHere: ["i-2"], memory: &memory)
        #expect(failed == ["i-1"])
        #expect(memory.failedLaunches == 1, "i-old lived long (which resets) before i-1 died young")
        #expect(memory.launched.keys.sorted() == ["i-3"])
        memory.launched["i-4"] = now - 10
        let heard = FleetPolicy.Snapshot(
            now: now, queue: counts(10), instances: [instance("i-4")],
            heartbeats: ["i-4": InstanceHeartbeat(instanceID: "i-4", updatedEpoch: now)])
        #expect(policy.noteDepartures(heard, terminatedHere: [], memory: &memory) == ["i-3"])
        #expect(memory.failedLaunches == 1, "i-4 was heard from, which reset the count; then i-3 died young")
        memory.launched["i-5"] = now - 5
        #expect(policy.noteDepartures(heard, terminatedHere: [], memory: &memory) == ["i-5"])
        #expect(memory.failedLaunches == 1, "i-4 is still heard from: each look starts the count again")
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
        // i-b's last heartbeat (its last completion: it wrote none since) is 2000 s old.
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
