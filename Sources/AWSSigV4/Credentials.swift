import FoundationEssentials

/// An AWS access key pair, with the session token of temporary (STS / instance-role) credentials.
///
/// `description` never shows the secret or the token, so a credentials value that ends up in a log line or an
/// error message leaks nothing but the access key id.
public struct Credentials: Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?
    /// When temporary credentials stop working; nil for long-term keys.
    public var expiration: Date?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil, expiration: Date? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.expiration = expiration
    }

    public var description: String {
        "Credentials(accessKeyID: \(accessKeyID), secret: <redacted>\(sessionToken == nil ? "" : ", token: <redacted>"))"
    }

    public var debugDescription: String { description }
}
