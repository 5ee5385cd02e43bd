import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport
import Worker

/// Errors no retry can get past end the daemon: one `critical` line that says what to fix, exit status 2 (which
/// systemd does not restart), the shutdown command once when `shouldShutdown` is on, and no input processed twice
/// meanwhile. (docs/failures.md, "When it stops by itself".) Against moto with its signature and IAM checks on.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct DeadEndTests {
    struct Run {
        var outcome: ProcessOutcome?
        var seconds: Double
        var log: String
        /// How many times the shutdown command ran.
        var shutdowns: Int
        /// The inputs the command ran on, one line per run.
        var commandRuns: [String]
    }

    /// A harness with `count` inputs queued (`in/k0.txt`...).
    static func harness(_ dir: String, inputs count: Int) async throws -> WorkerHarness {
        let h = try await WorkerHarness.make(directory: dir)
        let keys = (0..<count).map { "in/k\($0).txt" }
        for key in keys { try await h.upload(key, "content of \(key)") }
        try await h.send(keys)
        return h
    }

    /// Runs one worker (two slots, shutting down when done) until it exits; `during` runs while it works.
    static func run(
        _ h: WorkerHarness, _ extra: [String: String] = [:], environment: [String: String] = [:],
        extraArguments: [String] = [], imds: String? = nil, commandSeconds: Double = 0,
        during: (@Sendable (ChildProcess) async throws -> Void)? = nil
    ) async throws -> Run {
        let dir = h.directory
        let program = h.script(
            "copy.sh",
            """
            echo "$PARALLELIZER_INPUT_KEY" >> "\(dir)/command-runs"
            sleep \(commandSeconds)
            cp "$1" "$1.out"
            echo "$1.out"
            """)
        var values = [
            "numThreads": "2", "shouldShutdown": "true", "visibilityTimeout": "30",
            "shutdownCommand": "/bin/sh -c 'echo off >> \(dir)/shutdowns'",
        ]
        values.merge(extra) { $1 }
        let started = ContinuousClock.now
        let worker = try h.startWorker(
            name: "w", parameters: h.parameters(values, program: program), imds: imds,
            extraArguments: extraArguments, environment: environment)
        if let during { try await during(worker) }
        let outcome = await worker.wait(timeout: 90)
        if outcome == nil { worker.signal(SIGKILL) }
        let seconds = (ContinuousClock.now - started).seconds
        let lines = { (path: String) in
            (LocalFile.readText(path) ?? "").split(separator: "\n").map(String.init)
        }
        return Run(
            outcome: outcome, seconds: seconds, log: h.log("w"), shutdowns: lines(dir + "/shutdowns").count,
            commandRuns: lines(dir + "/command-runs"))
    }

    /// The worker stopped by itself within a minute with status 2 and one critical line saying `says`, ran its
    /// shutdown command once, and ran the command at most once per input.
    static func expectDeadEnd(
        _ run: Run, says: String, within seconds: Double = 60,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let tail = run.log.split(separator: "\n").suffix(30).joined(separator: "\n")
        #expect(run.outcome == .exited(2), "\(tail)", sourceLocation: sourceLocation)
        #expect(run.seconds < seconds, "took \(run.seconds) s", sourceLocation: sourceLocation)
        let critical = run.log.split(separator: "\n").filter { $0.contains("critical") }
        print(
            "dead end after \(run.seconds) s, exit \(run.outcome.map { "\($0)" } ?? "none"): \(critical.first ?? "no critical line")"
        )
        #expect(critical.count == 1, "\(critical)", sourceLocation: sourceLocation)
        #expect(
            critical.first?.contains(says) == true, "no critical line says '\(says)': \(critical)",
            sourceLocation: sourceLocation)
        #expect(critical.first?.contains("fix:") == true, "\(critical)", sourceLocation: sourceLocation)
        #expect(run.shutdowns == 1, "the shutdown command ran \(run.shutdowns) times", sourceLocation: sourceLocation)
        #expect(
            Set(run.commandRuns).count == run.commandRuns.count, "an input was processed twice: \(run.commandRuns)",
            sourceLocation: sourceLocation)
    }

    // MARK: - The queue

    /// Every delete is refused (the role lacks sqs:DeleteMessage): without this end, every input would be run again
    /// each visibility timeout, forever. Nothing is lost: the messages are all still in the queue.
    @Test func aDeniedDeleteEndsTheDaemon() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 6)
            let denied = try await h.credentialsDenying([("sqs:DeleteMessage", "*"), ("sqs:DeleteMessageBatch", "*")])
            let run = try await Self.run(h, environment: denied)
            Self.expectDeadEnd(run, says: "sqs:DeleteMessage is denied on \(h.queueURL)")
            #expect(run.log.contains("3 tasks in a row"), "\(run.log.suffix(1500))")
            #expect(try await h.queueDepth() == 6, "a message was lost")
        }
    }

    /// Only the batch action is refused (moto's view of IAM; on AWS sqs:DeleteMessage covers the batch): the fleet
    /// drains fully through single deletes, and says so once.
    @Test func aDeniedBatchAloneStillDrains() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 12)
            let denied = try await h.credentialsDenying([("sqs:DeleteMessageBatch", "*")])
            let run = try await Self.run(h, ["shouldShutdown": "false"], environment: denied)
            #expect(run.outcome == .exited(0), "\(run.log.suffix(2000))")
            // Exactly the outputs: the start-up write check left no object and no unfinished upload behind.
            #expect(try await h.outputKeys().count == 12)
            #expect(try await h.s3.listMultipartUploads(bucket: h.outputBucket, logger: quietLogger).isEmpty)
            #expect(try await h.queueDepth() == 0)
            #expect(
                run.log.components(separatedBy: "DeleteMessageBatch is refused but DeleteMessage works").count - 1 == 1)
            #expect(!run.log.contains("could not delete"), "\(run.log.suffix(2000))")
        }
    }

    @Test func aDeniedReceiveEndsTheDaemon() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 3)
            let denied = try await h.credentialsDenying([("sqs:ReceiveMessage", "*")])
            let run = try await Self.run(h, environment: denied)
            Self.expectDeadEnd(run, says: "sqs:ReceiveMessage is denied")
            #expect(run.commandRuns.isEmpty)
            #expect(try await h.queueDepth() == 3)
        }
    }

    /// A queue that does not exist is found by the start-up check, before anything else, at once.
    @Test func aMissingQueueStopsStartUpAtOnce() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 0)
            let gone = h.queueURL + "-gone"
            let run = try await Self.run(h, ["queueURL": gone])
            Self.expectDeadEnd(run, says: "the queue \(gone) does not exist", within: 20)
            #expect(run.log.contains("cannot start"))
            print("a missing queue ended start-up after \(run.seconds) s")
        }
    }

    /// The queue is deleted while the worker runs: its receives and deletes meet a queue that is gone.
    @Test func aQueueDeletedMidRunEndsTheDaemon() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 8)
            let run = try await Self.run(h, commandSeconds: 1) { _ in
                await waitUntil { fileExists(dir + "/command-runs") }
                try await h.sqs.deleteQueue(queueURL: h.queueURL, logger: quietLogger)
            }
            Self.expectDeadEnd(run, says: "does not exist")
        }
    }

    // MARK: - The buckets

    @Test func aDeniedInputBucketEndsTheDaemon() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 5)
            let denied = try await h.credentialsDenying([("s3:GetObject", "arn:aws:s3:::\(h.inputBucket)/*")])
            let run = try await Self.run(h, environment: denied)
            Self.expectDeadEnd(run, says: "s3:GetObject is denied on s3://\(h.inputBucket)")
            #expect(run.commandRuns.isEmpty)
            #expect(try await h.queueDepth() == 5)
            #expect(try await h.outputKeys().isEmpty, "a message was given up instead of kept")
        }
    }

    /// A missing input bucket answers 404, as a missing key does; it must not give every message up as "input
    /// missing" (records, deletes): it is the daemon's dead end.
    @Test func aMissingInputBucketEndsTheDaemonWithoutGivingMessagesUp() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 5)
            let gone = "pz-no-such-input-\(UInt32.random(in: 0...UInt32.max))"
            let run = try await Self.run(h, ["inputBucket": gone])
            Self.expectDeadEnd(run, says: "the bucket s3://\(gone) does not exist")
            let tail = run.log.split(separator: "\n").suffix(40).joined(separator: "\n")
            #expect(try await h.queueDepth() == 5, "\(tail)")
            let outputs = try await h.outputKeys()
            #expect(outputs.isEmpty, "a message was given up instead of kept: \(outputs)\n\(tail)")

        }
    }

    enum OutputAtStart: String, CaseIterable, Sendable { case missing, denied }

    /// The start-up check writes to the output bucket (a multipart upload begun and aborted) before taking work.
    @Test(arguments: OutputAtStart.allCases)
    func anUnwritableOutputBucketStopsStartUp(_ variant: OutputAtStart) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 2)
            let run: Run
            switch variant {
            case .missing:
                let gone = "pz-no-such-output-\(UInt32.random(in: 0...UInt32.max))"
                run = try await Self.run(h, ["outputBucket": gone])
                Self.expectDeadEnd(run, says: "the bucket s3://\(gone) does not exist", within: 20)
            case .denied:
                let denied = try await h.credentialsDenying([("s3:PutObject", "arn:aws:s3:::\(h.outputBucket)/*")])
                run = try await Self.run(h, environment: denied)
                Self.expectDeadEnd(run, says: "s3:PutObject is denied on s3://\(h.outputBucket)", within: 20)
            }
            #expect(run.commandRuns.isEmpty)
            #expect(try await h.queueDepth() == 2)
        }
    }

    /// Writes are refused for the outputs themselves (the start-up check's key is allowed): three tasks in a row
    /// cannot upload, and the daemon ends with every message kept.
    @Test func outputsDeniedMidRunEndTheDaemon() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 6)
            let denied = try await h.credentialsDenying([("s3:PutObject", "arn:aws:s3:::\(h.outputBucket)/in/*")])
            // A failed task comes back after its backoff (a second in these tests); a long one keeps the first tasks
            // away while three others fail, however slow the machine.
            let run = try await Self.run(h, environment: denied, extraArguments: ["--retry-backoff-seconds", "60"])
            Self.expectDeadEnd(run, says: "s3:PutObject is denied on s3://\(h.outputBucket)")
            #expect(try await h.queueDepth() == 6)
        }
    }

    @Test func refusedCredentialsStopStartUpAtOnce() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 1)
            let creds = try TestEnvironment.motoCredentials()
            let run = try await Self.run(
                h,
                environment: [
                    "AWS_ACCESS_KEY_ID": creds.accessKeyID,
                    "AWS_SECRET_ACCESS_KEY": "wrong-secret-0123456789",
                ])
            Self.expectDeadEnd(run, says: "AWS refuses the credentials", within: 20)
            #expect(try await h.queueDepth() == 1)
        }
    }

    /// No keys in the environment, no shared files, no IMDS: nothing to sign with.
    @Test func noCredentialsAtAllStopStartUp() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 1)
            let run = try await Self.run(h, environment: ["AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""])
            Self.expectDeadEnd(run, says: "no AWS credentials for sqs:GetQueueAttributes", within: 15)
            #expect(try await h.queueDepth() == 1)
        }
    }

    /// Heartbeats, retries and releases all need sqs:ChangeMessageVisibility; here three failed tasks in a row
    /// cannot be put back with their backoff.
    @Test func aDeniedChangeMessageVisibilityEndsTheDaemon() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 5)
            let denied = try await h.credentialsDenying([("sqs:ChangeMessageVisibility", "*")])
            let run = try await Self.run(h, ["analysisProgram": "/bin/false"], environment: denied)
            Self.expectDeadEnd(run, says: "sqs:ChangeMessageVisibility is denied")
            #expect(try await h.queueDepth() == 5)
        }
    }

    @Test func aMissingEnvironmentArchiveStopsStartUp() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 1)
            let run = try await Self.run(h, ["environmentBucket": h.inputBucket, "environmentZip": "env/missing.zip"])
            Self.expectDeadEnd(
                run, says: "the environment archive s3://\(h.inputBucket)/env/missing.zip does not exist",
                within: 20)
            #expect(try await h.queueDepth() == 1)
            // The log of a run that could not start goes up as well: the instance is about to power off.
            let logKey = try await h.allOutputKeys().first { $0.hasPrefix("_logs/") }
            let key = try #require(logKey, "no log under _logs/")
            #expect(try await h.output(key).contains("cannot start: the environment archive"))
        }
    }

    /// The default shutdown command (`shutdown -h now`) runs only on an EC2 instance: someone trying the daemon on
    /// their own machine with a typo in the queue URL must not see it power off. (A `shutdown` of the test's own is
    /// first on PATH, so that a failure here powers nothing off either.)
    @Test func theDefaultShutdownCommandRunsOnlyOnEC2() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 0)
            _ = h.script("shutdown", "echo \"$@\" >> \"\(dir)/default-shutdowns\"\n")
            let parameters = h.parameters(
                ["queueURL": h.queueURL + "-gone", "shouldShutdown": "true"], program: "/bin/true")
            let worker = try h.startWorker(
                name: "w", parameters: parameters, environment: ["PATH": "\(dir):/usr/bin:/bin"])
            #expect(await worker.wait(timeout: 60) == .exited(2))
            #expect(!fileExists(dir + "/default-shutdowns"), "the default shutdown command ran off EC2")
            #expect(h.log("w").contains("not on an EC2 instance"), "\(h.log("w").suffix(1500))")
        }
    }

    /// In an Auto Scaling group, a worker that cannot leave the group at a dead end stays up: powered off, it would
    /// be replaced by one that meets the same end, again and again. (The group here does not exist, so leaving fails.)
    @Test func aDeadEndInAGroupThatCannotBeLeftDoesNotPowerOff() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 0)
            let imds = try await IMDSStandIn.start(directory: dir, userData: nil, instanceID: "i-0deadend")
            defer { Task { await imds.stop() } }
            let run = try await Self.run(
                h, ["queueURL": h.queueURL + "-gone", "autoScalingGroup": "pz-no-such-group"],
                imds: imds.endpoint)
            #expect(run.outcome == .exited(2))
            #expect(run.shutdowns == 0, "powered off: the group would start a replacement")
            #expect(run.log.contains("staying up instead of powering off"), "\(run.log.suffix(1500))")
        }
    }

    /// With `shouldShutdown=false` a dead end still exits 2, and powers nothing off.
    @Test func withoutShouldShutdownNothingIsPoweredOff() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await Self.harness(dir, inputs: 0)
            let run = try await Self.run(h, ["queueURL": h.queueURL + "-gone", "shouldShutdown": "false"])
            #expect(run.outcome == .exited(2))
            #expect(run.shutdowns == 0)
        }
    }
}

extension S3FaultTests {
    /// Receives that keep failing with an error that may pass (here a 500 from every ReceiveMessage) are not tried
    /// forever: after `--receive-outage-seconds` (10 minutes by default) the daemon exits with status 1, for systemd
    /// to start it again, and powers nothing off.
    @Test func receivesFailingForTooLongEndTheDaemonForARestart() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await DeadEndTests.harness(dir, inputs: 1)
            try await TestEnvironment.setFaultRules(
                #"[{"service":"sqs","operation":"ReceiveMessage","error":{"code":"InternalError","status":500}}]"#)
            let parameters = h.parameters(
                ["shouldShutdown": "true", "shutdownCommand": "/bin/sh -c 'echo off >> \(dir)/shutdowns'"],
                program: "/bin/true")
            let outcome: ProcessOutcome?
            do {
                let worker = try h.startWorker(
                    name: "w", parameters: parameters, extraArguments: ["--receive-outage-seconds", "5"],
                    environment: try TestEnvironment.routeThroughFaultProxy())
                outcome = await worker.wait(timeout: 60)
                if outcome == nil { worker.signal(SIGKILL) }
            } catch {
                try? await TestEnvironment.setFaultRules("[]")
                throw error
            }
            // Cleared before the next test of this serialized suite sets its own.
            try await TestEnvironment.setFaultRules("[]")
            let log = h.log("w")
            let critical = log.split(separator: "\n").filter { $0.contains("critical") }
            // (It ended by itself within the wait above; that it was the outage that ended it, the line says: no
            // bet on how fast a loaded machine gets there.)
            #expect(outcome == .exited(1), "\(log.suffix(2000))")
            #expect(
                critical.count == 1 && critical.first?.contains("has not answered a receive for 5 s") == true,
                "\(critical)")
            #expect(!fileExists(dir + "/shutdowns"), "an outage that may pass powered the instance off")
            #expect(try await h.queueDepth() == 1)
        }
    }
}
