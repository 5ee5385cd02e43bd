import FoundationEssentials
import Synchronization

/// A request as the signer sees it: plain values, no HTTP layer.
public struct SignableRequest: Sendable {
    public var method: String
    /// The path exactly as it goes on the wire. S3 callers pass it already URI-encoded (see `S3 rules` below);
    /// other services pass `/` or a path that the signer encodes once more.
    public var path: String
    /// Decoded query parameters, in wire order.
    public var query: [(String, String)]
    /// Headers to sign, in wire order. Repeated names are allowed; their values are joined with `,`.
    public var headers: [(String, String)]
    /// How the body is represented in the canonical request.
    public var payload: Payload

    public enum Payload: Sendable, Equatable {
        /// The lowercase hex SHA-256 of the body.
        case sha256Hex(String)
        /// `UNSIGNED-PAYLOAD`: S3 only; TLS protects the body and S3 checks Content-MD5 / checksum headers.
        case unsigned
        /// `STREAMING-UNSIGNED-PAYLOAD-TRAILER`: an `aws-chunked` body whose checksum follows it as a trailer, so S3
        /// verifies the bytes though nothing was hashed before sending.
        case streamingUnsignedTrailer

        public static let empty = Payload.sha256Hex(Digest.sha256([UInt8]()).hexString)

        public var canonicalValue: String {
            switch self {
            case .sha256Hex(let hex): return hex
            case .unsigned: return "UNSIGNED-PAYLOAD"
            case .streamingUnsignedTrailer: return "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
            }
        }
    }

    public init(
        method: String, path: String, query: [(String, String)] = [], headers: [(String, String)], payload: Payload
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.payload = payload
    }
}

/// Every stage of a signature, so tests can compare each against AWS's published vectors.
public struct SigningResult: Sendable {
    public var canonicalRequest: String
    public var stringToSign: String
    public var signature: String
    /// Header mode: the headers to add, in this order (`X-Amz-Security-Token`, `X-Amz-Date`,
    /// `x-amz-content-sha256`, `Authorization`). Query mode: empty.
    public var addedHeaders: [(String, String)]
    /// Query mode: the `X-Amz-*` parameters to append, in AWS's wire order. Header mode: empty.
    public var addedQuery: [(String, String)]
}

/// AWS Signature Version 4 (`AWS4-HMAC-SHA256`), header signing and query presigning.
///
/// A pure value: the date is a parameter, so the same inputs always give the same signature, and tests run
/// AWS's vectors without a clock. Service differences are options, not `if service == "s3"` checks.
///
/// Spec: https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html
public struct SigV4Signer: Sendable {
    public struct Options: Sendable {
        /// Encode the (already encoded) wire path once more. True for every service but S3.
        public var doubleURIEncode: Bool
        /// Remove `.`/`..` segments and collapse `//`. False for S3, whose keys may hold any of them.
        public var normalizePath: Bool
        /// Add a signed `x-amz-content-sha256` header carrying the payload hash (S3 requires it).
        public var addContentSHA256Header: Bool
        /// Add `X-Amz-Security-Token` after signing instead of signing it (a few legacy services want this).
        public var omitSessionTokenFromSignature: Bool

        public init(
            doubleURIEncode: Bool = true, normalizePath: Bool = true, addContentSHA256Header: Bool = false,
            omitSessionTokenFromSignature: Bool = false
        ) {
            self.doubleURIEncode = doubleURIEncode
            self.normalizePath = normalizePath
            self.addContentSHA256Header = addContentSHA256Header
            self.omitSessionTokenFromSignature = omitSessionTokenFromSignature
        }

        /// S3's rules: no double encoding, no path normalisation, and the payload hash in a header.
        public static let s3 = Options(doubleURIEncode: false, normalizePath: false, addContentSHA256Header: true)
        public static let standard = Options()
    }

    public static let algorithm = "AWS4-HMAC-SHA256"

    public let region: String
    public let service: String
    public let options: Options
    private let keyCache: SigningKeyCache

    public init(region: String, service: String, options: Options = .standard, keyCache: SigningKeyCache = .shared) {
        self.region = region
        self.service = service
        self.options = options
        self.keyCache = keyCache
    }

    // MARK: - Header signing

    /// Signs with an `Authorization` header.
    public func signHeaders(_ request: SignableRequest, credentials: Credentials, date: Date) -> SigningResult {
        let stamp = AmzDate(date)
        var headers = request.headers
        var added: [(String, String)] = []
        if let token = credentials.sessionToken {
            added.append(("X-Amz-Security-Token", token))
            if !options.omitSessionTokenFromSignature { headers.append(("X-Amz-Security-Token", token)) }
        }
        added.append(("X-Amz-Date", stamp.full))
        headers.append(("X-Amz-Date", stamp.full))
        if options.addContentSHA256Header {
            added.append(("x-amz-content-sha256", request.payload.canonicalValue))
            headers.append(("x-amz-content-sha256", request.payload.canonicalValue))
        }
        let canonicalHeaders = Self.canonicalHeaders(headers)
        let canonical = canonicalRequest(
            method: request.method, path: request.path, query: Self.canonicalQuery(request.query),
            canonicalHeaders: canonicalHeaders, payload: request.payload.canonicalValue)
        let scope = credentialScope(stamp)
        let toSign = stringToSign(stamp: stamp, scope: scope, canonicalRequest: canonical)
        let signature = sign(toSign, credentials: credentials, stamp: stamp)
        added.append(
            (
                "Authorization",
                "\(Self.algorithm) Credential=\(credentials.accessKeyID)/\(scope), "
                    + "SignedHeaders=\(canonicalHeaders.signed), Signature=\(signature)"
            ))
        return SigningResult(
            canonicalRequest: canonical, stringToSign: toSign, signature: signature,
            addedHeaders: added, addedQuery: [])
    }

    // MARK: - Query presigning

    /// Presigns with `X-Amz-*` query parameters, valid for `expires` seconds (AWS allows at most 7 days).
    public func presign(_ request: SignableRequest, credentials: Credentials, date: Date, expires: Int) -> SigningResult
    {
        let stamp = AmzDate(date)
        let scope = credentialScope(stamp)
        let canonicalHeaders = Self.canonicalHeaders(request.headers)
        var added: [(String, String)] = [
            ("X-Amz-Algorithm", Self.algorithm),
            ("X-Amz-Credential", "\(credentials.accessKeyID)/\(scope)"),
            ("X-Amz-Date", stamp.full),
            ("X-Amz-SignedHeaders", canonicalHeaders.signed),
            ("X-Amz-Expires", String(expires)),
        ]
        var signedQuery = request.query + added
        if let token = credentials.sessionToken {
            added.append(("X-Amz-Security-Token", token))
            if !options.omitSessionTokenFromSignature { signedQuery.append(("X-Amz-Security-Token", token)) }
        }
        let canonical = canonicalRequest(
            method: request.method, path: request.path, query: Self.canonicalQuery(signedQuery),
            canonicalHeaders: canonicalHeaders, payload: request.payload.canonicalValue)
        let toSign = stringToSign(stamp: stamp, scope: scope, canonicalRequest: canonical)
        let signature = sign(toSign, credentials: credentials, stamp: stamp)
        added.append(("X-Amz-Signature", signature))
        return SigningResult(
            canonicalRequest: canonical, stringToSign: toSign, signature: signature,
            addedHeaders: [], addedQuery: added)
    }

    // MARK: - Stages

    /// Task 1: the canonical request.
    func canonicalRequest(
        method: String, path: String, query: String,
        canonicalHeaders: (block: String, signed: String), payload: String
    ) -> String {
        [method, canonicalURI(path), query, canonicalHeaders.block, canonicalHeaders.signed, payload]
            .joined(separator: "\n")
    }

    func canonicalURI(_ path: String) -> String {
        let path = options.normalizePath ? Self.normalize(path) : path
        if path.isEmpty { return "/" }
        return options.doubleURIEncode ? URIEncoding.encode(path, keepSlash: true) : path
    }

    /// Removes `.` and `..` segments and empty segments, keeping a trailing slash (RFC 3986 §5.2.4, as AWS applies it).
    static func normalize(_ path: String) -> String {
        var segments: [Substring] = []
        for segment in path.split(separator: "/", omittingEmptySubsequences: true) {
            if segment == "." { continue }
            if segment == ".." {
                if !segments.isEmpty { segments.removeLast() }
                continue
            }
            segments.append(segment)
        }
        var result = "/" + segments.joined(separator: "/")
        let endsWithSlash = path.hasSuffix("/") || path.hasSuffix("/.") || path.hasSuffix("/..")
        if endsWithSlash && result != "/" { result += "/" }
        return result
    }

    /// Encoded `name=value` pairs sorted by name, then value.
    static func canonicalQuery(_ items: [(String, String)]) -> String {
        let encoded: [(name: String, value: String)] = items.map {
            (URIEncoding.encode($0.0), URIEncoding.encode($0.1))
        }
        let sorted = encoded.sorted { a, b in a.name == b.name ? a.value < b.value : a.name < b.name }
        return sorted.map { pair in pair.name + "=" + pair.value }.joined(separator: "&")
    }

    /// Lowercased names, sorted; values trimmed with inner runs of spaces collapsed; repeats joined by `,`.
    static func canonicalHeaders(_ headers: [(String, String)]) -> (block: String, signed: String) {
        // A stable sort keeps repeated names in wire order, so their values join in that order.
        let sorted = headers.enumerated()
            .map { (name: asciiLowercased($0.element.0), value: trimAndCollapse($0.element.1), order: $0.offset) }
            .sorted { $0.name == $1.name ? $0.order < $1.order : $0.name < $1.name }
        var block = ""
        var signed = ""
        block.reserveCapacity(sorted.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 2 })
        for (index, header) in sorted.enumerated() {
            if index > 0 && sorted[index - 1].name == header.name {
                block.removeLast()  // the newline: a repeat joins the previous line
                block += "," + header.value + "\n"
                continue
            }
            if !signed.isEmpty { signed += ";" }
            signed += header.name
            block += header.name + ":" + header.value + "\n"
        }
        return (block, signed)
    }

    /// Header names are ASCII tokens: lowercasing them byte by byte avoids Unicode case mapping.
    static func asciiLowercased(_ name: String) -> String {
        guard name.utf8.contains(where: { $0 >= 0x41 && $0 <= 0x5a }) else { return name }
        return String(decoding: name.utf8.map { $0 >= 0x41 && $0 <= 0x5a ? $0 | 0x20 : $0 }, as: UTF8.self)
    }

    static func trimAndCollapse(_ value: String) -> String {
        var out: [UInt8] = []
        var pendingSpace = false
        for byte in value.utf8 {
            let isSpace: Bool
            switch byte {
            case 0x20, 0x09, 0x0a, 0x0d: isSpace = true
            default: isSpace = false
            }
            if isSpace {
                pendingSpace = !out.isEmpty
            } else {
                if pendingSpace { out.append(UInt8(ascii: " ")) }
                pendingSpace = false
                out.append(byte)
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    func credentialScope(_ stamp: AmzDate) -> String { "\(stamp.day)/\(region)/\(service)/aws4_request" }

    /// Task 2: the string to sign.
    func stringToSign(stamp: AmzDate, scope: String, canonicalRequest: String) -> String {
        [Self.algorithm, stamp.full, scope, Digest.sha256(Array(canonicalRequest.utf8)).hexString]
            .joined(separator: "\n")
    }

    /// Task 3: the signature, under the derived (cached) key.
    func sign(_ stringToSign: String, credentials: Credentials, stamp: AmzDate) -> String {
        let key = keyCache.key(secret: credentials.secretAccessKey, day: stamp.day, region: region, service: service)
        return Digest.hmacSHA256(key: key, message: Array(stringToSign.utf8)).hexString
    }
}

/// `20150830T123600Z` and `20150830`, from a date, in UTC.
public struct AmzDate: Sendable {
    public let full: String
    public let day: String

    public init(_ date: Date) {
        let civil = CivilTime(date: date)
        day = civil.yyyymmdd
        full = "\(day)T\(civil.hhmmss)Z"
    }
}

/// Derived signing keys, cached per (secret, day, region, service): the four-HMAC derivation runs once a day per
/// service instead of once a request. Shared by every slot; a `Mutex` keeps it safe.
public final class SigningKeyCache: Sendable {
    public static let shared = SigningKeyCache()

    private struct Entry {
        var secret: String
        var key: [UInt8]
    }

    private let entries = Mutex<[String: Entry]>([:])
    private let derivations = Atomic<Int>(0)

    public init() {}

    /// How many keys were derived rather than taken from the cache.
    var derivationCount: Int { derivations.load(ordering: .relaxed) }

    public func key(secret: String, day: String, region: String, service: String) -> [UInt8] {
        let id = "\(day)/\(region)/\(service)"
        if let hit = entries.withLock({ $0[id] }), hit.secret == secret { return hit.key }
        derivations.add(1, ordering: .relaxed)
        let kDate = Digest.hmacSHA256(key: Array("AWS4\(secret)".utf8), message: Array(day.utf8))
        let kRegion = Digest.hmacSHA256(key: kDate, message: Array(region.utf8))
        let kService = Digest.hmacSHA256(key: kRegion, message: Array(service.utf8))
        let kSigning = Digest.hmacSHA256(key: kService, message: Array("aws4_request".utf8))
        entries.withLock { cache in
            if cache.count > 64 { cache.removeAll() }
            cache[id] = Entry(secret: secret, key: kSigning)
        }
        return kSigning
    }
}
