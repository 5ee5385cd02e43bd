import AWSCore
import FoundationEssentials
import HTTPCurl
import TestSupport
import Testing

/// Retries and body handling of the AWS client, against the plain HTTP stub (which ignores signatures).
@Suite(.enabled(if: TestEnvironment.canRun(.httpStub)), .timeLimit(.minutes(2)))
struct AWSClientBehaviourTests {
    func client(_ logs: CapturedLogs? = nil) throws -> (AWSClient, ServiceEndpoint) {
        let ctx = TestEnvironment.context(endpoint: try TestEnvironment.endpoint(.httpStub),
                                          credentials: Credentials(accessKeyID: "AKID", secretAccessKey: "SECRET"))
        return (ctx.client, try ctx.endpoint("s3"))
    }

    @Test func throttlingIsRetriedWithBackoff() async throws {
        let (client, endpoint) = try client()
        let logs = CapturedLogs()
        let key = uniqueName("k")
        let response = try await client.send(AWSRequest(method: "GET", path: "/flaky/\(key)/2"), to: endpoint,
                                             signing: .s3, logger: logs.logger())
        #expect(String(decoding: response.body, as: UTF8.self) == "ok after 3")
        #expect(logs.lines.filter { $0.contains("retrying AWS call") && $0.contains("SlowDown") }.count == 2)
    }

    @Test func retriesStopAtMaxAttempts() async throws {
        let (client, endpoint) = try client()
        await #expect {
            _ = try await client.send(AWSRequest(method: "GET", path: "/flaky/\(uniqueName("k"))/10"), to: endpoint,
                                      signing: .s3, logger: quietLogger)
        } throws: { error in
            (error as? AWSError)?.code == "SlowDown" && (error as? AWSError)?.httpStatus == 503
        }
    }

    @Test func clientErrorsAreNotRetried() async throws {
        let (client, endpoint) = try client()
        let logs = CapturedLogs()
        await #expect(throws: AWSError.self) {
            _ = try await client.send(AWSRequest(method: "GET", path: "/status/400"), to: endpoint, signing: .s3,
                                      logger: logs.logger())
        }
        #expect(!logs.lines.contains { $0.contains("retrying") })
    }

    @Test func aBodyCutOffHalfwayIsFetchedAgain() async throws {
        let (client, endpoint) = try client()
        try await withTemporaryDirectory { dir in
            let size = 4 << 20
            let response = try await client.send(
                AWSRequest(method: "GET", path: "/flakybody/\(uniqueName("k"))/1/\(size)", response: .file(path: "\(dir)/x")),
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
                AWSRequest(method: "PUT", path: "/flaky/\(uniqueName("k"))/2",
                           body: .file(path: "\(dir)/in", offset: 0, length: 3 << 20), payload: .unsigned),
                to: endpoint, signing: .s3, logger: quietLogger)
            let json = try JSONValue.parse(response.body)
            #expect(json["length"]?.intValue == 3 << 20)
            #expect(json["sha256"]?.stringValue == (try await fileSHA256("\(dir)/in")))
        }
    }
}
