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
        let portFile = directory + "/credentials-port-\(tag)"
        let ssoToken = "sso-\(tag)"
        let containerToken = "container-\(tag)"
        let argv = [
            "/usr/bin/env", "python3", WorkerHarness.scriptPath("credentials_standin.py"), "--port-file", portFile,
            "--key", session.accessKeyID, "--secret", session.secretAccessKey, "--token", session.sessionToken ?? "",
            "--sso-token", ssoToken, "--container-token", containerToken,
            "--moto-endpoint", try TestEnvironment.endpoint(.moto),
            "--moto-key", try TestEnvironment.value("PZ_TEST_MOTO_KEY"),
            "--moto-secret", try TestEnvironment.value("PZ_TEST_MOTO_SECRET"),
        ]
        let process = try ProcessRunner().start(
            argv: argv,
            environment: ["PATH": "/usr/local/bin:/usr/bin:/bin"].merging(
                TestEnvironment.environment.filter { $0.key == "PATH" || $0.key.hasPrefix("PYENV") || $0.key == "HOME" }
            ) { $1 },
            directory: directory, stdoutPath: directory + "/credentials-\(tag).out",
            stderrPath: directory + "/credentials-\(tag).err")
        if let port = await portWritten(to: portFile) {
            let standIn = CredentialsStandIn(
                endpoint: "http://127.0.0.1:\(port)", ssoToken: ssoToken, containerToken: containerToken,
                process: process)
            let up = await waitUntil(seconds: 30) {
                (try? await HTTPClientProbe.get(standIn.endpoint + "/_standin/stats")) == 200
            }
            if up { return standIn }
        }
        process.signal(SIGKILL)
        throw StandInFailed(
            what: "credentials stand-in (\(LocalFile.readText(directory + "/credentials-\(tag).err")?.suffix(500) ?? ""))")
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
