import AWSCore
import AWSServices
import TaskLedger
import Dispatch
@preconcurrency import Glibc
import Logging

// What ends a run from outside the slots: a drained queue, a spot interruption notice, SIGTERM or SIGINT.
extension Daemon {
    /// Drained means: no slot has had work for `idleTimeout`, their long polls came back empty, and the queue
    /// reports nothing visible, in flight or delayed on two checks in a row. Messages in flight on other
    /// instances keep this worker waiting: they may fail and come back.
    ///
    /// The tail: with a ledger, a worker does not idle behind other workers' long tasks. When nothing is visible or
    /// delayed, it leaves once the messages in flight are no more than the other workers busy with a task (by
    /// their fresh heartbeats): each of those stays until its task ends and can take back a message that fails.
    /// One idle worker stays all the same, the keeper (the lowest instance id among the idle ones), for what no busy
    /// worker will take back: a message whose worker died, or one released where nobody saw. A worker also stays
    /// while a message it released may still come back. Without a ledger (or without `dynamodb:Query` on it), it
    /// waits for the queue to empty, as before.
    func watchForDrain(
        _ queue: some WorkQueue, _ lifecycle: Lifecycle, ledger: Ledger?, clock: any WorkerClock,
        logger: Logger
    ) async {
        let interval = Duration.seconds(max(1, min(5, config.idleTimeout / 3)))
        var zeroChecks = 0
        var tailChecks = 0
        var tailRule = ledger != nil
        while !lifecycle.isStopping {
            do { try await clock.sleep(for: interval) } catch { return }
            guard lifecycle.quietFor(config.idleTimeout) else {
                lifecycle.setQuiet(false)
                zeroChecks = 0
                tailChecks = 0
                continue
            }
            do {
                let counts = try await queue.counts(logger: logger)
                let total = counts.total
                // Idle, and the queue shows nothing anywhere: the end is near, and receives poll briefly from now on,
                // so that the stop does not wait on a 20-second long poll begun just before it (an instance's last
                // 20 s, for nothing). In the tail (messages in flight elsewhere) they keep their long polls.
                lifecycle.setQuiet(total == 0)
                // The drain also wants a receive of this daemon's own to have come back empty since the last work:
                // the counts are approximate.
                guard lifecycle.idle(for: config.idleTimeout) else {
                    zeroChecks = 0
                    tailChecks = 0
                    continue
                }
                zeroChecks = total == 0 ? zeroChecks + 1 : 0
                if total > 0 {
                    logger.debug("idle, but the queue still has messages", metadata: ["queue.messages": "\(total)"])
                }
                var tailHolds = false
                // The ledger is read only in the tail, and not while a message this worker released may come back.
                if tailRule, let ledger, TailRule.isTail(counts), !lifecycle.awaitsReleasedWork {
                    do {
                        // Fresh: written within one and a half heartbeat intervals (one late write), and never less
                        // than 30 s: a write may wait behind others on a loaded machine.
                        let others = try await ledger.others(
                            freshWithin: max(30, 1.5 * options.ledger.heartbeatInterval))
                        let me = await ledger.ownInstanceID
                        let keeper = TailRule.keeper(me: me, others: others)
                        tailHolds = TailRule.mayLeave(counts: counts, others: others, me: me)
                        if tailHolds && tailChecks >= 1 {
                            logger.notice(
                                "queue drained but for the tail: leaving it to the workers busy with it",
                                metadata: [
                                    "queue.in_flight": "\(counts.inFlight)", "workers.busy": "\(others.busy)",
                                    "workers.keeper": "\(keeper)",
                                ])
                            lifecycle.requestStop(.drained)
                        }
                    } catch {
                        // A refusal or a missing table ends the rule for this run; anything else (throttling) skips
                        // this check only.
                        if error.setupProblem != nil {
                            tailRule = false
                            logger.notice(
                                "cannot read the fleet's heartbeats (the ledger table, and dynamodb:Query on it); waiting for the queue to empty instead of leaving the tail to others",
                                metadata: ["error": "\(error)"])
                        }
                    }
                }
                // Two checks in a row, as for the drain.
                tailChecks = tailHolds ? tailChecks + 1 : 0
            } catch {
                if Task.isCancelled { return }
                logger.warning("cannot read the queue's counts", metadata: ["error": "\(error)"])
                zeroChecks = 0
                tailChecks = 0
            }
            if zeroChecks >= 2 {
                logger.notice("queue drained", metadata: ["idle_seconds": "\(config.idleTimeout)"])
                lifecycle.requestStop(.drained)
            }
        }
    }

    /// Polls IMDS for a spot interruption notice and a rebalance recommendation; on either, drains as for SIGTERM,
    /// inside the two-minute warning (a rebalance recommendation usually comes earlier, and then the instance powers
    /// off so that a replacement starts elsewhere).
    func watchForSpot(_ imds: IMDSClient, _ lifecycle: Lifecycle, clock: any WorkerClock, logger: Logger) async {
        while !lifecycle.isStopping {
            if let action = try? await imds.spotInstanceAction() {
                logger.warning(
                    "spot interruption notice: draining",
                    metadata: [
                        "spot.action": "\(action.action)", "spot.time": "\(action.time)",
                    ])
                lifecycle.requestStop(.spotInterruption)
                return
            }
            if let noticeTime = try? await imds.rebalanceRecommendation() {
                logger.warning(
                    "spot rebalance recommendation: draining, then powering off for a replacement elsewhere",
                    metadata: ["spot.notice_time": "\(noticeTime)"])
                lifecycle.requestStop(.rebalanceRecommendation)
                return
            }
            do { try await clock.sleep(for: .milliseconds(Int(options.spotPollSeconds * 1000))) } catch { return }
        }
    }

    func installSignalHandlers(_ lifecycle: Lifecycle, logger: Logger) -> [DispatchSourceSignal] {
        onStopSignals { number in
            logger.notice(
                "stop requested: finishing running tasks, taking no new ones",
                metadata: [
                    "signal": "\(number == SIGTERM ? "SIGTERM" : "SIGINT")",
                    "grace_seconds": "\(config.shutdownGrace)",
                ])
            lifecycle.requestStop(.signal)
        }
    }
}

/// Calls `handler` (on a global queue) for each SIGTERM and SIGINT, which no longer end the process, until the
/// returned sources are cancelled.
func onStopSignals(_ handler: @escaping @Sendable (Int32) -> Void) -> [DispatchSourceSignal] {
    [SIGTERM, SIGINT].map { number in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { handler(number) }
        source.resume()
        return source
    }
}

/// The tail rule's decision, apart from the reading it is made from (`Daemon.watchForDrain`).
public enum TailRule {
    /// The idle worker that stays while anything is in flight: the lowest instance id among the idle ones.
    public static func keeper(me: String, others: Ledger.FleetView) -> String { ([me] + others.idle).min()! }

    /// The tail: nothing visible or delayed, something still in flight (an empty queue is the ordinary drain).
    public static func isTail(_ counts: SQSClient.MessageCounts) -> Bool {
        counts.visible == 0 && counts.delayed == 0 && counts.inFlight > 0
    }

    /// Whether an idle worker (`me`) may leave: in the tail, no more in flight than the other workers busy with a
    /// task, and it is not the keeper.
    public static func mayLeave(counts: SQSClient.MessageCounts, others: Ledger.FleetView, me: String) -> Bool {
        isTail(counts) && counts.inFlight <= others.busy && keeper(me: me, others: others) != me
    }
}
