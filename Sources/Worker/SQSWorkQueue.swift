import AWSCore
import AWSServices
import Logging

/// The daemon's queue: SQS, with settled messages deleted in batches (`DeleteBatcher`).
struct SQSWorkQueue: WorkQueue {
    let sqs: SQSClient
    let queueURL: String
    let plan: VisibilityPlan
    let deletes: DeleteBatcher

    func receive(count: Int, waitSeconds: Int, logger: Logger) async throws(AWSError) -> [SQSMessage] {
        try await sqs.receiveMessages(
            queueURL: queueURL, maxMessages: count, waitSeconds: waitSeconds,
            visibilityTimeout: plan.visibilityTimeout, logger: logger)
    }

    func changeVisibility(_ message: SQSMessage, to seconds: Int, logger: Logger) async throws(AWSError) {
        try await sqs.changeMessageVisibility(
            queueURL: queueURL, receiptHandle: message.receiptHandle, timeout: seconds,
            logger: logger)
    }

    func delete(_ message: SQSMessage, logger: Logger) async {
        await deletes.delete(message, logger: logger)
    }

    func counts(logger: Logger) async throws(AWSError) -> SQSClient.MessageCounts {
        try await sqs.messageCounts(queueURL: queueURL, logger: logger)
    }
}
