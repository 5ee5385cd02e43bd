import AWSServices
import FoundationEssentials
import Logging
import TaskLedger

/// What happens on the message path, as it happens. The path only says what happened (`MessageBooks.observe`); the
/// books kept of it (the log's lines, the run's counters, the ledger's items, the machine's health) are kept in one
/// place, so that the path reads as its steps.
enum MessageEvent: Sendable {
    /// A message arrived in a slot.
    case received
    /// A task (one input of the message) starts: `attempt` is the message's receive count.
    case taskStarted(input: S3URI, attempt: Int, slot: Int)
    /// Its input is on disk.
    case downloaded(bytes: Int64)
    /// Its command starts, and ends (whatever the way).
    case commandStarted(input: S3URI, attempt: Int)
    case commandEnded(input: S3URI, attempt: Int)
    /// The task ended so, after `seconds`, with `bytesIn` downloaded.
    /// `lastRun`: the message's last run by `maxAttempts`, given up if it failed.
    case taskEnded(
        AttemptOutcome, input: S3URI, attempt: Int, seconds: Double, bytesIn: Int64, usage: TaskUsage?, lastRun: Bool)
    /// The message's fate is decided, and about to be carried out.
    case settling(MessageFate, attempt: Int)
}

/// The one observer of the message path's events: it keeps the log, the counters (`Lifecycle.counts`), the ledger
/// and the machine's health (`DeadEnds.nodeTrouble`).
struct MessageBooks: Sendable {
    let lifecycle: Lifecycle
    let ledger: Ledger?
    let deadEnds: DeadEnds
    let maxAttempts: Int

    func observe(_ event: MessageEvent, message: SQSMessage, logger: Logger) async {
        switch event {
        case .received:
            await ledger?.received()
        case .taskStarted(let input, let attempt, let slot):
            logger.info("task start", metadata: ["task.attempt": "\(attempt)"])
            await ledger?.taskStarted(inputKey: input.key, attempt: attempt, slot: slot, messageID: message.messageID)
        case .downloaded(let bytes):
            lifecycle.count { $0.bytesIn += bytes }
        case .commandStarted(let input, let attempt):
            await ledger?.commandStarted(inputKey: input.key, attempt: attempt)
        case .commandEnded(let input, let attempt):
            await ledger?.commandEnded(inputKey: input.key, attempt: attempt)
        case .taskEnded(let outcome, let input, let attempt, let seconds, let bytesIn, let usage, let lastRun):
            await ledger?.record(
                outcome, input: input, attempt: attempt, seconds: seconds, bytesIn: bytesIn, usage: usage,
                messageID: message.messageID)
            taskEnded(outcome, seconds: seconds, logger: logger)
            // The machine's health: a task that met its trouble counts, a task that worked clears the count. A task
            // that failed says nothing either way (it may have failed of the machine in a way nobody could tell).
            switch outcome {
            case .deferred(let reason, let scope) where scope.isMachine:
                deadEnds.nodeTrouble(reason, subject: message.messageID)
            case .uploaded, .noOutput: deadEnds.taskWorked()
            // Only a command that ran and failed: a transfer that failed says nothing of this machine's commands.
            case .failed(let failure) where failure.outcome != nil:
                let now = Date().timeIntervalSince1970
                // The command's own last word says what is broken ("libcuda.so.1: cannot open shared object file").
                let lastLine = failure.stderrTail.split(whereSeparator: \.isNewline).last
                let said = lastLine.map { ": " + $0.prefix(300) } ?? ""
                let run = FailedRun(
                    messageID: message.messageID, receiveCount: attempt, at: now, reason: failure.reason + said,
                    lastRun: lastRun)
                if let streak = deadEnds.taskFailed(run, now: now), let ledger {
                    await judge(streak, ledger: ledger, logger: logger)
                }
            case .deferred, .interrupted, .failed, .inputMissing, .outputTaken: break
            }
        case .settling(let fate, let attempt):
            settling(fate, attempt: attempt, logger: logger)
        }
    }

    /// `failureBudget` tasks failed here in a row: if the ledger shows the other workers completing tasks
    /// meanwhile, and mostly succeeding (fewer than half of their tasks failed), this machine is the trouble (a
    /// broken driver, a missing library), not the inputs, and it leaves. Without a ledger nothing tells the two
    /// apart, and the rule is off. A ledger that cannot be read now is asked again at the next failure (at most
    /// every `FailureStreak.checkEvery` seconds).
    private func judge(_ streak: [FailedRun], ledger: Ledger, logger: Logger) async {
        guard let first = streak.first, let last = streak.last else { return }
        let others: Ledger.OthersRecently
        do {
            others = try await ledger.others(since: first.at)
        } catch {
            logger.warning(
                "\(streak.count) tasks in a row failed here; cannot read the ledger to tell whether others succeed",
                metadata: ["error": "\(error)"])
            return
        }
        guard !others.succeeding.isEmpty, others.failed * 2 < others.completed + others.failed else { return }
        let names = others.succeeding.prefix(5).joined(separator: ", ")
        deadEnds.leaveAsBadNode(
            "the last \(streak.count) tasks failed on this machine while \(others.succeeding.count) other workers completed \(others.completed) tasks (\(names)); the last failure: \(last.reason)",
            runs: streak)
    }

    private func taskEnded(_ outcome: AttemptOutcome, seconds: Double, logger: Logger) {
        switch outcome {
        case .uploaded(let key, let bytes):
            lifecycle.count {
                $0.succeeded += 1
                $0.bytesOut += bytes
            }
            logger.info(
                "task done",
                metadata: [
                    "task.seconds": "\(seconds)", "task.output": "\(key)",
                    "task.bytes_out": "\(bytes)", "task.exit_status": "0",
                ])
        case .noOutput:
            lifecycle.count { $0.noOutput += 1 }
            logger.info("task done without output", metadata: ["task.seconds": "\(seconds)", "task.exit_status": "0"])
        case .failed(let failure):
            logger.warning(
                "task failed",
                metadata: [
                    "task.seconds": "\(seconds)", "reason": "\(failure.reason)",
                    "task.exit_status": "\(failure.outcome?.summary ?? "none")",
                ])
        case .inputMissing(let failure):
            logger.error("input does not exist", metadata: ["reason": "\(failure.reason)"])
        case .interrupted:
            break
        case .deferred(let reason, let scope):
            logger.warning(
                scope.isMachine
                    ? "task deferred: this machine's trouble, not the task's" : "task deferred: AWS asks to slow down",
                metadata: ["reason": "\(reason)"])
        case .outputTaken(let failure):
            logger.warning("task failed: its output key is taken", metadata: ["reason": "\(failure.reason)"])
        }
    }

    /// The counters and the line of a fate; the lines of a message that leaves for good (`MessageProcessor.leave`)
    /// depend on how it leaves, and are written there.
    private func settling(_ fate: MessageFate, attempt: Int, logger: Logger) {
        switch fate {
        case .delete:
            break
        case .release:
            lifecycle.count { $0.released += 1 }
            // Not at a stop: a message ahead in the slot's pipeline that waited too long for its command.
            logger.notice(
                lifecycle.isStopping
                    ? "task interrupted by a stop; message released" : "task not started; message released")
        case .postpone(let seconds):
            lifecycle.count { $0.released += 1 }
            logger.notice(
                "AWS asks to slow down: message back later, no attempt spent",
                metadata: ["retry.after_seconds": "\(seconds)"])
        case .retry(let seconds, let recordNow):
            lifecycle.count {
                $0.givenUp += recordNow.count
                $0.failed += 1
            }
            logger.info(
                "message will be retried",
                metadata: ["retry.after_seconds": "\(seconds)", "task.attempt": "\(attempt)"])
        case .giveUp(let failures, _):
            lifecycle.count { $0.givenUp += failures.count }
        case .badMessage(let reason):
            lifecycle.count { $0.badMessages += 1 }
            logger.error("bad message: recorded under _failed/ and deleted", metadata: ["reason": "\(reason)"])
        case .usedUp(let inputs, let runs):
            lifecycle.count { $0.givenUp += inputs.count }
            logger.error(
                "attempts used up: settling the message without running it again",
                metadata: [
                    "task.attempts": "\(attempt)", "max_attempts": "\(maxAttempts)", "task.runs": "\(runs)",
                ])
        }
    }
}
