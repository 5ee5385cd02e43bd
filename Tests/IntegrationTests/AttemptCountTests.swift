import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import TaskLedger
import Testing
import TestSupport

/// With a ledger, `maxAttempts` counts runs that failed, not receives: two messages were each received once before
/// and given back without a note (their daemon died after the work); the ledger shows one's run done (its delete was
/// lost) and the other's failed. At `maxAttempts=1` the done one runs again and is delivered; the failed one is
/// given up unrun, its record saying so.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct AttemptCountTests {
    @Test func withALedgerOnlyFailedRunsCountAgainstMaxAttempts() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            for key in ["worked.txt", "failed.txt"] { try await h.upload(key, key) }
            try await h.send(["worked.txt", "failed.txt"])
            var received: [SQSMessage] = []
            for _ in 0..<10 where received.count < 2 {
                received += try await h.sqs.receiveMessages(
                    queueURL: h.queueURL, maxMessages: 2, waitSeconds: 1, visibilityTimeout: 30, logger: quietLogger)
            }
            #expect(received.count == 2)
            for message in received {
                try await dynamo.putItem(
                    table: table,
                    item: [
                        LedgerSchema.partitionKey: .s(LedgerSchema.queueName(h.queueURL)),
                        LedgerSchema.sortKey: .s(LedgerSchema.taskSortKey(inputKey: message.body, attempt: 1)),
                        LedgerSchema.kind: .s("task"), LedgerSchema.Task.inputKey: .s(message.body),
                        LedgerSchema.Task.attempt: .number(1), LedgerSchema.Task.messageID: .s(message.messageID),
                        LedgerSchema.Task.state: .s(message.body == "worked.txt" ? "done" : "failed"),
                    ], logger: quietLogger)
                try await h.sqs.changeMessageVisibility(
                    queueURL: h.queueURL, receiptHandle: message.receiptHandle, timeout: 0, logger: quietLogger)
            }
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["maxAttempts": "1", "ledgerTable": table],
                    program: h.script("copy.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")))
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.logTails(["w"]))")
            #expect(try await h.output("worked.txt.out") == "worked.txt", "a run that worked was counted")
            let record = try await h.output("_failed/failed.txt.json")
            #expect(record.contains("ran 1 times in 2 receives"), "\(record)")
            #expect(try await h.queueDepth() == 0)
        }
    }
}
