@testable import AWSSigV4
import FoundationEssentials
import Testing

@Suite struct SignerUnitTests {
    let creds = Credentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    let date = Date(timeIntervalSince1970: 1_440_938_160)

    @Test func derivedKeyIsCachedPerDayRegionAndService() {
        let cache = SigningKeyCache()
        let signer = SigV4Signer(region: "us-east-1", service: "s3", options: .s3, keyCache: cache)
        let request = SignableRequest(method: "GET", path: "/b/k", headers: [("Host", "h")], payload: .unsigned)
        let first = signer.signHeaders(request, credentials: creds, date: date)
        _ = signer.signHeaders(request, credentials: creds, date: date.addingTimeInterval(60))
        #expect(cache.derivationCount == 1)
        // A new day, another region, or a rotated secret derives a new key.
        _ = signer.signHeaders(request, credentials: creds, date: date.addingTimeInterval(86400))
        _ = SigV4Signer(region: "eu-west-1", service: "s3", options: .s3, keyCache: cache)
            .signHeaders(request, credentials: creds, date: date)
        var rotated = creds
        rotated.secretAccessKey = "other"
        let third = signer.signHeaders(request, credentials: rotated, date: date)
        #expect(cache.derivationCount == 4)
        #expect(first.signature != third.signature)
    }

    @Test func s3RulesNeitherReencodeNorNormalise() {
        // S3 keys may contain `%`, `..` and `//`; the wire path is signed exactly as sent.
        let signer = SigV4Signer(region: "us-east-1", service: "s3", options: .s3, keyCache: SigningKeyCache())
        let path = "/bucket/" + URIEncoding.encode("dir/../a b+c=d&é~%.txt", keepSlash: true) + "//x"
        let request = SignableRequest(method: "PUT", path: path, headers: [("Host", "h")], payload: .unsigned)
        let result = signer.signHeaders(request, credentials: creds, date: date)
        let canonicalPath = result.canonicalRequest.split(separator: "\n", omittingEmptySubsequences: false)[1]
        #expect(canonicalPath == "/bucket/dir/../a%20b%2Bc%3Dd%26%C3%A9~%25.txt//x")
        #expect(result.canonicalRequest.hasSuffix("\nUNSIGNED-PAYLOAD"))
        #expect(result.addedHeaders.contains { $0 == ("x-amz-content-sha256", "UNSIGNED-PAYLOAD") })
    }

    @Test func standardRulesEncodeTwice() {
        let signer = SigV4Signer(region: "us-east-1", service: "service", keyCache: SigningKeyCache())
        let request = SignableRequest(method: "GET", path: "/a%20b", headers: [("Host", "h")], payload: .empty)
        let result = signer.signHeaders(request, credentials: creds, date: date)
        #expect(result.canonicalRequest.split(separator: "\n")[1] == "/a%2520b")
    }

    @Test func credentialsNeverPrintTheirSecrets() {
        let c = Credentials(accessKeyID: "ASIAEXAMPLE", secretAccessKey: "SECRETSECRET", sessionToken: "TOKENTOKEN")
        for text in [c.description, String(describing: c), String(reflecting: c), "\(c)"] {
            #expect(!text.contains("SECRETSECRET"))
            #expect(!text.contains("TOKENTOKEN"))
            #expect(text.contains("ASIAEXAMPLE"))
        }
    }

    @Test func digestsMatchKnownAnswers() {
        #expect(
            Digest.sha256(Array("abc".utf8)).hexString
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(Digest.md5(Array("abc".utf8)).hexString == "900150983cd24fb0d6963f7d28e17f72")
        // RFC 4231 test case 2.
        #expect(
            Digest.hmacSHA256(key: Array("Jefe".utf8), message: Array("what do ya want for nothing?".utf8)).hexString
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(Digest.md5([UInt8]()).base64String == "1B2M2Y8AsgTpgAmY7PhCfg==")
        var streaming = StreamingDigest(.sha256)
        streaming.update(Array("a".utf8))
        streaming.update(Array("bc".utf8))
        #expect(streaming.finalize() == Digest.sha256(Array("abc".utf8)))
    }

    @Test func civilTimeRoundTrips() {
        #expect(AmzDate(date).full == "20150830T123600Z")
        #expect(CivilTime.parseISO8601("2015-08-30T12:36:00Z") == 1_440_938_160)
        #expect(CivilTime.parseISO8601("2015-08-30T12:36:00.123+01:00") == Int64(1_440_934_560))
        #expect(CivilTime.parseHTTPDate("Sun, 30 Aug 2015 12:36:00 GMT") == 1_440_938_160)
        #expect(CivilTime(epochSeconds: 1_440_938_160).httpDate == "Sun, 30 Aug 2015 12:36:00 GMT")
        #expect(CivilTime(epochSeconds: 951_782_400).iso8601 == "2000-02-29T00:00:00Z")
    }

    @Test func uriEncodingFollowsAWSRules() {
        #expect(URIEncoding.encode("a b+c/é~", keepSlash: false) == "a%20b%2Bc%2F%C3%A9~")
        #expect(URIEncoding.decode("a%20b+c", plusIsSpace: true) == "a b c")
        #expect(URIEncoding.decode("100%", plusIsSpace: false) == "100%")
    }
}
