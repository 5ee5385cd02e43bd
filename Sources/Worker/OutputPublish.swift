import AWSCore
import AWSServices
import Logging

/// How an output's upload ended (`OutputIdentity`).
enum Published: Sendable, Equatable {
    /// Written where no object had the key, or over an earlier run of the same input.
    case uploaded
    /// This task's own output was there already, from an earlier receive of the same message.
    case landedBefore
    /// The key holds another input's output (or an object parallelizer did not write): left as it is.
    case taken(String)
}

extension MessageProcessor {
    /// Uploads an output create-only, with its identity in its metadata, and settles a clash with what is there.
    func publish(
        _ descriptor: Int32, to object: S3URI, identity: OutputIdentity, logger: Logger
    ) async throws(AWSError) -> Published {
        var condition = WriteCondition.ifAbsent
        // A few rounds: the key may change between a refused write and the HEAD that follows (another worker's
        // write, or a delete); each round reads it again.
        for _ in 0..<4 {
            do {
                try await store.upload(
                    file: .descriptor(descriptor), to: object,
                    write: WriteOptions(metadata: identity.metadata, condition: condition), logger: logger)
                return .uploaded
            } catch  where error.httpStatus == 412 || error.code == "ConditionalRequestConflict" {
                // Taken: read whose it is.
            } catch  where error.httpStatus == 404 && condition != .ifAbsent {
                // The object replaced on its ETag was deleted meanwhile (S3 answers If-Match on no object with 404).
                condition = .ifAbsent
                continue
            }
            let existing = try await store.head(object, logger: logger)
            guard let existing else {
                condition = .ifAbsent
                continue
            }
            switch OutputClash.judge(existing, mine: identity, adoptUnmarked: config.adoptUnmarkedOutputs) {
            case .landedBefore: return .landedBefore
            case .taken(let owner): return .taken(owner)
            case .replace(let etag):
                logger.notice(
                    "replacing the output of an earlier run of this input (queued again)",
                    metadata: ["s3.key": "\(object.key)", "s3.etag": "\(etag)"])
                condition = .ifMatch(etag)
            }
        }
        throw AWSError(
            kind: .service, service: "s3", httpStatus: 412, code: "PreconditionFailed",
            message: "the output key kept changing between conditional writes")
    }
}
