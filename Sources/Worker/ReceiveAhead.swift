import AWSServices
import Synchronization

/// How many messages a slot asks for in one `ReceiveMessage`.
///
/// With short tasks, the receive is a third of a slot's requests (and of its CPU): taking up to ten messages at a
/// time saves most of it. But a message a slot holds is a message no other worker can start, so a slot takes only
/// what it expects to finish within its plan's `receiveHorizon`, judged by a moving average of its recent messages'
/// durations. Until it has finished a message, it takes one.
public struct ReceiveSizer: Sendable, Equatable {
    /// SQS's most per call.
    public static let maxMessages = 10
    /// Weight of the newest duration in the moving average.
    static let weight = 0.3

    /// Seconds of work a slot may hold (`VisibilityPlan.receiveHorizon`).
    public let horizon: Double
    /// Moving average of the seconds a message took, from receive to settled; nil before the first.
    public private(set) var average: Double?

    public init(plan: VisibilityPlan) {
        horizon = plan.receiveHorizon
    }

    public mutating func record(seconds: Double) {
        let seconds = max(0, seconds)
        average = average.map { $0 + Self.weight * (seconds - $0) } ?? seconds
    }

    /// Messages to ask for next: as many as fit in the horizon, 1 to 10.
    public var batchSize: Int {
        guard let average else { return 1 }
        guard average > 0 else { return Self.maxMessages }
        let fit = (horizon / average).rounded(.down)
        return fit >= Double(Self.maxMessages) ? Self.maxMessages : max(1, Int(fit))
    }
}

/// Messages a slot has received but not yet started. Each is started in turn, unless it has waited the plan's
/// `holdLimit` (half its visibility timeout): then it is released (made visible again at once) for another worker,
/// because the slot is busier than it expected. `withHeldMessages` runs the timer that does that, even while the
/// slot is in the middle of a long task.
final class HeldMessages: Sendable {
    let receivedAt: ContinuousClock.Instant
    private let waiting: Mutex<[SQSMessage]>

    init(_ messages: [SQSMessage], receivedAt: ContinuousClock.Instant) {
        self.receivedAt = receivedAt
        waiting = Mutex(messages)
    }

    /// The next message to start, or nil when none is left (all started, or released by the timer).
    func next() -> SQSMessage? {
        waiting.withLock { $0.isEmpty ? nil : $0.removeFirst() }
    }

    /// Whether a message waits to be started.
    var hasWaiting: Bool { waiting.withLock { !$0.isEmpty } }

    /// Takes every message not yet started (to release them at a stop).
    func takeAll() -> [SQSMessage] {
        waiting.withLock { waiting in
            defer { waiting = [] }
            return waiting
        }
    }
}

/// Runs `body` with `messages` held, and, beside it, the timer that releases those still waiting once they have
/// waited `plan.holdLimit` from `receivedAt`. `release` is called at most once per message. The timer ends with
/// `body`.
func withHeldMessages<T: Sendable>(
    _ messages: [SQSMessage], receivedAt: ContinuousClock.Instant, plan: VisibilityPlan, clock: any WorkerClock,
    release: @escaping @Sendable ([SQSMessage]) async -> Void, _ body: (HeldMessages) async -> T
) async -> T {
    let held = HeldMessages(messages, receivedAt: receivedAt)
    guard messages.count > 1 else { return await body(held) }
    return await withTaskGroup(of: Void.self) { group in
        group.addTask {
            do { try await clock.sleep(until: receivedAt + plan.holdLimit) } catch { return }
            let late = held.takeAll()
            if !late.isEmpty { await release(late) }
        }
        let result = await body(held)
        group.cancelAll()
        return result
    }
}
