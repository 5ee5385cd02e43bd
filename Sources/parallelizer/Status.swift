import ArgumentParser
import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Operators
import TaskLedger
import Worker

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the queue's visible, in-flight and dead-letter counts, and the outputs and failure records.")

    @OptionGroup var global: GlobalOptions

    @Option(help: "The SQS queue URL.")
    var queueURL: String

    @Option(help: "Count outputs and _failed/ records under s3://bucket/prefix.")
    var output: String?

    @Option(help: "The DynamoDB ledger table: adds per-instance progress, task durations, the rate and the ETA.")
    var ledgerTable: String?

    @Option(
        help:
            "With --ledger-table: flag instances the controller would retire (a heartbeat this old while work remains)."
    )
    var stuckAfter: String = "15m"

    @Option(
        help:
            "With --ledger-table: what an instance type costs, TYPE=USD/h (repeatable, e.g. c7i.large=0.0357 for spot): adds the cost so far and to finish."
    )
    var price: [String] = []

    @Flag(help: "Refresh in place until interrupted.")
    var watch = false

    @Option(help: "Seconds between refreshes with --watch.")
    var interval: Int = 5

    @Flag(help: "Print JSON instead of text.")
    var json = false

    func validate() throws {
        if let output, S3URI(output) == nil { throw ValidationError("--output takes s3://bucket/prefix") }
        guard interval >= 1 else { throw ValidationError("--interval is at least 1") }
        _ = try prices()
        if !price.isEmpty && ledgerTable == nil { throw ValidationError("--price needs --ledger-table") }
        guard WorkerConfig.parseDuration(stuckAfter) != nil else {
            throw ValidationError("--stuck-after is a duration (90s, 15m)")
        }
    }

    /// `--price TYPE=USD/h` values by type.
    func prices() throws -> [String: Double] {
        var result: [String: Double] = [:]
        for item in price {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, let value = Double(parts[1]), value >= 0, value.isFinite else {
                throw ValidationError("--price is TYPE=USD/h (c7i.large=0.0893), not '\(item)'")
            }
            result[parts[0]] = value
        }
        return result
    }

    func run() async throws {
        let logger = global.logger("parallelizer.status")
        let context = try await global.context(logger: logger)
        repeat {
            var status = try await QueueStatus.read(
                queueURL: queueURL, output: output.flatMap(S3URI.init),
                context: context, logger: logger)
            if let ledgerTable {
                let dynamo = try DynamoDBClient(context: context, region: SQSClient.region(ofQueueURL: queueURL))
                let beats = try await InstanceHeartbeat.read(
                    table: ledgerTable, queueURL: queueURL, client: dynamo,
                    logger: logger)
                status.fleet = FleetStatus.summarize(
                    beats,
                    queue: SQSClient.MessageCounts(
                        visible: status.visible, inFlight: status.inFlight,
                        delayed: status.delayed),
                    now: Date().timeIntervalSince1970,
                    stuckAfter: Double(WorkerConfig.parseDuration(stuckAfter) ?? 900),
                    prices: try prices())
            }
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
                print(String(decoding: try encoder.encode(status), as: UTF8.self))
            } else {
                if watch && isatty(1) == 1 { print("\u{1B}[H\u{1B}[2J", terminator: "") }
                print(status.text)
            }
            if watch { try await Task.sleep(nanoseconds: UInt64(interval) * 1_000_000_000) }
        } while watch
    }
}
