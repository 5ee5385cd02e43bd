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
        abstract:
            "Show a run's progress (done of total, rate, ETA), the queue's and dead-letter queue's counts, and whether failures were recorded.",
        discussion: """
            A handful of calls whatever the run's size: the total comes from the run manifest enqueue keeps on the \
            queue's tags, the rate from the ledger (--ledger-table) or the run's average. --count lists the results \
            to count outputs and failure records (a call per 1,000 objects). --check exits with status 3 when the \
            dead-letter queue holds messages or failure records exist.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "The SQS queue URL.")
    var queueURL: String

    @Option(help: "Where the results go, s3://bucket/prefix: checks for _failed/ records at the bucket's top.")
    var results: String?

    /// The name before `--results`; it clashed with the AWS CLI's `--output` (a format).
    @Option(name: .customLong("output"), help: .hidden)
    var legacyOutput: String?

    @Flag(help: "With --results: list and count the outputs and the failure records (a call per 1,000 objects).")
    var count = false

    @Flag(help: "Exit with status 3 when the dead-letter queue holds messages or failure records exist.")
    var check = false

    @Option(help: "text or json.")
    var format: String = "text"

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

    /// The name before `--format json`.
    @Flag(name: .customLong("json"), help: .hidden)
    var legacyJSON = false

    var json: Bool { legacyJSON || format == "json" }
    var output: String? { results ?? legacyOutput }

    func validate() throws {
        if results != nil && legacyOutput != nil {
            throw ValidationError("--output is the old name of --results: give one")
        }
        if let output, S3URI(output) == nil { throw ValidationError("--results takes s3://bucket/prefix") }
        guard format == "text" || format == "json" else { throw ValidationError("--format is text or json") }
        if count && output == nil { throw ValidationError("--count needs --results") }
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
        if legacyOutput != nil { logger.warning("--output is now --results (the AWS CLI's --output is a format)") }
        let context = try await global.context(logger: logger)
        var problems: [String] = []
        repeat {
            var status = try await QueueStatus.read(
                queueURL: queueURL, output: output.flatMap(S3URI.init), count: count,
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
            let queue = SQSClient.MessageCounts(
                visible: status.visible, inFlight: status.inFlight, delayed: status.delayed)
            status.progress = status.run?.progress(
                queue: queue, now: Date().timeIntervalSince1970,
                rate: status.fleet.flatMap { $0.tasksPerMinute > 0 ? $0.tasksPerMinute / 60 : nil })
            problems = status.problems
            if json {
                print(try jsonText(status))
            } else {
                if watch && isatty(1) == 1 { print("\u{1B}[H\u{1B}[2J", terminator: "") }
                print(status.text)
            }
            if watch { try await Task.sleep(nanoseconds: UInt64(interval) * 1_000_000_000) }
        } while watch
        if check && !problems.isEmpty {
            fputs("check failed: \(problems.joined(separator: "; "))\n", stderr)
            throw ExitCode(3)
        }
    }
}
