import AWSCore
import AWSServices
import FoundationEssentials
import TestSupport
import Testing
import Worker

/// SQS, DynamoDB and EC2 against moto_server with signature checking on.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct ServiceMotoTests {
    @Test func sqsLifecycle() async throws {
        let sqs = SQSClient(context: try TestEnvironment.motoContext())
        let name = uniqueName("pz-q")
        let url = try await sqs.createQueue(name: name, attributes: ["VisibilityTimeout": "30"], logger: quietLogger)
        #expect(try await sqs.getQueueURL(name: name, logger: quietLogger) == url)
        let entries = (0..<10).map { (id: "m\($0)", body: "input/\($0) é.txt") }
        let batch = try await sqs.sendMessageBatch(queueURL: url, entries: entries, logger: quietLogger)
        #expect(batch.successful.count == 10)
        #expect(batch.failed.isEmpty)
        let attributes = try await sqs.getQueueAttributes(queueURL: url, logger: quietLogger)
        #expect(attributes["ApproximateNumberOfMessages"] == "10")
        let received = try await sqs.receiveMessages(queueURL: url, maxMessages: 1, waitSeconds: 1, logger: quietLogger)
        let message = try #require(received.first)
        #expect(message.body.hasPrefix("input/"))
        #expect(message.receiveCount == 1)
        // Released at once, it comes back with a higher receive count.
        try await sqs.changeMessageVisibility(
            queueURL: url, receiptHandle: message.receiptHandle, timeout: 0, logger: quietLogger)
        var again: SQSMessage?
        for _ in 0..<20 where again == nil {
            again = try await sqs.receiveMessages(queueURL: url, maxMessages: 10, waitSeconds: 1, logger: quietLogger)
                .first { $0.messageID == message.messageID }
        }
        #expect(again?.receiveCount == 2)
        try await sqs.deleteMessage(queueURL: url, receiptHandle: again!.receiptHandle, logger: quietLogger)
        try await sqs.deleteQueue(queueURL: url, logger: quietLogger)
    }

    /// DeleteMessageBatch through the batcher, as the daemon deletes: full batches, the rest at finish, and a stale
    /// receipt handle reported for its own message while the others go.
    @Test func settledMessagesAreDeletedInBatches() async throws {
        let sqs = SQSClient(context: try TestEnvironment.motoContext())
        let url = try await sqs.createQueue(
            name: uniqueName("pz-del"), attributes: ["VisibilityTimeout": "60"],
            logger: quietLogger)
        for start in stride(from: 0, to: 23, by: 10) {
            let entries = (start..<min(start + 10, 23)).map { (id: "m\($0)", body: "k\($0)") }
            _ = try await sqs.sendMessageBatch(queueURL: url, entries: entries, logger: quietLogger)
        }
        var received: [SQSMessage] = []
        for _ in 0..<20 where received.count < 23 {
            received += try await sqs.receiveMessages(
                queueURL: url, maxMessages: 10, waitSeconds: 1, logger: quietLogger)
        }
        #expect(received.count == 23)
        let logs = CapturedLogs()
        let batcher = DeleteBatcher(client: sqs, queueURL: url, linger: .seconds(3600))
        var stale = received[5]
        stale.receiptHandle += "-stale"
        await withDeleteBatcher(batcher) {
            for (index, message) in received.enumerated() {
                var logger = logs.logger()
                logger[metadataKey: "sqs.message_id"] = "\(message.messageID)"
                await batcher.delete(index == 5 ? stale : message, logger: logger)
            }
        }
        let counts = try await sqs.messageCounts(queueURL: url, logger: quietLogger)
        #expect(counts.visible + counts.inFlight == 1, "only the message with the stale handle is left")
        let errors = logs.lines.filter { $0.hasPrefix("error") }
        #expect(errors.count == 1)
        #expect(errors.first?.contains("ReceiptHandleIsInvalid") == true)
        #expect(errors.first?.contains("sqs.message_id=\(received[5].messageID)") == true)
        try await sqs.deleteQueue(queueURL: url, logger: quietLogger)
    }

    @Test func longPollWaitsOnAnEmptyQueue() async throws {
        let sqs = SQSClient(context: try TestEnvironment.motoContext())
        let url = try await sqs.createQueue(name: uniqueName("pz-empty"), logger: quietLogger)
        let started = ContinuousClock.now
        let messages = try await sqs.receiveMessages(queueURL: url, waitSeconds: 2, logger: quietLogger)
        #expect(messages.isEmpty)
        #expect(ContinuousClock.now - started >= .seconds(1.5))
    }

    @Test func sqsErrorsAreTyped() async throws {
        let sqs = SQSClient(context: try TestEnvironment.motoContext())
        let missing = try TestEnvironment.endpoint(.moto) + "/123456789012/does-not-exist-\(uniqueName("x"))"
        await #expect {
            _ = try await sqs.getQueueAttributes(queueURL: missing, logger: quietLogger)
        } throws: { error in
            let e = error as? AWSError
            return e?.httpStatus == 400
                && (e?.code.contains("NonExistentQueue") == true || e?.shortCode == "QueueDoesNotExist")
        }
    }

    @Test func sqsRejectsAWrongSecret() async throws {
        var wrong = try TestEnvironment.motoCredentials()
        wrong.secretAccessKey = "wrong-secret"
        let sqs = SQSClient(
            context: TestEnvironment.context(endpoint: try TestEnvironment.endpoint(.moto), credentials: wrong))
        await #expect {
            _ = try await sqs.createQueue(name: uniqueName("pz-denied"), logger: quietLogger)
        } throws: { ($0 as? AWSError)?.httpStatus == 403 }
    }

    @Test func dynamoDBPutUpdateQuery() async throws {
        let ddb = try DynamoDBClient(context: try TestEnvironment.motoContext())
        let table = uniqueName("pz-ledger")
        try await ddb.createTable(table, partitionKey: "queue", sortKey: "task", logger: quietLogger)
        for i in 0..<3 {
            try await ddb.putItem(
                table: table, item: ["queue": .s("q1"), "task": .s("in/\(i)#1"), "state": .s("running")],
                logger: quietLogger)
        }
        try await ddb.updateItem(
            table: table, key: ["queue": .s("q1"), "task": .s("in/1#1")],
            update: "SET #s = :done, bytes = :b", names: ["#s": "state"],
            values: [":done": .s("done"), ":b": .number(42)], logger: quietLogger)
        let page = try await ddb.query(
            table: table, keyCondition: "#q = :q AND begins_with(task, :p)",
            names: ["#q": "queue"], values: [":q": .s("q1"), ":p": .s("in/")], logger: quietLogger)
        #expect(page.items.count == 3)
        let updated = page.items.first { $0["task"] == .s("in/1#1") }
        #expect(updated?["state"] == .s("done"))
        #expect(updated?["bytes"]?.int == 42)
    }

    @Test func ec2DescribeTagTerminate() async throws {
        let ec2 = try EC2Client(context: try TestEnvironment.motoContext())
        let queue = uniqueName("pz-fleet")
        let tagged = try await ec2.runInstances(
            imageID: "ami-12c6146b", count: 2, tags: ["parallelizer:queue": queue],
            logger: quietLogger)
        let untagged = try await ec2.runInstances(imageID: "ami-12c6146b", count: 1, logger: quietLogger)
        #expect(tagged.count == 2)
        try await ec2.createTags(resources: [tagged[0].instanceID], tags: ["Name": "worker-0"], logger: quietLogger)
        let found = try await ec2.describeInstances(
            filters: [
                ("tag:parallelizer:queue", [queue]),
                ("instance-state-name", ["pending", "running"]),
            ],
            logger: quietLogger)
        #expect(Set(found.map(\.instanceID)) == Set(tagged.map(\.instanceID)))
        #expect(found.first { $0.instanceID == tagged[0].instanceID }?.tags["Name"] == "worker-0")
        let states = try await ec2.terminateInstances(tagged.map(\.instanceID), logger: quietLogger)
        #expect(states.count == 2)
        let survivor = try await ec2.describeInstances(instanceIDs: untagged.map(\.instanceID), logger: quietLogger)
        #expect(survivor.first?.state == "running")
    }
}
