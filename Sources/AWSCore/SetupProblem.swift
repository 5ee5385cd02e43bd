/// An error that no retry can fix and that is about how the caller is set up, not about one request's content:
/// the credentials, the permissions, the queue or bucket named in the configuration.
///
/// Sending the same call again, or the next task's call, gets the same answer until an operator changes something.
/// The daemon uses this to tell a task's failure (retried, then recorded) from its own dead end (one clear line, a
/// clean stop); `enqueue` stops at one.
public enum SetupProblem: String, Sendable, Equatable {
    /// The policy does not allow the action (`AccessDenied`, SQS's `InvalidSecurity` for a plain-HTTP call).
    case denied
    /// AWS does not accept the credentials themselves (an unknown key, a wrong secret, an invalid or expired token).
    case credentialsRefused
    /// No credentials were found anywhere in the chain.
    case noCredentials
    /// The queue does not exist (deleted, or a wrong URL).
    case queueMissing
    /// The bucket does not exist.
    case bucketMissing
    /// The DynamoDB table (the ledger) does not exist.
    case tableMissing
    /// The endpoint does not know the action (a wrong endpoint, or a server that lacks it).
    case unknownAction
    /// The bucket is in another region than the one the request was signed for.
    case wrongRegion
    /// The KMS key that encrypts the queue cannot be used (disabled, deleted, or not allowed).
    case keyUnusable
    /// Refused for another reason that retrying cannot fix (a call with no per-task content, such as a receive,
    /// that keeps getting the same final answer). Not returned by `setupProblem`: the caller decides.
    case refused
}

extension SetupProblem {
    /// How many calls in a row (each for a different task), or rounds of the controller, must meet the same set-up
    /// problem before it counts as a dead end rather than one task's trouble.
    public static let repeatsBeforeDeadEnd = 3
}

extension AWSError {
    /// What is wrong with the set-up, when this error says so; nil for errors that may pass (throttling, 5xx, a
    /// dropped connection) and for errors about one request (a missing key, a stale receipt handle).
    public var setupProblem: SetupProblem? {
        switch kind {
        case .credentials:
            return .noCredentials
        case .service:
            break
        case .transport, .badResponse, .client:
            return nil
        }
        if isClockSkew { return nil }
        // SQS passes on the errors of the KMS key that encrypts the queue (`KMS.DisabledException`, ...).
        if shortCode.hasPrefix("KMS.") && !isRetryable { return .keyUnusable }
        let code = shortCode.split(separator: ".").last.map(String.init) ?? shortCode
        switch code {
        case "AccessDenied", "AccessDeniedException", "AllAccessDisabled", "InvalidSecurity", "UnauthorizedOperation",
            "AuthorizationError":
            return .denied
        case "Forbidden":
            // A HEAD reply has no body: 403 is all S3 says about a denial there.
            return httpStatus == 403 ? .denied : nil
        case "InvalidClientTokenId", "UnrecognizedClientException", "InvalidAccessKeyId", "SignatureDoesNotMatch",
            "InvalidSignatureException", "IncompleteSignature", "MissingAuthenticationToken",
            "MissingAuthenticationTokenException", "InvalidToken", "ExpiredToken", "ExpiredTokenException",
            "AuthFailure", "TokenRefreshRequired":
            // An expired token reaches here only after the client refreshed the credentials once and was refused again.
            return .credentialsRefused
        case "NonExistentQueue", "QueueDoesNotExist":
            return .queueMissing
        case "NoSuchBucket":
            return .bucketMissing
        case "ResourceNotFoundException":
            return .tableMissing
        case "InvalidAction", "UnknownOperationException":
            return .unknownAction
        case "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException":
            return .wrongRegion
        default:
            return nil
        }
    }
}
