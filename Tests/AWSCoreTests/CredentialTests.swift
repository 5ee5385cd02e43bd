import AWSCore
import FoundationEssentials
import Synchronization
import TestSupport
import Testing
import Glibc
import Logging

/// A source that counts fetches, can be told to fail, and hands out credentials expiring at a set time.
final class ScriptedSource: CredentialProvider, @unchecked Sendable {
    let name = "scripted"
    let fetches = Atomic<Int>(0)
    let failing = Atomic<Bool>(false)
    let lifetime: TimeInterval
    let clock: TestClock
    let delay: UInt64

    init(clock: TestClock, lifetime: TimeInterval, delayNanoseconds: UInt64 = 0) {
        self.clock = clock
        self.lifetime = lifetime
        self.delay = delayNanoseconds
    }

    func credentials(logger: Logger) async throws(AWSError) -> Credentials? {
        let n = fetches.add(1, ordering: .relaxed).newValue
        if delay > 0 { try? await Task.sleep(nanoseconds: delay) }
        if failing.load(ordering: .relaxed) {
            throw AWSError(kind: .transport(.connect), service: "imds", code: "TransportError", message: "IMDS down")
        }
        return Credentials(
            accessKeyID: "ASIA\(n)", secretAccessKey: "SECRET-\(n)", sessionToken: "TOKEN-\(n)",
            expiration: clock.now().addingTimeInterval(lifetime))
    }
}

final class TestClock: Sendable {
    private let seconds = Mutex<Double>(1_700_000_000)
    func now() -> Date { Date(timeIntervalSince1970: seconds.withLock { $0 }) }
    func advance(_ by: Double) { seconds.withLock { $0 += by } }
}

@Suite struct CredentialTests {
    @Test func environmentComesFirst() async throws {
        try await withTemporaryDirectory { dir in
            LocalFile.write(
                "\(dir)/credentials",
                Array("[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = FILESECRET\n".utf8))
            let env = [
                "AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "ENVSECRET", "AWS_SESSION_TOKEN": "ENVTOKEN",
                "AWS_SHARED_CREDENTIALS_FILE": "\(dir)/credentials",
            ]
            let creds = try await CredentialChain.default(environment: env, imds: nil).credentials(logger: quietLogger)
            #expect(creds?.accessKeyID == "ENVKEY")
            #expect(creds?.sessionToken == "ENVTOKEN")
        }
    }

    @Test func sharedFilesWithProfiles() async throws {
        try await withTemporaryDirectory { dir in
            LocalFile.write(
                "\(dir)/credentials",
                Array(
                    """
                    [default]
                    aws_access_key_id = DEFKEY
                    aws_secret_access_key = DEFSECRET
                    [work]
                    aws_access_key_id=WORKKEY
                    aws_secret_access_key=WORKSECRET
                    aws_session_token=WORKTOKEN
                    """.utf8))
            LocalFile.write(
                "\(dir)/config",
                Array("[profile cfgonly]\naws_access_key_id = CFGKEY\naws_secret_access_key = CFGSECRET\n".utf8))
            let base = ["AWS_SHARED_CREDENTIALS_FILE": "\(dir)/credentials", "AWS_CONFIG_FILE": "\(dir)/config"]
            func key(_ extra: [String: String]) async throws -> String? {
                try await CredentialChain.default(environment: base.merging(extra) { $1 }, imds: nil)
                    .credentials(logger: quietLogger)?.accessKeyID
            }
            #expect(try await key([:]) == "DEFKEY")
            #expect(try await key(["AWS_PROFILE": "work"]) == "WORKKEY")
            #expect(try await key(["AWS_PROFILE": "cfgonly"]) == "CFGKEY")
            // No source at all: the error names each place looked at, and the fix.
            do {
                _ = try await key(["AWS_PROFILE": "missing"])
                Issue.record("a missing profile gave credentials")
            } catch let error as AWSError {
                #expect(error.code == "NoCredentials")
                #expect(error.message.contains("looked at: environment, profile missing"), "\(error.message)")
            }
            // The operator's commands read profiles as the AWS CLI does: a profile named and missing is an error.
            do {
                _ = try await CredentialChain.default(
                    environment: base.merging(["AWS_PROFILE": "missing"]) { $1 }, imds: nil, order: .awsCLI
                ).credentials(logger: quietLogger)
                Issue.record("a missing profile gave credentials")
            } catch let error as AWSError {
                #expect(error.message.contains("the profile missing (AWS_PROFILE) is in neither"), "\(error.message)")
            }
            // Without the variables, ~/.aws under HOME is used.
            _ = mkdir("\(dir)/home", 0o755)
            _ = mkdir("\(dir)/home/.aws", 0o755)
            LocalFile.write(
                "\(dir)/home/.aws/credentials",
                Array("[default]\naws_access_key_id=HOMEKEY\naws_secret_access_key=S\n".utf8))
            let home = try await CredentialChain.default(environment: ["HOME": "\(dir)/home"], imds: nil)
                .credentials(logger: quietLogger)
            #expect(home?.accessKeyID == "HOMEKEY")
        }
    }

    @Test func refreshIsSharedByConcurrentCallers() async throws {
        let clock = TestClock()
        let source = ScriptedSource(clock: clock, lifetime: 3600, delayNanoseconds: 50_000_000)
        let refreshing = RefreshingCredentials(source, now: { clock.now() })
        let keys = try await withThrowingTaskGroup(of: String?.self) { group in
            for _ in 0..<8 { group.addTask { try await refreshing.credentials(logger: quietLogger)?.accessKeyID } }
            return try await group.reduce(into: Set<String?>()) { $0.insert($1) }
        }
        #expect(keys == ["ASIA1"])
        #expect(source.fetches.load(ordering: .relaxed) == 1)
    }

    @Test func refreshesFiveMinutesBeforeExpiration() async throws {
        let clock = TestClock()
        let source = ScriptedSource(clock: clock, lifetime: 3600)
        let refreshing = RefreshingCredentials(source, now: { clock.now() })
        #expect(try await refreshing.credentials(logger: quietLogger)?.accessKeyID == "ASIA1")
        clock.advance(3600 - 301)
        #expect(try await refreshing.credentials(logger: quietLogger)?.accessKeyID == "ASIA1")
        clock.advance(2)  // now 299 s before expiry
        #expect(try await refreshing.credentials(logger: quietLogger)?.accessKeyID == "ASIA2")
    }

    @Test func aFailedRefreshKeepsValidCredentialsAndWarns() async throws {
        let clock = TestClock()
        let logs = CapturedLogs()
        let source = ScriptedSource(clock: clock, lifetime: 600)
        let refreshing = RefreshingCredentials(source, now: { clock.now() })
        #expect(try await refreshing.credentials(logger: logs.logger())?.accessKeyID == "ASIA1")
        source.failing.store(true, ordering: .relaxed)
        clock.advance(400)  // inside the refresh window, still valid
        #expect(try await refreshing.credentials(logger: logs.logger())?.accessKeyID == "ASIA1")
        #expect(logs.contains(level: .warning, "credential refresh failed"))
        // No secret or token in what was logged.
        #expect(!logs.lines.joined().contains("SECRET-1"))
        #expect(!logs.lines.joined().contains("TOKEN-1"))
        clock.advance(300)  // now expired, and the source still fails
        await #expect(throws: AWSError.self) { _ = try await refreshing.credentials(logger: logs.logger()) }
        source.failing.store(false, ordering: .relaxed)
        clock.advance(10)
        #expect(try await refreshing.credentials(logger: logs.logger())?.accessKeyID != "ASIA1")
    }
}

@Suite struct ShortLivedCredentialTests {
    @Test func shortLivedCredentialsAreRefreshedInTheirSecondHalf() async throws {
        let clock = TestClock()
        let source = ScriptedSource(clock: clock, lifetime: 60)
        let refreshing = RefreshingCredentials(source, now: { clock.now() })
        #expect(try await refreshing.credentials(logger: quietLogger)?.accessKeyID == "ASIA1")
        clock.advance(20)
        #expect(try await refreshing.credentials(logger: quietLogger)?.accessKeyID == "ASIA1")
        clock.advance(15)  // 25 s left of 60: inside the second half
        #expect(try await refreshing.credentials(logger: quietLogger)?.accessKeyID == "ASIA2")
    }
}
