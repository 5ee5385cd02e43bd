import ArgumentParser
import AWSCore
import AWSServices
@preconcurrency import Glibc
import Logging
import Operators

struct Logs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Fetch the workers' logs (_logs/ in the results bucket) and merge them in time order.",
        discussion: """
            Each worker uploads its log to _logs/<instance-id>.log in the output bucket when it ends (drained, a \
            dead end, a spot notice, a stop), so the log outlives the instance. Every line is printed headed by its \
            instance; --level warning keeps warnings and worse.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "Where the results go, s3://bucket[/prefix]: the logs are at the bucket's top.")
    var results: String

    @Option(name: .customLong("instance"), help: "Only this instance's log (repeatable).")
    var instances: [String] = []

    @Option(help: "Only lines of this level or worse: debug, info, notice, warning, error, critical.")
    var level: String?

    @Option(help: "Keep the fetched logs in this folder (default: a temporary one, removed).")
    var keep: String?

    func validate() throws {
        guard S3URI(results) != nil else { throw ValidationError("--results takes s3://bucket/prefix") }
        if let level, Logger.Level(rawValue: level) == nil {
            throw ValidationError("--level is one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func run() async throws {
        let logger = global.logger("parallelizer.logs")
        let context = try await global.context(logger: logger)
        let s3 = try S3Client(context: context)
        let bucket = S3URI(results)!.bucket
        var keys: [String] = []
        try await s3.listAll(bucket: bucket, prefix: "_logs/", logger: logger) { page throws(AWSError) in
            keys += page.map(\.key).filter { $0.hasSuffix(".log") }
        }
        let wanted = Set(instances)
        let logs = keys.map { (key: $0, instance: String($0.dropFirst("_logs/".count).dropLast(".log".count))) }
            .filter { wanted.isEmpty || wanted.contains($0.instance) }
        guard !logs.isEmpty else { throw ValidationError("no worker logs under s3://\(bucket)/_logs/") }
        let folder: String
        if let keep {
            _ = mkdir(keep, 0o755)
            folder = keep
        } else {
            var template = Array("/tmp/parallelizer-logs-XXXXXX".utf8CString)
            guard let made = mkdtemp(&template) else { throw ValidationError("cannot make a temporary folder") }
            folder = String(cString: made)
        }
        defer { if keep == nil { LocalFile.removeTree(folder) } }
        var sources: [LogMerge.Source] = []
        var readers: [LineReader] = []
        for log in logs {
            let path = folder + "/" + String(log.instance.map { $0 == "/" ? "_" : $0 }) + ".log"
            try await s3.getObject(bucket: bucket, key: log.key, to: path, logger: logger)
            guard let reader = LineReader(path: path) else { throw ValidationError("cannot read \(path)") }
            readers.append(reader)
            sources.append(LogMerge.Source(instance: log.instance, next: reader.next))
        }
        LogMerge.merge(sources, atLeast: level.flatMap(Logger.Level.init(rawValue:))) { print($0) }
    }
}
