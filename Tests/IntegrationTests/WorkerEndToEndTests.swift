import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import TestSupport
import Testing
import Worker

/// `parallelizer run` processes against moto (signature checks on), end to end.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(5)))
struct WorkerEndToEndTests {
    /// Upper-cases the input next to it and prints the result's path.
    static let upper = "tr a-z A-Z < \"$1\" > \"$1.out\"\necho \"$1.out\"\n"

    @Test(arguments: ["key=value", "json", "cloud-config", "multipart"])
    func userDataForms(form: String) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script("upper.sh", Self.upper)
            let lines = h.parameters(program: program).split(separator: "\n").map { line -> (String, String) in
                let eq = line.firstIndex(of: "=")!
                return (String(line[..<eq]), String(line[line.index(after: eq)...]))
            }
            let userData: String
            switch form {
            case "json":
                userData = "{" + lines.map { "\"\($0.0)\": \"\($0.1)\"" }.joined(separator: ", ") + "}"
            case "cloud-config":
                userData =
                    "#cloud-config\npackages: [unzip]\nparallelizer:\n"
                    + lines.map { "  \($0.0): \"\($0.1)\"" }.joined(separator: "\n") + "\n"
            case "multipart":
                userData =
                    "Content-Type: multipart/mixed; boundary=\"XYZ\"\nMIME-Version: 1.0\n\n--XYZ\nContent-Type: text/x-shellscript\n\n#!/bin/sh\necho boot\n--XYZ\nContent-Type: text/plain\n\n"
                    + lines.map { "\($0.0)=\($0.1)" }.joined(separator: "\n") + "\n--XYZ--\n"
            default:
                userData = lines.map { "\($0.0)=\($0.1)" }.joined(separator: "\n")
            }
            let imds = try await IMDSStandIn.start(directory: dir, userData: userData)
            defer { Task { await imds.stop() } }
            try await h.upload("a/one.txt", "one")
            try await h.upload("b/one.txt", "uno")
            try await h.send(["a/one.txt", "b/one.txt"])
            let worker = try h.startWorker(name: "w", parameters: nil, imds: imds.endpoint)
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            #expect(try await h.outputKeys() == ["a/one.txt.out", "b/one.txt.out"])
            #expect(try await h.output("b/one.txt.out") == "UNO")
            #expect(try await h.queueDepth() == 0)
        }
    }

    @Test func messageBodyForms() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script("upper.sh", Self.upper)
            for key in ["plain.txt", "uri/x.txt", "json/y.txt", "event/a b.txt"] { try await h.upload(key, key) }
            try await h.send([
                "plain.txt", "s3://\(h.inputBucket)/uri/x.txt",
                #"{"bucket": "\#(h.inputBucket)", "key": "json/y.txt"}"#,
                #"{"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "\#(h.inputBucket)"}, "object": {"key": "event/a+b.txt"}}}]}"#,
                #"{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "\#(h.inputBucket)"}"#,
            ])
            let worker = try h.startWorker(name: "w", parameters: h.parameters(program: program))
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            // (The `%2B` decoding is covered by MessageTests.)
            #expect(
                try await h.outputKeys() == ["event/a b.txt.out", "json/y.txt.out", "plain.txt.out", "uri/x.txt.out"])
            #expect(try await h.output("event/a b.txt.out") == "EVENT/A B.TXT")
            #expect(h.log("w").contains("S3 test event deleted"))
            #expect(try await h.queueDepth() == 0)
        }
    }

    @Test func failurePathsAndTheirFates() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script(
                "judge.sh",
                """
                name=$(basename "$1")
                case "$name" in
                  fail*) echo "boom on $name" >&2; exit 3 ;;
                  hang*) sleep 60 ;;
                  outside*) echo /etc/passwd ;;
                  nofile*) echo "$1.never-written" ;;
                  quiet*) : ;;
                  *) tr a-z A-Z < "$1" > "$1.out"; echo "$1.out" ;;
                esac
                """)
            for key in ["ok.txt", "fail.txt", "hang.txt", "outside.txt", "nofile.txt", "quiet.txt"] {
                try await h.upload(key, key)
            }
            try await h.send([
                "ok.txt", "fail.txt", "hang.txt", "outside.txt", "nofile.txt", "quiet.txt", "missing.txt",
            ])
            let params = h.parameters(["maxAttempts": "2", "taskTimeout": "2", "numThreads": "3"], program: program)
            let worker = try h.startWorker(name: "w", parameters: params)
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.log("w"))")
            let keys = try await h.outputKeys()
            // A name that leads to no usable file is the task's failure (retried, then recorded), not a silent delete.
            #expect(
                keys == [
                    "_failed/fail.txt.json", "_failed/hang.txt.json", "_failed/missing.txt.json",
                    "_failed/nofile.txt.json", "_failed/outside.txt.json", "ok.txt.out",
                ])
            let outside = try JSONValue.parse(try await h.output("_failed/outside.txt.json"))
            #expect(outside["reason"]?.stringValue?.contains("names no usable file") == true)
            let fail = try JSONValue.parse(try await h.output("_failed/fail.txt.json"))
            #expect(fail["exitStatus"]?.stringValue == "exit 3")
            #expect(fail["attempts"]?.intValue == 2)
            #expect(fail["stderrTail"]?.stringValue?.contains("boom on fail.txt") == true)
            #expect(fail["instanceId"]?.stringValue?.isEmpty == false)
            #expect(fail["input"]?.stringValue == "s3://\(h.inputBucket)/fail.txt")
            let hang = try JSONValue.parse(try await h.output("_failed/hang.txt.json"))
            #expect(hang["exitStatus"]?.stringValue == "timeout")
            let missing = try JSONValue.parse(try await h.output("_failed/missing.txt.json"))
            #expect(missing["reason"]?.stringValue?.contains("NoSuchKey") == true)
            #expect(missing["attempts"]?.intValue == 1, "a missing input is given up at once, not retried")
            let log = h.log("w")
            #expect(log.contains("outside the task folder"))
            #expect(log.contains("does not exist"))
            #expect(try await h.queueDepth() == 0)
        }
    }

    @Test func sigtermReleasesTheRunningMessageAtOnce() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script("slow.sh", "echo started > \(dir)/started\nsleep 60\n")
            try await h.upload("slow.txt", "x")
            try await h.send(["slow.txt"])
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["shutdownGrace": "1", "visibilityTimeout": "300"],
                    program: program))
            try #require(
                await waitUntil { fileExists("\(dir)/started") },
                "the command never started: \(h.log("w").suffix(2000))")
            worker.signal(SIGTERM)
            #expect(await worker.wait(timeout: 30) == .exited(0), "\(h.log("w"))")
            // Visible again at once, not after the 300-second visibility timeout.
            let again = try await h.sqs.receiveMessages(queueURL: h.queueURL, waitSeconds: 2, logger: quietLogger)
            #expect(again.map(\.body) == ["slow.txt"])
            #expect(h.log("w").contains("message released"))
        }
    }

    @Test func aSpotNoticeDrainsTheWorker() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let imds = try await IMDSStandIn.start(directory: dir, userData: nil)
            defer { Task { await imds.stop() } }
            let program = h.script("slow.sh", "echo started > \(dir)/started\nsleep 60\n")
            try await h.upload("slow.txt", "x")
            try await h.send(["slow.txt"])
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["shutdownGrace": "1", "visibilityTimeout": "300"],
                    program: program), imds: imds.endpoint)
            try #require(
                await waitUntil { fileExists("\(dir)/started") },
                "the command never started: \(h.log("w").suffix(2000))")
            try await imds.configure(#"{"spotAction": {"action": "terminate", "time": "2026-11-23T12:00:00Z"}}"#)
            #expect(await worker.wait(timeout: 30) == .exited(0), "\(h.log("w"))")
            #expect(h.log("w").contains("spot interruption notice"))
            let again = try await h.sqs.receiveMessages(queueURL: h.queueURL, waitSeconds: 2, logger: quietLogger)
            #expect(again.map(\.body) == ["slow.txt"])
        }
    }

    @Test func theShutdownCommandRunsOnceAfterTheDrain() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script("upper.sh", Self.upper)
            try await h.upload("a.txt", "a")
            try await h.send(["a.txt"])
            let params = h.parameters(
                [
                    "shouldShutdown": "true", "numThreads": "3",
                    "shutdownCommand": "/bin/sh -c 'echo halted >> \(dir)/shutdowns'",
                ], program: program)
            let worker = try h.startWorker(name: "w", parameters: params)
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            #expect(LocalFile.readText("\(dir)/shutdowns") == "halted\n")
            #expect(try await h.outputKeys() == ["a.txt.out"])
        }
    }

    @Test func aWorkerWaitsWhileMessagesAreInFlightElsewhere() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("late.txt", "late")
            try await h.send(["late.txt"])
            // Another "instance" holds the message, then gives it back: the idle worker must not have left.
            let held = try await h.sqs.receiveMessages(queueURL: h.queueURL, visibilityTimeout: 8, logger: quietLogger)
            #expect(held.count == 1)
            let worker = try h.startWorker(
                name: "w", parameters: h.parameters(program: h.script("upper.sh", Self.upper)))
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            #expect(try await h.outputKeys() == ["late.txt.out"])
        }
    }

    @Test func badParametersStopStartUpNamingTheKey() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let worker = try h.startWorker(
                name: "w", parameters: h.parameters(["taskTimeout": "soon"], program: "/bin/true"))
            #expect(await worker.wait(timeout: 30) == .exited(2))
            let lines = h.log("w").split(separator: "\n").filter { $0.contains("critical") }
            #expect(lines.count == 1)
            #expect(lines.first?.contains("taskTimeout") == true)
            let unreadable = try h.startWorker(
                name: "u", parameters: nil, extraArguments: ["--config", "/nonexistent/params"])
            #expect(await unreadable.wait(timeout: 30) == .exited(2))
            #expect(h.log("u").contains("--config file cannot be read"))
        }
    }
}

/// The issue's acceptance run: three workers drain 200 inputs while one is killed with SIGKILL mid-task.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(5)))
struct FleetDrainTests {
    @Test func threeWorkersDrain200InputsThroughAKill() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let count = 200
            let keys = (0..<count).map { "batch/\($0 % 7)/input-\($0).txt" }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for chunk in stride(from: 0, to: count, by: 25) {
                    group.addTask {
                        for key in keys[chunk..<min(chunk + 25, count)] { try await h.upload(key, "content of \(key)") }
                    }
                }
                try await group.waitForAll()
            }
            try await h.send(keys)
            // Each task marks itself, takes a moment, and writes a checksum-like output.
            let program = h.script(
                "work.sh",
                """
                w=$(basename "$(dirname "$(dirname "$(dirname "$PARALLELIZER_TASK_DIR")")")")
                touch "\(dir)/running-$w"
                sleep 0.1
                tr a-z A-Z < "$1" > "$1.out"
                rm -f "\(dir)/running-$w"
                echo "$1.out"
                """)
            let params = h.parameters(
                ["visibilityTimeout": "8", "idleTimeout": "3", "maxAttempts": "5"], program: program)
            // Each worker has its own work folder, which names it to the command: the marker says which worker runs a
            // task ($PPID says nothing in the PID namespace a command runs in as root).
            let workers = try (0..<3).map {
                try h.startWorker(
                    name: "w\($0)", parameters: params, extraArguments: ["--set", "workDir=\(dir)/work-w\($0)"])
            }
            // Kill the first worker while its command runs (the marker exists only during a task), once some work
            // is done.
            var killedMidTask = false
            for _ in 0..<2000 {
                if fileExists("\(dir)/running-work-w0"), ((try? await h.outputKeys()) ?? []).count >= 20 {
                    killedMidTask = true
                    break
                }
                try await Task.sleep(nanoseconds: 10_000_000)
            }
            #expect(killedMidTask)
            workers[0].signal(SIGKILL)
            #expect(await workers[0].wait(timeout: 10) == .signalled(SIGKILL))
            for worker in workers.dropFirst() {
                #expect(await worker.wait(timeout: 240) == .exited(0), "\(h.logTails(["w1", "w2"]))")
            }
            let outputs = try await h.outputKeys()
            #expect(
                outputs.count == count,
                "missing: \(Set(keys.map { $0 + ".out" }).subtracting(outputs).sorted().prefix(5))")
            #expect(Set(outputs) == Set(keys.map { $0 + ".out" }))
            for key in keys.shuffled().prefix(10) {
                #expect(try await h.output(key + ".out") == "content of \(key)".uppercased())
            }
            #expect(try await h.queueDepth() == 0)
        }
    }
}

@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(2)))
struct StartUpRefusalTests {
    /// Two daemons on one work folder would remove each other's task folders at start: the second stops at once.
    /// A shared folder (/tmp) is not taken over, and a run-as user that is root is refused.
    @Test func aWorkFolderThatIsNotTheDaemonsOwnStopsStartUp() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let params = h.parameters(["idleTimeout": "60"], program: "/bin/true")
            let first = try h.startWorker(name: "first", parameters: params)
            defer { first.signal(SIGKILL) }
            let started = await waitUntil { h.log("first").contains("parallelizer started") }
            #expect(started, "\(h.log("first").suffix(2000))")
            let second = try h.startWorker(name: "second", parameters: params)
            #expect(await second.wait(timeout: 30) == .exited(2))
            #expect(h.log("second").contains("another parallelizer daemon is using"), "\(h.log("second").suffix(2000))")
            first.signal(SIGTERM)
            #expect(await first.wait(timeout: 30) == .exited(0))

            let shared = try h.startWorker(
                name: "shared", parameters: h.parameters(["workDir": "/tmp"], program: "/bin/true"))
            #expect(await shared.wait(timeout: 30) == .exited(2))
            #expect(h.log("shared").contains("must be a folder of the daemon's own"), "\(h.log("shared").suffix(2000))")
            if getuid() == 0 {
                let root = try h.startWorker(
                    name: "root", parameters: h.parameters(["runAsUser": "root"], program: "/bin/true"))
                #expect(await root.wait(timeout: 30) == .exited(2))
                #expect(h.log("root").contains("'root' is root"), "\(h.log("root").suffix(2000))")
            }
        }
    }

    @Test(arguments: ["/nonexistent/program", "no-such-tool-anywhere"])
    func aMissingCommandStopsStartUp(program: String) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let worker = try h.startWorker(name: "w", parameters: h.parameters(program: program))
            #expect(await worker.wait(timeout: 30) == .exited(2))
            #expect(h.log("w").contains("analysisProgram"))
            #expect(h.log("w").contains("was not found"))
        }
    }
}

@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(2)))
struct HeartbeatTests {
    @Test func aLongTaskKeepsItsMessageInvisible() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("long.txt", "long")
            try await h.send(["long.txt"])
            let program = h.script(
                "long.sh", "echo started > \(dir)/started\nsleep 9\ncp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let worker = try h.startWorker(
                name: "w", parameters: h.parameters(["visibilityTimeout": "3"], program: program))
            try #require(
                await waitUntil { fileExists("\(dir)/started") },
                "the command never started: \(h.log("w").suffix(2000))")
            // Three visibility timeouts pass while the command runs; nobody else may receive the message.
            var stolen: [String] = []
            for _ in 0..<6 {
                stolen += try await h.sqs.receiveMessages(
                    queueURL: h.queueURL, maxMessages: 1, waitSeconds: 1,
                    visibilityTimeout: 1, logger: quietLogger
                ).map(\.body)
                try await Task.sleep(nanoseconds: 500_000_000)
            }
            #expect(stolen.isEmpty, "the message became visible during the task")
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            #expect(try await h.outputKeys() == ["long.txt.out"])
            // The log file: appended, mode 0640, the same lines as stderr.
            var st = stat()
            #expect(stat("\(dir)/worker.log", &st) == 0)
            #expect(st.st_mode & 0o777 == 0o640)
            #expect(LocalFile.readText("\(dir)/worker.log")?.contains("parallelizer started") == true)
        }
    }
}

/// Shutdown during an upload, with the fault proxy slowing every part down. Part of S3FaultTests, which runs its
/// tests one at a time: the proxy's rules are global.
extension S3FaultTests {
    @Test func sigtermDuringAMultipartUploadAbortsItAndReleasesTheMessage() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("big.txt", "x")
            try await h.send(["big.txt"])
            // A 70 MiB output goes up in parts; each part takes 3 s through the proxy.
            let program = h.script(
                "big.sh", "head -c 73400320 /dev/zero > \"$1.out\"\necho uploading > \(dir)/started\necho \"$1.out\"\n")
            try await TestEnvironment.setFaultRules(#"[{"service":"s3","operation":"PutObject","latency":3000}]"#)
            defer { Task { try? await TestEnvironment.setFaultRules("[]") } }
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(["shutdownGrace": "1", "visibilityTimeout": "300"], program: program),
                environment: try TestEnvironment.routeThroughFaultProxy())
            try #require(
                await waitUntil { fileExists("\(dir)/started") },
                "the command never started: \(h.log("w").suffix(2000))")
            // The signal goes once the upload is under way: S3 lists it.
            for _ in 0..<400 {
                if try await !h.s3.listMultipartUploads(bucket: h.outputBucket, logger: quietLogger).isEmpty { break }
                try await Task.sleep(nanoseconds: 50_000_000)
            }
            worker.signal(SIGTERM)
            #expect(await worker.wait(timeout: 30) == .exited(0), "\(h.log("w"))")
            try await TestEnvironment.setFaultRules("[]")
            #expect(try await h.s3.listMultipartUploads(bucket: h.outputBucket, logger: quietLogger).isEmpty)
            #expect(try await h.outputKeys().isEmpty)
            let again = try await h.sqs.receiveMessages(queueURL: h.queueURL, waitSeconds: 2, logger: quietLogger)
            #expect(again.map(\.body) == ["big.txt"])
        }
    }
}

@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(2)))
struct CredentialRotationTests {
    @Test func credentialsExpiringMidRunFailNoTask() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            // Role credentials that live 12 seconds, over a run of about 20.
            let imds = try await IMDSStandIn.start(directory: dir, userData: nil, credentialLifetime: 12)
            defer { Task { await imds.stop() } }
            let keys = (0..<10).map { "rot/\($0).txt" }
            for key in keys { try await h.upload(key, key) }
            try await h.send(keys)
            let program = h.script("slow.sh", "sleep 1.5\ncp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            // At trace level, so the secret scan of the log covers every line the daemon can write about credentials.
            let worker = try h.startWorker(
                name: "w", parameters: h.parameters(program: program), imds: imds.endpoint,
                extraArguments: ["--log-level", "trace"], instanceRole: true)
            #expect(await worker.wait(timeout: 90) == .exited(0), "\(h.log("w"))")
            #expect(try await h.outputKeys() == keys.map { $0 + ".out" }.sorted())
            let stats = try await imds.stats()
            #expect((stats["credentialFetches"]?.intValue ?? 0) >= 3)
            #expect(stats["unauthorizedGets"]?.intValue == 0)
            #expect(!h.log("w").contains("task failed"))
        }
    }
}

@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(2)))
struct RunOnceTests {
    @Test func onceProcessesOneMessageAndLeavesTheRest() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            for key in ["a.txt", "b.txt"] { try await h.upload(key, key) }
            try await h.send(["a.txt", "b.txt"])
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    [
                        "shouldShutdown": "true",
                        "shutdownCommand": "/bin/sh -c 'echo x > \(dir)/halted'",
                    ],
                    program: h.script("upper.sh", WorkerEndToEndTests.upper)),
                extraArguments: ["--once"])
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w"))")
            #expect(try await h.outputKeys().count == 1)
            #expect(try await h.queueDepth() == 1)
            #expect(!fileExists("\(dir)/halted"))  // --once never shuts the machine down
        }
    }
}

extension RunOnceTests {
    @Test func onceOnAnEmptyQueueExitsAfterOnePoll() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let worker = try h.startWorker(
                name: "w", parameters: h.parameters(program: "/bin/true"), extraArguments: ["--once"])
            #expect(await worker.wait(timeout: 30) == .exited(0), "\(h.log("w"))")
        }
    }
}

/// A slot with short tasks receives up to ten messages at a time. What it holds but has not started must not wait
/// for it: held too long, or at a stop, those messages go back to the queue for any worker.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct HeldMessageTests {
    /// Fast, except the first call, which marks its start and takes `slow` seconds. The workers take ten messages
    /// per receive (`--receive-batch 10`), so nine wait behind it. (How a slot sizes its receives by itself is
    /// timing-dependent; the unit tests cover that rule.)
    static func firstCallIsSlow(_ dir: String, slow: Int) -> String {
        """
        n=$(cat \(dir)/calls 2>/dev/null || echo 0); echo $((n + 1)) > \(dir)/calls
        if [ "$n" = 0 ]; then echo started > \(dir)/slow-started; sleep \(slow); fi
        tr a-z A-Z < "$1" > "$1.out"
        echo "$1.out"

        """
    }

    /// Uploads and queues `keys`, starts worker "a" (one slot, ten messages per receive, `parameters`) and returns
    /// once its slow first task has begun.
    static func startHolder(
        _ h: WorkerHarness, _ dir: String, keys: [String], content: (String) -> String, slow: Int,
        parameters: [String: String]
    ) async throws -> ChildProcess {
        for key in keys { try await h.upload(key, content(key)) }
        try await h.send(keys)
        let a = try h.startWorker(
            name: "a",
            parameters: h.parameters(
                parameters.merging(["numThreads": "1"]) { $1 },
                program: h.script("a.sh", firstCallIsSlow(dir, slow: slow))),
            extraArguments: ["--receive-batch", "10"])
        await waitUntil { fileExists("\(dir)/slow-started") }
        #expect(fileExists("\(dir)/slow-started"), "\(h.log("a"))")
        return a
    }

    static func taskDoneLines(_ log: String) -> Int {
        log.split(separator: "\n").filter { $0.contains("task done") }.count
    }

    /// Without prefetch, the hold timer sends the held messages back after half their timeout; with it, the
    /// message taken ahead gives up on the slow command after a quarter, and the rest go back with it at once.
    @Test(arguments: [false, true])
    func messagesHeldBehindASlowTaskGoToAnotherWorker(prefetch: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let keys = (1...15).map { "f\($0).txt" }
            // A 4 s timeout: held messages go back after 2 s; the slow task (6 s) outlives the timeout itself.
            let a = try await Self.startHolder(
                h, dir, keys: keys, content: { "content of \($0)" }, slow: 6,
                parameters: ["visibilityTimeout": "4", "prefetch": "\(prefetch)"])
            let b = try h.startWorker(
                name: "b",
                parameters: h.parameters(
                    ["visibilityTimeout": "4", "numThreads": "1"], program: h.script("b.sh", WorkerEndToEndTests.upper))
            )
            #expect(await a.wait(timeout: 90) == .exited(0), "\(h.log("a"))")
            #expect(await b.wait(timeout: 90) == .exited(0), "\(h.log("b"))")
            #expect(h.log("a").contains("message released before its task started"), "\(h.log("a"))")
            // With prefetch, whichever comes first under load: the give-up of the message ahead, or the hold timer.
            #expect(
                h.log("a").contains("held too long")
                    || (prefetch && h.log("a").contains("released for a free worker")),
                "\(h.log("a"))")
            // Each input uploaded once: had worker a kept what it held, b would take those messages when their timeout
            // lapsed, and a would process them again after its slow task. (A receive that found its own output there
            // already is not counted: under load, a release by a's hold timer can land after the message's timeout
            // lapsed and b received it; moto then applies that change, made with the earlier receive's handle, and
            // shows the message again. The daemon settles that receive as done, from its output's metadata.)
            let landedBefore = (h.log("a") + h.log("b")).split(separator: "\n").filter {
                $0.contains("earlier receive is there already")
            }.count
            #expect(
                Self.taskDoneLines(h.log("a")) + Self.taskDoneLines(h.log("b")) - landedBefore == keys.count,
                "a:\n\(h.log("a"))\nb:\n\(h.log("b"))")
            #expect(try await h.outputKeys() == keys.map { $0 + ".out" }.sorted())
            for key in keys { #expect(try await h.output(key + ".out") == "CONTENT OF \(key.uppercased())") }
            #expect(try await h.queueDepth() == 0)
        }
    }

    @Test func aStopReleasesWhatTheSlotHoldsAtOnce() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let keys = (1...12).map { "s\($0).txt" }
            // A 60 s timeout: the held messages' own timer is 30 s away when the stop comes.
            let a = try await Self.startHolder(
                h, dir, keys: keys, content: { _ in "x" }, slow: 3,
                parameters: ["visibilityTimeout": "60", "shutdownGrace": "30"])
            a.signal(SIGTERM)
            #expect(await a.wait(timeout: 60) == .exited(0), "\(h.log("a"))")
            let done = Self.taskDoneLines(h.log("a"))
            #expect(done == 1, "the running task finishes within its grace; nothing new starts\n\(h.log("a"))")
            #expect(h.log("a").contains("stopping before it started"))
            // Everything not done is visible again now, not in a minute.
            var back: [SQSMessage] = []
            for _ in 0..<4 where back.count < keys.count - done {
                back += try await h.sqs.receiveMessages(
                    queueURL: h.queueURL, maxMessages: 10, waitSeconds: 1,
                    logger: quietLogger)
            }
            #expect(back.count == keys.count - done)
            #expect(Set(back.map(\.body)).isDisjoint(with: try await h.outputKeys().map { String($0.dropLast(4)) }))
        }
    }
}
