@preconcurrency import Glibc
import HTTPCurl

/// The digest of a byte range of a file, computed in one streaming pass with a fixed 1 MiB buffer, off the
/// cooperative thread pool.
public enum FileDigest {
    public static func compute(
        path: String, offset: Int64 = 0, length: Int64,
        algorithm: StreamingDigest.Algorithm
    ) async throws(AWSError) -> [UInt8] {
        try await compute(.path(path), offset: offset, length: length, algorithm: algorithm)
    }

    /// The same for a `FileSource`: a descriptor is read with `pread` and left open.
    public static func compute(
        _ source: FileSource, offset: Int64 = 0, length: Int64,
        algorithm: StreamingDigest.Algorithm
    ) async throws(AWSError) -> [UInt8] {
        try await runBlocking { () throws(AWSError) -> [UInt8] in
            let fd: Int32
            switch source {
            case .path(let path):
                fd = open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else {
                    throw AWSError.client("s3", "cannot open \(path): \(String(cString: strerror(errno)))")
                }
            case .descriptor(let given):
                fd = given
            }
            defer { if case .path = source { close(fd) } }
            var digest = StreamingDigest(algorithm)
            let bufferSize = 1 << 20
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)
            defer { buffer.deallocate() }
            var position = offset
            var remaining = length
            while remaining > 0 {
                let want = Int(min(Int64(bufferSize), remaining))
                let got = pread(fd, buffer.baseAddress, want, off_t(position))
                guard got > 0 else {
                    throw AWSError.client(
                        "s3", "\(source) is shorter than expected (\(position - offset) of \(length) bytes)")
                }
                digest.update(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
                position += Int64(got)
                remaining -= Int64(got)
            }
            return digest.finalize()
        }
    }
}
