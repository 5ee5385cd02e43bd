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
        if let imds {
            do {
                if let text = try await imds.userData() {
                    layers.append(ConfigLayer(source: "user-data", values: try UserData.parse(text)))
                }
            } catch let error as UserData.ParseError {
                logger.critical(
                    "cannot start: the user-data cannot be read", metadata: ["key": "user-data", "error": "\(error)"])
                throw ExitCode(2)
            } catch {
                logger.info("no user-data from IMDS", metadata: ["error": "\(error)"])
            }
        }
        if let path = config {
            guard let text = LocalFile.readText(path) else {
                logger.critical(
                    "cannot start: the --config file cannot be read", metadata: ["key": "config", "path": "\(path)"])
                throw ExitCode(2)
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
                throw ExitCode(2)
            }
        }
        layers.append(.environment(environment))
        var flags: [String: String] = [:]
        for setting in settings {
            guard let eq = setting.firstIndex(of: "="), eq != setting.startIndex else {
                logger.critical("cannot start: --set takes key=value", metadata: ["key": "set", "value": "\(setting)"])
                throw ExitCode(2)
            }
            flags[String(setting[..<eq])] = String(setting[setting.index(after: eq)...])
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
            throw ExitCode(2)
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
            throw ExitCode(2)
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
