@testable import AWSCore
import FoundationEssentials
import Glibc
import HTTPCurl
import TestSupport
import Testing

/// How profiles, endpoints and the CLI's own formats are read (the end-to-end journeys are OperatorCredentialTests).
struct CredentialSourceTests {
    func files(config: String, credentials: String = "", profile: String? = nil) throws -> SharedConfigFiles {
        let dir = "/tmp/pz-cred-\(UInt32.random(in: 0..<UInt32.max))"
        _ = LocalFile.write(dir + "-config", Array(config.utf8))
        _ = LocalFile.write(dir + "-credentials", Array(credentials.utf8))
        var environment = ["AWS_CONFIG_FILE": dir + "-config", "AWS_SHARED_CREDENTIALS_FILE": dir + "-credentials"]
        if let profile { environment["AWS_PROFILE"] = profile }
        let files = SharedConfigFiles(environment: environment)
        _ = unlink(dir + "-config")
        _ = unlink(dir + "-credentials")
        return files
    }

    func resolver(_ files: SharedConfigFiles, environment: [String: String] = [:]) -> ProfileResolver {
        ProfileResolver(
            files: files, environment: environment, region: "eu-west-1", http: HTTPClient(), imds: nil,
            now: { Date() })
    }

    @Test func credentialProcessWordsSplitAsTheCLISplitsThem() {
        #expect(
            ShellWords.split(#"/bin/helper --profile "my org" 'a b' c\ d"#)
                == ["/bin/helper", "--profile", "my org", "a b", "c d"])
        #expect(ShellWords.split("  one\ttwo  ") == ["one", "two"])
        #expect(ShellWords.split(#""" ''"#) == ["", ""])
        #expect(ShellWords.split("") == [])
    }

    @Test func nestedSettingsOfAServicesSectionAreRead() {
        let ini = IniFile(
            text:
                "[services peers]\ns3 =\n  endpoint_url = http://a\n  addressing_style = path\nsqs =\n\tendpoint_url = http://b\nregion = x\n"
        )
        #expect(ini.services("peers")?["s3.endpoint_url"] == "http://a")
        #expect(ini.services("peers")?["s3.addressing_style"] == "path")
        #expect(ini.services("peers")?["sqs.endpoint_url"] == "http://b")
        #expect(ini.services("peers")?["region"] == "x")
    }

    @Test func endpointsComeFromTheEnvironmentThenTheServicesSectionThenTheProfile() throws {
        let f = try files(
            config: """
                [profile p]
                endpoint_url = http://profile
                services = mine
                [services mine]
                s3 =
                  endpoint_url = http://section-s3
                auto_scaling =
                  endpoint_url = http://section-asg
                """, profile: "p")
        #expect(ServiceEndpoint.configuredURL(service: "s3", environment: [:], files: f) == "http://section-s3")
        #expect(ServiceEndpoint.configuredURL(service: "sqs", environment: [:], files: f) == "http://profile")
        #expect(
            ServiceEndpoint.configuredURL(service: "autoscaling", environment: [:], files: f) == "http://section-asg")
        #expect(
            ServiceEndpoint.configuredURL(service: "s3", environment: ["AWS_ENDPOINT_URL": "http://env"], files: f)
                == "http://env")
        #expect(
            ServiceEndpoint.configuredURL(
                service: "s3", environment: ["AWS_ENDPOINT_URL": "http://env", "AWS_ENDPOINT_URL_S3": "http://env-s3"],
                files: f) == "http://env-s3")
        #expect(
            ServiceEndpoint.configuredURL(
                service: "autoscaling", environment: ["AWS_ENDPOINT_URL_AUTO_SCALING": "http://env-asg"], files: f)
                == "http://env-asg")
        #expect(
            ServiceEndpoint.configuredURL(
                service: "s3",
                environment: ["AWS_ENDPOINT_URL": "http://env", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"],
                files: f) == nil)
        let aws = try ServiceEndpoint.resolve(service: "sts", region: "eu-west-1", environment: [:], files: nil)
        #expect(aws.origin == "https://sts.eu-west-1.amazonaws.com")
    }

    @Test func aProfileBecomesTheSourceTheCLIWouldUse() async throws {
        let f = try files(
            config: """
                [profile keys]
                aws_access_key_id = AKIDCONFIG
                aws_secret_access_key = s
                [profile self]
                aws_access_key_id = AKIDSELF
                aws_secret_access_key = s
                role_arn = arn:aws:iam::1:role/r
                source_profile = self
                [profile chained]
                role_arn = arn:aws:iam::1:role/top
                source_profile = self
                [profile env]
                role_arn = arn:aws:iam::1:role/r
                credential_source = Environment
                [profile imds]
                role_arn = arn:aws:iam::1:role/r
                credential_source = Ec2InstanceMetadata
                [profile nosource]
                role_arn = arn:aws:iam::1:role/r
                [profile missing]
                role_arn = arn:aws:iam::1:role/r
                source_profile = nowhere
                [profile process]
                credential_process = /bin/helper
                [profile sso]
                sso_start_url = https://x
                sso_region = us-east-1
                sso_account_id = 1
                [profile empty]
                region = us-east-1
                """,
            credentials: "[keys]\naws_access_key_id = AKIDCREDENTIALS\naws_secret_access_key = s\n")
        let r = resolver(f)
        // The credentials file wins for the same profile.
        #expect(try await r.provider("keys")?.credentials(logger: quietLogger)?.accessKeyID == "AKIDCREDENTIALS")
        #expect(
            try r.provider("self")?.name == "role arn:aws:iam::1:role/r of profile self (from static keys)")
        // A source profile with keys gives its keys, its own role aside (the AWS CLI's reading).
        #expect(
            try r.provider("chained")?.name == "role arn:aws:iam::1:role/top of profile chained (from static keys)")
        #expect(try r.provider("env")?.name == "role arn:aws:iam::1:role/r of profile env (from environment)")
        #expect(try r.provider("process")?.name == "credential_process of profile process")
        #expect(try r.provider("empty") == nil)
        #expect(try r.provider("absent") == nil)
        func message(_ profile: String) -> String {
            do {
                _ = try r.provider(profile)
                return ""
            } catch { return error.message }
        }
        #expect(message("imds").contains("credential_source Ec2InstanceMetadata, but IMDS is disabled"))
        #expect(message("nosource").contains("neither source_profile nor credential_source"))
        #expect(message("missing").contains("source_profile nowhere (of profile missing) does not exist"))
        #expect(message("sso").contains("without sso_account_id and sso_role_name"))
    }

    @Test func theCLIsOrderWithinAProfile() async throws {
        let f = try files(
            config: """
                [profile role]
                role_arn = arn:aws:iam::1:role/r
                source_profile = base
                [profile base]
                aws_access_key_id = AKIDBASE
                aws_secret_access_key = s
                [profile mfa]
                role_arn = arn:aws:iam::1:role/r
                source_profile = base
                mfa_serial = arn:aws:iam::1:mfa/op
                [profile loginonly]
                sso_session = corp
                aws_access_key_id = AKIDLOGIN
                aws_secret_access_key = s
                [profile configkeys]
                aws_access_key_id = AKIDCONFIG
                aws_secret_access_key = s
                credential_process = /bin/helper
                [profile filekeys]
                credential_process = /bin/helper
                """,
            credentials: "[filekeys]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n")
        let web = ["AWS_WEB_IDENTITY_TOKEN_FILE": "/var/run/token", "AWS_ROLE_ARN": "arn:aws:iam::1:role/web"]
        // An assumed role of the profile comes before web identity from the environment; web identity before keys.
        #expect(
            try resolver(f, environment: web).provider("role")?.name.hasPrefix("role arn:aws:iam::1:role/r") == true)
        #expect(
            try resolver(f, environment: web).provider("base")?.name.hasPrefix("web identity /var/run/token") == true)
        #expect(try resolver(f, environment: web).provider("absent")?.name.hasPrefix("web identity") == true)
        // A login-only sso_session (no account, no role) is not SSO credentials: its keys are.
        #expect(
            try await resolver(f).provider("loginonly")?.credentials(logger: quietLogger)?.accessKeyID == "AKIDLOGIN")
        // The credentials file's keys, then credential_process, then the config file's keys.
        #expect(try resolver(f).provider("configkeys")?.name == "credential_process of profile configkeys")
        #expect(try await resolver(f).provider("filekeys")?.credentials(logger: quietLogger)?.accessKeyID == "AKIDFILE")
        do {
            _ = try resolver(f).provider("mfa")
            Issue.record("a role that needs an MFA code was taken")
        } catch { #expect(error.message.contains("MFA code (mfa_serial)")) }
    }

    @Test func aHelperMustAnswerVersion1InTimeAndBriefly() async throws {
        func failure(_ command: String, timeout: Double = 30) async -> String {
            do {
                _ = try await ProcessCredentialProvider(command: command, profile: "p", timeout: timeout)
                    .credentials(logger: quietLogger)
                return ""
            } catch { return error.message }
        }
        let good = try await ProcessCredentialProvider(
            command: #"/bin/echo '{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"S"}'"#,
            profile: "p"
        ).credentials(logger: quietLogger)
        #expect(good?.accessKeyID == "AK")
        #expect(
            await failure(#"/bin/echo '{"AccessKeyId":"AK","SecretAccessKey":"S"}'"#)
                .contains(#"must print JSON with "Version": 1"#))
        #expect(await failure("/bin/sleep 30", timeout: 1).contains("did not finish within 1 s"))
        #expect(await failure("/bin/sh -c 'exec yes'").contains("printed more than 1 MiB"))
        #expect(await failure("no-such-helper-anywhere").contains("cannot start no-such-helper-anywhere"))
        #expect(await failure("/bin/sh -c 'exit 4'").contains("exited with status 4"))
        // Its stdin is /dev/null, not ours: `cat` ends at once.
        let quiet = try await ProcessCredentialProvider(
            command: #"/bin/sh -c 'cat >/dev/null; echo "$0"' '{"Version":1,"AccessKeyId":"A","SecretAccessKey":"S"}'"#,
            profile: "p", timeout: 10
        ).credentials(logger: quietLogger)
        #expect(quiet?.accessKeyID == "A")
    }

    @Test func theContainerEndpointGetsTheTokenOnlyOnHTTPSOrALocalAddress() {
        for url in [
            "http://127.0.0.1:1338/creds", "http://localhost/x", "http://169.254.170.2/v2/x",
            "http://169.254.170.23/v1",
            "http://[::1]:80/x", "https://creds.example.com/x", "http://[fd00:ec2::23]/v1", "http://127.1.2.3/x",
        ] {
            #expect(ContainerCredentialProvider.allowed(url), "\(url)")
        }
        for url in [
            "http://192.0.2.1/creds", "http://evil.example.com/x", "ftp://127.0.0.1/x", "nonsense",
            "http://127.evil.example/x", "http://169.254.170.2.evil.example/x", "http://[fd00:ec2::24]/x",
        ] {
            #expect(!ContainerCredentialProvider.allowed(url), "\(url)")
        }
        #expect(
            ContainerCredentialProvider(
                environment: ["AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/abc"], http: HTTPClient())?.url
                == "http://169.254.170.2/v2/credentials/abc")
        #expect(ContainerCredentialProvider(environment: [:], http: HTTPClient()) == nil)
    }

    @Test func theSSOCacheIsNamedByTheSHA1OfTheSessionOrStartURL() {
        // FIPS 180's test vector.
        #expect(Digest.sha1(Array("abc".utf8)).hexString == "a9993e364706816aba3e25717850c26c9cd0d89d")
        let provider = SSOCredentialProvider(
            profile: "p", cacheKey: "abc", accountID: "1", roleName: "r", portal: "http://x",
            environment: ["HOME": "/home/op"], http: HTTPClient(), now: { Date() })
        #expect(provider.cacheFile == "/home/op/.aws/sso/cache/a9993e364706816aba3e25717850c26c9cd0d89d.json")
    }

    @Test func credentialsJSONOfEveryShape() throws {
        let process = try CredentialsJSON.parse(
            #"{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"S","SessionToken":"T","Expiration":"2030-01-02T03:04:05Z"}"#,
            from: "x")
        #expect(process.sessionToken == "T")
        #expect(process.expiration.map { CivilTime(date: $0).iso8601 } == "2030-01-02T03:04:05Z")
        let container = try CredentialsJSON.parse(
            #"{"AccessKeyId":"AK","SecretAccessKey":"S","Token":"T2"}"#, from: "x")
        #expect(container.sessionToken == "T2")
        #expect(container.expiration == nil)
        #expect(throws: AWSError.self) { try CredentialsJSON.parse(#"{"AccessKeyId":"AK"}"#, from: "x") }
        #expect(throws: AWSError.self) { try CredentialsJSON.parse("not json", from: "x") }
    }
}
