import AWSCore
import AWSServices
import FoundationEssentials
import TestSupport
import Testing

/// S3 through the microburst fault proxy in front of moto (signature checks on). Rules are global to the proxy, so
/// these run one at a time and clear the rules afterwards.
@Suite(.enabled(if: TestEnvironment.canRun(.moto, .microburst)), .serialized, .timeLimit(.minutes(3)))
struct S3FaultTests {
    func bucket() async throws -> String {
        let name = uniqueName("pz-fault")
        try await S3Client(context: try TestEnvironment.motoContext()).createBucket(name, logger: quietLogger)
        return name
    }

    @Test func aFailedMultipartUploadIsAborted() async throws {
        let bucket = try await bucket()
        var options = S3Client.Options()
        options.multipartThreshold = 6 << 20
        options.partSize = 5 << 20
        let s3 = try S3Client(context: try TestEnvironment.faultContext(), options: options)
        // microburst files UploadPart under PutObject (the same method and path); either way every part fails.
        try await TestEnvironment.setFaultRules(
            #"[{"service":"s3","operation":"PutObject","error":{"code":"InternalError","status":500},"times":100}]"#)
        defer { Task { try? await TestEnvironment.setFaultRules("[]") } }
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/f", size: 12 << 20)
            await #expect {
                try await s3.putObject(bucket: bucket, key: "abandoned", file: "\(dir)/f", logger: quietLogger)
            } throws: { ($0 as? AWSError)?.code == "InternalError" }
        }
        try await TestEnvironment.setFaultRules("[]")
        let pending = try await s3.listMultipartUploads(bucket: bucket, logger: quietLogger)
        #expect(pending.isEmpty, "the failed upload was left open: \(pending)")
    }

    @Test func aGetAbortedMidBodyIsRetriedToCompletion() async throws {
        let bucket = try await bucket()
        let s3 = try S3Client(context: try TestEnvironment.faultContext())
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: 6 << 20, seed: 8)
            try await s3.putObject(bucket: bucket, key: "whole", file: "\(dir)/in", logger: quietLogger)
            try await TestEnvironment.setFaultRules(
                #"[{"service":"s3","operation":"GetObject","response":{"abort_frac":0.5},"times":2}]"#)
            let logs = CapturedLogs()
            let info = try await s3.getObject(bucket: bucket, key: "whole", to: "\(dir)/out", logger: logs.logger())
            try await TestEnvironment.setFaultRules("[]")
            #expect(info.size == 6 << 20)
            #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")))
            #expect(logs.lines.filter { $0.contains("retrying AWS call") }.count == 2)
        }
    }
}
