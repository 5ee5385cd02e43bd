internal import CChecksum
internal import CCurl
@preconcurrency import Glibc

/// libcurl's global state, initialised exactly once before any handle exists.
enum CurlGlobal {
    static let initialized: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK
    /// libcurl's version, its TLS library's and zlib's, as `curl_version()` starts its text.
    static var version: String {
        let info = pz_curl_version_info().pointee
        var parts = ["libcurl/" + String(cString: info.version)]
        if let tls = info.ssl_version { parts.append(String(cString: tls)) }
        if let zlib = info.libz_version { parts.append("zlib/" + String(cString: zlib)) }
        return parts.joined(separator: " ")
    }
}

/// One libcurl easy handle. Reusing it keeps the connection alive between requests (per worker slot).
/// Not thread-safe: a `CurlSession` confines it to one serial queue.
final class CurlEasy {
    private let handle: UnsafeMutableRawPointer
    private let caBundle: String?
    private let userAgent: String

    init(caBundle: String?, userAgent: String) throws(HTTPTransportError) {
        guard CurlGlobal.initialized, let h = curl_easy_init() else {
            throw HTTPTransportError(
                kind: .curlSetup, curlCode: -1,
                message: "libcurl cannot be initialised (curl_global_init or curl_easy_init failed)")
        }
        handle = h
        self.caBundle = caBundle
        self.userAgent = userAgent
    }

    deinit { curl_easy_cleanup(handle) }

    /// Runs one request to completion, blocking the calling thread.
    func perform(_ request: HTTPRequest, state: TransferState) throws(HTTPTransportError) -> HTTPResponse {
        curl_easy_reset(handle)
        var slist: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(slist) }
        let partPath: String?
        switch request.response {
        case .memory: partPath = nil
        case .file(let path, let crc32cHeader, let stopAbove):
            partPath = path + ".part"
            if crc32cHeader != nil { state.responseCRC = 0 }
            state.stopAbove = stopAbove
        case .range(let target):
            partPath = nil
            state.rangeOutput = target.descriptor
            state.rangeTotal = target.totalSize
            state.responseCRC = 0
            state.memoryLimit = 1 << 20
        }
        if let partPath {
            guard let f = fopen(partPath, "wb") else {
                throw HTTPTransportError.localFile("cannot open \(partPath)")
            }
            // No stdio buffering: curl hands over large chunks, and copying them through a 4 KiB buffer costs time.
            setvbuf(f, nil, _IONBF, 0)
            state.output = f
            state.memoryLimit = 1 << 20
        }
        var moved = false
        defer {
            if let partPath, !moved { unlink(partPath) }
        }

        try configure(request, state: state, slist: &slist)
        let code = curl_easy_perform(handle)

        if let output = state.output {
            let flushFailed = fflush(output) != 0
            fclose(output)
            state.output = nil
            if flushFailed && state.failure == nil {
                state.failure = HTTPTransportError.localFile("write failed")
            }
        }
        if let failure = state.failure { throw failure }
        if code != CURLE_OK && !(code == CURLE_WRITE_ERROR && state.stoppedEarly) {
            throw Self.error(code, cancelled: state.cancelled.load(ordering: .relaxed))
        }

        var status = 0
        _ = pz_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        var connects = 0
        _ = pz_curl_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &connects)
        var contentLength: curl_off_t = -1
        _ = pz_curl_getinfo_off_t(handle, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &contentLength)
        var response = HTTPResponse(
            status: status, headers: state.headers, body: state.body,
            bytesWritten: state.bytesWritten, newConnections: connects)
        if state.framing != nil { response.sentCRC32C = state.crc }
        if state.stoppedEarly {
            response.bodySkipped = true
            return response
        }
        if case .range(let target) = request.response, response.isSuccess {
            try Self.checkRange(response, target: target, state: state, contentLength: contentLength)
            response.rangeStart = state.rangeSpan?.start
            response.bodyCRC32C = state.responseCRC
            return response
        }

        if let partPath, case .file(let path, let crc32cHeader, _) = request.response, response.isSuccess,
            request.method != "HEAD"
        {
            if contentLength >= 0 && Int64(contentLength) != state.bytesWritten {
                throw HTTPTransportError(
                    kind: .truncated, curlCode: -1,
                    message: "body has \(state.bytesWritten) bytes, Content-Length says \(contentLength)")
            }
            if let crc32cHeader, let expected = response.header(crc32cHeader), !expected.contains("-"),
                let crc = state.responseCRC, ChunkedTrailerFraming.base64(crc) != expected
            {
                throw HTTPTransportError(
                    kind: .corrupt, curlCode: -1,
                    message: "body's CRC-32C is \(ChunkedTrailerFraming.base64(crc)), \(crc32cHeader) says \(expected)")
            }
            guard rename(partPath, path) == 0 else {
                throw HTTPTransportError.localFile("cannot rename to \(path)")
            }
            moved = true
        }
        return response
    }

    /// A 2xx for a `.range` sink: the body filled the whole span its Content-Range named (a body cut short is
    /// `.truncated`, so the range alone is fetched again), and matches the range's own checksum when it has one.
    private static func checkRange(
        _ response: HTTPResponse, target: RangeTarget, state: TransferState, contentLength: curl_off_t
    ) throws(HTTPTransportError) {
        guard let span = state.rangeSpan else {
            // No body at all: a 2xx without the 206 and Content-Range the first byte would have been checked for.
            throw HTTPTransportError(
                kind: .wrongRange, curlCode: -1,
                message: "asked for a range, got HTTP \(response.status) with no body")
        }
        let expected = span.end - span.start + 1
        guard state.bytesWritten == expected, contentLength < 0 || Int64(contentLength) == expected else {
            throw HTTPTransportError(
                kind: .truncated, curlCode: -1,
                message: "range \(span.start)-\(span.end) has \(state.bytesWritten) bytes of \(expected)")
        }
        if let name = target.crc32cHeader, let expected = response.header(name), !expected.contains("-"),
            let crc = state.responseCRC, ChunkedTrailerFraming.base64(crc) != expected
        {
            throw HTTPTransportError(
                kind: .corrupt, curlCode: -1,
                message:
                    "range \(span.start)-\(span.end): CRC-32C is \(ChunkedTrailerFraming.base64(crc)), \(name) says \(expected)"
            )
        }
    }

    private func configure(
        _ request: HTTPRequest, state: TransferState,
        slist: inout UnsafeMutablePointer<curl_slist>?
    ) throws(HTTPTransportError) {
        let unmanaged = Unmanaged.passUnretained(state).toOpaque()
        try set(CURLOPT_URL, request.url)
        try set(CURLOPT_NOSIGNAL, 1)
        try set(CURLOPT_USERAGENT, userAgent)
        try set(CURLOPT_SSL_VERIFYPEER, 1)
        try set(CURLOPT_SSL_VERIFYHOST, 2)
        if let caBundle { try set(CURLOPT_CAINFO, caBundle) }
        try set(CURLOPT_TCP_KEEPALIVE, 1, optional: true)
        // Receive in 512 KiB chunks (curl's maximum) rather than 16 KiB: fewer callbacks and writes per GiB.
        switch request.response {
        case .file, .range: try set(CURLOPT_BUFFERSIZE, 512 << 10, optional: true)
        case .memory: break
        }
        try set(CURLOPT_CONNECTTIMEOUT, request.timeouts.connect)
        try set(CURLOPT_LOW_SPEED_LIMIT, request.timeouts.lowSpeedBytes)
        try set(CURLOPT_LOW_SPEED_TIME, request.timeouts.lowSpeedSeconds)
        try set(CURLOPT_TIMEOUT, request.timeouts.total)
        try set(CURLOPT_FOLLOWLOCATION, 0)
        // S3 keys may contain `..` and `//`; the path must go out exactly as it was signed.
        try set(CURLOPT_PATH_AS_IS, 1)
        if request.direct { try set(CURLOPT_NOPROXY, "*") }
        if !request.connectTo.isEmpty {
            var connect: UnsafeMutablePointer<curl_slist>?
            for entry in request.connectTo { connect = curl_slist_append(connect, entry) }
            connectToList = connect
            try check(pz_curl_setopt_slist(handle, CURLOPT_CONNECT_TO, connect), "CONNECT_TO")
        }

        try check(pz_curl_setopt_ptr(handle, CURLOPT_HEADERDATA, unmanaged), "HEADERDATA")
        try check(pz_curl_setopt_datafn(handle, CURLOPT_HEADERFUNCTION, curlHeaderCallback), "HEADERFUNCTION")
        try check(pz_curl_setopt_ptr(handle, CURLOPT_WRITEDATA, unmanaged), "WRITEDATA")
        try check(pz_curl_setopt_datafn(handle, CURLOPT_WRITEFUNCTION, curlWriteCallback), "WRITEFUNCTION")
        try set(CURLOPT_NOPROGRESS, 0)
        try check(pz_curl_setopt_ptr(handle, CURLOPT_XFERINFODATA, unmanaged), "XFERINFODATA")
        try check(pz_curl_setopt_xferinfofn(handle, CURLOPT_XFERINFOFUNCTION, curlProgressCallback), "XFERINFOFUNCTION")

        // Request body: always through the read callback, so a file is streamed and a retry re-reads it.
        switch request.body {
        case .none:
            break
        case .bytes(let bytes):
            state.inputBytes = bytes
            state.inputLength = Int64(bytes.count)
        case .file(let source, let offset, _), .fileWithCRC32CTrailer(let source, let offset, _):
            switch source {
            case .path(let path):
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    throw HTTPTransportError.localFile("cannot open \(path)")
                }
                state.input = fd
                state.ownsInput = true
            case .descriptor(let fd):
                state.input = fd
            }
            state.inputStart = offset
            state.inputLength = request.body.length
            if case .fileWithCRC32CTrailer(_, _, let framing) = request.body {
                state.framing = framing
                state.framingPrefix = framing.prefix
            }
        }
        let hasBody = request.body.length > 0 || request.method == "PUT" || request.method == "POST"
        if hasBody {
            // Larger reads mean fewer callbacks and syscalls for big files (curl's default is 64 KiB).
            if request.body.length > 1 << 20 { try set(CURLOPT_UPLOAD_BUFFERSIZE, 1 << 20, optional: true) }
            try check(pz_curl_setopt_ptr(handle, CURLOPT_READDATA, unmanaged), "READDATA")
            try check(pz_curl_setopt_datafn(handle, CURLOPT_READFUNCTION, curlReadCallback), "READFUNCTION")
            try check(pz_curl_setopt_ptr(handle, CURLOPT_SEEKDATA, unmanaged), "SEEKDATA")
            try check(pz_curl_setopt_seekfn(handle, CURLOPT_SEEKFUNCTION, curlSeekCallback), "SEEKFUNCTION")
        }

        switch request.method {
        case "GET":
            try set(CURLOPT_HTTPGET, 1)
        case "HEAD":
            try set(CURLOPT_NOBODY, 1)
        case "POST":
            try set(CURLOPT_POST, 1)
            try check(
                pz_curl_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.length)),
                "POSTFIELDSIZE_LARGE")
        case "PUT":
            // Without INFILESIZE a PUT goes out chunked, which S3 refuses.
            try set(CURLOPT_UPLOAD, 1)
            try check(
                pz_curl_setopt_off_t(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(request.body.length)),
                "INFILESIZE_LARGE")
        default:
            try set(CURLOPT_CUSTOMREQUEST, request.method)
            if request.body.length > 0 {
                try set(CURLOPT_UPLOAD, 1)
                try check(
                    pz_curl_setopt_off_t(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(request.body.length)),
                    "INFILESIZE_LARGE")
            }
        }

        var list: UnsafeMutablePointer<curl_slist>?
        for (name, value) in request.headers {
            list = curl_slist_append(list, value.isEmpty ? "\(name);" : "\(name): \(value)")
        }
        // A server that ignores `Expect: 100-continue` costs a second per PUT; and curl must not decompress S3 data.
        list = curl_slist_append(list, "Expect:")
        if !request.headers.contains(where: { $0.0.lowercased() == "content-type" }) {
            list = curl_slist_append(list, "Content-Type:")
        }
        slist = list
        try check(pz_curl_setopt_slist(handle, CURLOPT_HTTPHEADER, list), "HTTPHEADER")
    }

    /// Kept alive for the duration of the transfer that uses it.
    private var connectToList: UnsafeMutablePointer<curl_slist>? {
        didSet { if let oldValue { curl_slist_free_all(oldValue) } }
    }

    /// Sets an option. An `optional` one (a buffer size, keep-alive: speed, not correctness) may be missing from an
    /// older libcurl; any other refusal fails the request with the option's name, instead of sending a request that
    /// is not the one meant.
    private func set(_ option: CURLoption, _ value: Int, optional: Bool = false) throws(HTTPTransportError) {
        let code = pz_curl_setopt_long(handle, option, value)
        if optional && (code == CURLE_UNKNOWN_OPTION || code == CURLE_NOT_BUILT_IN) { return }
        try check(code, "option \(option.rawValue)")
    }

    private func set(_ option: CURLoption, _ value: String) throws(HTTPTransportError) {
        try check(pz_curl_setopt_string(handle, option, value), "option \(option.rawValue)")
    }

    private func check(_ code: CURLcode, _ what: String) throws(HTTPTransportError) {
        guard code != CURLE_OK else { return }
        throw HTTPTransportError(
            kind: .curlSetup, curlCode: Int32(code.rawValue),
            message: "curl_easy_setopt(\(what)) failed: \(String(cString: curl_easy_strerror(code)))")
    }

    static func error(_ code: CURLcode, cancelled: Bool) -> HTTPTransportError {
        let message = String(cString: curl_easy_strerror(code))
        let kind: HTTPTransportError.Kind
        switch code {
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY: kind = .connect
        case CURLE_OPERATION_TIMEDOUT: kind = .timeout
        case CURLE_SEND_ERROR: kind = .sendFailed
        case CURLE_RECV_ERROR, CURLE_GOT_NOTHING: kind = .receiveFailed
        case CURLE_PARTIAL_FILE: kind = .truncated
        case CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CONNECT_ERROR, CURLE_SSL_CACERT_BADFILE: kind = .tls
        case CURLE_ABORTED_BY_CALLBACK: kind = cancelled ? .cancelled : .other
        case CURLE_WRITE_ERROR, CURLE_READ_ERROR: kind = .localFile
        default: kind = .other
        }
        return HTTPTransportError(kind: kind, curlCode: Int32(code.rawValue), message: message)
    }
}

func errnoText() -> String { String(cString: strerror(errno)) }
