import AWSCore
import AWSServices
import FoundationEssentials
import TestSupport
import Testing

@Suite struct ResolutionTests {
    @Test func endpointVariablesInTheSDKsOrder() throws {
        let env = ["AWS_ENDPOINT_URL": "http://127.0.0.1:1000", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:2000/base"]
        let s3 = try ServiceEndpoint.resolve(service: "s3", region: "eu-west-1", environment: env)
        #expect(s3.hostHeader == "127.0.0.1:2000")
        #expect(s3.basePath == "/base")
        #expect(s3.isCustom)
        let sqs = try ServiceEndpoint.resolve(service: "sqs", region: "eu-west-1", environment: env)
        #expect(sqs.hostHeader == "127.0.0.1:1000")
        let ec2 = try ServiceEndpoint.resolve(service: "ec2", region: "eu-west-1", environment: [:])
        #expect(ec2.origin == "https://ec2.eu-west-1.amazonaws.com")
        #expect(!ec2.isCustom)
        let dynamo = try ServiceEndpoint.resolve(
            service: "dynamodb", region: "us-east-2",
            environment: ["AWS_ENDPOINT_URL_DYNAMODB": "https://ddb.local:8443"])
        #expect(dynamo.origin == "https://ddb.local:8443")
    }

    @Test func regionOrder() async throws {
        try await withTemporaryDirectory { dir in
            LocalFile.write(
                "\(dir)/config", Array("[default]\nregion = ap-south-1\n[profile other]\nregion=sa-east-1\n".utf8))
            let base = ["AWS_CONFIG_FILE": "\(dir)/config", "HOME": dir]
            func region(_ env: [String: String], explicit: String? = nil) async throws -> String {
                try await AWSContext.resolveRegion(
                    explicit: explicit, environment: base.merging(env) { $1 }, imds: nil,
                    logger: quietLogger)
            }
            let r1 = try await region(["AWS_REGION": "us-west-1", "AWS_DEFAULT_REGION": "us-west-2"])
            #expect(r1 == "us-west-1")
            let r2 = try await region(["AWS_DEFAULT_REGION": "us-west-2"])
            #expect(r2 == "us-west-2")
            let r3 = try await region([:])
            #expect(r3 == "ap-south-1")
            let r4 = try await region(["AWS_PROFILE": "other"])
            #expect(r4 == "sa-east-1")
            let r5 = try await region(["AWS_REGION": "us-west-1"], explicit: "eu-central-1")
            #expect(r5 == "eu-central-1")
            await #expect(throws: AWSError.self) {
                _ = try await AWSContext.resolveRegion(
                    explicit: nil, environment: ["HOME": "/nonexistent"], imds: nil,
                    logger: quietLogger)
            }
        }
    }

    @Test func queueURLRegion() {
        #expect(SQSClient.region(ofQueueURL: "https://sqs.eu-west-1.amazonaws.com/1/q") == "eu-west-1")
        #expect(SQSClient.region(ofQueueURL: "https://us-west-2.queue.amazonaws.com/1/q") == "us-west-2")
        #expect(SQSClient.region(ofQueueURL: "http://127.0.0.1:5000/1/q") == nil)
    }
}
