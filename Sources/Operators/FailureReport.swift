import AWSCore
import AWSServices
import Logging

/// One failure record the daemon wrote under `_failed/` in the results bucket, as `failures` reads it.
public struct FailureRecordSummary: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// An input given up (`_failed/<input key>.json`, or `_failed/_long-keys/` for a key too long to name).
        case input
        /// A message no input could be read from (`_failed/_bad-messages/`).
        case badMessage
        /// A message given back unrun on the last receive its dead-letter queue allows (`_failed/_unrun/`).
        case unrun
    }

    public var key: String
    public var kind: Kind
    public var input: String?
    public var reason: String
    public var exitStatus: String?
    public var attempts: Int?
    public var instanceID: String?
    public var time: String?
    public var durationSeconds: Double?
    public var stderrTail: String?
    public var messageID: String?

    public static func kind(ofKey key: String) -> Kind {
        if key.hasPrefix("_failed/_bad-messages/") { return .badMessage }
        if key.hasPrefix("_failed/_unrun/") { return .unrun }
        return .input
    }

    /// The record at `key`, from its JSON; nil when it is not a record the daemon writes.
    public init?(key: String, json: JSONValue) {
        guard let reason = json["reason"]?.stringValue else { return nil }
        self.key = key
        kind = Self.kind(ofKey: key)
        input = json["input"]?.stringValue
        self.reason = reason
        exitStatus = json["exitStatus"]?.stringValue
        attempts = json["attempts"]?.intValue
        instanceID = json["instanceId"]?.stringValue
        time = json["time"]?.stringValue
        if case .number(let n)? = json["durationSeconds"] { durationSeconds = n }
        stderrTail = json["stderrTail"]?.stringValue
        messageID = json["messageId"]?.stringValue
    }

    /// The record, for a person: every field, then the end of the command's stderr.
    public var text: String {
        var lines = ["record      s3://…/\(key)", "kind        \(kind.rawValue)"]
        if let input { lines.append("input       \(input)") }
        lines.append("reason      \(reason)")
        if let exitStatus { lines.append("exit        \(exitStatus)") }
        if let attempts { lines.append("attempts    \(attempts)") }
        if let durationSeconds { lines.append("seconds     \(durationSeconds)") }
        if let instanceID { lines.append("instance    \(instanceID)") }
        if let time { lines.append("time        \(time)") }
        if let messageID { lines.append("message     \(messageID)") }
        if let stderrTail, !stderrTail.isEmpty {
            lines.append("stderr (its end):")
            lines += stderrTail.split(separator: "\n", omittingEmptySubsequences: false).map { "  " + $0 }
        }
        return lines.joined(separator: "\n")
    }
}

/// The failure records grouped by reason, most frequent first: what went wrong across a run, in a screen.
public struct FailureReport: Sendable, Equatable, Codable {
    public struct Group: Sendable, Equatable, Codable {
        public var reason: String
        public var count: Int
        /// A few of its inputs (or records, for messages with none).
        public var examples: [String]
    }

    /// Records listed under `_failed/`.
    public var listed: Int
    /// Records read (at most the limit asked for).
    public var read: Int
    public var groups: [Group]

    /// A reason as a group's name: what differs between two records of one cause (a request id) left out.
    static func groupName(_ reason: String) -> String {
        var text = reason
        while let start = text.firstRange(of: " [request "), let end = text[start.upperBound...].firstIndex(of: "]") {
            text.removeSubrange(start.lowerBound...end)
        }
        return text.count > 200 ? String(text.prefix(200)) + "…" : text
    }

    /// Pure: groups `records`.
    public static func group(_ records: [FailureRecordSummary], listed: Int) -> FailureReport {
        var groups: [String: Group] = [:]
        var order: [String] = []
        for record in records {
            let name = groupName(record.reason)
            if groups[name] == nil {
                groups[name] = Group(reason: name, count: 0, examples: [])
                order.append(name)
            }
            groups[name]!.count += 1
            if groups[name]!.examples.count < 3 { groups[name]!.examples.append(record.input ?? record.key) }
        }
        let sorted = order.compactMap { groups[$0] }.enumerated().sorted {
            $0.element.count != $1.element.count ? $0.element.count > $1.element.count : $0.offset < $1.offset
        }.map(\.element)
        return FailureReport(listed: listed, read: records.count, groups: sorted)
    }

    /// Lists `_failed/` in `bucket` and reads up to `limit` records, `concurrency` at a time.
    public static func read(
        bucket: String, s3: S3Client, limit: Int, concurrency: Int = 16, logger: Logger
    ) async throws(AWSError) -> FailureReport {
        var keys: [String] = []
        var listed = 0
        try await s3.listAll(bucket: bucket, prefix: "_failed/", logger: logger) { page throws(AWSError) in
            listed += page.count
            for object in page where keys.count < limit && object.key.hasSuffix(".json") { keys.append(object.key) }
        }
        let records = try await readRecords(keys, bucket: bucket, s3: s3, concurrency: concurrency, logger: logger)
        return group(records, listed: listed)
    }

    /// The records at `keys`, in their order; a key that is not a record (or is gone) is left out.
    static func readRecords(
        _ keys: [String], bucket: String, s3: S3Client, concurrency: Int, logger: Logger
    ) async throws(AWSError) -> [FailureRecordSummary] {
        let results = await withTaskGroup(of: (Int, Result<FailureRecordSummary?, AWSError>).self) { group in
            var next = 0
            var found: [(Int, Result<FailureRecordSummary?, AWSError>)] = []
            func start() {
                guard next < keys.count else { return }
                let (index, key) = (next, keys[next])
                next += 1
                group.addTask {
                    do throws(AWSError) {
                        let bytes = try await s3.getObjectBytes(bucket: bucket, key: key, logger: logger)
                        return (
                            index,
                            .success((try? JSONValue.parse(bytes)).flatMap { FailureRecordSummary(key: key, json: $0) })
                        )
                    } catch  where error.httpStatus == 404 {
                        return (index, .success(nil))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            for _ in 0..<max(1, concurrency) { start() }
            while let result = await group.next() {
                found.append(result)
                start()
            }
            return found
        }
        var records: [(Int, FailureRecordSummary)] = []
        for (index, result) in results {
            if let record = try result.get() { records.append((index, record)) }
        }
        return records.sorted { $0.0 < $1.0 }.map(\.1)
    }

    public var text: String {
        var lines = ["\(listed) failure records" + (read < listed ? " (\(read) read)" : "")]
        for group in groups {
            lines.append("")
            lines.append("\(group.count) × \(group.reason)")
            for example in group.examples { lines.append("    \(example)") }
        }
        if !groups.isEmpty { lines += ["", "parallelizer failures show KEY --results s3://… shows one record whole."] }
        return lines.joined(separator: "\n")
    }
}
