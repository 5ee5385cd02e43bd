import AWSCore
import AWSServices
import FoundationEssentials
import HTTPCurl
import TestSupport
import Testing

/// Retries and body handling of the AWS client, against the plain HTTP stub (which ignores signatures).
@Suite(.enabled(if: TestEnvironment.canRun(.httpStub)), .timeLimit(.minutes(2)))
struct AWSClientBehaviourTests {
    func client(_ logs: CapturedLogs? = nil) throws -> (AWSClient, ServiceEndpoint) {
        let ctx = TestEnvironment.context(
            endpoint: try TestEnvironment.endpoint(.httpStub),
            credentials: Credentials(accessKeyID: "AKID", secretAccessKey: "SECRET"))
        return (ctx.client, try ctx.endpoint("s3"))
    }

    @Test func throttlingIsRetriedWithBackoff() async throws {
        let (client, endpoint) = try client()
        let logs = CapturedLogs()
        let key = uniqueName("k")
        let response = try await client.send(
            AWSRequest(method: "GET", path: "/flaky/\(key)/2"), to: endpoint,
            signing: .s3, logger: logs.logger())
        #expect(String(decoding: response.body, as: UTF8.self) == "ok after 3")
        #expect(logs.lines.filter { $0.contains("retrying AWS call") && $0.contains("SlowDown") }.count == 2)
    }

    @Test func retriesStopAtMaxAttempts() async throws {
        let (client, endpoint) = try client()
        await #expect {
            _ = try await client.send(
                AWSRequest(method: "GET", path: "/flaky/\(uniqueName("k"))/10"), to: endpoint,
                signing: .s3, logger: quietLogger)
        } throws: { error in
            (error as? AWSError)?.code == "SlowDown" && (error as? AWSError)?.httpStatus == 503
        }
    }

    @Test func clientErrorsAreNotRetried() async throws {
        let (client, endpoint) = try client()
        let logs = CapturedLogs()
        await #expect(throws: AWSError.self) {
            _ = try await client.send(
                AWSRequest(method: "GET", path: "/status/400"), to: endpoint, signing: .s3,
                logger: logs.logger())
        }
        #expect(!logs.lines.contains { $0.contains("retrying") })
    }

    @Test func aBodyCutOffHalfwayIsFetchedAgain() async throws {
        let (client, endpoint) = try client()
        try await withTemporaryDirectory { dir in
            let size = 4 << 20
            let response = try await client.send(
                AWSRequest(
                    method: "GET", path: "/flakybody/\(uniqueName("k"))/1/\(size)", response: .file(path: "\(dir)/x")),
                to: endpoint, signing: .s3, logger: quietLogger)
            #expect(response.bytesWritten == Int64(size))
            #expect(LocalFile.size("\(dir)/x") == Int64(size))
        }
    }

    @Test func aFileBodyIsReReadOnEachRetry() async throws {
        let (client, endpoint) = try client()
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: 3 << 20, seed: 11)
            let response = try await client.send(
                AWSRequest(
                    method: "PUT", path: "/flaky/\(uniqueName("k"))/2",
                    body: .file(path: "\(dir)/in", offset: 0, length: 3 << 20), payload: .unsigned),
                to: endpoint, signing: .s3, logger: quietLogger)
            let json = try JSONValue.parse(response.body)
            #expect(json["length"]?.intValue == 3 << 20)
            #expect(json["sha256"]?.stringValue == (try await fileSHA256("\(dir)/in")))
        }
    }
}

/// What the S3 client puts on the wire for an upload, seen by the plain HTTP stub.
@Suite(.enabled(if: TestEnvironment.canRun(.httpStub)), .serialized, .timeLimit(.minutes(2)))
struct S3UploadWireTests {
    // (Tests use their own bucket names, so the stub's paths do not collide.)
    func client(_ checksum: S3Client.UploadChecksum) throws -> S3Client {
        var options = S3Client.Options()
        options.checksum = checksum
        return try S3Client(
            context: TestEnvironment.context(
                endpoint: try TestEnvironment.endpoint(.httpStub),
                credentials: Credentials(accessKeyID: "AKID", secretAccessKey: "S")),
            options: options)
    }

    @Test func sha256ModeSignsTheBodysHash() async throws {
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/f", size: 123_456, seed: 4)
            let bucket = uniqueName("b")
            try await client(.sha256).putObject(
                bucket: bucket, key: "dir/a b+c.txt", file: "\(dir)/f", logger: quietLogger)
            let seen = try await TestEnvironment.stubLast("/\(bucket)/dir/a%20b%2Bc.txt")
            let sha = try await fileSHA256("\(dir)/f")
            #expect(seen["sha256"]?.stringValue == sha)
            #expect(seen["headers"]?["x-amz-content-sha256"]?.stringValue == sha)
            #expect(seen["headers"]?["authorization"]?.stringValue?.contains("x-amz-content-sha256") == true)
            #expect(seen["path"]?.stringValue == "/\(bucket)/dir/a%20b%2Bc.txt")
        }
    }

    @Test func md5ModeSendsContentMD5() async throws {
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/f", size: 5000, seed: 6)
            let bucket = uniqueName("b")
            try await client(.contentMD5).putObject(bucket: bucket, key: "k", file: "\(dir)/f", logger: quietLogger)
            let seen = try await TestEnvironment.stubLast("/\(bucket)/k")
            let md5 = Digest.md5(LocalFile.read("\(dir)/f")!).base64String
            #expect(seen["headers"]?["content-md5"]?.stringValue == md5)
            #expect(seen["headers"]?["x-amz-content-sha256"]?.stringValue == "UNSIGNED-PAYLOAD")
        }
    }
}
