import Synchronization

/// Shared state of one daemon: whether to keep taking work, what runs, and what has been done. The slots, the drain
/// and spot monitors, the signal handlers and the dead-end watch meet here.
///
/// There is one way to stop. `requestStop` is a signal: no new receive starts (one under way ends within its long
/// poll, and what it brings is released), no new message is taken, and running tasks go on. When the stop's grace runs out (`waitForGraceEnd`: `shutdownGrace`, none at a
/// dead end) the daemon cancels the slots' tasks, and task cancellation does the rest: the command's process group
/// is killed, an upload or download is aborted, and the message is released.
public final class Lifecycle: Sendable {
    public enum StopReason: String, Sendable {
        case drained = "queue drained"
        case signal = "signal"
        case spotInterruption = "spot interruption"
        /// EC2's rebalance recommendation: the spot pool is at risk. Treated as an interruption notice, except that
        /// the instance then powers off (with `shouldShutdown`), so that a replacement starts in a healthier pool
        /// instead of this one idling until the interruption that may never come.
        case rebalanceRecommendation = "spot rebalance recommendation"
        case once = "--once"
        /// An error no retry can get past (`DeadEnds`): the daemon exits with status 2.
        case deadEnd = "configuration error"
        /// Receives kept failing with errors that may pass, for longer than the daemon waits: exit status 1, for
        /// systemd to start it again.
        case queueUnreachable = "the queue did not answer"
        /// Tasks in a row met this machine's own trouble (a full disk, no descriptors left): the worker leaves, its
        /// messages released, for a replacement on a healthy machine. Exit status 1.
        case machineTrouble = "this machine's own trouble"
        /// `failureBudget` tasks in a row failed here while other workers succeeded (`FailureStreak`): the worker
        /// leaves for a replacement, as for `machineTrouble`. Exit status 1.
        case badNode = "tasks fail here while other workers succeed"
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

    struct State {
        var stopReason: StopReason?
        var stopWaiters: [Int: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter = 0
        var runningTasks = 0
        var lastWork: ContinuousClock.Instant
        var emptyPolls = 0
        var counts = Counts()
        /// Until when a message this daemon released for a retry may still be on its way back.
        var releasedUntil: ContinuousClock.Instant?
        /// The queue looks empty and this daemon idle (`watchForDrain`): receives poll briefly, so that the stop at
        /// the drain does not wait on a long poll begun just before it.
        var quiet = false
    }

    /// How long running tasks may go on after a stop (`shutdownGrace`).
    public let grace: Duration
    let clock: any WorkerClock
    private let state: Mutex<State>

    public init(grace: Double, clock: any WorkerClock = SystemClock()) {
        self.grace = .milliseconds(Int(grace * 1000))
        self.clock = clock
        state = Mutex(State(lastWork: clock.now))
    }

    public var stopReason: StopReason? { state.withLock { $0.stopReason } }
    public var isStopping: Bool { stopReason != nil }

    /// Stops taking work. Returns false when a stop had been asked for already (the first reason stays).
    @discardableResult
    public func requestStop(_ reason: StopReason) -> Bool {
        let waiters: [CheckedContinuation<Void, Never>]? = state.withLock { s in
            guard s.stopReason == nil else { return nil }
            s.stopReason = reason
            defer { s.stopWaiters = [:] }
            return Array(s.stopWaiters.values)
        }
        guard let waiters else { return false }
        waiters.forEach { $0.resume() }
        return true
    }

    /// Returns once a stop is asked for (at once if it was), or when the calling task is cancelled.
    func waitForStop() async {
        let id = state.withLock { s in
            defer { s.nextWaiter += 1 }
            return s.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.stopReason != nil || Task.isCancelled { return true }
                    s.stopWaiters[id] = continuation
                    return false
                }
                if now { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.stopWaiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Returns when a stop's grace has run out: `grace` after the stop, at once after a dead end. Throws
    /// `CancellationError` when the calling task is cancelled first.
    func waitForGraceEnd() async throws {
        await waitForStop()
        try Task.checkCancellation()
        if stopReason != .deadEnd { try await clock.sleep(for: grace) }
    }

    /// Runs `work` (a long poll); a stop asked for meanwhile cancels it. Returns what `work` returned either way: a
    /// receive cut short by a stop may still have brought messages, which the caller then releases.
    func cancellingAtStop<T: Sendable>(_ work: @escaping @Sendable () async -> T) async -> T {
        await withTaskGroup(of: T?.self) { group in
            group.addTask { await work() }
            group.addTask {
                await self.waitForStop()
                return nil
            }
            var result: T?
            while let next = await group.next() {
                if let next { result = next }
                // Either the work ended (the stop waiter goes) or a stop came (the work is cancelled, and its result
                // is still collected by the next turn of this loop).
                group.cancelAll()
            }
            return result!
        }
    }

    func taskStarted() {
        state.withLock {
            $0.runningTasks += 1
            $0.lastWork = clock.now
            $0.emptyPolls = 0
        }
    }
    func taskFinished() {
        state.withLock {
            $0.runningTasks -= 1
            $0.lastWork = clock.now
        }
    }
    func emptyPoll() { state.withLock { $0.emptyPolls += 1 } }

    /// A message was released to come back in `seconds`: until it has (and a poll has had time to take it), this
    /// daemon is the one that must be there to take it, and does not leave the tail to others.
    func releasedForRetry(seconds: Int) {
        let until = clock.now + .seconds(seconds + 30)
        state.withLock { s in s.releasedUntil = max(s.releasedUntil ?? until, until) }
    }

    /// Whether a message this daemon released may still come back (`releasedForRetry`).
    var awaitsReleasedWork: Bool {
        let now = clock.now
        return state.withLock { s in s.releasedUntil.map { now < $0 } ?? false }
    }

    /// Nothing runs, and the last work ended at least `seconds` ago with empty polls since.
    func idle(for seconds: Int) -> Bool {
        let now = clock.now
        return state.withLock { s in s.runningTasks == 0 && s.emptyPolls > 0 && now - s.lastWork >= .seconds(seconds) }
    }

    /// Nothing runs, and the last work ended at least `seconds` ago, whatever the polls have brought back yet.
    func quietFor(_ seconds: Int) -> Bool {
        let now = clock.now
        return state.withLock { s in s.runningTasks == 0 && now - s.lastWork >= .seconds(seconds) }
    }

    /// Whether receives should poll briefly now (`State.quiet`).
    var isQuiet: Bool { state.withLock { $0.quiet } }
    func setQuiet(_ quiet: Bool) { state.withLock { $0.quiet = quiet } }

    func count(_ update: (inout Counts) -> Void) { state.withLock { update(&$0.counts) } }
    public var counts: Counts { state.withLock { $0.counts } }
}
