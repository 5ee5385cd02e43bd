import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import Synchronization
import Worker

// In-memory doubles of the worker loop's three seams (Worker/Seams.swift), for unit tests of the loop and of every
// message fate. They record what was asked of them; the end-to-end suites keep the real SQS, S3 and processes.

/// What the real client throws for a request made in a cancelled task: it never goes out. The doubles do the same, so
/// that a settling call the code forgot to run uncancelled fails in the unit tests as it would in the daemon.
func cancelledRequest(_ service: String) -> AWSError? {
    Task.isCancelled
        ? AWSError(kind: .transport(.cancelled), service: service, code: "Cancelled", message: "cancelled") : nil
}

/// An AWS error as a service sends it.
public func serviceError(_ code: String, status: Int, service: String = "s3") -> AWSError {
    AWSError(kind: .service, service: service, httpStatus: status, code: code, message: code, requestID: "req-1")
}

/// A queue that hands out the messages it was given and records what became of each.
public final class MemoryQueue: WorkQueue {
    public enum Event: Sendable, Equatable, CustomStringConvertible {
        case received(String)
        case visibility(String, Int)
        case deleted(String)

        public var description: String {
            switch self {
            case .received(let id): return "received \(id)"
            case .visibility(let id, let seconds): return "visibility \(id) \(seconds)"
            case .deleted(let id): return "deleted \(id)"
            }
        }
    }

    struct State {
        var waiting: [SQSMessage]
        var events: [Event] = []
        var refuseVisibility: AWSError?
        var receives = 0
    }

    private let state: Mutex<State>

    public init(_ messages: [SQSMessage] = []) { state = Mutex(State(waiting: messages)) }

    public var events: [Event] { state.withLock { $0.events } }
    /// Receive calls made so far (a test waits for one to be under way).
    public var receives: Int { state.withLock { $0.receives } }
    /// What became of the message: its events after the receive.
    public func fate(of id: String) -> [Event] {
        events.filter {
            switch $0 {
            case .visibility(let m, _), .deleted(let m): return m == id
            case .received: return false
            }
        }
    }

    /// Makes every ChangeMessageVisibility fail with `error` (nil: succeed).
    public func refuseVisibility(_ error: AWSError?) { state.withLock { $0.refuseVisibility = error } }

    public func add(_ messages: [SQSMessage]) { state.withLock { $0.waiting += messages } }

    /// Hands out what waits; with nothing waiting, a long poll that lasts until it is cancelled (or `waitSeconds`).
    public func receive(count: Int, waitSeconds: Int, logger: Logger) async throws(AWSError) -> [SQSMessage] {
        let taken = state.withLock { s -> [SQSMessage] in
            s.receives += 1
            let taken = Array(s.waiting.prefix(count))
            s.waiting.removeFirst(taken.count)
            s.events += taken.map { .received($0.messageID) }
            return taken
        }
        if !taken.isEmpty { return taken }
        // A long poll, as SQS's: what arrives while it waits is handed out at once.
        let deadline = ContinuousClock.now + .seconds(waitSeconds)
        while ContinuousClock.now < deadline {
            do {
                try await Task.sleep(for: .milliseconds(20))
            } catch {
                throw AWSError(kind: .transport(.cancelled), service: "sqs", code: "Cancelled", message: "cancelled")
            }
            let arrived = state.withLock { s -> [SQSMessage] in
                let taken = Array(s.waiting.prefix(count))
                s.waiting.removeFirst(taken.count)
                s.events += taken.map { .received($0.messageID) }
                return taken
            }
            if !arrived.isEmpty { return arrived }
        }
        return []
    }

    public func changeVisibility(_ message: SQSMessage, to seconds: Int, logger: Logger) async throws(AWSError) {
        if let cancelled = cancelledRequest("sqs") { throw cancelled }
        let refusal = state.withLock { s -> AWSError? in
            if s.refuseVisibility == nil { s.events.append(.visibility(message.messageID, seconds)) }
            return s.refuseVisibility
        }
        if let refusal { throw refusal }
    }

    public func delete(_ message: SQSMessage, logger: Logger) async {
        state.withLock { $0.events.append(.deleted(message.messageID)) }
    }

    public func counts(logger: Logger) async throws(AWSError) -> SQSClient.MessageCounts {
        SQSClient.MessageCounts(visible: state.withLock { $0.waiting.count }, inFlight: 0, delayed: 0)
    }
}

/// Objects in memory, by `bucket/key`; refusals by bucket or by exact object.
public final class MemoryStore: ObjectStore {
    struct State {
        var objects: [String: [UInt8]] = [:]
        /// Each object's user metadata and ETag (a counter, new at every write).
        var metadata: [String: [String: String]] = [:]
        var etags: [String: String] = [:]
        var writes = 0
        var refusals: [String: AWSError] = [:]
        var puts = 0
    }

    private let state = Mutex(State())

    public init() {}

    public func add(_ object: S3URI, _ text: String) {
        state.withLock { $0.objects["\(object.bucket)/\(object.key)"] = Array(text.utf8) }
    }

    /// Every call on `bucketOrObject` (`bucket` or `bucket/key`) fails with `error`.
    public func refuse(_ bucketOrObject: String, with error: AWSError?) {
        state.withLock { $0.refusals[bucketOrObject] = error }
    }

    public func text(_ object: S3URI) -> String? {
        state.withLock { $0.objects["\(object.bucket)/\(object.key)"] }.map { String(decoding: $0, as: UTF8.self) }
    }

    /// Every key in `bucket`, sorted.
    public func keys(in bucket: String) -> [String] {
        state.withLock { s in
            s.objects.keys.filter { $0.hasPrefix(bucket + "/") }.map { String($0.dropFirst(bucket.count + 1)) }
        }
        .sorted()
    }

    private func refusal(_ object: S3URI) -> AWSError? {
        state.withLock { $0.refusals["\(object.bucket)/\(object.key)"] ?? $0.refusals[object.bucket] }
    }

    public func download(_ object: S3URI, to path: String, logger: Logger) async throws(AWSError) -> Downloaded {
        if let cancelled = cancelledRequest("s3") { throw cancelled }
        if let refusal = refusal(object) { throw refusal }
        let key = "\(object.bucket)/\(object.key)"
        guard let (bytes, etag) = state.withLock({ s in s.objects[key].map { ($0, s.etags[key] ?? "\"etag-0\"") } })
        else {
            throw serviceError("NoSuchKey", status: 404)
        }
        LocalFile.write(path, bytes)
        return Downloaded(size: Int64(bytes.count), etag: etag)
    }

    /// Writes as S3 does under `write`'s condition: 412 PreconditionFailed when it does not hold.
    public func upload(file: FileSource, to object: S3URI, write: WriteOptions, logger: Logger) async throws(AWSError) {
        if let cancelled = cancelledRequest("s3") { throw cancelled }
        if let refusal = refusal(object) { throw refusal }
        guard let bytes = Self.read(file) else { throw AWSError.client("s3", "cannot read \(file)") }
        let written = state.withLock { s -> Bool in
            let key = "\(object.bucket)/\(object.key)"
            switch write.condition {
            case .always: break
            case .ifAbsent: if s.objects[key] != nil { return false }
            // (An object added by the test has the ETag a HEAD reports for it.)
            case .ifMatch(let etag): if s.objects[key] == nil || (s.etags[key] ?? "\"etag-0\"") != etag { return false }
            }
            s.writes += 1
            s.objects[key] = bytes
            s.etags[key] = "\"etag-\(s.writes)\""
            s.metadata[key] = Dictionary(write.metadata.map { ($0.0.lowercased(), $0.1) }) { $1 }
            return true
        }
        if !written { throw serviceError("PreconditionFailed", status: 412) }
    }

    public func head(_ object: S3URI, logger: Logger) async throws(AWSError) -> S3ObjectHead? {
        if let refusal = refusal(object) { throw refusal }
        return state.withLock { s in
            let key = "\(object.bucket)/\(object.key)"
            guard let bytes = s.objects[key] else { return nil }
            return S3ObjectHead(
                etag: s.etags[key] ?? "\"etag-0\"", size: Int64(bytes.count), metadata: s.metadata[key] ?? [:])
        }
    }

    /// The metadata an upload gave `object`.
    public func metadata(_ object: S3URI) -> [String: String]? {
        state.withLock { $0.metadata["\(object.bucket)/\(object.key)"] }
    }

    public func keys(under prefix: S3URI, logger: Logger) async throws(AWSError) -> [String] {
        if let refusal = state.withLock({ $0.refusals[prefix.bucket] }) { throw refusal }
        return keys(in: prefix.bucket).filter { $0.hasPrefix(prefix.key) }
    }

    public func delete(_ object: S3URI, logger: Logger) async throws(AWSError) {
        if let refusal = refusal(object) { throw refusal }
        _ = state.withLock { $0.objects.removeValue(forKey: "\(object.bucket)/\(object.key)") }
    }

    /// A file's whole content, by path or through its descriptor (at its offsets, as the real client reads it).
    static func read(_ file: FileSource) -> [UInt8]? {
        switch file {
        case .path(let path): return LocalFile.read(path, limit: 1 << 30)
        case .descriptor(let fd):
            guard let size = LocalFile.size(file) else { return nil }
            var bytes = [UInt8](repeating: 0, count: Int(size))
            let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, Int(size), 0) }
            return got == Int(size) ? bytes : nil
        }
    }

    public func put(
        _ bytes: [UInt8], to object: S3URI, contentType: String, onlyIfAbsent: Bool,
        logger: Logger
    ) async throws(AWSError) {
        if let cancelled = cancelledRequest("s3") { throw cancelled }
        if let refusal = refusal(object) { throw refusal }
        let exists = state.withLock { s -> Bool in
            let key = "\(object.bucket)/\(object.key)"
            if onlyIfAbsent && s.objects[key] != nil { return true }
            s.objects[key] = bytes
            s.puts += 1
            return false
        }
        if exists { throw serviceError("PreconditionFailed", status: 412) }
    }
}

/// Runs a scripted command instead of a process: `script` gets what would be run (argv, the task's files) and
/// returns how it ended, writing files as the real command would.
public struct ScriptedRunner: TaskRunner {
    public let script: @Sendable (CommandRun) async -> ProcessOutcome
    private let runs = Counter()

    public init(_ script: @escaping @Sendable (CommandRun) async -> ProcessOutcome) { self.script = script }

    /// How many times a command ran.
    public var count: Int { runs.value.load(ordering: .relaxed) }

    public func run(_ command: CommandRun) async throws(SpawnError) -> ProcessOutcome {
        runs.value.add(1, ordering: .relaxed)
        return await script(command)
    }

    final class Counter: Sendable { let value = Atomic<Int>(0) }

    /// A command that copies its input to `<input>.out` and names it (exit 0).
    public static var copying: ScriptedRunner {
        ScriptedRunner { command in
            let input = command.argv.last!
            LocalFile.write(input + ".out", LocalFile.read(input, limit: 1 << 20) ?? [])
            write(command.stdout, "some chatter\n\(input).out\n")
            return .exited(0)
        }
    }

    /// A command that exits with `code` and says why on stderr.
    public static func failing(_ code: Int32) -> ScriptedRunner {
        ScriptedRunner { command in
            write(command.stderr, "something went wrong\n")
            return .exited(code)
        }
    }

    /// A command that runs until its task is cancelled, as a real one killed at a stop's grace end.
    /// Writes `name` in its working folder (saying which input it ran on) and prints that name: every command names
    /// the same output, as `result-$$` did when `$$` was 1 for all.
    public static func naming(_ name: String) -> ScriptedRunner {
        ScriptedRunner { command in
            LocalFile.write(command.directory + "/" + name, Array("from \(command.argv.last!)".utf8))
            write(command.stdout, name + "\n")
            return .exited(0)
        }
    }

    public static var endless: ScriptedRunner {
        ScriptedRunner { _ in
            while !Task.isCancelled { try? await Task.sleep(for: .milliseconds(5)) }
            return .interrupted
        }
    }
}

/// A received message: `body`, received `count` times.
public func received(_ id: String, _ body: String, count: Int = 1) -> SQSMessage {
    SQSMessage(
        messageID: id, receiptHandle: "rh-\(id)", body: body, attributes: ["ApproximateReceiveCount": "\(count)"])
}

/// Writes `text` to a descriptor, as a command writes to its stdout or stderr.
public func write(_ fd: Int32, _ text: String) {
    let bytes = Array(text.utf8)
    _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
}
