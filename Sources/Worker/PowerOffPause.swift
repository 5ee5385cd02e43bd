import Dispatch
@preconcurrency import Glibc
import Logging
import Synchronization

/// The wait between a dead end (exit status 2) and the shutdown command: time for an operator to log in over SSH
/// and read the log before the instance is gone, as the install script gives a broken boot. A SIGTERM or SIGINT
/// meanwhile (`systemctl stop parallelizer`) ends the wait, and the instance stays up: the operator is there.
enum PowerOffPause {
    /// Waits `seconds` unless SIGTERM or SIGINT comes first. Returns true when the whole pause passed.
    static func wait(seconds: Int, clock: any WorkerClock, logger: Logger) async -> Bool {
        guard seconds > 0 else { return true }
        logger.notice(
            "powering off in \(seconds) s: time to look over SSH; stop the service (systemctl stop parallelizer) to keep the instance up"
        )
        let signalled = OneShot()
        let sources = onStopSignals { _ in signalled.fire() }
        defer { sources.forEach { $0.cancel() } }
        let passed = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                do { try await clock.sleep(for: .seconds(seconds)) } catch { return false }
                return true
            }
            group.addTask {
                await signalled.wait()
                return false
            }
            let first = await group.next() ?? false
            // The other side ends too: the sleep is cancelled, the signal waiter let go.
            signalled.fire()
            group.cancelAll()
            return first
        }
        if !passed { logger.notice("stopped during the pause before powering off: the instance stays up") }
        return passed
    }
}
