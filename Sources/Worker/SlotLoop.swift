import AWSCore
import AWSServices
import Logging

/// One slot of the daemon: receive, then process what was received, until the daemon stops.
///
/// Receives ask for as many messages as the slot expects to finish soon (`ReceiveSizer`). A stop ends a long poll at
/// once; messages received but not started are released, and so is whatever a receive brings back after a stop.
/// Receive errors are counted by the dead-end watch (three refusals in a row end the daemon); errors that may pass
/// are retried with a growing pause, for at most `receiveOutage` before the daemon exits for a restart.
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

    /// The pause after a failed receive: 2 s, doubling up to a minute, never much shorter than its step.
    static var receiveRetry: RetryPolicy { RetryPolicy(maxAttempts: .max, baseDelay: 1, maxDelay: 60, jitter: .equal) }

    var lifecycle: Lifecycle { processor.lifecycle }
    var clock: any WorkerClock { processor.clock }

    func run(logger base: Logger) async {
        var slotLogger = base
        slotLogger[metadataKey: "slot"] = "\(slot)"
        let logger = slotLogger
        var sizer = ReceiveSizer(plan: processor.plan)
        var failures = 0
        var receives = 0
        var failingSince: ContinuousClock.Instant?
        while !lifecycle.isStopping && !Task.isCancelled {
            let count = once ? 1 : fixedBatch ?? sizer.batchSize
            let (queue, waitSeconds) = (processor.queue, self.waitSeconds)
            let result = await lifecycle.cancellingAtStop { () -> Result<[SQSMessage], AWSError> in
                do throws(AWSError) {
                    return .success(try await queue.receive(count: count, waitSeconds: waitSeconds, logger: logger))
                } catch {
                    return .failure(error)
                }
            }
            receives += 1
            switch result {
            case .failure(let error):
                if lifecycle.isStopping { break }
                failures += 1
                // Each receive is a call of its own: three refused in a row end the daemon.
                processor.deadEnds.failed(
                    .receive, resource: processor.config.queueURL, subject: "\(slot)-\(receives)",
                    error: error)
                if lifecycle.isStopping { break }
                // Only errors that may pass make an outage; the others were counted above.
                failingSince = error.isRetryable ? failingSince ?? clock.now : nil
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
                    "receive failed; trying again", metadata: ["error": "\(error)", "retry.delay_s": "\(Int(pause))"])
                await lifecycle.cancellingAtStop { [clock] in
                    try? await clock.sleep(for: .milliseconds(Int(pause * 1000)))
                }
            case .success(let messages):
                failures = 0
                failingSince = nil
                processor.deadEnds.succeeded(.receive)
                if messages.isEmpty {
                    lifecycle.emptyPoll()
                    // --once means at most one message: an empty poll ends the run too.
                    if once { lifecycle.requestStop(.once) }
                    continue
                }
                await process(messages, receivedAt: clock.now, sizer: &sizer, logger: logger)
                if once { lifecycle.requestStop(.once) }
            }
        }
    }

    /// Starts the received messages in turn; what is not started when a stop comes (or after half its timeout)
    /// goes back at once.
    func process(
        _ messages: [SQSMessage], receivedAt: ContinuousClock.Instant, sizer: inout ReceiveSizer,
        logger: Logger
    ) async {
        let processor = self.processor
        sizer = await withHeldMessages(
            messages, receivedAt: receivedAt, plan: processor.plan, clock: clock,
            release: { late in
                await processor.release(late, reason: "held too long: the slot is busier than expected", logger: logger)
            }
        ) { [sizer] held in
            var sizer = sizer
            while !lifecycle.isStopping, !Task.isCancelled, let message = held.next() {
                let started = clock.now
                await processor.handle(message, receivedAt: held.receivedAt, slot: slot, logger: logger)
                sizer.record(seconds: (clock.now - started).seconds)
            }
            let left = held.takeAll()
            if !left.isEmpty { await processor.release(left, reason: "stopping before it started", logger: logger) }
            return sizer
        }
    }
}
