import AWSCore
import AWSServices
import FoundationEssentials
import TestSupport
import Testing

/// S3 against moto_server with signature checking on.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(5)))
struct S3MotoTests {
    func bucket(_ s3: S3Client) async throws -> String {
        let name = uniqueName("pz-s3")
        try await s3.createBucket(name, logger: quietLogger)
        return name
    }

    @Test func tamperedSignatureIsRejectedAndTheCorrectOneAccepted() async throws {
        let good = try S3Client(context: try TestEnvironment.motoContext())
        let bucket = try await bucket(good)
        var wrong = try TestEnvironment.motoCredentials()
        wrong.secretAccessKey = String(wrong.secretAccessKey.reversed())
        let bad = try S3Client(
            context: TestEnvironment.context(endpoint: try TestEnvironment.endpoint(.moto), credentials: wrong))
        await #expect {
            _ = try await bad.listObjectsV2(bucket: bucket, logger: quietLogger)
        } throws: { error in
            let e = error as? AWSError
            return e?.httpStatus == 403 && e?.code == "SignatureDoesNotMatch"
        }
        // The same request, correctly signed, is accepted.
        let page = try await good.listObjectsV2(bucket: bucket, logger: quietLogger)
        #expect(page.objects.isEmpty)
        // And a wrong secret never shows in the error.
        do { _ = try await bad.listObjectsV2(bucket: bucket, logger: quietLogger) } catch {
            #expect(!"\(error)".contains(wrong.secretAccessKey))
        }
    }

    @Test func putGetHeadAndZeroBytes() async throws {
        let s3 = try S3Client(context: try TestEnvironment.motoContext())
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            for (key, size) in [("folder/sub dir/file_~-.bin", 300_000), ("empty", 0)] {
                makeFile("\(dir)/in", size: size, seed: 5)
                try await s3.putObject(bucket: bucket, key: key, file: "\(dir)/in", logger: quietLogger)
                let head = try await s3.headObject(bucket: bucket, key: key, logger: quietLogger)
                #expect(head?.size == Int64(size))
                let info = try await s3.getObject(bucket: bucket, key: key, to: "\(dir)/out", logger: quietLogger)
                #expect(info.size == Int64(size))
                #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")))
            }
            #expect(try await s3.headObject(bucket: bucket, key: "missing", logger: quietLogger) == nil)
            await #expect {
                try await s3.getObject(bucket: bucket, key: "missing", to: "\(dir)/none", logger: quietLogger)
            } throws: { ($0 as? AWSError)?.code == "NoSuchKey" }
            #expect(!fileExists("\(dir)/none"))
        }
    }

    /// moto keeps the CRC-32C an upload's trailer gives without checking it, so an object can be stored with a wrong
    /// one: its download is refused as corrupt (after the retries) and leaves no file; the right one downloads.
    @Test func downloadsAreCheckedAgainstTheStoredCRC32C() async throws {
        let s3 = try S3Client(context: try TestEnvironment.motoContext())
        let bucket = try await bucket(s3)
        let data = Array("checksum me".utf8)
        try await putWithCRC32CTrailer(s3, bucket: bucket, key: "right", data: data, crc: 0x0A6A_83D4)
        try await putWithCRC32CTrailer(s3, bucket: bucket, key: "wrong", data: data, crc: 0x0A6A_83D5)
        try await withTemporaryDirectory { dir in
            try await s3.getObject(bucket: bucket, key: "right", to: "\(dir)/right", logger: quietLogger)
            #expect(LocalFile.read("\(dir)/right") == data)
            await #expect {
                try await s3.getObject(bucket: bucket, key: "wrong", to: "\(dir)/wrong", logger: quietLogger)
            } throws: { ($0 as? AWSError)?.kind == .transport(.corrupt) }
            #expect(!fileExists("\(dir)/wrong") && !fileExists("\(dir)/wrong.part"))
        }
    }

    @Test func listingPaginates() async throws {
        let s3 = try S3Client(context: try TestEnvironment.motoContext())
        let bucket = try await bucket(s3)
        for i in 0..<7 {
            // (Keys with any character are tested on SeaweedFS, the strict signature checker.)
            try await s3.putObject(bucket: bucket, key: "p-\(i) x", bytes: Array("\(i)".utf8), logger: quietLogger)
        }
        try await s3.putObject(bucket: bucket, key: "other", bytes: [1], logger: quietLogger)
        let first = try await s3.listObjectsV2(bucket: bucket, prefix: "p-", maxKeys: 3, logger: quietLogger)
        #expect(first.objects.count == 3)
        #expect(first.nextContinuationToken != nil)
        var all: [String] = []
        try await s3.listAll(bucket: bucket, prefix: "p-", logger: quietLogger) { page throws(AWSError) in
            all += page.map(\.key)
        }
        #expect(all == (0..<7).map { "p-\($0) x" })
    }

    @Test func multipartAboveTheThreshold() async throws {
        // 70 MiB crosses the default 64 MiB threshold: five 16 MiB parts, four at a time.
        let s3 = try S3Client(context: try TestEnvironment.motoContext())
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            let size = 70 << 20
            makeFile("\(dir)/big", size: size, seed: 1)
            let etag = try await s3.putObject(
                bucket: bucket, key: "big/object", file: "\(dir)/big", logger: quietLogger)
            #expect(etag.hasSuffix("-5\""))  // an AWS-style multipart ETag: five parts
            let info = try await s3.getObject(bucket: bucket, key: "big/object", to: "\(dir)/back", logger: quietLogger)
            #expect(info.size == Int64(size))
            #expect(try await fileSHA256("\(dir)/back") == (try await fileSHA256("\(dir)/big")))
        }
    }

    @Test func sessionTokenCredentialsWork() async throws {
        let ctx = TestEnvironment.context(
            endpoint: try TestEnvironment.endpoint(.moto),
            credentials: try TestEnvironment.motoSessionCredentials())
        let s3 = try S3Client(context: ctx)
        let bucket = try await bucket(s3)
        try await s3.putObject(bucket: bucket, key: "k", bytes: Array("hello".utf8), logger: quietLogger)
        #expect(try await s3.headObject(bucket: bucket, key: "k", logger: quietLogger)?.size == 5)
        var tampered = try TestEnvironment.motoSessionCredentials()
        tampered.sessionToken = "X" + (tampered.sessionToken ?? "")
        let bad = try S3Client(
            context: TestEnvironment.context(endpoint: try TestEnvironment.endpoint(.moto), credentials: tampered))
        await #expect(throws: AWSError.self) {
            _ = try await bad.headObject(bucket: bucket, key: "k", logger: quietLogger)
        }
    }
}
