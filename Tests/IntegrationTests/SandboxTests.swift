import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport
import Worker

/// A hostile or buggy command cannot make the root daemon read, delete, upload or wait on what is not its own, and
/// nothing it starts outlives its task. One test per hole docs/security.md closes; they run as root,
/// as the daemon does on an instance, and each fails with its fix removed.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct SandboxTests {
    static var asRoot: Bool { getuid() == 0 }

    /// One input, one worker running `body` as the command (as `nobody` when `runAsUser`), once.
    static func run(_ dir: String, _ body: String, runAsUser: Bool = true, extra: [String: String] = [:])
        async throws -> (WorkerHarness, ProcessOutcome?)
    {
        let h = try await WorkerHarness.make(directory: dir)
        try await h.upload("x.txt", "input")
        try await h.send(["x.txt"])
        // The command's folder must be reachable by `nobody`.
        _ = chmod(dir, 0o755)
        var values = ["maxAttempts": "1"]
        if runAsUser { values["runAsUser"] = "nobody" }
        values.merge(extra) { $1 }
        let worker = try h.startWorker(name: "w", parameters: h.parameters(values, program: h.script("cmd.sh", body)))
        let outcome = await worker.wait(timeout: 60)
        if outcome == nil { worker.signal(SIGKILL) }
        return (h, outcome)
    }

    /// Hole 1: the logs were the command's, and the daemon reopened them by name: a link put in their place made it
    /// copy `/etc/shadow` into the failure record. Two walls now, each tested alone: as `nobody` the command cannot
    /// touch the daemon's folder at all; as root it can swap the log for a link, and the daemon still reads only its
    /// own descriptor.
    @Test(.enabled(if: asRoot, "needs root: the command runs as nobody"), arguments: [true, false])
    func aLinkInPlaceOfTheLogsLeadsNowhere(runAsUser: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let (h, outcome) = try await Self.run(
                dir,
                """
                if rm -f ../stderr.log 2>/dev/null && ln -s /etc/shadow ../stderr.log; then
                    echo "the log was swapped" >&2
                else
                    echo "the swap was refused" >&2
                fi
                echo "the command failed on purpose" >&2
                exit 1
                """, runAsUser: runAsUser)
            #expect(outcome == .exited(0), "\(h.log("w").suffix(2000))")
            let record = try JSONValue.parse(try await h.output("_failed/x.txt.json"))
            let tail = record["stderrTail"]?.stringValue ?? ""
            #expect(!tail.contains("root:"), "the record holds /etc/shadow: \(tail.prefix(200))")
            #expect(tail.contains("the command failed on purpose"), "\(tail)")
            #expect(tail.contains(runAsUser ? "the swap was refused" : "the log was swapped"), "\(tail)")
        }
    }

    /// Hole 1: a FIFO in place of stdout.log blocked the daemon's open() for ever (the heartbeat kept the message
    /// hidden); two such tasks froze a two-slot daemon. As `nobody` the swap is refused; as root it happens, and
    /// the daemon reads its own descriptor.
    @Test(.enabled(if: asRoot, "needs root: the command runs as nobody"), arguments: [true, false])
    func aFIFOInPlaceOfTheLogsDoesNotStallTheDaemon(runAsUser: Bool) async throws {
        try await withTemporaryDirectory { dir in
            // Where the command reports (Self.run makes `dir` itself 0755).
            let marks = dir + "/marks"
            _ = mkdir(marks, 0o777)
            _ = chmod(marks, 0o777)
            let (h, outcome) = try await Self.run(
                dir,
                """
                if rm -f ../stdout.log 2>/dev/null && mkfifo ../stdout.log; then
                    touch \(marks)/swapped
                else
                    touch \(marks)/refused
                fi
                exit 0
                """, runAsUser: runAsUser)
            #expect(outcome == .exited(0), "the daemon did not finish: \(h.log("w").suffix(2000))")
            #expect(try await h.queueDepth() == 0)
            #expect(fileExists(marks + (runAsUser ? "/refused" : "/swapped")), "\(LocalFile.listDirectory(marks))")
        }
    }

    /// The walls around a run-as user's command: a /tmp of the task's own (each command is PID 1 of its namespace,
    /// so `$$` is the same in all of them, and a shared /tmp would mix concurrent tasks' files), a /proc that shows
    /// only its own processes, and no way up through setuid programs (no_new_privs: `crontab` could otherwise start
    /// something outside the task).
    @Test(.enabled(if: asRoot, "needs root: namespaces, and the command runs as nobody"))
    func theCommandHasItsOwnTmpAndProcAndNoWayUp() async throws {
        try await withTemporaryDirectory { dir in
            // The work folder and the command outside /tmp, as on an instance (a private /tmp would hide them).
            let base = "/var/lib/pz-test-\(UInt32.random(in: 0...UInt32.max))"
            #expect(mkdir(base, 0o755) == 0)
            defer { removeTree(base) }
            let marker = "pz-tmp-\(UInt32.random(in: 0...UInt32.max))"
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("x.txt", "input")
            try await h.send(["x.txt"])
            let program = base + "/cmd.sh"
            LocalFile.write(
                program,
                Array(
                    """
                    #!/bin/sh
                    touch /tmp/\(marker) /var/tmp/\(marker)
                    # Its stdout is the daemon's log, handed over write-only: reading it back fails.
                    if head -c 1 <&1 >/dev/null 2>&1; then echo "stdout=readable" > report.txt
                    else echo "stdout=write-only" > report.txt; fi
                    {
                        echo "tmp=$(ls -A /tmp | tr '\\n' ' ')"
                        echo "pids=$(ls /proc | grep -c '^[0-9]')"
                        grep '^NoNewPrivs' /proc/self/status
                        echo "user=$(id -un)"
                    } >> report.txt
                    echo report.txt

                    """.utf8), mode: 0o755)
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["maxAttempts": "1", "runAsUser": "nobody", "workDir": base + "/work"], program: program))
            let outcome = await worker.wait(timeout: 60)
            #expect(outcome == .exited(0), "\(h.log("w").suffix(2000))")

            let log = h.log("w")
            let report = try await h.output("report.txt")
            #expect(report.contains("NoNewPrivs:\t1"), "\(report)")
            #expect(report.contains("user=nobody"), "\(report)")
            #expect(report.contains("stdout=write-only"), "\(report)")
            // What start-up found is what the command got; on an instance (and here, as root), all of it.
            #expect(log.contains("/tmp: their task's own"), "\(log.suffix(2000))")
            #expect(report.contains("tmp=\(marker) "), "the command saw more than its own /tmp: \(report)")
            #expect(!fileExists("/tmp/" + marker) && !fileExists("/var/tmp/" + marker), "the host's /tmp was used")
            #expect(log.contains("/proc: their own"), "\(log.suffix(2000))")
            // sh, and the subshell running ls and grep: a handful, not the host's hundreds.
            let pids = report.split(separator: "\n").first { $0.hasPrefix("pids=") }.map { Int($0.dropFirst(5)) }
            #expect((pids ?? nil).map { $0 < 10 } == true, "\(report)")

        }
    }

    /// Hole 2: a child that left the command's process group (setsid) lived on after the task, free to swap files
    /// under the daemon's clean-up or upload. In a PID namespace it ends with the command.
    @Test(.enabled(if: asRoot, "needs root: PID namespaces"))
    func nothingTheCommandStartsOutlivesIt() async throws {
        try await withTemporaryDirectory { dir in
            // The child takes a lock and says so, then holds it for a minute: the lock is free again exactly when
            // the child is gone (the kernel lets go of it with its last descriptor), so no wait proves anything.
            // (In a folder `nobody` may write: the command runs as nobody.)
            let shared = dir + "/shared"
            _ = mkdir(shared, 0o777)
            _ = chmod(shared, 0o777)
            let lock = shared + "/survivor-\(UInt32.random(in: 0...UInt32.max))"
            let (h, outcome) = try await Self.run(
                dir,
                """
                setsid sh -c 'exec 9>>\(lock); flock 9; touch \(lock).held; sleep 60' </dev/null >/dev/null 2>&1 &
                for i in $(seq 1 600); do [ -e \(lock).held ] && break; sleep 0.05; done
                exit 0

                """)
            #expect(outcome == .exited(0), "\(h.log("w").suffix(2000))")
            #expect(h.log("w").contains("PID namespace of their own"))
            #expect(fileExists(lock + ".held"), "the child never took its lock")
            let fd = open(lock, O_RDWR)
            defer { close(fd) }
            #expect(fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0, "a process the command started outlived its task")
        }
    }

    /// Hole 6: the command runs in the environment folder, and a relative name it prints is looked up there, as
    /// the command meant it (it used to be looked up in the task folder, and the output was lost).
    @Test func aRelativeNameIsLookedUpWhereTheCommandRuns() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.makeZip(
                dir + "/env.zip",
                files: [
                    ("bin/count.sh", "#!/bin/sh\nwc -c < \"$1\" > result-$$.csv\necho result-$$.csv\n", 0o755)
                ])
            try await h.uploadFile(bucket: h.inputBucket, key: "env/env.zip", path: dir + "/env.zip")
            try await h.upload("in/x.txt", "five!")
            try await h.send(["in/x.txt"])
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["environmentBucket": h.inputBucket, "environmentZip": "env/env.zip"], program: "bin/count.sh"))
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w").suffix(2000))")
            let keys = try await h.outputKeys()
            let result = try #require(keys.first { $0.hasPrefix("in/result-") }, "no output: \(keys)")
            #expect(try await h.output(result).trimmingSpaces == "5")
        }
    }

    /// Hole 6: a name that leads to no usable file is the task's failure, never a silent delete.
    @Test func aNameThatLeadsNowhereIsATaskFailure() async throws {
        try await withTemporaryDirectory { dir in
            let (h, outcome) = try await Self.run(dir, "echo never-written.txt\n", runAsUser: false)
            #expect(outcome == .exited(0))
            let record = try JSONValue.parse(try await h.output("_failed/x.txt.json"))
            #expect(record["reason"]?.stringValue?.contains("never-written.txt' does not exist") == true, "\(record)")
        }
    }

    /// Hole 5: with runAsUser and passCredentials=false the command must not reach IMDS, where the instance role's
    /// credentials are. In a network namespace of the test's own, with IMDS at its EC2 addresses.
    @Test(.enabled(if: asRoot, "needs root: a network namespace and nftables"))
    func theCommandCannotReachIMDS() async throws {
        try RequiredTool.require("ip", package: "iproute2")
        try RequiredTool.require("nft", package: "nftables")
        try RequiredTool.require("sysctl", package: "procps")
        try RequiredTool.require("curl", package: "curl")
        func check(_ extra: [String]) async throws -> String {
            try await withTemporaryDirectory { dir in
                _ = chmod(dir, 0o777)
                let result = try await Scripts.run(
                    "/bin/bash",
                    [Scripts.repositoryRoot + "/scripts/lib/imds_fence_check.sh", WorkerHarness.binary, dir] + extra,
                    environment: ProcessEnvironment.current(), directory: dir, timeout: 150)
                let says = result.stdout + result.stderr
                #expect(result.succeeded, "\(says.suffix(3000))")
                return says
            }
        }
        // The command, as nobody, was refused on both addresses; the daemon, as root, reached IMDS.
        let says = try await check([])
        #expect(says.contains("command: v4 refused"), "\(says.suffix(3000))")
        #expect(says.contains("command: v6 refused"), "\(says.suffix(3000))")
        #expect(says.contains("daemon: instance=i-0fenced"), "\(says.suffix(3000))")
        // The rule outlives the daemon: removing it would open IMDS to the user while anything of theirs runs.
        #expect(says.contains("the rule stays after exit"), "\(says.suffix(3000))")
        // The probe's control: with passCredentials=true there is no rule, and the same probe reaches IMDS.
        let open = try await check(["pass"])
        #expect(open.contains("command: v4 reached"), "\(open.suffix(3000))")
        #expect(open.contains("command: v6 reached"), "\(open.suffix(3000))")
        #expect(open.contains("no rule after exit"), "\(open.suffix(3000))")
        // A flushed ruleset (a firewall reload) after start-up: the daemon puts the rule back before the command.
        let flushed = try await check(["flush"])
        #expect(flushed.contains("the rule was flushed"), "\(flushed.suffix(3000))")
        #expect(flushed.contains("the daemon put the rule back"), "\(flushed.suffix(3000))")
        #expect(flushed.contains("command: v4 refused"), "\(flushed.suffix(3000))")
        #expect(flushed.contains("command: v6 refused"), "\(flushed.suffix(3000))")

    }
}
