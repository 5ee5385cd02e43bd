import AWSCore
import AWSServices
import FoundationEssentials
import HTTPCurl
import TestSupport
import Testing
import Synchronization

/// IMDSv2 against the stand-in, whose role credentials are real temporary keys from moto's STS.
@Suite(.enabled(if: TestEnvironment.canRun(.imds, .moto)), .serialized, .timeLimit(.minutes(2)))
struct IMDSTests {
    let http = HTTPClient()

    func configure(_ json: String) async throws {
        let response = try await http.execute(
            HTTPRequest(
                method: "POST", url: try TestEnvironment.endpoint(.imds) + "/_standin/config",
                headers: [("Content-Type", "application/json")], body: .bytes(Array(json.utf8))))
        #expect(response.status == 200)
    }

    func stats() async throws -> JSONValue {
        try JSONValue.parse(
            try await http.execute(
                HTTPRequest(
                    method: "GET", url: try TestEnvironment.endpoint(.imds) + "/_standin/stats")
            ).body)
    }

    @Test func theStandInRefusesTokenlessRequestsLikeEC2() async throws {
        let base = try TestEnvironment.endpoint(.imds)
        let v1 = try await http.execute(HTTPRequest(method: "GET", url: base + "/latest/meta-data/instance-id"))
        #expect(v1.status == 401)
        let noTTL = try await http.execute(HTTPRequest(method: "PUT", url: base + "/latest/api/token"))
        #expect(noTTL.status == 400)
    }

    @Test func metadataThroughTokens() async throws {
        try await configure(
            #"{"userData": "queueURL=http://q\n", "instanceId": "i-0abc", "region": "eu-west-3", "spotAction": null}"#)
        let before = try await stats()
        let imds = IMDSClient(endpoint: try TestEnvironment.endpoint(.imds), http: http)
        #expect(try await imds.userData() == "queueURL=http://q\n")
        #expect(try await imds.instanceID() == "i-0abc")
        #expect(try await imds.region() == "eu-west-3")
        #expect(try await imds.spotInstanceAction() == nil)
        try await configure(#"{"spotAction": {"action": "terminate", "time": "2026-11-23T10:00:00Z"}}"#)
        #expect(
            try await imds.spotInstanceAction() == SpotInstanceAction(action: "terminate", time: "2026-11-23T10:00:00Z")
        )
        #expect(try await imds.rebalanceRecommendation() == nil)
        try await configure(#"{"rebalance": {"noticeTime": "2026-11-23T10:05:00Z"}}"#)
        #expect(try await imds.rebalanceRecommendation() == "2026-11-23T10:05:00Z")
        try await configure(#"{"spotAction": null, "userData": null, "rebalance": null}"#)
        #expect(try await imds.userData() == nil)
        let after = try await stats()
        // One token served all of those GETs, and not one request went out without a token.
        #expect(after["tokenPuts"]?.intValue == (before["tokenPuts"]?.intValue ?? 0) + 1)
        #expect(after["unauthorizedGets"]?.intValue == before["unauthorizedGets"]?.intValue)
    }

    @Test func regionComesFromIMDSLast() async throws {
        try await configure(#"{"region": "ap-northeast-2"}"#)
        let imds = IMDSClient(endpoint: try TestEnvironment.endpoint(.imds), http: http)
        let region = try await AWSContext.resolveRegion(
            explicit: nil, environment: ["HOME": "/nonexistent"], imds: imds,
            logger: quietLogger)
        #expect(region == "ap-northeast-2")
        #expect(IMDSClient.endpoint(environment: ["AWS_EC2_METADATA_DISABLED": "true"]) == nil)
        #expect(IMDSClient.endpoint(environment: ["AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://x:1"]) == "http://x:1")
        #expect(IMDSClient.endpoint(environment: [:]) == "http://169.254.169.254")
    }

    @Test func instanceRoleCredentialsSignRealRequests() async throws {
        try await configure(#"{"credentialLifetime": 3600, "failCredentials": 0}"#)
        let env = [
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": try TestEnvironment.endpoint(.imds), "HOME": "/nonexistent",
            "AWS_ENDPOINT_URL": try TestEnvironment.endpoint(.moto), "AWS_REGION": "us-east-1",
        ]
        let ctx = try await AWSContext.resolve(environment: env, logger: quietLogger)
        let creds = try await ctx.client.credentials.credentials(logger: quietLogger)
        #expect(creds?.accessKeyID.hasPrefix("ASIA") == true)
        #expect(creds?.sessionToken != nil)
        #expect(creds?.expiration != nil)
        // moto (signature checks on) accepts requests signed with the role's temporary credentials.
        let sqs = SQSClient(context: ctx)
        let url = try await sqs.createQueue(name: uniqueName("imds-role"), logger: quietLogger)
        try await sqs.deleteQueue(queueURL: url, logger: quietLogger)
    }

    @Test func aFailedCredentialRefreshKeepsTheOldOnes() async throws {
        // 60-second credentials; our clock then jumps 40 s ahead, into their second half, where a refresh is due.
        try await configure(#"{"credentialLifetime": 60, "failCredentials": 0}"#)
        let imds = IMDSClient(endpoint: try TestEnvironment.endpoint(.imds), http: http)
        let skip = Atomic<Int>(0)
        let refreshing = RefreshingCredentials(
            InstanceRoleCredentialProvider(imds: imds),
            now: { Date().addingTimeInterval(Double(skip.load(ordering: .relaxed))) })
        let logs = CapturedLogs()
        let first = try await refreshing.credentials(logger: logs.logger())
        try await configure(#"{"failCredentials": 3}"#)
        skip.store(40, ordering: .relaxed)
        let second = try await refreshing.credentials(logger: logs.logger())
        #expect(second?.accessKeyID == first?.accessKeyID)
        #expect(logs.contains(level: .warning, "credential refresh failed"))
        #expect(!logs.lines.joined().contains(first?.secretAccessKey ?? "-"))
        try await configure(#"{"failCredentials": 0, "credentialLifetime": 3600}"#)
    }
}
