import AWSCore
import AWSServices
import FoundationEssentials
import HTTPCurl
import TestSupport
import Testing

/// S3 against SeaweedFS, which checks signatures as strictly as AWS: every key character, session tokens, clock
/// skew and presigned URLs. (SeaweedFS itself refuses `/./` and `/../` in keys and folds `//` in listings, so those
/// are left to the signer's unit tests.)
@Suite(.enabled(if: TestEnvironment.canRun(.seaweed)), .timeLimit(.minutes(5)))
struct S3SeaweedTests {
    static let awkwardKeys = [
        "dir/a b+c=d&é~%.txt", "x:y,z;w@v$u(t)s'r*q!p.bin", "深い/フォルダ/ファイル 1.dat", "percent%2Fnot-a-slash",
        "  leading and trailing  ", "tilde~and~plus+plus",
    ]

    func bucket(_ s3: S3Client) async throws -> String {
        let name = uniqueName("pz-sw")
        try await s3.createBucket(name, logger: quietLogger)
        return name
    }

    @Test func keysWithAnyCharacterRoundTrip() async throws {
        let s3 = try S3Client(context: try TestEnvironment.seaweedContext())
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            for (index, key) in Self.awkwardKeys.enumerated() {
                makeFile("\(dir)/in", size: 1000 + index, seed: UInt8(index))
                try await s3.putObject(bucket: bucket, key: key, file: "\(dir)/in", logger: quietLogger)
                let head = try await s3.headObject(bucket: bucket, key: key, logger: quietLogger)
                #expect(head?.size == Int64(1000 + index), "HEAD \(key)")
                try await s3.getObject(bucket: bucket, key: key, to: "\(dir)/out", logger: quietLogger)
                #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")), "GET \(key)")
            }
            var listed: [String] = []
            try await s3.listAll(bucket: bucket, logger: quietLogger) { page throws(AWSError) in
                listed += page.map(\.key)
            }
            #expect(Set(listed) == Set(Self.awkwardKeys))
            let underDir = try await s3.listObjectsV2(bucket: bucket, prefix: "深い/", logger: quietLogger)
            #expect(underDir.objects.map(\.key) == ["深い/フォルダ/ファイル 1.dat"])
            try await s3.deleteObject(bucket: bucket, key: Self.awkwardKeys[0], logger: quietLogger)
            #expect(try await s3.headObject(bucket: bucket, key: Self.awkwardKeys[0], logger: quietLogger) == nil)
        }
    }

    /// The default upload sends its CRC-32C as an `aws-chunked` trailer. SeaweedFS checks it as S3 does: the same
    /// framing with a wrong checksum is refused, so the uploads that pass carried the right one.
    @Test func trailingChecksumsAreCheckedByTheServer() async throws {
        let s3 = try S3Client(context: try TestEnvironment.seaweedContext())
        #expect({ if case .crc32cTrailer = s3.options.checksum { true } else { false } }())
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            for size in [0, 1, (3 << 20) + 7] {
                makeFile("\(dir)/in", size: size, seed: 9)
                try await s3.putObject(
                    bucket: bucket, key: "crc/\(size) é+.bin", file: "\(dir)/in", logger: quietLogger)
                try await s3.getObject(bucket: bucket, key: "crc/\(size) é+.bin", to: "\(dir)/out", logger: quietLogger)
                #expect(try await fileSHA256("\(dir)/out") == (try await fileSHA256("\(dir)/in")), "size \(size)")
            }
        }
        let data = Array("checksum me".utf8)
        func put(_ key: String, crc: UInt32) async throws {
            try await putWithCRC32CTrailer(s3, bucket: bucket, key: key, data: data, crc: crc)
        }
        try await put("right", crc: 0x0A6A_83D4)  // CRC-32C("checksum me"), by an independent implementation
        await #expect { try await put("wrong", crc: 0x0A6A_83D5) } throws: { ($0 as? AWSError)?.httpStatus == 400 }
        #expect(try await s3.headObject(bucket: bucket, key: "right", logger: quietLogger)?.size == Int64(data.count))
        #expect(try await s3.headObject(bucket: bucket, key: "wrong", logger: quietLogger) == nil)
    }

    @Test func multipartWithAnAwkwardKeyAndAZeroByteObject() async throws {
        var options = S3Client.Options()
        options.multipartThreshold = 8 << 20
        options.partSize = 5 << 20
        options.checksum = .contentMD5
        let s3 = try S3Client(context: try TestEnvironment.seaweedContext(), options: options)
        let bucket = try await bucket(s3)
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/big", size: (12 << 20) + 123, seed: 2)
            let key = "multi part/é+&=.bin"
            let etag = try await s3.putObject(bucket: bucket, key: key, file: "\(dir)/big", logger: quietLogger)
            #expect(etag.hasSuffix("-3\""))
            try await s3.getObject(bucket: bucket, key: key, to: "\(dir)/back", logger: quietLogger)
            #expect(try await fileSHA256("\(dir)/back") == (try await fileSHA256("\(dir)/big")))
            makeFile("\(dir)/zero", size: 0)
            try await s3.putObject(bucket: bucket, key: "zero", file: "\(dir)/zero", logger: quietLogger)
            let info = try await s3.getObject(bucket: bucket, key: "zero", to: "\(dir)/zero-back", logger: quietLogger)
            #expect(info.size == 0)
            #expect(LocalFile.size("\(dir)/zero-back") == 0)
        }
    }

    @Test func aSkewedClockIsCorrectedWithASessionToken() async throws {
        // Our clock runs 20 minutes fast; SeaweedFS refuses such signatures (RequestTimeTooSkewed) like AWS does.
        let logs = CapturedLogs()
        let ctx = TestEnvironment.context(
            endpoint: try TestEnvironment.endpoint(.seaweed),
            credentials: try TestEnvironment.seaweedSessionCredentials(),
            now: { Date().addingTimeInterval(20 * 60) })
        let s3 = try S3Client(context: ctx)
        let bucket = uniqueName("pz-skew")
        try await s3.createBucket(bucket, logger: logs.logger())
        try await s3.putObject(bucket: bucket, key: "a b+c.txt", bytes: Array("skew".utf8), logger: logs.logger())
        #expect(try await s3.headObject(bucket: bucket, key: "a b+c.txt", logger: logs.logger())?.size == 4)
        #expect(logs.contains(level: .warning, "clock skew corrected"))
        #expect(abs(ctx.client.clock.seconds + 1200) < 30)
        let token = try TestEnvironment.seaweedSessionCredentials().sessionToken!
        #expect(!logs.lines.joined().contains(token))
    }

    @Test func aTamperedSessionTokenIsRejected() async throws {
        var creds = try TestEnvironment.seaweedSessionCredentials()
        creds.sessionToken = String(creds.sessionToken!.dropLast(4)) + "AAAA"
        let s3 = try S3Client(
            context: TestEnvironment.context(endpoint: try TestEnvironment.endpoint(.seaweed), credentials: creds))
        await #expect(throws: AWSError.self) { _ = try await s3.listObjectsV2(bucket: "anything", logger: quietLogger) }
    }

    @Test func presignedURLsWorkWithoutCredentials() async throws {
        let s3 = try S3Client(context: try TestEnvironment.seaweedContext())
        let bucket = try await bucket(s3)
        let key = "shared/report é+1.txt"
        try await s3.putObject(bucket: bucket, key: key, bytes: Array("for your eyes".utf8), logger: quietLogger)
        let url = try await s3.presignedGetURL(bucket: bucket, key: key, expires: 600, logger: quietLogger)
        let http = HTTPClient()
        let response = try await http.execute(HTTPRequest(method: "GET", url: url))
        #expect(response.status == 200)
        #expect(String(decoding: response.body, as: UTF8.self) == "for your eyes")
        let tampered = url.replacing("report", with: "rePort")
        #expect(try await http.execute(HTTPRequest(method: "GET", url: tampered)).status == 403)
    }
}
