import AWSCore
import AWSSigV4
import CChecksum
import FoundationEssentials
import HTTPCurl
import TestSupport
import Testing

/// CRC-32C and the `aws-chunked` trailer framing that carries it.
@Suite struct CRC32CTests {
    /// The iSCSI test patterns (RFC 3720, B.4) and the customary check value.
    @Test func knownVectors() {
        let vectors: [([UInt8], UInt32)] = [
            (Array("123456789".utf8), 0xE306_9283),
            ([UInt8](repeating: 0, count: 32), 0x8A91_36AA),
            ([UInt8](repeating: 0xFF, count: 32), 0x62A8_AB43),
            ((0..<32).map { UInt8($0) }, 0x46DD_794E),
            ((0..<32).reversed().map { UInt8($0) }, 0x113F_DB5C),
            ([], 0),
        ]
        for (bytes, expected) in vectors {
            #expect(pz_crc32c(0, bytes, bytes.count) == expected)
            #expect(pz_crc32c_portable(0, bytes, bytes.count) == expected)
        }
    }

    /// The instruction path and the table agree at every alignment and length, and in pieces as in one go.
    @Test func hardwareAndTableAgreeInPieces() {
        var generator = SystemRandomNumberGenerator()
        let data = (0..<10_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        data.withUnsafeBytes { raw in
            for start in 0..<9 {
                for length in [0, 1, 7, 8, 9, 63, 1000, 9_000] {
                    let slice = UnsafeRawBufferPointer(rebasing: raw[start..<(start + length)])
                    #expect(pz_crc32c(0, slice.baseAddress, length) == pz_crc32c_portable(0, slice.baseAddress, length))
                }
            }
            let whole = pz_crc32c(0, raw.baseAddress, raw.count)
            var running: UInt32 = 0
            for cut in stride(from: 0, to: raw.count, by: 333) {
                running = pz_crc32c(running, raw.baseAddress! + cut, min(333, raw.count - cut))
            }
            #expect(running == whole)
        }
    }
}

@Suite struct CRC32CCombineTests {
    /// Joining the checksums of two adjacent pieces gives the checksum of both, for every cut of a buffer, and for
    /// pieces as long as 4 GiB (the length's high bits: the shift through 2^32 zero bytes, checked against zeros
    /// appended in steps).
    @Test func combiningPiecesGivesTheWhole() {
        var generator = SystemRandomNumberGenerator()
        let data = (0..<5_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let whole = CRC32C.checksum(data)
        for cut in [0, 1, 2, 7, 8, 100, 2_499, 4_096, 4_999, 5_000] {
            let a = CRC32C.checksum(Array(data[..<cut]))
            let b = CRC32C.checksum(Array(data[cut...]))
            #expect(CRC32C.combine(a, b, lengthOfB: Int64(data.count - cut)) == whole, "cut \(cut)")
        }
        // Three pieces, joined left to right, as a ranged download joins its ranges.
        let pieces = [data[..<1000], data[1000..<1001], data[1001...]].map { Array($0) }
        let joined = pieces.dropFirst().reduce(CRC32C.checksum(pieces[0])) {
            CRC32C.combine($0, CRC32C.checksum($1), lengthOfB: Int64($1.count))
        }
        #expect(joined == whole)
        // A large B: 1 MiB of zeros, 64 times over, against the combine of one shift by 64 MiB.
        let zeros = [UInt8](repeating: 0, count: 1 << 20)
        let zerosCRC = CRC32C.checksum(zeros)
        var stepped = CRC32C.checksum(Array("head".utf8))
        var zeros64: UInt32 = 0
        for step in 0..<64 {
            stepped = CRC32C.combine(stepped, zerosCRC, lengthOfB: 1 << 20)
            zeros64 = step == 0 ? zerosCRC : CRC32C.combine(zeros64, zerosCRC, lengthOfB: 1 << 20)
        }
        #expect(CRC32C.combine(CRC32C.checksum(Array("head".utf8)), zeros64, lengthOfB: 64 << 20) == stepped)
    }

    /// S3's COMPOSITE value: the checksum of the parts' checksums as big-endian bytes, then `-N`.
    @Test func theCompositeValueIsTheChecksumOfThePartsChecksums() {
        let parts: [UInt32] = [0xE306_9283, 0x8A91_36AA, 0x0000_0001]
        let bytes: [UInt8] = [0xE3, 0x06, 0x92, 0x83, 0x8A, 0x91, 0x36, 0xAA, 0x00, 0x00, 0x00, 0x01]
        #expect(CRC32C.composite(ofParts: parts) == CRC32C.base64(pz_crc32c_portable(0, bytes, bytes.count)) + "-3")
    }
}

@Suite struct ChunkedTrailerFramingTests {
    @Test func oneChunkThenTheEmptyChunkThenTheTrailer() {
        let framing = ChunkedTrailerFraming(dataLength: 300, trailerName: "x-amz-checksum-crc32c")
        #expect(framing.prefix == Array("12c\r\n".utf8))
        #expect(framing.suffix(crc: 0xE306_9283) == Array("\r\n0\r\nx-amz-checksum-crc32c:4waSgw==\r\n\r\n".utf8))
        #expect(framing.wireLength == 5 + 300 + 39)
    }

    @Test func anEmptyBodyIsTheEmptyChunkAndTheTrailer() {
        let framing = ChunkedTrailerFraming(dataLength: 0, trailerName: "x-amz-checksum-crc32c")
        #expect(framing.prefix.isEmpty)
        #expect(framing.suffix(crc: 0) == Array("0\r\nx-amz-checksum-crc32c:AAAAAA==\r\n\r\n".utf8))
        #expect(framing.wireLength == 37)
    }
}

/// What a framed file body looks like on the wire, byte for byte (the stub hashes what it received).
@Suite(.enabled(if: TestEnvironment.canRun(.httpStub)), .timeLimit(.minutes(2)))
struct ChunkedTrailerWireTests {
    /// A file of `size` bytes at `path`, its bytes, and their framing.
    static func framedFile(_ path: String, size: Int, seed: UInt8) -> ([UInt8], ChunkedTrailerFraming) {
        makeFile(path, size: size, seed: seed)
        return (
            LocalFile.read(path, limit: 8 << 20)!,
            ChunkedTrailerFraming(dataLength: Int64(size), trailerName: "x-amz-checksum-crc32c")
        )
    }

    /// The length and SHA-256 of the wire bytes `data` should become, with the checksum by the table (outside
    /// #expect, which would describe a 3 MiB array).
    static func expectedWire(_ data: [UInt8], _ framing: ChunkedTrailerFraming) -> (length: Int, sha256: String) {
        let wire = framing.prefix + data + framing.suffix(crc: pz_crc32c_portable(0, data, data.count))
        return (wire.count, Digest.sha256(wire).hexString)
    }

    @Test(arguments: [0, 1, 3 << 20 | 7])
    func theWireCarriesPrefixDataAndTheDatasChecksum(size: Int) async throws {
        try await withTemporaryDirectory { dir in
            let (data, framing) = Self.framedFile("\(dir)/f", size: size, seed: 11)
            // Sent from an offset, as multipart parts are: the checksum covers the range only.
            LocalFile.write("\(dir)/g", [1, 2, 3] + data)
            let path = "/framed-\(size)-\(UInt32.random(in: 0...UInt32.max))"
            let url = try TestEnvironment.endpoint(.httpStub) + path
            let response = try await HTTPClient().execute(
                HTTPRequest(
                    method: "PUT", url: url, body: .fileWithCRC32CTrailer(path: "\(dir)/g", offset: 3, framing: framing)
                ))
            #expect(response.status == 200)
            let seen = try await TestEnvironment.stubLast(path)
            let expected = Self.expectedWire(data, framing)
            #expect(seen["length"]?.intValue == expected.length)
            #expect(seen["headers"]?["content-length"]?.stringValue == "\(framing.wireLength)")
            #expect(seen["sha256"]?.stringValue == expected.sha256)
        }
    }

    /// curl sends a request again by itself when a kept-alive connection turns out dead, rewinding the body through
    /// the seek callback: the checksum must start over with it, or the retry carries a wrong trailer.
    @Test func aRewoundBodyCarriesTheChecksumOfOneCopy() async throws {
        try await withTemporaryDirectory { dir in
            let (data, framing) = Self.framedFile("\(dir)/f", size: (2 << 20) + 5, seed: 12)
            let stub = try TestEnvironment.endpoint(.httpStub)
            let http = HTTPClient(configuration: .init(maxIdleHandles: 1))
            _ = try await http.execute(HTTPRequest(method: "GET", url: stub + "/bytes/10"))  // a connection to reuse
            let path = "/dropreused/\(UInt32.random(in: 0...UInt32.max))"
            let response = try await http.execute(
                HTTPRequest(
                    method: "PUT", url: stub + path,
                    body: .fileWithCRC32CTrailer(path: "\(dir)/f", offset: 0, framing: framing)))
            #expect(response.status == 200)
            let seen = try await TestEnvironment.stubLast(path)
            let expected = Self.expectedWire(data, framing)
            #expect(seen["tries"]?.intValue == 2, "the first send was not dropped and sent again")
            #expect(seen["sha256"]?.stringValue == expected.sha256)
        }
    }
}
