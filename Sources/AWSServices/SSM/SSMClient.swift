import AWSCore
import Logging

/// Systems Manager's Parameter Store, for one thing: the public parameters that name the latest Amazon Linux
/// images (`/aws/service/ami-amazon-linux-latest/...`), so that a launch needs no image id.
public struct SSMClient: Sendable {
    let json: JSONProtocol
    let endpoint: ServiceEndpoint

    public init(context: AWSContext, region: String? = nil) throws(AWSError) {
        endpoint = try context.endpoint("ssm", region: region)
        json = JSONProtocol(
            targetPrefix: "AmazonSSM", client: context.client, contentType: "application/x-amz-json-1.1")
    }

    /// The parameter's value (`ParameterNotFound` when there is none).
    public func parameter(_ name: String, logger: Logger) async throws(AWSError) -> String {
        let reply = try await json.call(
            "GetParameter", value: .object(["Name": .string(name)]), endpoint: endpoint, logger: logger)
        guard let value = reply["Parameter"]?["Value"]?.stringValue else {
            throw AWSError.badResponse("ssm", "GetParameter reply has no Parameter.Value")
        }
        return value
    }
}
