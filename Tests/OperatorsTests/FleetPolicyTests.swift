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

    /// Up to the target while messages wait, never more than wait, counting only instances that stay and those just
    /// launched that DescribeInstances does not list yet; none past `maxLaunches` in all; none once the queue has
    /// drained (for the interval) after work, and none before work was ever seen.
    @Test func launchesKeepTheFleetAtSizeWhileWorkWaits() {
        var sized = policy
        sized.target = 5
        var memory = FleetPolicy.Memory()
        let two = [instance("i-a"), instance("i-b")]
        func launch(
            _ queue: SQSClient.MessageCounts, _ fleet: [EC2Instance], terminating: Set<String> = [], at: Double? = nil
        ) -> Int? {
            let snapshot = FleetPolicy.Snapshot(now: at ?? now, queue: queue, instances: fleet, heartbeats: nil)
            _ = sized.decide(snapshot, memory: &memory)
            _ = sized.noteDepartures(snapshot, terminatedHere: [], memory: &memory)
            return sized.launch(snapshot, terminating: terminating, memory: memory)?.count
        }
        #expect(launch(counts(100), two) == 3)
        #expect(launch(counts(100), two, terminating: ["i-a"]) == 4)
        #expect(launch(counts(2), two) == 2, "no more instances than messages wait")
        #expect(launch(counts(0, 40), two) == nil, "nothing waits to be taken: the tail needs no new worker")
        // Three just launched, not listed yet: alive all the same, for up to `listingLag`.
        memory.launched = ["i-c": now, "i-d": now, "i-e": now]
        #expect(launch(counts(100), two) == nil)
        #expect(launch(counts(100), two, at: now + 200) == 3, "never listed after the lag: gone")
        // Listed once, then gone: a replacement at once.
        memory.launched = ["i-c": now]
        #expect(launch(counts(100), two + [instance("i-c")]) == 2)
        #expect(launch(counts(100), two) == 3)
        // The budget: at most `maxLaunches` in all.
        sized.maxLaunches = 7
        memory.launchedInAll = 6
        #expect(launch(counts(100), two) == 1)
        memory.launchedInAll = 7
        #expect(launch(counts(100), two) == nil)
        #expect(
            sized.launchBudgetSpent(
                .init(now: now, queue: counts(100), instances: two, heartbeats: nil), memory: memory))
        sized.maxLaunches = nil
        // One reading of zero (a pause between enqueue's chunks) is not the drain...
        #expect(launch(counts(0), two) == nil)
        #expect(!memory.drainedAfterWork)
        #expect(launch(counts(5), two) == 3)
        // ...the queue drained for the interval is: nothing more, even when a message comes back.
        _ = launch(counts(0), two, at: now + 1000)
        _ = launch(counts(0), two, at: now + 1040)
        #expect(memory.drainedAfterWork)
        #expect(launch(counts(5), [], at: now + 1050) == nil)
        // No target: the controller launches nothing (only retires).
        #expect(
            policy.launch(
                .init(now: now, queue: counts(9), instances: [], heartbeats: nil), terminating: [], memory: .init())
                == nil)
        // An empty queue before any work (enqueue has not run yet) is not a drain.
        var fresh = FleetPolicy.Memory()
        _ = sized.decide(.init(now: now, queue: counts(0), instances: [], heartbeats: nil), memory: &fresh)
        _ = sized.decide(.init(now: now + 100, queue: counts(0), instances: [], heartbeats: nil), memory: &fresh)
        #expect(!fresh.drainedAfterWork)
    }

    /// With heartbeats: a launched instance gone young and never heard from is a failed launch, and so is one the
    /// controller retired because it was never heard from (or it would launch and retire forever); a newly
    /// heard-from instance starts the count again, but one that stays heard from does not reset it each look.
    /// Without heartbeats, nothing is judged: a worker that left on its own looks the same as one that never booted.
    @Test func failedLaunchesAreCountedInARow() {
        var memory = FleetPolicy.Memory()
        memory.launched = ["i-1": now - 60, "i-2": now - 50, "i-3": now - 40, "i-old": now - 5000]
        memory.listed = ["i-1", "i-2", "i-3", "i-old"]
        let snapshot = FleetPolicy.Snapshot(now: now, queue: counts(10), instances: [instance("i-3")], heartbeats: [:])
        let failed = policy.noteDepartures(snapshot, terminatedHere: ["i-2"], memory: &memory)
        #expect(failed == ["i-1", "i-2"], "i-old lived long: gone, not failed; i-2 was retired never heard from")
        #expect(memory.failedLaunches == 2)
        #expect(memory.launched.keys.sorted() == ["i-3"])
        memory.launched["i-4"] = now - 10
        let heard = FleetPolicy.Snapshot(
            now: now, queue: counts(10), instances: [instance("i-4")],
            heartbeats: ["i-4": InstanceHeartbeat(instanceID: "i-4", updatedEpoch: now)])
        #expect(policy.noteDepartures(heard, terminatedHere: [], memory: &memory) == ["i-3"])
        #expect(memory.failedLaunches == 1, "i-4 was newly heard from, which reset the count; then i-3 died young")
        memory.launched["i-5"] = now - 5
        memory.listed.insert("i-5")
        #expect(policy.noteDepartures(heard, terminatedHere: [], memory: &memory) == ["i-5"])
        #expect(memory.failedLaunches == 2, "i-4 still beating resets nothing: a broken template still adds up")
        // No ledger: no judgement, only the bookkeeping.
        var blind = FleetPolicy.Memory()
        blind.launched = ["i-6": now - 60]
        blind.listed = ["i-6"]
        let noLedger = FleetPolicy.Snapshot(now: now, queue: counts(10), instances: [], heartbeats: nil)
        #expect(policy.noteDepartures(noLedger, terminatedHere: [], memory: &blind).isEmpty)
        #expect(blind.failedLaunches == 0 && blind.launched.isEmpty)
    }

    /// The cost so far (each instance from its daemon's start to now, or to its last heartbeat once stopped) and to
    /// finish (what remains at the mean task time, over the running fleet's slots at its hourly price).
    @Test func statusShowsTheCostSoFarAndToFinish() {
        var a = InstanceHeartbeat(
            instanceID: "i-a", startedEpoch: now - 7200, tasksDone: 40, recentDurations: [10, 20], updatedEpoch: now)
        a.instanceType = "c7i.large"
        a.slots = 2
        var b = InstanceHeartbeat(
            instanceID: "i-b", state: "stopped", startedEpoch: now - 3600, updatedEpoch: now - 1800)
        b.instanceType = "m5.large"
        let prices = ["c7i.large": 0.09, "m5.large": 0.10]
        let fleet = FleetStatus.summarize([a, b], queue: counts(100), now: now, stuckAfter: 900, prices: prices)
        // 2 h at 0.09 and half an hour at 0.10; then 100 tasks of 15 s on i-a's two slots: 0.208 h at 0.09.
        #expect(fleet.costSoFar == 0.23)
        #expect(fleet.costToFinish == 0.02)
        #expect(fleet.text.contains("cost        $0.23 so far, $0.02 to finish (estimate)"), "\(fleet.text)")
        // A running heartbeat gone stale (the instance died without a word) stops counting at its last beat.
        var silent = a
        silent.updatedEpoch = now - 3600
        let quiet = FleetStatus.summarize([silent], queue: counts(0), now: now, stuckAfter: 900, prices: prices)
        #expect(quiet.costSoFar == 0.09, "one hour, from its start to its last heartbeat")
        // A type without a price: no figure rather than a wrong one.
        let partial = FleetStatus.summarize(
            [a, b], queue: counts(100), now: now, stuckAfter: 900, prices: ["c7i.large": 0.09])
        #expect(partial.costSoFar == nil && partial.unpricedTypes == ["m5.large"])
        #expect(partial.text.contains("cost        unknown: no --price for m5.large"))
        // Without prices, no cost line at all.
        #expect(!FleetStatus.summarize([a], queue: counts(1), now: now, stuckAfter: 900).text.contains("cost"))
    }

    @Test func ledgerKeysSortAttemptsAndNameTheQueue() {
        #expect(LedgerSchema.taskSortKey(inputKey: "a/b.txt", attempt: 2) == "task#a/b.txt#0002")
        #expect(LedgerSchema.queueName("https://sqs.eu-west-1.amazonaws.com/123456789012/jobs") == "jobs")
        #expect(LedgerSchema.instanceSortKey("i-1") == "instance#i-1")
    }
}
