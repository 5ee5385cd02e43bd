import AWSCore
import HTTPCurl
import Logging

extension S3Client {
    /// CreateMultipartUpload, parts from file offsets (each with its own checksum, so hashing part n+1 overlaps
    /// sending part n) `partConcurrency` at a time, then CompleteMultipartUpload. Any failure aborts the upload.
    func multipartUpload(
        bucket: String, key: String, file source: FileSource, size: Int64, contentType: String,
        logger: Logger
    ) async throws(AWSError) -> String {
        let uploadID = try await createMultipartUpload(
            bucket: bucket, key: key, contentType: contentType, logger: logger)
        var logger = logger
        logger[metadataKey: "s3.upload_id"] = "\(uploadID)"
        do throws(AWSError) {
            let etags = try await uploadParts(
                bucket: bucket, key: key, file: source, size: size, uploadID: uploadID,
                logger: logger)
            var xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
            for (index, etag) in etags.enumerated() {
                xml += "<Part><PartNumber>\(index + 1)</PartNumber><ETag>\(XML.escape(etag))</ETag></Part>"
            }
            xml += "</CompleteMultipartUpload>"
            let response = try await send(
                AWSRequest(
                    method: "POST", query: [("uploadId", uploadID)],
                    headers: [("Content-Type", "application/xml")],
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
    public func createMultipartUpload(
        bucket: String, key: String, contentType: String = "application/octet-stream",
        logger: Logger
    ) async throws(AWSError) -> String {
        let created = try await send(
            AWSRequest(
                method: "POST", query: [("uploads", "")],
                headers: [("Content-Type", contentType)]),
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

    private func uploadParts(
        bucket: String, key: String, file source: FileSource, size: Int64, uploadID: String,
        logger: Logger
    ) async throws(AWSError) -> [String] {
        let partSize = max(options.partSize, 5 << 20, (size + 9999) / 10000)
        let count = Int((size + partSize - 1) / partSize)
        let result: Result<[String], AWSError> = await withTaskGroup(of: (Int, Result<String, AWSError>).self) {
            group in
            var etags = [String](repeating: "", count: count)
            var next = 0
            var failure: AWSError?
            func launch(_ index: Int) {
                let offset = Int64(index) * partSize
                let length = min(partSize, size - offset)
                group.addTask {
                    do throws(AWSError) {
                        let etag = try await uploadPart(
                            bucket: bucket, key: key, file: source, offset: offset,
                            length: length, number: index + 1, uploadID: uploadID,
                            logger: logger)
                        return (index, .success(etag))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            while next < min(count, max(1, options.partConcurrency)) {
                launch(next)
                next += 1
            }
            for await (index, outcome) in group {
                switch outcome {
                case .success(let etag):
                    etags[index] = etag
                    if failure == nil && next < count {
                        launch(next)
                        next += 1
                    }
                case .failure(let error):
                    if failure == nil { failure = error }
                    group.cancelAll()
                }
            }
            if let failure { return .failure(failure) }
            return .success(etags)
        }
        return try result.get()
    }

    private func uploadPart(
        bucket: String, key: String, file source: FileSource, offset: Int64, length: Int64, number: Int,
        uploadID: String, logger: Logger
    ) async throws(AWSError) -> String {
        let (headers, payload) = try await integrity(source, offset: offset, length: length)
        let response = try await send(
            AWSRequest(
                method: "PUT", query: [("partNumber", String(number)), ("uploadId", uploadID)],
                headers: [("Content-Type", "application/octet-stream")] + headers,
                body: .file(source, offset: offset, length: length), payload: payload),
            bucket: bucket, key: key, logger: logger)
        guard let etag = response.header("ETag") else { throw AWSError.badResponse("s3", "UploadPart gave no ETag") }
        return etag
    }
}
