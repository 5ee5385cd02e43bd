import AWSCore
import AWSServices
import FoundationEssentials
import Operators
import TestSupport
import Testing

@testable import Worker

/// `failures` and `redrive` against moto, run as an operator runs them.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct FailuresAndRedriveTests {
    /// Records as the daemon writes them (`FailureRecords`), then `failures` groups them and shows one.
    @Test func failuresGroupsTheRecordsByReasonAndShowsOne() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            func record(_ input: String, _ reason: String, stderr: String = "", attempts: Int = 2) async throws {
                let failure = TaskFailure(
                    input: S3URI(bucket: h.inputBucket, key: input), reason: reason, outcome: .exited(3),
                    stderrTail: stderr, seconds: 1.5)
                try await h.s3.putObject(
                    bucket: h.outputBucket, key: FailureRecords.key(forInput: input),
                    bytes: FailureRecords.body(
                        failure, message: received("m-\(input)", input, count: attempts), instanceID: "i-1",
                        time: Date()),
                    logger: quietLogger)
            }
            for n in 0..<5 {
                try await record("in/a\(n).txt", "the command failed (exit 3)", stderr: "line one\nboom \(n)")
            }
            // One cause, two request ids: one group.
            for (n, id) in ["ABC", "DEF"].enumerated() {
                try await record("in/d\(n).txt", "download failed: s3: AccessDenied (HTTP 403): denied [request \(id)]")
            }
            try await h.s3.putObject(
                bucket: h.outputBucket, key: FailureRecords.key(forBadMessage: "m-bad"),
                bytes: FailureRecords.body(badMessage: received("m-bad", "{"), reason: "not JSON", instanceID: "i-1"),
                logger: quietLogger)

            let (listed, text) = try await h.command(
                "failures", ["failures", "--results", "s3://\(h.outputBucket)/out/"])
            #expect(listed == .exited(0), "\(h.log("failures"))")
            #expect(text.hasPrefix("8 failure records\n"), "\(text)")
            #expect(text.contains("5 × the command failed (exit 3)\n    s3://\(h.inputBucket)/in/a0.txt"), "\(text)")
            #expect(text.contains("2 × download failed: s3: AccessDenied (HTTP 403): denied\n"), "\(text)")
            #expect(text.contains("1 × not JSON"), "\(text)")
            let (_, json) = try await h.command(
                "failures-json", ["failures", "--results", "s3://\(h.outputBucket)/", "--format", "json"])
            let report = try JSONValue.parse(json)
            #expect(report["groups"]?.arrayValue?.first?["count"]?.intValue == 5, "\(json)")
            #expect(report["listed"]?.intValue == 8)

            let (shown, one) = try await h.command(
                "failures-show", ["failures", "show", "in/a3.txt", "--results", "s3://\(h.outputBucket)/"])
            #expect(shown == .exited(0), "\(h.log("failures-show"))")
            for line in [
                "input       s3://\(h.inputBucket)/in/a3.txt", "reason      the command failed (exit 3)",
                "exit        exit 3", "attempts    2", "stderr (its end):\n  line one\n  boom 3",
            ] {
                #expect(one.contains(line), "\(one)")
            }
            // As the list prints it, s3://bucket/key, it is found too.
            let (pasted, again) = try await h.command(
                "failures-pasted",
                ["failures", "show", "s3://\(h.inputBucket)/in/a3.txt", "--results", "s3://\(h.outputBucket)/"])
            #expect(pasted == .exited(0) && again == one, "\(h.log("failures-pasted"))")
            let (missing, _) = try await h.command(
                "failures-missing", ["failures", "show", "in/none.txt", "--results", "s3://\(h.outputBucket)/"])
            #expect(missing != .exited(0))
            #expect(
                h.log("failures-missing").contains("no failure record s3://\(h.outputBucket)/_failed/in/none.txt.json"))
        }
    }

    /// moto has no move task (StartMessageMoveTask answers 500), so `redrive` moves message by message: part of
    /// them with --max (as a run cut off midway leaves it), then the rest. Every body arrives once in the queue, and
    /// the dead-letter queue ends empty.
    @Test func redriveMovesTheDeadLettersBackAndLosesNoneWhenCutShort() async throws {
        try await withTemporaryDirectory { dir in
            let (h, dlq) = try await WorkerHarness.makeWithDeadLetterQueue(directory: dir, maxReceiveCount: 3)
            let sqs = h.sqs
            let bodies = (0..<23).map { #"{"bucket":"b","key":"dead/\#($0).txt"}"# }
            for body in bodies { _ = try await sqs.sendMessage(queueURL: dlq, body: body, logger: quietLogger) }

            let (first, firstOut) = try await h.command(
                "redrive-5", ["redrive", "--queue-url", h.queueURL, "--max", "5"])
            #expect(first == .exited(0), "\(h.log("redrive-5"))")
            #expect(firstOut.contains("moved 5, failed 0, left 18 (receive, send, delete)"), "\(firstOut)")
            #expect(try await h.queueDepth() == 5)

            // Three of them hidden, as a redrive cut short leaves them: the rest move, and the three are reported.
            let hidden = try await sqs.receiveMessages(
                queueURL: dlq, maxMessages: 3, waitSeconds: 1, visibilityTimeout: 600, logger: quietLogger)
            #expect(hidden.count == 3)
            let (cut, cutOut) = try await h.command("redrive-cut", ["redrive", "--queue-url", h.queueURL])
            #expect(cut == .exited(1), "\(h.log("redrive-cut"))")
            #expect(cutOut.contains("moved 15, failed 0, left 3 (receive, send, delete)"), "\(cutOut)")
            #expect(h.log("redrive-cut").contains("3 messages are still in the dead-letter queue"))
            for message in hidden {
                try await sqs.changeMessageVisibility(
                    queueURL: dlq, receiptHandle: message.receiptHandle, timeout: 0, logger: quietLogger)
            }
            let (rest, restOut) = try await h.command("redrive", ["redrive", "--queue-url", h.queueURL])
            #expect(rest == .exited(0), "\(h.log("redrive"))")
            #expect(restOut.contains("moved 3, failed 0, left 0 (receive, send, delete)"), "\(restOut)")
            #expect(h.log("redrive").contains("SQS's move task is not available here"))

            var arrived: [String] = []
            while true {
                let batch = try await sqs.receiveMessages(
                    queueURL: h.queueURL, maxMessages: 10, waitSeconds: 1, visibilityTimeout: 300, logger: quietLogger)
                if batch.isEmpty { break }
                arrived += batch.map(\.body)
            }
            #expect(arrived.sorted() == bodies.sorted())
            let left = try await sqs.messageCounts(queueURL: dlq, logger: quietLogger)
            #expect(left.total == 0)
            // A dead-letter queue that serves two queues is not moved by hand: the other's would come here.
            let policy = try await sqs.getQueueAttributes(
                queueURL: h.queueURL, names: ["RedrivePolicy"], logger: quietLogger)["RedrivePolicy"]!
            _ = try await WorkerHarness.make(directory: dir, queueAttributes: ["RedrivePolicy": policy])
            _ = try await sqs.sendMessage(queueURL: dlq, body: "theirs", logger: quietLogger)
            let (shared, _) = try await h.command(
                "redrive-shared", ["redrive", "--queue-url", h.queueURL, "--max", "1"])
            #expect(shared != .exited(0))
            #expect(
                h.log("redrive-shared").contains("takes the dead letters of 2 queues"), "\(h.log("redrive-shared"))")
            // A queue without a dead-letter queue says so.
            let plain = try await WorkerHarness.make(directory: dir)
            let (none, _) = try await plain.command("redrive-none", ["redrive", "--queue-url", plain.queueURL])
            #expect(none != .exited(0))
            #expect(plain.log("redrive-none").contains("the queue has no dead-letter queue"))
        }
    }
}
