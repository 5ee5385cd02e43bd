import AWSCore
import AWSServices

/// Everything `parallelizer run` needs, resolved and validated.
///
/// Names are aws-parallelizer's (`queueURL`, `inputBucket`, `outputBucket`, `analysisProgram`, ...), so its old
/// user-data still works. Layers apply in this order, later winning: defaults, user-data, `--config` file,
/// `PARALLELIZER_<KEY>` environment variables, command-line flags. Keys match without regard to case, `_` or `-`.
public struct WorkerConfig: Sendable, Equatable {
    public var queueURL: String
    public var inputBucket: String
    public var outputBucket: String
    /// The command as argv; the input file's path is appended. Never run through a shell.
    public var analysisProgram: [String]
    public var environmentBucket: String?
    public var environmentZip: String?
    public var environmentPrefix: String?
    /// The most the environment archive may unpack to, in MiB.
    public var environmentMaxMiB: Int = 4096
    public var visibilityTimeout: Int = 600
    /// Worker slots in this process (absent or 0 in the parameters: one per core).
    public var numThreads: Int = 1
    public var shouldShutdown: Bool = true
    public var region: String?
    public var accessKey: String?
    public var secretKey: String?
    public var inputPrefix: String = ""
    public var outputPrefix: String = ""
    public var workDir: String = "/var/lib/parallelizer"
    public var logFile: String = "/var/log/parallelizer.log"
    /// Seconds. Never unlimited: by default the longest a heartbeat can keep one receive's message hidden
    /// (`VisibilityPlan.longestTask`); past that, another worker would be handed the message mid-task.
    public var taskTimeout: Int? = VisibilityPlan.longestTask
    public var maxAttempts: Int = 5
    /// Tasks failed in a row on this machine, while the ledger shows other workers succeeding, after which the worker
    /// leaves for a replacement, those runs counted as unrun (`FailureStreak`). 0 turns it off; without a ledger
    /// it is off.
    public var failureBudget: Int = 5
    public var idleTimeout: Int = 60
    public var shutdownCommand: [String] = ["shutdown", "-h", "now"]
    /// Whether `shutdownCommand` was set: the default one runs only on an EC2 instance, never on the machine of
    /// someone trying the daemon out.
    public var shutdownCommandGiven = false
    /// Seconds between a dead end (exit status 2) and the shutdown command: time for an operator to look over SSH,
    /// as the install script gives a broken boot. Stopping the service meanwhile keeps the instance up.
    public var deadEndPause: Int = 600
    /// An object at an output key that carries no parallelizer identity (written by a version before output
    /// identities, or by hand) is replaced instead of refused. Off: such an object is never overwritten.
    public var adoptUnmarkedOutputs = false
    public var runAsUser: String?
    /// Hand the daemon's AWS credentials to the command's environment (off: the command gets none).
    public var passCredentials: Bool = false
    /// Give each command its task's own /tmp and /var/tmp (as root, in a mount namespace), as systemd's PrivateTmp.
    public var privateTmp: Bool = true
    /// The DynamoDB task ledger's table, when one is wanted.
    public var ledgerTable: String?
    /// Seconds a running task may take to finish after SIGTERM before its message is released.
    public var shutdownGrace: Int = 90
    /// The Auto Scaling group this instance belongs to (`fleet launch --market asg` sets it). When the queue is
    /// drained the worker leaves the group, shrinking it, so the group does not replace it with an idle worker.
    public var autoScalingGroup: String?
    /// S3 connections per transfer: the ranges of a large download, the parts of a large upload. One S3 connection
    /// carries roughly 85–100 MB/s; an instance reaches its link's speed only through several.
    public var transferConcurrency: Int = 8
    /// MiB per uploaded part and per downloaded range; objects above it go in pieces.
    public var partSizeMiB: Int = 16
    /// While a slot's command runs, receive and download its next input, and upload the last output while the next
    /// command runs (`CommandStage`): at most one input ahead per slot, and only for tasks within the plan's
    /// `prefetchHorizon`.
    public var prefetch: Bool = true
    /// Checkpoints (`Checkpoints`): the command gets `PARALLELIZER_CHECKPOINT_DIR`; at a stop, SIGTERM at once and
    /// `checkpointGrace` seconds to write it, then the folder is uploaded and the message released.
    public var checkpoint = false
    public var checkpointGrace = 30
    /// `memoryMax`, `cpuMax`, `pidsMax`: each task's command in a cgroup of its own (`Cgroups`).
    public var limits = ResourceLimits()

    /// The S3 client options these settings make.
    public var s3Options: S3Client.Options {
        var options = S3Client.Options()
        options.concurrency = transferConcurrency
        options.partSize = Int64(partSizeMiB) << 20
        options.multipartThreshold = Int64(partSizeMiB) << 20
        options.rangeThreshold = Int64(partSizeMiB) << 20
        return options
    }

    /// The keys this version reads (normalised: lowercase, no `_` or `-`), with their canonical spelling.
    static let knownKeys: [String: String] = {
        let names = [
            "queueURL", "inputBucket", "outputBucket", "analysisProgram", "environmentBucket", "environmentZip",
            "environmentPrefix", "environmentMaxMiB", "visibilityTimeout", "numThreads", "shouldShutdown",
            "EC2SQSRegion", "region",
            "accessKey", "secretKey", "inputPrefix", "outputPrefix", "workDir", "logFile", "taskTimeout",
            "maxAttempts", "idleTimeout", "shutdownCommand", "runAsUser", "passCredentials", "privateTmp",
            "ledgerTable",
            "shutdownGrace", "autoScalingGroup", "transferConcurrency", "partSizeMiB", "prefetch", "deadEndPause",
            "adoptUnmarkedOutputs", "failureBudget", "checkpoint", "checkpointGrace", "memoryMax", "cpuMax",
            "pidsMax",
        ]
        return Dictionary(uniqueKeysWithValues: names.map { (normalise($0), $0) })
    }()

    static func normalise(_ key: String) -> String {
        key.lowercased().filter { $0 != "_" && $0 != "-" && $0 != "." }
    }
}

/// A bad or missing parameter: names the key, says what is wrong, never echoes a secret.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var key: String
    public var message: String
    public init(key: String, message: String) {
        self.key = key
        self.message = message
    }
    public var description: String { "bad parameter '\(key)': \(message)" }
}

/// One layer of parameters and where it came from (for messages).
public struct ConfigLayer: Sendable {
    public var source: String
    public var values: [String: String]
    public init(source: String, values: [String: String]) {
        self.source = source
        self.values = values
    }

    /// The `PARALLELIZER_<KEY>` variables of an environment, as a layer.
    public static func environment(_ environment: [String: String]) -> ConfigLayer {
        var values: [String: String] = [:]
        for (name, value) in environment where name.hasPrefix("PARALLELIZER_") {
            let key = String(name.dropFirst("PARALLELIZER_".count))
            if WorkerConfig.knownKeys[WorkerConfig.normalise(key)] != nil { values[key] = value }
        }
        return ConfigLayer(source: "environment", values: values)
    }
}

extension WorkerConfig {
    /// Merges the layers in order and validates the result.
    /// - Returns: the configuration and warnings (unknown keys, keys in user-data) to log.
    public static func resolve(_ layers: [ConfigLayer], cores: Int) throws(ConfigError) -> (WorkerConfig, [String]) {
        var merged: [String: (value: String, source: String)] = [:]
        var warnings: [String] = []
        for layer in layers {
            for (key, value) in layer.values.sorted(by: { $0.key < $1.key }) {
                let normal = normalise(key)
                guard let canonical = knownKeys[normal] else {
                    warnings.append("unknown parameter '\(key)' in \(layer.source) is ignored")
                    continue
                }
                let target = canonical == "EC2SQSRegion" ? "region" : canonical
                merged[target] = (value, layer.source)
            }
        }
        func string(_ key: String) -> String? {
            guard let v = merged[key]?.value.trimmingSpaces, !v.isEmpty else { return nil }
            return v
        }
        func required(_ key: String) throws(ConfigError) -> String {
            guard let v = string(key) else { throw ConfigError(key: key, message: "is required and missing") }
            return v
        }
        func integer(_ key: String, _ range: ClosedRange<Int>, duration: Bool = false) throws(ConfigError) -> Int? {
            guard let text = string(key) else { return nil }
            let parsed = duration ? parseDuration(text) : Int(text)
            guard let value = parsed else {
                throw ConfigError(
                    key: key,
                    message: "'\(text)' is not \(duration ? "a duration (600, 90s, 15m, 2h)" : "a whole number")")
            }
            guard range.contains(value) else {
                throw ConfigError(key: key, message: "\(value) is outside \(range.lowerBound)...\(range.upperBound)")
            }
            return value
        }
        func boolean(_ key: String) throws(ConfigError) -> Bool? {
            guard let text = string(key)?.lowercased() else { return nil }
            switch text {
            case "true", "yes", "1", "on": return true
            case "false", "no", "0", "off": return false
            default: throw ConfigError(key: key, message: "'\(text)' is not true or false")
            }
        }
        func words(_ key: String) throws(ConfigError) -> [String]? {
            guard let text = string(key) else { return nil }
            let argv: [String]
            do { argv = try ShellWords.split(text) } catch { throw ConfigError(key: key, message: error.message) }
            guard !argv.isEmpty else { throw ConfigError(key: key, message: "is empty") }
            return argv
        }
        func bucket(_ key: String, required isRequired: Bool) throws(ConfigError) -> String? {
            let value: String?
            if isRequired { value = try required(key) } else { value = string(key) }
            guard let name = value else { return nil }
            guard S3URI.isValidBucketName(name) else {
                throw ConfigError(key: key, message: "'\(name)' is not a valid S3 bucket name")
            }
            return name
        }

        let queueURL = try required("queueURL")
        guard let url = ParsedURL(queueURL), url.path.split(separator: "/").count >= 2 else {
            throw ConfigError(
                key: "queueURL",
                message: "'\(queueURL)' is not an SQS queue URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME)")
        }
        let inputBucket = try bucket("inputBucket", required: true)!
        let outputBucket = try bucket("outputBucket", required: true)!
        _ = try required("analysisProgram")
        let program = try words("analysisProgram")!
        var config = WorkerConfig(
            queueURL: queueURL, inputBucket: inputBucket, outputBucket: outputBucket,
            analysisProgram: program)
        config.environmentBucket = try bucket("environmentBucket", required: false)
        config.environmentZip = string("environmentZip")
        config.environmentPrefix = string("environmentPrefix")
        if config.environmentZip != nil && config.environmentBucket == nil {
            throw ConfigError(key: "environmentBucket", message: "is required when environmentZip is set")
        }
        if let v = try integer("environmentMaxMiB", 1...1_048_576) { config.environmentMaxMiB = v }
        if let v = try integer("visibilityTimeout", 1...43200, duration: true) { config.visibilityTimeout = v }
        // Absent or 0: one slot per core, as aws-parallelizer's default of 0 was.
        let threads = try integer("numThreads", 0...256) ?? 0
        config.numThreads = threads == 0 ? max(1, cores) : threads
        if let v = try boolean("shouldShutdown") { config.shouldShutdown = v }
        config.region = string("region")
        config.accessKey = string("accessKey")
        config.secretKey = string("secretKey")
        if (config.accessKey == nil) != (config.secretKey == nil) {
            throw ConfigError(
                key: config.accessKey == nil ? "accessKey" : "secretKey",
                message: "accessKey and secretKey go together")
        }
        if config.accessKey != nil {
            warnings.append("accessKey/secretKey given as parameters: an instance role is the safe way to grant access")
        }
        config.inputPrefix = string("inputPrefix") ?? ""
        config.outputPrefix = string("outputPrefix") ?? ""
        if let v = string("workDir") {
            guard v.hasPrefix("/") else { throw ConfigError(key: "workDir", message: "must be an absolute path") }
            config.workDir = v
        }
        if let v = string("logFile") { config.logFile = v }
        config.taskTimeout = try integer("taskTimeout", 1...43200 * 2, duration: true) ?? VisibilityPlan.longestTask
        if let limit = config.taskTimeout, limit > VisibilityPlan.longestTask {
            throw ConfigError(
                key: "taskTimeout",
                message:
                    "is \(limit) s, longer than one receive can keep a message hidden (SQS's 12 hours less 11 minutes: at most \(VisibilityPlan.longestTask) s); another worker would be handed the message mid-task. Split the work, or lower taskTimeout"
            )
        }
        if let v = try integer("maxAttempts", 1...1000) { config.maxAttempts = v }
        if let v = try integer("failureBudget", 0...1000) { config.failureBudget = v }
        if let v = try integer("idleTimeout", 0...86400, duration: true) { config.idleTimeout = v }
        if let v = try words("shutdownCommand") {
            config.shutdownCommand = v
            config.shutdownCommandGiven = true
        }
        config.runAsUser = string("runAsUser")
        if let v = try boolean("passCredentials") { config.passCredentials = v }
        if let v = try boolean("privateTmp") { config.privateTmp = v }

        config.ledgerTable = string("ledgerTable")
        if let v = try integer("shutdownGrace", 0...3600, duration: true) { config.shutdownGrace = v }
        config.autoScalingGroup = string("autoScalingGroup")
        if let v = try integer("transferConcurrency", 1...64) { config.transferConcurrency = v }
        // S3's parts are 5 MiB to 5 GiB.
        if let v = try integer("partSizeMiB", 5...5120) { config.partSizeMiB = v }
        if let v = try boolean("prefetch") { config.prefetch = v }
        if let v = try integer("deadEndPause", 0...86400, duration: true) { config.deadEndPause = v }
        if let v = try boolean("adoptUnmarkedOutputs") { config.adoptUnmarkedOutputs = v }
        if let text = string("memoryMax") {
            guard let bytes = ResourceLimits.bytes(text), bytes >= 1 << 20 else {
                throw ConfigError(key: "memoryMax", message: "'\(text)' is not a size of at least 1 MiB (512M, 2G)")
            }
            config.limits.memoryMax = bytes
        }
        if let text = string("cpuMax") {
            guard let cores = Double(text.trimmingSpaces), cores >= 0.01, cores <= 1024 else {
                throw ConfigError(key: "cpuMax", message: "'\(text)' is not a number of cores from 0.01 to 1024 (1.5)")
            }
            config.limits.cpuMax = cores
        }
        if let v = try integer("pidsMax", 1...4_194_304) { config.limits.pidsMax = v }
        if let v = try boolean("checkpoint") { config.checkpoint = v }
        if let v = try integer("checkpointGrace", 1...3600, duration: true) { config.checkpointGrace = v }
        if config.checkpoint && config.checkpointGrace >= config.shutdownGrace {
            throw ConfigError(
                key: "checkpointGrace",
                message:
                    "is \(config.checkpointGrace) s, not less than shutdownGrace (\(config.shutdownGrace) s): the checkpoint's upload comes after it, within shutdownGrace"
            )
        }
        return (config, warnings)
    }

    /// What ends a run whose parameters could not be resolved: `shouldShutdown`, `shutdownCommand` and
    /// `deadEndPause` as the layers give them, each left at its default when it is missing or bad itself. Such a
    /// daemon must still power its instance off, or a fleet launched with a typo in its user-data bills forever.
    public static func endOfRunSettings(_ layers: [ConfigLayer]) -> WorkerConfig {
        var merged: [String: String] = [:]
        for layer in layers {
            for (key, value) in layer.values { merged[normalise(key)] = value.trimmingSpaces }
        }
        var config = WorkerConfig(queueURL: "", inputBucket: "", outputBucket: "", analysisProgram: [])
        switch merged[normalise("shouldShutdown")]?.lowercased() {
        case "false", "no", "0", "off": config.shouldShutdown = false
        default: break
        }
        if let text = merged[normalise("shutdownCommand")], let argv = try? ShellWords.split(text), !argv.isEmpty {
            config.shutdownCommand = argv
            config.shutdownCommandGiven = true
        }
        if let text = merged[normalise("deadEndPause")], let seconds = parseDuration(text) {
            config.deadEndPause = min(seconds, 86400)
        }
        if let text = merged[normalise("workDir")], text.hasPrefix("/") { config.workDir = text }
        config.autoScalingGroup = merged[normalise("autoScalingGroup")].flatMap { $0.isEmpty ? nil : $0 }
        return config
    }

    /// `600`, `90s`, `15m`, `2h` → seconds.
    public static func parseDuration(_ text: String) -> Int? {
        let unit = text.last.map { $0.isLetter ? $0 : nil } ?? nil
        let number = unit == nil ? text : String(text.dropLast())
        guard let value = Int(number), value >= 0 else { return nil }
        switch unit {
        case nil, "s": return value
        case "m": return value * 60
        case "h": return value * 3600
        default: return nil
        }
    }
}

/// Splits a command line into words the way a POSIX shell would (quotes and backslashes), without running a shell:
/// no variables, globs, pipes or redirections are interpreted.
public enum ShellWords {
    public struct SplitError: Error, Sendable, Equatable {
        public var message: String
    }

    public static func split(_ text: String) throws(SplitError) -> [String] {
        var words: [String] = []
        var current = ""
        var inWord = false
        var iterator = Array(text).makeIterator()
        while let ch = iterator.next() {
            switch ch {
            case " ", "\t", "\n":
                if inWord {
                    words.append(current)
                    current = ""
                    inWord = false
                }
            case "'":
                inWord = true
                var closed = false
                while let c = iterator.next() {
                    if c == "'" {
                        closed = true
                        break
                    }
                    current.append(c)
                }
                if !closed { throw SplitError(message: "has an unterminated single quote") }
            case "\"":
                inWord = true
                var closed = false
                while let c = iterator.next() {
                    if c == "\"" {
                        closed = true
                        break
                    }
                    if c == "\\" {
                        guard let next = iterator.next() else { break }
                        if next == "\"" || next == "\\" || next == "$" || next == "`" {
                            current.append(next)
                        } else {
                            current.append("\\")
                            current.append(next)
                        }
                        continue
                    }
                    current.append(c)
                }
                if !closed { throw SplitError(message: "has an unterminated double quote") }
            case "\\":
                inWord = true
                if let next = iterator.next() { current.append(next) }
            default:
                inWord = true
                current.append(ch)
            }
        }
        if inWord { words.append(current) }
        return words
    }
}
