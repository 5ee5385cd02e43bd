import AWSCore
import HTTPCurl
import Logging

extension S3Client {
    /// CreateMultipartUpload, parts from file offsets (each with its own checksum, so hashing part n+1 overlaps
    /// sending part n) `partConcurrency` at a time, then CompleteMultipartUpload. Any failure aborts the upload.
    func multipartUpload(
        bucket: String, key: String, file source: FileSource, size: Int64, contentType: String,
        write: WriteOptions = WriteOptions(), logger: Logger
    ) async throws(AWSError) -> String {
        let crc32c: Bool
        if case .crc32cTrailer = options.checksum { crc32c = true } else { crc32c = false }
        let fullObject = crc32c && options.multipartChecksum == .fullObject
        let uploadID = try await createMultipartUpload(
            bucket: bucket, key: key, contentType: contentType, crc32c: crc32c, fullObject: fullObject,
            metadata: write.metadata, logger: logger)
        var logger = logger
        logger[metadataKey: "s3.upload_id"] = "\(uploadID)"
        do throws(AWSError) {
            let parts = try await uploadParts(
                bucket: bucket, key: key, file: source, size: size, uploadID: uploadID,
                logger: logger)
            var xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
            for (index, part) in parts.enumerated() {
                xml += "<Part><PartNumber>\(index + 1)</PartNumber><ETag>\(XML.escape(part.etag))</ETag>"
                if let crc = part.crc { xml += "<ChecksumCRC32C>\(CRC32C.base64(crc))</ChecksumCRC32C>" }
                xml += "</Part>"
            }
            xml += "</CompleteMultipartUpload>"
            // The condition is the completion's: the object appears only then.
            var headers = [("Content-Type", "application/xml")] + (write.condition.header.map { [$0] } ?? [])
            if fullObject, let whole = Self.wholeObjectCRC(parts) {
                // The whole object's CRC-32C, combined from the parts' without reading the file again: S3 checks it
                // against the parts and keeps it, so a download in any ranges can be checked end to end.
                headers += [(Self.crc32cHeader, CRC32C.base64(whole)), ("x-amz-checksum-type", "FULL_OBJECT")]
            }
            let response = try await send(
                AWSRequest(
                    method: "POST", query: [("uploadId", uploadID)], headers: headers,
                    body: .bytes(Array(xml.utf8))),
                bucket: bucket, key: key, logger: logger)
            // CompleteMultipartUpload can fail with a 200 whose body is an <Error>.
            let root = try? XML.parse(response.body)
            if let root, root.localName == "Error" {
                throw AWSError(
                    kind: .service, service: "s3", httpStatus: 200, code: root["Code"] ?? "InternalError",
                    message: root["Message"] ?? "", requestID: root["RequestId"])
            }
            return root?["ETag"] ?? ""
        } catch {
            logger.info("aborting multipart upload", metadata: ["error": "\(error)"])
            // In a task of its own: when the upload was cancelled (a shutdown), the abort must still go out.
            let client = self
            await Task {
                try? await client.abortMultipartUpload(bucket: bucket, key: key, uploadID: uploadID, logger: logger)
            }.value
            throw error
        }
    }

    /// Begins a multipart upload and returns its id. (It needs only `s3:PutObject`, and an abort leaves nothing: the
    /// daemon's start-up check that it may write to the output bucket.)
    ///
    /// With `crc32c`, every part carries its CRC-32C, and the object keeps a whole-object one with `fullObject`
    /// (`FULL_OBJECT`), else S3's COMPOSITE value.
    public func createMultipartUpload(
        bucket: String, key: String, contentType: String = "application/octet-stream", crc32c: Bool = false,
        fullObject: Bool = false, metadata: [(String, String)] = [], logger: Logger
    ) async throws(AWSError) -> String {
        var headers = [("Content-Type", contentType)] + metadata.map { ("x-amz-meta-" + $0.0, $0.1) }
        if crc32c { headers.append(("x-amz-checksum-algorithm", "CRC32C")) }
        if crc32c && fullObject { headers.append(("x-amz-checksum-type", "FULL_OBJECT")) }
        let created = try await send(
            AWSRequest(method: "POST", query: [("uploads", "")], headers: headers),
            bucket: bucket, key: key, logger: logger)
        guard let uploadID = (try? XML.parse(created.body))?["UploadId"] else {
            throw AWSError.badResponse("s3", "CreateMultipartUpload gave no UploadId")
        }
        return uploadID
    }

    /// Multipart uploads begun and neither completed nor aborted (each keeps costing storage until aborted).
    public func listMultipartUploads(
        bucket: String, prefix: String? = nil,
        logger: Logger
    ) async throws(AWSError) -> [(key: String, uploadID: String)] {
        var query: [(String, String)] = [("uploads", "")]
        if let prefix { query.append(("prefix", prefix)) }
        let response = try await send(AWSRequest(method: "GET", query: query), bucket: bucket, key: nil, logger: logger)
        guard let root = try? XML.parse(response.body) else {
            throw AWSError.badResponse("s3", "ListMultipartUploads reply is not XML")
        }
        return root.all("Upload").map { ($0["Key"] ?? "", $0["UploadId"] ?? "") }
    }

    public func abortMultipartUpload(bucket: String, key: String, uploadID: String, logger: Logger)
        async throws(AWSError)
    {
        _ = try await send(
            AWSRequest(method: "DELETE", query: [("uploadId", uploadID)]), bucket: bucket, key: key,
            logger: logger)
    }

    /// One uploaded part: its ETag, and the CRC-32C it was sent with (when parts carry one).
    struct UploadedPart: Sendable {
        var etag: String
        var crc: UInt32?
        var length: Int64
    }

    /// The parts' CRC-32Cs joined in order, or nil when one is missing.
    static func wholeObjectCRC(_ parts: [UploadedPart]) -> UInt32? {
        guard let first = parts.first?.crc else { return nil }
        var whole = first
        for part in parts.dropFirst() {
            guard let crc = part.crc else { return nil }
            whole = CRC32C.combine(whole, crc, lengthOfB: part.length)
        }
        return whole
    }

    /// Bytes per part of a `size`-byte upload: `options.partSize`, at least S3's 5 MiB, and large enough for S3's
    /// 10,000 parts.
    public func partSize(forUploadOf size: Int64) -> Int64 { max(options.partSize, 5 << 20, (size + 9999) / 10000) }

    /// The parts, `options.concurrency` at a time, each read with `pread` from the one source.
    private func uploadParts(
        bucket: String, key: String, file source: FileSource, size: Int64, uploadID: String,
        logger: Logger
    ) async throws(AWSError) -> [UploadedPart] {
        let partSize = self.partSize(forUploadOf: size)
        let count = Int((size + partSize - 1) / partSize)
        return try await Self.inParallel(count: count, width: options.concurrency) { index throws(AWSError) in
            let offset = Int64(index) * partSize
            return try await uploadPart(
                bucket: bucket, key: key, file: source, offset: offset, length: min(partSize, size - offset),
                number: index + 1, uploadID: uploadID, logger: logger)
        }
    }

    private func uploadPart(
        bucket: String, key: String, file source: FileSource, offset: Int64, length: Int64, number: Int,
        uploadID: String, logger: Logger
    ) async throws(AWSError) -> UploadedPart {
        let query = [("partNumber", String(number)), ("uploadId", uploadID)]
        let request: AWSRequest
        if case .crc32cTrailer = options.checksum {
            // The part's CRC-32C as a trailer: one read of the part, and S3 refuses a part that does not match.
            request = Self.crc32cTrailerPut(
                source, offset: offset, length: length, query: query,
                headers: [("Content-Type", "application/octet-stream")])
        } else {
            let (headers, payload) = try await integrity(source, offset: offset, length: length)
            request = AWSRequest(
                method: "PUT", query: query, headers: [("Content-Type", "application/octet-stream")] + headers,
                body: .file(source, offset: offset, length: length), payload: payload)
        }
        let response = try await send(request, bucket: bucket, key: key, logger: logger)
        guard let etag = response.header("ETag") else { throw AWSError.badResponse("s3", "UploadPart gave no ETag") }
        return UploadedPart(etag: etag, crc: response.sentCRC32C, length: length)
    }
}
