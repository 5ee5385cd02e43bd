@preconcurrency import Glibc
import Synchronization

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
    // Request body: a file read with pread at `inputStart` + the data sent so far (closed at the end when opened
    // here, left open when the caller's).
    var input: Int32 = -1
    var ownsInput = false
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
    /// `.file`'s `stopAbove`: checked once, at the first byte of a 2xx body.
    var stopAbove: Int64?
    var stoppedEarly = false
    /// `.range`: the descriptor written with `pwrite`, the object's size, and the span the reply's Content-Range
    /// gave (known at the first byte of the body).
    var rangeOutput: Int32 = -1
    var rangeTotal: Int64 = 0
    var rangeSpan: (start: Int64, end: Int64)?
    // Cancellation, set from another thread.
    let cancelled = Atomic<Bool>(false)

    /// The first response header with this name, compared without case.
    func header(_ name: String) -> String? { firstHeader(name, in: headers) }

    deinit {
        if let output { fclose(output) }
        if ownsInput && input >= 0 { close(input) }
    }
}

extension TransferState: @unchecked Sendable {}
