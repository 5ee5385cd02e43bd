import AWSServices
import Logging
import Synchronization

/// How many messages a slot asks for in one `ReceiveMessage`.
///
/// With short tasks, the receive is a third of a slot's requests (and of its CPU): taking up to ten messages at a
/// time saves most of it. But a message a slot holds is a message no other worker can start, so a slot takes only
/// what it expects to finish within `horizon`, judged by a moving average of its recent messages' durations. Until
/// it has finished a message, it takes one.
public struct ReceiveSizer: Sendable, Equatable {
    /// SQS's most per call.
    public static let maxMessages = 10
    /// Weight of the newest duration in the moving average.
    static let weight = 0.3

    /// Seconds of work a slot may hold: two seconds, or a quarter of the visibility timeout when that is shorter
    /// (a held message must be started, or released, while most of its timeout is left).
    public let horizon: Double
    /// Moving average of the seconds a message took, from receive to settled; nil before the first.
    public private(set) var average: Double?

    public init(visibilityTimeout: Int) {
        horizon = min(2, Double(visibilityTimeout) / 4)
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

/// Messages a slot has received but not yet started. Each is started in turn, unless it has waited half its
/// visibility timeout: then it is released (made visible again at once) for another worker, because the slot is
/// busier than it expected. A timer does that even while the slot is in the middle of a long task.
final class HeldMessages: Sendable {
    struct State {
        var waiting: [SQSMessage]
        var timer: Task<Void, Never>?
    }

    let receivedAt: ContinuousClock.Instant
    private let state: Mutex<State>

    /// `release` makes the given messages visible again; it is called at most once per message.
    init(_ messages: [SQSMessage], receivedAt: ContinuousClock.Instant, visibilityTimeout: Int,
         release: @escaping @Sendable ([SQSMessage]) async -> Void) {
        self.receivedAt = receivedAt
        state = Mutex(State(waiting: messages))
        guard messages.count > 1 else { return }
        let deadline = receivedAt + .milliseconds(visibilityTimeout * 500)
        let timer = Task {
            try? await Task.sleep(until: deadline, clock: .continuous)
            if Task.isCancelled { return }
            let late = self.state.withLock { state in
                defer { state.waiting = [] }
                return state.waiting
            }
            if !late.isEmpty { await release(late) }
        }
        state.withLock { $0.timer = timer }
    }

    /// The next message to start, or nil when none is left (all started, or released by the timer).
    func next() -> SQSMessage? {
        state.withLock { state in
            state.waiting.isEmpty ? nil : state.waiting.removeFirst()
        }
    }

    /// Takes every message not yet started (to release them at a stop) and stops the timer.
    func takeAll() -> [SQSMessage] {
        state.withLock { state in
            state.timer?.cancel()
            state.timer = nil
            defer { state.waiting = [] }
            return state.waiting
        }
    }
}
