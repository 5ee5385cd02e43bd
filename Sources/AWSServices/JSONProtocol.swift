import AWSCore
import FoundationEssentials
import HTTPCurl
import Logging

/// The AWS JSON protocol (1.0: SQS, DynamoDB; 1.1: SSM): `POST /` with `X-Amz-Target: <prefix>.<Operation>`.
struct JSONProtocol: Sendable {
    let targetPrefix: String
    let client: AWSClient
    var contentType = "application/x-amz-json-1.0"

    /// With Codable input and output, for calls off the per-task path.
    func call<Input: Encodable, Output: Decodable>(
        _ operation: String, _ input: Input, endpoint: ServiceEndpoint, timeouts: Timeouts = .default,
        logger: Logger
    ) async throws(AWSError) -> Output {
        let body: Data
        do { body = try JSONEncoder().encode(input) } catch {
            throw AWSError.client(endpoint.service, "cannot encode \(operation) input: \(error)")
        }
        let response = try await send(
            operation, body: Array(body), endpoint: endpoint, timeouts: timeouts, logger: logger)
        if Output.self == EmptyOutput.self, let empty = EmptyOutput() as? Output { return empty }
        do {
            return try JSONDecoder().decode(
                Output.self, from: Data(response.body.isEmpty ? Array("{}".utf8) : response.body))
        } catch {
            throw AWSError.badResponse(
                endpoint.service, "\(operation) reply: \(error)",
                requestID: response.header("x-amzn-RequestId"))
        }
    }

    /// With untyped input and output: written and read in one pass each, for the calls every task makes
    /// (`JSONEncoder` and `JSONDecoder` cost more than the rest of such a call's own work).
    func call(
        _ operation: String, value input: JSONValue, endpoint: ServiceEndpoint, timeouts: Timeouts = .default,
        logger: Logger
    ) async throws(AWSError) -> JSONValue {
        var body: [UInt8] = []
        input.write(to: &body)
        let response = try await send(operation, body: body, endpoint: endpoint, timeouts: timeouts, logger: logger)
        if response.body.isEmpty { return .object([:]) }
        do {
            return try JSONValue.parse(response.body)
        } catch {
            throw AWSError.badResponse(
                endpoint.service, "\(operation) reply: \(error)",
                requestID: response.header("x-amzn-RequestId"))
        }
    }

    private func send(
        _ operation: String, body: [UInt8], endpoint: ServiceEndpoint, timeouts: Timeouts,
        logger: Logger
    ) async throws(AWSError) -> HTTPResponse {
        let request = AWSRequest(
            method: "POST", path: "/",
            headers: [
                ("Content-Type", contentType), ("X-Amz-Target", "\(targetPrefix).\(operation)"),
            ],
            body: .bytes(body), timeouts: timeouts)
        return try await client.send(request, to: endpoint, signing: .standard, logger: logger)
    }
}

struct EmptyOutput: Codable, Sendable {}
