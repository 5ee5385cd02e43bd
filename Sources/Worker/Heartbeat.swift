import AWSServices
import Logging

/// Runs `body` while, beside it, a heartbeat keeps `message` hidden: every `plan.heartbeatInterval`, counted from
/// the receive (`receivedAt`: a message may have waited behind others the slot took with it), its visibility is
/// extended by one timeout, within SQS's 12 hours. Those 12 hours are the most one receive can keep a message hidden,
/// so they count from this receive, on the worker's clock, not from the message's first receive ever: a message
/// received again after a worker was lost gets its 12 hours again. The heartbeat ends with `body`.
///
/// `extend` makes the call and says whether it worked (its errors are logged and counted by the caller).
func withHeartbeat<T: Sendable>(
    for message: SQSMessage, receivedAt: ContinuousClock.Instant, plan: VisibilityPlan, clock: any WorkerClock,
    logger: Logger, extend: @escaping @Sendable (_ seconds: Int) async -> Bool, _ body: () async -> T
) async -> T {
    await withTaskGroup(of: Void.self) { group in
        group.addTask {
            var next = receivedAt + plan.heartbeatInterval
            while true {
                do { try await clock.sleep(until: next) } catch { return }
                next = max(next, clock.now) + plan.heartbeatInterval
                let seconds = plan.extensionSeconds(secondsSinceReceive: Int((clock.now - receivedAt).seconds))
                guard seconds > 0 else {
                    logger.warning("message reached SQS's 12-hour visibility limit; it may be handed out again")
                    return
                }
                if await extend(seconds) {
                    logger.debug("visibility extended", metadata: ["sqs.visibility_seconds": "\(seconds)"])
                }
            }
        }
        let result = await body()
        group.cancelAll()
        return result
    }
}
