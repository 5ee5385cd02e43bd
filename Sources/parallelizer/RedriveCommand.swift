import ArgumentParser
import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Operators

struct RedriveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "redrive",
        abstract: "Move the dead-letter queue's messages back into the queue, for another try.",
        discussion: """
            With SQS's move task (StartMessageMoveTask, each message back to the queue it came from) where the \
            service offers it; else, and with --max, message by message: received from the dead-letter queue, sent \
            to the queue, and only then deleted (refused when the dead-letter queue serves several queues). Cut off \
            midway, a message is at worst in both queues (it runs twice), never in neither. It exits 1 when messages \
            are left in the dead-letter queue. FIFO queues are not handled. Message attributes are not \
            carried over on the second way (parallelizer's messages have none).
            """)

    @OptionGroup var global: GlobalOptions

    @Option(help: "The SQS queue URL (its redrive policy names the dead-letter queue).")
    var queueURL: String

    @Option(help: "Move at most this many (message by message).")
    var max: Int?

    func validate() throws {
        if let max, max < 1 { throw ValidationError("--max is at least 1") }
    }

    func run() async throws {
        let logger = global.logger("parallelizer.redrive")
        let context = try await global.context(logger: logger)
        let terminal = isatty(2) == 1
        let outcome = try await Redrive(sqs: SQSClient(context: context)).run(
            queueURL: queueURL, limit: max,
            progress: { moved in if terminal { fputs("\rmoved \(moved)", stderr) } }, logger: logger)
        if terminal { fputs("\n", stderr) }
        print("moved \(outcome.moved), failed \(outcome.failed), left \(outcome.left) (\(outcome.method))")
        if outcome.failed > 0 || (outcome.left > 0 && max == nil) {
            logger.error(
                "\(outcome.left) messages are still in the dead-letter queue (refused by the queue, hidden by a redrive cut short, or beyond --max): run redrive again"
            )
            throw ExitCode(1)
        }
    }
}
