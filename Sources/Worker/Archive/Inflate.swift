internal import CZlib
@preconcurrency import Glibc

/// zlib's inflate over a file: `raw` for a zip entry's deflate data, `gzip` for a .tar.gz. Input is read with
/// `pread` from the archive's descriptor, in 256 KiB pieces; memory does not grow with the archive.
final class Inflater {
    enum Format { case raw, gzip }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    private var stream = z_stream()
    private let fd: Int32
    private var position: Int64
    private let end: Int64
    private var input: [UInt8]
    private(set) var finished = false

    /// Inflates the bytes of `fd` from `offset` to `end`.
    init(_ format: Format, fd: Int32, offset: Int64, end: Int64) throws(Failure) {
        self.fd = fd
        self.position = offset
        self.end = end
        input = [UInt8](repeating: 0, count: 256 << 10)
        let bits: Int32 = format == .raw ? -15 : 15 + 16
        guard pz_inflate_init(&stream, bits) == Z_OK else { throw Failure(description: "zlib cannot start") }
    }

    deinit { inflateEnd(&stream) }

    /// Fills `buffer` with up to `count` inflated bytes; returns how many (0 at the end of the stream).
    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws(Failure) -> Int {
        if finished || count == 0 { return 0 }
        stream.next_out = buffer.assumingMemoryBound(to: Bytef.self)
        stream.avail_out = uInt(count)
        while stream.avail_out > 0 && !finished {
            if stream.avail_in == 0 {
                let want = Int(min(Int64(input.count), end - position))
                guard want > 0 else { throw Failure(description: "the compressed data ends early") }
                let got = input.withUnsafeMutableBytes { pread(fd, $0.baseAddress, want, off_t(position)) }
                guard got > 0 else { throw Failure(description: "the archive cannot be read") }
                position += Int64(got)
                fill = got
                stream.avail_in = uInt(got)
            }
            let status: Int32 = input.withUnsafeMutableBytes { raw in
                // The unread input is the end of what the last read brought.
                stream.next_in = raw.baseAddress!.assumingMemoryBound(to: Bytef.self) + (fill - Int(stream.avail_in))
                return inflate(&stream, Z_NO_FLUSH)
            }
            switch status {
            case Z_OK: break
            case Z_STREAM_END: finished = true
            case Z_BUF_ERROR where stream.avail_in == 0: continue
            default: throw Failure(description: "the compressed data is corrupt (zlib \(status))")
            }
        }
        return count - Int(stream.avail_out)
    }

    /// How many bytes the last read put into `input` (the window `next_in` points into).
    private var fill = 0

    /// Where the compressed data ended (for a gzip member followed by nothing, the file's end).
    var consumedUpTo: Int64 { position - Int64(stream.avail_in) }
}

/// CRC-32 (zip's), as zlib computes it.
func zipCRC32(_ crc: UInt32, _ buffer: UnsafeRawPointer, _ count: Int) -> UInt32 {
    UInt32(crc32(uLong(crc), buffer.assumingMemoryBound(to: Bytef.self), uInt(count)))
}
