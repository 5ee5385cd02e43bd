import AWSCore
import AWSServices
import Logging
import Synchronization

// The seams where a call's failure is classified, once: every queue and bucket call of the message path goes through
// these wrappers, which tell the dead-end watch (`DeadEnds`) what the call touched and how it ended. The message path
// itself never reports a call: it only decides what a failure means for its own message.

/// The message a call serves, set around a message's handling (`MessageProcessor.handle`): the dead-end watch counts
/// refusals by task, and an object call's arguments do not say which message it is for.
enum CallSubject {
    @TaskLocal static var messageID: String?
}

/// Numbers calls that serve no message (a receive, a drain check): each is a subject of its own.
private final class CallNumbers: Sendable {
    private let next = Atomic(0)
    func take(_ kind: String) -> String { "\(kind)-\(next.add(1, ordering: .relaxed).newValue)" }
}

/// How a call ended, as the watch sees it: an answer that shows the set-up works for it (a success, but also a
/// refused condition or a missing key: the service read the request and the resource is there), or a failure.
///
/// A call cut short by a stop says nothing about the set-up: one cancelled, or (`endsAtStop`: a receive, a download,
/// which a stop ends) one that failed once a stop was asked for.
private func report<T>(
    _ call: DaemonCall, to watch: DeadEnds, resource: String, subject: @autoclosure () -> String,
    endsAtStop: (() -> Bool)? = nil, answered: (AWSError) -> Bool = { _ in false },
    _ body: () async throws(AWSError) -> T
) async throws(AWSError) -> T {
    do {
        let value = try await body()
        watch.succeeded(call)
        return value
    } catch {
        if answered(error) {
            watch.succeeded(call)
        } else if !Task.isCancelled && endsAtStop?() != true {
            watch.failed(call, resource: resource, subject: subject(), error: error)
        }
        throw error
    }
}

/// The queue, every call reported to the watch. A delete goes through the `DeleteBatcher`, whose batch replies are
/// reported where they arrive (`Daemon.run`).
struct WatchedQueue<Base: WorkQueue>: WorkQueue {
    let base: Base
    let watch: DeadEnds
    let queueURL: String
    /// Whether a stop was asked for.
    let stopping: @Sendable () -> Bool
    private let numbers = CallNumbers()

    init(_ base: Base, watch: DeadEnds, queueURL: String, stopping: @escaping @Sendable () -> Bool = { false }) {
        self.base = base
        self.watch = watch
        self.queueURL = queueURL
        self.stopping = stopping
    }

    func receive(count: Int, waitSeconds: Int, logger: Logger) async throws(AWSError) -> [SQSMessage] {
        try await report(
            .receive, to: watch, resource: queueURL, subject: numbers.take("receive"), endsAtStop: stopping
        ) {
            () throws(AWSError) in try await base.receive(count: count, waitSeconds: waitSeconds, logger: logger)
        }
    }

    func changeVisibility(_ message: SQSMessage, to seconds: Int, logger: Logger) async throws(AWSError) {
        try await report(.changeVisibility, to: watch, resource: queueURL, subject: message.messageID) {
            () throws(AWSError) in try await base.changeVisibility(message, to: seconds, logger: logger)
        }
    }

    func delete(_ message: SQSMessage, logger: Logger) async { await base.delete(message, logger: logger) }

    func counts(logger: Logger) async throws(AWSError) -> SQSClient.MessageCounts {
        try await report(.queueAttributes, to: watch, resource: queueURL, subject: numbers.take("check")) {
            () throws(AWSError) in try await base.counts(logger: logger)
        }
    }
}

/// The object store, every call about the input and output buckets reported to the watch. Only the input bucket's
/// downloads say anything about the set-up: a message may name any bucket.
struct WatchedStore<Base: ObjectStore>: ObjectStore {
    let base: Base
    let watch: DeadEnds
    let inputBucket: String
    /// Whether a stop was asked for.
    let stopping: @Sendable () -> Bool
    private let numbers = CallNumbers()

    init(_ base: Base, watch: DeadEnds, inputBucket: String, stopping: @escaping @Sendable () -> Bool = { false }) {
        self.base = base
        self.watch = watch
        self.inputBucket = inputBucket
        self.stopping = stopping
    }

    private var subject: String { CallSubject.messageID ?? numbers.take("call") }

    func download(_ object: S3URI, to path: String, logger: Logger) async throws(AWSError) -> Downloaded {
        guard object.bucket == inputBucket else { return try await base.download(object, to: path, logger: logger) }
        // NoSuchKey: the bucket answered for the key, so the role may read it.
        return try await report(
            .getInput, to: watch, resource: "s3://\(object.bucket)", subject: subject, endsAtStop: stopping,
            answered: { $0.httpStatus == 404 && $0.code == "NoSuchKey" }
        ) { () throws(AWSError) in try await base.download(object, to: path, logger: logger) }
    }

    func upload(file: FileSource, to object: S3URI, write: WriteOptions, logger: Logger) async throws(AWSError) {
        // A refused condition (412, or S3's 409 for a concurrent conditional write), or a key replaced on its ETag
        // that was deleted meanwhile (404), is the bucket's answer: the write itself is allowed.
        try await report(
            .putOutput, to: watch, resource: "s3://\(object.bucket)", subject: subject,
            answered: {
                $0.httpStatus == 412 || $0.code == "ConditionalRequestConflict"
                    || ($0.httpStatus == 404 && write.condition != .ifAbsent)
            }
        ) { () throws(AWSError) in try await base.upload(file: file, to: object, write: write, logger: logger) }
    }

    func head(_ object: S3URI, logger: Logger) async throws(AWSError) -> S3ObjectHead? {
        try await report(.headOutput, to: watch, resource: "s3://\(object.bucket)", subject: subject) {
            () throws(AWSError) in try await base.head(object, logger: logger)
        }
    }

    func put(
        _ bytes: [UInt8], to object: S3URI, contentType: String, onlyIfAbsent: Bool, logger: Logger
    ) async throws(AWSError) {
        try await report(
            .putRecord, to: watch, resource: "s3://\(object.bucket)", subject: subject,
            answered: { onlyIfAbsent && $0.httpStatus == 412 }
        ) { () throws(AWSError) in
            try await base.put(bytes, to: object, contentType: contentType, onlyIfAbsent: onlyIfAbsent, logger: logger)
        }
    }

    /// A listing needs s3:ListBucket, which the daemon only uses for its release notes: a refusal there falls back
    /// to counting receives (`ReleaseNotes`), and is no dead end.
    func keys(under prefix: S3URI, logger: Logger) async throws(AWSError) -> [String] {
        try await base.keys(under: prefix, logger: logger)
    }

    /// Only checkpoints are deleted: their clean-up is no task's outcome, and no dead end.
    func delete(_ object: S3URI, logger: Logger) async throws(AWSError) {
        try await base.delete(object, logger: logger)
    }
}
