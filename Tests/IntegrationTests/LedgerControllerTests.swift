import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport
import TaskLedger
import Worker

/// The DynamoDB ledger written by real workers, and `parallelizer controller` acting on moto's EC2, SQS and DynamoDB.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)))
struct LedgerControllerTests {
    static func items(_ dynamo: DynamoDBClient, table: String, queueURL: String) async throws -> [DynamoItem] {
        try await dynamo.queryAll(
            table: table, keyCondition: "#q = :q", names: ["#q": "queue"],
            values: [":q": .s(LedgerSchema.queueName(queueURL))], logger: quietLogger)
    }

    @Test func fiftyTasksLeaveOneItemPerAttemptAndAHeartbeat() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let program = h.script(
                "task.sh",
                """
                # The local file keeps only the key's last part, so the content says what to do.
                if grep -q fail "$1"; then echo "cannot do $1" >&2; exit 3; fi
                if grep -q slow "$1"; then touch "\(dir)/slow-started"; sleep 120; fi
                cp "$1" "$1.out"
                echo "$1.out"
                """)
            var keys = (0..<46).map { "ok/\($0).txt" } + (0..<3).map { "fail/\($0).txt" }
            keys.append("slow.txt")
            for key in keys { try await h.upload(key, "content of \(key)") }
            try await h.send(keys)
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    [
                        "ledgerTable": table, "numThreads": "3", "maxAttempts": "2",
                        "shutdownGrace": "1", "visibilityTimeout": "60",
                        // One item per attempt, counted exactly: no message taken ahead of the slow task (to be
                        // released after a while, an attempt of its own; PrefetchTests has that case).
                        "prefetch": "false",
                    ], program: program),
                extraArguments: ["--ledger-heartbeat-seconds", "1"])
            // All but the slow one settle (each failing input twice), then SIGTERM releases the slow one.
            var settled = false
            for _ in 0..<600 {
                let outputs = try await h.outputKeys()
                if outputs.filter({ $0.hasPrefix("ok/") }).count == 46,
                    outputs.filter({ $0.hasPrefix("_failed/") }).count == 3,
                    fileExists("\(dir)/slow-started")
                {
                    settled = true
                    break
                }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            #expect(settled, "\(h.log("w").suffix(2000))")
            // The heartbeat is written while the worker runs, not only at exit.
            let running = try await InstanceHeartbeat.read(
                table: table, queueURL: h.queueURL, client: dynamo, logger: quietLogger)
            #expect(running.first?.state == "running")
            worker.signal(SIGTERM)
            #expect(await worker.wait(timeout: 60) == .exited(0))

            let items = try await Self.items(dynamo, table: table, queueURL: h.queueURL)
            let tasks = items.filter { $0["kind"]?.string == "task" }
            func state(_ s: String) -> [DynamoItem] { tasks.filter { $0["state"]?.string == s } }
            #expect(state("done").count == 46)
            #expect(state("failed").count == 6, "three inputs, two attempts each")
            #expect(state("released").count == 1)
            #expect(state("running").isEmpty)
            #expect(tasks.count == 53)
            let released = try #require(state("released").first)
            #expect(released["task"]?.string == "task#slow.txt#0001")
            #expect(released["exitStatus"]?.string == "interrupted")
            let failedAttempts = Set(state("failed").compactMap { $0["task"]?.string })
            #expect(failedAttempts.contains("task#fail/0.txt#0001") && failedAttempts.contains("task#fail/0.txt#0002"))
            #expect(state("failed").allSatisfy { $0["exitStatus"]?.string == "exit 3" })
            for item in state("done") {
                let key = try #require(item["inputKey"]?.string)
                #expect(item["outputKey"]?.string == key + ".out")
                #expect((item["bytesIn"]?.int ?? 0) > 0 && item["bytesOut"]?.int == item["bytesIn"]?.int)
                #expect(item["exitStatus"]?.string == "exit 0")
                #expect(item["durationSeconds"]?.double != nil)
                #expect((item["endedEpoch"]?.double ?? 0) >= (item["startedEpoch"]?.double ?? .infinity))
                #expect(item["startedAt"]?.string?.hasSuffix("Z") == true && item["endedAt"]?.string != nil)
                #expect(item["instance"]?.string?.isEmpty == false)
                #expect((1...3).contains(item["slot"]?.int ?? 0))
            }
            let beats = try await InstanceHeartbeat.read(
                table: table, queueURL: h.queueURL, client: dynamo, logger: quietLogger)
            let beat = try #require(beats.first)
            #expect(beats.count == 1)
            #expect(beat.state == "stopped")
            #expect(beat.tasksDone == 46 && beat.tasksFailed == 6)
            #expect(beat.version == Version.current)
            #expect(beat.slots == 3 && beat.runningTasks == 0 && beat.taskTimeout == Double(VisibilityPlan.longestTask))
            #expect(beat.lastCompletionEpoch != nil && beat.lastReceiveEpoch != nil)
            #expect(beat.recentDurations.count == 46 && beat.recentCompletions.count == 46)

            // status reads the same heartbeat.
            let (_, text) = try await h.command(
                "status", ["status", "--queue-url", h.queueURL, "--ledger-table", table])
            #expect(text.contains(beat.instanceID) && text.contains("done 46"), "\(text)")
        }
    }

    @Test func aMissingLedgerTableIsLoggedAndTasksStillComplete() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script("task.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let keys = (0..<8).map { "in/\($0).txt" }
            for key in keys { try await h.upload(key, key) }
            try await h.send(keys)
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["ledgerTable": "no-such-table-\(UInt32.random(in: 0...UInt32.max))"],
                    program: program))
            #expect(await worker.wait(timeout: 120) == .exited(0))
            #expect(try await h.outputKeys() == keys.map { $0 + ".out" }.sorted())
            let log = h.log("w")
            #expect(log.contains("ledger write failed; tasks go on without it"))
            #expect(log.contains("ResourceNotFoundException"))
            // One line for the first failure, not one per write.
            #expect(log.components(separatedBy: "ledger write failed").count - 1 == 1)
        }
    }

    /// Two tagged instances (one stuck: its heartbeat, of before heartbeats had `updatedEpoch`, is its last completion
    /// an hour ago), one untagged and one of another queue; then the drain.
    @Test(arguments: [false, true])
    func theControllerRetiresStuckAndDrainedWorkersAndNothingElse(dryRun: Bool) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let ec2 = try EC2Client(context: h.context)
            let image = "ami-12c6146b"
            let tag = ["parallelizer:queue": h.queueURL]
            let stuck = try await ec2.runInstances(imageID: image, count: 1, tags: tag, logger: quietLogger)[0]
                .instanceID
            let busy = try await ec2.runInstances(imageID: image, count: 1, tags: tag, logger: quietLogger)[0]
                .instanceID
            let untagged = try await ec2.runInstances(imageID: image, count: 1, logger: quietLogger)[0].instanceID
            let other = try await ec2.runInstances(
                imageID: image, count: 1, tags: ["parallelizer:queue": h.queueURL + "x"],
                logger: quietLogger)[0].instanceID
            let now = Date().timeIntervalSince1970
            for (id, last) in [(stuck, now - 3600), (busy, now)] {
                try await dynamo.putItem(
                    table: table,
                    item: [
                        "queue": .s(LedgerSchema.queueName(h.queueURL)), "task": .s(LedgerSchema.instanceSortKey(id)),
                        "kind": .s("instance"),
                        "instance": .s(id), "state": .s("running"), "startedEpoch": .number(now - 7200),
                        "lastCompletionEpoch": .number(last), "tasksDone": .number(5),
                    ], logger: quietLogger)
            }
            try await h.send((0..<5).map { "waiting-\($0)" })

            var arguments = [
                "controller", "--queue-url", h.queueURL, "--ledger-table", table, "--stuck-after", "10m",
                "--interval", "1s",
            ]
            if dryRun { arguments.append("--dry-run") }
            let controller = try h.startWorkerProcess(name: "controller", arguments: arguments)
            func states() async throws -> [String: String] {
                let described = try await ec2.describeInstances(
                    instanceIDs: [stuck, busy, untagged, other], logger: quietLogger)
                return Dictionary(described.map { ($0.instanceID, $0.state) }, uniquingKeysWith: { a, _ in a })
            }
            func gone(_ state: String?) -> Bool { state == "shutting-down" || state == "terminated" }
            // The stuck one goes (or, dry, is only named); the busy one stays while work waits.
            await waitUntil { h.log("controller").contains("instance=\(stuck)") }
            // The stuck one's termination (none when dry) shows in EC2: waited for, not slept for.
            if !dryRun { try await waitUntil { gone(try await states()[stuck]) } }
            var seen = try await states()
            #expect(gone(seen[stuck]) == !dryRun)
            #expect(seen[busy] == "running" && seen[untagged] == "running" && seen[other] == "running")
            #expect(h.log("controller").contains("no heartbeat for"))

            // Drain the queue: after an interval the rest of the fleet goes, and the controller ends.
            for _ in 0..<10 {
                let messages = try await h.sqs.receiveMessages(
                    queueURL: h.queueURL, maxMessages: 10, waitSeconds: 0,
                    visibilityTimeout: 30, logger: quietLogger)
                for m in messages {
                    try await h.sqs.deleteMessage(
                        queueURL: h.queueURL, receiptHandle: m.receiptHandle, logger: quietLogger)
                }
                if try await h.queueDepth() == 0 { break }
            }
            #expect(await controller.wait(timeout: 60) == .exited(0), "\(h.log("controller").suffix(2000))")
            seen = try await states()
            #expect(gone(seen[busy]) == !dryRun)
            #expect(gone(seen[stuck]) == !dryRun)
            #expect(seen[untagged] == "running", "an untagged instance was touched")
            #expect(seen[other] == "running", "another queue's instance was touched")
            let log = h.log("controller")
            #expect(log.contains("the queue has been drained for"))
            #expect(log.contains(dryRun ? "would terminate instance (dry run)" : "terminating instance"))
            #expect(!log.contains("instance=\(untagged)") && !log.contains("instance=\(other)"))
            _ = try await ec2.terminateInstances(
                [untagged, other] + (dryRun ? [stuck, busy] : []), logger: quietLogger)
        }
    }
}

extension LedgerControllerTests {
    /// A group of two (as `launch --market asg` makes it): the worker that finds the queue drained leaves the group
    /// with its desired capacity lowered, so no idle replacement starts; the controller then scales the rest to 0.
    @Test func drainedWorkersShrinkTheirAutoScalingGroupAndTheControllerEndsIt() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let group = "parallelizer-" + (h.queueURL.split(separator: "/").last.map(String.init) ?? "")
            _ = try await Scripts.awsCLI(
                [
                    "ec2", "create-launch-template", "--launch-template-name", group,
                    "--launch-template-data", #"{"ImageId":"ami-12c6146b","InstanceType":"t3.micro"}"#,
                ],
                directory: dir)
            _ = try await Scripts.awsCLI(
                [
                    "autoscaling", "create-auto-scaling-group", "--auto-scaling-group-name", group,
                    "--min-size", "0", "--max-size", "2", "--desired-capacity", "2",
                    "--launch-template", "LaunchTemplateName=\(group)", "--availability-zones", "us-east-1a",
                    "--tags", "Key=parallelizer:queue,Value=\(h.queueURL),PropagateAtLaunch=true",
                ],
                directory: dir)
            let autoscaling = try AutoScalingClient(context: h.context)
            func ours() async throws -> AutoScalingGroup {
                let found = try await autoscaling.groups(
                    taggedWith: "parallelizer:queue", value: h.queueURL, logger: quietLogger)
                try #require(found.count == 1, "the tag filter found \(found.map(\.name))")
                return found[0]
            }
            let before = try await ours()
            #expect(before.name == group && before.desiredCapacity == 2 && before.instances.count == 2)
            let me = try #require(before.instances.keys.sorted().first)

            let imds = try await IMDSStandIn.start(directory: dir, userData: nil, instanceID: me)
            defer { Task { await imds.stop() } }
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    [
                        "autoScalingGroup": group, "shouldShutdown": "true", "idleTimeout": "1",
                        "shutdownCommand": "/bin/sh -c 'echo x > \(dir)/halted'",
                    ], program: "/bin/true"), imds: imds.endpoint)
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w").suffix(2000))")
            #expect(h.log("w").contains("left the Auto Scaling group"), "\(h.log("w").suffix(2000))")
            #expect(fileExists("\(dir)/halted"), "the shutdown command still runs")
            let after = try await ours()
            #expect(after.desiredCapacity == 1, "the group would replace the drained worker")
            #expect(after.instances[me] == nil || after.instances[me]!.hasPrefix("Terminating"))

            // Started after the drain, this controller never sees the work itself (and there is no ledger to show
            // it): the operator's idle period says the quiet queue is the end.
            let controller = try h.startWorkerProcess(
                name: "controller",
                arguments: ["controller", "--queue-url", h.queueURL, "--interval", "1s", "--stop-idle-after", "2s"])
            #expect(await controller.wait(timeout: 60) == .exited(0), "\(h.log("controller").suffix(2000))")
            #expect(h.log("controller").contains("scaling the Auto Scaling group to 0"))
            #expect(try await ours().desiredCapacity == 0)
            _ = try await Scripts.awsCLI(
                [
                    "autoscaling", "delete-auto-scaling-group", "--auto-scaling-group-name", group,
                    "--force-delete",
                ], directory: dir)
        }
    }
}

extension S3FaultTests {
    /// DynamoDB throttles every ledger write (through the fault proxy): tasks complete as fast as without a ledger,
    /// and the throttling is reported.
    @Test func aThrottledLedgerHoldsUpNoTask() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let (_, table) = try await makeLedgerTable()
            let program = h.script("task.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let keys = (0..<10).map { "in/\($0).txt" }
            for key in keys { try await h.upload(key, key) }
            try await h.send(keys)
            try await TestEnvironment.setFaultRules(
                """
                [{"service":"dynamodb","operation":"PutItem","error":{"code":"ProvisionedThroughputExceededException","status":400}},
                 {"service":"dynamodb","operation":"UpdateItem","error":{"code":"ProvisionedThroughputExceededException","status":400}}]
                """)
            defer { Task { try? await TestEnvironment.setFaultRules("[]") } }
            let clock = ContinuousClock()
            let started = clock.now
            let worker = try h.startWorker(
                name: "w", parameters: h.parameters(["ledgerTable": table, "numThreads": "2"], program: program),
                environment: try TestEnvironment.routeThroughFaultProxy())
            // All outputs appear while every ledger write is still being refused.
            var done = false
            for _ in 0..<300 {
                if try await h.outputKeys().count == keys.count {
                    done = true
                    break
                }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            #expect(done)
            #expect(clock.now - started < .seconds(30), "tasks waited for the ledger")
            #expect(await worker.wait(timeout: 90) == .exited(0), "\(h.log("w").suffix(1500))")
            try await TestEnvironment.setFaultRules("[]")
            #expect(try await h.outputKeys() == keys.map { $0 + ".out" }.sorted())
            #expect(try await h.queueDepth() == 0)
            let log = h.log("w")
            #expect(log.contains("ledger write failed; tasks go on without it"))
            #expect(log.contains("ProvisionedThroughputExceededException"))
        }
    }
}
