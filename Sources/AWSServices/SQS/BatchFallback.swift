import AWSCore
import Logging
import Synchronization

extension SQSBatchResult.Failure {
    /// The entry's failure as an error, for the same judgement as a whole call's (`setupProblem`, retrying).
    public var error: AWSError {
        cause
            ?? AWSError(
                kind: .service, service: "sqs", httpStatus: senderFault ? 400 : 500, code: code, message: message)
    }
}

/// Sends SQS batch calls, and falls back to single calls when a whole batch call is refused in a way that sending
/// it again cannot fix.
///
/// On AWS a batch action needs no permission of its own: `sqs:DeleteMessage` allows `DeleteMessageBatch`,
/// `sqs:SendMessage` allows `SendMessageBatch`. Other servers build the permission from the API's name (moto asks
/// for `sqs:DeleteMessageBatch`), and a policy written for AWS then refuses every batch. So when a whole batch call
/// fails with an error that is not worth retrying (access denied, an unknown action, a missing queue, refused
/// credentials), its entries go again one per call. If any of those succeed, the batch action is the problem: that
/// is said once, and from then on entries go one per call. If they fail too, their errors are the answer, and the
/// next batch is tried as a batch again.
public final class BatchFallback: Sendable {
    /// The batch action and its single-call twin, for the log line (`DeleteMessageBatch`, `DeleteMessage`).
    public let batchAction: String
    public let singleAction: String
    private let singlesOnly = Atomic<Bool>(false)

    public init(batchAction: String, singleAction: String) {
        self.batchAction = batchAction
        self.singleAction = singleAction
    }

    /// True once a refused batch was followed by single calls that worked.
    public var usesSingleCalls: Bool { singlesOnly.load(ordering: .relaxed) }

    /// Sends `entries` (each with an `Id` unique in the call) as one batch, or one per call after a refusal.
    /// Throws only what a batch call threw that single calls were not tried for (an error that may pass).
    public func send<Entry: Sendable>(
        _ entries: [Entry], id: (Entry) -> String,
        batch: ([Entry]) async throws(AWSError) -> SQSBatchResult,
        single: (Entry) async throws(AWSError) -> Void,
        logger: Logger
    ) async throws(AWSError) -> SQSBatchResult {
        if usesSingleCalls { return await oneByOne(entries, id: id, single: single) }
        let refusal: AWSError
        do {
            return try await batch(entries)
        } catch {
            guard error.kind == .service, !error.isRetryable else { throw error }
            refusal = error
        }
        let result = await oneByOne(entries, id: id, single: single)
        if !result.successful.isEmpty && !singlesOnly.exchange(true, ordering: .relaxed) {
            logger.warning(
                "\(batchAction) is refused but \(singleAction) works: one message per call from now on",
                metadata: [
                    "aws.code": "\(refusal.code)", "error": "\(refusal)",
                ])
        }
        return result
    }

    private func oneByOne<Entry: Sendable>(
        _ entries: [Entry], id: (Entry) -> String,
        single: (Entry) async throws(AWSError) -> Void
    ) async -> SQSBatchResult {
        var successful: [String] = []
        var failed: [SQSBatchResult.Failure] = []
        for entry in entries {
            do {
                try await single(entry)
                successful.append(id(entry))
            } catch {
                failed.append(
                    .init(
                        id: id(entry), code: error.code, message: error.message, senderFault: !error.isRetryable,
                        cause: error))
            }
        }
        return SQSBatchResult(successful: successful, failed: failed)
    }
}
