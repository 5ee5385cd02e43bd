internal import CCrypto

/// The digests SigV4 and S3 need, from libcrypto. This is the only file that touches `CCrypto`.
public enum Digest {
    /// The SHA-256 of `bytes`.
    public static func sha256<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var hasher = StreamingDigest(.sha256)
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// The MD5 of `bytes` (S3's `Content-MD5`; not used for anything that needs collision resistance).
    public static func md5<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var hasher = StreamingDigest(.md5)
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// The SHA-1 of `bytes`: only to name a file as the AWS CLI does (its SSO token cache), never for security.
    public static func sha1<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var hasher = StreamingDigest(.sha1)
        hasher.update(bytes)
        return hasher.finalize()
    }

    /// HMAC-SHA256 of `message` under `key` (RFC 2104), built on the fetched SHA-256: OpenSSL 3's one-shot `HMAC()`
    /// looks the MAC algorithm up and builds a context on every call, which cost more than the hashing itself.
    public static func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
        let blockSize = 64
        var block = key.count > blockSize ? sha256(key) : key
        block += [UInt8](repeating: 0, count: blockSize - block.count)
        var inner = StreamingDigest(.sha256)
        inner.update(block.map { $0 ^ 0x36 })
        inner.update(message)
        var outer = StreamingDigest(.sha256)
        outer.update(block.map { $0 ^ 0x5c })
        outer.update(inner.finalize())
        return outer.finalize()
    }

    /// The OpenSSL version string, for `parallelizer version`.
    public static var openSSLVersion: String { String(cString: pz_openssl_version()) }
}

// Fetched once: handing OpenSSL 3 the legacy `EVP_sha256()` makes every `EVP_DigestInit_ex` look the
// implementation up again in the provider store, under a lock. A global is initialised once, thread-safely; the
// legacy constant stays the fallback should the fetch fail.
nonisolated(unsafe) private let fetchedSHA256: OpaquePointer = EVP_MD_fetch(nil, "SHA256", nil) ?? EVP_sha256()
nonisolated(unsafe) private let fetchedMD5: OpaquePointer = EVP_MD_fetch(nil, "MD5", nil) ?? EVP_md5()
nonisolated(unsafe) private let fetchedSHA1: OpaquePointer = EVP_MD_fetch(nil, "SHA1", nil) ?? EVP_sha1()

/// An incremental SHA-256 or MD5, for hashing a file in chunks without holding it in memory.
public struct StreamingDigest: ~Copyable {
    public enum Algorithm: Sendable { case sha256, md5, sha1 }

    private let context: OpaquePointer

    public init(_ algorithm: Algorithm) {
        guard let ctx = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new: out of memory") }
        context = ctx
        let digest: OpaquePointer
        switch algorithm {
        case .sha256: digest = fetchedSHA256
        case .md5: digest = fetchedMD5
        case .sha1: digest = fetchedSHA1
        }
        EVP_DigestInit_ex(context, digest, nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    public mutating func update<Bytes: Collection>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        let done: Bool? = bytes.withContiguousStorageIfAvailable { buffer in
            EVP_DigestUpdate(context, buffer.baseAddress, buffer.count) == 1
        }
        if done == nil {
            let copy = Array(bytes)
            copy.withUnsafeBufferPointer { _ = EVP_DigestUpdate(context, $0.baseAddress, $0.count) }
        }
    }

    public mutating func update(_ buffer: UnsafeRawBufferPointer) {
        _ = EVP_DigestUpdate(context, buffer.baseAddress, buffer.count)
    }

    public consuming func finalize() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        out.withUnsafeMutableBufferPointer { _ = EVP_DigestFinal_ex(context, $0.baseAddress, &length) }
        return Array(out.prefix(Int(length)))
    }
}

extension Sequence where Element == UInt8 {
    /// Lowercase hexadecimal, as SigV4 writes hashes and signatures.
    public var hexString: String {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(underestimatedCount * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Standard base64 with padding (Content-MD5, checksum headers).
    public var base64String: String {
        let table: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        let bytes = Array(self)
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let b0 = bytes[index]
            let b1 = index + 1 < bytes.count ? bytes[index + 1] : 0
            let b2 = index + 2 < bytes.count ? bytes[index + 2] : 0
            out.append(table[Int(b0 >> 2)])
            out.append(table[Int((b0 & 0x03) << 4 | b1 >> 4)])
            out.append(index + 1 < bytes.count ? table[Int((b1 & 0x0f) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(index + 2 < bytes.count ? table[Int(b2 & 0x3f)] : UInt8(ascii: "="))
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}
