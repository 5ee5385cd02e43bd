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

    /// S3's rule for a bucket's name, the one place it is spelled: 3 to 63 characters of lowercase letters, digits,
    /// dots and hyphens, beginning and ending with a letter or a digit. The parameters, message bodies and the
    /// client's addressing all ask here.
    public static func isValidBucketName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (3...63).contains(bytes.count) else { return false }
        let letterOrDigit = { (b: UInt8) in (b >= 0x61 && b <= 0x7a) || (b >= 0x30 && b <= 0x39) }
        guard letterOrDigit(bytes.first!), letterOrDigit(bytes.last!) else { return false }
        return bytes.allSatisfy { letterOrDigit($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }
    }
}
