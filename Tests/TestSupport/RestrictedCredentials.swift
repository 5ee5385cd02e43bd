import AWSCore
import Testing

extension WorkerHarness {
    /// The environment of a worker whose keys belong to a new IAM user that may do everything except `denied`
    /// (`(action, resource)` pairs: `("sqs:DeleteMessage", "*")`). moto enforces IAM policies on such a user's calls,
    /// as AWS does on an instance role's: how a test meets a role that is missing a permission.
    public func credentialsDenying(_ denied: [(action: String, resource: String)]) async throws -> [String: String] {
        let name = uniqueName("pz-restricted")
        _ = try await Scripts.awsCLI(["iam", "create-user", "--user-name", name], directory: directory)
        let denials = denied.map { #"{"Effect":"Deny","Action":"\#($0.action)","Resource":"\#($0.resource)"}"# }
        let policy =
            #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}"#
            + denials.map { "," + $0 }.joined() + "]}"
        _ = try await Scripts.awsCLI(
            [
                "iam", "put-user-policy", "--user-name", name, "--policy-name", "restricted",
                "--policy-document", policy,
            ], directory: directory)
        let key = try await Scripts.awsCLI(["iam", "create-access-key", "--user-name", name], directory: directory)
        let id = try #require(key["AccessKey"]?["AccessKeyId"]?.stringValue)
        let secret = try #require(key["AccessKey"]?["SecretAccessKey"]?.stringValue)
        return ["AWS_ACCESS_KEY_ID": id, "AWS_SECRET_ACCESS_KEY": secret]
    }
}
