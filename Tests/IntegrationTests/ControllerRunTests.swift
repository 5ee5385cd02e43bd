import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Operators
import TaskLedger
import Testing
import TestSupport

/// The controller over a whole run, against moto's EC2, SQS and DynamoDB: a fleet that follows its queue (from zero
/// and back, never retiring a busy worker), launches that stop while too many tasks fail, and a completion hook that
/// runs once, even across restarts.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct ControllerRunTests {
    static func tagged(_ ec2: EC2Client, queueURL: String) async throws -> [EC2Instance] {
        try await ControllerFleetTests.tagged(ec2, queueURL: queueURL)
    }

    /// How many rounds the controller has logged: the tests wait for rounds, not for time.
    static func rounds(_ log: String) -> Int { log.components(separatedBy: "controller round").count - 1 }

    static func heartbeat(
        _ dynamo: DynamoDBClient, table: String, queueURL: String, instance: String, running: Int = 0,
        done: [Double] = [], failed: [Double] = [], state: String = "running"
    ) async throws {
        let now = Date().timeIntervalSince1970
        try await dynamo.putItem(
            table: table,
            item: [
                "queue": .s(LedgerSchema.queueName(queueURL)), "task": .s(LedgerSchema.instanceSortKey(instance)),
                "kind": .s("instance"), "instance": .s(instance), "state": .s(state),
                "startedEpoch": .number(now - 60), "updatedEpoch": .number(now), "runningTasks": .number(running),
                "tasksDone": .number(done.count), "tasksFailed": .number(failed.count),
                "recentCompletions": .l(done.map { .number($0) }), "recentFailures": .l(failed.map { .number($0) }),
            ], logger: quietLogger)
    }

    static func drain(_ h: WorkerHarness) async throws {
        for _ in 0..<10 {
            for m in try await h.sqs.receiveMessages(
                queueURL: h.queueURL, maxMessages: 10, waitSeconds: 0, visibilityTimeout: 30, logger: quietLogger)
            {
                try await h.sqs.deleteMessage(queueURL: h.queueURL, receiptHandle: m.receiptHandle, logger: quietLogger)
            }
            if try await h.queueDepth() == 0 { return }
        }
    }

    /// `--follow --min 0 --max 3`: an empty queue launches nothing and does not end the controller; messages bring
    /// instances (one a waiting message); after the quiet period the idle one leaves and the busy one (its heartbeat
    /// shows a task) stays; new messages bring the fleet back up, to --max.
    @Test func aFollowingFleetScalesFromZeroAndBackWithoutStoppingABusyWorker() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            _ = try await ControllerFleetTests.makeLaunchTemplate(h, directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let ec2 = try EC2Client(context: h.context)
            let controller = try h.startWorkerProcess(
                name: "controller",
                arguments: [
                    "controller", "--queue-url", h.queueURL, "--follow", "--min", "0", "--max", "3", "--interval",
                    "1s", "--quiet-period", "2s", "--ledger-table", table,
                ])
            defer { controller.signal(SIGKILL) }
            #expect(try await ControllerFleetTests.until { Self.rounds(h.log("controller")) >= 4 })
            #expect(try await Self.tagged(ec2, queueURL: h.queueURL).isEmpty, "launched for an empty queue")
            #expect(await controller.wait(timeout: 0.1) == nil, "a following controller ended on an empty queue")

            try await h.send(["a", "b"])
            #expect(
                try await ControllerFleetTests.until { try await Self.tagged(ec2, queueURL: h.queueURL).count == 2 },
                "\(h.log("controller").suffix(3000))")
            let fleet = try await Self.tagged(ec2, queueURL: h.queueURL).map(\.instanceID).sorted()
            // One of them is busy with a task, the other idle; then the queue empties.
            try await Self.heartbeat(dynamo, table: table, queueURL: h.queueURL, instance: fleet[0], running: 1)
            try await Self.heartbeat(dynamo, table: table, queueURL: h.queueURL, instance: fleet[1])
            try await Self.drain(h)
            #expect(
                try await ControllerFleetTests.until {
                    try await Self.tagged(ec2, queueURL: h.queueURL).map(\.instanceID) == [fleet[0]]
                }, "\(h.log("controller").suffix(3000))")
            let after = Self.rounds(h.log("controller"))
            #expect(try await ControllerFleetTests.until { Self.rounds(h.log("controller")) >= after + 3 })
            #expect(
                try await Self.tagged(ec2, queueURL: h.queueURL).map(\.instanceID) == [fleet[0]], "busy one retired")
            #expect(h.log("controller").contains("reason=\"the queue has been quiet for"))

            // Work again: up to --max, the busy one counted.
            try await Self.heartbeat(dynamo, table: table, queueURL: h.queueURL, instance: fleet[0])
            try await h.send(["c", "d", "e", "f", "g"])
            #expect(
                try await ControllerFleetTests.until { try await Self.tagged(ec2, queueURL: h.queueURL).count == 3 },
                "\(h.log("controller").suffix(3000))")
            #expect(await controller.wait(timeout: 0.1) == nil)
            for id in try await Self.tagged(ec2, queueURL: h.queueURL).map(\.instanceID) {
                _ = try? await ec2.terminateInstances([id], logger: quietLogger)
            }
        }
    }

    /// `--max-failure-rate 50% --over 4`: the controller launches two workers for the waiting messages; then the
    /// ledger shows 3 of their last 4 tasks failed, so it launches nothing more, says why, and once both are gone
    /// with messages still waiting it stops (status 2). Failures from before it started would not count. `status`
    /// shows the same rate.
    @Test func launchesStopWhileTooManyTasksFail() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            _ = try await ControllerFleetTests.makeLaunchTemplate(h, directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let ec2 = try EC2Client(context: h.context)
            // An earlier run's failures, before this controller: they do not stop it.
            let long = Date().timeIntervalSince1970 - 3600
            try await Self.heartbeat(
                dynamo, table: table, queueURL: h.queueURL, instance: "i-0earlier",
                failed: [long, long + 1, long + 2, long + 3], state: "stopped")
            try await h.send(["a", "b", "c"])
            let controller = try h.startWorkerProcess(
                name: "controller",
                arguments: [
                    "controller", "--queue-url", h.queueURL, "--target", "2", "--interval", "1s", "--ledger-table",
                    table, "--max-failure-rate", "50%", "--over", "4",
                ])
            defer { controller.signal(SIGKILL) }
            #expect(
                try await ControllerFleetTests.until { try await Self.tagged(ec2, queueURL: h.queueURL).count == 2 },
                "\(h.log("controller").suffix(3000))")
            let fleet = try await Self.tagged(ec2, queueURL: h.queueURL).map(\.instanceID).sorted()
            let now = Date().timeIntervalSince1970
            try await Self.heartbeat(
                dynamo, table: table, queueURL: h.queueURL, instance: fleet[0], done: [now], failed: [now + 1])
            try await Self.heartbeat(
                dynamo, table: table, queueURL: h.queueURL, instance: fleet[1], failed: [now + 2, now + 3])
            #expect(
                try await ControllerFleetTests.until { h.log("controller").contains("launches stop: ") },
                "\(h.log("controller").suffix(3000))")
            // Both die: nothing replaces them, and the controller stops.
            _ = try await ec2.terminateInstances(fleet, logger: quietLogger)
            #expect(await controller.wait(timeout: 60) == .exited(2), "\(h.log("controller").suffix(3000))")
            let log = h.log("controller")
            #expect(
                log.contains("launches stop: 3 of the last 4 tasks failed, more than --max-failure-rate 50 %"),
                "\(log.suffix(3000))")
            #expect(log.contains("critical controller stops: launches are stopped"))
            let ever = try await ControllerFleetTests.tagged(
                ec2, queueURL: h.queueURL, states: ["pending", "running", "shutting-down", "terminated"])
            #expect(ever.count == 2, "launched while the rate was over")

            let (_, text) = try await h.command(
                "status", ["status", "--queue-url", h.queueURL, "--ledger-table", table])
            #expect(text.contains("failures    7 of the last 8 tasks (87.5 %)"), "\(text)")
        }
    }

    /// `--on-complete`: once the queue is drained and the fleet gone, the command runs with the run in its
    /// environment; a controller started again finds the ledger's record and does not run it twice. A hook that
    /// fails ends the controller with status 2, and is not run again either.
    @Test func theCompletionHookRunsOnceAcrossRestarts() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let started = Date().timeIntervalSince1970 - 120
            try await h.sqs.write(
                RunManifest(source: "s3://in/run/", started: started, updated: started, sent: 7, skipped: 1),
                queueURL: h.queueURL, logger: quietLogger)
            // The run's work, as the ledger shows it: the workers are gone, the queue is empty.
            try await Self.heartbeat(
                dynamo, table: table, queueURL: h.queueURL, instance: "i-0done", done: [1, 2, 3, 4, 5, 6],
                failed: [7], state: "stopped")
            let record = "\(dir)/hook-runs"
            let hook =
                #"echo "$PARALLELIZER_TASKS_DONE $PARALLELIZER_TASKS_FAILED $PARALLELIZER_RUN_SENT $PARALLELIZER_RUN_SOURCE" >> "#
                + record
            for run in 1...2 {
                let controller = try h.startWorkerProcess(
                    name: "controller-\(run)",
                    arguments: [
                        "controller", "--queue-url", h.queueURL, "--interval", "1s", "--ledger-table", table,
                        "--on-complete", hook,
                    ])
                defer { controller.signal(SIGKILL) }
                #expect(await controller.wait(timeout: 60) == .exited(0), "\(h.log("controller-\(run)").suffix(3000))")
            }
            #expect(LocalFile.readText(record) == "6 1 7 s3://in/run/\n", "ran twice, or not with the run")
            #expect(h.log("controller-2").contains("the completion hook ran already for this run; not run again"))

            // A hook that fails, on another queue: status 2, and a restart does not run it again.
            mkdir(dir + "/second", 0o755)
            let h2 = try await WorkerHarness.make(directory: dir + "/second")
            try await Self.heartbeat(
                dynamo, table: table, queueURL: h2.queueURL, instance: "i-0done", done: [1], state: "stopped")
            let failing = "echo ran >> \(dir)/failing-runs; exit 3"
            // Without a run on the queue's tags the ledger cannot keep the hook to once per run: not run, status 2.
            let unknown = try h2.startWorkerProcess(
                name: "controller-0",
                arguments: [
                    "controller", "--queue-url", h2.queueURL, "--interval", "1s", "--ledger-table", table,
                    "--on-complete", failing,
                ])
            defer { unknown.signal(SIGKILL) }
            #expect(await unknown.wait(timeout: 60) == .exited(2), "\(h2.log("controller-0").suffix(3000))")
            #expect(h2.log("controller-0").contains("the queue's tags hold no run"))
            #expect(LocalFile.readText("\(dir)/failing-runs") == nil)
            try await h2.sqs.write(
                RunManifest(source: "s3://in/two/", started: started, updated: started, sent: 1, skipped: 0),
                queueURL: h2.queueURL, logger: quietLogger)
            for run in 1...2 {
                let controller = try h2.startWorkerProcess(
                    name: "controller-\(run)",
                    arguments: [
                        "controller", "--queue-url", h2.queueURL, "--interval", "1s", "--ledger-table", table,
                        "--on-complete", failing,
                    ])
                defer { controller.signal(SIGKILL) }
                #expect(await controller.wait(timeout: 60) == .exited(2), "\(h2.log("controller-\(run)").suffix(3000))")
            }
            #expect(LocalFile.readText("\(dir)/failing-runs") == "ran\n")
            #expect(h2.log("controller-1").contains("critical the completion hook failed with exit status 3"))
            #expect(h2.log("controller-2").contains("the completion hook failed already for this run"))
        }
    }
}
