import AWSCore
import AWSServices
import Logging

/// Progress of a run as the queue and the output bucket show it.
public struct QueueStatus: Sendable, Equatable, Codable {
    public var queueURL: String
    public var visible: Int
    public var inFlight: Int
    public var delayed: Int
    /// Visible messages in the dead-letter queue named by the redrive policy, when there is one.
    public var deadLetterQueueURL: String?
    public var deadLetters: Int?
    public var outputs: Int?
    public var failureRecords: Int?

    /// Reads the queue's counts, its dead-letter queue's, and (with `output`) counts outputs and `_failed/` records.
    public static func read(queueURL: String, output: S3URI?, context: AWSContext,
                            logger: Logger) async throws(AWSError) -> QueueStatus {
        let sqs = SQSClient(context: context)
        let a = try await sqs.getQueueAttributes(queueURL: queueURL, logger: logger)
        let counts = SQSClient.MessageCounts(attributes: a)
        var status = QueueStatus(queueURL: queueURL, visible: counts.visible, inFlight: counts.inFlight,
                                 delayed: counts.delayed)
        if let policy = a["RedrivePolicy"], let json = try? JSONValue.parse(policy),
            let arn = json["deadLetterTargetArn"]?.stringValue, let name = arn.split(separator: ":").last
        {
            let dlq = try await sqs.getQueueURL(name: String(name), logger: logger)
            status.deadLetterQueueURL = dlq
            let d = try await sqs.getQueueAttributes(queueURL: dlq, names: ["ApproximateNumberOfMessages"], logger: logger)
            status.deadLetters = Int(d["ApproximateNumberOfMessages"] ?? "") ?? 0
        }
        if let output {
            var outputs = 0, failures = 0
            try await S3Client(context: context).listAll(bucket: output.bucket, prefix: output.key, logger: logger) {
                page throws(AWSError) in
                for object in page {
                    if object.key.hasPrefix(output.key + "_failed/") { failures += 1 } else { outputs += 1 }
                }
            }
            status.outputs = outputs
            status.failureRecords = failures
        }
        return status
    }

    /// Lines for a person.
    public var text: String {
        var lines = ["queue       \(queueURL)",
                     "visible     \(visible)", "in flight   \(inFlight)", "delayed     \(delayed)"]
        if let deadLetters { lines.append("dead letter \(deadLetters)") }
        if let outputs { lines.append("outputs     \(outputs)") }
        if let failureRecords { lines.append("failed      \(failureRecords)") }
        return lines.joined(separator: "\n")
    }
}
