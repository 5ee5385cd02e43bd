import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import HTTPCurl
import Worker

/// The stand-in for IAM Identity Center's portal and the container credential endpoint, with the STS shim for
/// moto's AssumeRoleWithWebIdentity (scripts/lib/credentials_standin.py): it hands out moto's temporary
/// credentials, so every call made with them is still checked by moto.
public struct CredentialsStandIn: Sendable {
    public let endpoint: String
    public let ssoToken: String
    public let containerToken: String
    let process: ChildProcess

    public static func start(directory: String) async throws -> CredentialsStandIn {
        let session = try TestEnvironment.motoSessionCredentials()
        let tag = UInt32.random(in: 0...UInt32.max)
        let ssoToken = "sso-\(tag)"
        let containerToken = "container-\(tag)"
        let (endpoint, process) = try await startHelper(
            "credentials_standin.py",
            [
                "--key", session.accessKeyID, "--secret", session.secretAccessKey, "--token",
                session.sessionToken ?? "", "--sso-token", ssoToken, "--container-token", containerToken,
                "--moto-endpoint", try TestEnvironment.endpoint(.moto),
                "--moto-key", try TestEnvironment.value("PZ_TEST_MOTO_KEY"),
                "--moto-secret", try TestEnvironment.value("PZ_TEST_MOTO_SECRET"),
            ], ready: "/_standin/stats", directory: directory)
        return CredentialsStandIn(
            endpoint: endpoint, ssoToken: ssoToken, containerToken: containerToken, process: process)
    }

    /// What it served so far.
    public func stats() async throws -> JSONValue {
        let response = try await HTTPClient().execute(HTTPRequest(method: "GET", url: endpoint + "/_standin/stats"))
        return try JSONValue.parse(response.body)
    }

    public func stop() { process.signal(SIGKILL) }
}

/// A stand-in that did not come up, with the end of its stderr.
public struct StandInFailed: Error, CustomStringConvertible {
    public let what: String
    public var description: String { "\(what) did not start" }
}

/// A Python helper of `scripts/lib` that picks its own port and writes it to `--port-file`; returns its endpoint
/// once `ready` answers 200.
func startHelper(
    _ script: String, _ arguments: [String], ready: String, directory: String
) async throws -> (String, ChildProcess) {
    let tag = UInt32.random(in: 0...UInt32.max)
    let portFile = directory + "/\(script)-port-\(tag)"
    let process = try ProcessRunner().start(
        argv: ["/usr/bin/env", "python3", WorkerHarness.scriptPath(script), "--port-file", portFile] + arguments,
        environment: ["PATH": "/usr/local/bin:/usr/bin:/bin"].merging(
            TestEnvironment.environment.filter { $0.key == "PATH" || $0.key.hasPrefix("PYENV") || $0.key == "HOME" }
        ) { $1 },
        directory: directory, stdoutPath: directory + "/\(script)-\(tag).out",
        stderrPath: directory + "/\(script)-\(tag).err")
    if let port = await portWritten(to: portFile) {
        let endpoint = "http://127.0.0.1:\(port)"
        let up = await waitUntil(seconds: 30) { (try? await HTTPClientProbe.get(endpoint + ready)) == 200 }
        if up { return (endpoint, process) }
    }
    process.signal(SIGKILL)
    throw StandInFailed(
        what: "\(script) (\(LocalFile.readText(directory + "/\(script)-\(tag).err")?.suffix(500) ?? ""))")
}

/// A reverse proxy in front of moto that counts the requests by operation (scripts/lib/counting_proxy.py): for
/// tests that bound how many calls a command makes.
public struct CountingProxy: Sendable {
    public let endpoint: String
    let process: ChildProcess

    public static func start(directory: String) async throws -> CountingProxy {
        let (endpoint, process) = try await startHelper(
            "counting_proxy.py", ["--upstream", try TestEnvironment.endpoint(.moto)], ready: "/_proxy/stats",
            directory: directory)
        return CountingProxy(endpoint: endpoint, process: process)
    }

    /// The requests counted since the last reset: the total, and by operation.
    public func counts() async throws -> (total: Int, operations: [String: Int]) {
        let response = try await HTTPClient().execute(HTTPRequest(method: "GET", url: endpoint + "/_proxy/stats"))
        let json = try JSONValue.parse(response.body)
        let operations = (json["operations"]?.objectValue ?? [:]).compactMapValues { $0.intValue }
        return (json["total"]?.intValue ?? 0, operations)
    }

    public func reset() async throws {
        _ = try await HTTPClientProbe.post(endpoint + "/_proxy/reset", "")
    }

    public func stop() { process.signal(SIGKILL) }
}
