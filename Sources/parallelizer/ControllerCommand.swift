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
            "Keep the fleet at size while work waits, terminate stuck workers, and stop the whole fleet once the queue is drained (only instances tagged parallelizer:queue=QUEUE_URL).",
        discussion: """
            With --target N, while messages wait to be taken, instances are launched from the queue's launch \
            template (fleet launch records it) until N are alive (never more than messages wait, and at most \
            --max in all), replacing retired, terminated, interrupted and crashed ones; once the queue has drained \
            after work, nothing more is launched. With a ledger, three failed launches in a row (instances gone or \
            retired before their workers were heard from, or launch calls that started nothing) stop the \
            controller (status 2): the template cannot boot a worker. With --ledger-table, while work remains, an \
            instance whose heartbeat is older than --stuck-after, or whose task has run past its taskTimeout plus \
            --task-grace, is terminated; a long task that still beats is not stuck. Once the queue has had nothing \
            visible, in flight or delayed for --interval, every tagged instance still running is terminated, and \
            the controller exits when none is left. Every decision is logged, one line each, with its reason.

            With --follow --min M --max N the fleet follows its queue for good (a queue fed by S3 event \
            notifications): up to N instances while messages wait (never more than wait), at least M always; once \
            the queue has had nothing visible, in flight or delayed for --quiet-period, idle instances above M are \
            retired (with a ledger, only those whose heartbeat shows no task running), and the controller waits \
            for the next messages. It reacts within --interval plus the lag of SQS's approximate counts.

            With --max-failure-rate P (and a ledger), launches stop while more than P of the fleet's last --over \
            tasks failed, and resume when the rate is back under it; with no worker left while messages wait, the \
            controller stops (status 2). With --on-complete COMMAND, the command runs once, when the queue is \
            drained and the fleet stopped, with the run in its environment (PARALLELIZER_QUEUE_URL, \
            PARALLELIZER_RUN_SOURCE, PARALLELIZER_RUN_SENT, PARALLELIZER_TASKS_DONE, PARALLELIZER_TASKS_FAILED, \
            PARALLELIZER_DEAD_LETTERS, ...); with a ledger, "once" holds across restarts. A hook that fails ends \
            the controller with status 2.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "The SQS queue URL (also the value of the instances' parallelizer:queue tag).")
    var queueURL: String

    @Option(help: "The DynamoDB ledger table the workers write (ledgerTable).")
    var ledgerTable: String?

    @Option(help: "Terminate an instance whose ledger heartbeat is this old while work remains (90s, 15m, 1h).")
    var stuckAfter: String = "15m"

    @Option(help: "Seconds between looks, and how long the queue must stay drained before the fleet is stopped.")
    var interval: String = "30s"

    @Option(help: "Keep this many workers alive while messages wait (launching from the launch template).")
    var target: Int?

    @Option(
        help:
            "With --target: launch at most this many instances in all, replacements included (default: 3 × --target). With --follow: the most instances at once."
    )
    var max: Int?

    @Option(
        help: "Where replacements come from: on-demand, spot (an instant fleet over the types and subnets), or asg.")
    var market: String = "on-demand"

    @Option(help: "Instance types, comma-separated: spot spreads over them; on-demand tries them in order.")
    var instanceTypes: String?

    @Option(help: "Subnet ids, comma-separated, to launch in.")
    var subnets: String?

    @Option(help: "The launch template (default: parallelizer-QUEUE_NAME, as fleet launch names it).")
    var launchTemplate: String?

    @Option(help: "A task is stuck once it runs this long past its worker's taskTimeout (90s, 5m).")
    var taskGrace: String = "5m"

    @Option(
        help:
            "Stop a fleet whose queue never had work after this long (15m, 1h). Without it a fleet waits for its first work: one launched before its enqueue, or fed by S3 events, is never stopped early."
    )
    var stopIdleAfter: String?

    @Flag(help: "Follow the queue for good: between --min and --max instances, scaling from and to --min.")
    var follow = false

    @Option(help: "With --follow: instances kept up even when the queue is empty (default 0).")
    var min: Int?

    @Option(help: "With --follow: retire idle instances above --min once the queue has been empty this long (2m, 5m).")
    var quietPeriod: String = "5m"

    @Option(
        help:
            "Stop launching while more than this share of the last --over tasks failed (50%, 0.5); needs --ledger-table."
    )
    var maxFailureRate: String?

    @Option(help: "The number of the fleet's last tasks --max-failure-rate looks at.")
    var over: Int = 20

    @Option(
        help: "A shell command to run once the queue is drained and the fleet stopped, with the run in its environment."
    )
    var onComplete: String?

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
        guard WorkerConfig.parseDuration(taskGrace) != nil else {
            throw ValidationError("--task-grace is a duration (90s, 5m)")
        }
        if let stopIdleAfter, WorkerConfig.parseDuration(stopIdleAfter) == nil {
            throw ValidationError("--stop-idle-after is a duration (15m, 1h)")
        }
        if let target, target < 1 { throw ValidationError("--target is at least 1") }
        if follow {
            guard target == nil else {
                throw ValidationError("--follow sizes the fleet with --min and --max, not --target")
            }
            guard ledgerTable != nil else {
                throw ValidationError(
                    "--follow needs --ledger-table: the heartbeats tell a busy worker from an idle one, and a worker that never booted from one that left (which bounds the relaunches)"
                )
            }
            guard let max, max >= 1 else { throw ValidationError("--follow needs --max N (N at least 1)") }
            guard (min ?? 0) >= 0, (min ?? 0) <= max else { throw ValidationError("--min is between 0 and --max") }
            guard let quiet = WorkerConfig.parseDuration(quietPeriod), quiet >= 1 else {
                throw ValidationError("--quiet-period is a duration (2m, 5m)")
            }
            guard onComplete == nil else {
                throw ValidationError("--on-complete needs a run that ends: a fleet that follows its queue has none")
            }
            guard stopIdleAfter == nil else { throw ValidationError("--stop-idle-after has no use with --follow") }
        } else if let max {
            guard max >= 1 else { throw ValidationError("--max is at least 1") }
            guard target != nil else { throw ValidationError("--max goes with --target (or --follow)") }
        }
        if min != nil && !follow { throw ValidationError("--min goes with --follow") }
        if let maxFailureRate {
            guard Self.share(maxFailureRate) != nil else {
                throw ValidationError("--max-failure-rate is a share: 50% or 0.5 (from 0 to 1)")
            }
            guard ledgerTable != nil else {
                throw ValidationError(
                    "--max-failure-rate reads the tasks' outcomes from the ledger: give --ledger-table")
            }
        }
        guard (1...1000).contains(over) else { throw ValidationError("--over is from 1 to 1000") }
        guard let chosen = Controller.Market(rawValue: market) else {
            throw ValidationError("--market is on-demand, spot or asg")
        }
        if chosen == .asg && follow {
            throw ValidationError("--market asg: the Auto Scaling group keeps its own size; leave out --follow")
        }
        if chosen == .asg && target != nil {
            throw ValidationError("--market asg: the Auto Scaling group keeps its own size; leave out --target")
        }
    }

    /// `50%` or `0.5`, from 0 to 1.
    static func share(_ text: String) -> Double? {
        let trimmed = text.trimmingSpaces
        let value = trimmed.hasSuffix("%") ? Double(trimmed.dropLast()).map { $0 / 100 } : Double(trimmed)
        guard let value, value >= 0, value <= 1 else { return nil }
        return value
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
        options.target = follow ? max : target
        // Following, the fleet has no end: its churn is bounded by the failed launches in a row, not a total.
        options.maxLaunches = follow ? nil : max ?? target.map { 3 * $0 }
        options.follow = follow
        options.minimum = min ?? 0
        options.quietPeriod = Double(WorkerConfig.parseDuration(quietPeriod) ?? 300)
        options.maxFailureRate = maxFailureRate.flatMap(Self.share)
        options.failureWindow = over
        options.onComplete = onComplete.map(CompletionHook.init(command:))
        options.market = Controller.Market(rawValue: market) ?? .onDemand
        func list(_ text: String?) -> [String] {
            (text ?? "").split(separator: ",").map { String($0).trimmingSpaces }.filter { !$0.isEmpty }
        }
        options.instanceTypes = list(instanceTypes)
        options.subnets = list(subnets)
        if let launchTemplate { options.launchTemplate = launchTemplate }
        options.taskGrace = Double(WorkerConfig.parseDuration(taskGrace) ?? 300)
        options.stopIdleAfter = stopIdleAfter.flatMap(WorkerConfig.parseDuration).map(Double.init)
        let code = await Controller(options: options, context: context).run(logger: logger)
        if code != 0 { throw ExitCode(code) }
    }
}
