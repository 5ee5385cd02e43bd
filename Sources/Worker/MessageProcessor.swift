import AWSCore
import AWSServices
import FoundationEssentials
import Logging
import TaskLedger

/// What start-up resolved for running the command.
struct TaskSetting: Sendable {
    /// `analysisProgram`, its first word resolved to a path.
    var program: [String]
    /// The unpacked environment (`environmentPrefix`), where the command runs; nil to run in the task folder.
    var environmentDirectory: String?
    /// The daemon's environment, without its AWS credentials unless `passCredentials`.
    var environment: [String: String]
    var user: RunAsUser?
    /// The rule that keeps a run-as user's command from IMDS, checked before each command (`IMDSFence.ensure`).
    var fence: IMDSFence? = nil
    /// Where each task's cgroup is made, with the limits (`memoryMax`, `cpuMax`, `pidsMax`); nil without limits, or
    /// when the machine cannot give them (said once at start-up).
    var cgroups: Cgroups? = nil
}

/// Processes one received message from start to fate: parse, attempt each input (download, run, judge, upload),
/// then carry out its `MessageFate`. A failure decides only this message's fate; the slot goes on.
struct MessageProcessor<Queue: WorkQueue, Store: ObjectStore, Runner: TaskRunner>: Sendable {
    var config: WorkerConfig
    let setting: TaskSetting
    /// The queue and the store, each call's end told to the dead-end watch at the seam (`WatchedQueue`,
    /// `WatchedStore`): the message path never reports a call by hand.
    let queue: WatchedQueue<Queue>
    let store: WatchedStore<Store>
    let runner: Runner
    let lifecycle: Lifecycle
    /// Tells a task's failure from the daemon's dead end; read here only for whether one was met.
    let deadEnds: DeadEnds
    let plan: VisibilityPlan
    let clock: any WorkerClock
    let instanceID: String
    let hasRedrivePolicy: Bool
    /// Seconds before a failed message is retried, doubled for each earlier receive.
    let retryBackoff: Int
    /// The DynamoDB task ledger, when `ledgerTable` is set. Appending to it never waits for DynamoDB.
    let ledger: Ledger?
    /// The queue's redrive `maxReceiveCount`: a message given back unrun on that receive goes to the dead-letter
    /// queue at its next, without a run; it leaves a record first (`releaseUnrun`).
    var maxReceiveCount: Int? = nil

    init(
        config: WorkerConfig, setting: TaskSetting, queue: Queue, store: Store, runner: Runner, lifecycle: Lifecycle,
        deadEnds: DeadEnds, plan: VisibilityPlan, clock: any WorkerClock, instanceID: String, hasRedrivePolicy: Bool,
        retryBackoff: Int, ledger: Ledger?, maxReceiveCount: Int? = nil
    ) {
        self.config = config
        self.setting = setting
        self.queue = WatchedQueue(queue, watch: deadEnds, queueURL: config.queueURL) { lifecycle.isStopping }
        self.store = WatchedStore(store, watch: deadEnds, inputBucket: config.inputBucket) { lifecycle.isStopping }
        self.runner = runner
        self.lifecycle = lifecycle
        self.deadEnds = deadEnds
        self.plan = plan
        self.clock = clock
        self.instanceID = instanceID
        self.hasRedrivePolicy = hasRedrivePolicy
        self.retryBackoff = retryBackoff
        self.ledger = ledger
        self.maxReceiveCount = maxReceiveCount
    }

    /// `receivedAt` is when the receive returned: a message may have waited behind others the slot took with it,
    /// and its visibility timeout runs from then.
    ///
    /// In a slot's pipeline, `stage` holds the slot's command gate (`CommandStage`).
    func handle(
        _ message: SQSMessage, receivedAt: ContinuousClock.Instant, slot: Int, stage: CommandStage? = nil,
        logger base: Logger
    ) async {
        await CallSubject.$messageID.withValue(message.messageID) {
            await handleAsSubject(message, receivedAt: receivedAt, slot: slot, stage: stage, logger: base)
        }
    }

    private func handleAsSubject(
        _ message: SQSMessage, receivedAt: ContinuousClock.Instant, slot: Int, stage: CommandStage?,
        logger base: Logger
    ) async {
        var messageLogger = base
        messageLogger[metadataKey: "sqs.message_id"] = "\(message.messageID)"
        let logger = messageLogger
        await emit(.received, message, logger: logger)
        let parser = MessageParser(inputBucket: config.inputBucket, inputPrefix: config.inputPrefix)
        let parsed = Result { () throws(BadMessage) in try parser.parse(message.body) }
        if case .success(.partialEvent(_, let unreadable)) = parsed {
            // The readable records go on; the others are recorded now, once, as a bad message's.
            let reason = "records of this S3 event cannot be read: " + unreadable.joined(separator: "; ")
            logger.error("S3 event records cannot be read: recorded under _failed/", metadata: ["reason": "\(reason)"])
            _ = await write(
                FailureRecords.body(badMessage: message, reason: reason, instanceID: instanceID),
                key: FailureRecords.key(forBadMessage: message.messageID),
                onlyIfAbsent: true, logger: logger)
        }
        let inputs: [S3URI]
        switch parsed {
        case .success(.tasks(let named)), .success(.partialEvent(let named, _)): inputs = named
        default: inputs = []
        }
        guard let runsBefore = await runsBefore(message, inputs: inputs, logger: logger) else {
            // Its runs cannot be counted now: back after the backoff, this receive noted as no run.
            await carryOut(
                .postpone(afterSeconds: plan.retryDelay(receiveCount: message.receiveCount, base: retryBackoff)),
                message, logger: logger)
            return
        }
        switch MessageFate.before(parsed, runsBefore: runsBefore, maxAttempts: config.maxAttempts) {
        case .settle(let fate):
            if case .success(.testEvent) = parsed { logger.info("S3 test event deleted") }
            await carryOut(fate, message, logger: logger)
        case .attempt(let inputs):
            let outcomes = await attempt(
                inputs, message: message, receivedAt: receivedAt, slot: slot, stage: stage,
                lastRun: runsBefore + 1 >= config.maxAttempts, logger: logger)
            // On the last receive the dead-letter queue allows, a failure is given up now, with its record: SQS
            // would move the message at its next receive, with none (runs that count can be fewer than receives).
            let lastReceive = maxReceiveCount.map { message.receiveCount >= $0 } ?? false
            let fate = MessageFate.after(
                outcomes, runs: runsBefore + 1, maxAttempts: lastReceive ? runsBefore + 1 : config.maxAttempts,
                deadEnd: deadEnds.failuresAreNotTheTasks,
                retryDelay: plan.retryDelay(receiveCount: message.receiveCount, base: retryBackoff))
            // This machine is leaving for its failures (`FailureStreak`): the runs that failed here in a row spend
            // no attempt either.
            for run in deadEnds.takeBadNodeRuns() {
                await releaseNotes.note(messageID: run.messageID, receiveCount: run.receiveCount, logger: logger)
            }
            await carryOut(fate, message, logger: logger)
        }
    }

    /// Attempts each input in turn while a heartbeat keeps the message hidden. Each input (an S3 event may carry
    /// several) has its own outcome: one that fails does not stop the others; a stop does.
    func attempt(
        _ inputs: [S3URI], message: SQSMessage, receivedAt: ContinuousClock.Instant, slot: Int,
        stage: CommandStage? = nil, lastRun: Bool = false, logger: Logger
    ) async -> [AttemptOutcome] {
        lifecycle.taskStarted()
        defer { lifecycle.taskFinished() }
        return await withHeartbeat(
            for: message, receivedAt: receivedAt, plan: plan, clock: clock, logger: logger,
            extend: { seconds in await extendVisibility(message, to: seconds, logger: logger) }
        ) {
            var outcomes: [AttemptOutcome] = []
            for (index, input) in inputs.enumerated() {
                let outcome = await attempt(
                    input, message: message, slot: slot, stage: stage, lastInput: index == inputs.count - 1,
                    lastRun: lastRun, logger: logger)
                outcomes.append(outcome)
                // A stop, or trouble that is not the task's: the message goes back whole, the rest unrun.
                if outcome == .interrupted || outcome.deferral != nil { break }
            }
            // Whatever happened, the slot's gate is not this message's any more.
            stage?.leave()
            return outcomes
        }
    }

    /// The message path's bookkeeping, in one observer (`MessageBooks`).
    var books: MessageBooks {
        MessageBooks(lifecycle: lifecycle, ledger: ledger, deadEnds: deadEnds, maxAttempts: config.maxAttempts)
    }

    func emit(_ event: MessageEvent, _ message: SQSMessage, logger: Logger) async {
        await books.observe(event, message: message, logger: logger)
    }

    /// Carries out a fate: the one place where a message is deleted, released, put back, or recorded and settled.
    func carryOut(_ fate: MessageFate, _ message: SQSMessage, logger: Logger) async {
        let attempts: Logger.Metadata = ["task.attempts": "\(message.receiveCount)"]
        await emit(.settling(fate, attempt: message.receiveCount), message, logger: logger)
        switch fate {
        case .delete:
            await queue.delete(message, logger: logger)
        case .release:
            // The daemon's choice, not the task's failure: no attempt spent.
            await releaseUnrun(message, logger: logger)
        case .postpone(let seconds):
            await releaseUnrun(message, after: seconds, logger: logger)
        case .retry(let seconds, let recordNow):
            // Inputs that can never work are recorded now, each on its own; the message comes back for the rest
            // (the inputs that worked are done again then, to the same output keys).
            for failure in recordNow {
                await writeRecord(failure, message: message, logger: logger)
            }
            await changeVisibility(message, to: seconds, logger: logger)
        case .giveUp(let failures, let worthRedriving):
            var recorded = true
            for failure in failures {
                if await !writeRecord(failure, message: message, logger: logger) { recorded = false }
            }
            await leave(
                message, recorded: recorded, worthRedriving: worthRedriving, what: "giving up",
                metadata: attempts, logger: logger)
        case .badMessage(let reason):
            let recorded = await write(
                FailureRecords.body(badMessage: message, reason: reason, instanceID: instanceID),
                key: FailureRecords.key(forBadMessage: message.messageID), logger: logger)
            await leave(
                message, recorded: recorded, worthRedriving: false, what: "bad message", metadata: [:],
                logger: logger)
        case .usedUp(let inputs, let runs):
            // An earlier receive gave it up but could not settle it. Each input gets a record unless one is there
            // already (the attempt that gave up wrote it, with the command's stderr).
            var recorded = true
            for input in inputs {
                let failure = TaskFailure(
                    input: input,
                    reason:
                        "ran \(runs) times in \(message.receiveCount) receives, maxAttempts is \(config.maxAttempts); not run again",
                    outcome: nil)
                if await !writeRecord(failure, message: message, onlyIfAbsent: true, logger: logger) {
                    recorded = false
                }
            }
            await leave(
                message, recorded: recorded, worthRedriving: true, what: "giving up", metadata: attempts,
                logger: logger)
        }
    }

    /// How a message whose work is over for good leaves the queue (`FinalFate`): deleted once recorded, on to the
    /// dead-letter queue, or kept. `what` heads its log line: "giving up" or "bad message".
    func leave(
        _ message: SQSMessage, recorded: Bool, worthRedriving: Bool, what: String, metadata: Logger.Metadata,
        logger: Logger
    ) async {
        switch FinalFate(recorded: recorded, hasDeadLetterQueue: hasRedrivePolicy, worthRedriving: worthRedriving) {
        case .deadLetterQueue:
            logger.error(
                recorded
                    ? "\(what): failure recorded; the queue's dead-letter queue takes the message"
                    : "\(what), but the failure record could not be written: left to the dead-letter queue",
                metadata: metadata)
            await changeVisibility(message, to: 0, logger: logger)
        case .delete:
            if what != "bad message" {
                logger.error("\(what): failure recorded and message deleted", metadata: metadata)
            }
            await queue.delete(message, logger: logger)
        case .keep:
            // Hidden for its visibility timeout, then back: this daemon waits for it (the tail).
            lifecycle.releasedForRetry(seconds: config.visibilityTimeout)
            logger.error(
                "\(what), but the failure record could not be written: message kept",
                metadata: metadata.merging(["retry.after_seconds": "\(config.visibilityTimeout)"]) { $1 })
        }
    }

    // MARK: - Calls that settle a message
    //
    // Each runs to its end even when a stop's grace has cancelled the slot (`uncancelled`), and tells the dead-end
    // watch how it went.

    /// Settles a message's visibility (a release, a retry's backoff, a hand-over to the dead-letter queue): it goes
    /// out even when a stop's grace has cancelled the slot.
    ///
    /// A message that comes back later (a retry's delay, or its whole visibility timeout when the change failed) is
    /// one this daemon must be there to take: it does not leave the tail to others until it may have (`Lifecycle`).
    func changeVisibility(_ message: SQSMessage, to seconds: Int, logger: Logger) async {
        let processor = self
        let changed = await uncancelled {
            await processor.setVisibility(
                message, to: seconds, logger: logger,
                failure: "could not change the message's visibility")
        }
        if !changed {
            lifecycle.releasedForRetry(seconds: config.visibilityTimeout)
        } else if seconds > 0 {
            lifecycle.releasedForRetry(seconds: seconds)
        }
    }

    /// One heartbeat's extension. Unlike a settling call it is cancelled with its task: when the task ends, the
    /// message is about to be settled anyway, and a late extension must not hold up the release.
    func extendVisibility(_ message: SQSMessage, to seconds: Int, logger: Logger) async -> Bool {
        await setVisibility(message, to: seconds, logger: logger, failure: "could not extend the message's visibility")
    }

    private func setVisibility(_ message: SQSMessage, to seconds: Int, logger: Logger, failure: String) async -> Bool {
        do throws(AWSError) {
            try await queue.changeVisibility(message, to: seconds, logger: logger)
            return true
        } catch {
            if Task.isCancelled { return false }
            logger.warning("\(failure)", metadata: ["error": "\(error)"])
            return false
        }
    }

    /// Writes one input's failure record. With `onlyIfAbsent`, a record already there is kept (S3's conditional
    /// write, `If-None-Match: *`) and counts as written.
    @discardableResult
    func writeRecord(_ failure: TaskFailure, message: SQSMessage, onlyIfAbsent: Bool = false, logger: Logger) async
        -> Bool
    {
        await write(
            FailureRecords.body(failure, message: message, instanceID: instanceID, time: Date()),
            key: FailureRecords.key(forInput: failure.input.key),
            onlyIfAbsent: onlyIfAbsent, logger: logger)
    }

    /// Returns whether the record was written. When it was not (the output bucket is missing or denied), the
    /// message must not be deleted: it would then leave no trace at all.
    func write(_ body: [UInt8], key: String, onlyIfAbsent: Bool = false, logger: Logger) async -> Bool {
        let (store, bucket) = (self.store, config.outputBucket)
        return await uncancelled {
            do throws(AWSError) {
                try await store.put(
                    body, to: S3URI(bucket: bucket, key: key), contentType: "application/json",
                    onlyIfAbsent: onlyIfAbsent, logger: logger)
                return true
            } catch  where onlyIfAbsent && error.httpStatus == 412 {
                logger.info("a failure record is there already; kept", metadata: ["s3.key": "\(key)"])
                return true
            } catch {
                logger.error("could not write the failure record", metadata: ["s3.key": "\(key)", "error": "\(error)"])
                return false
            }
        }
    }

    /// Makes messages the slot received but did not start visible again at once, for any worker to take.
    func release(_ messages: [SQSMessage], reason: String, logger: Logger) async {
        for message in messages {
            logger.notice(
                "message released before its task started",
                metadata: [
                    "sqs.message_id": "\(message.messageID)", "reason": "\(reason)",
                ])
            await CallSubject.$messageID.withValue(message.messageID) { await releaseUnrun(message, logger: logger) }
        }
    }

    /// Gives a message back without having run it (at once, or `after` seconds), noting so first
    /// (`ReleaseNotes`): the receive spends none of its attempts.
    func releaseUnrun(_ message: SQSMessage, after seconds: Int = 0, logger: Logger) async {
        await noteUnrun(message, logger: logger)
        await changeVisibility(message, to: seconds, logger: logger)
    }

    /// Notes a receive given back unrun; on the last receive the dead-letter queue allows, also leaves a record,
    /// since SQS moves the message there at its next receive, before it could run again.
    func noteUnrun(_ message: SQSMessage, logger: Logger) async {
        let notes = releaseNotes
        await uncancelled { await notes.note(message, logger: logger) }
        guard let last = maxReceiveCount, message.receiveCount >= last else { return }
        logger.error(
            "given back unrun on its last receive before the dead-letter queue: recorded under _failed/_unrun/",
            metadata: ["max_receive_count": "\(last)"])
        _ = await write(
            FailureRecords.body(
                badMessage: message,
                reason:
                    "given back unrun (a stop, this machine's trouble, a throttle) on receive \(message.receiveCount), the last the dead-letter queue allows (maxReceiveCount \(last)): the dead-letter queue takes it; raise maxReceiveCount above maxAttempts (setup-aws --max-attempts)",
                instanceID: instanceID),
            key: "_failed/_unrun/\(message.messageID).json", onlyIfAbsent: true,
            logger: logger)
    }
}
