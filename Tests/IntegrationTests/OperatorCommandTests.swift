import AWSCore
import AWSServices
import FoundationEssentials
import TestSupport
import Testing
import Operators
import Worker

/// `enqueue` and `status` against moto, as operators run them.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct OperatorCommandTests {
    @Test func enqueueListsABucketSkipsDoneWorkAndStatusCounts() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let keys = (0..<25).map { "data/\($0 % 3)/f\($0).txt" }
            for key in keys { try await h.upload(key, "x") }
            try await h.upload("other/not-this.txt", "x")
            // (Prefixes without `/`: moto refuses signatures on listings whose prefix has one; SeaweedFS tests cover it.)
            // Outputs exist for three inputs (named after them) and one failure record: those four are skipped...
            for key in ["data/0/f0.txt", "data/1/f1.txt", "data/2/f2.txt"] {
                try await h.s3.putObject(bucket: h.outputBucket, key: "\(key).result", bytes: [1], logger: quietLogger)
            }
            try await h.s3.putObject(
                bucket: h.outputBucket, key: "_failed/data/0/f3.txt.json", bytes: [1], logger: quietLogger)
            let (outcome, stdout) = try await h.command(
                "enqueue",
                [
                    "enqueue", "--queue-url", h.queueURL, "s3://\(h.inputBucket)/data", "--skip-done",
                    "s3://\(h.outputBucket)/",
                ])
            #expect(outcome == .exited(0), "\(h.log("enqueue"))")
            // ...except that a failure record is not an output: f3 goes again.
            #expect(stdout.hasPrefix("sent 22, skipped 3, failed 0 in "))
            #expect(stdout.contains("messages/s"))
            #expect(try await h.queueDepth() == 22)

            let (statusOutcome, json) = try await h.command(
                "status",
                [
                    "status", "--queue-url", h.queueURL, "--output", "s3://\(h.outputBucket)/", "--json",
                ])
            #expect(statusOutcome == .exited(0), "\(h.log("status"))")
            let status = try JSONValue.parse(json)
            #expect(status["visible"]?.intValue == 22)
            #expect(status["inFlight"]?.intValue == 0)
            #expect(status["outputs"]?.intValue == 3)
            #expect(status["failureRecords"]?.intValue == 1)
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
            #expect(received.allSatisfy { keys.contains($0.body) })
            let (_, text) = try await h.command("status", ["status", "--queue-url", h.queueURL])
            #expect(text.contains("dead letter 2"))
            #expect(text.contains("visible     230") || text.contains("in flight   10"))
        }
    }

    @Test func doneDetectionMatchesOutputsNamedAfterInputs() {
        let done = Enqueuer.done(
            inputs: ["a/x.txt", "a/x", "b/y.txt", "c/z.txt"],
            outputs: ["p/a/x.txt.out", "p/b/y.txt", "p/_failed/c/z.txt.json"], outputPrefix: "p/")
        #expect(done == ["a/x.txt", "a/x", "b/y.txt"])
    }
}

/// The command line reaches the subcommands even when a preloaded library moved `environ` before Swift read `argv`
/// (libfaketime here; some security agents preload libraries the same way).
@Suite(.enabled(if: TestEnvironment.isCI || TestEnvironment.environment.nonEmpty("PZ_TEST_FAKETIME_LIB") != nil))
struct CommandLineTests {
    @Test func argumentsSurviveAPreloadedLibraryThatCallsSetenv() async throws {
        try await withTemporaryDirectory { dir in
            let environment = [
                "LD_PRELOAD": try TestEnvironment.value("PZ_TEST_FAKETIME_LIB"), "FAKETIME": "+0",
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
}
