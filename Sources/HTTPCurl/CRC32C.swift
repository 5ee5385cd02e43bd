internal import CChecksum

/// CRC-32C as S3 uses it (`x-amz-checksum-crc32c`): the running checksum, joining the checksums of adjacent ranges,
/// and the value S3 prints for an object uploaded in parts.
public enum CRC32C {
    /// The checksum of `bytes`, continuing from `crc` (0 to start).
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        pz_crc32c(crc, bytes.baseAddress, bytes.count)
    }

    public static func checksum(_ bytes: [UInt8], continuing crc: UInt32 = 0) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0, continuing: crc) }
    }

    /// The checksum of A followed by B, from A's and B's checksums and B's length.
    public static func combine(_ a: UInt32, _ b: UInt32, lengthOfB: Int64) -> UInt32 {
        pz_crc32c_combine(a, b, UInt64(lengthOfB))
    }

    /// As S3 prints it: four big-endian bytes in base64.
    public static func base64(_ crc: UInt32) -> String { ChunkedTrailerFraming.base64(crc) }

    /// The checksum S3 gives an object uploaded in parts with CRC-32C (its COMPOSITE type): the checksum of the
    /// parts' checksums, each as four big-endian bytes, then `-` and the number of parts.
    public static func composite(ofParts parts: [UInt32]) -> String {
        let bytes = parts.flatMap { crc in (0..<4).map { UInt8(truncatingIfNeeded: crc >> (24 - 8 * $0)) } }
        return base64(checksum(bytes)) + "-\(parts.count)"
    }
}
