import AWSCore
import AWSServices
import Logging

// The three things the worker loop talks to. The daemon uses SQS, S3 and real processes; the unit tests of the
// loop and of every message fate use in-memory doubles (TestSupport) through these same protocols.

/// The queue, as the loop sees it.
public protocol WorkQueue: Sendable {
    /// Long-polls for up to `count` messages (1...10), waiting up to `waitSeconds` when there are none.
    func receive(count: Int, waitSeconds: Int, logger: Logger) async throws(AWSError) -> [SQSMessage]
    /// How long the message stays hidden from now on; 0 makes it visible at once.
    func changeVisibility(_ message: SQSMessage, to seconds: Int, logger: Logger) async throws(AWSError)
    /// Deletes a settled message. It may wait a moment for others to share a batch call; it never throws: a failed
    /// delete only means the message comes back and is processed again.
    func delete(_ message: SQSMessage, logger: Logger) async
    /// What the queue holds: visible, in flight, delayed.
    func counts(logger: Logger) async throws(AWSError) -> SQSClient.MessageCounts
}

/// The object store, as the loop sees it.
public protocol ObjectStore: Sendable {
    /// Streams the object to `path`; returns its size and ETag.
    func download(_ object: S3URI, to path: String, logger: Logger) async throws(AWSError) -> Downloaded
    /// Uploads a file (the daemon gives the descriptor it opened and checked the command's output on), with
    /// `write`'s metadata, on its condition (412 when it does not hold).
    func upload(file: FileSource, to object: S3URI, write: WriteOptions, logger: Logger) async throws(AWSError)
    /// The object's ETag and metadata, or nil when there is none.
    func head(_ object: S3URI, logger: Logger) async throws(AWSError) -> S3ObjectHead?
    /// Writes a small object; with `onlyIfAbsent`, S3 refuses it (412) when the key exists.
    func put(
        _ bytes: [UInt8], to object: S3URI, contentType: String, onlyIfAbsent: Bool,
        logger: Logger) async throws(AWSError)
    /// The keys under `prefix` (its bucket, and the start of its key), every page of them.
    func keys(under prefix: S3URI, logger: Logger) async throws(AWSError) -> [String]
    /// Deletes an object (a checkpoint's file); one that is not there is no error.
    func delete(_ object: S3URI, logger: Logger) async throws(AWSError)
}

/// One run of the command, as the loop describes it.
public struct CommandRun: Sendable {
    public var argv: [String]
    public var environment: [String: String]
    /// The working directory.
    public var directory: String
    /// Descriptors of the command's stdout and stderr: the daemon's, which it reads back afterwards.
    public var stdout: Int32
    public var stderr: Int32
    public var user: RunAsUser?
    /// Seconds before its process group is killed; nil for no limit.
    public var timeout: Int?
    /// The task's own folder for /tmp, where the runner gives commands one (`Isolation.privateTmp`).
    public var privateTmp: String?
    /// Seconds between SIGTERM and SIGKILL when it is stopped; nil for the runner's own.
    public var killGrace: Double?
    /// The task's cgroup, which the command enters before it runs (`TaskCgroup`).
    public var cgroup: TaskCgroup?
    /// Where the runner leaves what the command used.
    public var usage: UsageBox?

    public init(
        argv: [String], environment: [String: String], directory: String, stdout: Int32, stderr: Int32,
        user: RunAsUser?, timeout: Int?, privateTmp: String? = nil
    ) {
        self.privateTmp = privateTmp
        self.argv = argv
        self.environment = environment
        self.directory = directory
        self.stdout = stdout
        self.stderr = stderr
        self.user = user
        self.timeout = timeout
    }
}

/// An object on disk: its size, and the ETag of the version read (a checkpoint is of that version alone).
public struct Downloaded: Sendable, Equatable {
    public var size: Int64
    public var etag: String?
    public init(size: Int64, etag: String?) {
        self.size = size
        self.etag = etag
    }
}

/// What runs the command.
public protocol TaskRunner: Sendable {
    /// Runs the command to its end. Cancelling the calling task kills its process group and returns `.interrupted`.
    func run(_ command: CommandRun) async throws(SpawnError) -> ProcessOutcome
}

extension S3Client: ObjectStore {
    public func download(_ object: S3URI, to path: String, logger: Logger) async throws(AWSError) -> Downloaded {
        let info = try await getObject(bucket: object.bucket, key: object.key, to: path, logger: logger)
        return Downloaded(size: info.size, etag: info.etag.isEmpty ? nil : info.etag)
    }

    public func upload(file: FileSource, to object: S3URI, write: WriteOptions, logger: Logger) async throws(AWSError) {
        try await putObject(bucket: object.bucket, key: object.key, file: file, write: write, logger: logger)
    }

    public func head(_ object: S3URI, logger: Logger) async throws(AWSError) -> S3ObjectHead? {
        try await headObjectMetadata(bucket: object.bucket, key: object.key, logger: logger)
    }

    public func delete(_ object: S3URI, logger: Logger) async throws(AWSError) {
        try await deleteObject(bucket: object.bucket, key: object.key, logger: logger)
    }

    public func keys(under prefix: S3URI, logger: Logger) async throws(AWSError) -> [String] {
        var keys: [String] = []
        try await listAll(bucket: prefix.bucket, prefix: prefix.key, logger: logger) { page throws(AWSError) in
            keys += page.map(\.key)
        }
        return keys
    }

    public func put(
        _ bytes: [UInt8], to object: S3URI, contentType: String, onlyIfAbsent: Bool,
        logger: Logger
    ) async throws(AWSError) {
        try await putObject(
            bucket: object.bucket, key: object.key, bytes: bytes, contentType: contentType,
            ifNoneMatch: onlyIfAbsent ? "*" : nil, logger: logger)
    }
}

extension ProcessRunner: TaskRunner {
    public func run(_ command: CommandRun) async throws(SpawnError) -> ProcessOutcome {
        try await run(
            argv: command.argv, environment: command.environment, directory: command.directory,
            stdout: command.stdout, stderr: command.stderr, user: command.user,
            timeout: command.timeout, privateTmp: command.privateTmp, killGrace: command.killGrace,
            cgroup: command.cgroup, usage: command.usage)
    }
}

/// Runs `work` to its end even when the calling task is cancelled. What settles a message (its release, its delete,
/// its failure record) must still go out after a stop's grace has cancelled the task it belongs to.
func uncancelled<T: Sendable>(_ work: @escaping @Sendable () async -> T) async -> T {
    await Task { await work() }.value
}
