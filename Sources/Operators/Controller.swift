import AWSCore
import AWSServices
import FoundationEssentials
import Logging
import TaskLedger

/// What the controller decides from one look at the fleet. Pure: the clock is a parameter, so every rule is tested
/// without waiting.
public struct FleetPolicy: Sendable {
    /// An instance that has completed no task for this long while work waits is stuck.
    public var stuckAfter: Double
    /// How long the queue must stay drained before the fleet is stopped.
    public var drainedFor: Double

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

    /// When the queue was first seen drained, carried from one look to the next.
    public struct Memory: Sendable, Equatable {
        public var drainedSince: Double?
        public init() {}
    }

    /// Seconds since `instance` last completed a task, or since it started (its daemon's start, else its launch)
    /// when it never has: a worker whose boot failed is stuck too.
    public static func idleSeconds(_ instance: EC2Instance, heartbeat: InstanceHeartbeat?, now: Double) -> Double? {
        let since =
            heartbeat?.lastProgressEpoch ?? instance.launchTime.flatMap { CivilTime.parseISO8601($0) }.map(Double.init)
        return since.map { now - $0 }
    }

    /// Whether the queue, seen drained since `memory.drainedSince`, has stayed so long enough to stop the fleet.
    public func fleetStopIsDue(_ memory: Memory, now: Double) -> Bool {
        memory.drainedSince.map { now - $0 >= drainedFor } ?? false
    }

    public func decide(_ snapshot: Snapshot, memory: inout Memory) -> [Termination] {
        let queue = snapshot.queue
        if queue.total == 0 {
            let since = memory.drainedSince ?? snapshot.now
            memory.drainedSince = since
            guard fleetStopIsDue(memory, now: snapshot.now) else { return [] }
            let drained = Int(snapshot.now - since)
            return snapshot.instances.map {
                Termination(instanceID: $0.instanceID, reason: "the queue has been drained for \(drained) s")
            }
        }
        memory.drainedSince = nil
        guard let heartbeats = snapshot.heartbeats, queue.visible > 0 else { return [] }
        return snapshot.instances.compactMap { instance in
            guard let idle = Self.idleSeconds(instance, heartbeat: heartbeats[instance.instanceID], now: snapshot.now),
                idle >= stuckAfter
            else { return nil }
            let what =
                heartbeats[instance.instanceID]?.lastCompletionEpoch == nil
                ? "no task completed since start"
                : "no task completed"
            return Termination(
                instanceID: instance.instanceID,
                reason: "\(what) for \(Int(idle)) s while \(queue.visible) messages wait")
        }
    }
}

/// `parallelizer controller`: watches the queue and the instances tagged `parallelizer:queue` = the queue URL,
/// terminates stuck ones (with a ledger) and the whole fleet once the queue has been drained for an interval. Only
/// tagged instances are ever listed, so only they can be touched.
public struct Controller: Sendable {
    public struct Options: Sendable {
        public var queueURL: String
        public var ledgerTable: String?
        public var stuckAfter: Double = 900
        public var interval: Double = 30
        public var dryRun = false
        /// Keep watching after the fleet is gone (otherwise exit then).
        public var keepRunning = false
        public init(queueURL: String) { self.queueURL = queueURL }
    }

    public static let tag = "parallelizer:queue"
    /// Rounds in a row that may fail (errors that may pass: the network, throttling) before the controller gives up.
    static let maxFailedRounds = 20
    /// Rounds in a row with the same permanent error (`setupProblem`) before the controller gives up: the daemon's
    /// dead-end rule, applied to rounds.
    static let sameErrorRounds = SetupProblem.repeatsBeforeDeadEnd

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
        let policy = FleetPolicy(stuckAfter: options.stuckAfter, drainedFor: options.interval)
        logger.notice(
            "controller started",
            metadata: [
                "queue": "\(options.queueURL)", "ledger": "\(options.ledgerTable ?? "none")",
                "stuck_after_s": "\(Int(options.stuckAfter))", "interval_s": "\(options.interval)",
                "dry_run": "\(options.dryRun)",
            ])
        if options.ledgerTable == nil {
            logger.notice(
                "no ledger table: stuck instances cannot be told apart, so only the drained-queue stop applies")
        }
        var memory = FleetPolicy.Memory()
        var terminated: Set<String> = []
        // Failed rounds in a row, and how many of them met the same set-up problem (a denied call, a queue gone).
        var failedRounds = 0
        var refused: (problem: SetupProblem, rounds: Int)?
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
                    } catch {
                        // Without heartbeats this round, judge no one stuck: a ledger outage must not kill workers.
                        logger.warning(
                            "cannot read the ledger; no stuck-instance decisions this round",
                            metadata: ["error": "\(error)"])
                    }
                }
                let snapshot = FleetPolicy.Snapshot(
                    now: Date().timeIntervalSince1970, queue: counts, instances: instances,
                    heartbeats: heartbeats)
                let decisions = policy.decide(snapshot, memory: &memory)
                logger.info(
                    "controller round",
                    metadata: [
                        "queue.visible": "\(counts.visible)", "queue.in_flight": "\(counts.inFlight)",
                        "queue.delayed": "\(counts.delayed)", "instances": "\(instances.count)",
                        "decisions": "\(decisions.count)",
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
                if !options.dryRun && !ids.isEmpty {
                    _ = try await ec2.terminateInstances(ids, logger: logger)
                }
                terminated.formUnion(ids)
                if fleetStop && !options.keepRunning
                    && (options.dryRun || instances.allSatisfy { terminated.contains($0.instanceID) })
                {
                    logger.notice(
                        "controller done: the queue is drained and the fleet is stopped",
                        metadata: ["instances.terminated": "\(terminated.count)", "dry_run": "\(options.dryRun)"])
                    return 0
                }
                failedRounds = 0
                refused = nil
            } catch {
                failedRounds += 1
                if let problem = error.setupProblem {
                    refused = (problem, refused?.problem == problem ? refused!.rounds + 1 : 1)
                } else {
                    refused = nil
                }
                if let refused, refused.rounds >= Self.sameErrorRounds {
                    logger.critical(
                        "controller cannot go on: the same error \(refused.rounds) rounds in a row, which waiting cannot fix; check the credentials and their permissions (README, controller)",
                        metadata: ["error": "\(error)"])
                    return 2
                }
                if failedRounds >= Self.maxFailedRounds {
                    logger.critical(
                        "controller cannot go on: \(failedRounds) rounds in a row failed",
                        metadata: ["error": "\(error)"])
                    return 1
                }
                logger.warning("controller round failed; trying again next interval", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(nanoseconds: UInt64(max(0.2, min(options.interval, 30)) * 1e9))
        }
        return 0
    }

    /// Sets every Auto Scaling group tagged with the queue to zero instances (`scripts/launch --market asg` makes
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
