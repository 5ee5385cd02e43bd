import FoundationEssentials
import Glibc
import HTTPCurl
import TestSupport
import Testing

/// The `.range` sink against the loopback stub's `/ranged/` path: ranges written in place, side by side, with their
/// CRC-32C; and the replies that are not the range asked for.
@Suite(.enabled(if: TestEnvironment.canRun(.httpStub)), .timeLimit(.minutes(2)))
struct RangeSinkTests {
    let http = HTTPClient()

    func get(_ path: String, range: ClosedRange<Int64>, into fd: Int32, total: Int64) async throws -> HTTPResponse {
        try await http.execute(
            HTTPRequest(
                method: "GET", url: try TestEnvironment.endpoint(.httpStub) + path,
                headers: [("Range", "bytes=\(range.lowerBound)-\(range.upperBound)")],
                response: .range(RangeTarget(descriptor: fd, totalSize: total, crc32cHeader: "x-amz-checksum-crc32c"))))
    }

    func withFile(size: Int64, _ body: (Int32, String) async throws -> Void) async throws {
        try await withTemporaryDirectory { dir in
            let path = "\(dir)/object"
            let fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0o600)
            #expect(fd >= 0)
            defer { close(fd) }
            #expect(ftruncate(fd, off_t(size)) == 0)
            try await body(fd, path)
        }
    }

    /// Three ranges fetched at once land at their offsets: the file equals the whole body, each reply says where it
    /// went, and each range's CRC-32C matches the one the server sent (checked by the sink) and the bytes'.
    @Test func rangesLandInPlaceSideBySide() async throws {
        let size: Int64 = 3_000_001
        try await withFile(size: size) { fd, path in
            let ranges: [ClosedRange<Int64>] = [0...999_999, 1_000_000...1_999_999, 2_000_000...3_000_000]
            let replies = try await withThrowingTaskGroup(of: HTTPResponse.self) { group in
                for range in ranges {
                    group.addTask { try await self.get("/ranged/\(size)/good", range: range, into: fd, total: size) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(replies.compactMap(\.rangeStart)) == [0, 1_000_000, 2_000_000])
            #expect(
                replies.allSatisfy {
                    $0.status == 206 && $0.bytesWritten == ($0.rangeStart == 2_000_000 ? 1_000_001 : 1_000_000)
                })
            let whole = try await http.execute(
                HTTPRequest(method: "GET", url: try TestEnvironment.endpoint(.httpStub) + "/bytes/\(size)"))
            let written = readAll(path)
            #expect(written == whole.body)
            for reply in replies {
                let start = Int(reply.rangeStart!)
                let slice = Array(whole.body[start..<(start + Int(reply.bytesWritten))])
                #expect(reply.bodyCRC32C == CRC32C.checksum(slice))
            }
        }
    }

    @Test func aRangeWhoseChecksumDoesNotMatchIsCorrupt() async throws {
        try await withFile(size: 100_000) { fd, _ in
            await #expect {
                _ = try await get("/ranged/100000/badcrc", range: 0...49_999, into: fd, total: 100_000)
            } throws: { ($0 as? HTTPTransportError)?.kind == .corrupt }
        }
    }

    /// A server that ignores the Range header (200, the whole object), or names an object of another size, is not
    /// giving the range asked for: refused at the first byte, never written over the rest of the file.
    @Test func aReplyThatIsNotTheRangeAskedForIsRefused() async throws {
        for mode in ["whole", "othersize"] {
            try await withFile(size: 100_000) { fd, path in
                await #expect {
                    _ = try await get("/ranged/100000/\(mode)", range: 50_000...99_999, into: fd, total: 100_000)
                } throws: { ($0 as? HTTPTransportError)?.kind == .wrongRange }
                #expect(readAll(path) == [UInt8](repeating: 0, count: 100_000), "\(mode)")
            }
        }
    }

    func readAll(_ path: String) -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += buffer[0..<n]
        }
        return bytes
    }
}
