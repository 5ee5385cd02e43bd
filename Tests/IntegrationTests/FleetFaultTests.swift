import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport
import Worker

/// A transport or service fault injected by the fault proxy while three workers drain the queue.
struct TransportFault: Sendable, CustomTestStringConvertible {
    var name: String
    var rules: String
    /// Text the workers' logs must show: the fault was met and got past. Nil where the fault may be got past below
    /// the daemon: then the proxy's count of faults fired is the evidence.
    var logShows: String? = "retrying AWS call"
    var testDescription: String { name }

    static let all: [TransportFault] = [
        TransportFault(
            name: "S3 503 SlowDown and 500s",
            rules: """
                [{"service":"s3","operation":"GetObject","error":{"code":"SlowDown","status":503},"probability":0.25},
                 {"service":"s3","operation":"PutObject","error":{"code":"InternalError","status":500},"probability":0.25}]
                """),
        TransportFault(
            name: "SQS throttling",
            rules: """
                [{"service":"sqs","error":{"code":"ThrottlingException","status":400},"probability":0.2}]
                """),
        // libcurl itself sends a request again, once, on a fresh connection when a reused one dies before any byte
        // of the answer: most resets never reach the daemon's retry, and in one CI run none of 35 did.
        TransportFault(name: "TCP resets", rules: #"[{"reset":true,"probability":0.1}]"#, logShows: nil),
        // Latency is no error: nothing to retry, only slower tasks (task.seconds in the log).
        TransportFault(
            name: "1-3 s latency",
            rules: """
                [{"latency":{"min_ms":1000,"max_ms":3000},"probability":0.15}]
                """, logShows: "task done"),
        TransportFault(
            name: "GET aborted mid-body",
            rules: """
                [{"service":"s3","operation":"GetObject","response":{"abort_frac":0.5},"probability":0.3}]
                """),
        TransportFault(
            name: "upload cut halfway",
            rules: """
                [{"service":"s3","operation":"PutObject","request":{"cut_upload":{"after_bytes":3072}},"probability":0.3}]
                """),
        // Every slot's first long poll hangs: each must time out on its own (wait + 15 s) and poll again.
        TransportFault(
            name: "ReceiveMessage hangs until the client's timeout",
            rules: """
                [{"service":"sqs","operation":"ReceiveMessage","timeout_ms":120000,"times":6}]
                """, logShows: "Timeout was reached"),
    ]
}

extension S3FaultTests {
    /// Every input gets exactly one correct output, nothing is given up, the queue ends empty, every worker exits
    /// cleanly, and the workers' logs show the faults they got past.
    @Test(arguments: TransportFault.all)
    func aFleetDrainsThroughTransportFaults(_ fault: TransportFault) async throws {
        try await withTemporaryDirectory { dir in
            let fleet = try await FaultFleet.make(directory: dir, count: 120)
            try await TestEnvironment.setFaultRules(fault.rules)
            defer { Task { try? await TestEnvironment.setFaultRules("[]") } }
            let started = ContinuousClock.now
            let parameters = fleet.parameters()
            let proxy = try TestEnvironment.routeThroughFaultProxy()
            let workers = try (0..<3).map { try fleet.start($0, parameters: parameters, environment: proxy) }
            let fired = try await TestEnvironment.faultsFired()
            let result = try await fleet.finish(workers, started: started)
            try await TestEnvironment.setFaultRules("[]")
            let firedHere = try await TestEnvironment.faultsFired() - fired
            print("fault scenario '\(fault.name)': \(result), faults fired \(firedHere)")
            #expect(result.passed, "\(result)\n\(result.workerLogTails)")
            #expect(firedHere > 0, "the proxy fired no fault: \(result)")
            if let logShows = fault.logShows {
                #expect(fleet.logs().contains(logShows), "no sign of the fault in the logs: \(result)")
            }
        }
    }
}

/// A fault that hits one worker process of the three, at a chosen moment of one of its tasks.
struct ProcessFault: Sendable, CustomTestStringConvertible {
    enum Moment: Sendable { case download, command, upload }
    enum Blow: Sendable { case kill9, sigterm, spotNotice, rebalance }
    var moment: Moment
    var blow: Blow
    var testDescription: String { "\(blow) mid-\(moment)" }

    static let all: [ProcessFault] = [
        ProcessFault(moment: .download, blow: .kill9), ProcessFault(moment: .command, blow: .kill9),
        ProcessFault(moment: .upload, blow: .kill9), ProcessFault(moment: .command, blow: .sigterm),
        ProcessFault(moment: .command, blow: .spotNotice), ProcessFault(moment: .command, blow: .rebalance),
    ]
}

extension S3FaultTests {
    /// One worker is killed, stopped or told its spot instance is going, mid-task; the fleet still gives every input
    /// exactly one correct output and empties the queue. A killed worker's message comes back after its visibility
    /// timeout; a stopped one releases its message at once.
    @Test(arguments: ProcessFault.all)
    func aFleetDrainsThroughAWorkerLostMidTask(_ fault: ProcessFault) async throws {
        try await withTemporaryDirectory { dir in
            let fleet = try await FaultFleet.make(directory: dir, count: 100)
            // Slow the first transfers through the proxy, so "mid-download" and "mid-upload" last long enough to hit.
            switch fault.moment {
            case .download:
                try await TestEnvironment.setFaultRules(
                    #"[{"service":"s3","operation":"GetObject","latency":2000,"times":12}]"#)
            case .upload:
                try await TestEnvironment.setFaultRules(
                    #"[{"service":"s3","operation":"PutObject","latency":2000,"times":12}]"#)
            case .command:
                try await TestEnvironment.setFaultRules("[]")
            }
            defer { Task { try? await TestEnvironment.setFaultRules("[]") } }
            func parameters(_ extra: [String: String] = [:]) -> String {
                fleet.parameters(
                    extra: ["visibilityTimeout": "12", "shutdownGrace": "0"].merging(extra) { $1 },
                    // Which worker runs the command: its work folder (`work-w<index>`), three levels above the
                    // task's data folder. ($PPID says nothing in the PID namespace a command runs in as root.)
                    before: "w=$(basename \"$(dirname \"$(dirname \"$(dirname \"$PARALLELIZER_TASK_DIR\")\")\")\"); "
                        + "touch \"\(dir)/cmd-$w\"; sleep 0.3; rm -f \"\(dir)/cmd-$w\"",
                    after: "touch \"\(dir)/up-$w\"")
            }
            // After a rebalance recommendation the first worker powers off (here: its shutdown command marks it), so
            // that a replacement starts in a healthier pool.
            let firstParameters = parameters(
                fault.blow == .rebalance
                    ? ["shouldShutdown": "true", "shutdownCommand": "/bin/sh -c 'touch \(dir)/halted'"] : [:])
            let proxy = try TestEnvironment.routeThroughFaultProxy()
            let started = ContinuousClock.now
            var imds: IMDSStandIn?
            if fault.blow == .spotNotice || fault.blow == .rebalance {
                imds = try await IMDSStandIn.start(directory: dir, userData: nil, instanceID: "i-0spot")
            }
            let first = try fleet.start(0, parameters: firstParameters, environment: proxy, imds: imds?.endpoint)
            let others = try (1..<3).map { try fleet.start($0, parameters: parameters(), environment: proxy) }

            // Wait for the moment in the first worker.
            var hit = false
            for _ in 0..<600 {
                switch fault.moment {
                case .download: hit = fleet.harness.log("w0").contains("task start")
                case .command: hit = fileExists("\(dir)/cmd-work-w0")
                case .upload: hit = fileExists("\(dir)/up-work-w0")
                }
                if hit { break }
                try await Task.sleep(nanoseconds: 10_000_000)
            }
            #expect(hit, "the first worker never reached its \(fault.moment)")
            switch fault.blow {
            case .kill9: first.signal(SIGKILL)
            case .sigterm: first.signal(SIGTERM)
            case .spotNotice:
                try await imds?.configure(#"{"spotAction": {"action": "terminate", "time": "2026-11-23T12:00:00Z"}}"#)
            case .rebalance:
                try await imds?.configure(#"{"rebalance": {"noticeTime": "2026-11-23T12:00:00Z"}}"#)
            }
            let firstExit = await first.wait(timeout: 60)
            await imds?.stop()
            let result = try await fleet.finish(others, started: started)
            try await TestEnvironment.setFaultRules("[]")
            print(
                "process fault '\(fault.testDescription)': \(result), first worker \(firstExit.map { "\($0)" } ?? "running")"
            )
            #expect(firstExit == (fault.blow == .kill9 ? .signalled(SIGKILL) : .exited(0)))
            #expect(result.passed, "\(result)\n\(result.workerLogTails)")
            if fault.blow != .kill9 {
                let log = fleet.harness.log("w0")
                #expect(log.contains(fault.blow == .sigterm ? "SIGTERM" : "spot"), "\(log.suffix(2000))")
                #expect(log.contains("released"), "\(log.suffix(2000))")
                #expect(fileExists("\(dir)/halted") == (fault.blow == .rebalance), "\(log.suffix(2000))")
            }
        }
    }
}

/// Environment faults: the disk, the credentials, the clock.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct EnvironmentFaultTests {
    /// One node of three has a full disk (a 4 MiB tmpfs, nearly filled, under its work folder). It fails fast, so
    /// without care it would take more messages than any healthy worker and turn each into a failure (here at
    /// once: maxAttempts 1). Its trouble is its own: it gives each message back unrun, noted, and leaves after three
    /// tasks in a row; the healthy two do every input, and nothing is given up.
    @Test(.enabled(if: getuid() == 0, "mounting a small tmpfs needs root"))
    func aNodeWithAFullDiskLeavesItsWorkToTheHealthyOnes() async throws {
        try await withTemporaryDirectory { dir in
            let disk = try await mountSmallDisk(in: dir)
            defer { unmountSmallDisk(disk) }
            let fleet = try await FaultFleet.make(directory: dir, count: 100, size: 48 << 10)
            makeFile(disk + "/filler", size: (4 << 20) - (40 << 10))
            let started = ContinuousClock.now
            let parameters = fleet.parameters(extra: ["visibilityTimeout": "15", "maxAttempts": "1"])
            let full = try fleet.start(0, parameters: parameters, workRoot: disk)
            let healthy = try (1..<3).map { try fleet.start($0, parameters: parameters) }
            let result = try await fleet.finish(healthy, started: started)
            let fullExit = await full.wait(timeout: 60)
            print(
                "environment fault 'a node with a full disk': \(result), the full node \(fullExit.map { "\($0)" } ?? "still running")"
            )
            #expect(result.passed, "\(result)\n\(result.workerLogTails)")
            let log = fleet.harness.log("w0")
            #expect(log.contains("No space left on device"), "the full disk was never met: \(log.suffix(2000))")
            #expect(log.contains("task deferred"), "\(log.suffix(2000))")
            #expect(!log.contains("given up") && !log.contains("giving up"), "\(log.suffix(2000))")
            // It left (status 1, one critical line) unless the others drained the queue first.
            #expect(fullExit == .exited(1) || fullExit == .exited(0), "\(log.suffix(2000))")
            if fullExit == .exited(1) { #expect(log.contains("cannot go on here"), "\(log.suffix(2000))") }
        }
    }

    /// The instance role's credentials live 60 seconds and each key is deleted from moto when it expires, so a
    /// worker that kept an old key would be refused from then on. The run outlasts the first keys by far.
    @Test func credentialsExpiringEveryMinuteAreReplacedBeforeTheyDie() async throws {
        try await withTemporaryDirectory { dir in
            let fleet = try await FaultFleet.make(directory: dir, count: 100)
            let imds = try await IMDSStandIn.start(
                directory: dir, userData: nil, credentialLifetime: 60,
                rotatingUser: uniqueName("pz-rotating"))
            defer { Task { await imds.stop() } }
            let started = ContinuousClock.now
            // About 17 tasks per slot at 4 s each: the fleet runs well past the first key's death at 60 s.
            let parameters = fleet.parameters(before: "sleep 4")
            let workers = try (0..<3).map {
                try fleet.start($0, parameters: parameters, imds: imds.endpoint, instanceRole: true)
            }
            let result = try await fleet.finish(workers, started: started)
            let stats = try await imds.stats()
            let created = stats["keysCreated"]?.intValue ?? 0, deleted = stats["keysDeleted"]?.intValue ?? 0
            print(
                "environment fault 'credentials expiring every 60 s': \(result), keys handed out \(created), expired \(deleted)"
            )
            #expect(result.passed, "\(result)\n\(result.workerLogTails)")
            #expect(deleted >= 1 && result.seconds > 65, "no key expired while the fleet ran: \(result)")
            for index in 0..<3 {
                #expect(
                    fleet.harness.log("w\(index)").contains("credentials refreshed"),
                    "worker \(index) never switched keys")
            }
        }
    }

    /// A clock a year ahead, more than any machine's uptime. libfaketime 0.9.10 shifts the deadlines of monotonic
    /// timers by its offset too, which then fall before the machine booted: without the shim the suite preloads
    /// first (scripts/lib/faketime_timerfd_shim.c), no Task.sleep of the worker ever returns and it never stops. So
    /// this fails on any machine when the shim is missing, where the 20-minute test below fails only on a machine up
    /// for less than 20 minutes.
    @Test func timersFireUnderAClockFarAhead() async throws {
        try await withTemporaryDirectory { dir in
            let skewed = [
                "LD_PRELOAD": try TestEnvironment.faketimePreload(), "FAKETIME": "+31536000",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            ]
            let fleet = try await FaultFleet.make(directory: dir, count: 5, s3: .seaweed)
            let started = ContinuousClock.now
            let worker = try fleet.start(0, parameters: fleet.parameters(), environment: skewed)
            let result = try await fleet.finish([worker], started: started, timeout: 60)
            print("environment fault 'clock a year ahead': \(result)")
            #expect(result.passed, "\(result)\n\(result.workerLogTails)")
        }
    }

    /// Every worker's clock runs 20 minutes fast (libfaketime), and S3 is SeaweedFS, which refuses a signature more
    /// than 15 minutes off as AWS does. Each worker must take the offset from the server's `Date` and go on.
    @Test func aClockTwentyMinutesFastIsCorrectedFromTheServersDate() async throws {
        try await withTemporaryDirectory { dir in
            let skewed = [
                "LD_PRELOAD": try TestEnvironment.faketimePreload(), "FAKETIME": "+1200",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            ]
            let fleet = try await FaultFleet.make(directory: dir, count: 100, s3: .seaweed)
            let started = ContinuousClock.now
            let parameters = fleet.parameters()
            let workers = try (0..<3).map { try fleet.start($0, parameters: parameters, environment: skewed) }
            let result = try await fleet.finish(workers, started: started)
            print("environment fault 'clock 20 minutes fast': \(result)")
            #expect(result.passed, "\(result)\n\(result.workerLogTails)")
            for index in 0..<3 {
                #expect(fleet.harness.log("w\(index)").contains("clock skew corrected"), "worker \(index) met no skew")
            }
        }
    }
}
