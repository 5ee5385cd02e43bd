import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport

/// The failure budget (`failureBudget`): a worker whose machine is broken (here: its command cannot load a shared
/// library, as with a broken driver) fails every task, and by each error alone it looks like failing inputs. With a
/// ledger that shows another worker succeeding, it leaves after its budget, and the runs it failed spend no
/// attempt; with no one succeeding, the inputs' failures are theirs, and it goes on.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct FailureBudgetTests {
    static let broken = """
        echo "error while loading shared libraries: libcuda.so.1: cannot open shared object file" >&2
        exit 127
        """

    @Test func aBrokenNodeLeavesWhileOthersSucceedAndItsFailedRunsSpendNoAttempt() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let table = try await makeLedgerTable().1
            let good = h.script("good.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let bad = h.script("bad.sh", Self.broken)
            let common = [
                "numThreads": "1", "prefetch": "false", "ledgerTable": table, "failureBudget": "3",
                "maxAttempts": "2",
            ]
            // A healthy worker does the first inputs: the ledger shows it completing tasks.
            let healthyIMDS = try await IMDSStandIn.start(directory: dir, userData: nil, instanceID: "i-0healthy")
            defer { Task { await healthyIMDS.stop() } }
            for i in 0..<3 { try await h.upload("first-\(i).txt", "x") }
            try await h.send((0..<3).map { "first-\($0).txt" })
            let healthy = try h.startWorker(
                name: "healthy", parameters: h.parameters(common, program: good), imds: healthyIMDS.endpoint,
                extraArguments: ["--ledger-heartbeat-seconds", "1"])
            #expect(await healthy.wait(timeout: 120) == .exited(0), "\(h.logTails(["healthy"]))")

            // The broken machine takes the next ones.
            let brokenIMDS = try await IMDSStandIn.start(directory: dir, userData: nil, instanceID: "i-0broken")
            defer { Task { await brokenIMDS.stop() } }
            for i in 0..<6 { try await h.upload("next-\(i).txt", "x") }
            try await h.send((0..<6).map { "next-\($0).txt" })
            let broken = try h.startWorker(
                name: "broken", parameters: h.parameters(common, program: bad), imds: brokenIMDS.endpoint,
                extraArguments: ["--ledger-heartbeat-seconds", "1"])
            #expect(await broken.wait(timeout: 120) == .exited(1), "\(h.logTails(["broken"]))")
            let log = h.log("broken")
            #expect(
                log.contains(
                    "cannot go on here: the last 3 tasks failed on this machine while 1 other workers completed 3 tasks (i-0healthy)"
                ), "\(log.suffix(3000))")
            #expect(log.contains("libcuda.so.1"), "the last failure is named")
            // Each of its three failed runs is noted as unrun: no attempt spent.
            let notes = try await h.releaseNotes()
            #expect(Set(notes.filter { $0.hasSuffix("/1") }.map { $0.split(separator: "/")[0] }).count >= 3, "\(notes)")
            #expect(try await h.allOutputKeys().filter { $0.hasPrefix("_failed/") }.isEmpty, "an input was given up")

            // A healthy replacement does them all.
            let replacement = try h.startWorker(
                name: "replacement", parameters: h.parameters(common, program: good), imds: healthyIMDS.endpoint,
                extraArguments: ["--ledger-heartbeat-seconds", "1"])
            #expect(await replacement.wait(timeout: 120) == .exited(0), "\(h.logTails(["replacement"]))")
            #expect(try await h.outputKeys().count == 9)
            #expect(try await h.queueDepth() == 0)
        }
    }

    /// The same failures with nobody succeeding are the inputs' own: no leaving; each input is retried and given up
    /// with its record, as any failing input.
    @Test func failuresEverywhereAreTheInputsOwn() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let table = try await makeLedgerTable().1
            let bad = h.script("bad.sh", Self.broken)
            let imds = try await IMDSStandIn.start(directory: dir, userData: nil, instanceID: "i-0alone")
            defer { Task { await imds.stop() } }
            for i in 0..<4 { try await h.upload("in-\(i).txt", "x") }
            try await h.send((0..<4).map { "in-\($0).txt" })
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    [
                        "numThreads": "1", "prefetch": "false", "ledgerTable": table, "failureBudget": "2",
                        "maxAttempts": "1",
                    ], program: bad), imds: imds.endpoint, extraArguments: ["--ledger-heartbeat-seconds", "1"])
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.logTails(["w"]))")
            #expect(!h.log("w").contains("cannot go on here"))
            #expect(try await h.allOutputKeys().filter { $0.hasPrefix("_failed/") }.count == 4)
        }
    }
}
