import AWSSigV4
import FoundationEssentials
import TestSupport
import Testing

/// Every case of AWS's SigV4 suites, compared stage by stage: canonical request, string to sign, signature and the
/// signed request, in header mode and (for the v4 layout) query mode. No case is skipped.
@Suite struct VectorTests {
    static let v4 = SigV4Vector.v4
    static let legacy = SigV4Vector.legacy

    @Test func suitesAreComplete() {
        // The README promises 38 v4 cases and 34 legacy ones; a missing folder must fail, not shrink the suite.
        #expect(Self.v4.count == 38)
        #expect(Self.legacy.count == 34)
    }

    static func signer(_ v: SigV4Vector) -> SigV4Signer {
        SigV4Signer(
            region: v.region, service: v.service,
            options: .init(
                doubleURIEncode: true, normalizePath: v.normalize, addContentSHA256Header: v.signBody,
                omitSessionTokenFromSignature: v.omitSessionToken),
            keyCache: SigningKeyCache())
    }

    static func signable(_ v: SigV4Vector) -> SignableRequest {
        SignableRequest(
            method: v.request.method, path: v.request.path, query: URIEncoding.parseQuery(v.request.rawQuery),
            headers: v.request.headers,
            payload: .sha256Hex(Digest.sha256(v.request.body).hexString))
    }

    static func credentials(_ v: SigV4Vector) -> Credentials {
        Credentials(accessKeyID: v.accessKeyID, secretAccessKey: v.secretAccessKey, sessionToken: v.sessionToken)
    }

    @Test(arguments: v4)
    func headerSigning(_ v: SigV4Vector) throws {
        let result = Self.signer(v).signHeaders(Self.signable(v), credentials: Self.credentials(v), date: v.timestamp)
        #expect(result.canonicalRequest == v.expected("header-canonical-request.txt"))
        #expect(result.stringToSign == v.expected("header-string-to-sign.txt"))
        #expect(result.signature == v.expected("header-signature.txt"))
        // The signed request: the original request line and headers, then ours, then the body.
        var lines = ["\(v.request.method) \(v.request.target) HTTP/1.1"] + v.request.headerLines
        lines += result.addedHeaders.map { "\($0.0):\($0.1)" }
        let rebuilt = lines.joined(separator: "\n") + "\n\n" + String(decoding: v.request.body, as: UTF8.self)
        #expect(rebuilt == v.expected("header-signed-request.txt"))
    }

    @Test(arguments: v4)
    func queryPresigning(_ v: SigV4Vector) throws {
        let result = Self.signer(v).presign(
            Self.signable(v), credentials: Self.credentials(v), date: v.timestamp, expires: v.expiresIn)
        #expect(result.canonicalRequest == v.expected("query-canonical-request.txt"))
        #expect(result.stringToSign == v.expected("query-string-to-sign.txt"))
        #expect(result.signature == v.expected("query-signature.txt"))
        let added = result.addedQuery.map { "\($0.0)=\(URIEncoding.encode($0.1))" }.joined(separator: "&")
        let target =
            v.request.target + (v.request.rawQuery.isEmpty ? (v.request.target.contains("?") ? "" : "?") : "&") + added
        var lines = ["\(v.request.method) \(target) HTTP/1.1"] + v.request.headerLines
        lines.append("")
        let rebuilt = lines.joined(separator: "\n") + "\n" + String(decoding: v.request.body, as: UTF8.self)
        #expect(rebuilt == v.expected("query-signed-request.txt"))
    }

    @Test(arguments: legacy)
    func legacySuite(_ v: SigV4Vector) throws {
        let result = Self.signer(v).signHeaders(Self.signable(v), credentials: Self.credentials(v), date: v.timestamp)
        #expect(result.canonicalRequest == SigV4Vector.legacyFile(v, "creq"))
        #expect(result.stringToSign == SigV4Vector.legacyFile(v, "sts"))
        let authorization = result.addedHeaders.first { $0.0 == "Authorization" }?.1
        #expect(authorization == SigV4Vector.legacyFile(v, "authz"))
    }
}
