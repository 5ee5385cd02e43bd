import ArgumentParser
import AWSCore
import Logging
import Worker

struct Parallelizer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "parallelizer",
        abstract: "Process files from S3 on a fleet of EC2 instances, one SQS message per file.",
        version: Version.current,
        subcommands: [
            Run.self, Enqueue.self, Status.self, Failures.self, RedriveCommand.self, Logs.self, FleetCommand.self,
            ControllerCommand.self, ReconcileCommand.self,
            Copy.self,
            Presign.self, Smoke.self,
            VersionCommand.self, ConfigCommand.self,
        ])
}

/// A `--set key=value` flag, split at its first `=`; nil when it has no `=` or no key. (`run`, `config render`
/// and `fleet launch` read the same flag.)
func keyValue(_ setting: String) -> (key: String, value: String)? {
    guard let eq = setting.firstIndex(of: "="), eq != setting.startIndex else { return nil }
    return (String(setting[..<eq]), String(setting[setting.index(after: eq)...]))
}

/// Options every subcommand shares: region and log level. Credentials and endpoints come from the AWS SDKs'
/// environment variables and files, exactly as the daemon resolves them.
struct GlobalOptions: ParsableArguments {
    @Option(help: "AWS region (default: AWS_REGION, AWS_DEFAULT_REGION, the profile, then IMDS).")
    var region: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    func logger(_ label: String) -> Logger {
        LineLogHandler.bootstrap()
        var logger = Logger(label: label)
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        return logger
    }

    func context(logger: Logger) async throws -> AWSContext {
        try await AWSContext.resolve(
            environment: ProcessEnvironment.current(), region: region, order: .awsCLI, logger: logger)
    }
}
