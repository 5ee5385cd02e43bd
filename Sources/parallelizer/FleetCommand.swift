import ArgumentParser
import AWSCore
import AWSServices
@preconcurrency import Glibc
import Operators

struct FleetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "The queue's fleet: render its user-data's parameters, or stop it.",
        discussion: """
            `fleet render` checks parameters as the daemon would and prints them as the user-data's map (what \
            scripts/launch puts in the launch template). `fleet stop` terminates the queue's controller, its Auto \
            Scaling groups and launch templates, and every instance tagged parallelizer:queue=<queue URL>, and \
            nothing else. (Launching is scripts/launch for now.)
            """,
        subcommands: [Stop.self, ConfigCommand.Render.self])

    struct Stop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Terminate the queue's fleet: its controller, groups, launch templates and tagged instances.",
            discussion: "stdout: the ids of the instances terminated (or that would be), one per line.")

        @OptionGroup var global: GlobalOptions

        @Option(help: "The SQS queue URL the fleet's instances are tagged with (parallelizer:queue).")
        var queueURL: String

        @Flag(help: "List what would be stopped and change nothing.")
        var dryRun = false

        func run() async throws {
            let logger = global.logger("parallelizer.fleet")
            let context = try await global.context(logger: logger)
            let region = SQSClient.region(ofQueueURL: queueURL)
            let stop = FleetStop(
                ec2: try EC2Client(context: context, region: region),
                autoscaling: try AutoScalingClient(context: context, region: region), queueURL: queueURL,
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
