import AWSCore
import ArgumentParser
@preconcurrency import Glibc
import Worker

/// `parallelizer config render`: the daemon's own check and rendering of user-data parameters (the rules `fleet
/// launch` renders by), for anyone writing user-data by hand, and for the boot script, which reads shutdownGrace.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Check and render the daemon's parameters.", subcommands: [Render.self])

    struct Render: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check parameters as the daemon would and print them as the user-data's `parallelizer:` map.",
            discussion: "Unknown keys, bad values and missing required ones are refused with exit status 2.")

        @Option(name: .customLong("set"), help: "A parameter as key=value; repeatable; a later one wins.")
        var settings: [String] = []

        @Option(help: "Print this parameter's value as the daemon reads it (durations in seconds) instead of the map.")
        var value: String?

        /// On an instance: start from its user-data (IMDS), as `run` does. The boot script sets the systemd unit's
        /// stop timeout from `--user-data --value shutdownGrace`, so it is the daemon that reads the parameter.
        @Flag(help: "Start from this instance's user-data (IMDS), as the daemon does.")
        var userData = false

        func run() async throws {
            var base: [String: String] = [:]
            if userData {
                let environment = ProcessEnvironment.current()
                guard let endpoint = IMDSClient.endpoint(environment: environment),
                    let text = try? await IMDSClient(endpoint: endpoint, http: .init()).userData()
                else {
                    fputs("parallelizer config render: no user-data from IMDS\n", stderr)
                    throw ExitCode(2)
                }
                do {
                    base = try UserData.parse(text)
                } catch {
                    fputs("parallelizer config render: the user-data cannot be read: \(error)\n", stderr)
                    throw ExitCode(2)
                }
            }
            var pairs: [(key: String, value: String)] = []
            for setting in settings {
                guard let pair = keyValue(setting) else {
                    throw ValidationError("--set takes key=value, got '\(setting)'")
                }
                pairs.append(pair)
            }
            do {
                let (text, config) = try UserDataRenderer.render(pairs, over: base)
                guard let name = value else {
                    print(text, terminator: "")
                    return
                }
                guard let resolved = config.renderedValue(name) else {
                    throw ValidationError(
                        "--value knows shutdownGrace, visibilityTimeout, taskTimeout, numThreads, maxAttempts")
                }
                print(resolved)
            } catch let error as ConfigError {
                fputs("parallelizer config render: \(error)\n", stderr)
                throw ExitCode(2)
            }
        }
    }
}
