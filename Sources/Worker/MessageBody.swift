import AWSCore
import AWSServices
import TaskLedger

/// What a message asks for.
public enum MessageRequest: Sendable, Equatable {
    /// One or more inputs (an S3 event can carry several records).
    case tasks([S3URI])
    /// S3's `s3:TestEvent`, sent when a notification is configured: delete it silently.
    case testEvent
    /// An S3 event some of whose records cannot be read: the readable ones are tasks, the others are recorded as
    /// a bad message (one record naming each), never dropped with the rest.
    case partialEvent([S3URI], unreadable: [String])
}

/// Why a message cannot be processed, ever. Such a message is recorded under `_failed/` and deleted.
public struct BadMessage: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public var description: String { reason }
}

/// Parses SQS message bodies in the forms the daemon accepts:
/// - a key in `inputBucket` (aws-parallelizer's form; relative to `inputPrefix` when one is set);
/// - `s3://bucket/key`;
/// - JSON `{"bucket": "...", "key": "..."}` (bucket optional: `inputBucket`);
/// - an S3 event notification (also wrapped in an SNS notification), keys URL-decoded with `+` as space.
public struct MessageParser: Sendable {
    public var inputBucket: String
    public var inputPrefix: String

    public init(inputBucket: String, inputPrefix: String = "") {
        self.inputBucket = inputBucket
        self.inputPrefix = inputPrefix
    }

    /// S3's own limit on key length, in bytes.
    static let maxKeyBytes = 1024

    public func parse(_ body: String) throws(BadMessage) -> MessageRequest {
        var text = body
        while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
        if text.trimmingSpaces.isEmpty { throw BadMessage(reason: "the message body is empty") }
        let trimmed = text.trimmingSpaces
        if trimmed.hasPrefix("{") {
            guard let json = try? JSONValue.parse(trimmed) else {
                throw BadMessage(reason: "the message body starts with '{' but is not valid JSON")
            }
            return try parseJSON(json)
        }
        if trimmed.hasPrefix("s3://") {
            guard let uri = S3URI(trimmed), !uri.key.isEmpty else {
                throw BadMessage(reason: "'\(preview(trimmed))' is not s3://bucket/key")
            }
            return .tasks([try input(bucket: uri.bucket, key: uri.key)])
        }
        // Always relative to `inputPrefix`, even when it starts like it: `data/x` under `data/` is `data/data/x`.
        // (A key that happens to start with the prefix must not change meaning; `enqueue --body-form key` strips it.)
        return .tasks([try input(bucket: inputBucket, key: inputPrefix + text)])
    }

    func parseJSON(_ json: JSONValue) throws(BadMessage) -> MessageRequest {
        // SNS wraps the S3 event as a string in "Message".
        if json["Type"]?.stringValue == "Notification", let inner = json["Message"]?.stringValue {
            guard let parsed = try? JSONValue.parse(inner) else {
                throw BadMessage(reason: "the SNS notification's Message is not JSON")
            }
            return try parseJSON(parsed)
        }
        if json["Event"]?.stringValue == "s3:TestEvent" { return .testEvent }
        if let records = json["Records"]?.arrayValue {
            var inputs: [S3URI] = []
            var unreadable: [String] = []
            for (index, record) in records.enumerated() {
                let event = record["eventName"]?.stringValue ?? ""
                guard event.isEmpty || event.hasPrefix("ObjectCreated") else { continue }
                do {
                    inputs.append(try eventInput(record, index: index))
                } catch {
                    unreadable.append(error.reason)
                }
            }
            guard !inputs.isEmpty else {
                if let first = unreadable.first {
                    throw BadMessage(reason: unreadable.count == 1 ? first : unreadable.joined(separator: "; "))
                }
                throw BadMessage(reason: "the S3 event has no ObjectCreated records")
            }
            return unreadable.isEmpty ? .tasks(inputs) : .partialEvent(inputs, unreadable: unreadable)
        }
        if let object = json.objectValue, let keyValue = object["key"] {
            guard let key = keyValue.stringValue else { throw BadMessage(reason: "JSON 'key' is not a string") }
            var bucket = inputBucket
            if let b = object["bucket"] {
                guard let name = b.stringValue, !name.isEmpty else {
                    throw BadMessage(reason: "JSON 'bucket' is not a bucket name")
                }
                bucket = name
            }
            return .tasks([try input(bucket: bucket, key: key)])
        }
        throw BadMessage(reason: "JSON message of the wrong shape: expected {\"bucket\", \"key\"} or an S3 event")
    }

    /// One `ObjectCreated` record's input; a record that cannot be read is that record's trouble alone.
    func eventInput(_ record: JSONValue, index: Int) throws(BadMessage) -> S3URI {
        guard let bucket = record["s3"]?["bucket"]?["name"]?.stringValue,
            let rawKey = record["s3"]?["object"]?["key"]?.stringValue
        else {
            throw BadMessage(reason: "S3 event record \(index) has no s3.bucket.name or s3.object.key")
        }
        guard bucket == inputBucket else {
            throw BadMessage(
                reason: "S3 event record \(index) is for bucket '\(bucket)', not the input bucket '\(inputBucket)'")
        }
        guard let key = String(validating: URIEncoding.decodeBytes(rawKey, plusIsSpace: true), as: UTF8.self) else {
            throw BadMessage(reason: "S3 event record \(index): the object key is not UTF-8 once URL-decoded")
        }
        do {
            return try input(bucket: bucket, key: key)
        } catch {
            throw BadMessage(reason: "S3 event record \(index): \(error.reason)")
        }
    }

    func input(bucket: String, key: String) throws(BadMessage) -> S3URI {
        guard !key.isEmpty else { throw BadMessage(reason: "the input key is empty") }
        guard key.utf8.count <= Self.maxKeyBytes else {
            throw BadMessage(reason: "the input key is \(key.utf8.count) bytes long; S3 keys are at most 1024")
        }
        guard !key.utf8.contains(0) else { throw BadMessage(reason: "the input key contains a NUL byte") }
        guard S3URI.mayBeBucketName(bucket) else {
            throw BadMessage(reason: "'\(preview(bucket))' is not a bucket name")
        }
        return S3URI(bucket: bucket, key: key)
    }

    func preview(_ text: String) -> String { text.count > 80 ? String(text.prefix(80)) + "…" : text }
}

/// Where a task's files go, and where its output goes in S3.
public enum TaskPaths {
    /// A safe local file name for an input key: its last path component, with control characters replaced, never
    /// empty, `.` or `..`, and at most 200 bytes (the extension kept). It can never name a path outside its folder.
    public static func localName(forKey key: String) -> String {
        let last = key.split(separator: "/", omittingEmptySubsequences: true).last.map(String.init) ?? ""
        var name = String(last.map { $0.isASCII && ($0.asciiValue! < 0x20 || $0.asciiValue! == 0x7f) ? "_" : $0 })
        if name.isEmpty || name == "." || name == ".." { name = "input" }
        if name.utf8.count > 200 {
            let ext =
                name.split(separator: ".").count > 1 ? "." + String(name.split(separator: ".").last!.prefix(20)) : ""
            var stem = ""
            for ch in name where stem.utf8.count + ch.utf8.count + ext.utf8.count <= 200 { stem.append(ch) }
            name = stem + ext
        }
        return name
    }

    /// Where an output goes: `OutputContract.outputKey`, shared with the operators' tools.
    public static func outputKey(inputKey: String, inputPrefix: String, outputPrefix: String, outputName: String)
        -> String
    {
        OutputContract.outputKey(
            inputKey: inputKey, inputPrefix: inputPrefix, outputPrefix: outputPrefix, outputName: outputName)
    }
}
