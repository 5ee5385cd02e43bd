@preconcurrency import Glibc
import HTTPCurl

/// Any failure of an AWS call: a service error reply, a transport failure, missing credentials, or a reply we could
/// not read. It carries what an operator needs to act on it and never a secret: request bodies and signing material
/// are not part of it.
public struct AWSError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// The service answered with an error status.
        case service
        /// No HTTP status was obtained (connect, timeout, reset, truncated body...).
        case transport(HTTPTransportError.Kind)
        /// No credentials could be found or refreshed.
        case credentials
        /// The reply was 2xx but did not parse as the operation's output.
        case badResponse
        /// A local precondition (a missing file, a bad argument).
        case client
    }

    public var kind: Kind
    /// `s3`, `sqs`, `dynamodb`, `ec2`, `imds`, `sts`.
    public var service: String
    /// The HTTP status, 0 when there was none.
    public var httpStatus: Int
    /// The AWS error code (`NoSuchKey`, `AWS.SimpleQueueService.NonExistentQueue`, `ThrottlingException`...).
    public var code: String
    public var message: String
    public var requestID: String?
    /// The server's `Date` header, used for clock-skew correction.
    public var serverDate: String?
    /// For a local file failure, the system's `errno` (ENOSPC, EMFILE...).
    public var systemErrno: Int32 = 0

    public init(
        kind: Kind, service: String, httpStatus: Int = 0, code: String, message: String,
        requestID: String? = nil, serverDate: String? = nil
    ) {
        self.kind = kind
        self.service = service
        self.httpStatus = httpStatus
        self.code = code
        self.message = message
        self.requestID = requestID
        self.serverDate = serverDate
    }

    public var description: String {
        var text = "\(service): \(code)"
        if httpStatus > 0 { text += " (HTTP \(httpStatus))" }
        if !message.isEmpty { text += ": \(message)" }
        if let requestID { text += " [request \(requestID)]" }
        return text
    }

    /// The service answered, and asks for patience: it throttles, or a limit is reached that passes as other work
    /// ends (SQS's `OverLimit`: 120,000 messages in flight on a standard queue). A wait, never a dead end, and not
    /// an outage either: the service is there.
    static let throttleCodes: Set<String> = [
        "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestLimitExceeded",
        "TooManyRequestsException", "ProvisionedThroughputExceededException", "RequestThrottled",
        "RequestThrottledException", "BandwidthLimitExceeded", "EC2ThrottledException", "OverLimit",
        "LimitExceededException", "TransactionInProgressException",
    ]

    /// Answers that say the service failed this once, and may not the next time.
    static let transientCodes: Set<String> = [
        "RequestTimeout", "RequestTimeoutException", "InternalError", "ServiceUnavailable", "InternalFailure",
    ]

    /// The code without a namespace of either kind: SQS's legacy query code (`AWS.SimpleQueueService.OverLimit`),
    /// KMS's through SQS (`KMS.ThrottlingException`).
    var unqualifiedCode: String { shortCode.split(separator: ".").last.map(String.init) ?? shortCode }

    /// A throttle or a limit (`throttleCodes`, or HTTP 429): wait and try again, for as long as it lasts.
    public var isThrottle: Bool {
        guard kind == .service else { return false }
        return httpStatus == 429 || Self.throttleCodes.contains(shortCode)
            || Self.throttleCodes.contains(unqualifiedCode)
    }

    /// Whether the same request may succeed if sent again after a pause: transport failures, 5xx, throttles and
    /// limits, and the transient codes. 4xx answers about the request itself (NoSuchKey, AccessDenied) are final.
    public var isRetryable: Bool {
        switch kind {
        case .transport(let t): return HTTPTransportError(kind: t, curlCode: 0, message: "").isRetryable
        case .service:
            return httpStatus >= 500 || isThrottle || Self.transientCodes.contains(shortCode)
                || Self.transientCodes.contains(unqualifiedCode)
        // A source set up in a way that cannot work (a helper's exit status, an expired login) answers the same
        // every time; a refresh that failed on the way may pass.
        case .credentials: return code != "CredentialSetup"
        case .badResponse, .client: return false
        }
    }

    /// The request was signed at a time the server considers wrong (our clock is off).
    public var isClockSkew: Bool {
        guard kind == .service else { return false }
        switch shortCode {
        case "RequestTimeTooSkewed", "RequestExpired", "RequestInTheFuture": return true
        case "InvalidSignatureException", "SignatureDoesNotMatch", "AuthFailure", "InvalidClientTokenId":
            let lower = message.lowercased()
            return lower.contains("signature expired") || lower.contains("skew") || lower.contains("not yet current")
        default: return false
        }
    }

    /// Temporary credentials were refused as expired: refresh them and try again.
    public var isExpiredCredentials: Bool {
        kind == .service && ["ExpiredToken", "ExpiredTokenException", "TokenRefreshRequired"].contains(shortCode)
    }

    /// The code without a JSON-protocol namespace (`com.amazonaws.sqs#QueueDoesNotExist` → `QueueDoesNotExist`).
    public var shortCode: String {
        code.split(separator: "#").last.map(String.init) ?? code
    }

    public static func client(_ service: String, _ message: String) -> AWSError {
        AWSError(kind: .client, service: service, code: "ClientError", message: message)
    }

    public static func badResponse(_ service: String, _ message: String, requestID: String? = nil) -> AWSError {
        AWSError(kind: .badResponse, service: service, code: "BadResponse", message: message, requestID: requestID)
    }

    init(transport error: HTTPTransportError, service: String) {
        self.init(kind: .transport(error.kind), service: service, code: "TransportError", message: error.message)
        systemErrno = error.systemErrno
    }

    /// A local file call failed just now (its `errno` read once): this machine's trouble, not the service's.
    public static func localFile(_ service: String, _ what: String) -> AWSError {
        let code = errno
        var error = AWSError(
            kind: .transport(.localFile), service: service, code: "LocalFileError",
            message: "\(what): \(String(cString: strerror(code)))")
        error.systemErrno = code
        return error
    }
}

extension AWSError {
    /// Builds the error for a non-2xx reply, from an XML (S3, EC2, query) or JSON (SQS, DynamoDB) body.
    public static func from(response: HTTPResponse, service: String) -> AWSError {
        let requestID =
            response.header("x-amz-request-id") ?? response.header("x-amzn-RequestId")
            ?? response.header("x-amzn-requestid")
        var code = ""
        var message = ""
        var bodyRequestID: String?
        let body = response.body
        let firstByte = body.first { $0 != 0x20 && $0 != 0x0a && $0 != 0x0d && $0 != 0x09 }
        if firstByte == UInt8(ascii: "<"), let root = try? XML.parse(body) {
            let error = root.find("Error") ?? root
            code = error["Code"] ?? ""
            message = error["Message"] ?? ""
            bodyRequestID = root.find("RequestId")?.text ?? root.find("RequestID")?.text
        } else if firstByte == UInt8(ascii: "{"), let json = try? JSONValue.parse(body) {
            code = json["__type"]?.stringValue ?? json["code"]?.stringValue ?? json["Code"]?.stringValue ?? ""
            message = json["message"]?.stringValue ?? json["Message"]?.stringValue ?? ""
        }
        // SQS's JSON protocol names the legacy query code in a header (`AWS.SimpleQueueService.NonExistentQueue;Sender`).
        if let queryError = response.header("x-amzn-query-error"), let legacy = queryError.split(separator: ";").first {
            code = String(legacy)
        }
        if code.isEmpty {
            // HEAD replies have no body; name the status the way S3's SDKs do.
            switch response.status {
            case 404: code = "NotFound"
            case 403: code = "Forbidden"
            case 400: code = "BadRequest"
            case 429: code = "TooManyRequests"
            case 503: code = "ServiceUnavailable"
            default: code = "HTTP\(response.status)"
            }
        }
        return AWSError(
            kind: .service, service: service, httpStatus: response.status, code: code, message: message,
            requestID: requestID ?? bodyRequestID, serverDate: response.header("Date"))
    }
}
