/// The ledger table's layout, written by the daemon (`Ledger`) and read by the operators' tools
/// (`InstanceHeartbeat`): one table, partitioned by the queue's name, with two kinds of item.
///
/// - `task#<input key>#<attempt>`: one per task attempt;
/// - `instance#<instance id>`: one heartbeat per instance.
///
/// Every name is spelled here once, so the writer and the readers cannot drift apart.
public enum LedgerSchema {
    /// The partition key: the queue's name.
    public static let partitionKey = "queue"
    /// The sort key: `task#...` or `instance#...`.
    public static let sortKey = "task"
    public static let taskPrefix = "task#"
    public static let instancePrefix = "instance#"

    /// The queue's name, the ledger's partition key: the last part of its URL.
    public static func queueName(_ queueURL: String) -> String {
        String(queueURL.split(separator: "/").last ?? Substring(queueURL))
    }

    /// `task#<input key>#0003`: attempts sort in order under their input.
    public static func taskSortKey(inputKey: String, attempt: Int) -> String {
        "\(taskPrefix)\(inputKey)#\(String(repeating: "0", count: max(0, 4 - String(attempt).count)))\(attempt)"
    }

    public static func instanceSortKey(_ instanceID: String) -> String { instancePrefix + instanceID }

    /// The attributes of a task attempt's item.
    public enum Task {
        public static let kind = "task"
        public static let inputKey = "inputKey"
        public static let attempt = "attempt"
        public static let instance = "instance"
        public static let slot = "slot"
        /// `running`, then `done`, `failed` or `released`.
        public static let state = "state"
        public static let messageID = "messageId"
        public static let startedAt = "startedAt"
        public static let startedEpoch = "startedEpoch"
        public static let endedAt = "endedAt"
        public static let endedEpoch = "endedEpoch"
        public static let durationSeconds = "durationSeconds"
        public static let bytesIn = "bytesIn"
        public static let bytesOut = "bytesOut"
        public static let exitStatus = "exitStatus"
        public static let outputKey = "outputKey"
        public static let reason = "reason"
        /// What the command used: its peak memory (the whole task's, from its cgroup; else its largest process's)
        /// and its CPU seconds.
        public static let peakMemoryBytes = "peakMemoryBytes"
        public static let cpuSeconds = "cpuSeconds"
    }

    /// The attributes of a heartbeat item.
    public enum Instance {
        public static let kind = "instance"
        public static let instance = "instance"
        public static let state = "state"
        public static let version = "version"
        public static let startedEpoch = "startedEpoch"
        public static let updatedEpoch = "updatedEpoch"
        public static let updatedAt = "updatedAt"
        public static let lastReceiveEpoch = "lastReceiveEpoch"
        public static let lastCompletionEpoch = "lastCompletionEpoch"
        public static let lastCompletionAt = "lastCompletionAt"
        public static let tasksDone = "tasksDone"
        public static let tasksFailed = "tasksFailed"
        public static let tasksReleased = "tasksReleased"
        public static let recentDurations = "recentDurations"
        public static let recentCompletions = "recentCompletions"
        /// When the last tasks that failed ended (at most 50): with `recentCompletions`, the fleet's recent failure
        /// rate (`controller --max-failure-rate`, `status`).
        public static let recentFailures = "recentFailures"
        public static let stopReason = "stopReason"
        public static let runningTasks = "runningTasks"
        public static let oldestTaskStartedEpoch = "oldestTaskStartedEpoch"
        public static let taskTimeout = "taskTimeout"
        public static let instanceType = "instanceType"
        public static let slots = "slots"
    }

    /// `complete#<run start>`: a run's completion hook (`controller --on-complete`), claimed before it runs.
    public static let completionPrefix = "complete#"

    /// The attributes of a completion hook's item.
    public enum Completion {
        public static let kind = "completion"
        /// `running`, then `done` or `failed`.
        public static let state = "state"
        public static let command = "command"
        public static let startedEpoch = "startedEpoch"
        public static let endedEpoch = "endedEpoch"
        public static let exitStatus = "exitStatus"
    }

    /// The attribute every item has that tells its kind (`task`, `instance` or `completion`).
    public static let kind = "kind"
}
