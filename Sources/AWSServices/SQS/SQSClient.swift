import AWSCore
import FoundationEssentials
import HTTPCurl
import Logging

/// A received message.
public struct SQSMessage: Sendable, Equatable {
    public var messageID: String
    public var receiptHandle: String
    public var body: String
    /// System attributes (`ApproximateReceiveCount`, `SentTimestamp`, ...).
    public var attributes: [String: String]

    public init(messageID: String, receiptHandle: String, body: String, attributes: [String: String]) {
        self.messageID = messageID
        self.receiptHandle = receiptHandle
        self.body = body
        self.attributes = attributes
    }

    /// How many times SQS has handed this message out, this time included.
    public var receiveCount: Int { Int(attributes["ApproximateReceiveCount"] ?? "") ?? 1 }
}

/// The outcome of SendMessageBatch: the ids that went in, and those that did not, with why.
public struct SQSBatchResult: Sendable {
    public struct Failure: Sendable {
        public var id: String
        public var code: String
        public var message: String
        /// True when the entry itself is wrong (retrying it will not help).
        public var senderFault: Bool

        public init(id: String, code: String, message: String, senderFault: Bool) {
            self.id = id
            self.code = code
            self.message = message
            self.senderFault = senderFault
        }
    }
    public var successful: [String]
    public var failed: [Failure]

    public init(successful: [String], failed: [Failure]) {
        self.successful = successful
        self.failed = failed
    }
}

extension SQSBatchResult {
    init(_ output: SQSClient.BatchOutput) {
        successful = (output.Successful ?? []).map(\.Id)
        failed = (output.Failed ?? []).map {
            .init(id: $0.Id, code: $0.Code ?? "", message: $0.Message ?? "", senderFault: $0.SenderFault ?? false)
        }
    }
}

/// SQS over the AWS JSON 1.0 protocol (what current SDKs use; moto accepts it too).
public struct SQSClient: Sendable {
    public let context: AWSContext
    let json: JSONProtocol

    /// Each queue URL's endpoint, worked out once (the region is parsed from the URL).
    private let endpoints = Memo<ServiceEndpoint>()

    public init(context: AWSContext) {
        self.context = context
        self.json = JSONProtocol(targetPrefix: "AmazonSQS", client: context.client)
    }

    /// The endpoint for a queue: a custom endpoint when one is set, otherwise the queue URL's own region (so a
    /// queue in another region is signed for that region, not ours).
    public func endpoint(queueURL: String) throws(AWSError) -> ServiceEndpoint {
        try endpoints.value(for: queueURL) { () throws(AWSError) in
            try context.endpoint("sqs", region: Self.region(ofQueueURL: queueURL))
        }
    }

    /// `us-west-2` from `https://sqs.us-west-2.amazonaws.com/...` or `https://us-west-2.queue.amazonaws.com/...`.
    public static func region(ofQueueURL url: String) -> String? {
        guard let host = ParsedURL(url)?.host, host.hasSuffix(".amazonaws.com") || host.hasSuffix(".amazonaws.com.cn")
        else { return nil }
        let labels = host.split(separator: ".").map(String.init)
        if labels.first == "sqs", labels.count >= 4 { return labels[1] }
        if labels.count >= 4, labels[1] == "queue" { return labels[0] }
        return nil
    }

    // MARK: - Operations

    struct ReceiveInput: Encodable {
        var QueueUrl: String
        var MaxNumberOfMessages: Int
        var WaitTimeSeconds: Int
        var VisibilityTimeout: Int?
        var AttributeNames: [String]
        var MessageSystemAttributeNames: [String]
    }
    struct ReceiveOutput: Decodable {
        struct Message: Decodable {
            var MessageId: String
            var ReceiptHandle: String
            var Body: String?
            var Attributes: [String: String]?
        }
        var Messages: [Message]?
    }

    /// Long-polls for up to `maxMessages` messages, waiting up to `waitSeconds` (max 20) when the queue is empty.
    public func receiveMessages(queueURL: String, maxMessages: Int = 1, waitSeconds: Int = 20,
                                visibilityTimeout: Int? = nil, logger: Logger) async throws(AWSError) -> [SQSMessage] {
        let names = ["ApproximateReceiveCount", "SentTimestamp", "ApproximateFirstReceiveTimestamp"]
        let input = ReceiveInput(QueueUrl: queueURL, MaxNumberOfMessages: maxMessages, WaitTimeSeconds: waitSeconds,
                                 VisibilityTimeout: visibilityTimeout, AttributeNames: names,
                                 MessageSystemAttributeNames: names)
        // The server holds a long poll open for up to waitSeconds; give the transfer that plus a margin.
        let timeouts = Timeouts(connect: 10, lowSpeedBytes: 0, lowSpeedSeconds: 0, total: waitSeconds + 15)
        let output: ReceiveOutput = try await json.call("ReceiveMessage", input, endpoint: try endpoint(queueURL: queueURL),
                                                        timeouts: timeouts, logger: logger)
        return (output.Messages ?? []).map {
            SQSMessage(messageID: $0.MessageId, receiptHandle: $0.ReceiptHandle, body: $0.Body ?? "",
                       attributes: $0.Attributes ?? [:])
        }
    }

    struct DeleteInput: Encodable {
        var QueueUrl: String
        var ReceiptHandle: String
    }

    public func deleteMessage(queueURL: String, receiptHandle: String, logger: Logger) async throws(AWSError) {
        let _: EmptyOutput = try await json.call("DeleteMessage", DeleteInput(QueueUrl: queueURL, ReceiptHandle: receiptHandle),
                                                 endpoint: try endpoint(queueURL: queueURL), logger: logger)
    }

    struct DeleteBatchInput: Encodable {
        struct Entry: Encodable {
            var Id: String
            var ReceiptHandle: String
        }
        var QueueUrl: String
        var Entries: [Entry]
    }

    /// Deletes up to 10 messages in one call. Entries that fail (a receipt handle gone stale, say) are reported,
    /// not thrown; a failure of the whole call is thrown.
    public func deleteMessageBatch(queueURL: String, entries: [(id: String, receiptHandle: String)],
                                   logger: Logger) async throws(AWSError) -> SQSBatchResult {
        let input = DeleteBatchInput(QueueUrl: queueURL, Entries: entries.map { .init(Id: $0.id, ReceiptHandle: $0.receiptHandle) })
        let output: BatchOutput = try await json.call("DeleteMessageBatch", input, endpoint: try endpoint(queueURL: queueURL),
                                                      logger: logger)
        return SQSBatchResult(output)
    }

    struct VisibilityInput: Encodable {
        var QueueUrl: String
        var ReceiptHandle: String
        var VisibilityTimeout: Int
    }

    /// Sets how long the message stays invisible from now (0 releases it at once).
    public func changeMessageVisibility(queueURL: String, receiptHandle: String, timeout: Int,
                                        logger: Logger) async throws(AWSError) {
        let _: EmptyOutput = try await json.call(
            "ChangeMessageVisibility",
            VisibilityInput(QueueUrl: queueURL, ReceiptHandle: receiptHandle, VisibilityTimeout: timeout),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
    }

    struct BatchInput: Encodable {
        struct Entry: Encodable {
            var Id: String
            var MessageBody: String
        }
        var QueueUrl: String
        var Entries: [Entry]
    }
    struct BatchOutput: Decodable {
        struct Ok: Decodable { var Id: String }
        struct Failed: Decodable {
            var Id: String
            var Code: String?
            var Message: String?
            var SenderFault: Bool?
        }
        var Successful: [Ok]?
        var Failed: [Failed]?
    }

    /// Sends up to 10 messages in one call. Entries that fail are reported, not thrown: the caller retries them.
    public func sendMessageBatch(queueURL: String, entries: [(id: String, body: String)],
                                 logger: Logger) async throws(AWSError) -> SQSBatchResult {
        let input = BatchInput(QueueUrl: queueURL, Entries: entries.map { .init(Id: $0.id, MessageBody: $0.body) })
        let output: BatchOutput = try await json.call("SendMessageBatch", input, endpoint: try endpoint(queueURL: queueURL),
                                                      logger: logger)
        return SQSBatchResult(output)
    }

    struct SendInput: Encodable {
        var QueueUrl: String
        var MessageBody: String
    }
    struct SendOutput: Decodable { var MessageId: String }

    @discardableResult
    public func sendMessage(queueURL: String, body: String, logger: Logger) async throws(AWSError) -> String {
        let output: SendOutput = try await json.call("SendMessage", SendInput(QueueUrl: queueURL, MessageBody: body),
                                                     endpoint: try endpoint(queueURL: queueURL), logger: logger)
        return output.MessageId
    }

    struct AttributesInput: Encodable {
        var QueueUrl: String
        var AttributeNames: [String]
    }
    struct AttributesOutput: Decodable { var Attributes: [String: String]? }

    /// Queue attributes (`ApproximateNumberOfMessages`, `ApproximateNumberOfMessagesNotVisible`, `RedrivePolicy`...).
    public func getQueueAttributes(queueURL: String, names: [String] = ["All"],
                                   logger: Logger) async throws(AWSError) -> [String: String] {
        let output: AttributesOutput = try await json.call(
            "GetQueueAttributes", AttributesInput(QueueUrl: queueURL, AttributeNames: names),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
        return output.Attributes ?? [:]
    }

    /// The queue's approximate message counts.
    public struct MessageCounts: Sendable, Equatable {
        public var visible: Int
        public var inFlight: Int
        public var delayed: Int
        /// Everything not yet deleted: what must reach zero before a fleet may stop.
        public var total: Int { visible + inFlight + delayed }

        public init(visible: Int, inFlight: Int, delayed: Int) {
            self.visible = visible
            self.inFlight = inFlight
            self.delayed = delayed
        }

        /// The counts from a GetQueueAttributes reply.
        public init(attributes a: [String: String]) {
            visible = Int(a["ApproximateNumberOfMessages"] ?? "") ?? 0
            inFlight = Int(a["ApproximateNumberOfMessagesNotVisible"] ?? "") ?? 0
            delayed = Int(a["ApproximateNumberOfMessagesDelayed"] ?? "") ?? 0
        }
    }

    public func messageCounts(queueURL: String, logger: Logger) async throws(AWSError) -> MessageCounts {
        let a = try await getQueueAttributes(
            queueURL: queueURL, names: ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                                        "ApproximateNumberOfMessagesDelayed"], logger: logger)
        return MessageCounts(attributes: a)
    }

    struct GetURLInput: Encodable { var QueueName: String }
    struct URLOutput: Decodable { var QueueUrl: String }

    public func getQueueURL(name: String, logger: Logger) async throws(AWSError) -> String {
        let output: URLOutput = try await json.call("GetQueueUrl", GetURLInput(QueueName: name),
                                                    endpoint: try context.endpoint("sqs"), logger: logger)
        return output.QueueUrl
    }

    struct CreateInput: Encodable {
        var QueueName: String
        var Attributes: [String: String]
    }

    /// Creates a queue (or returns the existing one with the same attributes).
    public func createQueue(name: String, attributes: [String: String] = [:], logger: Logger) async throws(AWSError) -> String {
        let output: URLOutput = try await json.call("CreateQueue", CreateInput(QueueName: name, Attributes: attributes),
                                                    endpoint: try context.endpoint("sqs"), logger: logger)
        return output.QueueUrl
    }

    struct QueueInput: Encodable { var QueueUrl: String }

    public func deleteQueue(queueURL: String, logger: Logger) async throws(AWSError) {
        let _: EmptyOutput = try await json.call("DeleteQueue", QueueInput(QueueUrl: queueURL),
                                                 endpoint: try endpoint(queueURL: queueURL), logger: logger)
    }
}
