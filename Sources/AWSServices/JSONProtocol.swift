import AWSCore
import FoundationEssentials
import HTTPCurl
import Logging

/// The AWS JSON 1.0 protocol (SQS, DynamoDB): `POST /` with `X-Amz-Target: <prefix>.<Operation>`.
struct JSONProtocol: Sendable {
    let targetPrefix: String
    let client: AWSClient

    func call<Input: Encodable, Output: Decodable>(
        _ operation: String, _ input: Input, endpoint: ServiceEndpoint, timeouts: Timeouts = .default,
        logger: Logger
    ) async throws(AWSError) -> Output {
        let body: Data
        do { body = try JSONEncoder().encode(input) } catch {
            throw AWSError.client(endpoint.service, "cannot encode \(operation) input: \(error)")
        }
        let request = AWSRequest(
            method: "POST", path: "/",
            headers: [("Content-Type", "application/x-amz-json-1.0"), ("X-Amz-Target", "\(targetPrefix).\(operation)")],
            body: .bytes(Array(body)), timeouts: timeouts)
        let response = try await client.send(request, to: endpoint, signing: .standard, logger: logger)
        if Output.self == EmptyOutput.self, let empty = EmptyOutput() as? Output { return empty }
        do {
            return try JSONDecoder().decode(Output.self, from: Data(response.body.isEmpty ? Array("{}".utf8) : response.body))
        } catch {
            throw AWSError.badResponse(endpoint.service, "\(operation) reply: \(error)",
                                       requestID: response.header("x-amzn-RequestId"))
        }
    }
}

struct EmptyOutput: Codable, Sendable {}
