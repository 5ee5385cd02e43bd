@preconcurrency import Glibc
import HTTPCurl

/// The digest of a byte range of a file, computed in one streaming pass with a fixed 1 MiB buffer, off the
/// cooperative thread pool.
public enum FileDigest {
    public static func compute(
        path: String, offset: Int64 = 0, length: Int64,
        algorithm: StreamingDigest.Algorithm
    ) async throws(AWSError) -> [UInt8] {
        try await runBlocking { () throws(AWSError) -> [UInt8] in
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                throw AWSError.client("s3", "cannot open \(path): \(String(cString: strerror(errno)))")
            }
            defer { close(fd) }
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
                        "s3", "\(path) is shorter than expected (\(position - offset) of \(length) bytes)")
                }
                digest.update(UnsafeRawBufferPointer(rebasing: buffer[0..<got]))
                position += Int64(got)
                remaining -= Int64(got)
            }
            return digest.finalize()
        }
    }
}
