import AWSCore
import AWSServices
import FoundationEssentials
import Logging
import TaskLedger

/// What the controller decides from one look at the fleet. Pure: the clock is a parameter, so every rule is tested
/// without waiting.
public struct FleetPolicy: Sendable {
    /// An instance whose heartbeat is this old while work remains is stuck (and one never heard from, this long
    /// after its launch).
    public var stuckAfter: Double
    /// How long the queue must stay drained before the fleet is stopped.
    public var drainedFor: Double
    /// A running task is stuck once it has run this much longer than the `taskTimeout` its worker reported: the
    /// daemon kills a command at its timeout and settles it within its shutdown grace, so a task past both is a
    /// worker that has lost control of it.
    public var taskGrace: Double = 300
    /// Instances to keep alive while work waits (nil: launch nothing, as EC2-clusteR's controller without
    /// `max.nodes`).
    public var target: Int?
    /// The most instances this controller launches in all, replacements included: churn (a pool interrupting
    /// again and again, workers dying of their inputs) cannot run up the bill without end.
    public var maxLaunches: Int?
    /// A launched instance gone within this many seconds, never heard from, was a failed launch.
    public var youngDeath: Double = 600
    /// A launched instance not yet listed by DescribeInstances (which lags RunInstances by a few seconds) counts
    /// as alive for this long.
    public var listingLag: Double = 120
    /// Failed launches in a row after which the controller stops: a launch template that cannot boot a worker
    /// must not start instances forever.
    public var failedLaunchLimit = 3
    /// Stop a fleet whose queue has had no work at all for this long (`--stop-idle-after`); nil, the default,
    /// never stops a fleet before its first work: one launched before its `enqueue`, or fed by S3 events, waits.
    public var stopIdleAfter: Double?
    /// Follow the queue (`--follow`): the fleet is never stopped for good. It grows from `minimum` to `target` while
    /// messages wait, and once the queue has had nothing visible, in flight or delayed for `quietPeriod`, the idle
    /// instances above `minimum` are retired. The controller runs on, for the next messages.
    public var follow = false
    public var minimum = 0
    public var quietPeriod: Double = 300
    /// Stop launching while more than this share of the fleet's last `failureWindow` tasks failed
    /// (`--max-failure-rate`, with a ledger): replacements would only fail more inputs, faster.
    public var maxFailureRate: Double?
    public var failureWindow = 20

    public init(stuckAfter: Double, drainedFor: Double) {
        self.stuckAfter = stuckAfter
        self.drainedFor = drainedFor
    }

    public struct Snapshot: Sendable {
        public var now: Double
        public var queue: SQSClient.MessageCounts
        /// The running and pending instances tagged with the queue.
        public var instances: [EC2Instance]
        /// By instance id; nil without a ledger (then stuck instances cannot be told).
        public var heartbeats: [String: InstanceHeartbeat]?

        public init(
            now: Double, queue: SQSClient.MessageCounts, instances: [EC2Instance],
            heartbeats: [String: InstanceHeartbeat]?
        ) {
            self.now = now
            self.queue = queue
            self.instances = instances
            self.heartbeats = heartbeats
        }
    }

    public struct Termination: Sendable, Equatable {
        public var instanceID: String
        public var reason: String
    }

    public struct Launch: Sendable, Equatable {
        public var count: Int
        public var reason: String
    }

    /// What the controller carries from one look to the next.
    public struct Memory: Sendable, Equatable {
        /// When the queue was first seen drained (nil while work remains).
        public var drainedSince: Double?
        /// When the controller first looked (an idle fleet's stop counts from here).
        public var watchingSince: Double?
        /// Whether the queue has had work while watched: a queue empty before `enqueue` ran is not drained.
        public var sawWork = false
        /// Once the queue has drained after work, nothing more is launched.
        public var drainedAfterWork = false
        /// Instances this controller launched, with when, until they are gone.
        public var launched: [String: Double] = [:]
        /// Of those, the ones DescribeInstances has listed.
        public var listed: Set<String> = []
        /// Of those, the ones heard from (a heartbeat): their boot worked.
        public var heardFrom: Set<String> = []
        /// Failed launches in a row: launched instances gone (or retired as never heard from) before a heartbeat,
        /// and launch calls that started nothing.
        public var failedLaunches = 0
        /// Instances launched in all.
        public var launchedInAll = 0
        /// Rounds in a row that failed, and how many of them met the same set-up problem (a denied call, a queue
        /// gone).
        public var failedRounds = 0
        public var refused: Refusal?
        /// Rounds in a row the ledger could not be read with the same set-up problem (a denied Query, a table gone).
        public var ledgerRefused: Refusal?
        /// Whether the end of the launch budget (`maxLaunches`) has been told.
        public var budgetNoted = false
        /// Launch calls in a row that failed with an error that may pass (no capacity, throttling).
        public var launchWaits = 0
        /// Why launches are stopped by the failure rate (`maxFailureRate`), while they are.
        public var braked: String?
        public init() {}
    }

    /// A set-up problem met `rounds` rounds in a row.
    public struct Refusal: Sendable, Equatable {
        public var problem: SetupProblem
        public var rounds: Int
    }

    /// What the loop does next: go on, or end the controller with this exit status and one critical line.
    public enum Verdict: Sendable, Equatable {
        case goOn
        case stop(status: Int32, why: String)
    }

    /// Rounds in a row with the same set-up problem that end the controller: waiting cannot fix it.
    public static let sameErrorRounds = SetupProblem.repeatsBeforeDeadEnd
    /// Failed rounds in a row (any error) that end it, with status 1 for a restart.
    public static let maxFailedRounds = 20

    /// After a round that failed: with `problem` (a set-up problem) the same as the last rounds', `sameErrorRounds`
    /// of them end the controller (status 2); `maxFailedRounds` failures of any kind end it with status 1.
    public func afterFailedRound(_ problem: SetupProblem?, memory: inout Memory) -> Verdict {
        memory.failedRounds += 1
        memory.refused = problem.map {
            Refusal(problem: $0, rounds: memory.refused?.problem == $0 ? memory.refused!.rounds + 1 : 1)
        }
        if let refused = memory.refused, refused.rounds >= Self.sameErrorRounds {
            return .stop(
                status: 2,
                why:
                    "controller cannot go on: the same error \(refused.rounds) rounds in a row, which waiting cannot fix; check the credentials and their permissions (docs/operations.md, the controller)"
            )
        }
        if memory.failedRounds >= Self.maxFailedRounds {
            return .stop(status: 1, why: "controller cannot go on: \(memory.failedRounds) rounds in a row failed")
        }
        return .goOn
    }

    /// A round that worked: the failure counts start again.
    public func afterRound(memory: inout Memory) {
        memory.failedRounds = 0
        memory.refused = nil
    }

    /// After reading the ledger's heartbeats (`problem` nil when it worked): a refusal or a table gone,
    /// `sameErrorRounds` rounds in a row, ends the controller instead of a warning a round.
    public func afterLedgerRead(_ problem: SetupProblem?, table: String, memory: inout Memory) -> Verdict {
        guard let problem else {
            memory.ledgerRefused = nil
            return .goOn
        }
        let rounds = memory.ledgerRefused?.problem == problem ? memory.ledgerRefused!.rounds + 1 : 1
        memory.ledgerRefused = Refusal(problem: problem, rounds: rounds)
        guard rounds >= Self.sameErrorRounds else { return .goOn }
        return .stop(
            status: 2,
            why:
                "controller cannot go on: the ledger cannot be read (\(rounds) rounds in a row); give the controller dynamodb:Query on \(table), or leave out --ledger-table"
        )
    }

    /// After the round's departures are noted: too many failed launches in a row, or the launch budget spent with
    /// no worker left while work waits, end the controller; nothing more would happen by waiting.
    public func afterDepartures(_ snapshot: Snapshot, memory: Memory, launchTemplate: String) -> Verdict {
        if memory.failedLaunches >= failedLaunchLimit {
            return .stop(
                status: 2,
                why:
                    "controller stops: \(memory.failedLaunches) launches in a row failed (instances gone or retired before their workers were heard from, or launch calls that started nothing); check the launch template \(launchTemplate) (its image, role, network and user-data), the instances' console output, and the launch errors above"
            )
        }
        if let braked = memory.braked, snapshot.instances.isEmpty, memory.launched.isEmpty, snapshot.queue.visible > 0 {
            return .stop(
                status: 2,
                why:
                    "controller stops: launches are stopped (\(braked)), no worker is left, and \(snapshot.queue.visible) messages wait; look at why the tasks fail (parallelizer failures), then start the controller again"
            )
        }
        if launchBudgetSpent(snapshot, memory: memory) && snapshot.instances.isEmpty && memory.launched.isEmpty {
            return .stop(
                status: 2,
                why:
                    "controller stops: --max (\(memory.launchedInAll)) instances have been launched in all, none is left, and \(snapshot.queue.visible) messages wait; raise --max, or look at why the workers ended"
            )
        }
        return .goOn
    }

    /// Whether the fleet's workers write to the ledger at all: some instance has a heartbeat there. With none
    /// (workers without `ledgerTable`, or another table), a missing heartbeat says nothing about an instance.
    static func ledgerInUse(_ heartbeats: [String: InstanceHeartbeat]?) -> Bool { !(heartbeats?.isEmpty ?? true) }

    /// Why `instance` is stuck, or nil. With a heartbeat: it is older than `stuckAfter` (the daemon beats every
    /// interval while tasks run, however long they take), or a command has run past its `taskTimeout` plus
    /// `taskGrace` (its download and upload are not the command's time), or the daemon stopped (a dead end that
    /// kept the instance up) `stuckAfter` ago. Without one, while other workers beat: the instance was launched
    /// `stuckAfter` ago and its daemon never wrote to the ledger. `ledgerInUse` false: never stuck for want of a
    /// heartbeat.
    public func stuckReason(
        _ instance: EC2Instance?, heartbeat: InstanceHeartbeat?, now: Double, ledgerInUse: Bool = true
    ) -> String? {
        guard let heartbeat else {
            guard ledgerInUse,
                let launched = instance?.launchTime.flatMap({ CivilTime.parseISO8601($0) }).map(Double.init),
                now - launched >= stuckAfter
            else { return nil }
            return "no heartbeat since its launch \(Int(now - launched)) s ago"
        }
        let beat = heartbeat.updatedEpoch ?? heartbeat.lastProgressEpoch ?? now
        if heartbeat.state == "stopped" {
            guard now - beat >= stuckAfter else { return nil }
            return "its daemon stopped \(Int(now - beat)) s ago (\(heartbeat.stopReason ?? "no reason given"))"
        }
        if now - beat >= stuckAfter { return "no heartbeat for \(Int(now - beat)) s" }
        if heartbeat.runningTasks > 0, let timeout = heartbeat.taskTimeout,
            let started = heartbeat.oldestTaskStartedEpoch,
            now - started > timeout + taskGrace
        {
            return "a task has run \(Int(now - started)) s, past its taskTimeout of \(Int(timeout)) s"
        }
        return nil
    }

    /// Whether the fleet may stop now for want of work: after its work drained (`drainedFor`), or, never having
    /// had any, after `stopIdleAfter` when the operator named one; never before the first work otherwise.
    public func fleetStopIsDue(_ memory: Memory, now: Double) -> Bool {
        guard !follow, let drained = memory.drainedSince else { return false }
        if memory.sawWork { return now - drained >= drainedFor }
        guard let idle = stopIdleAfter else { return false }
        return now - (memory.watchingSince ?? drained) >= idle
    }

    public func decide(_ snapshot: Snapshot, memory: inout Memory) -> [Termination] {
        let queue = snapshot.queue
        if memory.watchingSince == nil { memory.watchingSince = snapshot.now }
        // The ledger remembers work this controller did not see (it started, or started again, after the drain).
        if snapshot.heartbeats?.values.contains(where: { $0.tasksDone + $0.tasksFailed > 0 }) == true {
            memory.sawWork = true
        }
        if queue.total == 0 {
            let since = memory.drainedSince ?? snapshot.now
            memory.drainedSince = since
            if follow { return scaleIn(snapshot, quietFor: snapshot.now - since) }
            guard fleetStopIsDue(memory, now: snapshot.now) else { return [] }
            // Drained for the interval, not one reading of zero (a pause between enqueue's chunks).
            if memory.sawWork {
                memory.drainedAfterWork = true
                let drained = Int(snapshot.now - since)
                return snapshot.instances.map {
                    Termination(instanceID: $0.instanceID, reason: "the queue has been drained for \(drained) s")
                }
            }
            let idle = Int(snapshot.now - (memory.watchingSince ?? since))
            return snapshot.instances.map {
                Termination(
                    instanceID: $0.instanceID, reason: "the queue has had no work for \(idle) s (--stop-idle-after)")
            }
        }
        memory.drainedSince = nil
        memory.sawWork = true
        guard let heartbeats = snapshot.heartbeats else { return [] }
        let inUse = Self.ledgerInUse(heartbeats)
        return snapshot.instances.compactMap { instance in
            guard
                let why = stuckReason(
                    instance, heartbeat: heartbeats[instance.instanceID], now: snapshot.now, ledgerInUse: inUse)
            else { return nil }
            return Termination(
                instanceID: instance.instanceID,
                reason: "\(why), while \(queue.visible) messages wait and \(queue.inFlight) are in flight")
        }
    }

    /// Following the queue, after `quietPeriod` with nothing visible, in flight or delayed: the instances above
    /// `minimum` that are idle, the youngest first. Idle by the heartbeat where the ledger is in use (no task
    /// running: the queue's in-flight count is approximate, and a busy worker must finish); without a ledger, by
    /// the queue alone, which holds no message in flight.
    func scaleIn(_ snapshot: Snapshot, quietFor: Double) -> [Termination] {
        guard quietFor >= quietPeriod, snapshot.instances.count > minimum else { return [] }
        let inUse = Self.ledgerInUse(snapshot.heartbeats)
        let idle = snapshot.instances.filter { instance in
            guard inUse else { return true }
            guard let beat = snapshot.heartbeats?[instance.instanceID] else { return true }
            // A heartbeat older than `stuckAfter` is a worker that stopped beating: nothing it shows holds.
            if snapshot.now - (beat.updatedEpoch ?? 0) >= stuckAfter { return true }
            // Busy: a task running, or a message received within the quiet period (its task may have begun since
            // the last heartbeat).
            return beat.runningTasks == 0 && snapshot.now - (beat.lastReceiveEpoch ?? 0) >= quietPeriod
        }
        let busy = snapshot.instances.count - idle.count
        let leaving = max(0, snapshot.instances.count - max(minimum, busy))
        let youngestFirst = idle.sorted { ($0.launchTime ?? "", $0.instanceID) > ($1.launchTime ?? "", $1.instanceID) }
        return youngestFirst.prefix(min(leaving, idle.count)).map {
            Termination(
                instanceID: $0.instanceID,
                reason: "the queue has been quiet for \(Int(quietFor)) s; idle, above --min \(minimum)")
        }
    }

    /// Why launches stop now for the failure rate: more than `maxFailureRate` of the fleet's last `failureWindow`
    /// tasks failed (`InstanceHeartbeat.recentFailures`). Nil without a limit, a ledger, or enough tasks.
    ///
    /// Only tasks that ended since `since` (the controller's first look) count: heartbeats outlive their workers,
    /// and the failures that stopped an earlier controller must not stop the one started after the fix.
    public func failureBrake(_ snapshot: Snapshot, since: Double = 0) -> String? {
        guard let maxFailureRate, let heartbeats = snapshot.heartbeats,
            let recent = InstanceHeartbeat.recentFailures(Array(heartbeats.values), over: failureWindow, since: since),
            Double(recent.failed) > maxFailureRate * Double(recent.of)
        else { return nil }
        return
            "\(recent.failed) of the last \(recent.of) tasks failed, more than --max-failure-rate \(Self.percent(maxFailureRate))"
    }

    /// Notes whether launches stop for the failure rate this round; returns the line to log when that changed. A
    /// round without heartbeats (the ledger not read) changes nothing.
    public func noteFailureRate(_ snapshot: Snapshot, memory: inout Memory) -> String? {
        guard maxFailureRate != nil, snapshot.heartbeats != nil else { return nil }
        let brake = failureBrake(snapshot, since: memory.watchingSince ?? snapshot.now)
        defer { memory.braked = brake }
        if let brake, memory.braked == nil { return "launches stop: \(brake)" }
        if brake == nil, memory.braked != nil {
            return "launches resume: the failure rate is back at or under --max-failure-rate"
        }
        return nil
    }

    static func percent(_ share: Double) -> String {
        let tenths = (share * 1000).rounded() / 10
        return (tenths == tenths.rounded() ? "\(Int(tenths))" : "\(tenths)") + " %"
    }

    /// Notes which of the instances this controller launched are gone, and how. Judged only with heartbeats (a
    /// ledger): without them a worker that left on its own (a drain, the tail, an interruption) looks the same as
    /// one that never booted. A launched instance gone young and never heard from failed, and so did one the
    /// controller retired because it was never heard from (a worker that cannot beat would otherwise be launched
    /// and retired forever); a newly heard-from one shows the launches work and starts the count again. An id that
    /// DescribeInstances has not listed yet is not gone until `listingLag` has passed. Returns the ids that failed.
    public func noteDepartures(
        _ snapshot: Snapshot, terminatedHere: Set<String>, memory: inout Memory, ignoring: Set<String> = []
    ) -> [String] {
        let alive = Set(snapshot.instances.map(\.instanceID))
        memory.listed.formUnion(alive.intersection(memory.launched.keys))
        // An empty ledger is no ledger: departures cannot be judged without anyone's heartbeat.
        let heartbeats = Self.ledgerInUse(snapshot.heartbeats) ? snapshot.heartbeats : nil
        for id in memory.launched.keys.sorted() where heartbeats?[id] != nil && !memory.heardFrom.contains(id) {
            memory.heardFrom.insert(id)
            memory.failedLaunches = 0
        }
        var failed: [String] = []
        for (id, launchedAt) in memory.launched.sorted(by: { $0.value < $1.value }) where !alive.contains(id) {
            if !memory.listed.contains(id) && snapshot.now - launchedAt < listingLag { continue }
            memory.launched[id] = nil
            memory.listed.remove(id)
            defer { memory.heardFrom.remove(id) }
            guard heartbeats != nil, !memory.heardFrom.contains(id), !ignoring.contains(id) else { continue }
            if terminatedHere.contains(id) || snapshot.now - launchedAt < youngDeath {
                memory.failedLaunches += 1
                failed.append(id)
            }
        }
        return failed
    }

    /// How many instances to launch now: up to `target`, counting those alive and not being terminated (and those
    /// just launched that DescribeInstances does not list yet), while messages wait to be taken, and no more than
    /// wait; none once the queue has drained after work, and none past `maxLaunches` in all.
    public func launch(_ snapshot: Snapshot, terminating: Set<String>, memory: Memory) -> Launch? {
        guard let target, !memory.drainedAfterWork, memory.braked == nil else { return nil }
        let listed = Set(snapshot.instances.map(\.instanceID))
        let unlisted = memory.launched.filter { id, at in !listed.contains(id) && snapshot.now - at < listingLag }
        let alive = snapshot.instances.filter { !terminating.contains($0.instanceID) }.count + unlisted.count
        var count = min(target - alive, snapshot.queue.visible)
        // Following the queue, `minimum` stay up whether or not work waits.
        let belowMinimum = follow && alive < minimum
        if belowMinimum { count = max(count, minimum - alive) }
        if let maxLaunches { count = min(count, maxLaunches - memory.launchedInAll) }
        guard count > 0 else { return nil }
        return Launch(
            count: count,
            reason: snapshot.queue.visible == 0 && belowMinimum
                ? "\(alive) instances alive, below --min \(minimum)"
                : "\(alive) of \(target) instances alive while \(snapshot.queue.visible) messages wait")
    }

    /// Whether launches have stopped at `maxLaunches` while the fleet is below `target` and work waits.
    public func launchBudgetSpent(_ snapshot: Snapshot, memory: Memory) -> Bool {
        guard let target, let maxLaunches, !memory.drainedAfterWork, snapshot.queue.visible > 0 else { return false }
        return memory.launchedInAll >= maxLaunches && snapshot.instances.count < target
    }
}

/// `parallelizer controller`: watches the queue and the instances tagged `parallelizer:queue` = the queue URL;
/// terminates stuck ones (with a ledger), launches replacements up to `target` from the queue's launch template
/// while messages wait, and stops the whole fleet once the queue has been drained for an interval. Only tagged
/// instances are ever listed, so only they can be touched; every instance it launches carries the tag.
public struct Controller: Sendable {
    /// Where replacements come from.
    public enum Market: String, Sendable, CaseIterable {
        /// RunInstances from the launch template.
        case onDemand = "on-demand"
        /// An instant EC2 Fleet of spot instances from the launch template, across `instanceTypes` × `subnets`,
        /// capacity-optimized.
        case spot
        /// The Auto Scaling group `launch --market asg` made replaces instances itself: the controller launches none.
        case asg
    }

    public struct Options: Sendable {
        public var queueURL: String
        public var ledgerTable: String?
        public var stuckAfter: Double = 900
        public var interval: Double = 30
        public var dryRun = false
        /// Keep watching after the fleet is gone (otherwise exit then).
        public var keepRunning = false
        /// Instances to keep alive while work waits; nil launches none.
        public var target: Int?
        public var maxLaunches: Int?
        public var market: Market = .onDemand
        /// The launch template replacements come from: `fleet launch` records one per queue.
        public var launchTemplate: String
        public var instanceTypes: [String] = []
        public var subnets: [String] = []
        public var taskGrace: Double = 300
        /// Stop a fleet whose queue has never had work after this long; nil: never before the first work.
        public var stopIdleAfter: Double?
        /// Follow the queue (`FleetPolicy.follow`): between `minimum` and `target` instances, for good.
        public var follow = false
        public var minimum = 0
        public var quietPeriod: Double = 300
        public var maxFailureRate: Double?
        public var failureWindow = 20
        /// Run once the run is over (`CompletionHook`).
        public var onComplete: CompletionHook?
        public init(queueURL: String) {
            self.queueURL = queueURL
            self.launchTemplate = Controller.launchTemplateName(queueURL: queueURL)
        }
    }

    /// The name `fleet launch` gives a queue's launch template (and Auto Scaling group).
    public static func launchTemplateName(queueURL: String) -> String {
        "parallelizer-" + LedgerSchema.queueName(queueURL)
    }

    public static let tag = "parallelizer:queue"

    let options: Options
    let context: AWSContext

    public init(options: Options, context: AWSContext) {
        self.options = options
        self.context = context
    }

    /// Runs until the fleet is gone after the drain (or forever with `keepRunning`); returns the exit code.
    public func run(logger: Logger) async -> Int32 {
        let region = SQSClient.region(ofQueueURL: options.queueURL)
        let sqs = SQSClient(context: context)
        let ec2: EC2Client
        let autoscaling: AutoScalingClient
        var dynamo: DynamoDBClient?
        do {
            ec2 = try EC2Client(context: context, region: region)
            autoscaling = try AutoScalingClient(context: context, region: region)
            if options.ledgerTable != nil { dynamo = try DynamoDBClient(context: context, region: region) }
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            return 1
        }
        var policy = FleetPolicy(stuckAfter: options.stuckAfter, drainedFor: options.interval)
        policy.taskGrace = options.taskGrace
        policy.target = options.market == .asg ? nil : options.target
        policy.maxLaunches = options.maxLaunches
        policy.stopIdleAfter = options.stopIdleAfter
        policy.follow = options.follow
        policy.minimum = options.minimum
        policy.quietPeriod = options.quietPeriod
        policy.maxFailureRate = options.maxFailureRate
        policy.failureWindow = options.failureWindow
        logger.notice(
            "controller started",
            metadata: [
                "queue": "\(options.queueURL)", "ledger": "\(options.ledgerTable ?? "none")",
                "stuck_after_s": "\(Int(options.stuckAfter))", "interval_s": "\(options.interval)",
                "dry_run": "\(options.dryRun)", "target": "\(options.target.map(String.init) ?? "none")",
                "market": "\(options.market.rawValue)", "launch_template": "\(options.launchTemplate)",
                "follow": "\(options.follow ? "\(options.minimum)...\(options.target ?? 0)" : "no")",
                "max_failure_rate":
                    "\(options.maxFailureRate.map { "\(FleetPolicy.percent($0)) of \(options.failureWindow)" } ?? "none")",
                "on_complete": "\(options.onComplete?.command ?? "none")",
            ])
        if options.ledgerTable == nil {
            logger.notice(
                "no ledger table: stuck instances cannot be told apart, so only the drained-queue stop applies")
        }
        var memory = FleetPolicy.Memory()
        var terminated: Set<String> = []
        // Of those, the ones stopped at the drain: never failed launches, whatever their age.
        var stoppedAtDrain: Set<String> = []
        // Whether the completion hook has been seen to (run, or found run) by this controller.
        var hookSeen = false
        // The policy decides (`FleetPolicy`: what to terminate, what to launch, when to stop); the loop reads the
        // fleet, carries the decisions out, and logs them.
        func stop(_ verdict: FleetPolicy.Verdict, error: AWSError? = nil) -> Int32? {
            guard case .stop(let status, let why) = verdict else { return nil }
            logger.critical("\(why)", metadata: error.map { ["error": "\($0)"] } ?? [:])
            return status
        }
        while !Task.isCancelled {
            do {
                let counts = try await sqs.messageCounts(queueURL: options.queueURL, logger: logger)
                let instances = try await ec2.describeInstances(
                    filters: [
                        ("tag:\(Self.tag)", [options.queueURL]), ("instance-state-name", ["pending", "running"]),
                    ],
                    logger: logger)
                var heartbeats: [String: InstanceHeartbeat]?
                if let table = options.ledgerTable, let dynamo {
                    do {
                        let items = try await InstanceHeartbeat.read(
                            table: table, queueURL: options.queueURL,
                            client: dynamo, logger: logger)
                        heartbeats = Dictionary(items.map { ($0.instanceID, $0) }, uniquingKeysWith: { a, _ in a })
                        _ = policy.afterLedgerRead(nil, table: table, memory: &memory)
                    } catch {
                        // Without heartbeats this round, judge no one stuck: a ledger outage must not kill workers.
                        // One that waiting cannot fix (a refusal, a missing table) ends the controller, as any
                        // other, instead of a warning a round.
                        // (An error that may pass leaves the count of refusals as it was.)
                        if let problem = error.setupProblem,
                            let status = stop(
                                policy.afterLedgerRead(problem, table: table, memory: &memory), error: error)
                        {
                            return status
                        }
                        logger.warning(
                            "cannot read the ledger; no stuck-instance decisions this round",
                            metadata: ["error": "\(error)"])
                    }
                }
                // Launched but not in the listing: DescribeInstances lags RunInstances, so such an id counts as alive
                // for a while, unless asking for it by id shows it gone already (an instance that died at once).
                let listedNow = Set(instances.map(\.instanceID))
                let unlisted = memory.launched.keys.filter { !listedNow.contains($0) && !memory.listed.contains($0) }
                if !unlisted.isEmpty,
                    let described = try? await ec2.describeInstances(instanceIDs: unlisted.sorted(), logger: logger)
                {
                    for instance in described where !["pending", "running"].contains(instance.state) {
                        memory.listed.insert(instance.instanceID)
                    }
                }
                let snapshot = FleetPolicy.Snapshot(
                    now: Date().timeIntervalSince1970, queue: counts, instances: instances,
                    heartbeats: heartbeats)
                let decisions = policy.decide(snapshot, memory: &memory)
                if let change = policy.noteFailureRate(snapshot, memory: &memory) {
                    logger.notice("\(change)", metadata: ["max_failure_rate": "\(options.maxFailureRate ?? 0)"])
                }
                let failedLaunches = policy.noteDepartures(
                    snapshot, terminatedHere: terminated.subtracting(stoppedAtDrain), memory: &memory,
                    ignoring: stoppedAtDrain)
                for id in failedLaunches {
                    logger.warning(
                        "a launched instance is gone before its worker was heard from",
                        metadata: ["instance": "\(id)", "launches.failed_in_a_row": "\(memory.failedLaunches)"])
                }
                if policy.launchBudgetSpent(snapshot, memory: memory) && !memory.budgetNoted {
                    memory.budgetNoted = true
                    logger.notice(
                        "no more launches: --max instances have been launched in all",
                        metadata: ["launched": "\(memory.launchedInAll)"])
                }
                let verdict = policy.afterDepartures(snapshot, memory: memory, launchTemplate: options.launchTemplate)
                if let status = stop(verdict) { return status }
                let launch = policy.launch(
                    snapshot, terminating: Set(decisions.map(\.instanceID)).union(terminated), memory: memory)
                logger.info(
                    "controller round",
                    metadata: [
                        "queue.visible": "\(counts.visible)", "queue.in_flight": "\(counts.inFlight)",
                        "queue.delayed": "\(counts.delayed)", "instances": "\(instances.count)",
                        "decisions": "\(decisions.count + (launch == nil ? 0 : 1))",
                    ])
                for decision in decisions {
                    logger.notice(
                        options.dryRun ? "would terminate instance (dry run)" : "terminating instance",
                        metadata: ["instance": "\(decision.instanceID)", "reason": "\(decision.reason)"])
                }
                // decide() forgets drainedSince whenever work is back, so this is the same rule it just applied.
                let fleetStop = policy.fleetStopIsDue(memory, now: snapshot.now)
                if fleetStop {
                    // First, so that the groups do not replace the instances about to be terminated.
                    await scaleGroupsToZero(autoscaling, logger: logger)
                }
                let ids = decisions.map(\.instanceID).filter { !terminated.contains($0) }
                // Stopped at the drain, or retired idle after a quiet spell: never failed launches, whatever their age.
                if fleetStop || (options.follow && counts.total == 0) { stoppedAtDrain.formUnion(ids) }
                if !options.dryRun && !ids.isEmpty {
                    _ = try await ec2.terminateInstances(ids, logger: logger)
                }
                terminated.formUnion(ids)
                if let launch {
                    logger.notice(
                        options.dryRun ? "would launch instances (dry run)" : "launching instances",
                        metadata: [
                            "count": "\(launch.count)", "reason": "\(launch.reason)",
                            "market": "\(options.market.rawValue)",
                        ])
                    if !options.dryRun {
                        // A launch that fails does not end the round: retiring stuck workers and stopping the fleet
                        // at the drain do not wait on it.
                        do {
                            let started = try await launchInstances(launch.count, ec2: ec2, logger: logger)
                            for id in started { memory.launched[id] = snapshot.now }
                            memory.launchedInAll += started.count
                            memory.launchWaits = 0
                            logger.notice(
                                "launched instances",
                                metadata: [
                                    "instances": "\(started.joined(separator: ","))", "count": "\(started.count)",
                                ])
                        } catch {
                            // A refusal or a template EC2 rejects is a failed launch: three in a row end the
                            // controller. No capacity or throttling may pass: warned of, and tried next round.
                            if Self.launchErrorIsPermanent(error) {
                                memory.failedLaunches += 1
                                logger.error(
                                    "launch failed",
                                    metadata: [
                                        "error": "\(error)", "launches.failed_in_a_row": "\(memory.failedLaunches)",
                                    ])
                            } else {
                                memory.launchWaits += 1
                                if memory.launchWaits == 1 || memory.launchWaits % 10 == 0 {
                                    logger.warning(
                                        "launch failed for now (no capacity, or throttled); trying again next round",
                                        metadata: ["error": "\(error)", "launches.waited": "\(memory.launchWaits)"])
                                }
                            }
                        }
                    }
                }
                let fleetGone =
                    fleetStop && (options.dryRun || instances.allSatisfy { terminated.contains($0.instanceID) })
                if fleetGone, !hookSeen, let hook = options.onComplete, !options.dryRun {
                    hookSeen = true
                    var run = CompletionHook.Run(queueURL: options.queueURL, instancesStopped: terminated.count)
                    // The run the hook is for: a read that fails is no reason to guess (a guessed run could run the
                    // hook twice, or not for this run).
                    do {
                        run.manifest = try await sqs.runManifest(queueURL: options.queueURL, logger: logger)
                    } catch {
                        logger.critical(
                            "cannot read the run from the queue's tags for the completion hook (sqs:ListQueueTags); not run",
                            metadata: ["error": "\(error)"])
                        return error.setupProblem != nil ? 2 : 1
                    }
                    // A count for the hook, not a condition of it (the run was read above: not again).
                    if let attributes = try? await sqs.getQueueAttributes(queueURL: options.queueURL, logger: logger),
                        let found = try? await QueueStatus.deadLetters(of: attributes, sqs: sqs, logger: logger)
                    {
                        run.deadLetters = found.count
                    }
                    if let heartbeats { run.count(Array(heartbeats.values)) }
                    let ledger = dynamo.flatMap { client in options.ledgerTable.map { (client: client, table: $0) } }
                    switch await hook.fire(run, ledger: ledger, logger: logger) {
                    case .done: break
                    case .failed(let why):
                        logger.critical("\(why)")
                        return 2
                    case .notNow(let why):
                        logger.critical("\(why)")
                        return 1
                    }
                }
                if fleetGone && !options.keepRunning {
                    logger.notice(
                        memory.sawWork
                            ? "controller done: the queue is drained and the fleet is stopped"
                            : "controller done: the queue had no work for --stop-idle-after and the fleet is stopped",
                        metadata: ["instances.terminated": "\(terminated.count)", "dry_run": "\(options.dryRun)"])
                    return 0
                }
                policy.afterRound(memory: &memory)
            } catch {
                if let status = stop(policy.afterFailedRound(error.setupProblem, memory: &memory), error: error) {
                    return status
                }
                logger.warning("controller round failed; trying again next interval", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(nanoseconds: UInt64(max(0.2, min(options.interval, 30)) * 1e9))
        }
        return 0
    }

    /// Starts `count` workers from the launch template on the market chosen (`FleetLauncher`, which `fleet launch`
    /// starts the first ones with), tagged as the controller's. Returns the ids started.
    func launchInstances(_ count: Int, ec2: EC2Client, logger: Logger) async throws(AWSError) -> [String] {
        let market: FleetLauncher.Market
        switch options.market {
        case .asg: return []
        case .spot: market = .spot
        case .onDemand: market = .onDemand
        }
        let launcher = FleetLauncher(
            ec2: ec2, queueURL: options.queueURL, launchTemplate: options.launchTemplate, market: market,
            instanceTypes: options.instanceTypes, subnets: options.subnets)
        return try await launcher.launch(count, extraTags: ["parallelizer:launched-by": "controller"], logger: logger)
    }

    /// Whether a launch call's error is one a next round would meet again: a refusal, or a request EC2 rejects
    /// (a missing or bad launch template, a bad parameter). No capacity, limits that may free up, and throttling are
    /// not.
    static func launchErrorIsPermanent(_ error: AWSError) -> Bool {
        if error.setupProblem != nil { return true }
        let code = error.code
        return code.hasPrefix("InvalidLaunchTemplate") || code.hasPrefix("InvalidParameter")
            || code.hasPrefix("InvalidAMIID") || code.hasPrefix("InvalidSubnetID") || code.hasPrefix("InvalidGroup")
            || code == "MissingParameter" || code == "UnauthorizedOperation" || code == "InvalidInstanceType"
            || code == "InvalidKeyPair.NotFound"
    }

    /// Sets every Auto Scaling group tagged with the queue to zero instances (`fleet launch --market asg` makes
    /// one). A fleet without groups, or credentials without Auto Scaling rights, only costs a warning: the
    /// instances themselves are still stopped.
    func scaleGroupsToZero(_ autoscaling: AutoScalingClient, logger: Logger) async {
        do {
            for group in try await autoscaling.groups(taggedWith: Self.tag, value: options.queueURL, logger: logger)
            where group.desiredCapacity > 0 {
                logger.notice(
                    options.dryRun
                        ? "would scale the Auto Scaling group to 0 (dry run)" : "scaling the Auto Scaling group to 0",
                    metadata: ["group": "\(group.name)", "desired_capacity": "\(group.desiredCapacity)"])
                if !options.dryRun {
                    try await autoscaling.setDesiredCapacity(group: group.name, to: 0, logger: logger)
                }
            }
        } catch {
            logger.warning(
                "cannot scale the queue's Auto Scaling groups; they may replace stopped instances",
                metadata: ["error": "\(error)"])
        }
    }
}
