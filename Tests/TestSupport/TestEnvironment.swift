import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import HTTPCurl
import Logging
import Synchronization
import Testing

/// The local servers `scripts/test` started, read from its `PZ_TEST_*` variables.
///
/// A test that needs a server uses `.enabled(if: TestEnvironment.canRun(.moto))`: without the server it is skipped
/// with a visible reason on a developer's machine, and under `CI=true` it runs and fails, since CI must never pass
/// by skipping.
public enum TestEnvironment {
    public enum Server: String, Sendable { case moto, seaweed, imds, httpStub, microburst }

    public static let environment = ProcessEnvironment.current()
    public static var isCI: Bool { environment.flag("CI") }

    static func variable(_ server: Server) -> String {
        switch server {
        case .moto: return "PZ_TEST_MOTO_ENDPOINT"
        case .seaweed: return "PZ_TEST_SEAWEED_ENDPOINT"
        case .imds: return "PZ_TEST_IMDS_ENDPOINT"
        case .httpStub: return "PZ_TEST_HTTP_STUB"
        case .microburst: return "PZ_TEST_MICROBURST_ENDPOINT"
        }
    }

    public static func has(_ server: Server) -> Bool { environment.nonEmpty(variable(server)) != nil }
    public static func canRun(_ servers: Server...) -> Bool { isCI || servers.allSatisfy(has) }

    public struct Missing: Error, CustomStringConvertible {
        public let name: String
        public var description: String {
            "\(name) is not set: run the suite through scripts/test, which starts the servers"
        }
    }

    public static func value(_ name: String) throws -> String {
        guard let value = environment.nonEmpty(name) else { throw Missing(name: name) }
        return value
    }

    public static func endpoint(_ server: Server) throws -> String { try value(variable(server)) }

    /// What `scripts/test` preloads for a skewed clock: libfaketime behind its timerfd shim.
    /// - Throws: `RequiredTool.Missing` naming Debian's libfaketime when scripts/test found no libfaketime.
    public static func faketimePreload() throws -> String {
        guard let preload = environment.nonEmpty("PZ_TEST_FAKETIME_LIB") else {
            throw RequiredTool.Missing(program: "libfaketime.so.1", package: "libfaketime")
        }
        return preload
    }

    /// What the HTTP stub's last PUT or POST to `path` received: length, sha256, headers (and tries, where counted).
    public static func stubLast(_ path: String) async throws -> JSONValue {
        try JSONValue.parse(
            try await HTTPClient().execute(
                HTTPRequest(method: "GET", url: try endpoint(.httpStub) + "/last" + path)
            ).body)
    }

    // MARK: - Credentials for each server

    public static func motoCredentials() throws -> Credentials {
        Credentials(accessKeyID: try value("PZ_TEST_MOTO_KEY"), secretAccessKey: try value("PZ_TEST_MOTO_SECRET"))
    }

    /// Temporary credentials from moto's STS (AssumeRole): an `ASIA…` key with a session token.
    public static func motoSessionCredentials() throws -> Credentials {
        Credentials(
            accessKeyID: try value("PZ_TEST_MOTO_SESSION_KEY"),
            secretAccessKey: try value("PZ_TEST_MOTO_SESSION_SECRET"),
            sessionToken: try value("PZ_TEST_MOTO_SESSION_TOKEN"))
    }

    public static func seaweedCredentials() throws -> Credentials {
        Credentials(accessKeyID: try value("PZ_TEST_SEAWEED_KEY"), secretAccessKey: try value("PZ_TEST_SEAWEED_SECRET"))
    }

    public static func seaweedSessionCredentials() throws -> Credentials {
        Credentials(
            accessKeyID: try value("PZ_TEST_SEAWEED_SESSION_KEY"),
            secretAccessKey: try value("PZ_TEST_SEAWEED_SESSION_SECRET"),
            sessionToken: try value("PZ_TEST_SEAWEED_SESSION_TOKEN"))
    }

    /// A context whose every service points at `endpoint`, with fixed credentials and IMDS off.
    public static func context(
        endpoint: String, credentials: Credentials, region: String = "us-east-1",
        retry: RetryPolicy = RetryPolicy(maxAttempts: 4, baseDelay: 0.05, maxDelay: 0.5),
        now: @escaping @Sendable () -> Date = { Date() }
    ) -> AWSContext {
        let client = AWSClient(
            http: HTTPClient(), credentials: StaticCredentialProvider(credentials), retry: retry, now: now)
        return AWSContext(
            region: region, client: client, imds: nil,
            environment: ["AWS_ENDPOINT_URL": endpoint, "AWS_EC2_METADATA_DISABLED": "true"])
    }

    public static func motoContext(region: String = "us-east-1") throws -> AWSContext {
        context(endpoint: try endpoint(.moto), credentials: try motoCredentials(), region: region)
    }

    /// A moto context whose connections go through the microburst fault proxy (signatures stay moto's).
    public static func faultContext(retry: RetryPolicy = RetryPolicy(maxAttempts: 4, baseDelay: 0.05, maxDelay: 0.5))
        throws -> AWSContext
    {
        let moto = try #require(ParsedURL(try endpoint(.moto)))
        let proxy = try #require(ParsedURL(try endpoint(.microburst)))
        let client = AWSClient(
            http: HTTPClient(), credentials: StaticCredentialProvider(try motoCredentials()),
            retry: retry, connectTo: ["\(moto.host):\(moto.port!):\(proxy.host):\(proxy.port!)"])
        return AWSContext(
            region: "us-east-1", client: client, imds: nil,
            environment: ["AWS_ENDPOINT_URL": try endpoint(.moto), "AWS_EC2_METADATA_DISABLED": "true"])
    }

    /// Replaces the fault proxy's rules (`[]` clears them).
    public static func setFaultRules(_ json: String) async throws {
        let response = try await HTTPClient().execute(
            HTTPRequest(
                method: "POST", url: try endpoint(.microburst) + "/_microburst/rules",
                headers: [("Content-Type", "application/json")], body: .bytes(Array(json.utf8))))
        guard response.status == 200 else { throw Missing(name: "microburst rules: HTTP \(response.status)") }
    }

    /// The environment that makes `parallelizer` route its connections to moto through the fault proxy, while it
    /// still signs for moto's own URL (`PARALLELIZER_CONNECT_TO`, curl's connect-to).
    public static func routeThroughFaultProxy() throws -> [String: String] {
        guard let moto = ParsedURL(try endpoint(.moto)), let proxy = ParsedURL(try endpoint(.microburst)),
            let motoPort = moto.port, let proxyPort = proxy.port
        else { throw Missing(name: "a port in PZ_TEST_MOTO_ENDPOINT or PZ_TEST_MICROBURST_ENDPOINT") }
        return ["PARALLELIZER_CONNECT_TO": "\(moto.host):\(motoPort):\(proxy.host):\(proxyPort)"]
    }

    /// How many faults the proxy has injected so far (its fired log).
    public static func faultsFired() async throws -> Int {
        let response = try await HTTPClient().execute(
            HTTPRequest(
                method: "GET", url: try endpoint(.microburst) + "/_microburst/fired?limit=1000000"))
        return try JSONValue.parse(response.body).arrayValue?.count ?? 0
    }

    public static func seaweedContext(now: @escaping @Sendable () -> Date = { Date() }) throws -> AWSContext {
        context(endpoint: try endpoint(.seaweed), credentials: try seaweedCredentials(), now: now)
    }
}

// MARK: - Names, files and logs

/// A name no other test (or earlier run) uses: S3- and SQS-safe.
public func uniqueName(_ prefix: String) -> String {
    "\(prefix)-\(UInt64.random(in: 0..<UInt64.max) % 1_000_000_000_000)"
}

/// Runs `body` with a fresh directory that is removed afterwards, whatever happens.
public func withTemporaryDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
    var template = Array("/tmp/pz-test-XXXXXX".utf8CString)
    guard let made = mkdtemp(&template) else { throw TestEnvironment.Missing(name: "mkdtemp") }
    let path = String(cString: made)
    defer {
        // Every log, output and record a test left is searched for the secrets of this run before it goes.
        for leak in SecretScan.scan(directory: path) { Issue.record("a secret leaked: \(leak)") }
        // PZ_TEST_KEEP_DIRS=1 keeps each test's folder (its workers' logs) for a look after a failure.
        if TestEnvironment.environment.nonEmpty("PZ_TEST_KEEP_DIRS") == nil {
            removeTree(path)
        } else {
            print("kept \(path)")
        }
    }
    return try await body(path)
}

public func removeTree(_ path: String) { LocalFile.removeTree(path) }

/// Writes `size` bytes of a pattern seeded by `seed` to `path`, in 1 MiB chunks.
public func makeFile(_ path: String, size: Int, seed: UInt8 = 7) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    precondition(fd >= 0, "cannot create \(path)")
    defer { close(fd) }
    var chunk = [UInt8](repeating: 0, count: 1 << 20)
    for i in 0..<chunk.count { chunk[i] = UInt8(truncatingIfNeeded: i &* 31 &+ Int(seed)) }
    var remaining = size
    while remaining > 0 {
        let n = min(remaining, chunk.count)
        _ = chunk.withUnsafeBytes { write(fd, $0.baseAddress, n) }
        remaining -= n
    }
}

/// The SHA-256 of a whole file, hex.
public func fileSHA256(_ path: String) async throws -> String {
    try await FileDigest.compute(path: path, length: LocalFile.size(path) ?? 0, algorithm: .sha256).hexString
}

public func fileExists(_ path: String) -> Bool { access(path, F_OK) == 0 }

/// The port a test server wrote to `path` once it listened, or nil after `seconds`. Servers pick a free port
/// themselves and write it down (renamed into place, so it is never read half written): a port chosen by the test
/// may be taken, and a fixed wait for start-up fails under load.
public func portWritten(to path: String, within seconds: Int = 30) async -> Int? {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if let port = LocalFile.readText(path).flatMap({ Int($0) }) { return port }
        try? await Task.sleep(nanoseconds: 50_000_000)
    }
    return nil
}

/// A log handler that keeps every line, for asserting on warnings and on the absence of secrets.
public final class CapturedLogs: Sendable {
    private let storage = Mutex<[(Logger.Level, String)]>([])
    public init() {}

    public var lines: [String] { storage.withLock { $0.map { "\($0.0) \($0.1)" } } }
    public func contains(level: Logger.Level, _ text: String) -> Bool {
        storage.withLock { $0.contains { $0.0 == level && $0.1.contains(text) } }
    }
    func append(_ level: Logger.Level, _ line: String) { storage.withLock { $0.append((level, line)) } }

    public func logger(_ label: String = "test", level: Logger.Level = .trace) -> Logger {
        var logger = Logger(label: label) { _ in CapturingHandler(logs: self) }
        logger.logLevel = level
        return logger
    }
}

struct CapturingHandler: LogHandler {
    let logs: CapturedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        let meta = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        logs.append(event.level, "\(event.message) \(meta)")
    }
}

/// A logger that drops everything (for tests that do not look at logs).
public let quietLogger: Logger = {
    var logger = Logger(label: "quiet") { _ in SwiftLogNoOpLogHandler() }
    logger.logLevel = .critical
    return logger
}()

/// Looks for this run's secrets (secret keys, session tokens) in the files a test left behind: the workers' logs,
/// the commands' outputs, fetched failure records. Wired into `withTemporaryDirectory`, so every suite is covered.
public enum SecretScan {
    /// The secret values of this run: the servers' secret keys, session secrets and tokens, the IMDS stand-in's.
    public static var secrets: [String] {
        let names = [
            "PZ_TEST_MOTO_SECRET", "PZ_TEST_MOTO_SESSION_SECRET", "PZ_TEST_MOTO_SESSION_TOKEN",
            "PZ_TEST_SEAWEED_SECRET",
            "PZ_TEST_SEAWEED_SESSION_SECRET", "PZ_TEST_SEAWEED_SESSION_TOKEN",
        ]
        return names.compactMap { TestEnvironment.environment.nonEmpty($0) } + ["standin-secret", "standin-token"]
    }

    /// Files that are meant to hold a secret: a report a test asked the command to write with passCredentials.
    public static func exempt(_ name: String) -> Bool { name.hasSuffix(".report") || name.hasSuffix(".params") }

    /// The first characters of each secret `text` holds (enough to tell which, not enough to leak it again).
    public static func leaks(in text: String, secrets: [String] = secrets) -> [String] {
        leaks(in: Array(text.utf8), secrets: secrets)
    }

    /// The same over raw bytes, with memchr and memcmp: scanning megabytes of test data stays quick in a debug build.
    public static func leaks(in bytes: [UInt8], secrets: [String] = secrets) -> [String] {
        secrets.filter { secret in
            let needle = Array(secret.utf8)
            guard needle.count >= 8 else { return false }
            return bytes.withUnsafeBytes { haystack in
                guard let base = haystack.baseAddress, haystack.count >= needle.count else { return false }
                var position = 0
                let last = haystack.count - needle.count
                while position <= last, let hit = memchr(base + position, Int32(needle[0]), last - position + 1) {
                    position = base.distance(to: UnsafeRawPointer(hit))
                    if memcmp(base + position, needle, needle.count) == 0 { return true }
                    position += 1
                }
                return false
            }
        }.map { "\($0.prefix(4))…" }
    }

    /// `file: which secret` for each hit, walking `directory` (files up to 8 MiB).
    public static func scan(directory: String, secrets: [String] = secrets) -> [String] {
        var hits: [String] = []
        func walk(_ dir: String) {
            for name in LocalFile.listDirectory(dir) {
                let full = dir + "/" + name
                var info = stat()
                guard lstat(full, &info) == 0 else { continue }
                if info.st_mode & S_IFMT == S_IFDIR {
                    walk(full)
                    continue
                }
                guard info.st_mode & S_IFMT == S_IFREG, info.st_size < 8 << 20, !exempt(name),
                    let bytes = LocalFile.read(full)
                else { continue }
                hits += leaks(in: bytes, secrets: secrets).map { "\(full) holds \($0)" }
            }
        }
        walk(directory)
        return hits
    }
}
