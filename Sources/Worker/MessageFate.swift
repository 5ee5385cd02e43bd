import AWSServices

/// How one input's task attempt ended (an S3 event can carry several inputs in one message).
enum AttemptOutcome: Sendable, Equatable {
    /// Exit 0 and an output file named: uploaded under `key`.
    case uploaded(key: String, bytes: Int64)
    /// Exit 0 and nothing usable named: nothing to upload (aws-parallelizer's "move on").
    case noOutput
    /// It failed in a way that may pass: a non-zero exit, a timeout, a failed download or upload.
    case failed(TaskFailure)
    /// The input does not exist: no retry can bring it back.
    case inputMissing(TaskFailure)
    /// The task was cut short by a stop (its grace ran out) or a dead end.
    case interrupted
    /// Not the task's trouble: this machine's (`NodeTrouble`: a full disk, no descriptors left) or a throttle that
    /// outlasted the client's retries. The message goes back unrun, spending no attempt.
    case deferred(reason: String, scope: Deferral)
    /// The output's key holds another input's output: never overwritten, and no retry can change that (only an
    /// operator can): recorded at once, as a missing input is.
    case outputTaken(TaskFailure)

    /// The same outcome, its failure stamped with the task's `seconds` and what its command used.
    func timed(_ seconds: Double, usage: TaskUsage? = nil) -> AttemptOutcome {
        switch self {
        case .failed(var failure):
            failure.seconds = seconds
            failure.usage = failure.usage ?? usage
            return .failed(failure)
        case .inputMissing(var failure):
            failure.seconds = seconds
            return .inputMissing(failure)
        case .outputTaken(var failure):
            failure.seconds = seconds
            return .outputTaken(failure)
        default: return self
        }
    }

    /// Whose trouble deferred the task, when it was deferred.
    var deferral: Deferral? {
        if case .deferred(_, let scope) = self { return scope }
        return nil
    }
}

/// Whose trouble deferred a task.
enum Deferral: Sendable, Equatable {
    /// AWS asked to slow down.
    case throttle
    /// This machine's disk is full (or its quota spent).
    case disk
    /// This machine is out of another resource: descriptors, processes, memory; or its IMDS fence cannot be kept.
    case machine

    var isMachine: Bool { self != .throttle }
}

/// Why one input failed, for its failure record.
struct TaskFailure: Sendable, Equatable {
    var input: S3URI
    var reason: String
    var outcome: ProcessOutcome?
    var stderrTail: String = ""
    var seconds: Double = 0
    /// What its command used (peak memory, CPU time), when it ran.
    var usage: TaskUsage? = nil
}

/// What becomes of a message: the "Failure handling" table (docs/failures.md), in code, in one place. `before` decides what
/// can be decided from the body alone; `after` decides from what the attempts at its inputs came to.
///
/// | what happened | fate |
/// | --- | --- |
/// | every input done (uploaded, or nothing named) | `delete` |
/// | an S3 test event | `delete` |
/// | a stop or a dead end cut it short, or this machine's trouble (a full disk) deferred it | `release`: visible again at once, no attempt spent |
/// | a throttle that outlasted the client's retries | `postpone`: back after the retry backoff, no attempt spent |
/// | a failure that may pass, runs left | `retry`: back after a backoff that doubles with each receive; inputs that can never work are recorded now |
/// | failures at `maxAttempts` runs, or only inputs that can never work | `giveUp`: a record per failed input, then `FinalFate` |
/// | a body that can never work | `badMessage`: a record under `_failed/_bad-messages/`, then `FinalFate` |
/// | received after its `maxAttempts` runs | `usedUp`: a record per input unless one is there, then `FinalFate`; nothing runs |
///
/// Runs, not receives: a receive the daemon gave back unrun (`ReleaseNotes`) is no attempt.
enum MessageFate: Sendable, Equatable {
    case delete
    /// Visible again at once, for any worker, spending no attempt (`ReleaseNotes`).
    case release
    /// Back after `afterSeconds`, spending no attempt: AWS asked to slow down (a throttle that outlasted the
    /// client's retries).
    case postpone(afterSeconds: Int)
    /// Back after `afterSeconds`; `recordNow` are the inputs that can never work, recorded at once.
    case retry(afterSeconds: Int, recordNow: [TaskFailure])
    /// Its work is over for good: each failure recorded, then the message leaves by `FinalFate`. `worthRedriving`:
    /// the failure may pass (a dead-letter queue keeps it for a redrive).
    case giveUp([TaskFailure], worthRedriving: Bool)
    /// The body can never be processed: recorded, then it leaves by `FinalFate` (not worth a redrive).
    case badMessage(reason: String)
    /// Its attempts were used up on earlier receives that could not settle it: settled now without running.
    /// `runs`: how many it had.
    case usedUp([S3URI], runs: Int)

    /// What the body alone decides: the inputs to attempt, or a fate without running anything.
    enum Before: Sendable, Equatable {
        case attempt([S3URI])
        case settle(MessageFate)
    }

    /// - Parameter runsBefore: the message's runs before this receive (`MessageProcessor.runsBefore`).
    static func before(_ parsed: Result<MessageRequest, BadMessage>, runsBefore: Int, maxAttempts: Int) -> Before {
        switch parsed {
        case .failure(let bad): return .settle(.badMessage(reason: bad.reason))
        case .success(.testEvent): return .settle(.delete)
        case .success(.tasks(let inputs)), .success(.partialEvent(let inputs, _)):
            return runsBefore >= maxAttempts ? .settle(.usedUp(inputs, runs: runsBefore)) : .attempt(inputs)
        }
    }

    /// The fate after the message's inputs were attempted.
    /// - Parameters:
    ///   - runs: the message's runs, this one included.
    ///   - deadEnd: the daemon met a dead end: a failure is then the set-up's, not the task's.
    ///   - retryDelay: the backoff for this receive (`VisibilityPlan.retryDelay`).
    static func after(
        _ outcomes: [AttemptOutcome], runs: Int, maxAttempts: Int, deadEnd: Bool,
        retryDelay: Int
    ) -> MessageFate {
        if outcomes.contains(.interrupted) || outcomes.contains(where: { $0.deferral?.isMachine == true }) {
            return .release
        }
        if outcomes.contains(where: { $0.deferral != nil }) { return .postpone(afterSeconds: retryDelay) }
        var failures: [TaskFailure] = []  // in the inputs' order
        var never: [TaskFailure] = []
        for outcome in outcomes {
            switch outcome {
            case .failed(let failure): failures.append(failure)
            case .inputMissing(let failure), .outputTaken(let failure):
                failures.append(failure)
                never.append(failure)
            case .uploaded, .noOutput, .interrupted, .deferred: break
            }
        }
        if failures.isEmpty { return .delete }
        if deadEnd { return .release }
        let mayPass = failures.count > never.count
        if mayPass && runs < maxAttempts { return .retry(afterSeconds: retryDelay, recordNow: never) }
        return .giveUp(failures, worthRedriving: mayPass)
    }
}

/// How a message whose work is over for good (a bad message, or a task given up) leaves the queue.
///
/// Deleted once its failure record is written. Sent on to the dead-letter queue (made visible at once, so SQS moves
/// it after `maxReceiveCount` receives) when the queue has one and either the record could not be written or the
/// failure may pass and be worth a redrive. Otherwise kept, to come back after its visibility timeout: deleting a
/// message that left no record would lose its input without a trace.
enum FinalFate: Equatable {
    case delete, deadLetterQueue, keep

    init(recorded: Bool, hasDeadLetterQueue: Bool, worthRedriving: Bool) {
        if hasDeadLetterQueue && (worthRedriving || !recorded) {
            self = .deadLetterQueue
        } else {
            self = recorded ? .delete : .keep
        }
    }
}
