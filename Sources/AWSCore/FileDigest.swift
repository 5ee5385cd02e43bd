@preconcurrency import Glibc
import HTTPCurl

/// Digests of a byte range of a file, computed in one streaming pass with a fixed 1 MiB buffer.
public struct FileDigest: Sendable {
    public var md5: [UInt8]
    public var sha256: [UInt8]?

    /// - Parameter sha256: also compute SHA-256 (for a signed payload); MD5 alone feeds `Content-MD5`.
    public static func compute(path: String, offset: Int64 = 0, length: Int64, sha256: Bool) async throws(AWSError)
        -> FileDigest
    {
        try await runBlocking { () throws(AWSError) -> FileDigest in
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw AWSError.client("s3", "cannot open \(path): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            var md5 = StreamingDigest(.md5)
            var sha: StreamingDigest? = sha256 ? StreamingDigest(.sha256) : nil
            let bufferSize = 1 << 20
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)
            defer { buffer.deallocate() }
            var position = offset
            var remaining = length
            while remaining > 0 {
                let want = Int(min(Int64(bufferSize), remaining))
                let got = pread(fd, buffer.baseAddress, want, off_t(position))
                guard got > 0 else {
                    throw AWSError.client("s3", "\(path) is shorter than expected (\(position - offset) of \(length) bytes)")
                }
                let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<got])
                md5.update(chunk)
                sha?.update(chunk)
                position += Int64(got)
                remaining -= Int64(got)
            }
            return FileDigest(md5: md5.finalize(), sha256: sha.take()?.finalize())
        }
    }
}
