import AWSCore
import AWSServices
import Logging
import TaskLedger

/// Progress of a run as the queue and the output bucket show it.
public struct QueueStatus: Sendable, Equatable, Codable {
    public var queueURL: String
    public var visible: Int
    public var inFlight: Int
    public var delayed: Int
    /// Visible messages in the dead-letter queue named by the redrive policy, when there is one.
    public var deadLetterQueueURL: String?
    public var deadLetters: Int?
    /// Counted only when asked (`count`): a listing costs a call per 1,000 objects.
    public var outputs: Int?
    public var failureRecords: Int?
    /// Whether any failure record exists (one listing call of at most one key), when the results bucket is known.
    public var failureRecordsFound: Bool?
    /// The run `enqueue` put in the queue (`RunManifest`), and how far it got.
    public var run: RunManifest?
    public var progress: RunProgress?
    /// From the ledger's heartbeats, when a ledger table was given.
    public var fleet: FleetStatus?

    /// The listing prefix for failure records.
    static let failedRecordsPrefix = "_failed/"

    /// Reads the queue's counts, its run manifest, its dead-letter queue's count and, with `output` (the results'
    /// `s3://bucket/prefix`), whether any `_failed/` record exists at the bucket's top, where the daemon writes
    /// them: a handful of calls, whatever the run's size. With `count`, it also lists and counts the outputs and the
    /// records.
    public static func read(
        queueURL: String, output: S3URI?, count: Bool = false, context: AWSContext,
        logger: Logger
    ) async throws(AWSError) -> QueueStatus {
        let sqs = SQSClient(context: context)
        let a = try await sqs.getQueueAttributes(queueURL: queueURL, logger: logger)
        let counts = SQSClient.MessageCounts(attributes: a)
        var status = QueueStatus(
            queueURL: queueURL, visible: counts.visible, inFlight: counts.inFlight,
            delayed: counts.delayed)
        do {
            status.run = try await sqs.runManifest(queueURL: queueURL, logger: logger)
        } catch {
            // Progress is a view: a denied, throttled or unknown ListQueueTags leaves it out, not the status.
            logger.notice(
                "cannot read the queue's tags (sqs:ListQueueTags): no run progress", metadata: ["error": "\(error)"])
        }
        if let (dlq, count) = try await deadLetters(of: a, sqs: sqs, logger: logger) {
            status.deadLetterQueueURL = dlq
            status.deadLetters = count
        }
        if let output {
            let s3 = try S3Client(context: context)
            let probe = try await s3.listObjectsV2(
                bucket: output.bucket, prefix: Self.failedRecordsPrefix, maxKeys: 1, logger: logger)
            status.failureRecordsFound = !probe.objects.isEmpty
        }
        if let output, count {
            // Failure records are written at the output bucket's top (`_failed/`), whatever the `outputPrefix`;
            // the daemon's own objects (`_parallelizer/`) are neither outputs nor records.
            var outputs = 0, failures = 0
            let s3 = try S3Client(context: context)
            try await s3.listAll(bucket: output.bucket, prefix: output.key, logger: logger) { page throws(AWSError) in
                for object in page {
                    let relative = object.key.dropFirst(output.key.count)
                    if relative.hasPrefix("_parallelizer/")
                        || output.key.isEmpty && (relative.hasPrefix("_failed/") || relative.hasPrefix("_logs/"))
                    {
                        continue
                    }
                    outputs += 1
                }
            }
            try await s3.listAll(bucket: output.bucket, prefix: Self.failedRecordsPrefix, logger: logger) {
                page throws(AWSError) in
                failures += page.count
            }
            status.outputs = outputs
            status.failureRecords = failures
        }
        return status
    }

    /// The dead-letter queue the redrive policy in `attributes` names, and how many messages it holds (visible and
    /// hidden: a dead letter someone is looking at is still one); nil without a redrive policy.
    public static func deadLetters(
        of attributes: [String: String], sqs: SQSClient, logger: Logger
    ) async throws(AWSError) -> (queueURL: String, count: Int)? {
        guard let policy = RedrivePolicy(attributes: attributes) else { return nil }
        let dlq = try await sqs.queueURL(ofARN: policy.deadLetterTargetARN, logger: logger)
        return (dlq, try await sqs.messageCounts(queueURL: dlq, logger: logger).total)
    }

    /// Why `status --check` fails: dead letters, or failure records; empty when neither.
    public var problems: [String] {
        var found: [String] = []
        if let deadLetters, deadLetters > 0 { found.append("\(deadLetters) messages in the dead-letter queue") }
        if let failureRecords, failureRecords > 0 {
            found.append("\(failureRecords) failure records")
        } else if failureRecordsFound == true {
            found.append("failure records under _failed/")
        }
        return found
    }

    /// Lines for a person.
    public var text: String {
        var lines = [
            "queue       \(queueURL)",
            "visible     \(visible)", "in flight   \(inFlight)", "delayed     \(delayed)",
        ]
        if let deadLetters { lines.append("dead letter \(deadLetters)") }
        if let progress {
            lines.insert("progress    \(progress.bar)", at: 1)
        }
        if let outputs { lines.append("outputs     \(outputs)") }
        if let failureRecords {
            lines.append("failed      \(failureRecords)")
        } else if let failureRecordsFound {
            lines.append(
                "failed      \(failureRecordsFound ? "records under _failed/ (parallelizer failures lists them)" : "none")"
            )
        }
        if let fleet { lines.append(fleet.text) }
        return lines.joined(separator: "\n")
    }
}

/// The fleet as the ledger's heartbeat items show it: per instance, tasks done, the last completion and whether it
/// looks stuck; across the fleet, task durations (p50/p95 of recent tasks), the recent rate and the ETA to drain.
public struct FleetStatus: Sendable, Equatable, Codable {
    public struct Instance: Sendable, Equatable, Codable {
        public var instanceID: String
        public var state: String
        public var tasksDone: Int
        public var tasksFailed: Int
        public var lastCompletionAgoSeconds: Int?
        public var runningTasks: Int
        /// Why the controller would retire it (nil: it would not).
        public var stuckReason: String?
        public var looksStuck: Bool { stuckReason != nil }
    }

    public var instances: [Instance]
    public var durationP50Seconds: Double?
    public var durationP95Seconds: Double?
    /// Tasks completed per minute across the fleet, over the last `window` seconds.
    public var tasksPerMinute: Double
    public var etaSeconds: Int?
    /// With prices: US dollars spent so far (each instance from its daemon's start to its last heartbeat, or now),
    /// and to finish (what remains, at the recent mean task time, spread over the running fleet's slots at its
    /// hourly price). Nil when an instance's type has no price (`unpricedTypes`).
    public var costSoFar: Double?
    public var costToFinish: Double?
    public var unpricedTypes: [String] = []
    /// Of the fleet's last `recentTasks` tasks (at most `failureWindow`), how many failed: what
    /// `controller --max-failure-rate` judges by.
    public var recentFailed: Int?
    public var recentTasks: Int?

    /// The tasks the failure rate is shown over, as `controller --over`'s default.
    public static let failureWindow = 20

    /// The recent-rate window.
    public static let window = 300.0

    /// Pure: `now` and the queue's counts are parameters.
    public static func summarize(
        _ heartbeats: [InstanceHeartbeat], queue: SQSClient.MessageCounts, now: Double,
        stuckAfter: Double, prices: [String: Double] = [:]
    ) -> FleetStatus {
        var rate = 0.0  // per second
        for beat in heartbeats {
            let recent = beat.recentCompletions.filter { now - $0 <= window }
            guard let oldest = recent.min() else { continue }
            // A full list may hold only part of the window: then its own span is the time it covers.
            let full = beat.recentCompletions.count >= 50 && recent.count == beat.recentCompletions.count
            rate += Double(recent.count) / (full ? max(1, now - oldest) : window)
        }
        let durations = heartbeats.flatMap(\.recentDurations).sorted()
        func percentile(_ p: Double) -> Double? {
            guard !durations.isEmpty else { return nil }
            // Nearest rank: the smallest value with at least p of the values at or below it.
            let index = Int((p * Double(durations.count)).rounded(.up)) - 1
            return durations[min(max(index, 0), durations.count - 1)]
        }
        // The controller's own rule, so that what status flags is what the controller would retire.
        let policy = FleetPolicy(stuckAfter: stuckAfter, drainedFor: 0)
        let instances = heartbeats.sorted { $0.instanceID < $1.instanceID }.map { beat in
            Instance(
                instanceID: beat.instanceID, state: beat.state, tasksDone: beat.tasksDone,
                tasksFailed: beat.tasksFailed,
                lastCompletionAgoSeconds: beat.lastCompletionEpoch.map { Int(now - $0) },
                runningTasks: beat.runningTasks,
                // Not a stopped daemon: whether its instance is still up, only the controller (which lists the
                // instances) can tell.
                stuckReason: queue.total > 0 && beat.state != "stopped"
                    ? policy.stuckReason(nil, heartbeat: beat, now: now) : nil)
        }
        let remaining = queue.total
        var status = FleetStatus(
            instances: instances, durationP50Seconds: percentile(0.5), durationP95Seconds: percentile(0.95),
            tasksPerMinute: (rate * 60 * 10).rounded() / 10,
            etaSeconds: remaining == 0 ? 0 : rate > 0 ? Int((Double(remaining) / rate).rounded()) : nil)
        let known = heartbeats.reduce(0) { $0 + $1.recentCompletions.count + $1.recentFailures.count }
        if let recent = InstanceHeartbeat.recentFailures(heartbeats, over: min(known, failureWindow)) {
            status.recentFailed = recent.failed
            status.recentTasks = recent.of
        }
        if !prices.isEmpty {
            status.cost(
                heartbeats, remaining: remaining, durations: durations, now: now, stale: stuckAfter, prices: prices)
        }
        return status
    }

    /// Fills in the costs from the heartbeats' instance types and `prices` (USD per hour by type). An estimate:
    /// each daemon's run from its start to now (to its last heartbeat once stopped, or once that is `stale`: an
    /// instance that died without a word), not its instance's boot and shutdown; every run the ledger holds for the
    /// queue counts.
    mutating func cost(
        _ heartbeats: [InstanceHeartbeat], remaining: Int, durations: [Double], now: Double, stale: Double,
        prices: [String: Double]
    ) {
        unpricedTypes = Set(heartbeats.map { $0.instanceType ?? "unknown" }).filter { prices[$0] == nil }.sorted()
        guard unpricedTypes.isEmpty else { return }
        var spent = 0.0
        var hourly = 0.0
        var slots = 0
        for beat in heartbeats {
            let price = prices[beat.instanceType ?? "unknown"] ?? 0
            let alive = beat.state == "running" && now - (beat.updatedEpoch ?? now) < stale
            let end = alive ? now : (beat.updatedEpoch ?? now)
            spent += max(0, end - (beat.startedEpoch ?? end)) / 3600 * price
            if alive {
                hourly += price
                slots += max(1, beat.slots)
            }
        }
        costSoFar = (spent * 100).rounded() / 100
        if remaining == 0 {
            costToFinish = 0
        } else if slots > 0, !durations.isEmpty {
            let mean = durations.reduce(0, +) / Double(durations.count)
            let hours = Double(remaining) * mean / Double(slots) / 3600
            costToFinish = (hours * hourly * 100).rounded() / 100
        }
    }

    public var text: String {
        func seconds(_ value: Double?) -> String { value.map { String(($0 * 100).rounded() / 100) + " s" } ?? "-" }
        var lines = [
            "tasks/min   \(tasksPerMinute) (last \(Int(Self.window / 60)) min)",
            "duration    p50 \(seconds(durationP50Seconds)), p95 \(seconds(durationP95Seconds))",
            "eta         "
                + (etaSeconds.map { "\($0 / 3600)h \($0 % 3600 / 60)m \($0 % 60)s" }
                    ?? "unknown (no recent completions)"),
            "instances   \(instances.count)",
        ]
        if let recentFailed, let recentTasks {
            lines.insert(
                "failures    \(recentFailed) of the last \(recentTasks) tasks"
                    + " (\(FleetPolicy.percent(Double(recentFailed) / Double(recentTasks))))", at: 3)
        }
        if !unpricedTypes.isEmpty {
            lines.insert("cost        unknown: no --price for \(unpricedTypes.joined(separator: ", "))", at: 3)
        } else if let costSoFar {
            let finish = costToFinish.map { String(format2: $0) } ?? "unknown (no recent task times)"
            lines.insert("cost        $\(String(format2: costSoFar)) so far, $\(finish) to finish (estimate)", at: 3)
        }
        for i in instances {
            let last = i.lastCompletionAgoSeconds.map { "\($0) s ago" } ?? "never"
            lines.append(
                "  \(i.instanceID)  \(i.state)  running \(i.runningTasks)  done \(i.tasksDone)  failed \(i.tasksFailed)  last completion \(last)"
                    + (i.stuckReason.map { "  LOOKS STUCK: \($0)" } ?? ""))
        }
        return lines.joined(separator: "\n")
    }
}

extension String {
    /// A dollar amount with two decimals (FoundationEssentials has no `String(format:)`).
    init(format2 value: Double) {
        let cents = Int((value * 100).rounded())
        let fraction = cents % 100
        self = "\(cents / 100)." + (fraction < 10 ? "0" : "") + "\(fraction)"
    }
}
