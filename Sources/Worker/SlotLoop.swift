import AWSCore
import AWSServices
import Logging
import Synchronization

/// One slot of the daemon: receive, then process what was received, until the daemon stops.
///
/// Receives ask for as many messages as the slot expects to finish soon (`ReceiveSizer`). A stop ends a long poll at
/// once; messages received but not started are released, and so is whatever a receive brings back after a stop.
/// Receive errors are counted by the dead-end watch (three refusals in a row end the daemon); errors that may pass
/// are retried with a growing pause, for at most `receiveOutage` before the daemon exits for a restart; throttles and
/// limits are waited out without end.
struct SlotLoop<Queue: WorkQueue, Store: ObjectStore, Runner: TaskRunner>: Sendable {
    let slot: Int
    let processor: MessageProcessor<Queue, Store, Runner>
    /// Process at most one message, then stop the daemon (`--once`).
    let once: Bool
    /// Long-poll wait, 0...20 s.
    let waitSeconds: Int
    /// Messages per receive, fixed; nil lets the slot size its receives.
    let fixedBatch: Int?
    /// How long receives may fail with errors that may pass before the daemon exits with status 1.
    let receiveOutage: Duration
    /// Overlap the transfers with the commands (`CommandStage`); never with `once`.
    var prefetch = false

    /// The pause after a failed receive: 2 s, doubling up to a minute, never much shorter than its step.
    static var receiveRetry: RetryPolicy { RetryPolicy(maxAttempts: .max, baseDelay: 1, maxDelay: 60, jitter: .equal) }

    var lifecycle: Lifecycle { processor.lifecycle }
    var clock: any WorkerClock { processor.clock }

    func run(logger base: Logger) async {
        var slotLogger = base
        slotLogger[metadataKey: "slot"] = "\(slot)"
        let logger = slotLogger
        let sizer = SharedSizer(ReceiveSizer(plan: processor.plan))
        var failures = 0
        var failingSince: ContinuousClock.Instant?
        let gate = CommandGate()
        let prefetch = self.prefetch && !once
        // The messages under way: one running its command (or uploading), and in a pipeline one more ahead of it.
        // Leaving the group waits for them.
        await withTaskGroup(of: Void.self) { underWay in
            // Tasks started in the group and not yet collected (a group keeps an ended task until it is collected).
            var inFlight = 0
            while !lifecycle.isStopping && !Task.isCancelled {
                // A receive ahead of the running command only when the slot's tasks take no longer than the plan
                // allows a message to wait ahead (and one that waits longer is released: `CommandStage`); else the
                // slot finishes what it has first.
                let average = sizer.withLock { $0.average }
                let ahead = prefetch && !gate.overdue && average.map { $0 <= processor.plan.prefetchHorizon } == true
                if !ahead {
                    await underWay.waitForAll()
                    inFlight = 0
                } else {
                    // Nothing is received while two messages are under way (one uploading, one in its command): a
                    // message received now would wait, before its heartbeat starts, for one of them to end.
                    while inFlight >= 2, await underWay.next() != nil { inFlight -= 1 }
                    if lifecycle.isStopping || Task.isCancelled { break }
                }
                let count = once ? 1 : fixedBatch ?? sizer.withLock { $0.batchSize }
                // A stop lets a receive under way end (within its long poll, `waitSeconds`), and what it brings is
                // released, noted, at once: cut off, a reply SQS had already sent would be lost in flight, and that
                // receive would count as a run with no note saying it was given back (CI saw a message given up
                // unrun so, at maxAttempts 1). Only the grace's end cancels it.
                let result: Result<[SQSMessage], AWSError>
                do throws(AWSError) {
                    result = .success(
                        try await processor.queue.receive(
                            count: count, waitSeconds: lifecycle.isQuiet ? min(1, waitSeconds) : waitSeconds,
                            logger: logger))
                } catch {
                    result = .failure(error)
                }
                switch result {
                case .failure(let error):
                    if lifecycle.isStopping { break }
                    failures += 1
                    // The seam told the dead-end watch (`WatchedQueue`): three refused in a row end the daemon.
                    if lifecycle.isStopping { break }
                    // Only errors that may pass make an outage; the others were counted above. A throttle or a
                    // limit (OverLimit: too many messages in flight) is an answer: the queue is there, and the slot
                    // waits it out for as long as it lasts.
                    failingSince = error.isRetryable && !error.isThrottle ? failingSince ?? clock.now : nil
                    if let since = failingSince, clock.now - since >= receiveOutage {
                        if lifecycle.requestStop(.queueUnreachable) {
                            logger.critical(
                                """
                                cannot go on: the queue has not answered a receive for \(Int(receiveOutage.seconds)) s; \
                                exiting for systemd to start the daemon again
                                """, metadata: ["error": "\(error)"])
                        }
                        break
                    }
                    let pause = Self.receiveRetry.delay(beforeRetry: failures + 1)
                    logger.warning(
                        "receive failed; trying again",
                        metadata: ["error": "\(error)", "retry.delay_s": "\(Int(pause))"])
                    await lifecycle.cancellingAtStop { [clock] in
                        try? await clock.sleep(for: .milliseconds(Int(pause * 1000)))
                    }
                case .success(let messages):
                    failures = 0
                    failingSince = nil
                    if messages.isEmpty {
                        lifecycle.emptyPoll()
                        // --once means at most one message: an empty poll ends the run too.
                        if once { lifecycle.requestStop(.once) }
                        continue
                    }
                    await process(
                        messages, receivedAt: clock.now, sizer: sizer, gate: prefetch ? gate : nil,
                        underWay: &underWay, inFlight: &inFlight,
                        logger: logger)
                    if once {
                        await underWay.waitForAll()
                        inFlight = 0
                        lifecycle.requestStop(.once)
                    }
                }
            }
        }
    }

    /// Starts the received messages in turn, each in `underWay`; what is not started when a stop comes (or after
    /// half its timeout) goes back at once. Without a `gate` each message is seen to its end before the next starts;
    /// with one (a pipeline), the next starts once this one's command may start, and this returns when the last has
    /// reached its command, its transfers still under way.
    func process(
        _ messages: [SQSMessage], receivedAt: ContinuousClock.Instant, sizer: SharedSizer, gate: CommandGate?,
        underWay: inout TaskGroup<Void>, inFlight: inout Int, logger: Logger
    ) async {
        let processor = self.processor
        let (slot, clock) = (self.slot, self.clock)
        await withHeldMessages(
            messages, receivedAt: receivedAt, plan: processor.plan, clock: clock,
            release: { late in
                await processor.release(late, reason: "held too long: the slot is busier than expected", logger: logger)
            }
        ) { held in
            while true {
                // At most one message besides the next is under way (in a pipeline, the one whose command runs): the
                // one before that, uploading, ends first. Two task folders per slot, and ended tasks collected.
                while inFlight >= (gate == nil ? 1 : 2), held.hasWaiting, await underWay.next() != nil {
                    inFlight -= 1
                }
                // A message ahead gave up on the running command (a long one): the rest go back too, at once.
                guard !lifecycle.isStopping, !Task.isCancelled, gate?.overdue != true, let message = held.next() else {
                    break
                }
                let stage = gate.map { CommandStage(gate: $0) }
                let ended = OneShot()
                let receivedAt = held.receivedAt
                inFlight += 1
                underWay.addTask {
                    let started = clock.now
                    await processor.handle(message, receivedAt: receivedAt, slot: slot, stage: stage, logger: logger)
                    // A message's time in the slot: all of it, or in a pipeline from its command on (what a message
                    // taken ahead of it would wait, and its upload).
                    // (A message that never reached its command says nothing about the slot's tasks.)
                    if stage == nil || stage?.enteredAt != nil {
                        sizer.withLock { $0.record(seconds: (clock.now - (stage?.enteredAt ?? started)).seconds) }
                    }
                    ended.fire()
                    stage?.reached.fire()
                }
                await (stage?.reached ?? ended).wait()
            }
            let left = held.takeAll()
            if !left.isEmpty {
                await processor.release(
                    left,
                    reason: lifecycle.isStopping
                        ? "stopping before it started" : "the slot's running command is a long one", logger: logger)
            }
        }
    }
}

/// The slot's `ReceiveSizer`, fed by its messages' tasks as each ends.
final class SharedSizer: Sendable {
    private let state: Mutex<ReceiveSizer>
    init(_ sizer: ReceiveSizer) { state = Mutex(sizer) }
    func withLock<T>(_ body: (inout ReceiveSizer) -> T) -> T { state.withLock { body(&$0) } }
}
