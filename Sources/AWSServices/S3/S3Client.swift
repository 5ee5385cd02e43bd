import AWSCore
import FoundationEssentials
import HTTPCurl
import Logging

/// What S3 says about an object.
public struct S3ObjectInfo: Sendable, Equatable {
    public var key: String
    public var size: Int64
    public var etag: String
    public var lastModified: String?
    /// For a download: the requests its body came in (1 for one stream; its ranges or parts otherwise).
    public var pieces: Int = 1
    /// For a download: the CRC-32C the body was checked against, when S3 keeps one.
    public var checkedCRC32C: String?
}

/// How a write may land: always, only where no object has the key (`If-None-Match: *`), or only over the object
/// with this ETag (`If-Match`). S3 honours both on PutObject and on CompleteMultipartUpload, and answers 412
/// PreconditionFailed when the condition does not hold (409 ConditionalRequestConflict while another conditional
/// write of the key is under way).
public enum WriteCondition: Sendable, Equatable {
    case always
    case ifAbsent
    case ifMatch(String)

    var header: (String, String)? {
        switch self {
        case .always: return nil
        case .ifAbsent: return ("If-None-Match", "*")
        case .ifMatch(let etag): return ("If-Match", etag)
        }
    }
}

/// What goes with an uploaded object: its user metadata (names without `x-amz-meta-`, ASCII values) and the
/// condition it is written on.
public struct WriteOptions: Sendable {
    public var metadata: [(String, String)]
    public var condition: WriteCondition

    public init(metadata: [(String, String)] = [], condition: WriteCondition = .always) {
        self.metadata = metadata
        self.condition = condition
    }

    var metadataHeaders: [(String, String)] { metadata.map { ("x-amz-meta-" + $0.0, $0.1) } }
}

/// An object's ETag and user metadata (names lowercased, without `x-amz-meta-`), from a HEAD.
public struct S3ObjectHead: Sendable, Equatable {
    public var etag: String
    public var size: Int64
    public var metadata: [String: String]

    public init(etag: String, size: Int64, metadata: [String: String]) {
        self.etag = etag
        self.size = size
        self.metadata = metadata
    }
}

/// One page of ListObjectsV2.
public struct S3ListPage: Sendable {
    public var objects: [S3ObjectInfo]
    public var nextContinuationToken: String?
}

/// A small typed S3 client: streaming GET and PUT through files, multipart uploads, listing.
public struct S3Client: Sendable {
    public struct Options: Sendable {
        /// Files larger than this are uploaded in parts (S3 allows 5 GiB in one PUT; parts go on several
        /// connections at once, and a failed one is sent again alone).
        public var multipartThreshold: Int64 = 16 << 20
        /// Objects larger than this are downloaded in ranges (or parts), several at once.
        public var rangeThreshold: Int64 = 16 << 20
        /// Bytes per uploaded part and per downloaded range.
        public var partSize: Int64 = 16 << 20
        /// Parts or ranges in flight at once, each on its own connection: one S3 connection carries roughly
        /// 85–100 MB/s. 1 turns ranged downloads off.
        public var concurrency: Int = 8
        /// How an upload proves its bytes arrived intact. S3 verifies each before it stores anything.
        public var checksum: UploadChecksum = .crc32cTrailer
        /// With `.crc32cTrailer`, the checksum a multipart object keeps: its whole CRC-32C (`FULL_OBJECT`, combined
        /// from the parts', so a download in any ranges is checked end to end), or S3's `COMPOSITE` value (the
        /// checksum of the parts' checksums, as the AWS SDKs upload by default; a download is then checked part by
        /// part).
        public var multipartChecksum: MultipartChecksum = .fullObject
        public init() {}
    }

    public enum MultipartChecksum: Sendable {
        case fullObject, composite
    }

    /// The integrity check on uploads.
    public enum UploadChecksum: Sendable {
        /// The body's CRC-32C, computed as it is sent and given as an `aws-chunked` trailer
        /// (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, what the AWS SDKs send by default); S3 refuses a mismatch. The
        /// file is read once, so an upload runs at the transport's speed. Parts of multipart uploads are signed
        /// with their SHA-256 instead (hashing one part overlaps sending another).
        case crc32cTrailer
        /// Sign the body's SHA-256 (`x-amz-content-sha256`); S3 refuses a body that does not match
        /// (`XAmzContentSHA256Mismatch`). A hashing pass before sending. SHA-256 runs at about 2.5 times MD5's
        /// speed on CPUs with SHA extensions.
        case sha256
        /// `UNSIGNED-PAYLOAD` plus `Content-MD5`; S3 refuses a mismatch with `BadDigest`. A hashing pass first.
        case contentMD5
        /// `UNSIGNED-PAYLOAD` and nothing else: no hashing pass, only TLS and TCP guard the bytes. For measuring the
        /// transport alone; not for production data.
        case none
    }

    public let context: AWSContext
    public let endpoint: ServiceEndpoint
    public var options: Options

    public init(context: AWSContext, region: String? = nil, options: Options = Options()) throws(AWSError) {
        self.context = context
        self.endpoint = try context.endpoint("s3", region: region)
        self.options = options
    }

    var client: AWSClient { context.client }

    // MARK: - Addressing

    /// Virtual-hosted style (`bucket.s3.region.amazonaws.com/key`) on AWS; path style (`host/bucket/key`) for
    /// custom endpoints and for bucket names with dots, which break the wildcard TLS certificate.
    func address(bucket: String, key: String?) -> (host: String?, path: String) {
        let encodedKey = key.map { "/" + URIEncoding.encode($0, keepSlash: true) } ?? "/"
        if endpoint.isCustom || bucket.contains(".") || !S3URI.isValidBucketName(bucket) {
            return (nil, "/" + URIEncoding.encode(bucket) + (key == nil ? "" : encodedKey))
        }
        return ("\(bucket).\(endpoint.hostHeader)", encodedKey)
    }

    func send(_ request: AWSRequest, bucket: String, key: String?, logger: Logger) async throws(AWSError)
        -> HTTPResponse
    {
        var request = request
        let (host, path) = address(bucket: bucket, key: key)
        request.host = host
        request.path = path
        return try await client.send(request, to: endpoint, signing: .s3, logger: logger)
    }

    // MARK: - Objects

    /// Streams an object to `path` (through `path.part`; the file appears only when complete). The byte count is
    /// checked against Content-Length, and the body against the CRC-32C S3 stored with the object when it has one
    /// (asked for with `x-amz-checksum-mode`); a short or corrupt body is fetched again from the start.
    ///
    /// An object above `rangeThreshold` is fetched in pieces on several connections instead
    /// (`RangedDownloadPlan`): the first GET stops before its body, and its headers give the size, ETag and checksum
    /// the pieces are fetched and checked by. A small object costs one request, as before.
    @discardableResult
    public func getObject(bucket: String, key: String, to path: String, logger: Logger) async throws(AWSError)
        -> S3ObjectInfo
    {
        var ranged = options.concurrency > 1
        var restarted = false
        while true {
            let response = try await send(
                AWSRequest(
                    method: "GET", headers: [("x-amz-checksum-mode", "ENABLED")],
                    response: .file(
                        path: path, crc32cHeader: Self.crc32cHeader, stopAbove: ranged ? options.rangeThreshold : nil)),
                bucket: bucket, key: key, logger: logger)
            guard response.bodySkipped else { return Self.info(key: key, oneStream: response) }
            do {
                return try await rangedDownload(bucket: bucket, key: key, to: path, first: response, logger: logger)
            } catch  where error.kind == .transport(.wrongRange) {
                // AWS serves ranges; a server that answers one with the whole object gets one stream.
                logger.warning("the server does not serve byte ranges; one stream", metadata: ["error": "\(error)"])
                ranged = false
            } catch  where !restarted && (error.httpStatus == 412 || error.code == "ChecksumMismatch") {
                // The object was replaced during the download, or the pieces do not make its checksum: once more
                // from a new first GET, before the task is failed.
                logger.notice("ranged download starts again", metadata: ["error": "\(error)"])
                restarted = true
            }
        }
    }

    /// A small object's bytes in memory (a failure record, a manifest): refused when it is larger than `limit`.
    public func getObjectBytes(bucket: String, key: String, limit: Int = 1 << 20, logger: Logger) async throws(AWSError)
        -> [UInt8]
    {
        let response = try await send(AWSRequest(method: "GET"), bucket: bucket, key: key, logger: logger)
        guard response.body.count <= limit else {
            throw AWSError.client("s3", "s3://\(bucket)/\(key) is larger than \(limit) bytes")
        }
        return response.body
    }

    static func info(key: String, oneStream response: HTTPResponse) -> S3ObjectInfo {
        S3ObjectInfo(
            key: key, size: response.bytesWritten, etag: response.header("ETag") ?? "",
            lastModified: response.header("Last-Modified"),
            // One stream is checked against a whole-object value only (the HTTP layer skips a composite one).
            checkedCRC32C: response.header(crc32cHeader).flatMap { $0.contains("-") ? nil : $0 })
    }

    /// The object's size and ETag, or nil when it does not exist.
    public func headObject(bucket: String, key: String, logger: Logger) async throws(AWSError) -> S3ObjectInfo? {
        do {
            let response = try await send(AWSRequest(method: "HEAD"), bucket: bucket, key: key, logger: logger)
            return S3ObjectInfo(
                key: key, size: Int64(response.header("Content-Length") ?? "") ?? 0,
                etag: response.header("ETag") ?? "", lastModified: response.header("Last-Modified"))
        } catch  where error.httpStatus == 404 {
            return nil
        }
    }

    /// The object's ETag, size and user metadata, or nil when it does not exist.
    public func headObjectMetadata(bucket: String, key: String, logger: Logger) async throws(AWSError)
        -> S3ObjectHead?
    {
        do {
            let response = try await send(AWSRequest(method: "HEAD"), bucket: bucket, key: key, logger: logger)
            var metadata: [String: String] = [:]
            for (name, value) in response.headers where name.lowercased().hasPrefix("x-amz-meta-") {
                metadata[String(name.lowercased().dropFirst("x-amz-meta-".count))] = value
            }
            return S3ObjectHead(
                etag: response.header("ETag") ?? "", size: Int64(response.header("Content-Length") ?? "") ?? 0,
                metadata: metadata)
        } catch  where error.httpStatus == 404 {
            return nil
        }
    }

    /// Uploads a file. Above `multipartThreshold` it goes in parts, several at once; a failed multipart upload is
    /// aborted so no orphaned parts keep costing money.
    @discardableResult
    public func putObject(
        bucket: String, key: String, file path: String, contentType: String = "application/octet-stream",
        logger: Logger
    ) async throws(AWSError) -> String {
        try await putObject(bucket: bucket, key: key, file: .path(path), contentType: contentType, logger: logger)
    }

    /// The same from a `FileSource`. A descriptor is read with `pread`, every part from the same one, and stays
    /// open: the daemon uploads a command's output through the descriptor it checked, never by its name again.
    ///
    /// `write` gives the object its metadata and the condition it lands on (for a multipart upload, the condition
    /// goes on its completion).
    @discardableResult
    public func putObject(
        bucket: String, key: String, file source: FileSource, contentType: String = "application/octet-stream",
        write: WriteOptions = WriteOptions(), logger: Logger
    ) async throws(AWSError) -> String {
        guard let size = LocalFile.size(source) else { throw AWSError.client("s3", "cannot read \(source)") }
        if size > options.multipartThreshold {
            return try await multipartUpload(
                bucket: bucket, key: key, file: source, size: size, contentType: contentType, write: write,
                logger: logger)
        }
        let request: AWSRequest
        let headers =
            [("Content-Type", contentType)] + write.metadataHeaders + (write.condition.header.map { [$0] } ?? [])
        if case .crc32cTrailer = options.checksum {
            request = Self.crc32cTrailerPut(source, offset: 0, length: size, headers: headers)
        } else {
            let (integrityHeaders, payload) = try await integrity(source, offset: 0, length: size)
            request = AWSRequest(
                method: "PUT", headers: headers + integrityHeaders,
                body: .file(source, offset: 0, length: size), payload: payload)
        }
        let response = try await send(request, bucket: bucket, key: key, logger: logger)
        return response.header("ETag") ?? ""
    }

    /// A PUT of a file range whose CRC-32C goes as an `aws-chunked` trailer, computed while the bytes go out.
    static func crc32cTrailerPut(
        _ source: FileSource, offset: Int64, length: Int64, query: [(String, String)] = [],
        headers: [(String, String)]
    ) -> AWSRequest {
        AWSRequest(
            method: "PUT", query: query,
            headers: headers + [
                ("Content-Encoding", "aws-chunked"), ("x-amz-decoded-content-length", "\(length)"),
                ("x-amz-trailer", crc32cHeader), ("x-amz-sdk-checksum-algorithm", "CRC32C"),
            ],
            body: .fileWithCRC32CTrailer(
                source, offset: offset, framing: ChunkedTrailerFraming(dataLength: length, trailerName: crc32cHeader)))
    }

    /// The headers and payload hash that let S3 verify a file range, per `options.checksum`.
    func integrity(_ source: FileSource, offset: Int64, length: Int64) async throws(AWSError)
        -> (headers: [(String, String)], payload: SignableRequest.Payload)
    {
        switch options.checksum {
        case .sha256, .crc32cTrailer:
            let digest = try await FileDigest.compute(source, offset: offset, length: length, algorithm: .sha256)
            return ([], .sha256Hex(digest.hexString))
        case .contentMD5:
            let digest = try await FileDigest.compute(source, offset: offset, length: length, algorithm: .md5)
            return ([("Content-MD5", digest.base64String)], .unsigned)
        case .none:
            return ([], .unsigned)
        }
    }

    /// Uploads a small in-memory body (failure records, markers). `ifNoneMatch: "*"` writes only when no object has
    /// the key (S3 answers 412 PreconditionFailed otherwise).
    @discardableResult
    public func putObject(
        bucket: String, key: String, bytes: [UInt8], contentType: String = "application/octet-stream",
        ifNoneMatch: String? = nil, logger: Logger
    ) async throws(AWSError) -> String {
        var headers = [("Content-Type", contentType), ("Content-MD5", Digest.md5(bytes).base64String)]
        if let ifNoneMatch { headers.append(("If-None-Match", ifNoneMatch)) }
        let response = try await send(
            AWSRequest(method: "PUT", headers: headers, body: .bytes(bytes)),
            bucket: bucket, key: key, logger: logger)
        return response.header("ETag") ?? ""
    }

    public func deleteObject(bucket: String, key: String, logger: Logger) async throws(AWSError) {
        _ = try await send(AWSRequest(method: "DELETE"), bucket: bucket, key: key, logger: logger)
    }

    // MARK: - Listing

    /// One page of ListObjectsV2. Keys come URL-encoded (`encoding-type=url`) so that any character, even those
    /// XML 1.0 cannot carry, survives; they are decoded here.
    public func listObjectsV2(
        bucket: String, prefix: String? = nil, continuationToken: String? = nil,
        startAfter: String? = nil, maxKeys: Int = 1000,
        logger: Logger
    ) async throws(AWSError) -> S3ListPage {
        var query: [(String, String)] = [("list-type", "2"), ("encoding-type", "url"), ("max-keys", String(maxKeys))]
        if let prefix, !prefix.isEmpty { query.append(("prefix", prefix)) }
        if let continuationToken { query.append(("continuation-token", continuationToken)) }
        if let startAfter { query.append(("start-after", startAfter)) }
        let response = try await send(AWSRequest(method: "GET", query: query), bucket: bucket, key: nil, logger: logger)
        let root: XMLElement
        do { root = try XML.parse(response.body) } catch {
            throw AWSError.badResponse("s3", "ListObjectsV2: \(error)", requestID: response.header("x-amz-request-id"))
        }
        let urlEncoded = root["EncodingType"] == "url"
        let objects = root.all("Contents").map { item in
            let raw = item["Key"] ?? ""
            return S3ObjectInfo(
                key: urlEncoded ? URIEncoding.decode(raw, plusIsSpace: true) : raw,
                size: Int64(item["Size"] ?? "") ?? 0, etag: item["ETag"] ?? "",
                lastModified: item["LastModified"])
        }
        let truncated = root["IsTruncated"] == "true"
        return S3ListPage(objects: objects, nextContinuationToken: truncated ? root["NextContinuationToken"] : nil)
    }

    /// Every object under `prefix`, page by page, handed to `body` as each page arrives (a million keys are never
    /// held at once).
    public func listAll(
        bucket: String, prefix: String? = nil, logger: Logger,
        _ body: ([S3ObjectInfo]) async throws(AWSError) -> Void
    ) async throws(AWSError) {
        var token: String?
        repeat {
            let page = try await listObjectsV2(bucket: bucket, prefix: prefix, continuationToken: token, logger: logger)
            try await body(page.objects)
            token = page.nextContinuationToken
        } while token != nil
    }

    // MARK: - Buckets

    public func createBucket(_ bucket: String, logger: Logger) async throws(AWSError) {
        var body: [UInt8] = []
        if endpoint.region != "us-east-1" {
            body = Array(
                ("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
                    + "<LocationConstraint>\(XML.escape(endpoint.region))</LocationConstraint></CreateBucketConfiguration>")
                    .utf8)
        }
        do {
            _ = try await send(
                AWSRequest(method: "PUT", headers: [("Content-Type", "application/xml")], body: .bytes(body)),
                bucket: bucket, key: nil, logger: logger)
        } catch  where error.code == "BucketAlreadyOwnedByYou" {
            return
        }
    }

    // MARK: - Presigning

    /// A presigned GET URL for handing an object to someone without credentials.
    public func presignedGetURL(bucket: String, key: String, expires: Int, logger: Logger) async throws(AWSError)
        -> String
    {
        let (host, path) = address(bucket: bucket, key: key)
        return try await client.presignedURL(
            method: "GET", path: path, host: host, endpoint: endpoint, options: .s3,
            expires: expires, logger: logger)
    }
}
