import ArgumentParser
import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Operators
import Worker

struct ReconcileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reconcile",
        abstract: "Put every input beside what became of it: done, failed, dead-lettered, queued, or missing.",
        discussion: """
            Walks the inputs (a prefix, or the source enqueue recorded on the queue's tags) in key order, a page at \
            a time, and looks each page up among the outputs (the key the daemon writes for --output-name), the \
            failure records under _failed/, and the dead-letter queue; memory stays flat whatever the run's size. \
            One line per input on stdout: state, key and, for a failure, its reason, tab-separated; the totals on \
            stderr. The queue itself is not read unless --read-queue says so (a receive counts against a message's \
            attempts; each one reconcile makes is noted as unrun, as the daemon notes its own): while it holds \
            messages, an input with no trace is "unsettled"; once it is empty, "missing". --enqueue-missing sends \
            exactly the missing ones again, and is refused while the queue holds unread messages.
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "The SQS queue URL (its redrive policy names the dead-letter queue).")
    var queueURL: String

    @Option(help: "The inputs: s3://bucket/prefix (default: the source enqueue recorded on the queue's tags).")
    var inputs: String?

    @Option(help: "Where the outputs are: s3://bucket/prefix (the daemon's outputBucket and outputPrefix).")
    var results: String

    @Option(help: "The name the command gives its output, {name} standing for the input's file name ('{name}.out').")
    var outputName: String

    @Option(help: "The daemon's inputPrefix: outputs keep the input's folder below it.")
    var inputPrefix: String = ""

    @Flag(help: "Send the inputs with no trace again (only once the queue is empty).")
    var enqueueMissing = false

    @Flag(help: "Read the queue's messages too (each receive noted as unrun; they are visible again at the end).")
    var readQueue = false

    @Option(help: "With --enqueue-missing: the message bodies, as enqueue's --body-form (json, s3uri or key).")
    var bodyForm: String = "json"

    func validate() throws {
        guard S3URI(results) != nil else { throw ValidationError("--results takes s3://bucket/prefix") }
        if let inputs, S3URI(inputs) == nil { throw ValidationError("--inputs takes s3://bucket/prefix") }
        guard BodyForm(rawValue: bodyForm) != nil else { throw ValidationError("--body-form is json, s3uri or key") }
    }

    func run() async throws {
        let logger = global.logger("parallelizer.reconcile")
        let context = try await global.context(logger: logger)
        var source = inputs.flatMap(S3URI.init)
        if source == nil {
            let manifest = try await SQSClient(context: context).runManifest(queueURL: queueURL, logger: logger)
            guard let recorded = manifest?.source, let uri = S3URI(recorded) else {
                logger.critical(
                    "no --inputs, and the queue's tags hold no run enqueue fed from an S3 prefix (\(manifest?.source ?? "none")): give --inputs s3://bucket/prefix"
                )
                throw ExitCode(2)
            }
            source = uri
        }
        guard let source, let results = S3URI(results) else { throw ExitCode(2) }
        var options = Reconcile.Options(inputs: source, results: results, outputName: outputName, queueURL: queueURL)
        options.inputPrefix = inputPrefix
        options.enqueueMissing = enqueueMissing
        options.readQueue = readQueue
        options.bodyForm = BodyForm(rawValue: bodyForm) ?? .json
        let parser = MessageParser(inputBucket: source.bucket, inputPrefix: inputPrefix)
        let formats = Reconcile.Formats(
            recordKey: { FailureRecords.key(forInput: $0) },
            inputKeys: { body in
                switch try? parser.parse(body) {
                case .tasks(let inputs)?, .partialEvent(let inputs, _)?: return inputs
                default: return []
                }
            })
        let totals: Reconcile.Totals
        do {
            totals = try await Reconcile(options: options, formats: formats, context: context).run(logger: logger) {
                key, state in print(state.line(key))
            }
        } catch let refusal as Reconcile.Refusal {
            logger.critical("\(refusal)")
            throw ExitCode(2)
        }
        var summary = totals.summary
        if enqueueMissing {
            summary += "; sent again \(totals.sent)" + (totals.sendFailed > 0 ? ", not sent \(totals.sendFailed)" : "")
        }
        fputs(summary + "\n", stderr)
        if totals.sendFailed > 0 { throw ExitCode(1) }
    }
}
