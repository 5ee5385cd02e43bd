import AWSCore
import AWSServices
import FoundationEssentials
import Logging

/// What `enqueue` put in a queue, kept on the queue itself as tags, so that `status` reads a run's size in one call
/// from any machine, however many inputs it has, instead of listing the outputs: when the run began, what it was
/// fed from, how many messages went in and how many inputs were found done already.
///
/// A run starts when `enqueue` finds the queue empty (and is not resuming); an `enqueue` into a queue that still
/// holds work adds to the run under way (a second prefix, a resumed run).
public struct RunManifest: Sendable, Equatable, Codable {
    public var source: String
    /// Seconds since 1970.
    public var started: Double
    public var updated: Double
    /// Messages sent, over every `enqueue` of the run.
    public var sent: Int
    /// Inputs left out as done already (`--skip-done`, `--done-in-ledger`).
    public var skipped: Int

    public init(source: String, started: Double, updated: Double, sent: Int, skipped: Int) {
        self.source = source
        self.started = started
        self.updated = updated
        self.sent = sent
        self.skipped = skipped
    }

    static let prefix = "parallelizer:run:"

    /// `text` as a tag value may hold it: letters, digits, spaces and `_ . : / = + - @`, at most 256 of them.
    static func tagValue(_ text: String) -> String {
        let allowed = Set("_.:/=+-@ ".unicodeScalars)
        var value = String.UnicodeScalarView()
        for scalar in text.unicodeScalars.prefix(256) {
            let kept =
                scalar.properties.isAlphabetic || scalar.properties.numericType != nil || allowed.contains(scalar)
            value.append(kept ? scalar : "_")
        }
        return String(value)
    }

    /// The queue's tags for this manifest.
    public var tags: [String: String] {
        [
            Self.prefix + "source": Self.tagValue(source), Self.prefix + "started": "\(Int(started))",
            Self.prefix + "updated": "\(Int(updated))", Self.prefix + "sent": "\(sent)",
            Self.prefix + "skipped": "\(skipped)",
        ]
    }

    /// The manifest in a queue's tags; nil when no `enqueue` wrote one.
    public init?(tags: [String: String]) {
        guard let sent = tags[Self.prefix + "sent"].flatMap({ Int($0) }),
            let started = tags[Self.prefix + "started"].flatMap({ Double($0) })
        else { return nil }
        self.init(
            source: tags[Self.prefix + "source"] ?? "", started: started,
            updated: tags[Self.prefix + "updated"].flatMap { Double($0) } ?? started, sent: sent,
            skipped: tags[Self.prefix + "skipped"].flatMap { Int($0) } ?? 0)
    }

    /// The manifest an `enqueue` of `source` begins with: the one under way when the queue still holds work (or when
    /// resuming), else a new one.
    public static func begin(
        existing: RunManifest?, queueIsEmpty: Bool, resuming: Bool, source: String, now: Double
    ) -> RunManifest {
        if let existing, !queueIsEmpty || resuming {
            var run = existing
            if !existing.source.split(separator: " ").contains(Substring(source)) {
                run.source = existing.source + " " + source
            }
            return run
        }
        return RunManifest(source: source, started: now, updated: now, sent: 0, skipped: 0)
    }

    /// Progress from the queue's counts: the run's messages not in the queue any more are settled (done, given up,
    /// or moved to the dead-letter queue).
    public func progress(queue: SQSClient.MessageCounts, now: Double, rate fleetRate: Double?) -> RunProgress? {
        let total = sent + skipped
        // Nothing counted yet (an enqueue's first seconds, or one cut off before its first write): no figure beats a
        // wrong one.
        guard total > 0 else { return nil }
        let settled = min(total, skipped + max(0, sent - queue.total))
        let elapsed = max(1, now - started)
        // The fleet's recent rate when the ledger gives one, else the run's average since it began.
        let rate = fleetRate ?? Double(settled - skipped) / elapsed
        let remaining = total - settled
        return RunProgress(
            total: total, settled: settled, perSecond: (rate * 100).rounded() / 100,
            etaSeconds: remaining == 0 ? 0 : rate > 0 ? Int((Double(remaining) / rate).rounded()) : nil)
    }
}

/// A run's progress: settled of total, the rate, the time left.
public struct RunProgress: Sendable, Equatable, Codable {
    public var total: Int
    public var settled: Int
    public var perSecond: Double
    public var etaSeconds: Int?

    /// `[########------------]  42%  4200/10000 settled  35.0/s  ETA 2m 45s`
    public var bar: String {
        let width = 24
        let fraction = total > 0 ? Double(settled) / Double(total) : 1
        let filled = min(width, Int((fraction * Double(width)).rounded(.down)))
        let eta = etaSeconds.map(Self.duration) ?? "unknown"
        return "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "] "
            + "\(Int((fraction * 100).rounded(.down)))%  \(settled)/\(total) settled  \(perSecond)/s  ETA \(eta)"
    }

    static func duration(_ seconds: Int) -> String {
        if seconds >= 3600 { return "\(seconds / 3600)h \(seconds % 3600 / 60)m" }
        if seconds >= 60 { return "\(seconds / 60)m \(seconds % 60)s" }
        return "\(seconds)s"
    }
}

extension SQSClient {
    /// The run manifest on the queue, if any.
    public func runManifest(queueURL: String, logger: Logger) async throws(AWSError) -> RunManifest? {
        RunManifest(tags: try await listQueueTags(queueURL: queueURL, logger: logger))
    }

    public func write(_ manifest: RunManifest, queueURL: String, logger: Logger) async throws(AWSError) {
        try await tagQueue(queueURL: queueURL, tags: manifest.tags, logger: logger)
    }
}
