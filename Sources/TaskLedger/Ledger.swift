import AWSCore
import AWSServices
import FoundationEssentials
import Logging

/// The optional DynamoDB task ledger (EC2-clusteR's task log): one item per task attempt and one heartbeat item per
/// instance, in one table keyed by the queue's name (`queue`) and `task`:
///
/// - `task#<input key>#<attempt>`: instance, slot, state (`running`, `done`, `failed`, `released`), start and end
///   times, duration, bytes in and out, exit status, output key;
/// - `instance#<instance id>`: last receive, last completion, tasks done, version, the tasks running now (how many,
///   since when, and the `taskTimeout` they run under), and the recent task durations and completion times that
///   `status` and `controller` read: written once per `heartbeatInterval` for as long as the daemon runs, so a
///   live worker with a long task keeps beating and one that beats no more is stuck.
///
/// The queue and S3 are the source of truth; the ledger is only the record. So a write never blocks or fails a task:
/// callers only append to a buffer, and one writer task sends the writes in order, retrying each a few times and
/// then dropping it with a log line (counted, not one line per write when the table is gone).
public actor Ledger {
    public struct Settings: Sendable {
        public var heartbeatInterval: Double = 60
        /// Writes kept while DynamoDB is unreachable; the oldest are dropped beyond this.
        public var bufferLimit = 10_000
        public var attemptsPerWrite = 3
        public var retryDelay: Double = 1
        /// The daemon's `taskTimeout`, written in the heartbeat: the controller's "stuck" is a task past it.
        public var taskTimeout: Double?
        /// The instance's type (from IMDS) and the daemon's slots, written in the heartbeat: `status --price` turns
        /// them into the fleet's cost.
        public var instanceType: String?
        public var slots = 1
        /// A task's start is written once it has run this long: a task that ends sooner is written once, whole,
        /// with its end (one write instead of two: DynamoDB bills each item written). A daemon that dies first
        /// leaves no item, which the attempt count reads as a run, as it reads `running`.
        public var startWriteDelay: Double = 2
        public init() {}
    }

    enum Write: Sendable {
        case put(DynamoItem)
        /// With `condition`, a write that no longer applies (the item is another message's now) is dropped quietly.
        case update(
            key: DynamoItem, expression: String, names: [String: String], values: DynamoItem, condition: String? = nil)
    }

    /// One heartbeat's worth of an instance's progress.
    struct Progress: Sendable {
        var lastReceive: Double?
        var lastCompletion: Double?
        var done = 0
        var failed = 0
        var released = 0
        var recentDurations: [Double] = []
        var recentCompletions: [Double] = []
        var recentFailures: [Double] = []
        /// The tasks running now, by their sort key, with when each started: a list, as two slots may run the same
        /// attempt of a message SQS delivered twice.
        var running: [String: [Double]] = [:]
        /// Of those, the ones whose command runs now, with when it started: what `taskTimeout` bounds, and so what
        /// the heartbeat's oldest start reports. A download or an upload, however long, is not the command's time.
        var commands: [String: [Double]] = [:]
    }

    static let recentLimit = 50

    let client: DynamoDBClient
    let table: String
    let queueName: String
    let instanceID: String
    let settings: Settings
    let logger: Logger
    let startedAt: Double
    var buffer: [Write] = []
    /// Task starts not written yet (`Settings.startWriteDelay`), by sort key, with when they are due.
    var pendingStarts: [String: PendingStart] = [:]

    struct PendingStart: Sendable {
        var item: DynamoItem
        var due: Double
    }
    var progress = Progress()
    var lastHeartbeat: Double?
    /// The last running task ended: the next heartbeat goes at once, not at the interval, so that no other worker
    /// counts this one busy for a minute after it is not (the tail rule counts busy workers by their heartbeats).
    var beatNow = false
    var stopping = false
    var failures = 0
    var dropped = 0
    var writer: Task<Void, Never>?
    var wake: CheckedContinuation<Void, Never>?

    public init(
        client: DynamoDBClient, table: String, queueURL: String, instanceID: String, settings: Settings = Settings(),
        logger: Logger
    ) {
        self.client = client
        self.table = table
        self.queueName = LedgerSchema.queueName(queueURL)
        self.instanceID = instanceID
        self.settings = settings
        self.logger = logger
        self.startedAt = Self.now()
    }

    static func now() -> Double { Date().timeIntervalSince1970 }

    static func iso(_ epoch: Double) -> String { CivilTime(epochSeconds: Int64(epoch)).iso8601 }

    /// Starts the writer. Call once.
    public func start() {
        guard writer == nil else { return }
        writer = Task { await self.runWriter() }
    }

    // MARK: - What the worker reports

    public func received() {
        progress.lastReceive = Self.now()
    }

    public func taskStarted(inputKey: String, attempt: Int, slot: Int, messageID: String) {
        typealias F = LedgerSchema.Task
        let now = Self.now()
        // An idle worker turning busy beats at once: a controller retiring idle workers must not take it for idle
        // until its next interval.
        if progress.running.isEmpty {
            beatNow = true
            signal()
        }
        let key = LedgerSchema.taskSortKey(inputKey: inputKey, attempt: attempt)
        // A start of the same key still pending (the message delivered twice, to two slots) goes out as it is.
        if let earlier = pendingStarts.removeValue(forKey: key) { append(.put(earlier.item)) }
        let item: DynamoItem = [
            LedgerSchema.partitionKey: .s(queueName), LedgerSchema.sortKey: .s(key),
            LedgerSchema.kind: .s(F.kind), F.inputKey: .s(inputKey), F.attempt: .number(attempt),
            F.instance: .s(instanceID), F.slot: .number(slot), F.state: .s("running"), F.messageID: .s(messageID),
            F.startedAt: .s(Self.iso(now)), F.startedEpoch: .number(now),
        ]
        pendingStarts[key] = PendingStart(item: item, due: now + settings.startWriteDelay)
        signal()
        progress.running[key, default: []].append(now)
    }

    /// The task's command starts now (after its download): the heartbeat's oldest start counts from here.
    public func commandStarted(inputKey: String, attempt: Int) {
        progress.commands[LedgerSchema.taskSortKey(inputKey: inputKey, attempt: attempt), default: []].append(
            Self.now())
    }

    /// The task's command has ended: its upload that follows is no part of `taskTimeout`.
    public func commandEnded(inputKey: String, attempt: Int) {
        Self.dropOne(LedgerSchema.taskSortKey(inputKey: inputKey, attempt: attempt), from: &progress.commands)
    }

    static func dropOne(_ key: String, from map: inout [String: [Double]]) {
        guard var starts = map[key], !starts.isEmpty else { return }
        starts.removeLast()
        map[key] = starts.isEmpty ? nil : starts
    }

    public enum Outcome: String, Sendable { case done, failed, released }

    public func taskEnded(
        inputKey: String, attempt: Int, outcome: Outcome, seconds: Double, bytesIn: Int64, bytesOut: Int64,
        exitStatus: String, outputKey: String?, reason: String?, peakMemoryBytes: Int64? = nil,
        cpuSeconds: Double? = nil, messageID: String? = nil
    ) {
        typealias F = LedgerSchema.Task
        let now = Self.now()
        var fields: [(name: String, value: DynamoValue)] = [
            (F.state, .s(outcome.rawValue)), (F.endedAt, .s(Self.iso(now))), (F.endedEpoch, .number(now)),
            (F.durationSeconds, .number((seconds * 1000).rounded() / 1000)), (F.bytesIn, .number(bytesIn)),
            (F.bytesOut, .number(bytesOut)), (F.exitStatus, .s(exitStatus)), (F.instance, .s(instanceID)),
        ]
        if let outputKey { fields.append((F.outputKey, .s(outputKey))) }
        if let reason { fields.append((F.reason, .s(String(reason.prefix(1000))))) }
        if let peakMemoryBytes { fields.append((F.peakMemoryBytes, .number(peakMemoryBytes))) }
        if let cpuSeconds { fields.append((F.cpuSeconds, .number((cpuSeconds * 1000).rounded() / 1000))) }
        let sortKey = LedgerSchema.taskSortKey(inputKey: inputKey, attempt: attempt)
        // Its start not written yet: the whole item goes in one write.
        if var item = pendingStarts[sortKey]?.item, item[F.messageID]?.string == messageID || messageID == nil {
            pendingStarts[sortKey] = nil
            for field in fields { item[field.name] = field.value }
            append(.put(item))
            taskEndedProgress(sortKey, outcome: outcome, seconds: seconds, now: now)
            return
        }
        // Every attribute through a placeholder: some of these names (`state`) are DynamoDB reserved words.
        var names = Dictionary(uniqueKeysWithValues: fields.enumerated().map { ("#a\($0.offset)", $0.element.name) })
        var values = DynamoItem(uniqueKeysWithValues: fields.enumerated().map { (":v\($0.offset)", $0.element.value) })
        // The item is this message's attempt: the same input in two messages (a duplicate S3 event) at the same
        // receive count shares its key, and one's end must not be written over the other's start (the attempt count
        // of `maxAttempts` reads these states).
        var condition: String?
        if let messageID {
            names["#m"] = F.messageID
            values[":m"] = .s(messageID)
            condition = "#m = :m"
        }
        append(
            .update(
                key: [
                    LedgerSchema.partitionKey: .s(queueName),
                    LedgerSchema.sortKey: .s(LedgerSchema.taskSortKey(inputKey: inputKey, attempt: attempt)),
                ],
                expression: "SET " + fields.indices.map { "#a\($0) = :v\($0)" }.joined(separator: ", "),
                names: names, values: values, condition: condition))
        taskEndedProgress(sortKey, outcome: outcome, seconds: seconds, now: now)
    }

    /// The heartbeat's side of a task's end.
    func taskEndedProgress(_ key: String, outcome: Outcome, seconds: Double, now: Double) {
        Self.dropOne(key, from: &progress.running)
        // A command that never ended cleanly (the task ended mid-command) goes with its task.
        if (progress.commands[key]?.count ?? 0) > (progress.running[key]?.count ?? 0) {
            Self.dropOne(key, from: &progress.commands)
        }
        if progress.running.isEmpty {
            beatNow = true
            signal()
        }
        switch outcome {
        case .done:
            progress.done += 1
            progress.lastCompletion = now
            progress.recentDurations = Array((progress.recentDurations + [seconds]).suffix(Self.recentLimit))
            progress.recentCompletions = Array((progress.recentCompletions + [now]).suffix(Self.recentLimit))
        case .failed:
            progress.failed += 1
            progress.recentFailures = Array((progress.recentFailures + [now]).suffix(Self.recentLimit))
        case .released: progress.released += 1
        }
    }

    /// Writes the final heartbeat (`state` = `stopped`) and what is buffered, for at most `deadline` seconds.
    public func finish(reason: String, deadline: Double = 10) async {
        // `stopping` also keeps the writer from adding a `running` heartbeat after this one.
        stopping = true
        flushStarts(before: .infinity)
        append(heartbeatWrite(state: "stopped", reason: reason))
        let writer = self.writer
        let timeout = Task {
            try? await Task.sleep(nanoseconds: UInt64(deadline * 1e9))
            writer?.cancel()
        }
        await writer?.value
        timeout.cancel()
        if !buffer.isEmpty {
            logger.warning("ledger writes left unsent at exit", metadata: ["ledger.unsent": "\(buffer.count)"])
        }
    }

    // MARK: - What the fleet shows

    /// The other live workers of this queue, by their heartbeats: written within `freshWithin` seconds, state
    /// `running`.
    public struct FleetView: Sendable, Equatable {
        /// Workers running a task now: each stays until its task ends.
        public var busy: Int
        /// Workers with nothing to do, by instance id.
        public var idle: [String]

        public init(busy: Int, idle: [String]) {
            self.busy = busy
            self.idle = idle
        }
    }

    /// What the other workers are doing (`Daemon.watchForDrain`'s tail rule).
    public func others(freshWithin: Double) async throws(AWSError) -> FleetView {
        let live = try await liveOthers(freshWithin: freshWithin)
        return FleetView(
            busy: live.filter { $0.runningTasks > 0 }.count,
            idle: live.filter { $0.runningTasks == 0 }.map(\.instanceID).sorted())
    }

    /// How the other workers of this queue fared since `since`, or within the last minute (two heartbeat intervals,
    /// when longer: a heartbeat tells of a task only when it is next written): whether the fleet succeeds where
    /// this worker fails (`FailureStreak`).
    public struct OthersRecently: Sendable, Equatable {
        /// The workers that completed a task, by instance id.
        public var succeeding: [String]
        public var completed: Int
        public var failed: Int
    }

    public func others(since: Double) async throws(AWSError) -> OthersRecently {
        let from = min(since, Self.now() - recentWindow)
        let beats = try await otherHeartbeats()
        var recently = OthersRecently(succeeding: [], completed: 0, failed: 0)
        for beat in beats {
            let completed = beat.recentCompletions.filter { $0 >= from }.count
            let lastCompletion = beat.lastCompletionEpoch ?? 0
            // A heartbeat's lists are rounded to the second; its last completion says the same at least.
            let done = max(completed, lastCompletion >= from ? 1 : 0)
            recently.completed += done
            recently.failed += beat.recentFailures.filter { $0 >= from }.count
            if done > 0 { recently.succeeding.append(beat.instanceID) }
        }
        recently.succeeding.sort()
        return recently
    }

    /// The attempts of `inputKey` recorded for `messageID`: by attempt (the receive count), the state each reached
    /// (`running`, `done`, `failed`, `released`). Read consistently: a run's end written just before counts.
    public func attempts(inputKey: String, messageID: String) async throws(AWSError) -> [(
        attempt: Int, state: String, instance: String?, started: Double?
    )] {
        typealias F = LedgerSchema.Task
        var found: [(attempt: Int, state: String, instance: String?, started: Double?)] = []
        var start: DynamoItem?
        repeat {
            let page = try await client.query(
                table: table, keyCondition: "#q = :q AND begins_with(#t, :p)",
                names: ["#q": LedgerSchema.partitionKey, "#t": LedgerSchema.sortKey],
                values: [":q": .s(queueName), ":p": .s(LedgerSchema.taskPrefix + inputKey + "#")], startKey: start,
                consistent: true, logger: logger)
            for item in page.items where item[F.messageID]?.string == messageID && item[F.inputKey]?.string == inputKey
            {
                if let attempt = item[F.attempt]?.int, let state = item[F.state]?.string {
                    found.append((attempt, state, item[F.instance]?.string, item[F.startedEpoch]?.double))
                }
            }
            start = page.lastEvaluatedKey
        } while start != nil
        return found
    }

    /// The other instances whose daemons beat now (`running`, written within a minute or two heartbeat intervals),
    /// with when each daemon started: a task item still `running` there, started since, is a run under way (SQS
    /// delivered its message twice), not a dead one.
    public func liveDaemons() async throws(AWSError) -> [String: Double] {
        let live = try await liveOthers(freshWithin: recentWindow)
        return Dictionary(live.map { ($0.instanceID, $0.startedEpoch ?? 0) }, uniquingKeysWith: { a, _ in a })
    }

    public var ownInstanceID: String { instanceID }

    // MARK: - The writer

    func append(_ write: Write) {
        buffer.append(write)
        if buffer.count > settings.bufferLimit {
            buffer.removeFirst(buffer.count - settings.bufferLimit)
            dropped += 1
            if dropped == 1 || dropped % 1000 == 0 {
                logger.warning("ledger buffer full; oldest writes dropped", metadata: ["ledger.dropped": "\(dropped)"])
            }
        }
        signal()
    }

    /// The other workers' heartbeats (one Query on the queue's partition).
    func otherHeartbeats() async throws(AWSError) -> [InstanceHeartbeat] {
        try await InstanceHeartbeat.read(table: table, queueURL: queueName, client: client, logger: logger)
            .filter { $0.instanceID != instanceID }
    }

    /// The other workers whose daemons run, by a heartbeat written within `freshWithin` seconds.
    func liveOthers(freshWithin: Double) async throws(AWSError) -> [InstanceHeartbeat] {
        let now = Self.now()
        return try await otherHeartbeats().filter {
            $0.state == "running" && now - ($0.updatedEpoch ?? 0) <= freshWithin
        }
    }

    /// What "recently" means for what a heartbeat tells: within a minute, or two heartbeat intervals when longer (a
    /// heartbeat tells of a task only when it is next written).
    var recentWindow: Double { max(60, 2 * settings.heartbeatInterval) }

    /// The least time between two heartbeats asked for at once.
    var beatGap: Double { min(5, settings.heartbeatInterval) }

    /// Moves the task starts due by `time` into the buffer, oldest first.
    func flushStarts(before time: Double) {
        let due = pendingStarts.filter { $0.value.due <= time }.sorted { $0.value.due < $1.value.due }
        for (key, start) in due {
            pendingStarts[key] = nil
            append(.put(start.item))
        }
    }

    func signal() {
        wake?.resume()
        wake = nil
    }

    func heartbeatWrite(state: String, reason: String? = nil) -> Write {
        let now = Self.now()
        typealias F = LedgerSchema.Instance
        var item: DynamoItem = [
            LedgerSchema.partitionKey: .s(queueName),
            LedgerSchema.sortKey: .s(LedgerSchema.instanceSortKey(instanceID)),
            LedgerSchema.kind: .s(F.kind), F.instance: .s(instanceID), F.state: .s(state),
            F.version: .s(Version.current),
            F.startedEpoch: .number(startedAt), F.updatedEpoch: .number(now), F.updatedAt: .s(Self.iso(now)),
            F.tasksDone: .number(progress.done), F.tasksFailed: .number(progress.failed),
            F.tasksReleased: .number(progress.released),
            F.recentDurations: .l(progress.recentDurations.map { .number(($0 * 1000).rounded() / 1000) }),
            F.recentCompletions: .l(progress.recentCompletions.map { .number($0.rounded()) }),
            F.recentFailures: .l(progress.recentFailures.map { .number($0.rounded()) }),
        ]
        if let t = progress.lastReceive { item[F.lastReceiveEpoch] = .number(t.rounded()) }
        if let t = progress.lastCompletion {
            item[F.lastCompletionEpoch] = .number(t.rounded())
            item[F.lastCompletionAt] = .s(Self.iso(t))
        }
        item[F.runningTasks] = .number(progress.running.values.reduce(0) { $0 + $1.count })
        if let oldest = progress.commands.values.flatMap({ $0 }).min() {
            item[F.oldestTaskStartedEpoch] = .number(oldest.rounded(.down))
        }
        if let timeout = settings.taskTimeout { item[F.taskTimeout] = .number(timeout) }
        if let type = settings.instanceType { item[F.instanceType] = .s(type) }
        item[F.slots] = .number(settings.slots)
        if let reason { item[F.stopReason] = .s(reason) }
        return .put(item)
    }

    func runWriter() async {
        while !Task.isCancelled {
            let now = Self.now()
            // A heartbeat goes out every interval for as long as the daemon runs, whether or not anything changed:
            // it is how the controller tells a long task, or a worker waiting for a message it released, from a
            // stuck one (and a worker leaving the tail counts the busy ones by it).
            // A beat asked for at once (a worker turning busy or idle) waits out `beatGap` since the last one: tiny
            // tasks one after another would otherwise write a heartbeat at each start and end.
            let sinceBeat = lastHeartbeat.map { now - $0 } ?? .infinity
            if !stopping
                && ((beatNow && sinceBeat >= beatGap) || sinceBeat >= settings.heartbeatInterval)
            {
                beatNow = false
                lastHeartbeat = now
                // Sent ahead of the buffered task writes and stamped as it goes: queued behind a backlog on a slow
                // table it would land late and already old, and the controller would count a busy worker stuck.
                await send(heartbeatWrite(state: "running"))
                continue
            }
            flushStarts(before: now)
            if buffer.isEmpty {
                if stopping { return }
                // Sleep until something is appended, or until the next heartbeat or task start is due.
                var wait = max(0.05, settings.heartbeatInterval - (now - (lastHeartbeat ?? now)))
                if beatNow { wait = max(0.05, min(wait, beatGap - sinceBeat)) }
                if let due = pendingStarts.values.map(\.due).min() { wait = max(0.05, min(wait, due - now)) }
                let sleeper = Task { [weak self] in
                    try? await Task.sleep(nanoseconds: UInt64(min(wait, 3600) * 1e9))
                    await self?.signal()
                }
                await withCheckedContinuation { wake = $0 }
                sleeper.cancel()
                continue
            }
            let write = buffer.removeFirst()
            await send(write)
        }
    }

    func send(_ write: Write) async {
        for attempt in 1...settings.attemptsPerWrite {
            do {
                switch write {
                case .put(let item):
                    try await client.putItem(table: table, item: item, logger: logger)
                case .update(let key, let expression, let names, let values, let condition):
                    do {
                        try await client.updateItem(
                            table: table, key: key, update: expression, condition: condition, names: names,
                            values: values, logger: logger)
                    } catch  where condition != nil && error.shortCode == "ConditionalCheckFailedException" {
                        // Another message's attempt now: this one's end is not written over it.
                        logger.debug("a task's end not written: its item is another message's now")
                    }
                }
                if failures > 0 {
                    logger.notice("ledger writes succeed again", metadata: ["ledger.failed_writes": "\(failures)"])
                    failures = 0
                }
                return
            } catch {
                // Throttling and 5xx were already retried by the client; these retries cover a longer outage.
                // A missing table or a denied write will not heal in seconds.
                if error.isRetryable && attempt < settings.attemptsPerWrite && !Task.isCancelled {
                    let pause = RetryPolicy(
                        maxAttempts: settings.attemptsPerWrite, baseDelay: settings.retryDelay,
                        maxDelay: 30, jitter: .none
                    ).delay(beforeRetry: attempt)
                    try? await Task.sleep(for: .seconds(pause))
                    continue
                }
                failures += 1
                // The first failure, then one line per 100, so a missing table does not flood the log.
                if failures == 1 || failures % 100 == 0 {
                    logger.error(
                        "ledger write failed; tasks go on without it",
                        metadata: [
                            "ledger.table": "\(table)", "error": "\(error)", "ledger.failed_writes": "\(failures)",
                        ])
                }
            }
        }
    }
}
