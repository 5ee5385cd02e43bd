import FoundationEssentials
import HTTPCurl
import Logging

/// EC2's instance metadata service, IMDSv2 only: a session token from `PUT /latest/api/token` (with a TTL header)
/// goes on every GET. IMDSv1 (token-less GETs) is never used, so an instance that requires tokens works and a
/// server-side request forgery cannot read the role's credentials with a plain GET.
public actor IMDSClient {
    public static let defaultEndpoint = "http://169.254.169.254"
    static let tokenPath = "/latest/api/token"
    static let tokenTTLHeader = "X-aws-ec2-metadata-token-ttl-seconds"
    static let tokenHeader = "X-aws-ec2-metadata-token"
    static let tokenTTL = 21600

    public let endpoint: String
    private let http: HTTPClient
    private let now: @Sendable () -> Date
    private var token: (value: String, expires: Date)?
    private let timeouts = Timeouts(connect: 1, lowSpeedBytes: 1, lowSpeedSeconds: 5, total: 5)

    public init(
        endpoint: String = IMDSClient.defaultEndpoint, http: HTTPClient,
        now: @escaping @Sendable () -> Date = { Date() }
    ) {
        var endpoint = endpoint
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        self.endpoint = endpoint
        self.http = http
        self.now = now
    }

    /// Whether IMDS is surely there to answer, in time: an endpoint named in the environment, or a machine whose
    /// firmware says it is an EC2 instance (the DMI vendor, Nitro's board asset tag with the instance id, or Xen's
    /// hypervisor uuid). Elsewhere (a laptop, a CI runner) nothing at 169.254.169.254 is worth waiting for.
    public static func isExpected(environment: [String: String], files: (String) -> String? = LocalFile.readText)
        -> Bool
    {
        if environment.flag("AWS_EC2_METADATA_DISABLED") { return false }
        if environment.nonEmpty("AWS_EC2_METADATA_SERVICE_ENDPOINT") != nil { return true }
        let vendor = files("/sys/devices/virtual/dmi/id/sys_vendor")?.trimmingSpaces
        let assetTag = files("/sys/devices/virtual/dmi/id/board_asset_tag")?.trimmingSpaces ?? ""
        let uuid = files("/sys/hypervisor/uuid")?.trimmingSpaces.lowercased() ?? ""
        return vendor == "Amazon EC2" || assetTag.hasPrefix("i-") || uuid.hasPrefix("ec2")
    }

    /// The endpoint from `AWS_EC2_METADATA_SERVICE_ENDPOINT`, or nil when `AWS_EC2_METADATA_DISABLED` is true.
    public static func endpoint(environment: [String: String]) -> String? {
        if environment.flag("AWS_EC2_METADATA_DISABLED") { return nil }
        return environment.nonEmpty("AWS_EC2_METADATA_SERVICE_ENDPOINT") ?? defaultEndpoint
    }

    /// GETs a metadata path. Returns nil on 404 (e.g. no user-data, no spot notice).
    public func get(_ path: String) async throws(AWSError) -> String? {
        for attempt in 0..<2 {
            let token = try await sessionToken(forceNew: attempt > 0)
            let response: HTTPResponse
            do {
                var request = HTTPRequest(
                    method: "GET", url: endpoint + path, headers: [(Self.tokenHeader, token)], timeouts: timeouts)
                request.direct = true
                response = try await http.execute(request)
            } catch {
                throw AWSError(transport: error, service: "imds")
            }
            switch response.status {
            case 200: return String(decoding: response.body, as: UTF8.self)
            case 404: return nil
            case 401: continue  // the token expired or was revoked: get a new one, once
            default: throw AWSError.from(response: response, service: "imds")
            }
        }
        throw AWSError(
            kind: .service, service: "imds", httpStatus: 401, code: "Unauthorized",
            message: "IMDS refused a fresh token")
    }

    private func sessionToken(forceNew: Bool) async throws(AWSError) -> String {
        if !forceNew, let token, token.expires > now().addingTimeInterval(60) { return token.value }
        let response: HTTPResponse
        do {
            var request = HTTPRequest(
                method: "PUT", url: endpoint + Self.tokenPath, headers: [(Self.tokenTTLHeader, String(Self.tokenTTL))],
                timeouts: timeouts)
            request.direct = true
            response = try await http.execute(request)
        } catch {
            throw AWSError(transport: error, service: "imds")
        }
        guard response.status == 200, !response.body.isEmpty else {
            throw AWSError.from(response: response, service: "imds")
        }
        let value = String(decoding: response.body, as: UTF8.self)
        token = (value, now().addingTimeInterval(TimeInterval(Self.tokenTTL)))
        return value
    }

    // MARK: - The paths the daemon uses

    public func userData() async throws(AWSError) -> String? { try await get("/latest/user-data") }

    /// The user-data, read with patience: early in an instance's boot IMDS may refuse connections, time out or
    /// answer 5xx, and taking that for "no user-data" would start the daemon without its parameters. Every answer
    /// but a 404 (no user-data: nil) and a 403 (IMDS turned off for this instance) is tried again, with a pause
    /// that doubles from half a second to 8 s, until `patience` has passed; then the last error is thrown.
    public func userData(patience: Duration, logger: Logger) async throws(AWSError) -> String? {
        let clock = ContinuousClock()
        let deadline = clock.now + patience
        var pause = Duration.milliseconds(500)
        while true {
            do {
                return try await userData()
            } catch  where error.httpStatus != 403 && clock.now + pause < deadline {
                logger.notice(
                    "IMDS did not give the user-data yet; trying again",
                    metadata: ["error": "\(error)", "retry.delay_ms": "\(Int(pause / .milliseconds(1)))"])
                try? await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(8))
            }
        }
    }
    public func instanceID() async throws(AWSError) -> String? { try await get("/latest/meta-data/instance-id") }
    public func region() async throws(AWSError) -> String? { try await get("/latest/meta-data/placement/region") }
    public func instanceType() async throws(AWSError) -> String? { try await get("/latest/meta-data/instance-type") }

    /// A pending spot interruption (`{"action": "terminate", "time": "..."}`), or nil when there is none.
    public func spotInstanceAction() async throws(AWSError) -> SpotInstanceAction? {
        guard let text = try await get("/latest/meta-data/spot/instance-action") else { return nil }
        guard let json = try? JSONValue.parse(text), let action = json["action"]?.stringValue else {
            throw AWSError.badResponse("imds", "spot/instance-action is not the expected JSON")
        }
        return SpotInstanceAction(action: action, time: json["time"]?.stringValue ?? "")
    }

    /// EC2's rebalance recommendation for this spot instance (its `noticeTime`), or nil when there is none.
    public func rebalanceRecommendation() async throws(AWSError) -> String? {
        guard let text = try await get("/latest/meta-data/events/recommendations/rebalance") else { return nil }
        guard let json = try? JSONValue.parse(text), let time = json["noticeTime"]?.stringValue else {
            throw AWSError.badResponse("imds", "events/recommendations/rebalance is not the expected JSON")
        }
        return time
    }

    /// The instance role's temporary credentials.
    public func roleCredentials() async throws(AWSError) -> Credentials? {
        let base = "/latest/meta-data/iam/security-credentials/"
        guard let roles = try await get(base),
            let role = roles.split(whereSeparator: { $0 == "\n" }).first.map({ String($0).trimmingSpaces }),
            !role.isEmpty
        else { return nil }
        guard let text = try await get(base + role) else { return nil }
        guard let json = try? JSONValue.parse(text), let key = json["AccessKeyId"]?.stringValue,
            let secret = json["SecretAccessKey"]?.stringValue
        else {
            throw AWSError.badResponse("imds", "role credentials are not the expected JSON")
        }
        if let code = json["Code"]?.stringValue, code != "Success" {
            throw AWSError(
                kind: .credentials, service: "imds", code: code, message: "instance role credentials not available")
        }
        let expiration = json["Expiration"]?.stringValue.flatMap(CivilTime.parseISO8601)
            .map { Date(timeIntervalSince1970: TimeInterval($0)) }
        return Credentials(
            accessKeyID: key, secretAccessKey: secret, sessionToken: json["Token"]?.stringValue,
            expiration: expiration)
    }
}

public struct SpotInstanceAction: Sendable, Equatable {
    public var action: String
    public var time: String

    public init(action: String, time: String) {
        self.action = action
        self.time = time
    }
}
