internal import CChecksum
internal import CCurl
@preconcurrency import Glibc

// MARK: - C callbacks (non-capturing; they find their state through the userdata pointer)

func curlHeaderCallback(
    _ data: UnsafeMutablePointer<CChar>, _ size: Int, _ count: Int,
    _ userdata: UnsafeMutableRawPointer?
) -> Int {
    let length = size * count
    guard let userdata else { return 0 }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    // Bytes, not Characters: a header line is ASCII in practice, and grapheme-aware String searching was a
    // visible share of the daemon's CPU per request.
    let line = UnsafeRawBufferPointer(start: data, count: length)
    if length >= 5, line[0] == UInt8(ascii: "H"), line[1] == UInt8(ascii: "T"), line[2] == UInt8(ascii: "T"),
        line[3] == UInt8(ascii: "P"), line[4] == UInt8(ascii: "/")
    {
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
        state.headers.append(
            (
                String(decoding: line[..<colon], as: UTF8.self),
                String(decoding: line[start..<end], as: UTF8.self)
            ))
    }
    return length
}

func curlWriteCallback(
    _ data: UnsafeMutablePointer<CChar>, _ size: Int, _ count: Int,
    _ userdata: UnsafeMutableRawPointer?
) -> Int {
    let length = size * count
    guard let userdata else { return 0 }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    if let limit = state.stopAbove, (200..<300).contains(state.status) {
        state.stopAbove = nil
        if let length = state.header("Content-Length").flatMap({ Int64($0) }), length > limit {
            state.stoppedEarly = true
            return 0
        }
    }
    if state.rangeOutput >= 0, (200..<300).contains(state.status) {
        return writeRange(state, data, length)
    }
    if let output = state.output, (200..<300).contains(state.status) {
        if let crc = state.responseCRC { state.responseCRC = pz_crc32c(crc, data, length) }
        let written = fwrite(data, 1, length, output)
        state.bytesWritten += Int64(written)
        if written != length {
            state.failure = HTTPTransportError.localFile("write failed")
            return 0
        }
        return length
    }
    if state.body.count + length > state.memoryLimit {
        // An oversized error body for a file or range: keep its head, drop the rest.
        if state.output != nil || state.rangeOutput >= 0 { return length }
        state.failure = HTTPTransportError(
            kind: .other, curlCode: -1,
            message: "response body exceeds \(state.memoryLimit) bytes")
        return 0
    }
    state.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
    return length
}

/// A ranged body: the span comes from the reply's Content-Range at the first byte, then each chunk is written at its
/// place with `pwrite` (no shared file offset, so several ranges of one file can land at once).
private func writeRange(_ state: TransferState, _ data: UnsafeMutablePointer<CChar>, _ length: Int) -> Int {
    if state.rangeSpan == nil {
        guard state.status == 206,
            let span = ContentRange(state.header("Content-Range") ?? ""), span.total == state.rangeTotal
        else {
            state.failure = HTTPTransportError(
                kind: .wrongRange, curlCode: -1,
                message:
                    "asked for a range of a \(state.rangeTotal)-byte object, got HTTP \(state.status) with Content-Range "
                    + "\(state.header("Content-Range") ?? "(none)")")
            return 0
        }
        state.rangeSpan = (span.start, span.end)
    }
    let (start, end) = state.rangeSpan!
    guard state.bytesWritten + Int64(length) <= end - start + 1 else {
        state.failure = HTTPTransportError(
            kind: .wrongRange, curlCode: -1, message: "the body runs past its Content-Range \(start)-\(end)")
        return 0
    }
    if let crc = state.responseCRC { state.responseCRC = pz_crc32c(crc, data, length) }
    var done = 0
    while done < length {
        let n = pwrite(state.rangeOutput, data + done, length - done, off_t(start + state.bytesWritten + Int64(done)))
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else {
            state.failure = HTTPTransportError.localFile("write failed")
            return 0
        }
        done += n
    }
    state.bytesWritten += Int64(length)
    return length
}

/// `Content-Range: bytes START-END/TOTAL`, as a 206 carries it.
struct ContentRange: Equatable {
    var start: Int64
    var end: Int64
    var total: Int64

    init?(_ header: String) {
        guard header.hasPrefix("bytes ") else { return nil }
        let rest = header.dropFirst(6)
        let halves = rest.split(separator: "/", omittingEmptySubsequences: false)
        guard halves.count == 2, let total = Int64(halves[1]) else { return nil }
        let ends = halves[0].split(separator: "-", omittingEmptySubsequences: false)
        guard ends.count == 2, let start = Int64(ends[0]), let end = Int64(ends[1]), start >= 0, start <= end,
            end < total
        else { return nil }
        (self.start, self.end, self.total) = (start, end, total)
    }
}

func curlReadCallback(
    _ buffer: UnsafeMutablePointer<CChar>, _ size: Int, _ count: Int,
    _ userdata: UnsafeMutableRawPointer?
) -> Int {
    guard let userdata else { return Int(CURL_READFUNC_ABORT) }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    let wanted = Int(min(Int64(size * count), state.inputLength - state.inputSent))
    if wanted <= 0 { return 0 }
    if let framing = state.framing, state.input >= 0 {
        return readFramed(into: UnsafeMutableRawPointer(buffer), capacity: wanted, framing: framing, state: state)
    }
    if state.input >= 0 {
        guard
            let got = readFile(into: UnsafeMutableRawPointer(buffer), count: wanted, at: state.inputSent, state: state)
        else { return Int(CURL_READFUNC_ABORT) }
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
func readFramed(
    into buffer: UnsafeMutableRawPointer, capacity: Int, framing: ChunkedTrailerFraming, state: TransferState
)
    -> Int
{
    let prefixEnd = Int64(state.framingPrefix.count)
    let dataEnd = prefixEnd + framing.dataLength
    var written = 0
    while written < capacity {
        let position = state.inputSent
        let room = capacity - written
        var n: Int
        if position < prefixEnd {
            n = min(room, Int(prefixEnd - position))
            state.framingPrefix.withUnsafeBytes {
                (buffer + written).copyMemory(from: $0.baseAddress! + Int(position), byteCount: n)
            }
        } else if position < dataEnd {
            guard
                let got = readFile(
                    into: buffer + written, count: min(room, Int(dataEnd - position)), at: position - prefixEnd,
                    state: state)
            else { return Int(CURL_READFUNC_ABORT) }
            n = got
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

/// Reads up to `count` bytes of the body file's data at `dataOffset` (from `inputStart`); nil after recording why
/// when the file ends early or cannot be read.
func readFile(into buffer: UnsafeMutableRawPointer, count: Int, at dataOffset: Int64, state: TransferState) -> Int? {
    var got = -1
    repeat {
        got = pread(state.input, buffer, count, off_t(state.inputStart + dataOffset))
    } while got < 0 && errno == EINTR
    guard got > 0 else {
        let dataLength = state.framing?.dataLength ?? state.inputLength
        state.failure = HTTPTransportError(
            kind: .localFile, curlCode: -1,
            message: got == 0
                ? "request body file ended early after \(dataOffset) of \(dataLength) bytes"
                : "request body file cannot be read: \(errnoText())")
        return nil
    }
    return got
}

/// Lets curl rewind the body when it must send it again (a reused connection that turned out dead).
func curlSeekCallback(_ userdata: UnsafeMutableRawPointer?, _ offset: curl_off_t, _ origin: Int32) -> Int32 {
    guard let userdata, origin == SEEK_SET else { return Int32(CURL_SEEKFUNC_CANTSEEK) }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    guard offset >= 0, Int64(offset) <= state.inputLength else { return Int32(CURL_SEEKFUNC_FAIL) }
    if state.framing != nil {
        // The checksum runs from the first byte: a framed body rewinds only to its start (curl's only use).
        guard offset == 0 else { return Int32(CURL_SEEKFUNC_CANTSEEK) }
        state.crc = 0
        state.framingSuffix = nil
        state.inputSent = 0
        return Int32(CURL_SEEKFUNC_OK)
    }
    // Reads are positional (pread): rewinding is only a matter of where the next one starts.
    state.inputSent = Int64(offset)
    return Int32(CURL_SEEKFUNC_OK)
}

func curlProgressCallback(
    _ userdata: UnsafeMutableRawPointer?, _: curl_off_t, _: curl_off_t,
    _: curl_off_t, _: curl_off_t
) -> Int32 {
    guard let userdata else { return 0 }
    let state = Unmanaged<TransferState>.fromOpaque(userdata).takeUnretainedValue()
    return state.cancelled.load(ordering: .relaxed) ? 1 : 0
}
