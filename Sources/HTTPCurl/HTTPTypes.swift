@preconcurrency import Glibc
/// What to send. Plain values so the AWS layer can build, sign and retry them without touching curl.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The full URL, already percent-encoded as it must go on the wire.
    public var url: String
    /// Headers in wire order. `Host` may be given; curl then uses ours, which is the one that was signed.
    public var headers: [(String, String)]
    public var body: HTTPBody
    public var response: ResponseSink
    public var timeouts: Timeouts
    /// `CURLOPT_CONNECT_TO` entries (`host:port:connect-host:connect-port`): reach a different socket than the URL
    /// names while keeping the URL (and so the signature) intact. Used to route through a fault proxy.
    public var connectTo: [String]
    /// Never through a proxy (`http_proxy` and the like): for the endpoints on this machine or its host that hand out
    /// credentials (IMDS, the container endpoint), whose answers and tokens must not pass through anything else.
    public var direct = false

    public init(
        method: String, url: String, headers: [(String, String)] = [], body: HTTPBody = .none,
        response: ResponseSink = .memory, timeouts: Timeouts = .default, connectTo: [String] = []
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.response = response
        self.timeouts = timeouts
        self.connectTo = connectTo
    }
}

/// Where a file body's bytes come from.
public enum FileSource: Sendable, Equatable, CustomStringConvertible {
    /// A file by path, opened for each attempt of the request.
    case path(String)
    /// A descriptor the caller opened and keeps open until the request is over. It is read with `pread` at the
    /// body's offsets, so several requests (an upload's parts) can read ranges of it at once, and nothing is looked
    /// up by name again: what was checked on this descriptor is what goes out.
    case descriptor(Int32)

    public var description: String {
        switch self {
        case .path(let path): return path
        case .descriptor(let fd): return "descriptor \(fd)"
        }
    }
}

/// A request body. Files are streamed by curl's read callback, never loaded, and re-read from `offset` on retry.
public enum HTTPBody: Sendable {
    case none
    case bytes([UInt8])
    case file(FileSource, offset: Int64, length: Int64)
    /// A file range framed as `aws-chunked` with a CRC-32C trailer (see `ChunkedTrailerFraming`): the checksum is
    /// computed while the bytes go out, so the file is read once and the server still verifies every byte.
    case fileWithCRC32CTrailer(FileSource, offset: Int64, framing: ChunkedTrailerFraming)

    public static func file(path: String, offset: Int64, length: Int64) -> HTTPBody {
        .file(.path(path), offset: offset, length: length)
    }

    public static func fileWithCRC32CTrailer(path: String, offset: Int64, framing: ChunkedTrailerFraming) -> HTTPBody {
        .fileWithCRC32CTrailer(.path(path), offset: offset, framing: framing)
    }

    /// The bytes on the wire (Content-Length).
    public var length: Int64 {
        switch self {
        case .none: return 0
        case .bytes(let b): return Int64(b.count)
        case .file(_, _, let length): return length
        case .fileWithCRC32CTrailer(_, _, let framing): return framing.wireLength
        }
    }
}

/// The `aws-chunked` content encoding with one trailing checksum header, as S3 takes it with
/// `x-amz-content-sha256: STREAMING-UNSIGNED-PAYLOAD-TRAILER`: the data as one chunk, the empty last chunk, then
/// the trailer (`hex-size CRLF data CRLF 0 CRLF name:base64 CRLF CRLF`). One chunk keeps the wire length a
/// function of the data length alone, so Content-Length is known before the checksum is.
public struct ChunkedTrailerFraming: Sendable, Equatable {
    /// Bytes of data (the decoded content length).
    public let dataLength: Int64
    /// The trailer's header name, e.g. `x-amz-checksum-crc32c`.
    public let trailerName: String

    public init(dataLength: Int64, trailerName: String) {
        self.dataLength = dataLength
        self.trailerName = trailerName
    }

    /// Before the data: its size in hex (nothing when there is no data: the last chunk alone follows).
    public var prefix: [UInt8] { dataLength > 0 ? Array((String(dataLength, radix: 16) + "\r\n").utf8) : [] }

    /// After the data: the end of its chunk, the empty last chunk and the trailer carrying `crc` (big-endian,
    /// base64, as S3 prints checksums).
    public func suffix(crc: UInt32) -> [UInt8] {
        Array(((dataLength > 0 ? "\r\n" : "") + "0\r\n\(trailerName):\(Self.base64(crc))\r\n\r\n").utf8)
    }

    public var wireLength: Int64 { Int64(prefix.count) + dataLength + Int64(suffix(crc: 0).count) }

    /// Four bytes in base64: six 6-bit groups, then `==`.
    static func base64(_ value: UInt32) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        let bits = UInt64(value) << 4  // 32 bits padded to 36, six groups of six
        let chars = (0..<6).reversed().map { alphabet[Int((bits >> (UInt64($0) * 6)) & 63)] }
        return String(decoding: chars, as: UTF8.self) + "=="
    }
}

/// Where a response body goes.
public enum ResponseSink: Sendable {
    /// In memory (API replies; small).
    case memory
    /// Streamed to `path` through `path.part`, renamed only on a 2xx whose size matches Content-Length, so a failed
    /// or error reply never leaves a file that looks complete. Error bodies go to memory instead.
    ///
    /// With `crc32cHeader`, the body's CRC-32C is computed as it arrives; when the reply carries that header with a
    /// whole-body value (base64, big-endian, as S3's `x-amz-checksum-crc32c`), a body that does not match fails as
    /// `.corrupt` and leaves no file. A reply without it, or with a per-part value (`...-N`), is taken as it is.
    ///
    /// With `stopAbove`, a 2xx reply whose Content-Length is larger is not read at all: the transfer stops before
    /// its first byte is written and the reply comes back with `bodySkipped` (its headers tell the caller the size,
    /// ETag and checksum it needs to fetch the object in ranges instead).
    case file(path: String, crc32cHeader: String? = nil, stopAbove: Int64? = nil)
    /// One range of an object, written in place with `pwrite` into a file the caller opened and sized: at the offset
    /// the reply's `Content-Range` gives. The reply must be a 206 whose `Content-Range` names an object of
    /// `RangeTarget.totalSize` bytes, and its body must fill that range exactly; the body's CRC-32C comes back in
    /// `HTTPResponse.bodyCRC32C`. Several ranges of one file can be in flight at once.
    case range(RangeTarget)
}

/// Where a ranged reply's body goes (`ResponseSink.range`).
public struct RangeTarget: Sendable {
    /// Open for writing; the caller keeps it open until every range is in and closes it.
    public var descriptor: Int32
    /// The whole object's size: a `Content-Range` naming another size is a different object.
    public var totalSize: Int64
    /// A reply header carrying this range's own CRC-32C (S3 gives one for a part of a multipart object); a body that
    /// does not match fails as `.corrupt`. A per-part value (`...-N`) is ignored.
    public var crc32cHeader: String?

    public init(descriptor: Int32, totalSize: Int64, crc32cHeader: String? = nil) {
        self.descriptor = descriptor
        self.totalSize = totalSize
        self.crc32cHeader = crc32cHeader
    }
}

public struct Timeouts: Sendable {
    /// Seconds to establish the TCP (and TLS) connection.
    public var connect: Int
    /// Abort when fewer than `lowSpeedBytes` per second flow for `lowSpeedSeconds` (a stalled transfer).
    public var lowSpeedBytes: Int
    public var lowSpeedSeconds: Int
    /// Hard cap on the whole request, 0 for none (long polls set it just above their wait time).
    public var total: Int

    public init(connect: Int, lowSpeedBytes: Int, lowSpeedSeconds: Int, total: Int) {
        self.connect = connect
        self.lowSpeedBytes = lowSpeedBytes
        self.lowSpeedSeconds = lowSpeedSeconds
        self.total = total
    }

    public static let `default` = Timeouts(connect: 10, lowSpeedBytes: 1, lowSpeedSeconds: 60, total: 0)
}

public struct HTTPResponse: Sendable {
    public var status: Int
    /// Headers of the final response (interim 1xx responses are dropped), names as the server sent them.
    public var headers: [(String, String)]
    /// The body when the sink was `.memory`, or the error body when a file download got a non-2xx status.
    public var body: [UInt8]
    /// Bytes written to the file sink.
    public var bytesWritten: Int64
    /// How many new connections this request opened (0 means a kept-alive connection was reused).
    public var newConnections: Int
    /// A `.file` sink's `stopAbove` stopped the transfer before the body (see `ResponseSink.file`).
    public var bodySkipped = false
    /// For a `.range` sink: where the body was written (the start of the reply's `Content-Range`), and its CRC-32C.
    public var rangeStart: Int64?
    public var bodyCRC32C: UInt32?
    /// For a request body with a CRC-32C trailer: the checksum that was sent.
    public var sentCRC32C: UInt32?

    public init(
        status: Int, headers: [(String, String)], body: [UInt8], bytesWritten: Int64 = 0, newConnections: Int = 0
    ) {
        self.status = status
        self.headers = headers
        self.body = body
        self.bytesWritten = bytesWritten
        self.newConnections = newConnections
    }

    /// The first header with this name, compared without case.
    public func header(_ name: String) -> String? { firstHeader(name, in: headers) }

    public var isSuccess: Bool { (200..<300).contains(status) }
}

/// A transport failure: no HTTP status was obtained (or the body could not be completed).
public struct HTTPTransportError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable {
        case connect, timeout, sendFailed, receiveFailed, truncated, tls, localFile, cancelled, other
        /// The body arrived whole but does not match the checksum the server gave for it.
        case corrupt
        /// A ranged reply that is not the range asked for: a 200 with the whole object, or a `Content-Range` of an
        /// object with another size. Asking again would get the same answer.
        case wrongRange
        /// libcurl refused an option or could not start: the request was never sent, and sending again would not help.
        case curlSetup
    }
    public var kind: Kind
    /// The libcurl `CURLcode`, or -1 for failures found by us.
    public var curlCode: Int32
    public var message: String
    /// For a `.localFile` failure, the system's `errno` (ENOSPC for a full disk): whose trouble it is.
    public var systemErrno: Int32

    public init(kind: Kind, curlCode: Int32, message: String, systemErrno: Int32 = 0) {
        self.kind = kind
        self.curlCode = curlCode
        self.message = message
        self.systemErrno = systemErrno
    }

    /// A local file call failed just now: its `errno`, read once, goes with its text.
    static func localFile(_ what: String) -> HTTPTransportError {
        let code = errno
        return HTTPTransportError(
            kind: .localFile, curlCode: -1, message: "\(what): \(String(cString: strerror(code)))", systemErrno: code)
    }

    public var description: String { "HTTP transport error (\(kind), curl \(curlCode)): \(message)" }

    /// Whether sending the same request again may succeed. A local file error or a TLS verification failure won't.
    public var isRetryable: Bool {
        switch kind {
        case .localFile, .tls, .cancelled, .curlSetup, .wrongRange: return false
        default: return true
        }
    }
}

/// The first header with this name, compared without case (a reply's, or one still arriving).
func firstHeader(_ name: String, in headers: [(String, String)]) -> String? {
    let lower = name.lowercased()
    return headers.first { $0.0.lowercased() == lower }?.1
}
