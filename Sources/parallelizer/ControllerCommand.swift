import ArgumentParser
import AWSCore
import Logging
import Operators
import TaskLedger
import Worker

/// EC2-clusteR's controller as a subcommand: it retires stuck workers and stops the fleet after the drain.
struct ControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "controller",
        abstract:
            "Terminate stuck workers, and the whole fleet once the queue is drained (only instances tagged parallelizer:queue=QUEUE_URL).",
        discussion: """
            With --ledger-table, an instance that has completed no task for --stuck-after while messages wait is \
            terminated; its in-flight messages come back when their visibility lapses. Without a ledger there is no \
            completion signal, so only the drained-queue stop applies. Once the queue has had nothing visible, in \
            flight or delayed for --interval, every tagged instance still running is terminated, and the controller \
            exits when none is left. Every decision is logged with its reason.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "The SQS queue URL (also the value of the instances' parallelizer:queue tag).")
    var queueURL: String

    @Option(help: "The DynamoDB ledger table the workers write (ledgerTable).")
    var ledgerTable: String?

    @Option(help: "Terminate an instance that completed no task for this long while work waits (90s, 15m, 1h).")
    var stuckAfter: String = "15m"

    @Option(help: "Seconds between looks, and how long the queue must stay drained before the fleet is stopped.")
    var interval: String = "30s"

    @Flag(help: "Log the decisions without acting on them.")
    var dryRun = false

    @Flag(help: "Keep watching after the fleet is gone.")
    var keepRunning = false

    func validate() throws {
        guard let stuck = WorkerConfig.parseDuration(stuckAfter), stuck >= 1 else {
            throw ValidationError("--stuck-after is a duration (90s, 15m, 1h)")
        }
        guard let seconds = WorkerConfig.parseDuration(interval), seconds >= 1, seconds <= stuck else {
            throw ValidationError("--interval is a duration of at least 1s, and not longer than --stuck-after")
        }
    }

    func run() async throws {
        let logger = global.logger("parallelizer.controller")
        let context = try await global.context(logger: logger)
        var options = Controller.Options(queueURL: queueURL)
        options.ledgerTable = ledgerTable
        options.stuckAfter = Double(WorkerConfig.parseDuration(stuckAfter) ?? 900)
        options.interval = Double(WorkerConfig.parseDuration(interval) ?? 30)
        options.dryRun = dryRun
        options.keepRunning = keepRunning
        let code = await Controller(options: options, context: context).run(logger: logger)
        if code != 0 { throw ExitCode(code) }
    }
}
