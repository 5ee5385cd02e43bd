import FoundationEssentials
@preconcurrency import Glibc
import CSpawn
import HTTPCurl
import Logging

// The credential sources an operator's machine has beside keys: the ones the AWS CLI reads, so that a command that
// works with `aws` works with `parallelizer` (SSO, an assumed role, CloudShell's container endpoint, EKS's web
// identity, a `credential_process` helper). Each returns expiring credentials; the chain wraps them in
// `RefreshingCredentials`, the refresh the instance role uses.

/// The credentials file's and config file's settings of one profile, merged (the credentials file wins).
struct ProfileSettings: Sendable {
    let name: String
    let values: [String: String]
    /// Keys from the credentials file, which the AWS CLI takes before `credential_process`, and the config file's
    /// keys after it.
    var keysInCredentialsFile = false

    subscript(_ key: String) -> String? { values[key].flatMap { $0.isEmpty ? nil : $0 } }

    var hasKeys: Bool { self["aws_access_key_id"] != nil && self["aws_secret_access_key"] != nil }

    var keys: Credentials? {
        guard let key = self["aws_access_key_id"], let secret = self["aws_secret_access_key"] else { return nil }
        return Credentials(accessKeyID: key, secretAccessKey: secret, sessionToken: self["aws_session_token"])
    }
}

extension SharedConfigFiles {
    /// The profile `name` from both files, nil when neither has it.
    func settings(_ name: String) -> ProfileSettings? {
        let fromConfig = config?.configProfile(name)
        let fromCredentials = credentials?.credentialsProfile(name)
        guard fromConfig != nil || fromCredentials != nil else { return nil }
        var settings = ProfileSettings(
            name: name, values: (fromConfig ?? [:]).merging(fromCredentials ?? [:]) { $1 })
        settings.keysInCredentialsFile = fromCredentials?["aws_access_key_id"].map { !$0.isEmpty } ?? false
        return settings
    }
}

/// A credential source that cannot work as configured: a setting is wrong or a login is needed. It stops the chain,
/// since the next source would hide the operator's intent (a profile asked for by name).
func credentialSetupError(_ message: String) -> AWSError {
    AWSError(kind: .credentials, service: "credentials", code: "CredentialSetup", message: message)
}

/// An unsigned call of a credential source (the SSO portal, STS's web identity, the container endpoint): its 2xx
/// reply, a transport failure as `service`'s error.
func unsignedCall(_ http: HTTPClient, _ request: HTTPRequest, service: String) async throws(AWSError) -> HTTPResponse {
    do {
        return try await http.execute(request)
    } catch {
        throw AWSError(transport: error, service: service)
    }
}

extension Timeouts {
    /// A credential source's call: 30 s at most, and never a trickle.
    static let credentialCall = Timeouts(connect: 5, lowSpeedBytes: 1, lowSpeedSeconds: 10, total: 30)
}

/// The JSON that `credential_process`, the container endpoint and the SSO portal answer with.
enum CredentialsJSON {
    /// `AccessKeyId`, `SecretAccessKey`, `SessionToken` or `Token`, `Expiration` (ISO 8601).
    static func parse(_ text: String, from source: String) throws(AWSError) -> Credentials {
        guard let json = try? JSONValue.parse(text) else {
            throw credentialSetupError("\(source) did not answer JSON")
        }
        guard let key = json["AccessKeyId"]?.stringValue, let secret = json["SecretAccessKey"]?.stringValue,
            !key.isEmpty, !secret.isEmpty
        else {
            throw credentialSetupError("\(source) answered without AccessKeyId and SecretAccessKey")
        }
        let expiration = json["Expiration"]?.stringValue.flatMap(CivilTime.parseISO8601)
            .map { Date(timeIntervalSince1970: TimeInterval($0)) }
        return Credentials(
            accessKeyID: key, secretAccessKey: secret,
            sessionToken: json["SessionToken"]?.stringValue ?? json["Token"]?.stringValue, expiration: expiration)
    }
}

// MARK: - credential_process

/// `credential_process` in a profile: a helper the operator trusts prints credentials as JSON (`Version` 1). It runs
/// without a shell, its words split as the AWS CLI splits them; its stderr is the operator's terminal's.
public struct ProcessCredentialProvider: CredentialProvider {
    public let name: String
    let command: String
    /// Seconds before a helper that has not finished is killed (the AWS SDK for Go's default, one minute).
    let timeout: Double

    public init(command: String, profile: String, timeout: Double = 60) {
        self.command = command
        self.name = "credential_process of profile \(profile)"
        self.timeout = timeout
    }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        let argv = ShellWords.split(command)
        guard !argv.isEmpty else { throw credentialSetupError("\(name) is empty") }
        let timeout = self.timeout
        let result = await runBlocking { ChildOutput.run(argv, timeout: timeout) }
        let output: String
        switch result {
        case .notStarted(let why): throw credentialSetupError("\(name): cannot start \(argv[0]): \(why)")
        case .timedOut: throw credentialSetupError("\(name) (\(argv[0])) did not finish within \(Int(timeout)) s")
        case .tooLong: throw credentialSetupError("\(name) (\(argv[0])) printed more than 1 MiB")
        case .exited(let status, _) where status != 0:
            throw credentialSetupError("\(name) (\(argv[0])) exited with status \(status)")
        case .exited(_, let printed): output = printed
        }
        guard let json = try? JSONValue.parse(output), json["Version"]?.intValue == 1 else {
            throw credentialSetupError("\(name) must print JSON with \"Version\": 1")
        }
        return try CredentialsJSON.parse(output, from: name)
    }
}

/// The AWS CLI's splitting of `credential_process`: words split on blanks, quotes group, a backslash escapes.
enum ShellWords {
    static func split(_ text: String) -> [String] {
        var words: [String] = []
        var word = ""
        var inWord = false
        var quote: Character?
        var escaped = false
        for c in text {
            if escaped {
                word.append(c)
                escaped = false
                continue
            }
            if c == "\\" && quote != "'" {
                escaped = true
                inWord = true
                continue
            }
            if let q = quote {
                if c == q { quote = nil } else { word.append(c) }
                continue
            }
            if c == "\"" || c == "'" {
                quote = c
                inWord = true
            } else if c == " " || c == "\t" || c == "\n" {
                if inWord { words.append(word) }
                word = ""
                inWord = false
            } else {
                word.append(c)
                inWord = true
            }
        }
        if inWord { words.append(word) }
        return words
    }
}

/// Runs a program (found on PATH) and reads its stdout, at most 1 MiB, for at most `timeout` seconds. It is started
/// as the daemon starts commands (`pz_spawn`): stdin from /dev/null (a command's own input, `enqueue --file -`, is
/// not the helper's), no descriptor of ours but its stdout pipe and our stderr, signals at their defaults, in a
/// process group of its own, killed whole when it runs out of time or prints too much.
enum ChildOutput {
    enum Result: Sendable, Equatable {
        case exited(Int32, String)
        case notStarted(String)
        case timedOut
        case tooLong
    }

    static let limit = 1 << 20

    /// `name` as a path: itself when it holds a `/`, else the first executable of that name on `PATH`.
    static func resolve(_ name: String) -> String? {
        if name.contains("/") { return name }
        let path = ProcessEnvironment.current().nonEmpty("PATH") ?? "/usr/local/bin:/usr/bin:/bin"
        for folder in path.split(separator: ":") where !folder.isEmpty {
            let candidate = "\(folder)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    /// A wait status as a shell reports it: the exit code, or 128 + the signal that ended the process.
    static func exitCode(waitStatus status: Int32) -> Int32 {
        (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
    }

    static func run(_ argv: [String], timeout: Double) -> Result {
        guard let path = resolve(argv[0]) else { return .notStarted("not found on PATH") }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return .notStarted(String(cString: strerror(errno))) }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var pid: pid_t = 0
        var inNamespace: Int32 = 0
        let spawned = pz_spawn(
            path, cArgs, environ, "/", fds[1], 2, 0, 0, 0, 0, nil, 0, nil, 0, &pid, &inNamespace)
        close(fds[1])
        guard spawned == 0 else {
            close(fds[0])
            return .notStarted(String(cString: strerror(spawned)))
        }
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        var ending: Result?
        while true {
            let left = deadline - ContinuousClock.now
            if left <= .zero {
                ending = .timedOut
                break
            }
            var poller = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            let wait = Int32(min(1000, max(1, left.components.seconds * 1000 + 1)))
            let ready = poll(&poller, 1, wait)
            if ready <= 0 { continue }
            let n = buffer.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            output += buffer[0..<n]
            if output.count > limit {
                ending = .tooLong
                break
            }
        }
        close(fds[0])
        if ending != nil { kill(-pid, SIGKILL) }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        if let ending { return ending }
        let exit = exitCode(waitStatus: status)
        return .exited(exit, String(decoding: output, as: UTF8.self))
    }
}

/// An operator's command run to its end (`controller --on-complete`): `/bin/sh -c command`, started as `ChildOutput`
/// starts its helpers (stdin from /dev/null, a process group of its own), with `environment` added to ours, its
/// stdout and stderr on our stderr (the journal, beside the lines that tell why it ran). Past `timeout` seconds its
/// whole group is killed.
public enum OperatorCommand {
    public enum Outcome: Sendable, Equatable {
        case exited(Int32)
        case notStarted(String)
        case timedOut
    }

    public static func run(_ command: String, environment: [String: String], timeout: Double) async -> Outcome {
        var merged = ProcessEnvironment.current()
        for (name, value) in environment { merged[name] = value }
        let argv: [String] = ["/bin/sh", "-c", command]
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = merged.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            cArgs.forEach { free($0) }
            cEnv.forEach { free($0) }
        }
        var pid: pid_t = 0
        var inNamespace: Int32 = 0
        let spawned = pz_spawn("/bin/sh", cArgs, cEnv, "/", 2, 2, 0, 0, 0, 0, nil, 0, nil, 0, &pid, &inNamespace)
        guard spawned == 0 else { return .notStarted(String(cString: strerror(spawned))) }
        let deadline = ContinuousClock.now + .milliseconds(Int(min(timeout, 1e6) * 1000))
        var status: Int32 = 0
        while true {
            let done = waitpid(pid, &status, WNOHANG)
            if done == pid { break }
            if done < 0 && errno != EINTR { return .exited(-1) }
            if ContinuousClock.now >= deadline {
                kill(-pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                return .timedOut
            }
            try? await Task.sleep(nanoseconds: 100_000_000)
        }
        return .exited(ChildOutput.exitCode(waitStatus: status))
    }
}

// MARK: - STS: an assumed role, a web identity

/// What an `AssumeRole` asks for (`role_arn`, `role_session_name`, `external_id`, `duration_seconds`).
public struct RoleToAssume: Sendable {
    public var roleARN: String
    public var sessionName: String
    public var externalID: String?
    public var durationSeconds: Int?

    public init(roleARN: String, sessionName: String?, externalID: String? = nil, durationSeconds: Int? = nil) {
        self.roleARN = roleARN
        self.sessionName = sessionName ?? "parallelizer-\(Int(Date().timeIntervalSince1970))"
        self.externalID = externalID
        self.durationSeconds = durationSeconds
    }

    var parameters: [(String, String)] {
        var p = [("RoleArn", roleARN), ("RoleSessionName", sessionName)]
        if let externalID { p.append(("ExternalId", externalID)) }
        if let durationSeconds { p.append(("DurationSeconds", "\(durationSeconds)")) }
        return p
    }
}

/// STS's query API, for the two calls the chain makes.
enum STSCall {
    static let version = "2011-06-15"

    static func form(_ action: String, _ parameters: [(String, String)]) -> [UInt8] {
        Array(URIEncoding.formatQuery([("Action", action), ("Version", version)] + parameters).utf8)
    }

    static func credentials(in body: [UInt8], action: String) throws(AWSError) -> Credentials {
        guard let xml = try? XML.parse(body), let c = xml.find("Credentials"), let key = c["AccessKeyId"],
            let secret = c["SecretAccessKey"]
        else { throw AWSError.badResponse("sts", "\(action) reply has no credentials") }
        let expiration = c["Expiration"].flatMap { CivilTime.parseISO8601($0.trimmingSpaces) }
            .map { Date(timeIntervalSince1970: TimeInterval($0)) }
        return Credentials(
            accessKeyID: key.trimmingSpaces, secretAccessKey: secret.trimmingSpaces,
            sessionToken: c["SessionToken"]?.trimmingSpaces, expiration: expiration)
    }
}

/// `role_arn` with `source_profile` or `credential_source`: STS AssumeRole, signed with the source's credentials.
public struct AssumeRoleProvider: CredentialProvider {
    public let name: String
    let role: RoleToAssume
    let source: any CredentialProvider
    let endpoint: ServiceEndpoint
    let http: HTTPClient

    public init(
        role: RoleToAssume, source: any CredentialProvider, endpoint: ServiceEndpoint, http: HTTPClient,
        profile: String
    ) {
        self.role = role
        self.source = source
        self.endpoint = endpoint
        self.http = http
        self.name = "role \(role.roleARN) of profile \(profile) (from \(source.name))"
    }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        let client = AWSClient(http: http, credentials: source, retry: RetryPolicy(maxAttempts: 3))
        let request = AWSRequest(
            method: "POST", path: "/",
            headers: [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
            body: .bytes(STSCall.form("AssumeRole", role.parameters)))
        let response = try await client.send(request, to: endpoint, signing: .standard, logger: logger)
        return try STSCall.credentials(in: response.body, action: "AssumeRole")
    }
}

/// `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN` (EKS, CI runners), or `web_identity_token_file` with `role_arn`
/// in a profile: STS AssumeRoleWithWebIdentity, an unsigned call that carries the token, read afresh each time
/// (the orchestrator rotates the file).
public struct WebIdentityProvider: CredentialProvider {
    public let name: String
    let tokenFile: String
    let role: RoleToAssume
    let endpoint: ServiceEndpoint
    let http: HTTPClient

    public init(tokenFile: String, role: RoleToAssume, endpoint: ServiceEndpoint, http: HTTPClient) {
        self.tokenFile = tokenFile
        self.role = role
        self.endpoint = endpoint
        self.http = http
        self.name = "web identity \(tokenFile) for \(role.roleARN)"
    }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        guard let token = LocalFile.readText(tokenFile)?.trimmingSpaces, !token.isEmpty else {
            throw credentialSetupError("the web identity token file \(tokenFile) cannot be read")
        }
        var parameters = role.parameters.filter { $0.0 != "ExternalId" }
        parameters.append(("WebIdentityToken", token))
        let response = try await unsignedCall(
            http,
            HTTPRequest(
                method: "POST", url: endpoint.origin + endpoint.basePath + "/",
                headers: [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
                body: .bytes(STSCall.form("AssumeRoleWithWebIdentity", parameters)), timeouts: .credentialCall),
            service: "sts")
        guard response.isSuccess else { throw AWSError.from(response: response, service: "sts") }
        return try STSCall.credentials(in: response.body, action: "AssumeRoleWithWebIdentity")
    }
}

// MARK: - The container endpoint (ECS, CloudShell)

/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` (at 169.254.170.2) or `AWS_CONTAINER_CREDENTIALS_FULL_URI`, with
/// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` (read each time) or `AWS_CONTAINER_AUTHORIZATION_TOKEN`. A full URI must
/// be HTTPS or a host the SDKs allow (loopback, ECS's and EKS's link-local addresses): the token is not sent to
/// anything else.
public struct ContainerCredentialProvider: CredentialProvider {
    public let name = "container endpoint"
    let url: String
    let tokenFile: String?
    let token: String?
    let http: HTTPClient

    /// Nil when the environment names no container endpoint.
    public init?(environment: [String: String], http: HTTPClient) {
        if let relative = environment.nonEmpty("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI") {
            url = "http://169.254.170.2" + (relative.hasPrefix("/") ? relative : "/" + relative)
        } else if let full = environment.nonEmpty("AWS_CONTAINER_CREDENTIALS_FULL_URI") {
            url = full
        } else {
            return nil
        }
        tokenFile = environment.nonEmpty("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
        token = environment.nonEmpty("AWS_CONTAINER_AUTHORIZATION_TOKEN")
        self.http = http
    }

    /// HTTPS anywhere; plain HTTP only to a loopback address (`localhost`, 127.0.0.0/8, ::1) or ECS's and EKS's
    /// link-local ones, each read as an address, not matched as text (`127.evil.example` is a name).
    static func allowed(_ url: String) -> Bool {
        guard let parsed = ParsedURL(url) else { return false }
        if parsed.scheme == "https" { return true }
        let host = parsed.host.lowercased()
        if host == "localhost" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            let octets = withUnsafeBytes(of: v4.s_addr) { Array($0) }
            return octets[0] == 127 || host == "169.254.170.2" || host == "169.254.170.23"
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            let bytes = withUnsafeBytes(of: v6) { Array($0) }
            let loopback = bytes == [UInt8](repeating: 0, count: 15) + [1]
            let eks: [UInt8] = [0xfd, 0, 0x0e, 0xc2] + [UInt8](repeating: 0, count: 11) + [0x23]
            return loopback || bytes == eks
        }
        return false
    }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        guard Self.allowed(url) else {
            throw credentialSetupError(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI \(url) is neither HTTPS nor a loopback or container address")
        }
        var headers: [(String, String)] = [("Accept", "application/json")]
        var authorization: String?
        if let tokenFile {
            guard let value = LocalFile.readText(tokenFile)?.trimmingSpaces else {
                throw credentialSetupError("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE \(tokenFile) cannot be read")
            }
            authorization = value
        } else if let token {
            authorization = token
        }
        if let authorization {
            // A line break would end the header and start another: the SDKs refuse such a token.
            guard !authorization.contains(where: { $0 == "\r" || $0 == "\n" }) else {
                throw credentialSetupError("the container authorization token holds a line break")
            }
            headers.append(("Authorization", authorization))
        }
        var request = HTTPRequest(
            method: "GET", url: url, headers: headers,
            timeouts: Timeouts(connect: 2, lowSpeedBytes: 0, lowSpeedSeconds: 0, total: 5))
        request.direct = true
        let response = try await unsignedCall(http, request, service: "container-credentials")
        guard response.isSuccess else {
            throw AWSError(
                kind: .credentials, service: "container-credentials", httpStatus: response.status,
                code: "ContainerCredentials",
                message:
                    "the container endpoint answered \(response.status): \(String(decoding: response.body.prefix(200), as: UTF8.self))"
            )
        }
        return try CredentialsJSON.parse(String(decoding: response.body, as: UTF8.self), from: name)
    }
}

// MARK: - IAM Identity Center (SSO)

/// `sso_session` (with an `[sso-session]` section) or the legacy `sso_start_url`/`sso_region` keys, with
/// `sso_account_id` and `sso_role_name`: the token `aws sso login` cached in `~/.aws/sso/cache`, traded at the
/// portal (`GET /federation/credentials`) for the role's credentials. An expired token needs a new login, which
/// only the AWS CLI does.
public struct SSOCredentialProvider: CredentialProvider {
    public let name: String
    let profile: String
    let cacheFile: String
    let accountID: String
    let roleName: String
    let portal: String
    /// IAM Identity Center's OIDC endpoint, where an `sso_session`'s token is refreshed; nil for the legacy keys,
    /// whose token cannot be.
    let oidc: String?
    let http: HTTPClient
    let now: @Sendable () -> Date

    /// A token this close to its end is refreshed first, as the AWS CLI does (15 minutes).
    static let refreshWindow: TimeInterval = 900

    init(
        profile: String, cacheKey: String, accountID: String, roleName: String, portal: String, oidc: String? = nil,
        environment: [String: String], http: HTTPClient, now: @escaping @Sendable () -> Date
    ) {
        self.oidc = oidc
        self.profile = profile
        let home = environment.nonEmpty("HOME") ?? "/root"
        cacheFile = "\(home)/.aws/sso/cache/\(Digest.sha1(Array(cacheKey.utf8)).hexString).json"
        self.accountID = accountID
        self.roleName = roleName
        self.portal = portal
        self.http = http
        self.now = now
        name = "SSO role \(roleName) in \(accountID) of profile \(profile)"
    }

    public func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        let login = "run: aws sso login --profile \(profile)"
        guard let text = LocalFile.readText(cacheFile), var cached = try? JSONValue.parse(text),
            var token = cached["accessToken"]?.stringValue
        else {
            throw credentialSetupError("no SSO token cached for profile \(profile) (\(cacheFile)); \(login)")
        }
        let expires = cached["expiresAt"]?.stringValue.flatMap(CivilTime.parseISO8601).map { Double($0) }
        let current = now().timeIntervalSince1970
        if let expires, expires - current < Self.refreshWindow, let refreshed = await refresh(cached, logger: logger) {
            cached = refreshed
            token = refreshed["accessToken"]?.stringValue ?? token
        } else if let expires, expires <= current {
            throw credentialSetupError(
                "the SSO token of profile \(profile) expired at \(cached["expiresAt"]?.stringValue ?? "?"); \(login)")
        }
        let query = URIEncoding.formatQuery([("account_id", accountID), ("role_name", roleName)])
        let response = try await unsignedCall(
            http,
            HTTPRequest(
                method: "GET", url: portal + "/federation/credentials?" + query,
                headers: [("x-amz-sso_bearer_token", token), ("Accept", "application/json")],
                timeouts: .credentialCall),
            service: "sso")
        if response.status == 401 || response.status == 403 {
            throw credentialSetupError(
                "the SSO portal refused the token of profile \(profile) (\(response.status)): it expired or was revoked; \(login)"
            )
        }
        guard response.isSuccess else { throw AWSError.from(response: response, service: "sso") }
        guard let json = try? JSONValue.parse(response.body), let role = json["roleCredentials"],
            let key = role["accessKeyId"]?.stringValue, let secret = role["secretAccessKey"]?.stringValue
        else { throw AWSError.badResponse("sso", "GetRoleCredentials reply has no roleCredentials") }
        // Milliseconds since 1970.
        let expiration = role["expiration"]?.intValue.map { Date(timeIntervalSince1970: Double($0) / 1000) }
        return Credentials(
            accessKeyID: key, secretAccessKey: secret, sessionToken: role["sessionToken"]?.stringValue,
            expiration: expiration)
    }
}

extension SSOCredentialProvider {
    /// Refreshes an `sso_session`'s token with the refresh token `aws sso login` cached beside it (SSO-OIDC
    /// CreateToken, `grant_type` refresh_token), and writes the new one back to the cache, as the AWS CLI does, so the
    /// CLI and parallelizer go on sharing one login. Nil when it cannot be refreshed (the legacy keys, no refresh
    /// token, a client registration that expired, a refused refresh): the cached token is then used while it lasts.
    func refresh(_ cached: JSONValue, logger: Logger) async -> JSONValue? {
        guard let oidc, var fields = cached.objectValue, let clientID = cached["clientId"]?.stringValue,
            let secret = cached["clientSecret"]?.stringValue, let refreshToken = cached["refreshToken"]?.stringValue
        else { return nil }
        if let registration = cached["registrationExpiresAt"]?.stringValue.flatMap(CivilTime.parseISO8601),
            Double(registration) <= now().timeIntervalSince1970
        {
            return nil
        }
        let body = JSONValue.object([
            "grantType": .string("refresh_token"), "clientId": .string(clientID), "clientSecret": .string(secret),
            "refreshToken": .string(refreshToken),
        ]).serialized
        do {
            let response = try await unsignedCall(
                http,
                HTTPRequest(
                    method: "POST", url: oidc + "/token", headers: [("Content-Type", "application/json")],
                    body: .bytes(Array(body.utf8)), timeouts: .credentialCall),
                service: "sso-oidc")
            guard response.isSuccess, let reply = try? JSONValue.parse(response.body),
                let token = reply["accessToken"]?.stringValue, let lifetime = reply["expiresIn"]?.intValue
            else {
                logger.notice(
                    "the SSO token could not be refreshed",
                    metadata: ["profile": "\(profile)", "status": "\(response.status)"])
                return nil
            }
            fields["accessToken"] = .string(token)
            fields["expiresAt"] = .string(
                CivilTime(date: Date(timeIntervalSince1970: now().timeIntervalSince1970 + Double(lifetime))).iso8601)
            if let rotated = reply["refreshToken"]?.stringValue { fields["refreshToken"] = .string(rotated) }
            let updated = JSONValue.object(fields)
            // Written back only to a cache file of our own: as root with another user's HOME, a root-owned file would
            // lock that user's AWS CLI out of its own login.
            var st = stat()
            if stat(cacheFile, &st) == 0 && st.st_uid != geteuid() {
                logger.info("SSO token refreshed (not written back: the cache file is another user's)")
                return updated
            }
            if !LocalFile.writeAtomically(cacheFile, Array(updated.serialized.utf8), mode: 0o600) {
                logger.notice("the refreshed SSO token could not be written back", metadata: ["file": "\(cacheFile)"])
            }
            logger.info("SSO token refreshed", metadata: ["profile": "\(profile)"])
            return updated
        } catch {
            logger.notice(
                "the SSO token could not be refreshed", metadata: ["profile": "\(profile)", "error": "\(error)"])
            return nil
        }
    }
}

// MARK: - Profiles, as the AWS CLI resolves them

/// Turns a profile into its credential source, following `source_profile` chains: `role_arn` (with
/// `source_profile`, `credential_source` or `web_identity_token_file`), then SSO, then keys, then
/// `credential_process`.
struct ProfileResolver: Sendable {
    let files: SharedConfigFiles
    let environment: [String: String]
    let region: String
    let http: HTTPClient
    let imds: IMDSClient?
    let now: @Sendable () -> Date

    func provider(_ name: String) throws(AWSError) -> (any CredentialProvider)? {
        try provider(name, visited: [])
    }

    private func provider(_ name: String, visited: [String]) throws(AWSError) -> (any CredentialProvider)? {
        guard let p = files.settings(name) else {
            if visited.isEmpty { return try environmentWebIdentity() }
            throw credentialSetupError("source_profile \(name) (of profile \(visited.last ?? "")) does not exist")
        }
        // A source profile with keys gives its keys, even with a role of its own (as the AWS CLI reads it).
        if !visited.isEmpty, let keys = p.keys { return StaticCredentialProvider(keys) }
        if let roleARN = p["role_arn"] {
            if p["mfa_serial"] != nil {
                throw credentialSetupError(
                    "profile \(name) asks for an MFA code (mfa_serial), which parallelizer cannot prompt for: use aws sts get-session-token, or a credential_process that asks"
                )
            }
            let role = RoleToAssume(
                roleARN: roleARN, sessionName: p["role_session_name"], externalID: p["external_id"],
                durationSeconds: p["duration_seconds"].flatMap { Int($0) })
            let sts = try stsEndpoint(p)
            if let tokenFile = p["web_identity_token_file"] {
                return RefreshingCredentials(
                    WebIdentityProvider(tokenFile: tokenFile, role: role, endpoint: sts, http: http), now: now)
            }
            let source: any CredentialProvider
            if let sourceName = p["source_profile"] {
                if sourceName == name, let keys = p.keys {
                    // A profile may name itself: its own keys assume its role.
                    source = StaticCredentialProvider(keys)
                } else if visited.contains(sourceName) || sourceName == name {
                    throw credentialSetupError(
                        "profiles \((visited + [name, sourceName]).joined(separator: " -> ")) form a loop")
                } else if let found = try provider(sourceName, visited: visited + [name]) {
                    source = found
                } else {
                    throw credentialSetupError("source_profile \(sourceName) has no credentials")
                }
            } else if let named = p["credential_source"] {
                source = try credentialSource(named, profile: name)
            } else {
                throw credentialSetupError(
                    "profile \(name) has role_arn but neither source_profile nor credential_source")
            }
            return RefreshingCredentials(
                AssumeRoleProvider(role: role, source: source, endpoint: sts, http: http, profile: name), now: now)
        }
        // The AWS CLI's order after an assumed role: web identity, SSO, the credentials file's keys,
        // credential_process, the config file's keys.
        if visited.isEmpty, let webIdentity = try environmentWebIdentity() { return webIdentity }
        if p["sso_account_id"] != nil || p["sso_role_name"] != nil {
            return RefreshingCredentials(try sso(p), now: now)
        }
        if p.keysInCredentialsFile, let keys = p.keys { return StaticCredentialProvider(keys) }
        if let command = p["credential_process"] {
            return RefreshingCredentials(ProcessCredentialProvider(command: command, profile: name), now: now)
        }
        if let keys = p.keys { return StaticCredentialProvider(keys) }
        if !visited.isEmpty { throw credentialSetupError("source_profile \(name) has no credentials") }
        return nil
    }

    /// `AWS_WEB_IDENTITY_TOKEN_FILE` with `AWS_ROLE_ARN` (and `AWS_ROLE_SESSION_NAME`), as EKS and CI runners set them.
    private func environmentWebIdentity() throws(AWSError) -> (any CredentialProvider)? {
        guard let tokenFile = environment.nonEmpty("AWS_WEB_IDENTITY_TOKEN_FILE"),
            let roleARN = environment.nonEmpty("AWS_ROLE_ARN")
        else { return nil }
        let sts = try ServiceEndpoint.resolve(service: "sts", region: region, environment: environment, files: files)
        let role = RoleToAssume(roleARN: roleARN, sessionName: environment.nonEmpty("AWS_ROLE_SESSION_NAME"))
        return RefreshingCredentials(
            WebIdentityProvider(tokenFile: tokenFile, role: role, endpoint: sts, http: http), now: now)
    }

    /// `credential_source`: where the keys that assume the role come from.
    private func credentialSource(_ named: String, profile: String) throws(AWSError) -> any CredentialProvider {
        switch named {
        case "Environment":
            return EnvironmentCredentialProvider(environment: environment)
        case "Ec2InstanceMetadata":
            guard let imds else {
                throw credentialSetupError(
                    "profile \(profile) takes credential_source Ec2InstanceMetadata, but IMDS is disabled")
            }
            return RefreshingCredentials(InstanceRoleCredentialProvider(imds: imds), now: now)
        case "EcsContainer":
            guard let container = ContainerCredentialProvider(environment: environment, http: http) else {
                throw credentialSetupError(
                    "profile \(profile) takes credential_source EcsContainer, but AWS_CONTAINER_CREDENTIALS_* is unset")
            }
            return RefreshingCredentials(container, now: now)
        default:
            throw credentialSetupError(
                "profile \(profile): credential_source \(named) is not Environment, Ec2InstanceMetadata or EcsContainer"
            )
        }
    }

    private func sso(_ p: ProfileSettings) throws(AWSError) -> SSOCredentialProvider {
        guard let account = p["sso_account_id"], let role = p["sso_role_name"] else {
            throw credentialSetupError("profile \(p.name) has SSO settings without sso_account_id and sso_role_name")
        }
        let cacheKey: String
        let ssoRegion: String?
        if let session = p["sso_session"] {
            guard let section = files.config?.ssoSession(session) else {
                throw credentialSetupError("profile \(p.name) names sso_session \(session), which has no section")
            }
            cacheKey = session
            ssoRegion = section["sso_region"]
        } else {
            cacheKey = p["sso_start_url"] ?? ""
            ssoRegion = p["sso_region"]
        }
        guard let ssoRegion, !ssoRegion.isEmpty else {
            throw credentialSetupError("profile \(p.name) has no sso_region")
        }
        let portal =
            ServiceEndpoint.configuredURL(service: "sso", environment: environment, files: files)
            ?? "https://portal.sso.\(ssoRegion).\(ssoRegion.hasPrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com")"
        let suffix = ssoRegion.hasPrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com"
        let oidc =
            p["sso_session"] == nil
            ? nil
            : ServiceEndpoint.configuredURL(service: "sso-oidc", environment: environment, files: files)
                ?? "https://oidc.\(ssoRegion).\(suffix)"
        return SSOCredentialProvider(
            profile: p.name, cacheKey: cacheKey, accountID: account, roleName: role,
            portal: portal.hasSuffix("/") ? String(portal.dropLast()) : portal,
            oidc: oidc.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 }, environment: environment, http: http,
            now: now)
    }

    private func stsEndpoint(_ p: ProfileSettings) throws(AWSError) -> ServiceEndpoint {
        try ServiceEndpoint.resolve(
            service: "sts", region: p["region"] ?? region, environment: environment, files: files)
    }
}
