import AWSCore
import AWSServices
import HTTPCurl
import TestSupport
import Testing

/// Virtual-hosted style on AWS, path style for custom endpoints and dotted bucket names (seen through presigned
/// URLs, which need no network).
@Suite struct S3AddressingTests {
    func s3(_ environment: [String: String], region: String = "eu-west-1") throws -> S3Client {
        let client = AWSClient(
            http: HTTPClient(),
            credentials: StaticCredentialProvider(
                Credentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "secret")))
        return try S3Client(context: AWSContext(region: region, client: client, imds: nil, environment: environment))
    }

    @Test func awsUsesVirtualHostedStyle() async throws {
        let url = try await s3([:]).presignedGetURL(
            bucket: "my-bucket", key: "a b/c+d.txt", expires: 60, logger: quietLogger)
        #expect(
            url.hasPrefix(
                "https://my-bucket.s3.eu-west-1.amazonaws.com/a%20b/c%2Bd.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"))
        #expect(url.contains("X-Amz-Expires=60"))
        #expect(url.contains("%2Feu-west-1%2Fs3%2Faws4_request"))
    }

    @Test func dottedBucketsUsePathStyle() async throws {
        let url = try await s3([:]).presignedGetURL(bucket: "my.bucket", key: "k", expires: 60, logger: quietLogger)
        #expect(url.hasPrefix("https://s3.eu-west-1.amazonaws.com/my.bucket/k?"))
    }

    @Test func customEndpointsUsePathStyle() async throws {
        let url = try await s3(["AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"])
            .presignedGetURL(bucket: "b", key: "k", expires: 60, logger: quietLogger)
        #expect(url.hasPrefix("http://127.0.0.1:9000/b/k?"))
    }

    @Test func s3URIs() {
        #expect(S3URI("s3://bucket/dir/a b") == S3URI(bucket: "bucket", key: "dir/a b"))
        #expect(S3URI("s3://bucket") == S3URI(bucket: "bucket", key: ""))
        #expect(S3URI("s3:///key") == nil)
        #expect(S3URI("https://x") == nil)
    }
}
