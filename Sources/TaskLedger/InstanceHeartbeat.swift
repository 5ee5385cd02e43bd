import AWSCore
import AWSServices
import Logging

/// An instance's heartbeat item in the ledger, as `status` and `controller` read it.
public struct InstanceHeartbeat: Sendable, Equatable, Codable {
    public var instanceID: String
    public var state: String
    public var version: String?
    public var startedEpoch: Double?
    public var updatedEpoch: Double?
    public var lastReceiveEpoch: Double?
    public var lastCompletionEpoch: Double?
    public var tasksDone: Int
    public var tasksFailed: Int
    public var recentDurations: [Double]
    public var recentCompletions: [Double]
    /// When its last failed tasks ended (at most 50).
    public var recentFailures: [Double] = []
    public var runningTasks: Int
    public var oldestTaskStartedEpoch: Double?
    public var taskTimeout: Double?
    public var stopReason: String?
    public var instanceType: String?
    public var slots: Int

    public init(
        instanceID: String, state: String = "running", startedEpoch: Double? = nil,
        lastCompletionEpoch: Double? = nil, tasksDone: Int = 0, recentDurations: [Double] = [],
        recentCompletions: [Double] = [], updatedEpoch: Double? = nil, runningTasks: Int = 0,
        oldestTaskStartedEpoch: Double? = nil, taskTimeout: Double? = nil
    ) {
        self.instanceID = instanceID
        self.state = state
        self.startedEpoch = startedEpoch
        self.lastCompletionEpoch = lastCompletionEpoch
        self.tasksDone = tasksDone
        self.tasksFailed = 0
        self.recentDurations = recentDurations
        self.recentCompletions = recentCompletions
        self.updatedEpoch = updatedEpoch
        self.runningTasks = runningTasks
        self.oldestTaskStartedEpoch = oldestTaskStartedEpoch
        self.taskTimeout = taskTimeout
        self.slots = 1
    }

    /// When the instance last showed progress: its last completion, else its daemon's start.
    public var lastProgressEpoch: Double? { lastCompletionEpoch ?? startedEpoch }

    init?(item: DynamoItem) {
        typealias F = LedgerSchema.Instance
        guard let id = item[F.instance]?.string else { return nil }
        instanceID = id
        state = item[F.state]?.string ?? "unknown"
        version = item[F.version]?.string
        startedEpoch = item[F.startedEpoch]?.double
        updatedEpoch = item[F.updatedEpoch]?.double
        lastReceiveEpoch = item[F.lastReceiveEpoch]?.double
        lastCompletionEpoch = item[F.lastCompletionEpoch]?.double
        tasksDone = item[F.tasksDone]?.int ?? 0
        tasksFailed = item[F.tasksFailed]?.int ?? 0
        func numbers(_ name: String) -> [Double] {
            if case .l(let values)? = item[name] { return values.compactMap(\.double) }
            return []
        }
        recentDurations = numbers(F.recentDurations)
        recentCompletions = numbers(F.recentCompletions)
        recentFailures = numbers(F.recentFailures)
        runningTasks = item[F.runningTasks]?.int ?? 0
        oldestTaskStartedEpoch = item[F.oldestTaskStartedEpoch]?.double
        taskTimeout = item[F.taskTimeout]?.double
        stopReason = item[F.stopReason]?.string
        instanceType = item[F.instanceType]?.string
        slots = item[F.slots]?.int ?? 1
    }

    /// The fleet's last `over` task outcomes, newest first, merged from every heartbeat's recent completions and
    /// failures: how many of them failed. Nil while fewer than `over` are known (each heartbeat keeps its last 50,
    /// so a window wider than 50 needs that many instances' worth): no verdict rests on a handful of tasks.
    public static func recentFailures(_ heartbeats: [InstanceHeartbeat], over: Int, since: Double = 0) -> (
        failed: Int, of: Int
    )? {
        var outcomes: [(at: Double, failed: Bool)] = []
        for beat in heartbeats {
            outcomes += beat.recentCompletions.filter { $0 >= since }.map { ($0, false) }
            outcomes += beat.recentFailures.filter { $0 >= since }.map { ($0, true) }
        }
        guard over > 0, outcomes.count >= over else { return nil }
        // Newest first; at the same second a failure sorts first, so a tie never hides one.
        outcomes.sort { $0.at != $1.at ? $0.at > $1.at : ($0.failed && !$1.failed) }
        return (outcomes.prefix(over).filter(\.failed).count, over)
    }

    /// Every instance's heartbeat for the queue (one Query on the queue's partition, `instance#` items only).
    public static func read(
        table: String, queueURL: String, client: DynamoDBClient,
        logger: Logger
    ) async throws(AWSError) -> [InstanceHeartbeat] {
        try await client.queryAll(
            table: table, keyCondition: "#q = :q AND begins_with(#t, :prefix)",
            names: ["#q": LedgerSchema.partitionKey, "#t": LedgerSchema.sortKey],
            values: [":q": .s(LedgerSchema.queueName(queueURL)), ":prefix": .s(LedgerSchema.instancePrefix)],
            logger: logger
        ).compactMap(InstanceHeartbeat.init(item:))
    }
}
