import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import TestSupport
import Testing
import Worker

/// The operator's commands (`cp`, `enqueue`, `status`) with each way the AWS CLI finds credentials, run as an
/// operator runs them: the release binary, no keys in the environment, the shared files in a home of its own.
/// Every call is signed with what the way gave and checked by moto (in signature-checking mode).
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct OperatorCredentialTests {
    /// One operator's machine: a home folder, and the three commands run in it.
    struct Operator {
        let h: WorkerHarness
        var environment: [String: String]

        init(_ h: WorkerHarness, _ extra: [String: String] = [:]) throws {
            self.h = h
            environment = [
                "AWS_ENDPOINT_URL": try TestEnvironment.endpoint(.moto), "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true", "PATH": "/usr/bin:/bin", "HOME": h.directory,
            ].merging(extra) { $1 }
        }

        /// Writes a file under the home folder.
        func write(_ path: String, _ text: String) {
            let full = h.directory + "/" + path
            var parts = full.split(separator: "/").dropLast()
            var folder = ""
            while !parts.isEmpty {
                folder += "/" + parts.removeFirst()
                _ = mkdir(folder, 0o700)
            }
            LocalFile.write(full, Array(text.utf8))
        }

        /// Removes files the test wrote with keys in them (as an operator's own files have): the scan for leaked
        /// secrets that ends every test is for what the commands wrote.
        func removeKeyFiles(_ paths: String...) {
            for path in paths { _ = unlink(h.directory + "/" + path) }
        }

        func run(_ name: String, _ arguments: [String]) async throws -> (ProcessOutcome?, String, String) {
            let process = try ProcessRunner().start(
                argv: [WorkerHarness.binary] + arguments + ["--log-level", "debug"], environment: environment,
                directory: h.directory, stdoutPath: "\(h.directory)/\(name).stdout",
                stderrPath: "\(h.directory)/\(name).log")
            let outcome = await process.wait(timeout: 120)
            return (
                outcome, LocalFile.readText("\(h.directory)/\(name).stdout") ?? "",
                LocalFile.readText("\(h.directory)/\(name).log") ?? ""
            )
        }

        /// `cp` up, `enqueue` of what it copied, `status`: each must work. Returns `cp`'s log, which names the
        /// credentials' source.
        @discardableResult
        func journey(_ label: String) async throws -> String {
            let local = h.directory + "/\(label).txt"
            LocalFile.write(local, Array("input of \(label)".utf8))
            let (copied, _, copyLog) = try await run(
                "cp-\(label)", ["cp", local, "s3://\(h.inputBucket)/\(label)/a.txt"])
            #expect(copied == .exited(0), "cp: \(copyLog.suffix(1500))")
            let (enqueued, sent, enqueueLog) = try await run(
                "enqueue-\(label)", ["enqueue", "--queue-url", h.queueURL, "s3://\(h.inputBucket)/\(label)/"])
            #expect(enqueued == .exited(0), "enqueue: \(enqueueLog.suffix(1500))")
            #expect(sent.hasPrefix("sent 1, "), "\(sent)")
            let (statused, json, statusLog) = try await run(
                "status-\(label)",
                ["status", "--queue-url", h.queueURL, "--results", "s3://\(h.outputBucket)/", "--format", "json"])
            #expect(statused == .exited(0), "status: \(statusLog.suffix(1500))")
            #expect((try? JSONValue.parse(json))?["visible"] != nil, "\(json)")
            return copyLog
        }
    }

    static func withOperator(_ body: (WorkerHarness) async throws -> Void) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await body(h)
        }
    }

    @Test func credentialProcessInAConfigFileNamedByAWS_CONFIG_FILE() async throws {
        try await Self.withOperator { h in
            let session = try TestEnvironment.motoSessionCredentials()
            var op = try Operator(h, ["AWS_PROFILE": "helper", "AWS_CONFIG_FILE": h.directory + "/elsewhere/config"])
            op.write(
                "bin/creds helper.sh",
                """
                printf '{"Version": 1, "AccessKeyId": "%s", "SecretAccessKey": "%s", "SessionToken": "%s", "Expiration": "2099-01-01T00:00:00Z"}' "$1" "$2" "$3"
                echo "helper ran" >> "$HOME/helper.count"
                """)
            // Quoted as the CLI reads it: a path with a space, arguments in quotes.
            op.write(
                "elsewhere/config",
                """
                [profile helper]
                credential_process = /bin/sh "\(h.directory)/bin/creds helper.sh" \(session.accessKeyID) '\(session.secretAccessKey)' "\(session.sessionToken ?? "")"
                """)
            op.environment["AWS_PROFILE"] = "helper"
            let log = try await op.journey("process")
            #expect(log.contains("credential_process of profile helper"), "\(log.suffix(800))")
            #expect(LocalFile.readText(h.directory + "/helper.count")?.contains("helper ran") == true)

            // A helper that fails is the answer, with its status: not a fall-through to the next source, here an
            // instance role that IMDS would hand out.
            let imds = try await IMDSStandIn.start(directory: h.directory, userData: nil, credentialLifetime: 3600)
            op.environment["AWS_EC2_METADATA_DISABLED"] = nil
            op.environment["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds.endpoint
            op.write("elsewhere/config", "[profile helper]\ncredential_process = /bin/false\n")
            let (outcome, _, failed) = try await op.run(
                "cp-failing", ["cp", h.directory + "/process.txt", "s3://\(h.inputBucket)/x"])
            #expect(outcome != .exited(0))
            #expect(
                failed.contains("credential_process of profile helper (/bin/false) exited with status 1"),
                "\(failed.suffix(800))")
            #expect(!failed.contains("credentials found"), "\(failed.suffix(800))")
            await imds.stop()
        }
    }

    @Test func anAssumedRoleThroughAChainOfProfiles() async throws {
        try await Self.withOperator { h in
            let keys = try TestEnvironment.motoCredentials()
            let role = try TestEnvironment.value("PZ_TEST_MOTO_ROLE_ARN")
            let op = try Operator(h, ["AWS_PROFILE": "top", "AWS_SHARED_CREDENTIALS_FILE": h.directory + "/keys"])
            defer { op.removeKeyFiles("keys") }
            op.write(
                "keys",
                "[base]\naws_access_key_id = \(keys.accessKeyID)\naws_secret_access_key = \(keys.secretAccessKey)\n")
            op.write(
                ".aws/config",
                """
                [profile middle]
                role_arn = \(role)
                source_profile = base

                [profile top]
                role_arn = \(role)
                source_profile = middle
                role_session_name = operator-test
                external_id = shared-secret
                duration_seconds = 900
                """)
            let log = try await op.journey("role")
            #expect(
                log.contains("role \(role) of profile top (from role \(role) of profile middle (from static keys))"),
                "\(log.suffix(800))")

            // A loop of profiles is named, not followed forever.
            op.write(
                ".aws/config",
                "[profile top]\nrole_arn = \(role)\nsource_profile = other\n[profile other]\nrole_arn = \(role)\nsource_profile = top\n"
            )
            let (outcome, _, looped) = try await op.run(
                "cp-loop", ["cp", h.directory + "/role.txt", "s3://\(h.inputBucket)/x"])
            #expect(outcome != .exited(0))
            #expect(looped.contains("profiles top -> other -> top form a loop"), "\(looped.suffix(800))")
        }
    }

    @Test func webIdentityFromTheEnvironmentAsEKSGivesIt() async throws {
        try await Self.withOperator { h in
            let standIn = try await CredentialsStandIn.start(directory: h.directory)
            defer { standIn.stop() }
            let token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.c2lnbmF0dXJl"
            let op = try Operator(
                h,
                [
                    "AWS_WEB_IDENTITY_TOKEN_FILE": h.directory + "/token",
                    "AWS_ROLE_ARN": try TestEnvironment.value("PZ_TEST_MOTO_ROLE_ARN"),
                    "AWS_ROLE_SESSION_NAME": "eks-pod",
                    // moto's STS, through the shim that works around its refusal of unsigned calls (see the script).
                    "AWS_ENDPOINT_URL_STS": standIn.endpoint + "/sts",
                ])
            op.write("token", token + "\n")
            let log = try await op.journey("web")
            #expect(log.contains("web identity"), "\(log.suffix(800))")
            let stats = try await standIn.stats()
            #expect((stats["web_identity"]?.intValue ?? 0) >= 1)
            #expect(stats["web_identity_signed"]?.intValue == 0, "AssumeRoleWithWebIdentity is sent unsigned")
            #expect(stats["last_web_token"]?.stringValue == token)
        }
    }

    @Test func anSSOSessionAndTheLegacySSOKeysUseTheCachedLogin() async throws {
        try await Self.withOperator { h in
            let standIn = try await CredentialsStandIn.start(directory: h.directory)
            defer { standIn.stop() }
            var op = try Operator(h, ["AWS_PROFILE": "dev", "AWS_ENDPOINT_URL_SSO": standIn.endpoint])
            op.write(
                ".aws/config",
                """
                [profile dev]
                sso_session = corp
                sso_account_id = 111122223333
                sso_role_name = DataEngineer
                region = us-east-1

                [sso-session corp]
                sso_start_url = https://corp.awsapps.com/start
                sso_region = us-east-1
                sso_registration_scopes = sso:account:access

                [profile legacy]
                sso_start_url = https://legacy.awsapps.com/start
                sso_region = us-east-1
                sso_account_id = 444455556666
                sso_role_name = Reader
                """)
            // Where `aws sso login` leaves the token: named by the SHA-1 of the session's name (the start URL for
            // the legacy keys).
            func cache(_ key: String, expires: String) {
                op.write(
                    ".aws/sso/cache/\(Digest.sha1(Array(key.utf8)).hexString).json",
                    #"{"accessToken": "\#(standIn.ssoToken)", "expiresAt": "\#(expires)", "region": "us-east-1"}"#)
            }
            cache("corp", expires: "2099-01-01T00:00:00Z")
            let log = try await op.journey("sso")
            #expect(log.contains("SSO role DataEngineer in 111122223333 of profile dev"), "\(log.suffix(800))")
            var stats = try await standIn.stats()
            #expect(stats["last_account"]?.stringValue == "111122223333")
            #expect(stats["last_role"]?.stringValue == "DataEngineer")

            op.environment["AWS_PROFILE"] = "legacy"
            cache("https://legacy.awsapps.com/start", expires: "2099-01-01T00:00:00Z")
            let (outcome, _, legacyLog) = try await op.run(
                "cp-legacy", ["cp", h.directory + "/sso.txt", "s3://\(h.inputBucket)/legacy.txt"])
            #expect(outcome == .exited(0), "\(legacyLog.suffix(800))")
            stats = try await standIn.stats()
            #expect(stats["last_role"]?.stringValue == "Reader")

            // An sso_session's expired token is refreshed with the refresh token beside it (SSO-OIDC CreateToken), and
            // the new one is written back for the AWS CLI too.
            op.environment["AWS_PROFILE"] = "dev"
            op.environment["AWS_ENDPOINT_URL_SSO_OIDC"] = standIn.endpoint
            let corp = ".aws/sso/cache/\(Digest.sha1(Array("corp".utf8)).hexString).json"
            op.write(
                corp,
                #"{"accessToken": "stale", "expiresAt": "2020-01-01T00:00:00Z", "region": "us-east-1", "clientId": "client-1", "clientSecret": "client-secret-1", "refreshToken": "refresh-1", "registrationExpiresAt": "2099-01-01T00:00:00Z"}"#
            )
            let (renewed, _, renewedLog) = try await op.run(
                "cp-renewed", ["cp", h.directory + "/sso.txt", "s3://\(h.inputBucket)/renewed.txt"])
            #expect(renewed == .exited(0), "\(renewedLog.suffix(800))")
            #expect((try await standIn.stats())["oidc"]?.intValue == 1)
            let rewritten = try JSONValue.parse(LocalFile.readText(h.directory + "/" + corp) ?? "")
            #expect(rewritten["accessToken"]?.stringValue == standIn.ssoToken)
            #expect(rewritten["refreshToken"]?.stringValue == "refresh-1-next")
            #expect(rewritten["expiresAt"]?.stringValue.map { $0 > "2026" } == true)
            #expect(rewritten["clientSecret"]?.stringValue == "client-secret-1", "the rest of the cache is kept")
            op.environment["AWS_PROFILE"] = "legacy"

            // An expired login says what to run; so does one the portal no longer knows.
            cache("https://legacy.awsapps.com/start", expires: "2020-01-01T00:00:00Z")
            let (expired, _, expiredLog) = try await op.run(
                "cp-expired", ["cp", h.directory + "/sso.txt", "s3://\(h.inputBucket)/x.txt"])
            #expect(expired != .exited(0))
            #expect(
                expiredLog.contains("expired at 2020-01-01T00:00:00Z; run: aws sso login --profile legacy"),
                "\(expiredLog.suffix(800))")
            op.write(
                ".aws/sso/cache/\(Digest.sha1(Array("corp".utf8)).hexString).json",
                #"{"accessToken": "revoked", "expiresAt": "2099-01-01T00:00:00Z"}"#)
            op.environment["AWS_PROFILE"] = "dev"
            let (revoked, _, revokedLog) = try await op.run(
                "cp-revoked", ["cp", h.directory + "/sso.txt", "s3://\(h.inputBucket)/x.txt"])
            #expect(revoked != .exited(0))
            #expect(revokedLog.contains("run: aws sso login --profile dev"), "\(revokedLog.suffix(800))")
        }
    }

    @Test func containerCredentialsAsCloudShellAndECSGiveThem() async throws {
        try await Self.withOperator { h in
            let standIn = try await CredentialsStandIn.start(directory: h.directory)
            defer { standIn.stop() }
            // CloudShell: a full URI on loopback and the token in a variable.
            var op = try Operator(
                h,
                [
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI": standIn.endpoint + "/container/credentials",
                    "AWS_CONTAINER_AUTHORIZATION_TOKEN": standIn.containerToken,
                ])
            let log = try await op.journey("container")
            #expect(log.contains("container endpoint"), "\(log.suffix(800))")
            // EKS Pod Identity: the token in a file (read on each fetch).
            op.environment["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = nil
            op.environment["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"] = h.directory + "/pod-token"
            op.write("pod-token", standIn.containerToken + "\n")
            let (outcome, _, fileLog) = try await op.run(
                "cp-token-file", ["cp", h.directory + "/container.txt", "s3://\(h.inputBucket)/file.txt"])
            #expect(outcome == .exited(0), "\(fileLog.suffix(800))")
            #expect((try await standIn.stats())["container"]?.intValue ?? 0 >= 2)
            // A full URI that is neither HTTPS nor a loopback or container address never gets the token.
            op.environment["AWS_CONTAINER_CREDENTIALS_FULL_URI"] = "http://192.0.2.1/creds"
            let (refused, _, refusedLog) = try await op.run(
                "cp-far", ["cp", h.directory + "/container.txt", "s3://\(h.inputBucket)/far.txt"])
            #expect(refused != .exited(0))
            #expect(
                refusedLog.contains("neither HTTPS nor a loopback or container address"), "\(refusedLog.suffix(800))")
        }
    }

    @Test func withNoCredentialsTheErrorNamesEveryPlaceLookedAtAndTheFix() async throws {
        try await Self.withOperator { h in
            let op = try Operator(h)
            LocalFile.write(h.directory + "/none.txt", Array("x".utf8))
            let (outcome, _, log) = try await op.run(
                "cp-none", ["cp", h.directory + "/none.txt", "s3://\(h.inputBucket)/x"])
            #expect(outcome != .exited(0))
            #expect(
                log.contains(
                    "looked at: environment, profile default (\(h.directory)/.aws/config, \(h.directory)/.aws/credentials)"
                ),
                "\(log.suffix(800))")
            #expect(log.contains("aws sso login"), "\(log.suffix(800))")
        }
    }

    @Test func aProfilesEndpointsAndServicesSectionAreUsed() async throws {
        try await Self.withOperator { h in
            let keys = try TestEnvironment.motoCredentials()
            let moto = try TestEnvironment.endpoint(.moto)
            var op = try Operator(h, ["AWS_PROFILE": "local"])
            op.environment["AWS_ENDPOINT_URL"] = nil
            defer { op.removeKeyFiles(".aws/config") }
            // The profile's own endpoint leads nowhere; its services section sends S3 and SQS to moto, so the
            // commands work only if the section wins over it, as in the AWS CLI.
            op.write(
                ".aws/config",
                """
                [profile local]
                aws_access_key_id = \(keys.accessKeyID)
                aws_secret_access_key = \(keys.secretAccessKey)
                endpoint_url = http://127.0.0.1:9
                services = local-peers

                [services local-peers]
                s3 =
                  endpoint_url = \(moto)
                sqs =
                  endpoint_url = \(moto)
                """)
            try await op.journey("endpoints")
        }
    }
}
