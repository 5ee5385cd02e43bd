/// `s3://bucket/key` (the key may be empty for a prefix, and may contain any character).
public struct S3URI: Sendable, Equatable, CustomStringConvertible {
    public var bucket: String
    public var key: String

    public init(bucket: String, key: String) {
        self.bucket = bucket
        self.key = key
    }

    public init?(_ text: String) {
        guard text.hasPrefix("s3://") else { return nil }
        let rest = text.dropFirst(5)
        let bucket = rest.prefix { $0 != "/" }
        guard !bucket.isEmpty else { return nil }
        self.bucket = String(bucket)
        self.key = String(rest.dropFirst(bucket.count + (rest.count > bucket.count ? 1 : 0)))
    }

    public var description: String { "s3://\(bucket)/\(key)" }

    // The bucket-name rules, in one place.

    /// S3's rule for the name of a bucket made today: 3 to 63 characters of lowercase letters, digits, dots and
    /// hyphens, beginning and ending with a letter or a digit. The daemon's parameters must follow it, and only such
    /// a name can be addressed virtual-hosted style.
    public static func isValidBucketName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (3...63).contains(bytes.count) else { return false }
        let letterOrDigit = { (b: UInt8) in (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) }
        guard letterOrDigit(bytes.first!), letterOrDigit(bytes.last!) else { return false }
        return bytes.allSatisfy { letterOrDigit($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }
    }

    /// Whether a name a message gives could name a bucket at all: not empty, at most 63 bytes, no `/`. Looser than
    /// `isValidBucketName` on purpose: buckets made before 2018 in us-east-1 may have capitals and underscores, and
    /// S3 itself is the judge of a name that passes here (a task error, not a bad message).
    public static func mayBeBucketName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 63 && !name.contains("/")
    }
}
