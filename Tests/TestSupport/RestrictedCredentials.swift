import AWSCore
import Testing

/// Keys of a new IAM user on moto that may do everything except `denied` (`(action, resource)` pairs:
/// `("sqs:DeleteMessage", "*")`). moto enforces IAM policies on such a user's calls, as AWS does on an instance role's:
/// how a test meets a role that is missing a permission.
public func credentialsDenying(_ denied: [(action: String, resource: String)], directory: String) async throws
    -> Credentials
{
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
    return Credentials(
        accessKeyID: try #require(key["AccessKey"]?["AccessKeyId"]?.stringValue),
        secretAccessKey: try #require(key["AccessKey"]?["SecretAccessKey"]?.stringValue))
}

extension WorkerHarness {
    /// A worker's environment with `credentialsDenying(denied)`'s keys.
    public func credentialsDenying(_ denied: [(action: String, resource: String)]) async throws -> [String: String] {
        let credentials = try await TestSupport.credentialsDenying(denied, directory: directory)
        return ["AWS_ACCESS_KEY_ID": credentials.accessKeyID, "AWS_SECRET_ACCESS_KEY": credentials.secretAccessKey]
    }
}
