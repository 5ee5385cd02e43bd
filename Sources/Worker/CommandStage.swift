import Synchronization

/// A slot's pipeline (`prefetch`): its commands run one at a time, and the transfers around them overlap them. While
/// message N's command runs, message N+1 is received and its input downloaded into a task folder of its own; when
/// N's command ends, N+1's starts at once, while N's output goes up. A slot's tasks then come at
/// `1 / max(command, transfers)` instead of `1 / (command + transfers)`.
///
/// Each message in the pipeline has its own heartbeat from its receive, as any message does. At most one message
/// per slot waits at the gate (the slot starts the next only once this one holds it), so at most one input is
/// downloaded ahead. A stop, or the grace's end, turns away a message that has not reached its command: it is
/// released, and its task folder, with the input, removed.
final class CommandStage: Sendable {
    /// The slot's: one command at a time.
    let gate: CommandGate
    /// Fired when this message's first command may start (it holds the gate), or when its handling ends without one:
    /// the slot then starts the next message.
    let reached = OneShot()
    /// Whether this message holds the gate (from its first command to its last, so that a message of several inputs
    /// keeps the slot), and since when.
    private let state = Mutex<(held: Bool, enteredAt: ContinuousClock.Instant?)>((false, nil))

    init(gate: CommandGate) { self.gate = gate }

    /// Takes the gate for this message, waiting at most `limit` (nil: for as long as it takes); at once when the
    /// message holds it already.
    func enter(within limit: Duration?, clock: any WorkerClock) async -> CommandGate.Wait {
        if state.withLock({ $0.held }) { return .entered }
        let wait: CommandGate.Wait
        if let limit {
            wait = await gate.enter(within: limit, clock: clock)
        } else {
            wait = await gate.enter() ? .entered : .cancelled
        }
        if wait == .entered { state.withLock { $0 = (true, clock.now) } }
        return wait
    }

    /// Hands the gate on, if this message holds it.
    func leave() {
        let held = state.withLock { s in
            defer { s.held = false }
            return s.held
        }
        if held { gate.leave() }
    }

    /// Whether this message holds the gate: its commands have begun, and a stop lets it finish them.
    var isHeld: Bool { state.withLock { $0.held } }

    /// When this message took the gate: its time in the slot from there on is what a message ahead would wait.
    var enteredAt: ContinuousClock.Instant? { state.withLock { $0.enteredAt } }
}

/// One holder at a time, the others served in their order of arrival.
final class CommandGate: Sendable {
    private struct State {
        var held = false
        var waiting: [(id: Int, continuation: CheckedContinuation<Bool, Never>)] = []
        var nextID = 0
        var overdue = false
    }

    /// A message gave up waiting (`enter(within:)` timed out) for the command that holds the gate: a long one. Until
    /// it ends the slot takes nothing more ahead of it (else it would take the same message back, to wait again, and
    /// spend its attempts); its end clears this.
    var overdue: Bool { state.withLock { $0.overdue } }

    private let state = Mutex(State())

    /// Waits for the gate and holds it: true. False when the calling task is cancelled first (it does not hold it).
    func enter() async -> Bool {
        let id = state.withLock { s in
            defer { s.nextID += 1 }
            return s.nextID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                let now: Bool? = state.withLock { s in
                    if Task.isCancelled { return false }
                    if !s.held {
                        s.held = true
                        s.overdue = false
                        return true
                    }
                    s.waiting.append((id, continuation))
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            let waiter = state.withLock { s -> CheckedContinuation<Bool, Never>? in
                guard let index = s.waiting.firstIndex(where: { $0.id == id }) else { return nil }
                return s.waiting.remove(at: index).continuation
            }
            waiter?.resume(returning: false)
        }
    }

    enum Wait: Sendable, Equatable {
        case entered, timedOut, cancelled
    }

    /// `enter`, for at most `limit`: a message ahead that would wait longer (the command before it runs long) is
    /// better released for a worker that is free.
    func enter(within limit: Duration, clock: any WorkerClock) async -> Wait {
        await withTaskGroup(of: Wait.self) { group in
            group.addTask { await self.enter() ? .entered : .cancelled }
            group.addTask {
                do {
                    try await clock.sleep(for: limit)
                    return .timedOut
                } catch {
                    return .cancelled
                }
            }
            var result = await group.next() ?? .cancelled
            group.cancelAll()
            // The gate may have been handed over just as the time ran out: then it is held, and kept.
            for await other in group where other == .entered { result = .entered }
            if result == .timedOut { state.withLock { $0.overdue = true } }
            return result
        }
    }

    /// Hands the gate to the next waiter, or frees it.
    func leave() {
        let next = state.withLock { s -> CheckedContinuation<Bool, Never>? in
            // The command that held it has ended: whatever gave up on it, the slot may take messages ahead again.
            s.overdue = false
            guard !s.waiting.isEmpty else {
                s.held = false
                return nil
            }
            return s.waiting.removeFirst().continuation
        }
        next?.resume(returning: true)
    }
}

/// A signal that fires once; `wait` returns once it has.
final class OneShot: Sendable {
    private struct State {
        var fired = false
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func fire() {
        let waiting = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            guard !s.fired else { return [] }
            s.fired = true
            defer { s.waiting = [] }
            return s.waiting
        }
        waiting.forEach { $0.resume() }
    }

    func wait() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.fired { return true }
                s.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }
}
