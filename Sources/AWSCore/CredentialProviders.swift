import FoundationEssentials
import HTTPCurl
@_exported import AWSSigV4
import Logging

/// A source of credentials. Returns nil when it has none, so a chain can move on to the next source.
public protocol CredentialProvider: Sendable {
    /// A name for logs (`environment`, `profile default`, `instance role`). Never the credentials themselves.
    var name: String { get }
    func credentials(logger: Logger) async throws(AWSError) -> Credentials?
    /// Drops cached credentials, so the next call fetches fresh ones (after an `ExpiredToken` reply).
    func invalidate() async
}

extension CredentialProvider {
    public func invalidate() async {}
}

/// Fixed keys (the `accessKey`/`secretKey` user-data parameters, or tests).
public struct StaticCredentialProvider: CredentialProvider {
    public let name = "static keys"
    let value: Credentials
    public init(_ value: Credentials) { self.value = value }
    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? { value }
}

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
public struct EnvironmentCredentialProvider: CredentialProvider {
    public let name = "environment"
    let environment: [String: String]
    public init(environment: [String: String]) { self.environment = environment }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        guard let key = environment.nonEmpty("AWS_ACCESS_KEY_ID"),
            let secret = environment.nonEmpty("AWS_SECRET_ACCESS_KEY")
        else { return nil }
        return Credentials(
            accessKeyID: key, secretAccessKey: secret, sessionToken: environment.nonEmpty("AWS_SESSION_TOKEN"))
    }
}

/// The shared files: `AWS_SHARED_CREDENTIALS_FILE` (default `~/.aws/credentials`) and `AWS_CONFIG_FILE`
/// (default `~/.aws/config`), profile `AWS_PROFILE` (default `default`). The credentials file wins over the config
/// file for the same profile, as in the SDKs.
public struct ProfileCredentialProvider: CredentialProvider {
    public let profile: String
    let files: SharedConfigFiles
    public var name: String { "profile \(profile)" }

    public init(environment: [String: String]) {
        files = SharedConfigFiles(environment: environment)
        profile = files.profile
    }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        for section in [files.credentials?.credentialsProfile(profile), files.config?.configProfile(profile)] {
            guard let section, let key = section["aws_access_key_id"], !key.isEmpty,
                let secret = section["aws_secret_access_key"], !secret.isEmpty
            else { continue }
            let token = section["aws_session_token"].flatMap { $0.isEmpty ? nil : $0 }
            return Credentials(accessKeyID: key, secretAccessKey: secret, sessionToken: token)
        }
        return nil
    }
}

/// The shared config and credentials files, read once.
public struct SharedConfigFiles: Sendable {
    public let profile: String
    /// Whether the profile was named (`AWS_PROFILE`), rather than `default`: a named profile that is missing is an
    /// error, as in the AWS CLI.
    public let profileNamed: Bool
    public let credentials: IniFile?
    public let config: IniFile?
    /// Where the two files are, for messages.
    public let paths: String

    public init(environment: [String: String]) {
        let named = environment.nonEmpty("AWS_PROFILE") ?? environment.nonEmpty("AWS_DEFAULT_PROFILE")
        profile = named ?? "default"
        profileNamed = named != nil
        let home = environment.nonEmpty("HOME") ?? "/root"
        let credentialsPath = environment.nonEmpty("AWS_SHARED_CREDENTIALS_FILE") ?? "\(home)/.aws/credentials"
        let configPath = environment.nonEmpty("AWS_CONFIG_FILE") ?? "\(home)/.aws/config"
        credentials = LocalFile.readText(credentialsPath).map(IniFile.init(text:))
        config = LocalFile.readText(configPath).map(IniFile.init(text:))
        paths = "\(configPath), \(credentialsPath)"
    }

    /// The profile's `region`, from the config file.
    public var region: String? {
        config?.configProfile(profile)?["region"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// The profile `AWS_PROFILE` names (or `default`), resolved as the AWS CLI resolves it (`ProfileResolver`) when first
/// asked: a setting that cannot work is then that call's error, not start-up's.
public actor ResolvedProfileProvider: CredentialProvider {
    public nonisolated let name: String
    private let resolver: ProfileResolver
    private var resolved: (any CredentialProvider)??

    init(_ resolver: ProfileResolver) {
        self.resolver = resolver
        self.name = "profile \(resolver.files.profile) (\(resolver.files.paths)), web identity"
    }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        if resolved == nil {
            let found = try resolver.provider(resolver.files.profile)
            if found == nil, resolver.files.profileNamed, resolver.files.settings(resolver.files.profile) == nil {
                throw credentialSetupError(
                    "the profile \(resolver.files.profile) (AWS_PROFILE) is in neither \(resolver.files.paths)")
            }
            resolved = .some(found)
            if let found {
                logger.debug("profile resolved", metadata: ["credentials.source": "\(found.name)"])
            }
        }
        guard let provider = resolved ?? nil else { return nil }
        return try await provider.credentials(logger: logger)
    }

    public func invalidate() async {
        if let provider = resolved ?? nil { await provider.invalidate() }
    }
}

/// A source whose endpoint does not answer (a connection refused or timed out) has nothing: the instance role of a
/// machine that is not an EC2 instance.
struct AbsentWhenUnreachable: CredentialProvider {
    let source: any CredentialProvider
    var name: String { source.name }
    init(_ source: any CredentialProvider) { self.source = source }

    func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        do {
            return try await source.credentials(logger: logger)
        } catch  where error.kind == .transport(.connect) || error.kind == .transport(.timeout) {
            return nil
        }
    }

    func invalidate() async { await source.invalidate() }
}

/// The EC2 instance role, through IMDSv2.
public struct InstanceRoleCredentialProvider: CredentialProvider {
    public let name = "instance role"
    let imds: IMDSClient
    public init(imds: IMDSClient) { self.imds = imds }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        try await imds.roleCredentials()
    }
}

/// Which credential sources a command looks at, in which order.
public enum CredentialOrder: Sendable {
    /// The daemon's: the environment, a profile's keys, then the instance role (on an instance only the role is
    /// there; the rest serve a daemon run by hand).
    case daemon
    /// The AWS CLI's, for the operator's commands: the environment, web identity, the profile (an assumed role, SSO,
    /// keys, `credential_process`), the container endpoint, then the instance role.
    case awsCLI
}

/// Sources tried in order; the first that has credentials is used from then on. Temporary credentials are cached
/// and refreshed by `RefreshingCredentials`.
public actor CredentialChain: CredentialProvider {
    public nonisolated let name = "default chain"
    private let providers: [any CredentialProvider]
    private var chosen: (any CredentialProvider)?
    /// What to do when no source has credentials, for the error that names every place looked at.
    private let fix: String

    public init(
        providers: [any CredentialProvider],
        fix: String = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run aws configure"
    ) {
        self.providers = providers
        self.fix = fix
    }

    /// The default chain for an environment. `imds` nil means IMDS is disabled.
    public static func `default`(
        environment: [String: String], imds: IMDSClient?, order: CredentialOrder = .daemon, region: String = "",
        http: HTTPClient = HTTPClient(), now: @escaping @Sendable () -> Date = { Date() }
    ) -> CredentialChain {
        let instanceRole = imds.map { RefreshingCredentials(InstanceRoleCredentialProvider(imds: $0), now: now) }
        switch order {
        case .daemon:
            let providers: [any CredentialProvider] = [
                EnvironmentCredentialProvider(environment: environment),
                ProfileCredentialProvider(environment: environment),
            ]
            return CredentialChain(
                providers: providers + (instanceRole.map { [$0] } ?? []),
                fix:
                    "attach an instance profile (scripts/setup-aws makes NAME-worker), or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        case .awsCLI:
            let files = SharedConfigFiles(environment: environment)
            // Web identity from the environment is tried inside the profile's turn, after its assumed role, as in the
            // AWS CLI (`ProfileResolver`).
            var providers: [any CredentialProvider] = [EnvironmentCredentialProvider(environment: environment)]
            providers.append(
                ResolvedProfileProvider(
                    ProfileResolver(
                        files: files, environment: environment, region: region, http: http, imds: imds, now: now)))
            if let container = ContainerCredentialProvider(environment: environment, http: http) {
                providers.append(RefreshingCredentials(container, now: now))
            }
            // Off EC2, IMDS does not answer at all: that is no instance role, not an error.
            if let instanceRole { providers.append(AbsentWhenUnreachable(instanceRole)) }
            return CredentialChain(
                providers: providers,
                fix:
                    "run aws configure (keys), aws sso login --profile NAME and set AWS_PROFILE=NAME, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            )
        }
    }

    /// The first source's credentials; a source that is configured but fails (a helper that exits non-zero, an
    /// expired SSO login) throws its own error. With no source at all, the error names every place looked at.
    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        if let chosen { return try await chosen.credentials(logger: logger) }
        for provider in providers {
            do {
                if let found = try await provider.credentials(logger: logger) {
                    chosen = provider
                    logger.debug("credentials found", metadata: ["credentials.source": "\(provider.name)"])
                    return found
                }
            } catch {
                // A source that is there and fails is the answer, as in the AWS CLI: the next (the instance role of
                // the machine the operator is on) would sign as someone else without a word. Only a source that has
                // nothing (nil) passes the turn.
                logger.debug(
                    "credential source failed",
                    metadata: ["credentials.source": "\(provider.name)", "error": "\(error)"])
                throw error
            }
        }
        throw AWSError(
            kind: .credentials, service: "credentials", code: "NoCredentials",
            message: "no credentials; looked at: \(providers.map(\.name).joined(separator: ", ")); fix: \(fix)")
    }

    /// Forgets cached credentials so the next call fetches new ones (after an ExpiredToken reply).
    public func invalidate() async {
        await chosen?.invalidate()
    }
}

/// Caches expiring credentials and refreshes them at least `refreshAhead` (5 minutes) before they expire.
///
/// One refresh runs at a time and every caller awaits it, so N worker slots cause one IMDS round trip, not N. When
/// a refresh fails while the old credentials are still valid, those are returned and a warning is logged: a
/// passing IMDS hiccup must not fail a task.
public actor RefreshingCredentials: CredentialProvider {
    public nonisolated let name: String
    private let source: any CredentialProvider
    private let now: @Sendable () -> Date
    private let refreshAhead: TimeInterval
    private var cached: Credentials?
    private var fetchedAt: Date?
    private var refreshing: Task<Credentials?, any Error>?
    private var lastFailure: Date?

    public init(
        _ source: any CredentialProvider, refreshAhead: TimeInterval = 300,
        now: @escaping @Sendable () -> Date = { Date() }
    ) {
        self.source = source
        self.name = source.name
        self.refreshAhead = refreshAhead
        self.now = now
    }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        let current = now()
        if let cached, !needsRefresh(cached, at: current) { return cached }
        // After a failed refresh, keep using still-valid credentials for a few seconds before trying again.
        if let cached, let lastFailure, current.timeIntervalSince(lastFailure) < 5, isValid(cached, at: current) {
            return cached
        }
        let task: Task<Credentials?, any Error>
        if let refreshing {
            task = refreshing
        } else {
            let source = self.source
            task = Task { try await source.credentials(logger: logger) }
            refreshing = task
        }
        let result = await task.result
        // Only this refresh's own task: a caller resuming late must not drop a newer one.
        if refreshing == task { refreshing = nil }
        switch result {
        case .success(let fresh):
            lastFailure = nil
            if let fresh {
                // Operators see each rotation (hourly on EC2): the source and the new expiry, never the keys.
                if let cached, cached.accessKeyID != fresh.accessKeyID {
                    logger.info(
                        "credentials refreshed",
                        metadata: [
                            "credentials.source": "\(name)", "credentials.expiration": "\(Self.iso(fresh.expiration))",
                        ])
                }
                cached = fresh
                fetchedAt = current
            }
            return fresh ?? cached.flatMap { isValid($0, at: current) ? $0 : nil }
        case .failure(let error):
            lastFailure = current
            if let cached, isValid(cached, at: current) {
                logger.warning(
                    "credential refresh failed; using the current credentials until they expire",
                    metadata: [
                        "credentials.source": "\(name)", "credentials.expiration": "\(Self.iso(cached.expiration))",
                        "error": "\(error)",
                    ])
                return cached
            }
            if let awsError = error as? AWSError { throw awsError }
            throw AWSError(kind: .credentials, service: "credentials", code: "RefreshFailed", message: "\(error)")
        }
    }

    public func invalidate() { cached = nil }

    private static func iso(_ date: Date?) -> String {
        date.map { CivilTime(date: $0).iso8601 } ?? "none"
    }

    /// Inside the last `refreshAhead` seconds, or the last half of a lifetime shorter than twice that (so
    /// credentials that live one minute are not fetched again on every call).
    private func needsRefresh(_ c: Credentials, at time: Date) -> Bool {
        guard let expiration = c.expiration else { return false }
        var window = refreshAhead
        if let fetchedAt { window = min(window, expiration.timeIntervalSince(fetchedAt) / 2) }
        return expiration.timeIntervalSince(time) < window
    }

    private func isValid(_ c: Credentials, at time: Date) -> Bool {
        guard let expiration = c.expiration else { return true }
        return expiration > time
    }
}
