import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import TestSupport
import Worker
import Testing

/// Every failure in its right scope, as a real fleet meets its edges (issue: "no result lost silently, and nothing
/// stops a worker but a real dead end"): the daemon as it ships, against moto.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct FailureScopeTests {
    /// The failure records in the output bucket, by input key: their reasons.
    static func records(_ h: WorkerHarness) async throws -> [String: String] {
        var found: [String: String] = [:]
        for key in try await h.outputKeys() where key.hasPrefix("_failed/") && !key.hasPrefix("_failed/_bad") {
            let record = try JSONValue.parse(try await h.output(key))
            found[String(key.dropFirst("_failed/".count).dropLast(".json".count))] = record["reason"]?.stringValue ?? ""
        }
        return found
    }

    /// As root every command is PID 1 of its own PID namespace, so `$$` is 1 in every task: eight commands that
    /// name their output `result-$$.csv` name one key. The first input's output lands; the other seven are task
    /// failures whose records name both inputs, never an overwrite, and no message is deleted as if it had
    /// succeeded. With `PARALLELIZER_TASK_ID` in the name, all eight land.
    @Test(.enabled(if: getuid() == 0, "the PID namespace that makes $$ 1 needs root"))
    func outputsNamedWithTheShellsPIDNeverOverwriteEachOther() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let keys = (1...8).map { "in/f\($0).txt" }
            for key in keys { try await h.upload(key, "content of \(key)") }
            try await h.send(keys)
            let pid = h.script("pid.sh", "cp \"$1\" result-$$.csv\necho result-$$.csv\n")
            let worker = try h.startWorker(
                name: "w", parameters: h.parameters(["numThreads": "2", "maxAttempts": "1"], program: pid))
            #expect(await worker.wait(timeout: 90) == .exited(0), "\(h.log("w").suffix(3000))")
            let outputs = try await h.outputKeys().filter { !$0.hasPrefix("_failed/") }
            #expect(outputs == ["in/result-1.csv"], "\(outputs)")
            let winner = try await h.output("in/result-1.csv")
            let records = try await Self.records(h)
            #expect(records.count == 7, "\(records)")
            for (input, reason) in records {
                #expect(reason.contains("in/result-1.csv holds the output of s3://\(h.inputBucket)/in/"), "\(reason)")
                #expect(!winner.contains(input), "the output of \(input) landed and was recorded as failed")
            }
            #expect(try await h.queueDepth() == 0)

            // The task's own id names outputs apart.
            _ = mkdir(dir + "/second", 0o700)
            let h2 = try await WorkerHarness.make(directory: dir + "/second")
            for key in keys { try await h2.upload(key, "content of \(key)") }
            try await h2.send(keys)
            let named = h2.script(
                "id.sh", "cp \"$1\" \"result-$PARALLELIZER_TASK_ID.csv\"\necho \"result-$PARALLELIZER_TASK_ID.csv\"\n")
            let second = try h2.startWorker(
                name: "w", parameters: h2.parameters(["numThreads": "2", "maxAttempts": "1"], program: named))
            #expect(await second.wait(timeout: 90) == .exited(0), "\(h2.log("w").suffix(3000))")
            let landed = try await h2.outputKeys()
            #expect(landed.count == 8 && landed.allSatisfy { $0.hasPrefix("in/result-") }, "\(landed)")
        }
    }

    /// A slot that received ten messages meets an 8-second task with maxAttempts 1 and a 6-second visibility
    /// timeout: the hold timer gives the others back, and a second worker receives them a second time. Those
    /// releases spend no attempt: every input runs, none is given up unrun.
    @Test func aHeldMessageOnItsLastAttemptIsRunNotGivenUp() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let keys = (1...14).map { "f\($0).txt" }
            let a = try await HeldMessageTests.startHolder(
                h, dir, keys: keys, content: { "content of \($0)" }, slow: 8,
                parameters: ["visibilityTimeout": "6", "maxAttempts": "1", "prefetch": "false"])
            let b = try h.startWorker(
                name: "b",
                parameters: h.parameters(
                    ["visibilityTimeout": "6", "numThreads": "1", "maxAttempts": "1"],
                    program: h.script("b.sh", WorkerEndToEndTests.upper)))
            #expect(await a.wait(timeout: 120) == .exited(0), "\(h.log("a").suffix(3000))")
            #expect(await b.wait(timeout: 120) == .exited(0), "\(h.log("b").suffix(3000))")
            let logs = h.log("a") + h.log("b")
            #expect(!logs.contains("not run again"), "\(logs.suffix(3000))")
            let records = try await Self.records(h)
            #expect(records.isEmpty, "\(records) \(logs.suffix(3000))")
            #expect(try await h.outputKeys() == keys.map { $0 + ".out" }.sorted())
            // The releases were noted, and the second receives of those messages ran.
            #expect(!(try await h.releaseNotes()).isEmpty)
            #expect(try await h.queueDepth() == 0)
        }
    }

    /// 3 readable inputs, then 4 under a prefix the role may not read (the same 403 as an object under a KMS key
    /// the role may not use), then 7 readable: the 4 fail as tasks (retried, then recorded with the reason), and
    /// the worker goes on with the 7, then drains.
    @Test func aFewUnreadableInputsAreTheirTasksFailuresNotTheWorkersEnd() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let denied = try await h.credentialsDenying([("s3:GetObject", "arn:aws:s3:::\(h.inputBucket)/denied/*")])
            let first = (1...3).map { "ok/a\($0).txt" }
            let blocked = (1...4).map { "denied/d\($0).txt" }
            let rest = (1...7).map { "ok/b\($0).txt" }
            for key in first + blocked + rest { try await h.upload(key, "content of \(key)") }
            try await h.send(first)
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["numThreads": "1", "maxAttempts": "2", "idleTimeout": "4"],
                    program: h.script("up.sh", WorkerEndToEndTests.upper)),
                environment: denied)
            // The readable ones first, so the worker has read an object; then the rest.
            let firstDone = try await waitUntil {
                try await h.outputKeys().filter { $0.hasPrefix("ok/a") }.count == 3
            }
            #expect(firstDone, "\(h.log("w").suffix(2000))")
            try await h.send(blocked + rest)
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.log("w").suffix(3000))")
            #expect(!h.log("w").contains("critical"), "\(h.log("w").suffix(3000))")
            let outputs = try await h.outputKeys().filter { $0.hasPrefix("ok/") }
            #expect(outputs == (first + rest).map { $0 + ".out" }.sorted())
            let records = try await Self.records(h)
            #expect(records.keys.sorted() == blocked.sorted(), "\(records)")
            #expect(records.values.allSatisfy { $0.contains("AccessDenied") }, "\(records)")
            #expect(try await h.queueDepth() == 0)
        }
    }

    /// The work folder on a 4 MiB disk, six inputs of 6 MiB: a full disk is this machine's trouble. No input is
    /// given up: each message goes back unrun, noted, and after three tasks in a row the worker leaves (one critical
    /// line, its shutdown command, exit 1) for a replacement, which does all six although maxAttempts is 1.
    @Test(.enabled(if: getuid() == 0, "mounting a small tmpfs needs root"))
    func aFullDiskIsTheMachinesTroubleNotTheInputs() async throws {
        try await withTemporaryDirectory { dir in
            let disk = try await mountSmallDisk(in: dir)
            defer { unmountSmallDisk(disk) }
            let h = try await WorkerHarness.make(directory: dir)
            let keys = (1...6).map { "big/f\($0).bin" }
            for key in keys {
                makeFile(dir + "/input", size: 6 << 20, seed: UInt8(key.count))
                try await h.uploadFile(bucket: h.inputBucket, key: key, path: dir + "/input")
            }
            try await h.send(keys)
            let copy = h.script("copy.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let full = try h.startWorker(
                name: "full",
                parameters: h.parameters(
                    [
                        "numThreads": "1", "maxAttempts": "1", "workDir": disk + "/work", "shouldShutdown": "true",
                        "shutdownCommand": "/bin/sh -c 'echo off >> \(dir)/shutdowns'",
                    ], program: copy))
            #expect(await full.wait(timeout: 90) == .exited(1), "\(h.log("full").suffix(3000))")
            let critical = h.log("full").split(separator: "\n").filter { $0.contains("critical") }
            #expect(
                critical.count == 1 && critical.first?.contains("cannot go on here") == true, "\(critical)")
            #expect(LocalFile.readText(dir + "/shutdowns") == "off\n")
            #expect(try await Self.records(h).isEmpty, "an input was given up for the machine's trouble")
            #expect(try await h.queueDepth() == 6)
            #expect(try await h.releaseNotes().count >= 3)

            let roomy = try h.startWorker(
                name: "roomy", parameters: h.parameters(["numThreads": "2", "maxAttempts": "1"], program: copy))
            #expect(await roomy.wait(timeout: 120) == .exited(0), "\(h.log("roomy").suffix(3000))")
            #expect(try await h.outputKeys() == keys.map { $0 + ".out" }.sorted())
            #expect(try await Self.records(h).isEmpty)
        }
    }

    /// A command that fills the disk itself fails its own task: once its task folder is gone the disk has room again,
    /// so it is not this machine's trouble (a runaway or hostile command must not make worker after worker leave).
    @Test(.enabled(if: getuid() == 0, "mounting a small tmpfs needs root"))
    func aCommandThatFillsTheDiskFailsItsOwnTask() async throws {
        try await withTemporaryDirectory { dir in
            let disk = try await mountSmallDisk(in: dir)
            defer { unmountSmallDisk(disk) }
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("x.txt", "x")
            try await h.send(["x.txt"])
            let filler = h.script("fill.sh", "head -c 8388608 /dev/zero > \"$1.fill\" || exit 1\necho never\n")
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["numThreads": "1", "maxAttempts": "1", "workDir": disk + "/work"], program: filler))
            #expect(await worker.wait(timeout: 90) == .exited(0), "\(h.log("w").suffix(3000))")
            #expect(!h.log("w").contains("critical"), "\(h.log("w").suffix(3000))")
            let records = try await Self.records(h)
            #expect(records["x.txt"]?.contains("it filled it") == true, "\(records)")
        }
    }

    /// IMDS answers 500 to the first user-data reads, as it may early in a boot: the daemon asks again and starts
    /// with its parameters, instead of taking the error for "no user-data".
    @Test func aFlakyMetadataReadIsTriedAgain() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("x.txt", "x")
            try await h.send(["x.txt"])
            let userData =
                "#cloud-config\nparallelizer:\n"
                + h.parameters(["numThreads": "1"], program: h.script("up.sh", WorkerEndToEndTests.upper))
                .split(separator: "\n").map { line -> String in
                    let parts = line.split(separator: "=", maxSplits: 1)
                    return "  \(parts[0]): '\(parts[1])'"
                }.joined(separator: "\n") + "\n"
            let imds = try await IMDSStandIn.start(directory: dir, userData: userData, instanceID: "i-0flaky")
            defer { Task { await imds.stop() } }
            try await imds.configure(#"{"failUserData": 2}"#)
            let worker = try h.startWorker(name: "w", parameters: nil, imds: imds.endpoint)
            #expect(await worker.wait(timeout: 90) == .exited(0), "\(h.log("w").suffix(3000))")
            #expect(
                h.log("w").contains("IMDS did not give the user-data yet; trying again"), "\(h.log("w").suffix(3000))")
            #expect(try await h.outputKeys() == ["x.txt.out"])
        }
    }

    /// Parameters that cannot be resolved on an EC2 instance (exit 2) still power it off after the pause, as every
    /// dead end does: systemd does not restart status 2, and the instance would bill forever.
    @Test func badParametersOnAnInstancePowerItOff() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let imds = try await IMDSStandIn.start(
                directory: dir,
                userData:
                    "#cloud-config\nparallelizer:\n  inputBucket: x\n  deadEndPause: 1\n  shutdownCommand: /bin/sh -c 'echo off >> \(dir)/shutdowns'\n",
                instanceID: "i-0badparams")
            defer { Task { await imds.stop() } }
            let worker = try h.startWorker(name: "w", parameters: nil, imds: imds.endpoint)
            #expect(await worker.wait(timeout: 60) == .exited(2), "\(h.log("w").suffix(3000))")
            #expect(h.log("w").contains("bad parameter 'queueURL'"), "\(h.log("w").suffix(3000))")
            #expect(h.log("w").contains("powering off in 1 s"), "\(h.log("w").suffix(3000))")
            #expect(LocalFile.readText(dir + "/shutdowns") == "off\n")
        }
    }
}

extension S3FaultTests {
    /// SQS answers `OverLimit` (a standard queue's 120,000 messages in flight, which passes as other workers
    /// finish) to the first four receives: a wait, not a dead end. The worker goes on and drains all five.
    @Test func overLimitOnAReceiveIsAWaitNotADeadEnd() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await DeadEndTests.harness(dir, inputs: 5)
            try await TestEnvironment.setFaultRules(
                #"[{"service":"sqs","operation":"ReceiveMessage","error":{"code":"OverLimit","status":403},"times":4}]"#
            )
            let outcome: ProcessOutcome?
            do {
                let worker = try h.startWorker(
                    name: "w",
                    parameters: h.parameters(
                        ["shouldShutdown": "true", "shutdownCommand": "/bin/sh -c 'echo off >> \(dir)/shutdowns'"],
                        program: h.script("up.sh", WorkerEndToEndTests.upper)),
                    environment: try TestEnvironment.routeThroughFaultProxy())
                outcome = await worker.wait(timeout: 120)
                if outcome == nil { worker.signal(SIGKILL) }
            } catch {
                try? await TestEnvironment.setFaultRules("[]")
                throw error
            }
            let fired = try await TestEnvironment.faultsFired()
            try await TestEnvironment.setFaultRules("[]")
            let log = h.log("w")
            #expect(outcome == .exited(0), "\(log.suffix(3000))")
            #expect(fired >= 4, "the limit was never met")
            #expect(!log.contains("critical"), "\(log.suffix(3000))")
            #expect(log.contains("OverLimit"), "\(log.suffix(3000))")
            #expect(try await h.outputKeys().count == 5)
            #expect(try await h.queueDepth() == 0)
        }
    }
}
