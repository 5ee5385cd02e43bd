internal import CChecksum
internal import CCurl
@preconcurrency import Glibc
import Synchronization

/// libcurl's global state, initialised exactly once before any handle exists.
enum CurlGlobal {
    static let initialized: Bool = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) == CURLE_OK
    static var version: String { String(cString: pz_curl_version()) }
}

/// State shared with libcurl's C callbacks for one transfer. Curl gets it back through `Unmanaged`.
final class TransferState {
    // Response
    var status = 0
    var headers: [(String, String)] = []
    var body: [UInt8] = []
    var output: UnsafeMutablePointer<FILE>?
    var bytesWritten: Int64 = 0
    var memoryLimit = 256 << 20
    var failure: HTTPTransportError?
    // Request body
    var input: UnsafeMutablePointer<FILE>?
    var inputBytes: [UInt8] = []
    var inputStart: Int64 = 0
    var inputLength: Int64 = 0
    var inputSent: Int64 = 0
    /// For a body with a CRC-32C trailer: its framing, the data's running checksum, and the suffix once known.
    var framing: ChunkedTrailerFraming?
    var framingPrefix: [UInt8] = []
    var framingSuffix: [UInt8]?
    var crc: UInt32 = 0
    /// The response body's running CRC-32C, when the request asked for it.
    var responseCRC: UInt32?
    // Cancellation, set from another thread.
    let cancelled = Atomic<Bool>(false)

    deinit {
        if let output { fclose(output) }
        if let input { fclose(input) }
    }
}

/// One libcurl easy handle. Reusing it keeps the connection alive between requests (per worker slot).
/// Not thread-safe: a `CurlSession` confines it to one serial queue.
final class CurlEasy {
    private let handle: UnsafeMutableRawPointer
    private let caBundle: String?
    private let userAgent: String

    init(caBundle: String?, userAgent: String) {
        precondition(CurlGlobal.initialized, "curl_global_init failed")
        guard let h = curl_easy_init() else { fatalError("curl_easy_init failed") }
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
        case .file(let path, let crc32cHeader):
            partPath = path + ".part"
            if crc32cHeader != nil { state.responseCRC = 0 }
        }
        if let partPath {
            guard let f = fopen(partPath, "wb") else {
                throw HTTPTransportError(kind: .localFile, curlCode: -1, message: "cannot open \(partPath): \(errnoText())")
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
                state.failure = HTTPTransportError(kind: .localFile, curlCode: -1, message: "write failed: \(errnoText())")
            }
        }
        if let failure = state.failure { throw failure }
        if code != CURLE_OK { throw Self.error(code, cancelled: state.cancelled.load(ordering: .relaxed)) }

        var status = 0
        _ = pz_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        var connects = 0
        _ = pz_curl_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &connects)
        var contentLength: curl_off_t = -1
        _ = pz_curl_getinfo_off_t(handle, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &contentLength)
        let response = HTTPResponse(status: status, headers: state.headers, body: state.body,
                                    bytesWritten: state.bytesWritten, newConnections: connects)

        if let partPath, case .file(let path, let crc32cHeader) = request.response, response.isSuccess,
           request.method != "HEAD"
        {
            if contentLength >= 0 && Int64(contentLength) != state.bytesWritten {
                throw HTTPTransportError(kind: .truncated, curlCode: -1,
                    message: "body has \(state.bytesWritten) bytes, Content-Length says \(contentLength)")
            }
            if let crc32cHeader, let expected = response.header(crc32cHeader), !expected.contains("-"),
               let crc = state.responseCRC, ChunkedTrailerFraming.base64(crc) != expected
            {
                throw HTTPTransportError(kind: .corrupt, curlCode: -1,
                    message: "body's CRC-32C is \(ChunkedTrailerFraming.base64(crc)), \(crc32cHeader) says \(expected)")
            }
            guard rename(partPath, path) == 0 else {
                throw HTTPTransportError(kind: .localFile, curlCode: -1, message: "cannot rename to \(path): \(errnoText())")
            }
            moved = true
        }
        return response
    }

    private func configure(_ request: HTTPRequest, state: TransferState,
                           slist: inout UnsafeMutablePointer<curl_slist>?) throws(HTTPTransportError) {
        let unmanaged = Unmanaged.passUnretained(state).toOpaque()
        set(CURLOPT_URL, request.url)
        set(CURLOPT_NOSIGNAL, 1)
        set(CURLOPT_USERAGENT, userAgent)
        set(CURLOPT_SSL_VERIFYPEER, 1)
        set(CURLOPT_SSL_VERIFYHOST, 2)
        if let caBundle { set(CURLOPT_CAINFO, caBundle) }
        set(CURLOPT_TCP_KEEPALIVE, 1)
        // Receive in 512 KiB chunks (curl's maximum) rather than 16 KiB: fewer callbacks and writes per GiB.
        if case .file = request.response { set(CURLOPT_BUFFERSIZE, 512 << 10) }
        set(CURLOPT_CONNECTTIMEOUT, request.timeouts.connect)
        set(CURLOPT_LOW_SPEED_LIMIT, request.timeouts.lowSpeedBytes)
        set(CURLOPT_LOW_SPEED_TIME, request.timeouts.lowSpeedSeconds)
        set(CURLOPT_TIMEOUT, request.timeouts.total)
        set(CURLOPT_FOLLOWLOCATION, 0)
        // S3 keys may contain `..` and `//`; the path must go out exactly as it was signed.
        set(CURLOPT_PATH_AS_IS, 1)
        if !request.connectTo.isEmpty {
            var connect: UnsafeMutablePointer<curl_slist>?
            for entry in request.connectTo { connect = curl_slist_append(connect, entry) }
            connectToList = connect
            _ = pz_curl_setopt_slist(handle, CURLOPT_CONNECT_TO, connect)
        }

        _ = pz_curl_setopt_ptr(handle, CURLOPT_HEADERDATA, unmanaged)
        _ = pz_curl_setopt_datafn(handle, CURLOPT_HEADERFUNCTION, curlHeaderCallback)
        _ = pz_curl_setopt_ptr(handle, CURLOPT_WRITEDATA, unmanaged)
        _ = pz_curl_setopt_datafn(handle, CURLOPT_WRITEFUNCTION, curlWriteCallback)
        set(CURLOPT_NOPROGRESS, 0)
        _ = pz_curl_setopt_ptr(handle, CURLOPT_XFERINFODATA, unmanaged)
        _ = pz_curl_setopt_xferinfofn(handle, CURLOPT_XFERINFOFUNCTION, curlProgressCallback)

        // Request body: always through the read callback, so a file is streamed and a retry re-reads it.
        switch request.body {
        case .none:
            break
        case .bytes(let bytes):
            state.inputBytes = bytes
            state.inputLength = Int64(bytes.count)
        case .file(let path, let offset, _), .fileWithCRC32CTrailer(let path, let offset, _):
            guard let f = fopen(path, "rb") else {
                throw HTTPTransportError(kind: .localFile, curlCode: -1, message: "cannot open \(path): \(errnoText())")
            }
            state.input = f
            state.inputStart = offset
            state.inputLength = request.body.length
            setvbuf(f, nil, _IONBF, 0)
            guard fseeko(f, off_t(offset), SEEK_SET) == 0 else {
                throw HTTPTransportError(kind: .localFile, curlCode: -1, message: "cannot seek \(path): \(errnoText())")
            }
            if case .fileWithCRC32CTrailer(_, _, let framing) = request.body {
                state.framing = framing
                state.framingPrefix = framing.prefix
            }
        }
        let hasBody = request.body.length > 0 || request.method == "PUT" || request.method == "POST"
        if hasBody {
            // Larger reads mean fewer callbacks and syscalls for big files (curl's default is 64 KiB).
            if request.body.length > 1 << 20 { set(CURLOPT_UPLOAD_BUFFERSIZE, 1 << 20) }
            _ = pz_curl_setopt_ptr(handle, CURLOPT_READDATA, unmanaged)
            _ = pz_curl_setopt_datafn(handle, CURLOPT_READFUNCTION, curlReadCallback)
            _ = pz_curl_setopt_ptr(handle, CURLOPT_SEEKDATA, unmanaged)
            _ = pz_curl_setopt_seekfn(handle, CURLOPT_SEEKFUNCTION, curlSeekCallback)
        }

        switch request.method {
        case "GET":
            set(CURLOPT_HTTPGET, 1)
        case "HEAD":
            set(CURLOPT_NOBODY, 1)
        case "POST":
            set(CURLOPT_POST, 1)
            _ = pz_curl_setopt_off_t(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(request.body.length))
        case "PUT":
            // Without INFILESIZE a PUT goes out chunked, which S3 refuses.
            set(CURLOPT_UPLOAD, 1)
            _ = pz_curl_setopt_off_t(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(request.body.length))
        default:
            set(CURLOPT_CUSTOMREQUEST, request.method)
            if request.body.length > 0 {
                set(CURLOPT_UPLOAD, 1)
                _ = pz_curl_setopt_off_t(handle, CURLOPT_INFILESIZE_LARGE, curl_off_t(request.body.length))
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
        _ = pz_curl_setopt_slist(handle, CURLOPT_HTTPHEADER, list)
    }

    /// Kept alive for the duration of the transfer that uses it.
    private var connectToList: UnsafeMutablePointer<curl_slist>? {
        didSet { if let oldValue { curl_slist_free_all(oldValue) } }
    }

    private func set(_ option: CURLoption, _ value: Int) { _ = pz_curl_setopt_long(handle, option, value) }
    private func set(_ option: CURLoption, _ value: String) { _ = pz_curl_setopt_string(handle, option, value) }

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

// MARK: - C callbacks (non-capturing; they find their state through the userdata pointer)

private func curlHeaderCallback(_ data: UnsafeMutablePointer<CChar>, _ size: Int, _ count: Int,
                                _ userdata: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    guard let userdata else { return 0 }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    // Bytes, not Characters: a header line is ASCII in practice, and grapheme-aware String searching was a
    // visible share of the daemon's CPU per request.
    let line = UnsafeRawBufferPointer(start: data, count: length)
    if length >= 5, line[0] == UInt8(ascii: "H"), line[1] == UInt8(ascii: "T"), line[2] == UInt8(ascii: "T"),
       line[3] == UInt8(ascii: "P"), line[4] == UInt8(ascii: "/") {
        // A new status line (after 100 Continue or a redirect): start over.
        var status = 0
        if let space = line.firstIndex(of: UInt8(ascii: " ")) {
            for byte in line[(space + 1)...] {
                guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), status < 1000 else { break }
                status = status * 10 + Int(byte - UInt8(ascii: "0"))
            }
        }
        state.status = status
        state.headers = []
    } else if let colon = line.firstIndex(of: UInt8(ascii: ":")) {
        let isSpace = { (byte: UInt8) in byte == 0x20 || byte == 0x09 || byte == 0x0d || byte == 0x0a }
        var start = colon + 1
        var end = length
        while start < end, isSpace(line[start]) { start += 1 }
        while end > start, isSpace(line[end - 1]) { end -= 1 }
        state.headers.append((String(decoding: line[..<colon], as: UTF8.self),
                              String(decoding: line[start..<end], as: UTF8.self)))
    }
    return length
}

private func curlWriteCallback(_ data: UnsafeMutablePointer<CChar>, _ size: Int, _ count: Int,
                               _ userdata: UnsafeMutableRawPointer?) -> Int {
    let length = size * count
    guard let userdata else { return 0 }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    if let output = state.output, (200..<300).contains(state.status) {
        if let crc = state.responseCRC { state.responseCRC = pz_crc32c(crc, data, length) }
        let written = fwrite(data, 1, length, output)
        state.bytesWritten += Int64(written)
        if written != length {
            state.failure = HTTPTransportError(kind: .localFile, curlCode: -1, message: "write failed: \(errnoText())")
            return 0
        }
        return length
    }
    if state.body.count + length > state.memoryLimit {
        if state.output != nil { return length }  // an oversized error body: keep its head, drop the rest
        state.failure = HTTPTransportError(kind: .other, curlCode: -1,
                                           message: "response body exceeds \(state.memoryLimit) bytes")
        return 0
    }
    state.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
    return length
}

private func curlReadCallback(_ buffer: UnsafeMutablePointer<CChar>, _ size: Int, _ count: Int,
                              _ userdata: UnsafeMutableRawPointer?) -> Int {
    guard let userdata else { return Int(CURL_READFUNC_ABORT) }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    let wanted = Int(min(Int64(size * count), state.inputLength - state.inputSent))
    if wanted <= 0 { return 0 }
    if let framing = state.framing, let input = state.input {
        return readFramed(into: UnsafeMutableRawPointer(buffer), capacity: wanted, framing: framing, input: input, state: state)
    }
    if let input = state.input {
        let got = fread(buffer, 1, wanted, input)
        if got == 0 {
            state.failure = HTTPTransportError(kind: .localFile, curlCode: -1,
                message: "request body file ended early after \(state.inputSent) of \(state.inputLength) bytes")
            return Int(CURL_READFUNC_ABORT)
        }
        state.inputSent += Int64(got)
        return got
    }
    let start = Int(state.inputSent)
    state.inputBytes.withUnsafeBytes { raw in
        UnsafeMutableRawPointer(buffer).copyMemory(from: raw.baseAddress! + start, byteCount: wanted)
    }
    state.inputSent += Int64(wanted)
    return wanted
}

/// The wire bytes from `state.inputSent` on: the prefix, then file data (checksummed as it passes), then the
/// suffix, which is built once the last data byte has been read.
private func readFramed(into buffer: UnsafeMutableRawPointer, capacity: Int, framing: ChunkedTrailerFraming,
                        input: UnsafeMutablePointer<FILE>, state: TransferState) -> Int {
    let prefixEnd = Int64(state.framingPrefix.count)
    let dataEnd = prefixEnd + framing.dataLength
    var written = 0
    while written < capacity {
        let position = state.inputSent
        let room = capacity - written
        var n: Int
        if position < prefixEnd {
            n = min(room, Int(prefixEnd - position))
            state.framingPrefix.withUnsafeBytes { (buffer + written).copyMemory(from: $0.baseAddress! + Int(position), byteCount: n) }
        } else if position < dataEnd {
            n = fread(buffer + written, 1, min(room, Int(dataEnd - position)), input)
            if n == 0 {
                state.failure = HTTPTransportError(kind: .localFile, curlCode: -1,
                    message: "request body file ended early after \(position - prefixEnd) of \(framing.dataLength) bytes")
                return Int(CURL_READFUNC_ABORT)
            }
            state.crc = pz_crc32c(state.crc, buffer + written, n)
        } else {
            if state.framingSuffix == nil { state.framingSuffix = framing.suffix(crc: state.crc) }
            let suffix = state.framingSuffix!
            let start = Int(position - dataEnd)
            n = min(room, suffix.count - start)
            if n <= 0 { break }
            suffix.withUnsafeBytes { (buffer + written).copyMemory(from: $0.baseAddress! + start, byteCount: n) }
        }
        written += n
        state.inputSent += Int64(n)
    }
    return written
}

/// Lets curl rewind the body when it must send it again (a reused connection that turned out dead).
private func curlSeekCallback(_ userdata: UnsafeMutableRawPointer?, _ offset: curl_off_t, _ origin: Int32) -> Int32 {
    guard let userdata, origin == SEEK_SET else { return Int32(CURL_SEEKFUNC_CANTSEEK) }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    guard offset >= 0, Int64(offset) <= state.inputLength else { return Int32(CURL_SEEKFUNC_FAIL) }
    if state.framing != nil {
        // The checksum runs from the first byte: a framed body rewinds only to its start (curl's only use).
        guard offset == 0, let input = state.input, fseeko(input, off_t(state.inputStart), SEEK_SET) == 0 else {
            return Int32(CURL_SEEKFUNC_CANTSEEK)
        }
        state.crc = 0
        state.framingSuffix = nil
        state.inputSent = 0
        return Int32(CURL_SEEKFUNC_OK)
    }
    if let input = state.input, fseeko(input, off_t(state.inputStart + Int64(offset)), SEEK_SET) != 0 {
        return Int32(CURL_SEEKFUNC_FAIL)
    }
    state.inputSent = Int64(offset)
    return Int32(CURL_SEEKFUNC_OK)
}

private func curlProgressCallback(_ userdata: UnsafeMutableRawPointer?, _: curl_off_t, _: curl_off_t,
                                  _: curl_off_t, _: curl_off_t) -> Int32 {
    guard let userdata else { return 0 }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    return state.cancelled.load(ordering: .relaxed) ? 1 : 0
}
