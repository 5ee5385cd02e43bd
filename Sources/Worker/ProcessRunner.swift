internal import CSpawn
import AWSCore
import Dispatch
@preconcurrency import Glibc
import HTTPCurl
import Synchronization

/// How a command ended.
public enum ProcessOutcome: Sendable, Equatable {
    case exited(Int32)
    case signalled(Int32)
    /// Killed by us after `taskTimeout`.
    case timedOut
    /// Killed by us because the task running it was cancelled (a stop's grace ran out).
    case interrupted

    public var succeeded: Bool { self == .exited(0) }

    /// From a `waitpid` status: the exit code, or the signal that ended the process.
    public init(waitStatus status: Int32) {
        self = status & 0x7f == 0 ? .exited((status >> 8) & 0xff) : .signalled(status & 0x7f)
    }

    /// For logs and failure records: `exit 3`, `signal 9`, `timeout`, `interrupted`.
    public var summary: String {
        switch self {
        case .exited(let code): return "exit \(code)"
        case .signalled(let signal): return "signal \(signal)"
        case .timedOut: return "timeout"
        case .interrupted: return "interrupted"
        }
    }
}

/// Could not start the command at all.
public struct SpawnError: Error, Sendable, CustomStringConvertible {
    public var program: String
    public var errno: Int32
    public var description: String { "cannot run \(program): \(String(cString: strerror(errno)))" }
}

/// A user the command runs as.
public struct RunAsUser: Sendable, Equatable {
    public var name: String
    public var uid: UInt32
    public var gid: UInt32
    public var home: String

    /// Looks a user up in the system's user database.
    public static func lookup(_ name: String) -> RunAsUser? {
        var entry = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16384)
        guard getpwnam_r(name, &entry, &buffer, buffer.count, &result) == 0, let found = result else { return nil }
        return RunAsUser(
            name: name, uid: found.pointee.pw_uid, gid: found.pointee.pw_gid,
            home: String(cString: found.pointee.pw_dir))
    }
}

/// What walls a command runs within, decided once at start-up by trying them (`ProcessRunner.probeIsolation`).
public struct Isolation: Sendable, Equatable, CustomStringConvertible {
    /// The command is the init of a PID namespace of its own: when it ends, the kernel ends everything it started,
    /// even what left its process group (root only).
    public var pidNamespace: Bool
    /// In a mount namespace of its own, the task's own folder is its /tmp and /var/tmp: concurrent tasks (each the
    /// PID 1 of its namespace, so `$$` is 1 in all of them) do not meet in a shared /tmp, and what a command leaves
    /// there goes with its task folder.
    public var privateTmp: Bool
    /// A /proc of the namespace's own: the command sees only its own processes, not other tasks' or the daemon's.
    public var ownProc: Bool

    public static let none = Isolation(pidNamespace: false, privateTmp: false, ownProc: false)
    public static let full = Isolation(pidNamespace: true, privateTmp: true, ownProc: true)

    public init(pidNamespace: Bool, privateTmp: Bool, ownProc: Bool) {
        self.pidNamespace = pidNamespace
        self.privateTmp = privateTmp && pidNamespace
        self.ownProc = ownProc && pidNamespace
    }

    public var description: String {
        guard pidNamespace else {
            return "commands run in a process group of their own (namespaces need root): a process that leaves the "
                + "group can outlive its task"
        }
        return "commands run in a PID namespace of their own (nothing they start outlives them); "
            + (privateTmp ? "/tmp: their task's own" : "/tmp: the host's") + "; "
            + (ownProc ? "/proc: their own" : "/proc: the host's (a /proc of their own is refused here)")
    }
}

/// Runs a command the way the daemon needs: never through a shell, in its own process group so the whole tree
/// can be killed, output to files, an optional time limit; cancelling the task that waits for it kills it.
public struct ProcessRunner: Sendable {
    public var killGrace: Double = 5
    /// The walls the command runs within. Asked for and refused at a spawn, they fail that spawn: never a command
    /// with fewer walls than start-up reported.
    public var isolation: Isolation

    public init(isolation: Isolation = .none) { self.isolation = isolation }

    /// The most isolation this machine grants: each wall tried on `/bin/true`, from all of them down to none (a
    /// private /tmp only when `privateTmp`; the probe's folder is made in `scratch`).
    public static func probeIsolation(privateTmp: Bool = true, scratch: String = "/tmp") -> Isolation {
        let null = open("/dev/null", O_WRONLY | O_CLOEXEC)
        defer { close(null) }
        var template = Array((scratch + "/isolation-probe-XXXXXX").utf8CString)
        let tmp = mkdtemp(&template).map { String(cString: $0) }
        defer { if let tmp { rmdir(tmp) } }
        var candidates: [Isolation] = []
        for ownTmp in privateTmp && tmp != nil ? [true, false] : [false] {
            for ownProc in [true, false] {
                candidates.append(Isolation(pidNamespace: true, privateTmp: ownTmp, ownProc: ownProc))
            }
        }
        for candidate in candidates {
            guard
                let started = try? ProcessRunner(isolation: candidate).spawn(
                    argv: ["/bin/true"], environment: [:], directory: "/", stdout: null, stderr: null, user: nil,
                    privateTmp: tmp)
            else { continue }
            var status: Int32 = 0
            while waitpid(started, &status, 0) < 0 && errno == EINTR {}
            if ProcessOutcome(waitStatus: status).succeeded { return candidate }
        }
        return .none
    }

    /// Resolves `program` (argv[0]): a name with a `/` is taken relative to `directory` when relative; a bare name
    /// is looked for in `directory` first, then on `PATH`.
    public static func resolve(_ program: String, in directory: String, path: String) -> String? {
        if program.contains("/") {
            let full = program.hasPrefix("/") ? program : directory + "/" + program
            return access(full, F_OK) == 0 ? full : nil
        }
        let local = directory + "/" + program
        if access(local, X_OK) == 0 { return local }
        for dir in path.split(separator: ":") where !dir.isEmpty {
            let candidate = "\(dir)/\(program)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// Runs `argv` with its output to two files (created, or truncated), and returns how it ended.
    public func run(
        argv: [String], environment: [String: String], directory: String, stdoutPath: String,
        stderrPath: String, user: RunAsUser?, timeout: Int?
    ) async throws(SpawnError) -> ProcessOutcome {
        let (out, err) = try Self.openOutputs(stdoutPath, stderrPath, program: argv[0])
        defer {
            close(out)
            close(err)
        }
        return try await run(
            argv: argv, environment: environment, directory: directory, stdout: out, stderr: err, user: user,
            timeout: timeout)
    }

    /// Starts `argv` with stdout and stderr on the given descriptors (which stay the caller's), waits for it, and
    /// returns how it ended. Cancelling the calling task kills it (SIGTERM to its process group, then SIGKILL after
    /// `killGrace`; in a PID namespace, killing the command ends everything in it) and returns `.interrupted`.
    /// - Parameter timeout: seconds before the process group gets SIGTERM (then SIGKILL after `killGrace`).
    /// - Parameter privateTmp: the folder that is the command's /tmp, with `isolation.privateTmp`.
    public func run(
        argv: [String], environment: [String: String], directory: String, stdout: Int32, stderr: Int32,
        user: RunAsUser?, timeout: Int?, privateTmp: String? = nil, killGrace: Double? = nil,
        cgroup: TaskCgroup? = nil, usage: UsageBox? = nil
    ) async throws(SpawnError) -> ProcessOutcome {
        let killGrace = killGrace ?? self.killGrace
        let pid = try spawn(
            argv: argv, environment: environment, directory: directory, stdout: stdout, stderr: stderr, user: user,
            privateTmp: privateTmp, cgroupProcs: cgroup?.procs ?? [])
        let cancelled = CancelFlag()
        let outcome = await withTaskCancellationHandler {
            await wait(Reaper(pid: pid, timeout: timeout, killGrace: killGrace, cancelled: cancelled, usage: usage))
        } onCancel: {
            cancelled.raise()
        }
        // Stopped, the command exited but its group did not (no PID namespace: in one, the kernel ends the rest with
        // it): what is left gets the rest of the grace to finish writing, then SIGKILL, and the task knows it was
        // cut short (a checkpoint it was writing is not whole).
        if outcome == .interrupted && kill(-pid, 0) == 0 {
            let deadline = ContinuousClock.now + .milliseconds(Int(killGrace * 1000))
            while kill(-pid, 0) == 0 && ContinuousClock.now < deadline {
                try? await Task.sleep(nanoseconds: 50_000_000)
            }
            if kill(-pid, SIGKILL) == 0 { usage?.markKilled() }
        }
        // The cgroup knows the whole tree (every process, its peak together); rusage only the command and the
        // children it waited for.
        if let cgroup, let usage { usage.merge(cgroup.usage()) }
        return outcome
    }

    /// Set when the task waiting for a command is cancelled; the reaper sees it within 250 ms.
    final class CancelFlag: Sendable {
        private let value = Atomic<Bool>(false)
        func raise() { value.store(true, ordering: .relaxed) }
        var isRaised: Bool { value.load(ordering: .relaxed) }
    }

    private func wait(_ reaper: Reaper) async -> ProcessOutcome {
        var reaper = reaper
        let pid = reaper.pid
        let pidfd = pz_pidfd_open(pid)
        guard pidfd >= 0 else {
            // No pidfd (a kernel before 5.3): poll, sleeping between looks on a dispatch thread (a sleeping Swift
            // task would wake at once once cancelled, and spin).
            while true {
                if let outcome = reaper.look() { return outcome }
                await runBlocking { () throws(Never) in _ = usleep(20_000) }
            }
        }
        // The descriptor turns readable the moment the command ends: one thread sleeps in poll(2) until then,
        // waking only to check for cancellation and the time limit. No timers, and no delay after a short command.
        let waiting = DispatchQueue(label: "parallelizer.wait")
        return await withCheckedContinuation { continuation in
            waiting.async { [reaper] in
                var reaper = reaper
                defer { close(pidfd) }
                while true {
                    if let outcome = reaper.look() { return continuation.resume(returning: outcome) }
                    var entry = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                    _ = poll(&entry, 1, 250)
                }
            }
        }
    }

    /// Looks at a running command: collects its exit, and enforces its time limit and cancellation.
    struct Reaper: Sendable {
        let pid: pid_t
        let timeout: Int?
        let killGrace: Double
        let cancelled: CancelFlag
        var usage: UsageBox? = nil
        let started = ContinuousClock.now
        var killedFor: ProcessOutcome?
        var termSentAt: ContinuousClock.Instant?

        /// How the command ended, or nil while it runs.
        mutating func look() -> ProcessOutcome? {
            var status: Int32 = 0
            var resources = rusage()
            let done = wait4(pid, &status, WNOHANG, &resources)
            if done == pid {
                let cpu =
                    Double(resources.ru_utime.tv_sec + resources.ru_stime.tv_sec)
                    + Double(resources.ru_utime.tv_usec + resources.ru_stime.tv_usec) / 1e6
                // No peak from `ru_maxrss`: started as it is (sharing the daemon's memory until its exec), the
                // command inherits the daemon's high-water mark there (`TaskUsage`).
                usage?.set(TaskUsage(cpuSeconds: cpu, source: "rusage"))
                return killedFor ?? ProcessOutcome(waitStatus: status)
            }
            if done < 0 && errno != EINTR { return killedFor ?? .signalled(0) }
            if killedFor == nil {
                if let timeout, ContinuousClock.now - started >= .seconds(timeout) {
                    killedFor = .timedOut
                } else if cancelled.isRaised {
                    killedFor = .interrupted
                }
                if killedFor != nil {
                    signal(SIGTERM)
                    termSentAt = .now
                }
            } else if let sent = termSentAt, ContinuousClock.now - sent >= .milliseconds(Int(killGrace * 1000)) {
                signal(SIGKILL)
                usage?.markKilled()
                termSentAt = nil
            }
            return nil
        }

        /// The command's process group, and the command itself: a command can leave its group empty (move itself
        /// into a child's), and a group that is gone must not let it escape its time limit. In a PID namespace,
        /// SIGKILL to the command (its init) ends everything in it.
        func signal(_ signal: Int32) {
            kill(-pid, signal)
            kill(pid, signal)
        }
    }

    /// Starts `argv` in a process group of its own (and within `isolation`'s walls), stdout and stderr on the given
    /// descriptors, as `user` when given; returns its pid at once. `run` waits for it; the test harness starts whole
    /// worker processes this way.
    public func spawn(
        argv: [String], environment: [String: String], directory: String, stdout: Int32, stderr: Int32,
        user: RunAsUser?, privateTmp: String? = nil, cgroupProcs: [Int32] = []
    ) throws(SpawnError) -> Int32 {
        let program = argv[0]
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            cArgv.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        var pid: pid_t = 0
        var inNamespace: Int32 = 0
        let tmp = isolation.privateTmp ? privateTmp : nil
        let code = cgroupProcs.withUnsafeBufferPointer { procs in
            pz_spawn(
                program, cArgv, cEnv, directory, stdout, stderr, user == nil ? 0 : 1, user?.uid ?? 0,
                user?.gid ?? 0, isolation.pidNamespace ? 1 : 0, tmp, isolation.ownProc ? 1 : 0, procs.baseAddress,
                Int32(procs.count), &pid, &inNamespace)
        }
        guard code == 0 else { throw SpawnError(program: program, errno: code) }
        return pid
    }

    /// Creates (or truncates) the two output files, owner-only.
    public static func openOutputs(_ stdoutPath: String, _ stderrPath: String, program: String) throws(SpawnError)
        -> (Int32, Int32)
    {
        let out = open(stdoutPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard out >= 0 else { throw SpawnError(program: program, errno: errno) }
        let err = open(stderrPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard err >= 0 else {
            let saved = errno
            close(out)
            throw SpawnError(program: program, errno: saved)
        }
        return (out, err)
    }
}
