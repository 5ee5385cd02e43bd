import ArgumentParser
import AWSCore
import Logging
import Worker

/// The daemon. Parameters come from EC2 user-data, then `--config`, then `PARALLELIZER_<KEY>` variables, then
/// `--set` flags, later ones winning.
struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Process the queue until it is drained, then shut the instance down (the daemon).")

    @Option(help: "A parameters file (key=value, JSON or #cloud-config), read after the user-data.")
    var config: String?

    @Option(name: .customLong("set"), help: "A parameter as key=value; repeatable; wins over everything else.")
    var settings: [String] = []

    @Flag(help: "Process at most one message, then exit (to try a command on a live queue).")
    var once = false

    @Option(help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    /// Seconds between ledger heartbeat writes (a minute in production; tests shorten it).
    @Option(help: .hidden)
    var ledgerHeartbeatSeconds: Double = 60

    @Option(help: .hidden)
    var receiveWaitSeconds: Int = 20

    @Option(help: .hidden)
    var retryBackoffSeconds: Int = 30

    /// Messages per ReceiveMessage, fixed (1 to 10), instead of sized by each slot from its tasks' durations.
    @Option(help: .hidden)
    var receiveBatch: Int?

    /// Seconds an EC2 instance's daemon keeps asking IMDS for its user-data before it exits with status 1.
    @Option(help: .hidden)
    var imdsPatienceSeconds: Double = 120

    /// Seconds receives may keep failing with errors that may pass before the daemon exits with status 1.
    @Option(help: .hidden)
    var receiveOutageSeconds: Double = 600

    func run() async throws {
        LineLogHandler.bootstrap()
        var logger = Logger(label: "parallelizer")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let environment = ProcessEnvironment.current()

        var layers: [ConfigLayer] = []
        let imds = IMDSClient.endpoint(environment: environment).map { IMDSClient(endpoint: $0, http: .init()) }
        // Every exit 2 from here on (parameters that cannot be read) powers an EC2 instance off after a pause, as
        // a dead end does: a fleet launched with a typo in its user-data must not bill forever.
        func badParameters() async -> ExitCode {
            await Daemon.endOfRunAfterBadParameters(layers, environment: environment, imds: imds, logger: logger)
            return ExitCode(2)
        }
        if let imds {
            // Only a 404 means "no user-data". On an EC2 instance an error is tried again for a while (early in a
            // boot IMDS may not answer yet); elsewhere nothing is worth waiting for.
            let patience: Duration =
                IMDSClient.isExpected(environment: environment)
                ? .milliseconds(Int(max(0, imdsPatienceSeconds) * 1000)) : .zero
            let text: String?
            do {
                text = try await imds.userData(patience: patience, logger: logger)
            } catch {
                // Going on without: the other layers (--config, PARALLELIZER_*) may be enough; if they are not, the
                // parameters are bad, and an instance still powers off after the pause.
                if patience > .zero {
                    logger.error(
                        "IMDS did not give the user-data: going on without it",
                        metadata: ["key": "user-data", "error": "\(error)"])
                } else {
                    logger.info(
                        "no user-data: IMDS does not answer (not an EC2 instance)", metadata: ["error": "\(error)"])
                }
                text = nil
            }
            if let text {
                do {
                    layers.append(ConfigLayer(source: "user-data", values: try UserData.parse(text)))
                } catch {
                    logger.critical(
                        "cannot start: the user-data cannot be read",
                        metadata: ["key": "user-data", "error": "\(error)"])
                    throw await badParameters()
                }
            } else if patience > .zero {
                logger.notice("this instance has no user-data")
            }
        }
        if let path = config {
            guard let text = LocalFile.readText(path) else {
                logger.critical(
                    "cannot start: the --config file cannot be read", metadata: ["key": "config", "path": "\(path)"])
                throw await badParameters()
            }
            do {
                layers.append(ConfigLayer(source: path, values: try UserData.parse(text)))
            } catch {
                logger.critical(
                    "cannot start: the --config file is malformed",
                    metadata: [
                        "key": "config", "path": "\(path)",
                        "error": "\(error)",
                    ])
                throw await badParameters()
            }
        }
        layers.append(.environment(environment))
        var flags: [String: String] = [:]
        for setting in settings {
            guard let (key, value) = keyValue(setting) else {
                logger.critical("cannot start: --set takes key=value", metadata: ["key": "set", "value": "\(setting)"])
                throw await badParameters()
            }
            flags[key] = value
        }
        layers.append(ConfigLayer(source: "--set", values: flags))

        let resolved: WorkerConfig
        do {
            let (config, warnings) = try WorkerConfig.resolve(layers, cores: System.cores)
            resolved = config
            if let problem = LogSink.shared.openFile(config.logFile) {
                logger.warning("logging to stderr only", metadata: ["key": "logFile", "error": "\(problem)"])
            }
            for warning in warnings { logger.warning("\(warning)") }
        } catch {
            logger.critical("cannot start: \(error)", metadata: ["key": "\(error.key)"])
            throw await badParameters()
        }

        let context: AWSContext
        do {
            let explicit = resolved.accessKey.map {
                Credentials(accessKeyID: $0, secretAccessKey: resolved.secretKey ?? "")
            }
            context = try await AWSContext.resolve(
                environment: environment, region: resolved.region, credentials: explicit,
                logger: logger)
        } catch {
            logger.critical("cannot start: \(error)", metadata: ["key": "region"])
            throw await badParameters()
        }
        var options = Daemon.Options()
        options.once = once
        options.receiveWaitSeconds = max(0, min(20, receiveWaitSeconds))
        options.retryBackoff = max(0, retryBackoffSeconds)
        options.receiveBatch = receiveBatch.map { max(1, min(ReceiveSizer.maxMessages, $0)) }
        options.receiveOutageSeconds = max(1, receiveOutageSeconds)
        options.ledger.heartbeatInterval = max(0.1, ledgerHeartbeatSeconds)
        let code = await Daemon(config: resolved, context: context, options: options).run(logger: logger)
        if code != 0 { throw ExitCode(code) }
    }
}

enum System {
    static var cores: Int {
        #if canImport(Glibc)
            return Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        #else
            return 1
        #endif
    }
}

import Glibc
