import AWSCore
import AWSServices
import ArgumentParser
@preconcurrency import Glibc
import Logging
import Operators

struct FleetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "The queue's fleet: launch it, render what its instances boot on, or stop it.",
        discussion: """
            `fleet launch` checks the parameters with the daemon's own rules, uploads the release, records the \
            queue's launch template (parallelizer-<queue name>, which `controller --target N` launches replacements \
            from) and starts the workers on their market, and optionally the controller's instance. `fleet render` \
            prints the user-data it would boot them on and starts nothing. `fleet stop` terminates the queue's \
            controller, its Auto Scaling groups and launch templates, and every instance tagged \
            parallelizer:queue=<queue URL>, and nothing else.
            """,
        subcommands: [Launch.self, Render.self, Stop.self])

    struct Launch: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start the queue's workers on EC2 (and optionally its controller).",
            discussion: """
                Every instance: InstanceInitiatedShutdownBehavior=terminate (the daemon's power-off at the end ends \
                the bill), IMDSv2 required with a hop limit of 1, the instance role, and the tags \
                parallelizer:queue=<queue URL> and Name. stdout: the instance ids, one per line (the group's name \
                with --market asg or asg-spot).
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var launch: LaunchOptions

        func run() async throws {
            let logger = global.logger("parallelizer.fleet")
            try await launch.perform(global: global, renderOnly: false, logger: logger)
        }
    }

    struct Render: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Print the user-data `fleet launch` would boot the workers (and the controller) on; start nothing.",
            discussion: """
                The same options as `fleet launch`; nothing is uploaded or started. The release's URL is presigned \
                here (signed here; credentials that must be fetched first, such as SSO's or a role's, are). \
                `parallelizer config render` prints only the parameters' map.
                """)

        @OptionGroup var global: GlobalOptions
        @OptionGroup var launch: LaunchOptions

        func run() async throws {
            let logger = global.logger("parallelizer.fleet")
            try await launch.perform(global: global, renderOnly: true, logger: logger)
        }
    }

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Terminate the queue's fleet: its controller, groups, launch templates and tagged instances.",
            discussion: "stdout: the ids of the instances terminated (or that would be), one per line.")

        @OptionGroup var global: GlobalOptions

        @Option(help: "The SQS queue URL the fleet's instances are tagged with (parallelizer:queue).")
        var queueURL: String?

        @Option(help: "Or the KEY=VALUE lines scripts/setup-aws printed (its QUEUE_URL and REGION).")
        var setup: String?

        @Flag(help: "List what would be stopped and change nothing.")
        var dryRun = false

        func run() async throws {
            let logger = global.logger("parallelizer.fleet")
            let setup = self.setup
            try await LaunchOptions.refusalsExit2 {
                try await stop(setup: try LaunchOptions.setupValues(setup), logger: logger)
            }
        }

        func stop(setup: [String: String], logger: Logger) async throws {
            guard let queueURL = queueURL ?? setup["QUEUE_URL"] else {
                throw LaunchOptions.Refusal(message: "--queue-url (or --setup) is required")
            }
            let context = try await AWSContext.resolve(
                environment: ProcessEnvironment.current(),
                region: LaunchOptions.region(global: global, queueURL: queueURL, setup: setup), order: .awsCLI,
                logger: logger)
            let stop = FleetStop(
                ec2: try EC2Client(context: context), autoscaling: try AutoScalingClient(context: context),
                queueURL: queueURL,
                dryRun: dryRun)
            _ = try await stop.run(
                say: { fputs("  \($0)\n", stderr) },
                stopped: { id in
                    print(id)
                    fflush(stdout)
                }, logger: logger)
        }
    }
}
