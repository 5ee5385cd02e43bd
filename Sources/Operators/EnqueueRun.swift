import AWSCore
import AWSServices
import Logging
import TaskLedger

/// How `enqueue` writes a message body for an input.
public enum BodyForm: String, Sendable, CaseIterable {
    /// `{"bucket":"B","key":"K"}`: any key, read back exactly. The default.
    case json
    /// `s3://B/K`: any key that does not end in white space (the daemon trims a body's ends).
    case s3uri
    /// The bare key (aws-parallelizer's form), for consumers that expect it: relative to the daemon's
    /// `inputPrefix`, which the daemon puts back. The daemon reads a bare body after stripping line ends and telling
    /// JSON and URIs apart by their first characters, so a key outside the prefix, or one that starts with `{` or
    /// `s3://` (after white space), ends in a line break, or is only white space, cannot be sent this way and is
    /// refused.
    case key

    /// The body for `key` in `bucket` (nil: the daemon's `inputBucket`); nil when this form cannot say it: a bare
    /// key that would be misread, or an `s3://` URI without a bucket.
    public func body(bucket: String?, key fullKey: String, inputPrefix: String = "") -> String? {
        var key = fullKey
        if self == .key {
            guard key.hasPrefix(inputPrefix), key.count > inputPrefix.count else { return nil }
            key = String(key.dropFirst(inputPrefix.count))
        }
        switch self {
        case .json:
            var members: [String: JSONValue] = ["key": .string(fullKey)]
            if let bucket { members["bucket"] = .string(bucket) }
            return JSONValue.object(members).serialized
        case .s3uri:
            // The daemon trims a body's ends, so a key that ends in white space would lose it.
            guard let bucket, let last = fullKey.last, !last.isWhitespace else { return nil }
            return "s3://\(bucket)/\(fullKey)"
        case .key:
            let trimmed = key.trimmingSpaces
            if trimmed.isEmpty || trimmed.hasPrefix("{") || trimmed.hasPrefix("s3://") || key.hasSuffix("\n")
                || key.hasSuffix("\r")
            {
                return nil
            }
            return key
        }
    }
}

/// Which inputs are done already, so that `enqueue --skip-done` leaves them out: an input is done when the exact
/// output key the daemon would write for it exists, or when the ledger records a `done` attempt of it. A key that
/// merely starts like the input's (`a/x` beside `a/x.txt.out`) is not a sign of anything.
///
/// Checked a chunk of inputs at a time with bounded memory: the chunk's predicted output keys are sorted and one
/// listing walks from the smallest to the largest (`start-after`); the ledger is read over the chunk's key range,
/// page by page. A bucket listing comes sorted, so each chunk's range is narrow; keys from a file should be sorted
/// too (`sort -u`), or each chunk's range may span the whole prefix.
public struct DoneCheck: Sendable {
    public enum Source: Sendable {
        /// Outputs under `outputPrefix` in `bucket`, named by `outputName` (`{name}` is the input's file name) and
        /// placed by `OutputContract` relative to the daemon's `inputPrefix`.
        case outputs(bucket: String, outputPrefix: String, inputPrefix: String, outputName: String)
        /// The ledger's task items of `queueURL` in `table`.
        case ledger(table: String, queueURL: String)
    }

    public var sources: [Source]
    let s3: S3Client?
    let dynamo: DynamoDBClient?

    public init(sources: [Source], s3: S3Client?, dynamo: DynamoDBClient?) {
        self.sources = sources
        self.s3 = s3
        self.dynamo = dynamo
    }

    /// The output key the daemon would write for `inputKey` when the command names `outputName`'s file.
    public static func predictedOutput(
        inputKey: String, outputName: String, inputPrefix: String, outputPrefix: String
    ) -> String {
        let name = outputName.replacingAll("{name}", with: OutputContract.fileName(of: inputKey))
        return OutputContract.outputKey(
            inputKey: inputKey, inputPrefix: inputPrefix, outputPrefix: outputPrefix, outputName: name)
    }

    /// The keys of `inputs` that are done.
    public func done(_ inputs: [String], logger: Logger) async throws(AWSError) -> Set<String> {
        guard !inputs.isEmpty else { return [] }
        var done = Set<String>()
        for source in sources {
            switch source {
            case .outputs(let bucket, let outputPrefix, let inputPrefix, let outputName):
                guard let s3 else { continue }
                // By bytes: see `existingKeys`.
                var wanted: [[UInt8]: [String]] = [:]
                for input in inputs {
                    let key = Self.predictedOutput(
                        inputKey: input, outputName: outputName, inputPrefix: inputPrefix, outputPrefix: outputPrefix)
                    wanted[Array(key.utf8), default: []].append(input)
                }
                let found = try await s3.existingKeys(
                    bucket: bucket, prefix: outputPrefix, among: Array(wanted.keys), logger: logger)
                for key in found { wanted[key].map { done.formUnion($0) } }
            case .ledger(let table, let queueURL):
                guard let dynamo else { continue }
                let ordered = inputs.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
                let members = Set(inputs.map { Array($0.utf8) })
                // Page by page, keeping only what is done: the range may hold many attempts.
                var startKey: DynamoItem?
                repeat {
                    let page = try await dynamo.query(
                        table: table, keyCondition: "#q = :q AND #t BETWEEN :low AND :high",
                        names: ["#q": LedgerSchema.partitionKey, "#t": LedgerSchema.sortKey],
                        values: [
                            ":q": .s(LedgerSchema.queueName(queueURL)),
                            ":low": .s(LedgerSchema.taskPrefix + ordered.first! + "#"),
                            ":high": .s(LedgerSchema.taskSortKey(inputKey: ordered.last!, attempt: 9999)),
                        ],
                        startKey: startKey, logger: logger)
                    for item in page.items where item[LedgerSchema.Task.state]?.string == "done" {
                        if let key = item[LedgerSchema.Task.inputKey]?.string, members.contains(Array(key.utf8)) {
                            done.insert(key)
                        }
                    }
                    startKey = page.lastEvaluatedKey
                } while startKey != nil
            }
        }
        return done
    }
}

/// Where an interrupted `enqueue` left off: the last input of the last chunk sent whole, written (by rename, so
/// never half) after every chunk. `--resume` starts after it, so at most one chunk goes twice, and a message sent
/// twice only makes a worker write the same output again.
public struct EnqueueCheckpoint: Sendable, Equatable {
    /// What was being enqueued (`s3://bucket/prefix` or the file's path): a checkpoint of another run is refused.
    public var source: String
    public var lastKey: String
    /// For a key file: lines read so far (keys there need not be sorted).
    public var lines: Int
    public var sent: Int

    public init(source: String, lastKey: String, lines: Int, sent: Int) {
        self.source = source
        self.lastKey = lastKey
        self.lines = lines
        self.sent = sent
    }

    public static func read(_ path: String) -> EnqueueCheckpoint? {
        guard let text = LocalFile.readText(path), let json = try? JSONValue.parse(text),
            let source = json["source"]?.stringValue, let lastKey = json["lastKey"]?.stringValue
        else { return nil }
        return EnqueueCheckpoint(
            source: source, lastKey: lastKey, lines: json["lines"]?.intValue ?? 0, sent: json["sent"]?.intValue ?? 0)
    }

    /// Writes the checkpoint beside `path` and renames it into place; false when that failed.
    public func write(_ path: String) -> Bool {
        let text = JSONValue.object([
            "source": .string(source), "lastKey": .string(lastKey), "lines": .number(Double(lines)),
            "sent": .number(Double(sent)),
        ]).serialized
        return LocalFile.writeAtomically(path, Array((text + "\n").utf8))
    }
}

extension String {
    /// Every occurrence of `target` replaced (FoundationEssentials has no `replacingOccurrences`).
    func replacingAll(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var result = ""
        var rest = self[...]
        while let range = rest.firstRange(of: target) {
            result += rest[..<range.lowerBound]
            result += replacement
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}

extension S3Client {
    /// Which of `keys` (all under `prefix`, as UTF-8 bytes) exist in `bucket`: one listing walk from the smallest of
    /// them to the largest, whatever their number, so a chunk of keys that sort close together costs a call or two.
    /// By bytes, as S3 orders and compares keys: Swift's `String ==` would take a key in another Unicode
    /// normalization for the same.
    public func existingKeys(bucket: String, prefix: String, among keys: [[UInt8]], logger: Logger)
        async throws(AWSError) -> Set<[UInt8]>
    {
        guard !keys.isEmpty else { return [] }
        let wanted = Set(keys)
        let sorted = wanted.sorted { $0.lexicographicallyPrecedes($1) }
        let (low, high) = (sorted.first!, sorted.last!)
        // start-after is exclusive: begin at a key the smallest starts with, its last character dropped (whole: a
        // key is never half a character).
        let lowKey = String(decoding: low, as: UTF8.self)
        let startAfter = lowKey.unicodeScalars.count > 1 ? String(lowKey.unicodeScalars.dropLast()) : nil
        var found = Set<[UInt8]>()
        var token: String?
        walk: repeat {
            let page = try await listObjectsV2(
                bucket: bucket, prefix: prefix, continuationToken: token,
                startAfter: token == nil ? startAfter : nil, logger: logger)
            for object in page.objects {
                let key = Array(object.key.utf8)
                if high.lexicographicallyPrecedes(key) { break walk }
                if wanted.contains(key) { found.insert(key) }
            }
            token = page.nextContinuationToken
        } while token != nil
        return found
    }
}
