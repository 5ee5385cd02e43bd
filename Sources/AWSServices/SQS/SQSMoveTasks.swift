import AWSCore
import Logging

// SQS's dead-letter redrive as a task of its own (StartMessageMoveTask, ListMessageMoveTasks), for `redrive`.

extension SQSClient {
    /// A move task's state (`ListMessageMoveTasks`).
    public struct MoveTask: Sendable, Equatable {
        public var taskHandle: String?
        public var status: String
        public var moved: Int
        public var failureReason: String?
        /// When it started, seconds since 1970 (the reply gives milliseconds).
        public var startedEpoch: Double?
    }

    /// The URL of the queue an ARN names (`arn:aws:sqs:REGION:ACCOUNT:NAME`), asked in its region for its account.
    public func queueURL(ofARN arn: String, logger: Logger) async throws(AWSError) -> String {
        let parts = arn.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count >= 6 else { throw AWSError.client("sqs", "not a queue ARN: \(arn)") }
        var input: [String: JSONValue] = ["QueueName": .string(parts[5])]
        if !parts[4].isEmpty { input["QueueOwnerAWSAccountId"] = .string(parts[4]) }
        let reply = try await json.call(
            "GetQueueUrl", value: .object(input),
            endpoint: try context.endpoint("sqs", region: parts[3].isEmpty ? nil : parts[3]), logger: logger)
        return try Self.queueURL(in: reply, operation: "GetQueueUrl")
    }

    /// The queues whose redrive policy names this dead-letter queue (ListDeadLetterSourceQueues, first page).
    public func deadLetterSourceQueues(of queueURL: String, logger: Logger) async throws(AWSError) -> [String] {
        let reply = try await json.call(
            "ListDeadLetterSourceQueues", value: .object(["QueueUrl": .string(queueURL)]),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
        return (reply["queueUrls"]?.arrayValue ?? []).compactMap(\.stringValue)
    }

    /// Starts moving the dead letters of `sourceARN`; without `destinationARN`, each goes back to its own source queue.
    public func startMessageMoveTask(sourceARN: String, destinationARN: String?, logger: Logger) async throws(AWSError)
        -> String
    {
        var input: [String: JSONValue] = ["SourceArn": .string(sourceARN)]
        if let destinationARN { input["DestinationArn"] = .string(destinationARN) }
        let reply = try await json.call(
            "StartMessageMoveTask", value: .object(input),
            endpoint: try context.endpoint("sqs", region: Self.region(ofARN: sourceARN)), logger: logger)
        guard let handle = reply["TaskHandle"]?.stringValue else {
            throw AWSError.badResponse("sqs", "StartMessageMoveTask reply has no TaskHandle")
        }
        return handle
    }

    /// `us-east-1` from `arn:aws:sqs:us-east-1:123456789012:name`; nil for anything else.
    static func region(ofARN arn: String) -> String? {
        let parts = arn.split(separator: ":", omittingEmptySubsequences: false)
        return parts.count >= 6 && !parts[3].isEmpty ? String(parts[3]) : nil
    }

    public func listMessageMoveTasks(sourceARN: String, logger: Logger) async throws(AWSError) -> [MoveTask] {
        let reply = try await json.call(
            "ListMessageMoveTasks", value: .object(["SourceArn": .string(sourceARN), "MaxResults": .number(10)]),
            endpoint: try context.endpoint("sqs", region: Self.region(ofARN: sourceARN)), logger: logger)
        return (reply["Results"]?.arrayValue ?? []).map {
            MoveTask(
                taskHandle: $0["TaskHandle"]?.stringValue, status: $0["Status"]?.stringValue ?? "",
                moved: $0["ApproximateNumberOfMessagesMoved"]?.intValue ?? 0,
                failureReason: $0["FailureReason"]?.stringValue,
                startedEpoch: $0["StartedTimestamp"]?.intValue.map { Double($0) / 1000 })
        }
    }
}

/// A queue's `RedrivePolicy` attribute: where its dead letters go, and after how many receives.
public struct RedrivePolicy: Sendable, Equatable {
    public var deadLetterTargetARN: String
    public var maxReceiveCount: Int?

    /// The policy in a queue's attributes (GetQueueAttributes); nil when it has none, or one that does not parse.
    public init?(attributes: [String: String]) {
        guard let text = attributes["RedrivePolicy"], let json = try? JSONValue.parse(text),
            let arn = json["deadLetterTargetArn"]?.stringValue
        else { return nil }
        deadLetterTargetARN = arn
        // SQS writes it as a number; some tools as a string.
        maxReceiveCount = json["maxReceiveCount"].flatMap { $0.intValue ?? $0.stringValue.flatMap { Int($0) } }
    }
}
