import FoundationEssentials
import HTTPCurl
import Logging

/// Everything resolved once at start-up and shared by all clients: region, endpoints, credentials chain, the HTTP
/// client and the clock correction. Resolution follows the AWS SDKs, with their own environment variables.
public struct AWSContext: Sendable {
    public let region: String
    public let client: AWSClient
    public let imds: IMDSClient?
    public let environment: [String: String]

    public init(region: String, client: AWSClient, imds: IMDSClient?, environment: [String: String]) {
        self.region = region
        self.client = client
        self.imds = imds
        self.environment = environment
    }

    /// The endpoint of `service` (`AWS_ENDPOINT_URL_<SERVICE>`, `AWS_ENDPOINT_URL`, or AWS's own).
    public func endpoint(_ service: String, region: String? = nil) throws(AWSError) -> ServiceEndpoint {
        try ServiceEndpoint.resolve(service: service, region: region ?? self.region, environment: environment)
    }

    /// Resolves region and credentials.
    /// - Parameters:
    ///   - region: an explicit region (a flag or user-data), which wins over everything else.
    ///   - credentials: explicit keys (user-data `accessKey`/`secretKey`), used instead of the chain.
    public static func resolve(environment: [String: String], region explicitRegion: String? = nil,
                               credentials explicit: Credentials? = nil, retry: RetryPolicy = RetryPolicy(),
                               logger: Logger) async throws(AWSError) -> AWSContext {
        let http = HTTPClient(configuration: .init(caBundle: environment.nonEmpty("AWS_CA_BUNDLE"),
                                                   userAgent: "parallelizer/\(Version.current)"))
        let imds = IMDSClient.endpoint(environment: environment).map { IMDSClient(endpoint: $0, http: http) }
        let region = try await resolveRegion(explicit: explicitRegion, environment: environment, imds: imds, logger: logger)
        let provider: any CredentialProvider = explicit.map { StaticCredentialProvider($0) }
            ?? CredentialChain.default(environment: environment, imds: imds)
        let client = AWSClient(http: http, credentials: provider, retry: retry,
                               connectTo: environment.nonEmpty("PARALLELIZER_CONNECT_TO").map { [$0] } ?? [])
        return AWSContext(region: region, client: client, imds: imds, environment: environment)
    }

    /// `AWS_REGION`, then `AWS_DEFAULT_REGION`, then the profile's `region`, then IMDS `placement/region`.
    public static func resolveRegion(explicit: String?, environment: [String: String], imds: IMDSClient?,
                                     logger: Logger) async throws(AWSError) -> String {
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
