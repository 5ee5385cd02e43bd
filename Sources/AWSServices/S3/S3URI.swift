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
}
