import AWSCore
import Synchronization

/// A call the daemon makes over and over, whose failure may mean the daemon itself cannot go on.
public enum DaemonCall: Sendable, CaseIterable {
    case receive, deleteMessage, changeVisibility, queueAttributes, getInput, putOutput
    /// A failure record (`_failed/...`): the same permission as an output, another key.
    case putRecord
    /// The HEAD of an output key found taken, to read whose output it holds.
    case headOutput

    /// The permission the call needs, as an operator writes it in a policy.
    var action: String {
        switch self {
        case .receive: return "sqs:ReceiveMessage"
        case .deleteMessage: return "sqs:DeleteMessage"
        case .changeVisibility: return "sqs:ChangeMessageVisibility"
        case .queueAttributes: return "sqs:GetQueueAttributes"
        case .getInput, .headOutput: return "s3:GetObject"
        case .putOutput, .putRecord: return "s3:PutObject"
        }
    }

    /// Whether each call serves one task (a message); the others (receives, the drain check) are the daemon's own.
    var isPerTask: Bool { self != .receive && self != .queueAttributes }

    /// Whether the call is about one object: a bucket policy may deny one prefix, a KMS key one object, so a denial
    /// of such a call is that object's unless no call of its kind has worked since start. The queue's calls reach
    /// the whole queue.
    var isObjectCall: Bool { [.getInput, .putOutput, .putRecord, .headOutput].contains(self) }
}

/// Why the daemon stops by itself: an error that no retry and no other task can get past. It ends the daemon with
/// one `critical` line (what is wrong, and what to fix) and exit status 2, which systemd does not restart.
public struct DeadEnd: Error, Sendable, CustomStringConvertible {
    /// What is wrong, in a few words.
    public var what: String
    /// What an operator should change.
    public var fix: String
    /// The AWS error behind it, when there is one.
    public var error: AWSError?
    public var problem: SetupProblem?

    public init(what: String, fix: String, error: AWSError? = nil, problem: SetupProblem? = nil) {
        self.what = what
        self.fix = fix
        self.error = error
        self.problem = problem
    }

    /// A call (`action`, the permission it needs, on `resource`: a queue URL or `s3://bucket`) refused `calls` times
    /// in a row for `problem`.
    public static func setup(
        _ problem: SetupProblem, action: String, resource: String, error: AWSError,
        calls: Int = 1, perTask: Bool = true
    ) -> DeadEnd {
        var what: String
        var fix: String
        switch problem {
        case .denied:
            what = "\(action) is denied on \(resource)"
            fix =
                "allow \(action) on \(resource) in the instance role's policy (scripts/setup-aws writes one that does)"
            if action == DaemonCall.getInput.action {
                // S3 answers 403 for a missing key when s3:ListBucket is not allowed, and for objects under a KMS key
                // the role may not use.
                fix +=
                    "; objects encrypted with a KMS key also need kms:Decrypt, and a missing key is a 403 without s3:ListBucket"
            }
        case .credentialsRefused:
            what = "AWS refuses the credentials (\(error.shortCode)) for \(action)"
            fix =
                "check the instance profile (or the AWS_* variables, accessKey/secretKey) this worker takes its keys from"
        case .noCredentials:
            what = "no AWS credentials for \(action)"
            fix =
                "attach an instance profile (scripts/setup-aws makes NAME-worker), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        case .queueMissing:
            what = "the queue \(resource) does not exist"
            fix = "check queueURL, or create the queue (scripts/setup-aws)"
        case .bucketMissing:
            what = "the bucket \(resource) does not exist"
            fix = "check inputBucket, outputBucket and environmentBucket, or create the bucket"
        case .tableMissing:
            what = "the table \(resource) does not exist"
            fix = "check ledgerTable, or create the table (scripts/setup-aws --ledger-table)"
        case .unknownAction:
            what = "the endpoint does not know \(action)"
            fix =
                "check AWS_ENDPOINT_URL and the AWS_ENDPOINT_URL_* variables: they point at something that is not SQS or S3"
        case .wrongRegion:
            what = "\(resource) is in another region than the one \(action) was signed for"
            fix = "set region (EC2SQSRegion) to the bucket's region"
        case .keyUnusable:
            what = "the KMS key of \(resource) cannot be used (\(error.shortCode))"
            fix = "enable the key, or allow kms:Decrypt and kms:GenerateDataKey on it in the instance role's policy"
        case .refused:
            what = "\(action) is refused on \(resource) (\(error.shortCode))"
            fix = "see the error: it is not one that retrying can get past"
        }
        if calls > 1 { what += " (\(calls) \(perTask ? "tasks" : "calls") in a row)" }
        return DeadEnd(what: what, fix: fix, error: error, problem: problem)
    }

    public var description: String { "\(what); fix: \(fix)" }
}

/// Tells a task's failure from the daemon's dead end: the one place that judges how far a failed call's refusal
/// reaches (`CallReach`): one object, a bucket or queue, the credentials.
///
/// The rule: the same permanent error (`AWSError.setupProblem`, the same kind of problem) on `threshold` calls in a
/// row of the same kind, each for a different task (a different message, or a different receive); for a bucket,
/// queue or table of ours that is gone, `threshold` calls in a row, whatever their task. One task's error
/// is never enough: a message may name a bucket that is gone. But when three different tasks in a row meet a denied
/// `DeleteMessage`, the next thousand will too, and each would be processed again forever. A success of the same
/// kind of call starts the count again; errors that may pass (throttling, a limit, a dropped connection) neither
/// count nor break the run.
///
/// A refusal about one object (access denied, a KMS key it may not use) counts far less once a call of its kind has
/// worked since start: a bucket policy that denies one prefix, or an object under a key the role may not use, fails
/// that object's task (retried, then recorded), and the worker goes on with the rest. When every such call has been
/// refused since start, 3 in a row are the role's refusal, and a dead end; after a success it takes
/// `objectThreshold` different objects in a row with no success between (a policy changed mid-run, a key disabled),
/// so that a whole queue does not drain into failure records.
public final class DeadEnds: Sendable {
    public static let defaultThreshold = SetupProblem.repeatsBeforeDeadEnd
    /// Different objects in a row refused, with no success between, that make a dead end after a success.
    public static let objectThreshold = 10

    struct Run {
        var problem: SetupProblem
        var subjects: Set<String>
    }

    struct State {
        var runs: [DaemonCall: Run] = [:]
        var deadEnd: DeadEnd?
        /// Calls that have worked at least once since start.
        var everWorked: Set<DaemonCall> = []
        /// Tasks in a row deferred by this machine's own trouble (`NodeTrouble`). Counted as tasks, not messages:
        /// a message given back may well be the next one this worker receives.
        var troubledTasks = 0
        var leaving = false
        /// This machine's tasks that failed in a row (`FailureStreak`), and whether it left for them.
        var streak: FailureStreak
        var badNode = false
        /// The streak's runs, for the message that tipped it to note as unrun (`takeBadNodeRuns`).
        var badNodeRuns: [FailedRun] = []
        /// Failed calls counted so far (to tell apart calls of one task about a whole resource).
        var calls = 0
    }

    public let threshold: Int
    private let state: Mutex<State>
    private let reached: @Sendable (DeadEnd) -> Void
    private let machineTrouble: @Sendable (String, Int) -> Void
    private let badNodeFound: @Sendable (String) -> Void

    /// `reached` is called once, on the first dead end; `machineTrouble` once, when `threshold` tasks in a row met
    /// this machine's own trouble (with the last reason and the count): the worker should leave for a replacement;
    /// `badNode` once, when `failureBudget` tasks in a row failed here while other workers succeed (with why).
    public init(
        threshold: Int = DeadEnds.defaultThreshold, failureBudget: Int = 0,
        reached: @escaping @Sendable (DeadEnd) -> Void,
        machineTrouble: @escaping @Sendable (String, Int) -> Void = { _, _ in },
        badNode: @escaping @Sendable (String) -> Void = { _ in }
    ) {
        self.threshold = max(1, threshold)
        self.reached = reached
        self.machineTrouble = machineTrouble
        self.badNodeFound = badNode
        self.state = Mutex(State(streak: FailureStreak(budget: failureBudget)))
    }

    /// A task (`subject`: its message) met this machine's own trouble (`NodeTrouble`).
    func nodeTrouble(_ reason: String, subject: String) {
        let count: Int? = state.withLock { s in
            s.troubledTasks += 1
            guard s.troubledTasks >= threshold, !s.leaving else { return nil }
            s.leaving = true
            return s.troubledTasks
        }
        if let count { machineTrouble(reason, count) }
    }

    /// A task ended without this machine's trouble.
    func nodeHealthy() { state.withLock { $0.troubledTasks = 0 } }

    /// A task worked here: the failure streak starts again.
    func taskWorked() {
        nodeHealthy()
        state.withLock { $0.streak.worked() }
    }

    /// A task failed here, for a reason that may not be its input's own (`AttemptOutcome.failed`). Returns the
    /// streak when it is long enough to ask the ledger whether other workers succeed meanwhile.
    func taskFailed(_ run: FailedRun, now: Double) -> [FailedRun]? {
        state.withLock { s in s.badNode ? nil : s.streak.failed(run, now: now) }
    }

    /// The ledger shows other workers succeeding while `runs` failed here in a row: this machine is the trouble.
    /// The message that tipped it, and the ones it failed before, are given back as unrun.
    func leaveAsBadNode(_ why: String, runs: [FailedRun]) {
        let first: Bool = state.withLock { s in
            guard !s.badNode else { return false }
            s.badNode = true
            s.leaving = true
            s.badNodeRuns = runs
            return true
        }
        if first { badNodeFound(why) }
    }

    /// Whether a failure now is this machine's, not the task's: a dead end, or a node that is leaving for its
    /// failures. Such a message goes back unrun.
    var failuresAreNotTheTasks: Bool { state.withLock { $0.deadEnd != nil || $0.badNode } }

    /// The bad node's failed runs, once: to note as unrun (`ReleaseNotes`), so that they spend no attempt. Only the
    /// last `failureBudget` of the streak (the pattern that was judged), and none that gave its message up: noted,
    /// a given-up message would run again past `maxAttempts`.
    func takeBadNodeRuns() -> [FailedRun] {
        state.withLock { s in
            defer { s.badNodeRuns = [] }
            return s.badNodeRuns.suffix(s.streak.budget).filter { !$0.lastRun }
        }
    }

    /// The dead end met, if any.
    public var deadEnd: DeadEnd? { state.withLock { $0.deadEnd } }

    /// A call of `call` about `resource` for `subject` (a message id, a receive's number) failed with `error`.
    public func failed(_ call: DaemonCall, resource: String, subject: String, error: AWSError) {
        guard let problem = Self.problem(call, error) else { return }
        let found: DeadEnd? = state.withLock { s in
            let needed =
                Self.reach(call, problem) == .object && s.everWorked.contains(call)
                ? max(threshold, Self.objectThreshold) : threshold
            var run = s.runs[call].flatMap { $0.problem == problem ? $0 : nil } ?? Run(problem: problem, subjects: [])
            // A bucket, queue or table of our own that is gone meets every task alike: its calls count, not its tasks.
            // Else two slots retrying the same two messages would give both up before a third task showed the dead
            // end. (A denial still counts tasks: a policy may be on its way.)
            s.calls += 1
            run.subjects.insert(problem.isMissingResource ? "\(subject)#\(s.calls)" : subject)
            s.runs[call] = run
            guard run.subjects.count >= needed, s.deadEnd == nil else { return nil }
            let deadEnd = DeadEnd.setup(
                problem, action: call.action, resource: resource, error: error,
                calls: run.subjects.count, perTask: call.isPerTask && !problem.isMissingResource)
            s.deadEnd = deadEnd
            return deadEnd
        }
        if let found { reached(found) }
    }

    /// The set-up problem `error` shows for `call`. A receive has no per-task content: any final refusal of one
    /// (one that retrying cannot fix) will meet the next receive too.
    static func problem(_ call: DaemonCall, _ error: AWSError) -> SetupProblem? {
        if let problem = error.setupProblem { return problem }
        if call == .receive, error.kind == .service, !error.isRetryable { return .refused }
        return nil
    }

    /// How far a refusal of `call` for `problem` reaches.
    static func reach(_ call: DaemonCall, _ problem: SetupProblem) -> CallReach {
        switch problem {
        case .noCredentials, .credentialsRefused: return .credentials
        case .denied, .keyUnusable: return call.isObjectCall ? .object : .resource
        case .queueMissing, .bucketMissing, .tableMissing, .unknownAction, .wrongRegion, .refused: return .resource
        }
    }

    /// A call of `call` got an answer that shows the set-up works for it.
    public func succeeded(_ call: DaemonCall) {
        state.withLock {
            _ = $0.runs.removeValue(forKey: call)
            $0.everWorked.insert(call)
        }
    }
}

extension SetupProblem {
    /// A bucket, queue or table that does not exist.
    var isMissingResource: Bool { self == .bucketMissing || self == .queueMissing || self == .tableMissing }
}

/// How far a call's refusal reaches: what a retry, another task, or nothing at all can get past.
public enum CallReach: Sendable, Equatable {
    /// One object: that task's failure, once a call of its kind has worked since start.
    case object
    /// A bucket, a queue or a table: every task meets it.
    case resource
    /// The credentials: every call meets it.
    case credentials
}

/// One failed run of a message on this machine.
struct FailedRun: Sendable, Equatable {
    var messageID: String
    var receiveCount: Int
    /// Seconds since 1970.
    var at: Double
    var reason: String
    /// The message's last run: a failure gave it up, and no note can take that back.
    var lastRun = false
}

/// The failure budget (`failureBudget`): this machine's tasks that failed in a row, for reasons that may not be
/// their inputs' own (a non-zero exit, a timeout; a missing input or a taken output key are the input's and do not
/// count). A broken driver, a missing shared library or a corrupt environment fails every task here and none
/// elsewhere; by its error alone it looks like any failing input. Its pattern tells: `budget` failures in a row here
/// while the ledger shows other workers succeeding. Pure, so the rule is tested without a fleet.
struct FailureStreak: Sendable {
    /// Failures in a row that make the ledger worth asking; 0 turns the rule off.
    let budget: Int
    var runs: [FailedRun] = []
    /// When the ledger was last asked: at most once per `checkEvery` seconds while the streak lasts.
    var lastCheck: Double?
    static let checkEvery = 10.0

    init(budget: Int) { self.budget = max(0, budget) }

    mutating func worked() {
        runs = []
        lastCheck = nil
    }

    /// Notes a failure; the streak when the ledger should be asked now.
    mutating func failed(_ run: FailedRun, now: Double) -> [FailedRun]? {
        guard budget > 0 else { return nil }
        runs.append(run)
        // Only the runs since the streak began are given back; more than the budget's worth is kept for that.
        if runs.count > 1000 { runs.removeFirst(runs.count - 1000) }
        guard runs.count >= budget else { return nil }
        if let lastCheck, now - lastCheck < Self.checkEvery { return nil }
        lastCheck = now
        return runs
    }
}
