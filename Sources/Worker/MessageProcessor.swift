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
}

/// Processes one received message from start to fate: parse, attempt each input (download, run, judge, upload),
/// then carry out its `MessageFate`. A failure decides only this message's fate; the slot goes on.
struct MessageProcessor<Queue: WorkQueue, Store: ObjectStore, Runner: TaskRunner>: Sendable {
    let config: WorkerConfig
    let setting: TaskSetting
    let queue: Queue
    let store: Store
    let runner: Runner
    let lifecycle: Lifecycle
    /// Told of every queue and bucket call's end, to tell a task's failure from the daemon's dead end.
    let deadEnds: DeadEnds
    let plan: VisibilityPlan
    let clock: any WorkerClock
    let instanceID: String
    let hasRedrivePolicy: Bool
    /// Seconds before a failed message is retried, doubled for each earlier receive.
    let retryBackoff: Int
    /// The DynamoDB task ledger, when `ledgerTable` is set. Appending to it never waits for DynamoDB.
    let ledger: Ledger?

    /// `receivedAt` is when the receive returned: a message may have waited behind others the slot took with it,
    /// and its visibility timeout runs from then.
    func handle(_ message: SQSMessage, receivedAt: ContinuousClock.Instant, slot: Int, logger base: Logger) async {
        var messageLogger = base
        messageLogger[metadataKey: "sqs.message_id"] = "\(message.messageID)"
        let logger = messageLogger
        await ledger?.received()
        let inputs: [S3URI]
        do {
            switch try MessageParser(inputBucket: config.inputBucket, inputPrefix: config.inputPrefix).parse(
                message.body)
            {
            case .testEvent:
                logger.info("S3 test event deleted")
                await queue.delete(message, logger: logger)
                return
            case .tasks(let list):
                inputs = list
            }
        } catch {
            await settleBadMessage(message, reason: error.reason, logger: logger)
            return
        }
        if message.receiveCount > config.maxAttempts {
            await settleUsedUp(message, inputs: inputs, logger: logger)
            return
        }
        lifecycle.taskStarted()
        defer { lifecycle.taskFinished() }
        let outcomes = await withHeartbeat(
            for: message, receivedAt: receivedAt, plan: plan, clock: clock, logger: logger,
            extend: { seconds in
                await changeVisibility(
                    message, to: seconds, logger: logger, failure: "could not extend the message's visibility")
            }
        ) {
            // Each input (an S3 event may carry several) has its own fate: one that fails does not stop the others.
            var outcomes: [AttemptOutcome] = []
            for input in inputs {
                let outcome = await attempt(input, message: message, slot: slot, logger: logger)
                outcomes.append(outcome)
                if outcome == .interrupted { break }
            }
            return outcomes
        }
        await carryOut(
            MessageFate.after(
                outcomes, receiveCount: message.receiveCount, maxAttempts: config.maxAttempts,
                deadEnd: deadEnds.deadEnd != nil,
                retryDelay: plan.retryDelay(receiveCount: message.receiveCount, base: retryBackoff)), message,
            logger: logger)
    }

    func carryOut(_ fate: MessageFate, _ message: SQSMessage, logger: Logger) async {
        switch fate {
        case .delete:
            await queue.delete(message, logger: logger)
        case .release:
            lifecycle.count { $0.released += 1 }
            logger.notice("task interrupted by a stop; message released")
            await changeVisibility(message, to: 0, logger: logger)
        case .retry(let seconds, let recordNow):
            // Inputs that can never work are recorded now, each on its own; the message comes back for the rest
            // (the inputs that worked are done again then, to the same output keys).
            for failure in recordNow {
                lifecycle.count { $0.givenUp += 1 }
                await writeRecord(failure, message: message, logger: logger)
            }
            lifecycle.count { $0.failed += 1 }
            logger.info(
                "message will be retried",
                metadata: [
                    "retry.after_seconds": "\(seconds)",
                    "task.attempt": "\(message.receiveCount)",
                ])
            await changeVisibility(message, to: seconds, logger: logger)
        case .giveUp(let failures, let worthRedriving):
            var recorded = true
            for failure in failures {
                lifecycle.count { $0.givenUp += 1 }
                if await !writeRecord(failure, message: message, logger: logger) { recorded = false }
            }
            await settle(
                message, recorded: recorded, worthRedriving: worthRedriving,
                metadata: ["task.attempts": "\(message.receiveCount)"], logger: logger)
        }
    }

    /// The message of inputs given up leaves the queue by `FinalFate`.
    func settle(
        _ message: SQSMessage, recorded: Bool, worthRedriving: Bool, metadata: Logger.Metadata,
        logger: Logger
    ) async {
        switch FinalFate(recorded: recorded, hasDeadLetterQueue: hasRedrivePolicy, worthRedriving: worthRedriving) {
        case .deadLetterQueue:
            logger.error(
                recorded
                    ? "giving up: failure recorded; the queue's dead-letter queue takes the message"
                    : "giving up, but the failure record could not be written: left to the dead-letter queue",
                metadata: metadata)
            await changeVisibility(message, to: 0, logger: logger)
        case .delete:
            logger.error("giving up: failure recorded and message deleted", metadata: metadata)
            await queue.delete(message, logger: logger)
        case .keep:
            logger.error(
                "giving up, but the failure record could not be written: message kept",
                metadata: metadata.merging(["retry.after_seconds": "\(config.visibilityTimeout)"]) { $1 })
        }
    }

    /// A body that can never be processed: a record under `_failed/_bad-messages/`, then deleted (or on to the
    /// dead-letter queue, or kept, when the record cannot be written).
    func settleBadMessage(_ message: SQSMessage, reason: String, logger: Logger) async {
        logger.error("bad message: recorded under _failed/ and deleted", metadata: ["reason": "\(reason)"])
        lifecycle.count { $0.badMessages += 1 }
        let recorded = await write(
            FailureRecords.body(badMessage: message, reason: reason, instanceID: instanceID),
            key: FailureRecords.key(forBadMessage: message.messageID), subject: message.messageID,
            logger: logger)
        switch FinalFate(recorded: recorded, hasDeadLetterQueue: hasRedrivePolicy, worthRedriving: false) {
        case .delete:
            await queue.delete(message, logger: logger)
        case .deadLetterQueue:
            logger.error("bad message left to the dead-letter queue: its record could not be written")
            await changeVisibility(message, to: 0, logger: logger)
        case .keep:
            logger.error(
                "bad message kept: its record could not be written",
                metadata: ["retry.after_seconds": "\(config.visibilityTimeout)"])
        }
    }

    /// A message received after its `maxAttempts` attempts: an earlier receive gave it up but could not settle it.
    /// Each input gets a record unless one is there already (the attempt that gave up wrote it, with the command's
    /// stderr), then the message leaves as any given-up message does. Nothing is downloaded or run.
    func settleUsedUp(_ message: SQSMessage, inputs: [S3URI], logger: Logger) async {
        logger.error(
            "attempts used up: settling the message without running it again",
            metadata: [
                "task.attempts": "\(message.receiveCount)", "max_attempts": "\(config.maxAttempts)",
            ])
        var recorded = true
        for input in inputs {
            lifecycle.count { $0.givenUp += 1 }
            let failure = TaskFailure(
                input: input,
                reason: "received \(message.receiveCount) times, more than maxAttempts (\(config.maxAttempts)); "
                    + "not run again", outcome: nil)
            if await !writeRecord(failure, message: message, onlyIfAbsent: true, logger: logger) { recorded = false }
        }
        await settle(
            message, recorded: recorded, worthRedriving: true,
            metadata: ["task.attempts": "\(message.receiveCount)"], logger: logger)
    }

    // MARK: - Calls that settle a message
    //
    // Each runs to its end even when a stop's grace has cancelled the slot (`uncancelled`), and tells the dead-end
    // watch how it went.

    @discardableResult
    func changeVisibility(
        _ message: SQSMessage, to seconds: Int, logger: Logger,
        failure: String = "could not change the message's visibility"
    ) async -> Bool {
        let (queue, deadEnds, queueURL) = (self.queue, self.deadEnds, config.queueURL)
        return await uncancelled {
            do throws(AWSError) {
                try await queue.changeVisibility(message, to: seconds, logger: logger)
                deadEnds.succeeded(.changeVisibility)
                return true
            } catch {
                logger.warning("\(failure)", metadata: ["error": "\(error)"])
                deadEnds.failed(.changeVisibility, resource: queueURL, subject: message.messageID, error: error)
                return false
            }
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
            key: FailureRecords.key(forInput: failure.input.key), subject: message.messageID,
            onlyIfAbsent: onlyIfAbsent, logger: logger)
    }

    /// Returns whether the record was written. When it was not (the output bucket is missing or denied), the
    /// message must not be deleted: it would then leave no trace at all.
    func write(_ body: [UInt8], key: String, subject: String, onlyIfAbsent: Bool = false, logger: Logger) async -> Bool
    {
        let (store, deadEnds, bucket) = (self.store, self.deadEnds, config.outputBucket)
        return await uncancelled {
            do throws(AWSError) {
                try await store.put(
                    body, to: S3URI(bucket: bucket, key: key), contentType: "application/json",
                    onlyIfAbsent: onlyIfAbsent, logger: logger)
                deadEnds.succeeded(.putOutput)
                return true
            } catch  where onlyIfAbsent && error.httpStatus == 412 {
                deadEnds.succeeded(.putOutput)
                logger.info("a failure record is there already; kept", metadata: ["s3.key": "\(key)"])
                return true
            } catch {
                logger.error("could not write the failure record", metadata: ["s3.key": "\(key)", "error": "\(error)"])
                deadEnds.failed(.putOutput, resource: "s3://\(bucket)", subject: subject, error: error)
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
            await changeVisibility(message, to: 0, logger: logger)
        }
    }
}
