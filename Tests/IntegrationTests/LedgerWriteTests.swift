import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import TaskLedger
import Testing
import TestSupport

/// The ledger's cost, counted at the wire (a proxy in front of moto, `CountingProxy`): a task that ends within
/// `startWriteDelay` is written once, whole (DynamoDB bills each item written), and heartbeats asked for at once
/// (a worker turning busy or idle) are at most one per few seconds, not one at each start and end of tiny tasks.
/// Every task still has its item, `done`.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct LedgerWriteTests {
    @Test func aShortTaskIsOneWriteAndHeartbeatsDoNotFollowEachTask() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let proxy = try await CountingProxy.start(directory: dir)
            defer { proxy.stop() }
            let keys = (0..<12).map { "t\($0).txt" }
            for key in keys { try await h.upload(key, key) }
            try await h.send(keys)
            try await proxy.reset()
            let started = ContinuousClock.now
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["ledgerTable": table, "numThreads": "1", "prefetch": "false"],
                    program: h.script("copy.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")),
                environment: ["AWS_ENDPOINT_URL": proxy.endpoint])
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.logTails(["w"]))")
            let seconds = Int((ContinuousClock.now - started) / .seconds(1))
            let counted = try await proxy.counts().operations
            #expect(counted["DynamoDB UpdateItem"] == nil, "a task's end written apart from its start: \(counted)")
            // Twelve task items, and the heartbeats: the first, the last, and one at most every 5 s of the run
            // between (a loaded machine stretches the run, not the rule), never one at each task's start and end.
            let puts = counted["DynamoDB PutItem"] ?? 0
            #expect(puts >= 12 && puts <= 12 + 2 + 1 + seconds / 5, "\(counted) in \(seconds) s")
            let items = try await dynamo.queryAll(
                table: table, keyCondition: "#q = :q AND begins_with(#t, :p)",
                names: ["#q": LedgerSchema.partitionKey, "#t": LedgerSchema.sortKey],
                values: [":q": .s(LedgerSchema.queueName(h.queueURL)), ":p": .s(LedgerSchema.taskPrefix)],
                logger: quietLogger)
            #expect(items.count == 12 && items.allSatisfy { $0[LedgerSchema.Task.state]?.string == "done" })
            #expect(
                items.allSatisfy {
                    $0[LedgerSchema.Task.startedEpoch] != nil && $0[LedgerSchema.Task.endedEpoch] != nil
                })
        }
    }
}
