import AWSCore
import HTTPCurl
@testable import AWSServices
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

    /// A large object in ranges, two of them cut mid-body: each cut range is fetched again alone (two retries, not a
    /// new download), and the file is the object, checked against its whole-object CRC-32C. (microburst drops
    /// Content-Length from every reply, so a GET through it cannot tell the object's size at its headers: the first
    /// reply comes straight from moto, the ranges through the proxy.)
    @Test func aRangeCutMidBodyIsRetriedAlone() async throws {
        try await throughTheProxy(rule: #"{"response":{"abort_frac":0.5},"times":2}"#) {
            s3, bucket, first, dir in
            let logs = CapturedLogs()
            let info = try await s3.rangedDownload(
                bucket: bucket, key: "ranged", to: "\(dir)/out", first: first, logger: logs.logger())
            #expect(info.pieces == 3)
            #expect(info.checkedCRC32C != nil)
            #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")))
            #expect(logs.lines.filter { $0.contains("retrying AWS call") }.count == 2, "\(logs.lines)")
        }
    }

    /// A range whose bytes are changed on the way (same length): the whole-object CRC-32C the ranges must make
    /// refuses the download, and no file is left.
    @Test func aRangeCorruptedOnTheWayIsRefused() async throws {
        try await throughTheProxy(rule: #"{"response":{"corrupt_bytes":1},"times":1}"#) {
            s3, bucket, first, dir in
            await #expect {
                try await s3.rangedDownload(
                    bucket: bucket, key: "ranged", to: "\(dir)/out", first: first, logger: quietLogger)
            } throws: { ($0 as? AWSError)?.code == "ChecksumMismatch" }
            #expect(!fileExists("\(dir)/out"))
            #expect(!fileExists("\(dir)/out.part"))
        }
    }

    /// A 12 MiB object with its CRC-32C on moto, the first GET's reply from moto itself, and a client whose ranges
    /// (4 MiB, three at a time) go through the proxy with `rule` on GetObject; `body` downloads. (The proxy's log of
    /// fired faults keeps only its latest entries: the retries in the log, or the refusal, are the evidence.)
    func throughTheProxy(
        rule: String, _ body: (S3Client, String, HTTPResponse, String) async throws -> Void
    ) async throws {
        let bucket = try await bucket()
        var options = S3Client.Options()
        options.multipartThreshold = 1 << 30
        options.partSize = 4 << 20
        options.concurrency = 3
        let s3 = try S3Client(context: try TestEnvironment.faultContext(), options: options)
        let direct = try S3Client(context: try TestEnvironment.motoContext(), options: options)
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: 12 << 20, seed: 9)
            try await direct.putObject(bucket: bucket, key: "ranged", file: "\(dir)/in", logger: quietLogger)
            let first = try await S3RangedDownloadTests.firstReply(direct, bucket: bucket, key: "ranged")
            try await TestEnvironment.setFaultRules(
                #"[{"service":"s3","operation":"GetObject","# + rule.dropFirst() + "]")
            defer { Task { try? await TestEnvironment.setFaultRules("[]") } }
            try await body(s3, bucket, first, dir)
            try await TestEnvironment.setFaultRules("[]")
        }
    }
}
