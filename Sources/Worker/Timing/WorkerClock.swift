/// Monotonic time as the worker reads it: the instant now, and sleeping until one.
///
/// Everything in the daemon that waits (the heartbeat, the release of held messages, the delete batch's linger, a
/// stop's grace) takes its clock as a parameter: `SystemClock` in production, a manual clock in unit tests, so that
/// timing tests advance time instead of sleeping through it.
public protocol WorkerClock: Sendable {
    var now: ContinuousClock.Instant { get }
    /// Returns at `deadline`; throws `CancellationError` when the task is cancelled first.
    func sleep(until deadline: ContinuousClock.Instant) async throws
}

extension WorkerClock {
    public func sleep(for duration: Duration) async throws { try await sleep(until: now + duration) }
}

/// The machine's monotonic clock.
public struct SystemClock: WorkerClock {
    public init() {}
    public var now: ContinuousClock.Instant { .now }
    public func sleep(until deadline: ContinuousClock.Instant) async throws {
        try await Task.sleep(until: deadline, clock: .continuous)
    }
}

extension Duration {
    /// Seconds with millisecond precision.
    public var seconds: Double {
        let c = components
        return ((Double(c.seconds) + Double(c.attoseconds) / 1e18) * 1000).rounded() / 1000
    }
}
