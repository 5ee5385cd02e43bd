@preconcurrency import Glibc
import Worker

extension ProcessRunner {
    /// Starts `argv` in its own process group and returns at once: how tests drive worker processes.
    public func start(
        argv: [String], environment: [String: String], directory: String, stdoutPath: String,
        stderrPath: String
    ) throws(SpawnError) -> ChildProcess {
        let (out, err) = try Self.openOutputs(stdoutPath, stderrPath, program: argv[0])
        defer {
            close(out)
            close(err)
        }
        return ChildProcess(
            pid: try spawn(
                argv: argv, environment: environment, directory: directory, stdout: out, stderr: err, user: nil))
    }
}

/// A started process: signal it, wait for it.
public struct ChildProcess: Sendable {
    public let pid: Int32

    /// Sends `signal` to the process (not its group).
    public func signal(_ number: Int32) { kill(pid, number) }

    /// Waits for the exit, polling; nil if it has not ended within `timeout` seconds.
    public func wait(timeout: Double) async -> ProcessOutcome? {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        while ContinuousClock.now < deadline {
            var status: Int32 = 0
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { return ProcessOutcome(waitStatus: status) }
            if done < 0 { return nil }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        return nil
    }
}
