import ArgumentParser
import AWSCore
import AWSServices

struct Presign: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a presigned GET URL for an S3 object, to hand it to someone without credentials.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The object, as s3://bucket/key.")
    var object: String

    @Option(help: "Seconds the URL stays valid (at most 604800, seven days).")
    var expires: Int = 3600

    func validate() throws {
        guard S3URI(object) != nil else { throw ValidationError("expected s3://bucket/key, got '\(object)'") }
        guard (1...604_800).contains(expires) else { throw ValidationError("--expires must be between 1 and 604800") }
    }

    func run() async throws {
        let logger = global.logger("parallelizer.presign")
        let uri = S3URI(object)!
        let s3 = try S3Client(context: try await global.context(logger: logger))
        print(try await s3.presignedGetURL(bucket: uri.bucket, key: uri.key, expires: expires, logger: logger))
    }
}
