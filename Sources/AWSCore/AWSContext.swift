import FoundationEssentials
import HTTPCurl
import Logging
import Synchronization

/// Everything resolved once at start-up and shared by all clients: region, endpoints, credentials chain, the HTTP
/// client and the clock correction. Resolution follows the AWS SDKs, with their own environment variables.
public struct AWSContext: Sendable {
    public let region: String
    public let client: AWSClient
    public let imds: IMDSClient?
    public let environment: [String: String]
    /// Resolved endpoints, by service and region: the environment does not change, and resolving (variable
    /// lookups and URL parsing) on every request was a visible share of the daemon's CPU per task.
    private let endpoints = Memo<ServiceEndpoint>()
    /// The shared files, for a profile's `endpoint_url` and `services`.
    private let files: SharedConfigFiles

    public init(region: String, client: AWSClient, imds: IMDSClient?, environment: [String: String]) {
        self.region = region
        self.client = client
        self.imds = imds
        self.environment = environment
        self.files = SharedConfigFiles(environment: environment)
    }

    /// The endpoint of `service` (`AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, the profile's, or AWS's own).
    public func endpoint(_ service: String, region: String? = nil) throws(AWSError) -> ServiceEndpoint {
        let region = region ?? self.region
        return try endpoints.value(for: service + " " + region) { () throws(AWSError) in
            try ServiceEndpoint.resolve(service: service, region: region, environment: environment, files: files)
        }
    }

    /// Resolves region and credentials.
    /// - Parameters:
    ///   - region: an explicit region (a flag or user-data), which wins over everything else.
    ///   - credentials: explicit keys (user-data `accessKey`/`secretKey`), used instead of the chain.
    ///   - order: the daemon's sources, or the AWS CLI's (the operator's commands).
    public static func resolve(
        environment: [String: String], region explicitRegion: String? = nil,
        credentials explicit: Credentials? = nil, order: CredentialOrder = .daemon, retry: RetryPolicy = RetryPolicy(),
        logger: Logger
    ) async throws(AWSError) -> AWSContext {
        let http = HTTPClient(
            configuration: .init(
                caBundle: environment.nonEmpty("AWS_CA_BUNDLE"),
                userAgent: "parallelizer/\(Version.current)"))
        let imds = IMDSClient.endpoint(environment: environment).map { IMDSClient(endpoint: $0, http: http) }
        let region = try await resolveRegion(
            explicit: explicitRegion, environment: environment, imds: imds, logger: logger)
        let provider: any CredentialProvider =
            explicit.map { StaticCredentialProvider($0) }
            ?? CredentialChain.default(environment: environment, imds: imds, order: order, region: region, http: http)
        let client = AWSClient(
            http: http, credentials: provider, retry: retry,
            connectTo: environment.nonEmpty("PARALLELIZER_CONNECT_TO").map { [$0] } ?? [])
        return AWSContext(region: region, client: client, imds: imds, environment: environment)
    }

    /// `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the profile's `region`, then IMDS `placement/region`.
    public static func resolveRegion(
        explicit: String?, environment: [String: String], imds: IMDSClient?,
        logger: Logger
    ) async throws(AWSError) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let region = environment.nonEmpty("AWS_REGION") ?? environment.nonEmpty("AWS_DEFAULT_REGION") {
            return region
        }
        if let region = SharedConfigFiles(environment: environment).region { return region }
        if let imds {
            do {
                if let region = try await imds.region()?.trimmingSpaces, !region.isEmpty { return region }
            } catch {
                logger.debug("IMDS gave no region", metadata: ["error": "\(error)"])
            }
        }
        throw AWSError.client("config", "no region: set AWS_REGION or the region parameter, or run on EC2")
    }
}

public enum Version {
    public static let current = "0.1.0"
}

/// Values computed once per key and shared by every caller (a bounded cache: it starts over past 256 keys).
public final class Memo<Value: Sendable>: Sendable {
    private let values = Mutex<[String: Value]>([:])

    public init() {}

    public func value<E: Error>(for key: String, _ make: () throws(E) -> Value) throws(E) -> Value {
        if let known = values.withLock({ $0[key] }) { return known }
        let made = try make()
        values.withLock { cache in
            if cache.count >= 256 { cache.removeAll() }
            cache[key] = made
        }
        return made
    }
}
