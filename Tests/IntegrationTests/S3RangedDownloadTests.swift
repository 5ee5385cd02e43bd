import AWSCore
import FoundationEssentials
import Glibc
import HTTPCurl
import TestSupport
import Testing

@testable import AWSServices

/// Large objects in pieces against SeaweedFS: a multipart object part by part and a single object in byte ranges,
/// byte-identical; an object replaced mid-download refused by the ETag pin; a composite checksum that the parts do
/// not make refused; and a server that ignores `partNumber` (moto) still served, in ranges.
@Suite(.enabled(if: TestEnvironment.canRun(.seaweed)), .timeLimit(.minutes(5)))
struct S3RangedDownloadTests {
    /// Parts of 5 MiB (S3's least), ranges above 6 MiB, four at a time.
    static func client(_ context: AWSContext) throws -> S3Client {
        var options = S3Client.Options()
        options.multipartThreshold = 6 << 20
        options.rangeThreshold = 6 << 20
        options.partSize = 5 << 20
        options.concurrency = 4
        return try S3Client(context: context, options: options)
    }

    func bucket(_ s3: S3Client) async throws -> String {
        let name = uniqueName("pz-rg")
        try await s3.createBucket(name, logger: quietLogger)
        return name
    }

    /// Uploaded in parts with S3's COMPOSITE checksum: it comes back part by part (`partNumber`), the parts'
    /// checksums making the composite value.
    @Test func aMultipartObjectComesBackPartByPart() async throws {
        var s3 = try Self.client(try TestEnvironment.seaweedContext())
        s3.options.multipartChecksum = .composite
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: (17 << 20) + 321, seed: 4)
            let etag = try await s3.putObject(
                bucket: bucket, key: "parts/é +.bin", file: "\(dir)/in", logger: quietLogger)
            #expect(etag.hasSuffix("-4\""))
            let info = try await s3.getObject(
                bucket: bucket, key: "parts/é +.bin", to: "\(dir)/out", logger: quietLogger)
            #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")))
            #expect(info.size == (17 << 20) + 321)
            #expect(info.pieces == 4)
            #expect(info.checkedCRC32C?.hasSuffix("-4") == true, "\(info)")
            #expect(!fileExists("\(dir)/out.part"))
        }
    }

    /// The default multipart upload asks S3 to keep the whole object's CRC-32C (FULL_OBJECT), combined from the
    /// parts'. SeaweedFS keeps its COMPOSITE value instead (it does not take `x-amz-checksum-type`), moto the
    /// whole-object one, as AWS does; either way the download passes the check the server's value allows, and the
    /// whole-object value, where kept, is the file's own.
    @Test(arguments: [TestEnvironment.Server.seaweed, .moto])
    func theDefaultMultipartUploadKeepsAChecksumTheDownloadPasses(_ server: TestEnvironment.Server) async throws {
        try #require(TestEnvironment.canRun(server))
        let s3 = try Self.client(
            server == .moto ? try TestEnvironment.motoContext() : try TestEnvironment.seaweedContext())
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: (11 << 20) + 9, seed: 7)
            try await s3.putObject(bucket: bucket, key: "whole", file: "\(dir)/in", logger: quietLogger)
            let info = try await s3.getObject(bucket: bucket, key: "whole", to: "\(dir)/out", logger: quietLogger)
            #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")))
            let checked = try #require(info.checkedCRC32C, "\(server): no checksum kept")
            if !checked.contains("-") {
                #expect(checked == CRC32C.base64(try fileCRC32C("\(dir)/in")), "\(server)")
            }
        }
    }

    @Test func aSingleObjectComesBackInRangesCheckedWhole() async throws {
        var s3 = try Self.client(try TestEnvironment.seaweedContext())
        s3.options.multipartThreshold = 1 << 30
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: (13 << 20) + 5, seed: 6)
            let etag = try await s3.putObject(bucket: bucket, key: "single", file: "\(dir)/in", logger: quietLogger)
            #expect(!etag.contains("-"))
            let info = try await s3.getObject(bucket: bucket, key: "single", to: "\(dir)/out", logger: quietLogger)
            #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")))
            #expect(info.pieces == 3)
            #expect(info.checkedCRC32C?.contains("-") == false, "\(info)")
            // Below the threshold: one stream, as before.
            makeFile("\(dir)/small", size: 6 << 20, seed: 1)
            try await s3.putObject(bucket: bucket, key: "small", file: "\(dir)/small", logger: quietLogger)
            #expect(
                try await s3.getObject(bucket: bucket, key: "small", to: "\(dir)/s", logger: quietLogger).pieces == 1)
        }
    }

    /// The first GET saw one version; the object is then replaced. Every piece carries `If-Match` with the first
    /// ETag, so S3 answers 412 and nothing of either version is left as the file.
    @Test func anObjectReplacedMidDownloadIsRefused() async throws {
        let s3 = try Self.client(try TestEnvironment.seaweedContext())
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/v1", size: 12 << 20, seed: 1)
            makeFile("\(dir)/v2", size: 12 << 20, seed: 2)
            try await s3.putObject(bucket: bucket, key: "moving", file: "\(dir)/v1", logger: quietLogger)
            let first = try await Self.firstReply(s3, bucket: bucket, key: "moving")
            try await s3.putObject(bucket: bucket, key: "moving", file: "\(dir)/v2", logger: quietLogger)
            await #expect {
                try await s3.rangedDownload(
                    bucket: bucket, key: "moving", to: "\(dir)/out", first: first, logger: quietLogger)
            } throws: { ($0 as? AWSError)?.httpStatus == 412 }
            #expect(!fileExists("\(dir)/out"))
            #expect(!fileExists("\(dir)/out.part"))
        }
    }

    /// Parts whose checksums do not make the composite value the first reply gave are refused, and leave no file.
    @Test func aWrongPartChecksumIsRefused() async throws {
        let s3 = try Self.client(try TestEnvironment.seaweedContext())
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: 12 << 20, seed: 3)
            try await s3.putObject(bucket: bucket, key: "parts", file: "\(dir)/in", logger: quietLogger)
            var first = try await Self.firstReply(s3, bucket: bucket, key: "parts")
            // The same object, with a composite value one part's checksum would have to differ to make.
            first.headers.removeAll { $0.0.lowercased() == S3Client.crc32cHeader }
            first.headers.append((S3Client.crc32cHeader, "AAAAAA==-3"))
            await #expect {
                try await s3.rangedDownload(
                    bucket: bucket, key: "parts", to: "\(dir)/out", first: first, logger: quietLogger)
            } throws: { ($0 as? AWSError)?.code == "ChecksumMismatch" }
            #expect(!fileExists("\(dir)/out"))
            #expect(!fileExists("\(dir)/out.part"))
        }
    }

    /// moto answers a `partNumber` GET with the whole object (AWS serves the part). The download says so once and
    /// takes the object in byte ranges instead.
    @Test(.enabled(if: TestEnvironment.canRun(.moto))) func aServerThatIgnoresPartNumberIsServedInRanges() async throws
    {
        var s3 = try Self.client(try TestEnvironment.motoContext())
        s3.options.multipartChecksum = .composite
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: 12 << 20, seed: 5)
            try await s3.putObject(bucket: bucket, key: "parts", file: "\(dir)/in", logger: quietLogger)
            let logs = CapturedLogs()
            let info = try await s3.getObject(bucket: bucket, key: "parts", to: "\(dir)/out", logger: logs.logger())
            #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")))
            #expect(info.pieces == 3)
            #expect(logs.lines.filter { $0.contains("does not serve parts") }.count == 1, "\(logs.lines)")
        }
    }

    func fileCRC32C(_ path: String) throws -> UInt32 {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var crc: UInt32 = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            crc = buffer.withUnsafeBytes {
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<n]), continuing: crc)
            }
        }
        return crc
    }

    /// The reply `getObject`'s first GET stops at: headers only.
    static func firstReply(_ s3: S3Client, bucket: String, key: String) async throws -> HTTPResponse {
        try await withTemporaryDirectory { dir in
            let reply = try await s3.send(
                AWSRequest(
                    method: "GET", headers: [("x-amz-checksum-mode", "ENABLED")],
                    response: .file(path: "\(dir)/first", crc32cHeader: nil, stopAbove: 0)),
                bucket: bucket, key: key, logger: quietLogger)
            #expect(reply.bodySkipped)
            return reply
        }
    }
}
