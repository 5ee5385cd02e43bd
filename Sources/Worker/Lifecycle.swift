import Dispatch
import FoundationEssentials
import Synchronization

/// Shared state of one daemon: whether to keep taking work, what runs, and what has been done. Slots, the idle
/// monitor, the signal handlers and the spot poller all meet here.
public final class Lifecycle: Sendable {
    public enum StopReason: String, Sendable {
        case drained = "queue drained"
        case signal = "signal"
        case spotInterruption = "spot interruption"
        case once = "--once"
        /// An error no retry can get past (`DeadEnds`): the daemon exits with status 2.
        case deadEnd = "configuration error"
        /// Receives kept failing with errors that may pass, for longer than the daemon waits: exit status 1, for
        /// systemd to start it again.
        case queueUnreachable = "the queue did not answer"
    }

    struct State {
        var stopReason: StopReason?
        var stopRequestedAt: ContinuousClock.Instant?
        /// The grace of the stop asked for: `grace`, or none for a dead end.
        var stopGrace: Duration = .zero
        var receiveCancels: [Int: @Sendable () -> Void] = [:]
        /// Run once when the grace runs out (uploads to cancel), by token.
        var graceActions: [Int: @Sendable () -> Void] = [:]
        var nextToken = 0
        var runningTasks = 0
        var lastWork = ContinuousClock.now
        var emptyPolls = 0
        var counts = Counts()
    }

    public struct Counts: Sendable, Equatable {
        public var succeeded = 0
        public var noOutput = 0
        public var failed = 0
        public var givenUp = 0
        public var released = 0
        public var badMessages = 0
        public var bytesIn: Int64 = 0
        public var bytesOut: Int64 = 0
    }

    private let state = Mutex(State())
    /// Seconds a running task may go on after a stop before it is killed and its message released.
    public let grace: Double

    public init(grace: Double) { self.grace = grace }

    public var stopReason: StopReason? { state.withLock { $0.stopReason } }
    public var isStopping: Bool { stopReason != nil }

    /// Stops taking work: cancels long polls in flight; running tasks get `grace` seconds, none at a dead end (their
    /// work could not be settled anyway: their messages are released at once). Returns false when a stop had been
    /// asked for already.
    @discardableResult
    public func requestStop(_ reason: StopReason) -> Bool {
        let stopGrace: Duration = reason == .deadEnd ? .zero : .milliseconds(Int(grace * 1000))
        let cancels: [@Sendable () -> Void]? = state.withLock { s in
            guard s.stopReason == nil else { return nil }
            s.stopReason = reason
            s.stopRequestedAt = .now
            s.stopGrace = stopGrace
            return Array(s.receiveCancels.values)
        }
        guard let cancels else { return false }
        cancels.forEach { $0() }
        Task { [self] in
            try? await Task.sleep(for: stopGrace)
            let actions = state.withLock { s in
                defer { s.graceActions = [:] }
                return Array(s.graceActions.values)
            }
            actions.forEach { $0() }
        }
        return true
    }

    /// Runs `work`, cancelling it if a stop's grace runs out first (at once if it has already).
    func cancellingAtGraceEnd<T: Sendable>(_ work: @escaping @Sendable () async throws -> T) async -> Result<T, any Error> {
        let task = Task { try await work() }
        let token: Int? = state.withLock { s in
            guard !graceExpired(s) else { return nil }
            defer { s.nextToken += 1 }
            s.graceActions[s.nextToken] = { task.cancel() }
            return s.nextToken
        }
        if token == nil { task.cancel() }
        let result = await task.result
        if let token { state.withLock { _ = $0.graceActions.removeValue(forKey: token) } }
        return result
    }

    /// True once a stop's grace period has run out: running commands are then killed and released.
    public var graceExpired: Bool { state.withLock { graceExpired($0) } }

    /// The same, under the lock. (The timer started by `requestStop` sleeps the grace through, so it runs the
    /// registered actions only once this is true: work registered later is cancelled at once instead.)
    private func graceExpired(_ s: State) -> Bool {
        guard let at = s.stopRequestedAt else { return false }
        return ContinuousClock.now - at >= s.stopGrace
    }

    /// Sleeps `seconds`, or less when a stop is asked for meanwhile (checked four times a second).
    func sleepUnlessStopping(seconds: Double) async {
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while !isStopping && ContinuousClock.now < end {
            try? await Task.sleep(for: min(.milliseconds(250), end - ContinuousClock.now))
        }
    }

    /// Records how to cancel a slot's long poll; false when a stop has already been asked for.
    func registerReceive(slot: Int, cancel: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { s in
            guard s.stopReason == nil else { return false }
            s.receiveCancels[slot] = cancel
            return true
        }
    }

    func unregisterReceive(slot: Int) { state.withLock { _ = $0.receiveCancels.removeValue(forKey: slot) } }

    func taskStarted() { state.withLock { $0.runningTasks += 1; $0.lastWork = .now; $0.emptyPolls = 0 } }
    func taskFinished() { state.withLock { $0.runningTasks -= 1; $0.lastWork = .now } }
    func emptyPoll() { state.withLock { $0.emptyPolls += 1 } }

    /// Nothing runs, and the last work ended at least `seconds` ago with empty polls since.
    func idle(for seconds: Int) -> Bool {
        state.withLock { s in
            s.runningTasks == 0 && s.emptyPolls > 0 && ContinuousClock.now - s.lastWork >= .seconds(seconds)
        }
    }

    func count(_ update: (inout Counts) -> Void) { state.withLock { update(&$0.counts) } }
    public var counts: Counts { state.withLock { $0.counts } }
}
