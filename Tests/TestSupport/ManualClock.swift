import Synchronization
import Worker

/// A clock whose time moves only when a test says so (`advance`): timing tests then run at once and exactly,
/// instead of sleeping and hoping the machine keeps up.
public final class ManualClock: WorkerClock {
    struct Sleeper {
        var deadline: ContinuousClock.Instant
        var continuation: CheckedContinuation<Void, any Error>?
        var cancelled = false
    }

    struct State {
        var offset: Duration = .zero
        var sleepers: [Int: Sleeper] = [:]
        var nextID = 0
    }

    private let base = ContinuousClock.now
    private let state = Mutex(State())

    public init() {}

    public var now: ContinuousClock.Instant { base + state.withLock { $0.offset } }

    public func sleep(until deadline: ContinuousClock.Instant) async throws {
        let id = state.withLock { s in
            defer { s.nextID += 1 }
            s.sleepers[s.nextID] = Sleeper(deadline: deadline)
            return s.nextID
        }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let verdict: Result<Void, any Error>? = state.withLock { s in
                    guard let sleeper = s.sleepers[id] else { return .success(()) }
                    if sleeper.cancelled {
                        s.sleepers[id] = nil
                        return .failure(CancellationError())
                    }
                    if deadline <= base + s.offset {
                        s.sleepers[id] = nil
                        return .success(())
                    }
                    s.sleepers[id]?.continuation = continuation
                    return nil
                }
                if let verdict { continuation.resume(with: verdict) }
            }
        } onCancel: {
            let waiting = state.withLock { s -> CheckedContinuation<Void, any Error>? in
                guard let sleeper = s.sleepers[id] else { return nil }
                guard let continuation = sleeper.continuation else {
                    s.sleepers[id]?.cancelled = true
                    return nil
                }
                s.sleepers[id] = nil
                return continuation
            }
            waiting?.resume(throwing: CancellationError())
        }
    }

    /// Moves time on, waking every sleeper whose deadline has come.
    public func advance(by duration: Duration) {
        let due = state.withLock { s -> [CheckedContinuation<Void, any Error>] in
            s.offset += duration
            let now = base + s.offset
            let ids = s.sleepers.filter { $0.value.deadline <= now && $0.value.continuation != nil }.map(\.key)
            return ids.compactMap { s.sleepers.removeValue(forKey: $0)?.continuation }
        }
        due.forEach { $0.resume() }
    }

    /// How many tasks are asleep on this clock.
    public var sleepers: Int { state.withLock { s in s.sleepers.values.filter { $0.continuation != nil }.count } }

    /// Waits (yielding, in real time, 30 s at most) until at least `count` tasks sleep on this clock: a test
    /// advances time only once what it times has gone to sleep.
    public func waitForSleepers(_ count: Int) async {
        let deadline = ContinuousClock.now + .seconds(30)
        while sleepers < count && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }
}

/// Waits (in real time, 30 s at most, however loaded the machine) until `condition` holds: for what other tasks do after a clock moved.
public func eventually(_ condition: () -> Bool) async {
    let deadline = ContinuousClock.now + .seconds(30)
    while !condition() && ContinuousClock.now < deadline {
        try? await Task.sleep(for: .milliseconds(1))
    }
}

/// Waits for an event (a file, a log line, a state) under one generous deadline, checking every 50 ms; returns
/// whether it came. A loaded machine only makes it take longer: nothing here bets on how long.
@discardableResult
public func waitUntil(seconds: Double = 90, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}
