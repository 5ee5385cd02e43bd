import AWSCore
import Logging

/// AWS's query protocol, as EC2 and Auto Scaling speak it: `Action` and `Version` with the parameters in a
/// form-encoded POST, the reply in XML.
struct QueryProtocol: Sendable {
    let context: AWSContext
    let endpoint: ServiceEndpoint
    let version: String

    func call(_ action: String, _ parameters: [(String, String)], logger: Logger) async throws(AWSError) -> XMLElement {
        let form = URIEncoding.formatQuery([("Action", action), ("Version", version)] + parameters)
        let request = AWSRequest(
            method: "POST", path: "/",
            headers: [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
            body: .bytes(Array(form.utf8)))
        let response = try await context.client.send(request, to: endpoint, signing: .standard, logger: logger)
        do { return try XML.parse(response.body) } catch {
            throw AWSError.badResponse(endpoint.service, "\(action) reply: \(error)")
        }
    }
}
