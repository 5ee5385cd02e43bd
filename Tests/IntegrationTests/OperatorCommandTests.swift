import AWSCore
import AWSServices
import FoundationEssentials
import TestSupport
import Testing
import Operators
import TaskLedger
import Worker

/// `enqueue` and `status` against moto, as operators run them.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct OperatorCommandTests {
    /// S3 on SeaweedFS, SQS on moto: `--skip-done` lists from a `start-after` key with the input's folders in it,
    /// checked by a strict signature checker.
    @Test func enqueueListsABucketSkipsDoneWorkAndStatusCounts() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir, s3: .seaweed)
            let keys = (0..<25).map { "data/\($0 % 3)/f\($0).txt" }
            for key in keys { try await h.upload(key, "x") }
            try await h.upload("other/not-this.txt", "x")
            // The exact outputs of three inputs (what the command names `{name}.result`, in the input's folder under
            // the output prefix `res-`): those three are skipped...
            for key in ["data/0/f0.txt", "data/1/f1.txt", "data/2/f2.txt"] {
                try await h.s3.putObject(
                    bucket: h.outputBucket, key: "res-\(key).result", bytes: [1], logger: quietLogger)
            }
            // ...and nothing else counts: an object that only starts like f4's output (a prefix match took f4 as
            // done), one named like f5's but in another folder, and a failure record.
            try await h.s3.putObject(
                bucket: h.outputBucket, key: "res-data/1/f4.txt.result.old", bytes: [1], logger: quietLogger)
            try await h.s3.putObject(bucket: h.outputBucket, key: "res-f5.txt.result", bytes: [1], logger: quietLogger)
            try await h.s3.putObject(
                bucket: h.outputBucket, key: "_failed/data/0/f3.txt.json", bytes: [1], logger: quietLogger)
            let (outcome, stdout) = try await h.command(
                "enqueue",
                [
                    "enqueue", "--queue-url", h.queueURL, "s3://\(h.inputBucket)/data", "--skip-done",
                    "s3://\(h.outputBucket)/res-", "--output-name", "{name}.result",
                ])
            #expect(outcome == .exited(0), "\(h.log("enqueue"))")
            #expect(stdout.hasPrefix("sent 22, skipped 3, failed 0 in "), "\(stdout)")
            #expect(stdout.contains("messages/s"))
            #expect(try await h.queueDepth() == 22)
            // JSON bodies, naming the bucket and the exact key.
            let received = try await h.sqs.receiveMessages(
                queueURL: h.queueURL, maxMessages: 10, waitSeconds: 1, visibilityTimeout: 0, logger: quietLogger)
            for message in received {
                let body = try JSONValue.parse(message.body)
                #expect(body["bucket"]?.stringValue == h.inputBucket)
                #expect(keys.contains(body["key"]?.stringValue ?? ""), "\(message.body)")
            }
            #expect(!received.isEmpty)

            // The failure record sits at the bucket's top, where the daemon writes it, whatever the output prefix.
            // (The second run uses the old names, --output and --json, which still work.)
            for (output, flags) in [
                ("s3://\(h.outputBucket)/res-", ["--results", "--count", "--format", "json"]),
                ("s3://\(h.outputBucket)/", ["--output", "--count", "--json"]),
            ] {
                let (statusOutcome, json) = try await h.command(
                    "status", ["status", "--queue-url", h.queueURL, flags[0], output] + flags.dropFirst())
                #expect(statusOutcome == .exited(0), "\(h.log("status"))")
                let status = try JSONValue.parse(json)
                #expect(status["visible"]?.intValue == 22)
                #expect(status["inFlight"]?.intValue == 0)
                #expect(status["outputs"]?.intValue == 5, "\(output)")
                #expect(status["failureRecords"]?.intValue == 1, "\(output)")
                // The run's manifest: 22 sent, 3 found done, so 3 of 25 are settled.
                #expect(status["run"]?["sent"]?.intValue == 22)
                #expect(status["run"]?["skipped"]?.intValue == 3)
                #expect(status["progress"]?["total"]?.intValue == 25)
                #expect(status["progress"]?["settled"]?.intValue == 3)
            }
            // --check fails on the failure record, with status 3 and the reason.
            let (checked, _) = try await h.command(
                "status-check",
                ["status", "--queue-url", h.queueURL, "--results", "s3://\(h.outputBucket)/", "--check"])
            #expect(checked == .exited(3))
            #expect(h.log("status-check").contains("check failed: failure records under _failed/"))
        }
    }

    /// An interrupted `enqueue --resume` goes on after its checkpoint, from a listing or a file, and a run that
    /// ends writes where it ended; a checkpoint of another source is refused.
    @Test func enqueueResumesFromItsCheckpoint() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let keys = (0..<30).map { "part-\($0 < 10 ? "0" : "")\($0).txt" }
            for key in keys { try await h.upload(key, "x") }
            let checkpoint = dir + "/checkpoint"
            // As if a run had sent everything up to part-11 before it was stopped.
            #expect(
                EnqueueCheckpoint(source: "s3://\(h.inputBucket)/part", lastKey: "part-11.txt", lines: 0, sent: 12)
                    .write(checkpoint))
            let (outcome, stdout) = try await h.command(
                "enqueue",
                ["enqueue", "--queue-url", h.queueURL, "s3://\(h.inputBucket)/part", "--resume", checkpoint])
            #expect(outcome == .exited(0), "\(h.log("enqueue"))")
            #expect(stdout.contains("resuming after 'part-11.txt'"))
            #expect(stdout.contains("sent 18, skipped 0, failed 0"), "\(stdout)")
            #expect(try await h.queueDepth() == 18)
            #expect(EnqueueCheckpoint.read(checkpoint)?.lastKey == "part-29.txt")
            #expect(EnqueueCheckpoint.read(checkpoint)?.sent == 30)

            // From a file: lines, not keys (a file need not be sorted).
            let file = dir + "/keys.txt"
            LocalFile.write(file, Array((keys.reversed().joined(separator: "\n") + "\n").utf8))
            #expect(EnqueueCheckpoint(source: file, lastKey: "part-20.txt", lines: 9, sent: 9).write(checkpoint))
            let (fileOutcome, fileStdout) = try await h.command(
                "enqueue-file",
                ["enqueue", "--queue-url", h.queueURL, "--from-file", file, "--resume", checkpoint])
            #expect(fileOutcome == .exited(0), "\(h.log("enqueue-file"))")
            #expect(fileStdout.contains("resuming after line 9"))
            #expect(fileStdout.contains("sent 21, skipped 0, failed 0"), "\(fileStdout)")
            #expect(EnqueueCheckpoint.read(checkpoint)?.lines == 30)

            // A checkpoint that cannot be written is found before anything is sent.
            let (unwritable, _) = try await h.command(
                "enqueue-nowhere",
                [
                    "enqueue", "--queue-url", h.queueURL, "s3://\(h.inputBucket)/part", "--resume",
                    dir + "/no-such-folder/checkpoint",
                ])
            #expect(unwritable != .exited(0))
            #expect(h.log("enqueue-nowhere").contains("cannot write the checkpoint"))
            #expect(try await h.queueDepth() == 18 + 21)

            // Another source's checkpoint is refused, and nothing is sent.
            let (refused, _) = try await h.command(
                "enqueue-other",
                ["enqueue", "--queue-url", h.queueURL, "s3://\(h.inputBucket)/other", "--resume", checkpoint])
            #expect(refused != .exited(0))
            #expect(h.log("enqueue-other").contains("checkpoint of another run"))
            #expect(try await h.queueDepth() == 18 + 21)
        }
    }

    /// `--done-in-ledger`: inputs with a `done` attempt in the ledger are skipped; `failed`, `running` and other
    /// queues' attempts are not signs of done.
    @Test func enqueueSkipsWhatTheLedgerRecordsDone() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let queueName = LedgerSchema.queueName(h.queueURL)
            func attempt(_ queue: String, _ key: String, _ number: Int, _ state: String) async throws {
                try await dynamo.putItem(
                    table: table,
                    item: [
                        "queue": .s(queue), "task": .s(LedgerSchema.taskSortKey(inputKey: key, attempt: number)),
                        "kind": .s("task"), "inputKey": .s(key), "state": .s(state),
                    ], logger: quietLogger)
            }
            let keys = ["k-a", "k-b", "k-c", "k-d", "k-e"]
            LocalFile.write(dir + "/keys", Array(keys.joined(separator: "\n").utf8))
            try await attempt(queueName, "k-a", 1, "failed")
            try await attempt(queueName, "k-a", 2, "done")
            try await attempt(queueName, "k-b", 1, "running")
            try await attempt(queueName, "k-c", 1, "failed")
            try await attempt("another-queue", "k-d", 1, "done")
            let (outcome, stdout) = try await h.command(
                "enqueue",
                ["enqueue", "--queue-url", h.queueURL, "--from-file", dir + "/keys", "--done-in-ledger", table])
            #expect(outcome == .exited(0), "\(h.log("enqueue"))")
            #expect(stdout.contains("sent 4, skipped 1, failed 0"), "\(stdout)")
        }
    }

    @Test func enqueueFromAFileAndTheDeadLetterCount() async throws {
        try await withTemporaryDirectory { dir in
            let dlqHarness = try await WorkerHarness.make(directory: dir)
            let dlqARN = "arn:aws:sqs:us-east-1:123456789012:" + dlqHarness.queueURL.split(separator: "/").last!
            let h = try await WorkerHarness.make(
                directory: dir,
                queueAttributes: [
                    "RedrivePolicy": #"{"deadLetterTargetArn": "\#(dlqARN)", "maxReceiveCount": "2"}"#
                ])
            try await dlqHarness.send(["dead one", "dead two"])
            let keys = (0..<240).map { "list/item-\($0) with space.txt" }
            LocalFile.write(dir + "/keys.txt", Array((keys.joined(separator: "\n") + "\n\n").utf8))
            let (outcome, stdout) = try await h.command(
                "enqueue",
                [
                    "enqueue", "--queue-url", h.queueURL, "--from-file", dir + "/keys.txt", "--concurrency", "4",
                ])
            #expect(outcome == .exited(0), "\(h.log("enqueue"))")
            #expect(stdout.hasPrefix("sent 240, skipped 0, failed 0"))
            // Not a terminal: plain progress lines, no bar.
            #expect(h.log("enqueue").contains("enqueue progress"))
            #expect(!h.log("enqueue").contains("["))
            let received = try await h.sqs.receiveMessages(
                queueURL: h.queueURL, maxMessages: 10, waitSeconds: 1, logger: quietLogger)
            // Keys from a file are full keys in the daemon's input bucket: JSON bodies without a bucket.
            #expect(received.allSatisfy { (try? JSONValue.parse($0.body))?.objectValue?.keys.sorted() == ["key"] })
            #expect(received.allSatisfy { keys.contains((try? JSONValue.parse($0.body))?["key"]?.stringValue ?? "") })
            let (_, text) = try await h.command("status", ["status", "--queue-url", h.queueURL])
            #expect(text.contains("dead letter 2"))
            #expect(text.contains("visible     230") || text.contains("in flight   10"))
        }
    }

    /// Exact output keys with any character, against SeaweedFS (which lists prefixes and `start-after` values with
    /// `/`, as S3 does): only inputs whose very output exists are done, across several listing pages.
    @Test func doneOutputsAreFoundByTheirExactKeys() async throws {
        let s3 = try S3Client(context: try TestEnvironment.seaweedContext())
        let bucket = uniqueName("done")
        try await s3.createBucket(bucket, logger: quietLogger)
        let inputs = S3SeaweedTests.awkwardKeys.map { "in/" + $0 } + (0..<1200).map { "in/many/\($0).txt" }
        let doneInputs = Set(inputs.enumerated().filter { $0.offset % 3 == 0 }.map(\.element))
        let check = DoneCheck(
            sources: [.outputs(bucket: bucket, outputPrefix: "out/", inputPrefix: "in/", outputName: "{name}.out")],
            s3: s3, dynamo: nil)
        for input in doneInputs {
            let output = DoneCheck.predictedOutput(
                inputKey: input, outputName: "{name}.out", inputPrefix: "in/", outputPrefix: "out/")
            try await s3.putObject(bucket: bucket, key: output, bytes: [1], logger: quietLogger)
        }
        // Near misses of inputs that are not done: a longer name, and the right name in the wrong folder.
        for input in inputs where !doneInputs.contains(input) {
            let output = DoneCheck.predictedOutput(
                inputKey: input, outputName: "{name}.out", inputPrefix: "in/", outputPrefix: "out/")
            try await s3.putObject(bucket: bucket, key: output + ".partial", bytes: [1], logger: quietLogger)
            try await s3.putObject(
                bucket: bucket, key: "out/elsewhere/" + OutputContract.fileName(of: input) + ".out", bytes: [1],
                logger: quietLogger)
            break
        }
        // As enqueue asks: a chunk at a time, in listing order.
        var found = Set<String>()
        let sorted = inputs.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        for start in stride(from: 0, to: sorted.count, by: 1000) {
            found.formUnion(
                try await check.done(Array(sorted[start..<min(start + 1000, sorted.count)]), logger: quietLogger))
        }
        #expect(found == doneInputs)
    }
}

/// The command line reaches the subcommands even when a preloaded library moved `environ` before Swift read `argv`
/// (libfaketime here; some security agents preload libraries the same way).
@Suite(.enabled(if: TestEnvironment.isCI || TestEnvironment.environment.nonEmpty("PZ_TEST_FAKETIME_LIB") != nil))
struct CommandLineTests {
    @Test func argumentsSurviveAPreloadedLibraryThatCallsSetenv() async throws {
        try await withTemporaryDirectory { dir in
            let environment = [
                "LD_PRELOAD": try TestEnvironment.faketimePreload(), "FAKETIME": "+0",
                "PATH": "/usr/bin:/bin", "HOME": dir,
            ]
            let outcome = try await ProcessRunner().run(
                argv: [WorkerHarness.binary, "version"], environment: environment, directory: dir,
                stdoutPath: dir + "/out", stderrPath: dir + "/err", user: nil, timeout: 30)
            #expect(outcome.succeeded)
            let out = LocalFile.readText(dir + "/out") ?? ""
            #expect(out.hasPrefix("parallelizer "), "the subcommand was lost: \(out.prefix(200))")
        }
    }

    /// `status` of a run of 100,000 inputs costs a handful of calls, however many results there are: the total comes
    /// from the run manifest on the queue's tags, and the results bucket is only probed for a failure record. The
    /// calls are counted by a proxy in front of moto; listing the results (`--count`) is what costs more.
    @Test func statusOfAHundredThousandInputRunCostsAHandfulOfCalls() async throws {
        try await withTemporaryDirectory { dir in
            let (h, _) = try await WorkerHarness.makeWithDeadLetterQueue(directory: dir, maxReceiveCount: 13)
            // Some results and one failure record, and a queue with work left.
            for n in 0..<40 {
                try await h.s3.putObject(bucket: h.outputBucket, key: "out/r\(n).txt", bytes: [1], logger: quietLogger)
            }
            try await h.s3.putObject(bucket: h.outputBucket, key: "_failed/x.json", bytes: [1], logger: quietLogger)
            _ = try await h.sqs.sendMessage(queueURL: h.queueURL, body: "k", logger: quietLogger)
            // The manifest enqueue would have written for 100,000 inputs, an hour ago.
            let now = Date().timeIntervalSince1970
            try await h.sqs.write(
                RunManifest(source: "s3://in/big/", started: now - 3600, updated: now, sent: 100_000, skipped: 0),
                queueURL: h.queueURL, logger: quietLogger)

            let proxy = try await CountingProxy.start(directory: dir)
            defer { proxy.stop() }
            let creds = try TestEnvironment.motoCredentials()
            let environment = [
                "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_ACCESS_KEY_ID": creds.accessKeyID,
                "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey, "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/bin:/bin", "HOME": dir,
            ]
            func status(_ name: String, _ extra: [String]) async throws -> (ProcessOutcome?, String) {
                let process = try ProcessRunner().start(
                    argv: [
                        WorkerHarness.binary, "status", "--queue-url", h.queueURL, "--results",
                        "s3://\(h.outputBucket)/out/", "--format", "json",
                    ] + extra,
                    environment: environment, directory: dir, stdoutPath: "\(dir)/\(name).stdout",
                    stderrPath: "\(dir)/\(name).log")
                return (await process.wait(timeout: 120), LocalFile.readText("\(dir)/\(name).stdout") ?? "")
            }
            let (outcome, json) = try await status("status", [])
            #expect(outcome == .exited(0), "\(LocalFile.readText(dir + "/status.log") ?? "")")
            let counted = try await proxy.counts()
            #expect(counted.total < 10, "\(counted.operations)")
            #expect(counted.operations["S3 GET list"] == 1, "one probe for a failure record: \(counted.operations)")
            let s = try JSONValue.parse(json)
            #expect(s["progress"]?["total"]?.intValue == 100_000)
            #expect(s["progress"]?["settled"]?.intValue == 99_999)
            #expect(s["deadLetters"]?.intValue == 0)
            #expect(s["failureRecordsFound"]?.boolValue == true)
            #expect(s["outputs"] == nil, "outputs are counted only when asked")
            // Rate and ETA from the run's average: 99,999 in an hour.
            #expect((s["progress"]?["perSecond"]?.intValue ?? 0) >= 27)

            try await proxy.reset()
            let (countedOutcome, countedJSON) = try await status("status-count", ["--count"])
            #expect(countedOutcome == .exited(0))
            let listed = try await proxy.counts()
            #expect((listed.operations["S3 GET list"] ?? 0) >= 3, "the results are listed: \(listed.operations)")
            #expect(try JSONValue.parse(countedJSON)["outputs"]?.intValue == 40)
        }
    }
}
