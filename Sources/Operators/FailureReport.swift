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
    /// Records read (at most the limit asked for, spread over the whole listing when there are more).
    public var read: Int
    /// Objects read that are not records (not JSON, without a reason, or that could not be fetched).
    public var unreadable = 0
    public var groups: [Group]
    /// Reasons beyond the first `maxGroups`, with how many records they hold.
    public var otherReasons = 0
    public var otherRecords = 0

    /// Groups shown; the rest are counted (reasons that name a key make one group per record).
    public static let maxGroups = 50

    /// A reason as a group's name: what differs between two records of one cause (a request id) left out.
    static func groupName(_ reason: String) -> String {
        var text = reason
        while let start = text.firstRange(of: " [request "), let end = text[start.upperBound...].firstIndex(of: "]") {
            text.removeSubrange(start.lowerBound...end)
        }
        return text.count > 200 ? String(text.prefix(200)) + "…" : text
    }

    /// Pure: groups `records`.
    public static func group(_ records: [FailureRecordSummary], listed: Int, unreadable: Int = 0) -> FailureReport {
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
        var report = FailureReport(
            listed: listed, read: records.count + unreadable, unreadable: unreadable,
            groups: Array(sorted.prefix(maxGroups)))
        report.otherReasons = max(0, sorted.count - maxGroups)
        report.otherRecords = sorted.dropFirst(maxGroups).reduce(0) { $0 + $1.count }
        return report
    }

    /// Lists `_failed/` in `bucket` and reads up to `limit` records, `concurrency` at a time: all of them when there
    /// are no more, else a sample spread evenly over the listing (every k-th key, so that no one folder of inputs
    /// stands for the run). The records' stderr is not kept: `failures show` reads one whole.
    public static func read(
        bucket: String, s3: S3Client, limit: Int, concurrency: Int = 16, logger: Logger
    ) async throws(AWSError) -> FailureReport {
        var keys: [String] = []
        try await s3.listAll(bucket: bucket, prefix: "_failed/", logger: logger) { page throws(AWSError) in
            keys += page.map(\.key).filter { $0.hasSuffix(".json") }
        }
        let listed = keys.count
        if keys.count > limit {
            let step = Double(keys.count) / Double(limit)
            keys = (0..<limit).map { keys[Int(Double($0) * step)] }
        }
        let (records, unreadable) = await readRecords(
            keys, bucket: bucket, s3: s3, concurrency: concurrency, logger: logger)
        return group(records, listed: listed, unreadable: unreadable)
    }

    /// The records at `keys`, in their order, and how many could not be read as records. One that cannot be fetched
    /// (a throttle past the retries, a KMS key) is counted, not the end of the report; one gone meanwhile is left out.
    static func readRecords(
        _ keys: [String], bucket: String, s3: S3Client, concurrency: Int, logger: Logger
    ) async -> ([FailureRecordSummary], unreadable: Int) {
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
                        var record = (try? JSONValue.parse(bytes)).flatMap { FailureRecordSummary(key: key, json: $0) }
                        record?.stderrTail = nil
                        return (index, .success(record))
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
        var unreadable = 0
        for (index, result) in results {
            switch result {
            case .success(let record?): records.append((index, record))
            case .success(nil): unreadable += 1
            case .failure(let error) where error.httpStatus == 404: continue
            case .failure(let error):
                logger.warning(
                    "cannot read a failure record", metadata: ["s3.key": "\(keys[index])", "error": "\(error)"])
                unreadable += 1
            }
        }
        return (records.sorted { $0.0 < $1.0 }.map(\.1), unreadable)
    }

    public var text: String {
        var lines = [
            "\(listed) failure records"
                + (read < listed ? " (a sample of \(read) read, spread over them)" : "")
                + (unreadable > 0 ? "; \(unreadable) could not be read" : "")
        ]
        for group in groups {
            lines.append("")
            lines.append("\(group.count) × \(group.reason)")
            for example in group.examples { lines.append("    \(example)") }
        }
        if otherReasons > 0 { lines += ["", "\(otherRecords) more records under \(otherReasons) other reasons"] }
        if !groups.isEmpty { lines += ["", "parallelizer failures show KEY --results s3://… shows one record whole."] }
        return lines.joined(separator: "\n")
    }
}
