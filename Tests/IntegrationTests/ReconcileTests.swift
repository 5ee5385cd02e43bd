import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport

/// `parallelizer reconcile` on a run where a message was lost by hand: every input gets its state from the traces
/// the fleet left (outputs, failure records, the dead-letter queue, the queue), and `--enqueue-missing` sends exactly
/// the lost one, which a worker then does.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct ReconcileTests {
    static func lines(_ stdout: String) -> [String: String] {
        var states: [String: String] = [:]
        for line in stdout.split(separator: "\n") {
            let fields = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            if fields.count >= 2 { states[fields[1]] = fields[0] + (fields.count > 2 ? ": " + fields[2] : "") }
        }
        return states
    }

    @Test func everyInputGetsItsStateAndOnlyTheLostOneIsSentAgain() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let keys = (0..<8).map { "in/k\($0).txt" }
            for key in keys {
                try await h.upload(key, key.hasSuffix("k6.txt") || key.hasSuffix("k7.txt") ? "bad" : "ok")
            }
            let program = h.script(
                "task.sh",
                "if grep -q bad \"$1\"; then echo 'bad input' >&2; exit 3; fi\ncp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let parameters = h.parameters(["maxAttempts": "1", "numThreads": "1"], program: program)
            // k5's message is lost: never sent (as if deleted by hand).
            try await h.send(keys.filter { !$0.hasSuffix("k5.txt") })
            let worker = try h.startWorker(name: "w", parameters: parameters)
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.logTails(["w"]))")

            // The queue gets a dead-letter queue, which holds k6's message (k7's was purged from it).
            let dlq = try await h.sqs.createQueue(name: uniqueName("pzw-dlq"), logger: quietLogger)
            let arn = try await h.sqs.getQueueAttributes(queueURL: dlq, names: ["QueueArn"], logger: quietLogger)[
                "QueueArn"]
            _ = try await Scripts.awsCLI(
                [
                    "sqs", "set-queue-attributes", "--queue-url", h.queueURL, "--attributes",
                    JSONValue.object([
                        "RedrivePolicy": .string(#"{"deadLetterTargetArn":"\#(arn ?? "")","maxReceiveCount":"10"}"#)
                    ]).serialized,
                ], directory: dir)
            _ = try await h.sqs.sendMessage(queueURL: dlq, body: "in/k6.txt", logger: quietLogger)

            let common = [
                "reconcile", "--queue-url", h.queueURL, "--inputs", "s3://\(h.inputBucket)/in/", "--results",
                "s3://\(h.outputBucket)/", "--output-name", "{name}.out",
            ]
            let (first, stdout) = try await h.command("reconcile-1", common)
            #expect(first == .exited(0), "\(h.log("reconcile-1"))")
            let states = Self.lines(stdout)
            #expect(states.count == 8, "\(stdout)")
            for i in 0..<5 { #expect(states["in/k\(i).txt"] == "done", "\(stdout)") }
            #expect(states["in/k5.txt"] == "missing")
            #expect(states["in/k6.txt"]?.hasPrefix("dead-lettered: the command failed") == true, "\(stdout)")
            #expect(states["in/k7.txt"]?.hasPrefix("failed: the command failed") == true, "\(stdout)")
            #expect(
                h.log("reconcile-1").contains("done 5, failed 1, dead-lettered 1, queued 0, unsettled 0, missing 1"))
            // Reading the dead-letter queue hid nothing for long: its message is visible again.
            #expect(try await h.sqs.messageCounts(queueURL: dlq, logger: quietLogger).visible == 1)

            let (sent, _) = try await h.command("reconcile-2", common + ["--enqueue-missing"])
            #expect(sent == .exited(0), "\(h.log("reconcile-2"))")
            #expect(h.log("reconcile-2").contains("sent again 1"))
            #expect(try await h.queueDepth() == 1)

            // While the queue holds a message nobody read, an input with no trace is unsettled, and nothing more is
            // sent.
            let (unsettled, text) = try await h.command("reconcile-3", common)
            #expect(unsettled == .exited(0))
            #expect(Self.lines(text)["in/k5.txt"] == "unsettled", "\(text)")
            let (refused, _) = try await h.command("reconcile-4", common + ["--enqueue-missing"])
            #expect(refused == .exited(2))
            #expect(h.log("reconcile-4").contains("the queue holds 1 messages"))
            // Read, it is queued; the receive is noted as unrun, and the message is visible again.
            let notesBefore = try await h.releaseNotes().count
            let (read, readText) = try await h.command("reconcile-5", common + ["--read-queue"])
            #expect(read == .exited(0))
            #expect(Self.lines(readText)["in/k5.txt"] == "queued", "\(readText)")
            #expect(try await h.releaseNotes().count == notesBefore + 1)
            #expect(try await h.sqs.messageCounts(queueURL: h.queueURL, logger: quietLogger).visible == 1)

            let again = try h.startWorker(name: "w2", parameters: parameters)
            #expect(await again.wait(timeout: 120) == .exited(0), "\(h.logTails(["w2"]))")
            let (_, last) = try await h.command("reconcile-6", common)
            #expect(Self.lines(last)["in/k5.txt"] == "done", "\(last)")
        }
    }
}
