import ArgumentParser
import AWSCore
import AWSServices
import FoundationEssentials
import Logging
import Operators
import Worker

struct Failures: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the failure records grouped by reason, or show one whole.",
        discussion: """
            The daemon writes a record under _failed/ at the results bucket's top for every input it gives up, \
            every bad message and every message given back unrun on its last receive. `failures` reads them (up to \
            --limit) and groups them by reason; `failures show KEY` prints one: the reason, the exit status, the \
            attempts and the end of the command's stderr. KEY is an input key or a record's own key (_failed/...).
            """,
        subcommands: [List.self, Show.self], defaultSubcommand: List.self)

    struct Common: ParsableArguments {
        @Option(help: "Where the results go, s3://bucket[/prefix]: the records are at the bucket's top.")
        var results: String

        @Option(help: "text or json.")
        var format: String = "text"

        func validate() throws {
            guard S3URI(results) != nil else { throw ValidationError("--results takes s3://bucket/prefix") }
            guard format == "text" || format == "json" else { throw ValidationError("--format is text or json") }
        }

        var bucket: String { S3URI(results)!.bucket }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The failure records, grouped by reason.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var common: Common

        @Option(help: "Read at most this many records (each is one GET); past it, a sample spread over them all.")
        var limit: Int = 2_000

        func run() async throws {
            let logger = global.logger("parallelizer.failures")
            let context = try await global.context(logger: logger)
            let report = try await FailureReport.read(
                bucket: common.bucket, s3: try S3Client(context: context), limit: max(1, limit), logger: logger)
            print(common.format == "json" ? try jsonText(report) : report.text)
        }
    }

    struct Show: AsyncParsableCommand {
        static func fetch(_ s3: S3Client, bucket: String, key: String, logger: Logger) async -> Result<
            [UInt8], AWSError
        > {
            do throws(AWSError) {
                return .success(try await s3.getObjectBytes(bucket: bucket, key: key, logger: logger))
            } catch {
                return .failure(error)
            }
        }

        static let configuration = CommandConfiguration(abstract: "One failure record, whole.")
        @OptionGroup var global: GlobalOptions
        @OptionGroup var common: Common

        @Argument(help: "An input key, or a record's key (_failed/...).")
        var key: String

        func run() async throws {
            let logger = global.logger("parallelizer.failures")
            let context = try await global.context(logger: logger)
            // An input as the list prints it (s3://bucket/key), a bare input key, or a record's own key.
            var input = key
            if let uri = S3URI(key) { input = uri.key }
            let recordKey = input.hasPrefix("_failed/") ? input : FailureRecords.key(forInput: input)
            let s3 = try S3Client(context: context)
            let fetched = await Self.fetch(s3, bucket: common.bucket, key: recordKey, logger: logger)
            if case .failure(let error) = fetched, error.httpStatus == 404 {
                throw ValidationError("no failure record s3://\(common.bucket)/\(recordKey)")
            }
            let bytes = try fetched.get()
            guard let json = try? JSONValue.parse(bytes), let record = FailureRecordSummary(key: recordKey, json: json)
            else { throw ValidationError("s3://\(common.bucket)/\(recordKey) is not a failure record") }
            print(common.format == "json" ? try jsonText(record) : record.text)
        }
    }
}

/// Sorted-key JSON on one line, as `status --format json` prints.
func jsonText<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}
