import FoundationEssentials
import HTTPCurl
import Logging
import Synchronization

/// One AWS API call before signing.
public struct AWSRequest: Sendable {
    public var method: String
    /// The path below the endpoint, already URI-encoded as it goes on the wire (S3 keys encoded by the S3 client).
    public var path: String
    /// Decoded query parameters.
    public var query: [(String, String)]
    public var headers: [(String, String)]
    public var body: HTTPBody
    /// The payload hash to sign. Nil computes it for `.none`/`.bytes`; a file body must say (its hash, or unsigned).
    public var payload: SignableRequest.Payload?
    public var response: ResponseSink
    public var timeouts: Timeouts
    /// A host to use instead of the endpoint's (S3 virtual-hosted style: `bucket.s3.region.amazonaws.com`).
    public var host: String?

    public init(
        method: String, path: String = "/", query: [(String, String)] = [], headers: [(String, String)] = [],
        body: HTTPBody = .none, payload: SignableRequest.Payload? = nil, response: ResponseSink = .memory,
        timeouts: Timeouts = .default, host: String? = nil
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.payload = payload
        self.response = response
        self.timeouts = timeouts
        self.host = host
    }
}

/// The correction between our clock and AWS's, shared by every call. Learnt from the `Date` header of a reply that
/// said our signature's time was off; signing then uses `now + offset`.
public final class ClockCorrection: Sendable {
    private let offset = Mutex<Double>(0)
    public init() {}
    public var seconds: Double { offset.withLock { $0 } }
    public func adopt(_ seconds: Double) { offset.withLock { $0 = seconds } }
}

/// Signs, sends and retries AWS calls. Shared by all slots: it holds no per-request state.
///
/// - Retries transport failures, 5xx, 429 and throttling codes with capped exponential backoff and full jitter.
///   A file body is re-read from its start on each attempt.
/// - On a clock-skew reply, adopts the server's `Date` offset and retries once, at once.
/// - On an expired-token reply, refreshes credentials and retries once.
public final class AWSClient: Sendable {
    public let http: HTTPClient
    public let credentials: any CredentialProvider
    public let retry: RetryPolicy
    public let clock: ClockCorrection
    /// Routes connections elsewhere without changing the URL (tests put a fault proxy in the path this way).
    public let connectTo: [String]
    private let now: @Sendable () -> Date
    private let sleep: @Sendable (Double) async -> Void

    public init(
        http: HTTPClient, credentials: any CredentialProvider, retry: RetryPolicy = RetryPolicy(),
        clock: ClockCorrection = ClockCorrection(), connectTo: [String] = [],
        now: @escaping @Sendable () -> Date = { Date() },
        sleep: @escaping @Sendable (Double) async -> Void = { seconds in
            try? await Task.sleep(nanoseconds: UInt64(max(0, seconds) * 1_000_000_000))
        }
    ) {
        self.http = http
        self.credentials = credentials
        self.retry = retry
        self.clock = clock
        self.connectTo = connectTo
        self.now = now
        self.sleep = sleep
    }

    /// The time to sign with: our clock corrected by what servers told us.
    public func signingDate() -> Date { now().addingTimeInterval(clock.seconds) }

    /// Sends `request` to `endpoint` and returns the 2xx reply, or throws the final error.
    public func send(
        _ request: AWSRequest, to endpoint: ServiceEndpoint, signing options: SigV4Signer.Options,
        logger: Logger
    ) async throws(AWSError) -> HTTPResponse {
        let signer = SigV4Signer(region: endpoint.region, service: endpoint.service, options: options)
        let payload = request.payload ?? Self.payloadHash(request.body)
        var attempt = 0
        var correctedClock = false
        var refreshedCredentials = false
        while true {
            attempt += 1
            if Task.isCancelled {
                throw AWSError(
                    kind: .transport(.cancelled), service: endpoint.service, code: "Cancelled",
                    message: "task cancelled")
            }
            let error: AWSError
            do {
                let response = try await sendOnce(
                    request, endpoint: endpoint, signer: signer, payload: payload,
                    logger: logger)
                if response.isSuccess { return response }
                error = AWSError.from(response: response, service: endpoint.service)
            } catch {
                // Cancellation, local file problems and bad arguments will not improve by sending again.
                guard error.isRetryable else { throw error }
                try await backoff(error, attempt: attempt, logger: logger)
                continue
            }
            if error.isClockSkew, !correctedClock, let date = error.serverDate,
                let serverSeconds = CivilTime.parseHTTPDate(date)
            {
                correctedClock = true
                let offset = Double(serverSeconds) - now().timeIntervalSince1970
                clock.adopt(offset)
                logger.warning(
                    "clock skew corrected from the server's Date header",
                    metadata: [
                        "aws.service": "\(endpoint.service)", "aws.code": "\(error.code)",
                        "clock.offset_seconds": "\(Int(offset))",
                    ])
                attempt -= 1
                continue
            }
            if error.isExpiredCredentials, !refreshedCredentials {
                refreshedCredentials = true
                logger.info("credentials expired; refreshing", metadata: ["aws.service": "\(endpoint.service)"])
                await credentials.invalidate()
                attempt -= 1
                continue
            }
            guard error.isRetryable else { throw error }
            try await backoff(error, attempt: attempt, logger: logger)
        }
    }

    private func backoff(_ error: AWSError, attempt: Int, logger: Logger) async throws(AWSError) {
        guard attempt < retry.maxAttempts else { throw error }
        let delay = retry.delay(beforeRetry: attempt)
        logger.info(
            "retrying AWS call",
            metadata: [
                "aws.service": "\(error.service)", "aws.code": "\(error.code)", "aws.status": "\(error.httpStatus)",
                "retry.attempt": "\(attempt)", "retry.delay_ms": "\(Int(delay * 1000))",
                // What went wrong, in a few words (a timeout, a reset, the service's message); never a secret.
                "aws.message": "\(error.message.prefix(160))",
            ])
        await sleep(delay)
    }

    /// `logger` is the caller's, with its metadata (the message, the task): a credential refresh it sets off is
    /// logged as part of that work.
    private func sendOnce(
        _ request: AWSRequest, endpoint: ServiceEndpoint, signer: SigV4Signer,
        payload: SignableRequest.Payload, logger: Logger
    ) async throws(AWSError) -> HTTPResponse {
        guard let creds = try await credentials.credentials(logger: logger) else {
            throw AWSError(
                kind: .credentials, service: endpoint.service, code: "NoCredentials",
                message: "no credentials in the environment, the shared files or the instance role")
        }
        let host = request.host ?? endpoint.hostHeader
        var headers = request.headers
        headers.insert(("Host", host), at: 0)
        // Content-Length is left to curl and not signed, as the AWS SDKs do: proxies may re-frame the body.
        let signable = SignableRequest(
            method: request.method, path: endpoint.basePath + request.path,
            query: request.query, headers: headers, payload: payload)
        let signed = signer.signHeaders(signable, credentials: creds, date: signingDate())
        let url =
            "\(endpoint.scheme)://\(host)\(endpoint.basePath)\(request.path)"
            + (request.query.isEmpty ? "" : "?" + URIEncoding.formatQuery(request.query))
        let http = HTTPRequest(
            method: request.method, url: url, headers: headers + signed.addedHeaders,
            body: request.body, response: request.response, timeouts: request.timeouts,
            connectTo: connectTo)
        do {
            return try await self.http.execute(http)
        } catch {
            throw AWSError(transport: error, service: endpoint.service)
        }
    }

    /// A presigned URL (query signing), valid for `expires` seconds.
    public func presignedURL(
        method: String, path: String, query: [(String, String)] = [], host: String? = nil,
        endpoint: ServiceEndpoint, options: SigV4Signer.Options, expires: Int,
        logger: Logger
    ) async throws(AWSError) -> String {
        guard let creds = try await credentials.credentials(logger: logger) else {
            throw AWSError(
                kind: .credentials, service: endpoint.service, code: "NoCredentials", message: "no credentials")
        }
        let host = host ?? endpoint.hostHeader
        let signer = SigV4Signer(region: endpoint.region, service: endpoint.service, options: options)
        let signable = SignableRequest(
            method: method, path: endpoint.basePath + path, query: query,
            headers: [("Host", host)], payload: .unsigned)
        let result = signer.presign(signable, credentials: creds, date: signingDate(), expires: expires)
        return "\(endpoint.scheme)://\(host)\(endpoint.basePath)\(path)?"
            + URIEncoding.formatQuery(query + result.addedQuery)
    }

    static func payloadHash(_ body: HTTPBody) -> SignableRequest.Payload {
        switch body {
        case .none: return .empty
        case .bytes(let bytes): return .sha256Hex(Digest.sha256(bytes).hexString)
        case .file: return .unsigned
        case .fileWithCRC32CTrailer: return .streamingUnsignedTrailer
        }
    }
}
