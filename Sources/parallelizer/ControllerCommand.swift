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
        help: "With --target: launch at most this many instances in all, replacements included (default: 3 × --target)."
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
        if let max {
            guard max >= 1 else { throw ValidationError("--max is at least 1") }
            guard target != nil else { throw ValidationError("--max goes with --target") }
        }
        guard let chosen = Controller.Market(rawValue: market) else {
            throw ValidationError("--market is on-demand, spot or asg")
        }
        if chosen == .asg && target != nil {
            throw ValidationError("--market asg: the Auto Scaling group keeps its own size; leave out --target")
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
        options.target = target
        options.maxLaunches = max ?? target.map { 3 * $0 }
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
