import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import TaskLedger
import Testing
import TestSupport
import Worker

/// The tail: three workers, nine short tasks and one ten times longer. With a ledger, of the two workers left idle
/// one leaves it to the one busy with the long task instead of waiting for the queue to empty, and one stays (the
/// keeper, the lowest instance id of the idle ones: for a message whose worker died); without a ledger both wait, as
/// before. Prints the worker-seconds spent after the last message was taken, each way.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct TailTests {
    /// `count` instances, each a worker with its own instance id from an IMDS of its own (and its own work folder:
    /// `parameters` gives each one), beating every second.
    static func startInstances(
        _ count: Int, named prefix: String, harness h: WorkerHarness, directory: String,
        parameters: () -> String
    ) async throws -> ([ChildProcess], [IMDSStandIn]) {
        var standIns: [IMDSStandIn] = []
        for i in 0..<count {
            standIns.append(
                try await IMDSStandIn.start(directory: directory, userData: nil, instanceID: "\(prefix)\(i)"))
        }
        let workers = try (0..<count).map { i in
            try h.startWorker(
                name: "w\(i)", parameters: parameters(), imds: standIns[i].endpoint,
                extraArguments: ["--ledger-heartbeat-seconds", "1"])
        }
        return (workers, standIns)
    }

    @Test(arguments: [true, false])
    func idleWorkersLeaveTheTailToTheBusyOne(ledger: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            // Without prefetch: the rule is about idle workers and the busy one, and a message taken ahead of the long
            // task would wait there a while (PrefetchTests has that case).
            var extra = [
                "numThreads": "1", "idleTimeout": "2", "shouldShutdown": "false", "visibilityTimeout": "30",
                "prefetch": "false",
            ]
            if ledger {
                extra["ledgerTable"] = try await makeLedgerTable().1
            }
            // The long task outlasts the short ones by far more than a loaded machine stretches them: the idle
            // workers' decision must come while it still runs (CI once saw 2-s tasks take 3.4 s and a 20-s margin
            // run out).
            let program = h.script(
                "task.sh",
                """
                if grep -q long "$1"; then touch "\(dir)/long-started"; sleep 35; touch "\(dir)/long-done"; else sleep 2; fi
                cp "$1" "$1.out"
                echo "$1.out"
                """)
            let keys = ["long.txt"] + (0..<9).map { "short-\($0).txt" }
            for key in keys { try await h.upload(key, key) }
            try await h.send(keys)
            let (workers, standIns) = try await Self.startInstances(
                3, named: "i-tail", harness: h, directory: dir, parameters: { h.parameters(extra, program: program) })
            defer { for standIn in standIns { Task { await standIn.stop() } } }
            // Every message taken: the short ones done and the long one started.
            var lastTaken: ContinuousClock.Instant?
            var exits: [Int: (ContinuousClock.Instant, longDone: Bool)] = [:]
            let deadline = ContinuousClock.now + .seconds(120)
            while exits.count < 3 && ContinuousClock.now < deadline {
                if lastTaken == nil, fileExists("\(dir)/long-started"),
                    try await h.outputKeys().filter({ $0.hasPrefix("short-") }).count == 9
                {
                    lastTaken = ContinuousClock.now
                }
                for (i, worker) in workers.enumerated() where exits[i] == nil {
                    if let outcome = await worker.wait(timeout: 0.05) {
                        #expect(outcome == .exited(0), "\(h.log("w\(i)").suffix(2000))")
                        exits[i] = (ContinuousClock.now, fileExists("\(dir)/long-done"))
                    }
                }
                try await Task.sleep(nanoseconds: 50_000_000)
            }
            #expect(exits.count == 3, "\(h.logTails(["w0", "w1", "w2"]))")
            #expect(Set(try await h.outputKeys()) == Set(keys.map { $0 + ".out" }))
            #expect(try await h.queueDepth() == 0)
            let early = exits.values.filter { !$0.longDone }.count
            let logs = (0..<3).map { h.log("w\($0)") }
            if ledger {
                #expect(early == 1, "\(h.logTails(["w0", "w1", "w2"]))")
                let leavers = (0..<3).filter { logs[$0].contains("leaving it to the workers busy with it") }
                #expect(leavers.count == 1)
                // The keeper is the lowest idle instance id: the one that left is not the lowest of the idle two.
                let idle = (0..<3).filter { !logs[$0].contains("task.key=long.txt") }
                #expect(leavers.allSatisfy { leaver in idle.contains { $0 < leaver } }, "\(leavers) of idle \(idle)")
            } else {
                #expect(early == 0, "without a ledger a worker waits for the queue to empty")
            }
            if let lastTaken {
                let seconds = exits.values.map { max(0, ($0.0 - lastTaken).seconds) }.reduce(0, +)
                print(
                    "tail (\(ledger ? "with a ledger: the tail rule" : "without a ledger: wait for the queue to empty")): "
                        + "worker-seconds after the last message was taken: \((seconds * 10).rounded() / 10)")
            }
        }
    }

    /// The fleet as a worker reads it from the ledger: only fresh heartbeats of running daemons count, its own is
    /// left out, and busy and idle are told by the running count.
    @Test func theFleetViewCountsOnlyFreshRunningHeartbeats() async throws {
        let (dynamo, table) = try await makeLedgerTable()
        let queueURL = "http://127.0.0.1/123456789012/tail-\(UInt32.random(in: 0...UInt32.max))"
        let now = Date().timeIntervalSince1970
        func beat(_ id: String, state: String = "running", running: Int, age: Double) async throws {
            try await dynamo.putItem(
                table: table,
                item: [
                    "queue": .s(LedgerSchema.queueName(queueURL)), "task": .s(LedgerSchema.instanceSortKey(id)),
                    "kind": .s("instance"), "instance": .s(id), "state": .s(state),
                    "updatedEpoch": .number(now - age), "runningTasks": .number(running),
                ], logger: quietLogger)
        }
        try await beat("i-busy", running: 1, age: 2)
        try await beat("i-dead", running: 1, age: 600)  // killed mid-task: its heartbeat went stale
        try await beat("i-idle", running: 0, age: 5)
        try await beat("i-gone", state: "stopped", running: 0, age: 1)
        try await beat("i-me", running: 0, age: 1)
        let ledger = Ledger(
            client: dynamo, table: table, queueURL: queueURL, instanceID: "i-me", logger: quietLogger)
        let view = try await ledger.others(freshWithin: 60)
        #expect(view == Ledger.FleetView(busy: 1, idle: ["i-idle"]))
        // So with two in flight (the dead worker's among them), no idle worker leaves.
        #expect(
            !TailRule.mayLeave(
                counts: SQSClient.MessageCounts(visible: 0, inFlight: 2, delayed: 0), others: view, me: "i-me"))
    }

    /// A ledger the workers cannot read (here: no such table) turns the tail rule off with one line, and the idle
    /// workers wait for the queue to empty, as without a ledger.
    @Test func aLedgerThatCannotBeReadLeavesTheOldRule() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script(
                "task.sh",
                """
                if grep -q long "$1"; then sleep 8; touch "\(dir)/long-done"; fi
                cp "$1" "$1.out"
                echo "$1.out"
                """)
            for key in ["long.txt", "short.txt"] { try await h.upload(key, key) }
            try await h.send(["long.txt", "short.txt"])
            let extra = [
                "numThreads": "1", "idleTimeout": "1", "shouldShutdown": "false",
                "ledgerTable": "no-such-table-\(UInt32.random(in: 0...UInt32.max))",
            ]
            let (workers, standIns) = try await Self.startInstances(
                2, named: "i-nol", harness: h, directory: dir, parameters: { h.parameters(extra, program: program) })
            defer { for standIn in standIns { Task { await standIn.stop() } } }
            for (i, worker) in workers.enumerated() {
                #expect(await worker.wait(timeout: 90) == .exited(0), "\(h.log("w\(i)").suffix(2000))")
            }
            #expect(fileExists("\(dir)/long-done"))
            let logs = (0..<2).map { h.log("w\($0)") }
            #expect(!logs.contains { $0.contains("leaving it to the workers busy with it") })
            #expect(logs.contains { $0.contains("cannot read the fleet's heartbeats") }, "\(logs)")
            #expect(Set(try await h.outputKeys()) == ["long.txt.out", "short.txt.out"])
        }
    }
}
