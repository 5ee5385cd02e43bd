import AWSCore
import AWSServices
import AWSSigV4
import HTTPCurl
import Logging
import Testing
@testable import Operators
@testable import TaskLedger

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

    /// The loop's stop conditions are the policy's: the same set-up problem three rounds in a row (status 2),
    /// twenty failed rounds of any kind (status 1), a ledger refused three rounds in a row, three failed launches
    /// in a row, and the launch budget spent with no worker left while work waits.
    @Test func theControllerStopsWhenThePolicySaysWaitingCannotHelp() {
        var memory = FleetPolicy.Memory()
        #expect(policy.afterFailedRound(.denied, memory: &memory) == .goOn)
        #expect(policy.afterFailedRound(.queueMissing, memory: &memory) == .goOn, "another problem starts again")
        #expect(policy.afterFailedRound(.queueMissing, memory: &memory) == .goOn)
        guard case .stop(2, let why) = policy.afterFailedRound(.queueMissing, memory: &memory) else {
            Issue.record("three rounds of one problem did not stop the controller")
            return
        }
        #expect(why.contains("the same error 3 rounds in a row"))
        var flaky = FleetPolicy.Memory()
        for _ in 1..<FleetPolicy.maxFailedRounds { #expect(policy.afterFailedRound(nil, memory: &flaky) == .goOn) }
        policy.afterRound(memory: &flaky)
        #expect(flaky.failedRounds == 0, "a round that worked starts the count again")
        for _ in 1..<FleetPolicy.maxFailedRounds { _ = policy.afterFailedRound(nil, memory: &flaky) }
        #expect(
            policy.afterFailedRound(nil, memory: &flaky)
                == .stop(status: 1, why: "controller cannot go on: 20 rounds in a row failed"))

        var ledger = FleetPolicy.Memory()
        #expect(policy.afterLedgerRead(.denied, table: "t", memory: &ledger) == .goOn)
        #expect(policy.afterLedgerRead(nil, table: "t", memory: &ledger) == .goOn)
        #expect(policy.afterLedgerRead(.denied, table: "t", memory: &ledger) == .goOn)
        #expect(policy.afterLedgerRead(.denied, table: "t", memory: &ledger) == .goOn)
        guard case .stop(2, let ledgerWhy) = policy.afterLedgerRead(.denied, table: "t", memory: &ledger) else {
            Issue.record("a ledger refused three rounds in a row did not stop the controller")
            return
        }
        #expect(ledgerWhy.contains("give the controller dynamodb:Query on t"))

        let working = FleetPolicy.Snapshot(now: now, queue: counts(10), instances: [], heartbeats: nil)
        var launches = FleetPolicy.Memory()
        launches.failedLaunches = 2
        #expect(policy.afterDepartures(working, memory: launches, launchTemplate: "lt") == .goOn)
        launches.failedLaunches = 3
        guard case .stop(2, let launchWhy) = policy.afterDepartures(working, memory: launches, launchTemplate: "lt")
        else {
            Issue.record("three failed launches did not stop the controller")
            return
        }
        #expect(launchWhy.contains("check the launch template lt"))
        var budget = policy
        budget.maxLaunches = 4
        budget.target = 2
        var spent = FleetPolicy.Memory()
        spent.launchedInAll = 4
        #expect(
            budget.afterDepartures(working, memory: spent, launchTemplate: "lt")
                == .stop(
                    status: 2,
                    why:
                        "controller stops: --max (4) instances have been launched in all, none is left, and 10 messages wait; raise --max, or look at why the workers ended"
                ))
        let alive = FleetPolicy.Snapshot(now: now, queue: counts(10), instances: [instance("i-1")], heartbeats: nil)
        #expect(budget.afterDepartures(alive, memory: spent, launchTemplate: "lt") == .goOn, "a worker is still there")
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

    /// While the fleet's workers write to the ledger (another one beats), an instance never heard from is judged
    /// from its launch.
    @Test func anInstanceNeverHeardFromIsJudgedFromItsLaunch() throws {
        var memory = FleetPolicy.Memory()
        let fleet = [instance("i-silent", launchedAgo: 2000), instance("i-new", launchedAgo: 100), instance("i-ok")]
        let decisions = policy.decide(
            .init(
                now: now, queue: counts(10), instances: fleet,
                heartbeats: ["i-ok": InstanceHeartbeat(instanceID: "i-ok", updatedEpoch: now - 10)]), memory: &memory)
        #expect(decisions.map(\.instanceID) == ["i-silent"])
        try #require(decisions.count == 1)
        #expect(decisions[0].reason.hasPrefix("no heartbeat since its launch 2000 s ago"))
    }

    /// No heartbeat at all in the ledger means the workers write none (no `ledgerTable`, or another table), not
    /// that every worker is stuck: nobody is retired mid-task for it, nor counted as a failed launch.
    @Test func noHeartbeatsAtAllMeanNoLedgerNotStuckWorkers() {
        var memory = FleetPolicy.Memory()
        let fleet = [instance("i-a", launchedAgo: 5000), instance("i-b", launchedAgo: 2000)]
        let decisions = policy.decide(
            .init(now: now, queue: counts(10, 2), instances: fleet, heartbeats: [:]), memory: &memory)
        #expect(decisions.isEmpty, "\(decisions)")
        memory.launched = ["i-c": now - 60]
        memory.listed = ["i-c"]
        let gone = FleetPolicy.Snapshot(now: now, queue: counts(10), instances: fleet, heartbeats: [:])
        #expect(policy.noteDepartures(gone, terminatedHere: [], memory: &memory).isEmpty)
        #expect(memory.failedLaunches == 0)
    }

    /// A fleet is stopped after its work drained, never before its first work (one launched before its enqueue,
    /// or fed by S3 events), unless the operator named an idle period.
    @Test func aFleetThatNeverHadWorkIsNotStopped() {
        let fleet = [instance("i-a"), instance("i-b")]
        var memory = FleetPolicy.Memory()
        for step in 0..<10 {
            let decisions = policy.decide(
                .init(now: now + Double(step) * 600, queue: counts(0), instances: fleet, heartbeats: nil),
                memory: &memory)
            #expect(decisions.isEmpty, "stopped a fleet that never had work, after \(step * 600) s")
        }
        #expect(!policy.fleetStopIsDue(memory, now: now + 6000))
        // With --stop-idle-after, after that long.
        var idle = policy
        idle.stopIdleAfter = 1800
        var idleMemory = FleetPolicy.Memory()
        #expect(
            idle.decide(.init(now: now, queue: counts(0), instances: fleet, heartbeats: nil), memory: &idleMemory)
                .isEmpty)
        #expect(
            idle.decide(
                .init(now: now + 1700, queue: counts(0), instances: fleet, heartbeats: nil), memory: &idleMemory
            )
            .isEmpty)
        let stopped = idle.decide(
            .init(now: now + 1800, queue: counts(0), instances: fleet, heartbeats: nil), memory: &idleMemory)
        #expect(stopped.map(\.instanceID) == ["i-a", "i-b"])
        #expect(stopped.first?.reason.contains("no work for 1800 s") == true, "\(stopped)")
        // Work, then its drain: stopped after the interval, as before.
        var worked = FleetPolicy.Memory()
        _ = policy.decide(.init(now: now, queue: counts(3), instances: fleet, heartbeats: nil), memory: &worked)
        #expect(
            policy.decide(.init(now: now + 10, queue: counts(0), instances: fleet, heartbeats: nil), memory: &worked)
                .isEmpty)
        #expect(
            policy.decide(.init(now: now + 40, queue: counts(0), instances: fleet, heartbeats: nil), memory: &worked)
                .count == 2)
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
        // (Another worker's heartbeat: the fleet writes to the ledger.)
        let snapshot = FleetPolicy.Snapshot(
            now: now, queue: counts(10), instances: [instance("i-3")],
            heartbeats: ["i-other": InstanceHeartbeat(instanceID: "i-other", updatedEpoch: now)])
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

/// The heartbeat's oldest start is the oldest running command's: a task's download and upload are not its command's
/// time, and a healthy worker uploading a large output must not look stuck past its `taskTimeout`.
struct LedgerHeartbeatTests {
    @Test func theUploadAfterTheCommandDoesNotCountAgainstTaskTimeout() async throws {
        let context = AWSContext(
            region: "us-east-1",
            client: AWSClient(
                http: HTTPClient(),
                credentials: StaticCredentialProvider(Credentials(accessKeyID: "k", secretAccessKey: "s"))),
            imds: nil, environment: ["AWS_ENDPOINT_URL": "http://127.0.0.1:9"])
        var settings = Ledger.Settings()
        settings.taskTimeout = 60
        let ledger = Ledger(
            client: try DynamoDBClient(context: context), table: "t",
            queueURL: "https://sqs.us-east-1.amazonaws.com/1/q",
            instanceID: "i-1", settings: settings, logger: Logger(label: "test"))
        func oldest() async -> Double? {
            guard case .put(let item) = await ledger.heartbeatWrite(state: "running") else { return nil }
            guard case .n(let text)? = item[LedgerSchema.Instance.oldestTaskStartedEpoch] else { return nil }
            return Double(text)
        }
        await ledger.taskStarted(inputKey: "a", attempt: 1, slot: 1, messageID: "m")
        #expect(await oldest() == nil, "a download is not the command's time")
        await ledger.commandStarted(inputKey: "a", attempt: 1)
        #expect(await oldest() != nil)
        await ledger.commandEnded(inputKey: "a", attempt: 1)
        #expect(await oldest() == nil, "the upload after the command is not the command's time")
        await ledger.taskEnded(
            inputKey: "a", attempt: 1, outcome: .done, seconds: 1, bytesIn: 1, bytesOut: 1, exitStatus: "exit 0",
            outputKey: "a.out", reason: nil)
        // A command that never ended cleanly (the task ended mid-command) leaves nothing behind.
        await ledger.taskStarted(inputKey: "b", attempt: 1, slot: 1, messageID: "m2")
        await ledger.commandStarted(inputKey: "b", attempt: 1)
        await ledger.taskEnded(
            inputKey: "b", attempt: 1, outcome: .released, seconds: 1, bytesIn: 1, bytesOut: 0,
            exitStatus: "interrupted", outputKey: nil, reason: nil)
        #expect(await oldest() == nil)
    }
}

/// `controller --follow`: the fleet grows from zero while messages wait, never past `--max`, keeps `--min`, and after
/// a quiet spell retires only idle instances above `--min`; it is never stopped for good.
struct FollowPolicyTests {
    let now = 1_800_000_000.0

    var policy: FleetPolicy {
        var p = FleetPolicy(stuckAfter: 900, drainedFor: 30)
        p.follow = true
        p.minimum = 1
        p.target = 4
        p.quietPeriod = 60
        return p
    }

    func instance(_ id: String, launchedAgo: Double) -> EC2Instance {
        EC2Instance(
            instanceID: id, state: "running", launchTime: CivilTime(epochSeconds: Int64(now - launchedAgo)).iso8601)
    }

    func snapshot(
        _ visible: Int, inFlight: Int = 0, _ instances: [EC2Instance], at offset: Double = 0,
        heartbeats: [String: InstanceHeartbeat]? = nil
    ) -> FleetPolicy.Snapshot {
        FleetPolicy.Snapshot(
            now: now + offset, queue: SQSClient.MessageCounts(visible: visible, inFlight: inFlight, delayed: 0),
            instances: instances, heartbeats: heartbeats)
    }

    @Test func theFleetFollowsItsQueueUpAndDown() {
        var memory = FleetPolicy.Memory()
        // Nothing waits: only --min.
        let empty = snapshot(0, [])
        #expect(policy.decide(empty, memory: &memory).isEmpty)
        #expect(policy.launch(empty, terminating: [], memory: memory)?.count == 1)
        #expect(policy.launch(empty, terminating: [], memory: memory)?.reason == "0 instances alive, below --min 1")
        // Work arrives: one a message waiting, at most --max.
        let one = [instance("i-a", launchedAgo: 600)]
        let two = snapshot(2, one, at: 10)
        #expect(policy.decide(two, memory: &memory).isEmpty)
        #expect(policy.launch(two, terminating: [], memory: memory)?.count == 2)
        let many = snapshot(100, one, at: 20)
        #expect(policy.launch(many, terminating: [], memory: memory)?.count == 3)
        // The queue drains: after the quiet period, the idle ones leave, the youngest first; a busy one (its
        // heartbeat shows a task) stays, however the queue's approximate counts read, and counts toward --min.
        let fleet = [
            instance("i-a", launchedAgo: 600), instance("i-b", launchedAgo: 300), instance("i-c", launchedAgo: 200),
            instance("i-d", launchedAgo: 100),
        ]
        var beats = Dictionary(
            uniqueKeysWithValues: fleet.map { ($0.instanceID, InstanceHeartbeat(instanceID: $0.instanceID)) })
        for id in beats.keys { beats[id]?.updatedEpoch = now + 90 }
        beats["i-c"]?.runningTasks = 1
        // A message received within the quiet period: its task may have begun since the heartbeat.
        var justReceived = beats
        justReceived["i-d"]?.lastReceiveEpoch = now + 80
        var scratch = memory
        #expect(
            !policy.decide(snapshot(0, fleet, at: 95, heartbeats: justReceived), memory: &scratch).map(\.instanceID)
                .contains("i-d"))
        #expect(policy.decide(snapshot(0, fleet, at: 30, heartbeats: beats), memory: &memory).isEmpty)
        #expect(policy.decide(snapshot(0, fleet, at: 60, heartbeats: beats), memory: &memory).isEmpty, "not quiet yet")
        let retired = policy.decide(snapshot(0, fleet, at: 95, heartbeats: beats), memory: &memory)
        #expect(retired.map(\.instanceID) == ["i-d", "i-b", "i-a"], "\(retired)")
        let idleOnly = fleet.filter { $0.instanceID != "i-c" }
        let kept = policy.decide(snapshot(0, idleOnly, at: 96, heartbeats: [:]), memory: &memory)
        #expect(kept.map(\.instanceID) == ["i-d", "i-b"], "--min 1 stays (without a ledger, all are idle)")
        #expect(retired.first?.reason == "the queue has been quiet for 65 s; idle, above --min 1")
        #expect(!policy.fleetStopIsDue(memory, now: now + 10_000), "a following fleet is never stopped for good")
        #expect(!memory.drainedAfterWork)
        // Work comes back after the drain: launches go on.
        let back = snapshot(5, [instance("i-a", launchedAgo: 700)], at: 200)
        #expect(policy.decide(back, memory: &memory).isEmpty)
        #expect(policy.launch(back, terminating: [], memory: memory)?.count == 3)
    }

    /// `--max-failure-rate`: launches stop while more than the share of the fleet's last N tasks failed, and
    /// resume when it falls back; a handful of tasks is no verdict.
    @Test func launchesStopWhileTooManyOfTheLastTasksFailed() {
        var p = FleetPolicy(stuckAfter: 900, drainedFor: 30)
        p.target = 3
        p.maxFailureRate = 0.5
        p.failureWindow = 10
        var a = InstanceHeartbeat(instanceID: "i-a")
        var b = InstanceHeartbeat(instanceID: "i-b")
        a.recentCompletions = (0..<4).map { now - 100 + Double($0) }
        a.recentFailures = [now - 50]
        b.recentFailures = (0..<3).map { now - 40 + Double($0) }
        var memory = FleetPolicy.Memory()
        // Tasks count from the controller's first look: heartbeats outlive their workers.
        memory.watchingSince = now - 1000
        func look(_ beats: [InstanceHeartbeat]) -> (String?, FleetPolicy.Launch?) {
            let s = FleetPolicy.Snapshot(
                now: now, queue: SQSClient.MessageCounts(visible: 50, inFlight: 0, delayed: 0), instances: [],
                heartbeats: Dictionary(uniqueKeysWithValues: beats.map { ($0.instanceID, $0) }))
            let line = p.noteFailureRate(s, memory: &memory)
            return (line, p.launch(s, terminating: [], memory: memory))
        }
        #expect(look([a, b]).0 == nil, "8 tasks are not the last 10: no verdict")
        var old = InstanceHeartbeat(instanceID: "i-old")
        old.recentFailures = (0..<10).map { now - 2000 + Double($0) }
        #expect(look([a, b, old]).0 == nil, "failures from before the controller's first look do not count")
        #expect(look([a, b]).1 != nil)
        b.recentFailures += [now - 30, now - 20]
        // The last 10: 6 failed, 4 done.
        let (stop, none) = look([a, b])
        #expect(stop == "launches stop: 6 of the last 10 tasks failed, more than --max-failure-rate 50 %")
        #expect(none == nil)
        #expect(look([a, b]).0 == nil, "said once")
        a.recentCompletions += (0..<6).map { now - 10 + Double($0) }
        let (resume, launch) = look([a, b])
        #expect(resume == "launches resume: the failure rate is back at or under --max-failure-rate")
        #expect(launch != nil)
        // With no worker left while it holds, the controller stops: nothing would change by waiting.
        memory.braked = "x"
        let alone = FleetPolicy.Snapshot(
            now: now, queue: SQSClient.MessageCounts(visible: 5, inFlight: 0, delayed: 0), instances: [],
            heartbeats: [:])
        guard case .stop(2, let why) = p.afterDepartures(alone, memory: memory, launchTemplate: "t") else {
            Issue.record("no stop with launches stopped and no worker left")
            return
        }
        #expect(why.contains("launches are stopped (x), no worker is left, and 5 messages wait"))
    }
}
