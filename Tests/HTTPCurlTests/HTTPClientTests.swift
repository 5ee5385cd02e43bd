import AWSCore
import FoundationEssentials
import HTTPCurl
import TestSupport
import Testing

/// The HTTP layer against a plain loopback HTTP/1.1 server (scripts/lib/http_stub.py).
@Suite(.enabled(if: TestEnvironment.canRun(.httpStub)), .timeLimit(.minutes(2)))
struct HTTPClientTests {
    let http = HTTPClient()

    func url(_ path: String) throws -> String { try TestEnvironment.endpoint(.httpStub) + path }

    @Test func memoryResponseAndHeaders() async throws {
        let response = try await http.execute(HTTPRequest(method: "GET", url: try url("/bytes/1000")))
        #expect(response.status == 200)
        #expect(response.body.count == 1000)
        #expect(response.header("content-length") == "1000")
    }

    @Test func keptAliveConnectionIsReused() async throws {
        // Sequential requests from one client reuse the idle handle and so its connection.
        let first = try await http.execute(HTTPRequest(method: "GET", url: try url("/bytes/10")))
        let second = try await http.execute(HTTPRequest(method: "GET", url: try url("/bytes/10")))
        #expect(first.newConnections == 1)
        #expect(second.newConnections == 0)
    }

    @Test func streamsALargeBodyToAFile() async throws {
        try await withTemporaryDirectory { dir in
            let size = 24 << 20
            let response = try await http.execute(
                HTTPRequest(
                    method: "GET", url: try url("/bytes/\(size)"),
                    response: .file(path: "\(dir)/out")))
            #expect(response.bytesWritten == Int64(size))
            #expect(response.body.isEmpty)
            #expect(LocalFile.size("\(dir)/out") == Int64(size))
            #expect(!fileExists("\(dir)/out.part"))
        }
    }

    @Test func aTruncatedBodyFailsAndLeavesNoFile() async throws {
        try await withTemporaryDirectory { dir in
            await #expect {
                _ = try await http.execute(
                    HTTPRequest(
                        method: "GET", url: try url("/short/100000"),
                        response: .file(path: "\(dir)/out")))
            } throws: { error in
                (error as? HTTPTransportError)?.kind == .truncated
            }
            #expect(!fileExists("\(dir)/out"))
            #expect(!fileExists("\(dir)/out.part"))
        }
    }

    @Test func anErrorReplyGoesToMemoryNotTheFile() async throws {
        try await withTemporaryDirectory { dir in
            let response = try await http.execute(
                HTTPRequest(
                    method: "GET", url: try url("/status/404"),
                    response: .file(path: "\(dir)/out")))
            #expect(response.status == 404)
            #expect(String(decoding: response.body, as: UTF8.self).contains("StubError"))
            #expect(!fileExists("\(dir)/out"))
        }
    }

    @Test func streamsARequestBodyFromAFileWithALength() async throws {
        try await withTemporaryDirectory { dir in
            let size = 9 << 20
            makeFile("\(dir)/in", size: size, seed: 3)
            let response = try await http.execute(
                HTTPRequest(
                    method: "PUT", url: try url("/echo"), headers: [("Content-Type", "application/octet-stream")],
                    body: .file(path: "\(dir)/in", offset: 0, length: Int64(size))))
            let json = try JSONValue.parse(response.body)
            #expect(json["length"]?.intValue == size)
            #expect(json["sha256"]?.stringValue == (try await fileSHA256("\(dir)/in")))
            // Not chunked: S3 refuses chunked PUTs without a length.
            #expect(json["transferEncoding"] == .null)
            #expect(json["contentType"]?.stringValue == "application/octet-stream")
        }
    }

    @Test func aFileRangeIsSentExactly() async throws {
        try await withTemporaryDirectory { dir in
            makeFile("\(dir)/in", size: 3000, seed: 9)
            let bytes = LocalFile.read("\(dir)/in")!
            let response = try await http.execute(
                HTTPRequest(
                    method: "PUT", url: try url("/echo"), body: .file(path: "\(dir)/in", offset: 1000, length: 1500)))
            let json = try JSONValue.parse(response.body)
            #expect(json["length"]?.intValue == 1500)
            #expect(json["sha256"]?.stringValue == Digest.sha256(bytes[1000..<2500]).hexString)
        }
    }

    @Test func totalTimeoutAbortsAHungRequest() async throws {
        let started = ContinuousClock.now
        await #expect {
            _ = try await http.execute(
                HTTPRequest(
                    method: "GET", url: try url("/slow/10"),
                    timeouts: Timeouts(connect: 2, lowSpeedBytes: 0, lowSpeedSeconds: 0, total: 1)))
        } throws: { error in
            (error as? HTTPTransportError)?.kind == .timeout
        }
        #expect(ContinuousClock.now - started < .seconds(8))
    }

    @Test func refusedConnectionIsAConnectError() async throws {
        let port = Int.random(in: 20000...30000)
        await #expect {
            _ = try await http.execute(
                HTTPRequest(
                    method: "GET", url: "http://127.0.0.1:\(port)/",
                    timeouts: Timeouts(connect: 2, lowSpeedBytes: 0, lowSpeedSeconds: 0, total: 3)))
        } throws: { error in
            let e = error as? HTTPTransportError
            return e?.kind == .connect && e?.isRetryable == true
        }
    }

    @Test func cancellationAbortsTheTransfer() async throws {
        let key = "cancel-\(UInt32.random(in: 0..<UInt32.max))"
        let stub = try url("/slow/20/\(key)")
        let task = Task { try await http.execute(HTTPRequest(method: "GET", url: stub)) }
        // Cancelled once the server holds the request: the transfer is under way.
        let arrived = try url("/arrived/\(key)")
        let underWay = await waitUntil(seconds: 15) {
            (try? await http.execute(HTTPRequest(method: "GET", url: arrived)))?.status == 200
        }
        #expect(underWay, "the request never reached the server")
        task.cancel()
        let started = ContinuousClock.now
        let result = await task.result
        #expect(ContinuousClock.now - started < .seconds(5))
        guard case .failure(let error) = result else {
            Issue.record("a cancelled request succeeded")
            return
        }
        #expect((error as? HTTPTransportError)?.kind == .cancelled)
    }

    @Test func missingUploadFileIsALocalError() async throws {
        await #expect {
            _ = try await http.execute(
                HTTPRequest(
                    method: "PUT", url: try url("/echo"),
                    body: .file(path: "/nonexistent/x", offset: 0, length: 10)))
        } throws: { error in
            let e = error as? HTTPTransportError
            return e?.kind == .localFile && e?.isRetryable == false
        }
    }

    @Test func slotsDoNotBlockEachOther() async throws {
        // The stub answers only once four requests wait at the same time: if curl's blocking calls ran on the
        // cooperative pool (two threads here), at most two could be in flight and all four would get 503.
        let stub = try url("/together/\(UInt32.random(in: 0...UInt32.max))/4")
        try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<4 { group.addTask { try await http.execute(HTTPRequest(method: "GET", url: stub)).status } }
            for try await status in group { #expect(status == 200) }
        }
    }
}
