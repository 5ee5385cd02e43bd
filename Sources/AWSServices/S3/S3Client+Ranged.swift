import AWSCore
import Glibc
import HTTPCurl
import Logging

/// How a large object is fetched in pieces, and the check the whole must pass. Pure: `S3Client.rangedDownload`
/// runs it.
///
/// One connection to S3 carries roughly 85–100 MB/s; an instance reaches its link's speed only through several.
/// - An object whose checksum is COMPOSITE (`...-N`: uploaded in N parts, each with its own CRC-32C) is fetched
///   part by part (`partNumber` GETs). Each part's CRC-32C is checked against the one S3 gives with the part, when
///   it gives one, and together they must make the composite value.
/// - Any other object is fetched in byte ranges of `rangeSize`. With a whole-object CRC-32C (a single PUT, or a
///   FULL_OBJECT multipart upload), the ranges' checksums are combined in order and must equal it.
/// - Every piece is pinned to the ETag of the first reply with `If-Match`: an object replaced mid-download fails with
///   412 instead of mixing two versions.
public struct RangedDownloadPlan: Sendable, Equatable {
    public enum Piece: Sendable, Equatable {
        /// Bytes `first...last` (a `Range` header).
        case bytes(first: Int64, last: Int64)
        /// Part `number` of a multipart object (a `partNumber` query).
        case part(Int)
    }

    public enum Check: Sendable, Equatable {
        /// The whole object's CRC-32C, base64.
        case wholeObject(String)
        /// S3's composite value, `base64-N`.
        case composite(String)
        /// S3 keeps no CRC-32C for the object: only sizes and the ETag pin guard it.
        case none
    }

    public var size: Int64
    public var pieces: [Piece]
    public var check: Check

    /// - Parameters:
    ///   - checksum: the object's `x-amz-checksum-crc32c` (asked for with `x-amz-checksum-mode`), if any.
    ///   - rangeSize: bytes per range when the object is fetched in byte ranges.
    public init(size: Int64, checksum: String?, rangeSize: Int64) {
        self.size = size
        if let checksum, let dash = checksum.lastIndex(of: "-"),
            let parts = Int(checksum[checksum.index(after: dash)...]),
            parts >= 1, parts <= 10_000, Int64(parts) <= max(size, 1)
        {
            pieces = (1...parts).map { .part($0) }
            check = .composite(checksum)
        } else {
            pieces = Self.byteRanges(size: size, rangeSize: rangeSize)
            check = checksum.map { .wholeObject($0) } ?? .none
        }
    }

    /// The same object in byte ranges, its COMPOSITE check dropped (for a server that does not serve parts).
    public func inByteRanges(rangeSize: Int64) -> RangedDownloadPlan {
        var plan = self
        plan.pieces = Self.byteRanges(size: size, rangeSize: rangeSize)
        if case .composite = check { plan.check = .none }
        return plan
    }

    static func byteRanges(size: Int64, rangeSize: Int64) -> [Piece] {
        let step = max(rangeSize, 1)
        return stride(from: Int64(0), to: size, by: Int(step)).map {
            .bytes(first: $0, last: min($0 + step, size) - 1)
        }
    }

    /// What one piece's reply delivered: where its body went, how many bytes, and their CRC-32C.
    public struct Landed: Sendable, Equatable {
        public var start: Int64
        public var length: Int64
        public var crc: UInt32

        public init(start: Int64, length: Int64, crc: UInt32) {
            self.start = start
            self.length = length
            self.crc = crc
        }
    }

    /// Checks that the pieces (in plan order) cover the object exactly once, end to end, and pass the check. The
    /// message says what is wrong, for the task's failure line.
    public func verify(_ landed: [Landed]) -> String? {
        guard landed.count == pieces.count else { return "\(landed.count) pieces arrived of \(pieces.count)" }
        var offset: Int64 = 0
        for (piece, got) in zip(pieces, landed) {
            if case .bytes(let first, let last) = piece, got.start != first || got.length != last - first + 1 {
                return "asked for bytes \(first)-\(last), got \(got.length) bytes at \(got.start)"
            }
            guard got.start == offset, got.length > 0 else {
                return "the pieces do not cover the object end to end (a piece at \(got.start), expected \(offset))"
            }
            offset += got.length
        }
        guard offset == size else { return "the pieces hold \(offset) bytes of \(size)" }
        switch check {
        case .none:
            return nil
        case .wholeObject(let expected):
            let whole = landed.dropFirst().reduce(landed.first?.crc ?? 0) {
                CRC32C.combine($0, $1.crc, lengthOfB: $1.length)
            }
            let got = CRC32C.base64(whole)
            return got == expected ? nil : "the object's CRC-32C is \(got), S3 says \(expected)"
        case .composite(let expected):
            let got = CRC32C.composite(ofParts: landed.map(\.crc))
            return got == expected ? nil : "the parts' composite CRC-32C is \(got), S3 says \(expected)"
        }
    }
}

extension S3Client {
    static let crc32cHeader = "x-amz-checksum-crc32c"

    /// Fetches an object too large for one stream (`first` is the GET that stopped before its body: its headers
    /// give the size, ETag and checksum) in pieces, `options.concurrency` at a time, written in place into
    /// `path.part`, renamed to `path` once every piece is in and the whole passed its check. A piece that fails is
    /// retried alone (each is its own request).
    func rangedDownload(
        bucket: String, key: String, to path: String, first: HTTPResponse, logger: Logger
    ) async throws(AWSError) -> S3ObjectInfo {
        guard let size = first.header("Content-Length").flatMap({ Int64($0) }), let etag = first.header("ETag") else {
            throw AWSError.badResponse("s3", "GetObject reply has no Content-Length or ETag")
        }
        let partPath = path + ".part"
        let fd = open(partPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o666)
        guard fd >= 0 else { throw AWSError.localFile("s3", "cannot open \(partPath)") }
        var complete = false
        defer {
            close(fd)
            if !complete { unlink(partPath) }
        }
        // The whole size up front: a full disk fails now, not after most of the object has crossed the network.
        let allocated = posix_fallocate(fd, 0, off_t(size))
        if allocated != 0 && allocated != EOPNOTSUPP && allocated != EINVAL {
            errno = allocated
            throw AWSError.localFile("s3", "cannot make room for \(size) bytes in \(partPath)")
        }
        if allocated != 0 && ftruncate(fd, off_t(size)) != 0 {
            throw AWSError.localFile("s3", "cannot size \(partPath)")
        }
        var plan = RangedDownloadPlan(
            size: size, checksum: first.header(Self.crc32cHeader), rangeSize: options.partSize)
        var logger = logger
        logger[metadataKey: "s3.pieces"] = "\(plan.pieces.count)"
        let landed: [RangedDownloadPlan.Landed]
        do {
            landed = try await fetch(plan, bucket: bucket, key: key, etag: etag, into: fd, logger: logger)
        } catch  where error.kind == .transport(.wrongRange) && plan.pieces.first.map({ $0 == .part(1) }) == true {
            // AWS serves `partNumber` GETs; a server that answers one with the whole object does not, and its parts
            // cannot be checked one by one.
            logger.warning(
                "the server does not serve parts (partNumber); fetching byte ranges, without the parts' checksums",
                metadata: ["error": "\(error)"])
            plan = plan.inByteRanges(rangeSize: options.partSize)
            landed = try await fetch(plan, bucket: bucket, key: key, etag: etag, into: fd, logger: logger)
        }
        if let problem = plan.verify(landed) {
            throw AWSError(kind: .transport(.corrupt), service: "s3", code: "ChecksumMismatch", message: problem)
        }
        guard rename(partPath, path) == 0 else {
            throw AWSError.localFile("s3", "cannot rename to \(path)")
        }
        complete = true
        var checked: String?
        switch plan.check {
        case .wholeObject(let value), .composite(let value): checked = value
        case .none: checked = nil
        }
        return S3ObjectInfo(
            key: key, size: size, etag: etag, lastModified: first.header("Last-Modified"), pieces: plan.pieces.count,
            checkedCRC32C: checked)
    }

    private func fetch(
        _ plan: RangedDownloadPlan, bucket: String, key: String, etag: String, into fd: Int32, logger: Logger
    ) async throws(AWSError) -> [RangedDownloadPlan.Landed] {
        try await Self.inParallel(count: plan.pieces.count, width: options.concurrency) { index throws(AWSError) in
            var query: [(String, String)] = []
            var headers = [("If-Match", etag)]
            var target = RangeTarget(descriptor: fd, totalSize: plan.size)
            switch plan.pieces[index] {
            case .bytes(let first, let last):
                headers.append(("Range", "bytes=\(first)-\(last)"))
            case .part(let number):
                query.append(("partNumber", "\(number)"))
                headers.append(("x-amz-checksum-mode", "ENABLED"))
                target.crc32cHeader = Self.crc32cHeader
            }
            let response = try await send(
                AWSRequest(method: "GET", query: query, headers: headers, response: .range(target)),
                bucket: bucket, key: key, logger: logger)
            guard let start = response.rangeStart, let crc = response.bodyCRC32C else {
                throw AWSError.badResponse("s3", "a ranged GetObject reply without its range")
            }
            // S3 honours If-Match; a server that does not would mix two versions of the object.
            if let got = response.header("ETag"), Self.sameETag(got, etag) == false {
                throw AWSError(
                    kind: .service, service: "s3", httpStatus: 412, code: "PreconditionFailed",
                    message: "a piece came from another version of the object (ETag \(got), not \(etag))",
                    requestID: response.header("x-amz-request-id"))
            }
            return RangedDownloadPlan.Landed(start: start, length: response.bytesWritten, crc: crc)
        }
    }

    /// ETags compared as values: without quotes or a weak `W/` a proxy may have added.
    static func sameETag(_ a: String, _ b: String) -> Bool {
        func bare(_ tag: String) -> Substring {
            var tag = Substring(tag)
            if tag.hasPrefix("W/") { tag = tag.dropFirst(2) }
            return tag.hasPrefix("\"") && tag.hasSuffix("\"") && tag.count >= 2 ? tag.dropFirst().dropLast() : tag
        }
        return bare(a) == bare(b)
    }

    /// Runs `work` for each index in `0..<count`, at most `width` at once, and returns the results in index order.
    /// The first failure cancels the rest and is the one thrown.
    static func inParallel<T: Sendable>(
        count: Int, width: Int, _ work: @escaping @Sendable (Int) async throws(AWSError) -> T
    ) async throws(AWSError) -> [T] {
        let outcome: Result<[T], AWSError> = await withTaskGroup(of: (Int, Result<T, AWSError>).self) { group in
            var results = [T?](repeating: nil, count: count)
            var next = 0
            var failure: AWSError?
            func launch() {
                let index = next
                next += 1
                group.addTask {
                    do throws(AWSError) {
                        return (index, .success(try await work(index)))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            while next < min(count, max(1, width)) { launch() }
            for await (index, result) in group {
                switch result {
                case .success(let value):
                    results[index] = value
                    if failure == nil && next < count { launch() }
                case .failure(let error):
                    if failure == nil {
                        failure = error
                        group.cancelAll()
                    }
                }
            }
            if let failure { return .failure(failure) }
            return .success(results.map { $0! })
        }
        return try outcome.get()
    }
}
