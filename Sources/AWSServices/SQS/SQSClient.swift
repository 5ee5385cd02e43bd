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
        /// The error of the single call this entry went in, when it went alone (`BatchFallback`).
        public var cause: AWSError?

        public init(id: String, code: String, message: String, senderFault: Bool, cause: AWSError? = nil) {
            self.id = id
            self.code = code
            self.message = message
            self.senderFault = senderFault
            self.cause = cause
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
    /// From a `SendMessageBatch` or `DeleteMessageBatch` reply.
    init(reply: JSONValue) {
        successful = (reply["Successful"]?.arrayValue ?? []).compactMap { $0["Id"]?.stringValue }
        failed = (reply["Failed"]?.arrayValue ?? []).compactMap { entry in
            guard let id = entry["Id"]?.stringValue else { return nil }
            return .init(
                id: id, code: entry["Code"]?.stringValue ?? "", message: entry["Message"]?.stringValue ?? "",
                senderFault: entry["SenderFault"]?.boolValue ?? false)
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
    //
    // Inputs and replies are untyped JSON (`JSONValue`), written and read in one pass: these calls run for every
    // task, and Codable cost more than the rest of a call's own work.

    static let receiveAttributes: JSONValue = .array(
        ["ApproximateReceiveCount", "SentTimestamp", "ApproximateFirstReceiveTimestamp"].map { .string($0) })

    /// Long-polls for up to `maxMessages` messages, waiting up to `waitSeconds` (max 20) when the queue is empty.
    public func receiveMessages(
        queueURL: String, maxMessages: Int = 1, waitSeconds: Int = 20,
        visibilityTimeout: Int? = nil, logger: Logger
    ) async throws(AWSError) -> [SQSMessage] {
        var input: [String: JSONValue] = [
            "QueueUrl": .string(queueURL), "MaxNumberOfMessages": .number(Double(maxMessages)),
            "WaitTimeSeconds": .number(Double(waitSeconds)),
            "AttributeNames": Self.receiveAttributes, "MessageSystemAttributeNames": Self.receiveAttributes,
        ]
        if let visibilityTimeout { input["VisibilityTimeout"] = .number(Double(visibilityTimeout)) }
        // The server holds a long poll open for up to waitSeconds; give the transfer that plus a margin.
        let timeouts = Timeouts(connect: 10, lowSpeedBytes: 0, lowSpeedSeconds: 0, total: waitSeconds + 15)
        let reply = try await json.call(
            "ReceiveMessage", value: .object(input), endpoint: try endpoint(queueURL: queueURL),
            timeouts: timeouts, logger: logger)
        return try Self.messages(in: reply)
    }

    /// The messages of a ReceiveMessage reply; one without an id or receipt handle makes the reply unusable.
    static func messages(in reply: JSONValue) throws(AWSError) -> [SQSMessage] {
        guard let items = reply["Messages"] else { return [] }
        guard let list = items.arrayValue else {
            throw AWSError.badResponse("sqs", "ReceiveMessage reply: Messages is not a list", requestID: nil)
        }
        var messages: [SQSMessage] = []
        messages.reserveCapacity(list.count)
        for item in list {
            guard let id = item["MessageId"]?.stringValue, let handle = item["ReceiptHandle"]?.stringValue else {
                throw AWSError.badResponse(
                    "sqs", "ReceiveMessage reply: a message without MessageId or ReceiptHandle",
                    requestID: nil)
            }
            messages.append(
                SQSMessage(
                    messageID: id, receiptHandle: handle, body: item["Body"]?.stringValue ?? "",
                    attributes: Self.strings(item["Attributes"])))
        }
        return messages
    }

    /// A JSON object of strings (attributes), other members left out.
    static func strings(_ value: JSONValue?) -> [String: String] {
        guard let object = value?.objectValue else { return [:] }
        return object.compactMapValues(\.stringValue)
    }

    public func deleteMessage(queueURL: String, receiptHandle: String, logger: Logger) async throws(AWSError) {
        _ = try await json.call(
            "DeleteMessage",
            value: .object([
                "QueueUrl": .string(queueURL),
                "ReceiptHandle": .string(receiptHandle),
            ]),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
    }

    /// Deletes up to 10 messages in one call. Entries that fail (a receipt handle gone stale, say) are reported,
    /// not thrown; a failure of the whole call is thrown.
    public func deleteMessageBatch(
        queueURL: String, entries: [(id: String, receiptHandle: String)],
        logger: Logger
    ) async throws(AWSError) -> SQSBatchResult {
        try await batch(
            "DeleteMessageBatch", queueURL: queueURL, field: "ReceiptHandle",
            entries: entries.map { ($0.id, $0.receiptHandle) }, logger: logger)
    }

    /// Sets how long the message stays invisible from now (0 releases it at once).
    public func changeMessageVisibility(
        queueURL: String, receiptHandle: String, timeout: Int,
        logger: Logger
    ) async throws(AWSError) {
        let input: JSONValue = .object([
            "QueueUrl": .string(queueURL), "ReceiptHandle": .string(receiptHandle),
            "VisibilityTimeout": .number(Double(timeout)),
        ])
        _ = try await json.call(
            "ChangeMessageVisibility", value: input, endpoint: try endpoint(queueURL: queueURL),
            logger: logger)
    }

    /// Sends up to 10 messages in one call. Entries that fail are reported, not thrown: the caller retries them.
    public func sendMessageBatch(
        queueURL: String, entries: [(id: String, body: String)],
        logger: Logger
    ) async throws(AWSError) -> SQSBatchResult {
        try await batch(
            "SendMessageBatch", queueURL: queueURL, field: "MessageBody",
            entries: entries.map { ($0.id, $0.body) }, logger: logger)
    }

    /// A batch call whose entries are an `Id` and one string `field` each.
    private func batch(
        _ operation: String, queueURL: String, field: String, entries: [(id: String, value: String)],
        logger: Logger
    ) async throws(AWSError) -> SQSBatchResult {
        let input: JSONValue = .object([
            "QueueUrl": .string(queueURL),
            "Entries": .array(entries.map { .object(["Id": .string($0.id), field: .string($0.value)]) }),
        ])
        let reply = try await json.call(
            operation, value: input, endpoint: try endpoint(queueURL: queueURL), logger: logger)
        return SQSBatchResult(reply: reply)
    }

    @discardableResult
    public func sendMessage(queueURL: String, body: String, logger: Logger) async throws(AWSError) -> String {
        let reply = try await json.call(
            "SendMessage",
            value: .object([
                "QueueUrl": .string(queueURL),
                "MessageBody": .string(body),
            ]),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
        guard let id = reply["MessageId"]?.stringValue else {
            throw AWSError.badResponse("sqs", "SendMessage reply without MessageId", requestID: nil)
        }
        return id
    }

    /// Queue attributes (`ApproximateNumberOfMessages`, `ApproximateNumberOfMessagesNotVisible`, `RedrivePolicy`...).
    public func getQueueAttributes(
        queueURL: String, names: [String] = ["All"],
        logger: Logger
    ) async throws(AWSError) -> [String: String] {
        let reply = try await json.call(
            "GetQueueAttributes",
            value: .object(["QueueUrl": .string(queueURL), "AttributeNames": .array(names.map { .string($0) })]),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
        return Self.strings(reply["Attributes"])
    }

    /// The queue's tags (ListQueueTags).
    public func listQueueTags(queueURL: String, logger: Logger) async throws(AWSError) -> [String: String] {
        let reply = try await json.call(
            "ListQueueTags", value: .object(["QueueUrl": .string(queueURL)]),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
        return Self.strings(reply["Tags"])
    }

    /// Adds or replaces tags on the queue (TagQueue).
    public func tagQueue(queueURL: String, tags: [String: String], logger: Logger) async throws(AWSError) {
        _ = try await json.call(
            "TagQueue",
            value: .object(["QueueUrl": .string(queueURL), "Tags": .object(tags.mapValues { .string($0) })]),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
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
            queueURL: queueURL,
            names: [
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                "ApproximateNumberOfMessagesDelayed",
            ], logger: logger)
        return MessageCounts(attributes: a)
    }

    public func getQueueURL(name: String, logger: Logger) async throws(AWSError) -> String {
        let reply = try await json.call(
            "GetQueueUrl", value: .object(["QueueName": .string(name)]),
            endpoint: try context.endpoint("sqs"), logger: logger)
        return try Self.queueURL(in: reply, operation: "GetQueueUrl")
    }

    /// Creates a queue (or returns the existing one with the same attributes).
    public func createQueue(name: String, attributes: [String: String] = [:], logger: Logger) async throws(AWSError)
        -> String
    {
        let input: JSONValue = .object([
            "QueueName": .string(name), "Attributes": .object(attributes.mapValues { .string($0) }),
        ])
        let reply = try await json.call(
            "CreateQueue", value: input, endpoint: try context.endpoint("sqs"), logger: logger)
        return try Self.queueURL(in: reply, operation: "CreateQueue")
    }

    static func queueURL(in reply: JSONValue, operation: String) throws(AWSError) -> String {
        guard let url = reply["QueueUrl"]?.stringValue else {
            throw AWSError.badResponse("sqs", "\(operation) reply without QueueUrl", requestID: nil)
        }
        return url
    }

    public func deleteQueue(queueURL: String, logger: Logger) async throws(AWSError) {
        _ = try await json.call(
            "DeleteQueue", value: .object(["QueueUrl": .string(queueURL)]),
            endpoint: try endpoint(queueURL: queueURL), logger: logger)
    }
}
