import AWSCore
import AWSServices
import AWSSigV4
import FoundationEssentials
@preconcurrency import Glibc
import Operators
import TaskLedger
import Testing
import TestSupport
import Worker

/// `parallelizer controller` keeping a fleet at size against moto's EC2: replacements from the queue's launch
/// template while work waits, nothing after the drain, a template that cannot boot a worker stops it, and a long
/// task that still beats is not "stuck".
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct ControllerFleetTests {
    /// A launch template like the one `fleet launch` records for a queue, made here by another client (the AWS CLI).
    static func makeLaunchTemplate(_ h: WorkerHarness, directory: String) async throws -> String {
        let name = Controller.launchTemplateName(queueURL: h.queueURL)
        let data = JSONValue.object([
            "ImageId": .string("ami-12c6146b"), "InstanceType": .string("t3.micro"),
            "TagSpecifications": .array([
                .object([
                    "ResourceType": .string("instance"),
                    "Tags": .array([.object(["Key": .string("parallelizer:queue"), "Value": .string(h.queueURL)])]),
                ])
            ]),
        ]).serialized
        _ = try await Scripts.awsCLI(
            ["ec2", "create-launch-template", "--launch-template-name", name, "--launch-template-data", data],
            directory: directory)
        return name
    }

    static func tagged(_ ec2: EC2Client, queueURL: String, states: [String] = ["pending", "running"]) async throws
        -> [EC2Instance]
    {
        try await ec2.describeInstances(
            filters: [("tag:\(Controller.tag)", [queueURL]), ("instance-state-name", states)], logger: quietLogger)
    }

    /// Waits (real time, 60 s at most) until `condition` holds.
    static func until(_ condition: () async throws -> Bool) async throws -> Bool {
        for _ in 0..<600 {
            if try await condition() { return true }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        return false
    }

    /// Workers die (terminated by the test); the controller brings the fleet back to three while work waits, from
    /// the launch template, on demand or as an instant spot fleet; after the drain it launches nothing more, stops
    /// the fleet and ends. An instance without the queue's tag is never touched.
    @Test(arguments: ["on-demand", "spot"])
    func theFleetIsKeptAtSizeUntilTheDrain(market: String) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            _ = try await Self.makeLaunchTemplate(h, directory: dir)
            let ec2 = try EC2Client(context: h.context)
            let untagged = try await ec2.runInstances(imageID: "ami-12c6146b", count: 1, logger: quietLogger)[0]
            try await h.send((0..<20).map { "waiting-\($0)" })
            var arguments = ["controller", "--queue-url", h.queueURL, "--target", "3", "--interval", "1s"]
            arguments += ["--market", market]
            if market == "spot" { arguments += ["--instance-types", "t3.micro,t3a.micro"] }
            let controller = try h.startWorkerProcess(name: "controller", arguments: arguments)
            defer { controller.signal(SIGKILL) }

            #expect(
                try await Self.until { try await Self.tagged(ec2, queueURL: h.queueURL).count == 3 },
                "\(h.log("controller").suffix(3000))")
            let first = try await Self.tagged(ec2, queueURL: h.queueURL)
            #expect(first.allSatisfy { $0.tags["parallelizer:launched-by"] == "controller" })
            // Two die (a spot interruption, a crash): both are replaced.
            let dead = first.prefix(2).map(\.instanceID)
            try await ec2.terminateInstances(Array(dead), logger: quietLogger)
            #expect(
                try await Self.until {
                    let alive = try await Self.tagged(ec2, queueURL: h.queueURL)
                    return alive.count == 3 && Set(alive.map(\.instanceID)).isDisjoint(with: dead)
                }, "\(h.log("controller").suffix(3000))")
            let log = h.log("controller")
            #expect(log.contains("launching instances count=3"), "\(log.suffix(3000))")
            #expect(log.contains("reason=\"0 of 3 instances alive while 20 messages wait\""))
            #expect(log.contains("launching instances count=2"))

            // The drain: nothing more is launched; the fleet is stopped and the controller ends.
            for _ in 0..<10 {
                for m in try await h.sqs.receiveMessages(
                    queueURL: h.queueURL, maxMessages: 10, waitSeconds: 0, visibilityTimeout: 30, logger: quietLogger)
                {
                    try await h.sqs.deleteMessage(
                        queueURL: h.queueURL, receiptHandle: m.receiptHandle, logger: quietLogger)
                }
                if try await h.queueDepth() == 0 { break }
            }
            #expect(await controller.wait(timeout: 60) == .exited(0), "\(h.log("controller").suffix(3000))")
            let ever = try await Self.tagged(
                ec2, queueURL: h.queueURL, states: ["pending", "running", "shutting-down", "terminated"])
            #expect(ever.count == 5, "three, then two replacements, and nothing after the drain")
            #expect(try await Self.tagged(ec2, queueURL: h.queueURL).isEmpty)
            let after = try await ec2.describeInstances(instanceIDs: [untagged.instanceID], logger: quietLogger)
            #expect(after.first?.state == "running", "an untagged instance was touched")
            #expect(h.log("controller").contains("the queue has been drained for"))
            _ = try await ec2.terminateInstances([untagged.instanceID], logger: quietLogger)
        }
    }

    /// A launch template whose instances never come up (here: each is gone a few seconds after it appears, its
    /// worker never heard from in the ledger) does not make the controller launch forever: three in a row, and it
    /// stops with one critical line and status 2. With a ledger: it is what tells a worker
    /// that never booted from one that left on its own.
    @Test func aTemplateThatCannotBootAWorkerStopsTheController() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            _ = try await Self.makeLaunchTemplate(h, directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            // One worker of the fleet beats (the ledger is in use): the launched ones never do. (With no heartbeat
            // at all the controller cannot tell a worker that never booted from a fleet without a ledger.)
            let now = Date().timeIntervalSince1970
            try await dynamo.putItem(
                table: table,
                item: [
                    "queue": .s(LedgerSchema.queueName(h.queueURL)),
                    "task": .s(LedgerSchema.instanceSortKey("i-0beats")),
                    "kind": .s("instance"), "instance": .s("i-0beats"), "state": .s("running"),
                    "startedEpoch": .number(now), "updatedEpoch": .number(now),
                ], logger: quietLogger)
            let ec2 = try EC2Client(context: h.context)
            try await h.send(["waiting"])
            let controller = try h.startWorkerProcess(
                name: "controller",
                arguments: [
                    "controller", "--queue-url", h.queueURL, "--target", "1", "--interval", "1s", "--ledger-table",
                    table,
                ])
            defer { controller.signal(SIGKILL) }
            var outcome: ProcessOutcome?
            for _ in 0..<600 {
                // Gone once the controller has listed it (a round is a second): DescribeInstances lags RunInstances,
                // so an instance never listed counts as alive for a while.
                let alive = try await Self.tagged(ec2, queueURL: h.queueURL)
                let old = alive.filter { instance in
                    guard let launched = instance.launchTime.flatMap({ CivilTime.parseISO8601($0) }) else {
                        return false
                    }
                    return Date().timeIntervalSince1970 - Double(launched) >= 3
                }
                if !old.isEmpty { try await ec2.terminateInstances(old.map(\.instanceID), logger: quietLogger) }
                outcome = await controller.wait(timeout: 0.1)
                if outcome != nil { break }
            }
            #expect(outcome == .exited(2), "\(h.log("controller").suffix(3000))")
            let log = h.log("controller")
            #expect(log.contains("critical controller stops: 3 launches in a row failed"), "\(log.suffix(3000))")
            let ever = try await Self.tagged(
                ec2, queueURL: h.queueURL, states: ["pending", "running", "shutting-down", "terminated"])
            #expect(ever.count == 3, "launches went on after the limit")
        }
    }

    /// Launch calls that fail (here: a launch template that does not exist) are failed launches too: the round goes
    /// on, and three in a row stop the controller with status 2, the error named, instead of a warning a round.
    @Test func launchCallsThatFailStopTheControllerAfterThree() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.send(["waiting"])
            let controller = try h.startWorkerProcess(
                name: "controller",
                arguments: [
                    "controller", "--queue-url", h.queueURL, "--target", "2", "--interval", "1s",
                    "--launch-template", "no-such-template-\(UInt32.random(in: 0...UInt32.max))",
                ])
            defer { controller.signal(SIGKILL) }
            #expect(await controller.wait(timeout: 60) == .exited(2), "\(h.log("controller").suffix(3000))")
            let log = h.log("controller")
            #expect(log.components(separatedBy: "launch failed").count - 1 == 3, "\(log.suffix(3000))")
            #expect(log.contains("critical controller stops: 3 launches in a row failed"))
        }
    }

    /// A real worker runs tasks more than twice as long as `--stuck-after`, beating in the ledger: the controller
    /// retires nothing while they run (the old rule, "no completion for --stuck-after while messages wait", killed
    /// it mid-task). Once the queue is drained, the fleet stops.
    @Test func aLongTaskThatStillBeatsIsNotStuck() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let ec2 = try EC2Client(context: h.context)
            let me = try await ec2.runInstances(
                imageID: "ami-12c6146b", count: 1, tags: [Controller.tag: h.queueURL], logger: quietLogger)[0]
                .instanceID
            let imds = try await IMDSStandIn.start(directory: dir, userData: nil, instanceID: me)
            defer { Task { await imds.stop() } }
            // Tasks of 24 s, "stuck" after 10 s without a heartbeat: the worker beats every second, and a loaded
            // machine (every suite sharing one moto) may delay a beat by several.
            let program = h.script("slow.sh", "sleep 24\ncp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            for key in ["a.txt", "b.txt"] { try await h.upload(key, key) }
            try await h.send(["a.txt", "b.txt"])
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    [
                        "ledgerTable": table, "numThreads": "1", "shouldShutdown": "false", "idleTimeout": "2",
                        "taskTimeout": "60",
                    ], program: program),
                imds: imds.endpoint, extraArguments: ["--ledger-heartbeat-seconds", "1"])
            // The controller starts once the worker has beaten: before that, an instance launched more than 10 s ago
            // and never heard from would be stuck (a boot that failed), which is not what this test is about.
            #expect(
                try await Self.until {
                    !(try await InstanceHeartbeat.read(
                        table: table, queueURL: h.queueURL, client: dynamo, logger: quietLogger)).isEmpty
                }, "\(h.log("w").suffix(2000))")
            let controller = try h.startWorkerProcess(
                name: "controller",
                arguments: [
                    "controller", "--queue-url", h.queueURL, "--ledger-table", table, "--stuck-after", "10s",
                    "--interval", "1s",
                ])
            defer { controller.signal(SIGKILL) }
            #expect(await worker.wait(timeout: 90) == .exited(0), "\(h.log("w").suffix(2000))")
            #expect(Set(try await h.outputKeys()) == ["a.txt.out", "b.txt.out"])
            #expect(await controller.wait(timeout: 60) == .exited(0), "\(h.log("controller").suffix(3000))")
            let terminations = h.log("controller").split(separator: "\n").filter { $0.contains("terminating instance") }
            #expect(terminations.count == 1, "\(terminations)")
            #expect(terminations.allSatisfy { $0.contains("the queue has been drained for") }, "\(terminations)")
        }
    }
}
