import AWSCore
import AWSServices
import FoundationEssentials
import TestSupport
import Testing

/// Every way a test peer departs from AWS that the suite works around, each checked against the pinned peer
/// (scripts/lib/peers-requirements.txt). The product follows AWS's documentation; these tests say where a peer does
/// not, and how the suite copes. A peer upgrade is a deliberate change: a test here that fails after one means the
/// quirk went away or changed, and the workaround it names can go or must change.
///
/// Checked where they are worked around:
/// - moto answers a `partNumber` GET with the whole object (AWS serves the part): the download takes it in byte
///   ranges, `S3RangedDownloadTests.aServerThatIgnoresPartNumberIsServedInRanges`.
/// - moto stores the CRC-32C an upload's trailer gives without checking it (AWS refuses a wrong one):
///   `S3MotoTests.downloadsAreCheckedAgainstTheStoredCRC32C` uses it to store a corrupt object.
/// - microburst drops Content-Length from the replies it relays: `S3FaultTests` takes the first reply from moto.
///
/// Worked around in the scripts, and not cheap to show in a test:
/// - moto's ReceiveMessage can give one message to two receivers at once (`scripts/lib/moto_server.py` locks the
///   scan); SQS gives a message to one receiver within its visibility timeout.
/// - moto never expires STS credentials (`scripts/lib/imds_standin.py` deletes each rotated key at its expiry).
/// - moto's IMDS needs no token, has no user-data and fails on spot paths: the suite has its own IMDSv2 stand-in.
/// - moto cannot let EC2 assume a role (its trust check fails for a service principal): `pz_assumable_copy_of_role`.
/// - moto without the `crc32c` module computes a CRC-32 under the CRC-32C name: the module is pinned with the peers.
/// - moto 5.2.6 checks a made-up `s3:CreateMultipartUpload`: the pin stays at 5.2.5, and
///   `motoChecksPutObjectForAMultipartUpload` fails on a moto that does it.
///
/// Gone with the pin to 5.2.5 (moto 5.2.1 had them; the suite no longer works around them): a refused signature for
/// a listing whose prefix holds a `/`, and for keys with `+`, `=`, `é` and their like.
@Suite(.enabled(if: TestEnvironment.canRun(.moto, .seaweed)), .timeLimit(.minutes(3)))
struct PeerQuirkTests {
    /// One bucket per server for the whole suite: SeaweedFS gives every bucket volumes of its own, and a local
    /// server has few.
    static let names = ["moto": uniqueName("pz-quirk"), "seaweed": uniqueName("pz-quirk")]

    func bucket(_ s3: S3Client, _ prefix: String) async throws -> String {
        let seaweed = ParsedURL(try TestEnvironment.endpoint(.seaweed))?.port == s3.endpoint.port
        let name = Self.names[seaweed ? "seaweed" : "moto"]!
        try await s3.createBucket(name, logger: quietLogger)
        return name
    }

    func isSignatureRefusal(_ error: any Error) -> Bool {
        (error as? AWSError)?.code == "SignatureDoesNotMatch"
    }

    /// On AWS a batch action needs no permission of its own: `sqs:SendMessage` allows SendMessageBatch. moto checks
    /// `sqs:SendMessageBatch`, an action IAM does not have. Worked around in the product, harmlessly on AWS:
    /// BatchFallback sends one message per call after a refused batch whose single calls work.
    @Test func motoChecksAnSQSBatchActionOfItsOwn() async throws {
        try await withTemporaryDirectory { dir in
            let admin = SQSClient(context: try TestEnvironment.motoContext())
            let queueURL = try await admin.createQueue(name: uniqueName("pz-quirk"), logger: quietLogger)
            let denied = try await credentialsDenying([("sqs:SendMessageBatch", "*")], directory: dir)
            let sqs = SQSClient(
                context: TestEnvironment.context(endpoint: try TestEnvironment.endpoint(.moto), credentials: denied))
            await #expect(
                performing: {
                    _ = try await sqs.sendMessageBatch(
                        queueURL: queueURL, entries: [(id: "1", body: "x")], logger: quietLogger)
                }, throws: { ($0 as? AWSError)?.httpStatus == 403 })
            try await sqs.sendMessage(queueURL: queueURL, body: "x", logger: quietLogger)
        }
    }

    /// AWS authorizes CreateMultipartUpload with `s3:PutObject`; there is no `s3:CreateMultipartUpload` action. The
    /// pinned moto agrees, so a role denied that made-up action may still start an upload. moto 5.2.6 checks it,
    /// and refuses the worker's least-privilege role its start-up write check: this fails on such a moto.
    @Test func motoChecksPutObjectForAMultipartUpload() async throws {
        try await withTemporaryDirectory { dir in
            let admin = try S3Client(context: try TestEnvironment.motoContext())
            let name = try await bucket(admin, "pz-quirk")
            let denied = try await credentialsDenying([("s3:CreateMultipartUpload", "*")], directory: dir)
            let s3 = try S3Client(
                context: TestEnvironment.context(endpoint: try TestEnvironment.endpoint(.moto), credentials: denied))
            let upload = try await s3.createMultipartUpload(bucket: name, key: "probe", logger: quietLogger)
            try await s3.abortMultipartUpload(bucket: name, key: "probe", uploadID: upload, logger: quietLogger)
        }
    }

    /// Neither peer checks the signing region, and moto does not check the signing time (AWS refuses a request
    /// signed more than 15 minutes off, which SeaweedFS does too). Worked around: the region and clock-skew
    /// behaviour is tested on SeaweedFS (skew) and in the signer's unit tests (region in the scope).
    @Test func motoChecksNeitherRegionNorTimeAndSeaweedNotTheRegion() async throws {
        let motoEndpoint = try TestEnvironment.endpoint(.moto)
        let motoCredentials = try TestEnvironment.motoCredentials()
        let admin = try S3Client(context: try TestEnvironment.motoContext())
        let name = try await bucket(admin, "pz-quirk")
        let elsewhere = try S3Client(
            context: TestEnvironment.context(
                endpoint: motoEndpoint, credentials: motoCredentials, region: "xx-nowhere-7"))
        _ = try await elsewhere.listObjectsV2(bucket: name, logger: quietLogger)
        let anHourAhead = try S3Client(
            context: TestEnvironment.context(
                endpoint: motoEndpoint, credentials: motoCredentials, now: { Date().addingTimeInterval(3600) }))
        _ = try await anHourAhead.listObjectsV2(bucket: name, logger: quietLogger)

        let seaweed = try S3Client(
            context: TestEnvironment.context(
                endpoint: try TestEnvironment.endpoint(.seaweed), credentials: try TestEnvironment.seaweedCredentials(),
                region: "xx-nowhere-7"))
        _ = try await seaweed.listObjectsV2(bucket: try await bucket(seaweed, "pz-quirk"), logger: quietLogger)
    }

    /// SeaweedFS (and moto) store a body whose bytes do not match its signed `x-amz-content-sha256`; AWS refuses it
    /// (XAmzContentSHA256Mismatch). Worked around: uploads carry a CRC-32C that SeaweedFS does check
    /// (ChecksumFramingTests, S3SeaweedTests), so a corrupted body is still caught by a peer.
    @Test func seaweedDoesNotCheckTheBodyAgainstItsSignedHash() async throws {
        let seaweed = try S3Client(context: try TestEnvironment.seaweedContext())
        let name = try await bucket(seaweed, "pz-quirk")
        let other = Digest.sha256(Array("not this body".utf8)).hexString
        _ = try await seaweed.context.client.send(
            AWSRequest(
                method: "PUT", path: "/\(name)/mismatch", headers: [("Content-Type", "application/octet-stream")],
                body: .bytes(Array("this body".utf8)), payload: .sha256Hex(other)),
            to: seaweed.endpoint, signing: .s3, logger: quietLogger)
        #expect(try await seaweed.headObject(bucket: name, key: "mismatch", logger: quietLogger)?.size == 9)
    }

    /// moto stores a PUT whose Content-Type is `application/x-www-form-urlencoded` (libcurl's default for a body) as
    /// an empty object; AWS stores the bytes. The product never relies on a default: every PUT names its type.
    @Test func motoStoresAFormEncodedPutAsAnEmptyObject() async throws {
        let moto = try S3Client(context: try TestEnvironment.motoContext())
        let name = try await bucket(moto, "pz-quirk")
        _ = try await moto.context.client.send(
            AWSRequest(
                method: "PUT", path: "/\(name)/form", headers: [("Content-Type", "application/x-www-form-urlencoded")],
                body: .bytes(Array("a=b".utf8))),
            to: moto.endpoint, signing: .s3, logger: quietLogger)
        #expect(try await moto.headObject(bucket: name, key: "form", logger: quietLogger)?.size == 0)
    }

    /// AWS honours `If-Match` on CompleteMultipartUpload (412 when the object changed); moto ignores it, and
    /// SeaweedFS, as AWS, refuses. The product sends it (a new run of an input replaces its output on the ETag just
    /// read); its conditional writes are checked on SeaweedFS for a multipart output.
    @Test func motoIgnoresIfMatchOnCompleteMultipartUpload() async throws {
        for (server, expectRefusal) in [(TestEnvironment.Server.moto, false), (.seaweed, true)] {
            let context = server == .moto ? try TestEnvironment.motoContext() : try TestEnvironment.seaweedContext()
            var options = S3Client.Options()
            options.multipartThreshold = 5 << 20
            options.partSize = 5 << 20
            let s3 = try S3Client(context: context, options: options)
            let name = try await bucket(s3, "pz-quirk")
            try await s3.putObject(bucket: name, key: "k", bytes: Array("first".utf8), logger: quietLogger)
            try await withTemporaryDirectory { dir in
                makeFile(dir + "/big", size: 6 << 20, seed: 3)
                let write = WriteOptions(condition: .ifMatch("\"0123456789abcdef0123456789abcdef\""))
                do {
                    try await s3.putObject(
                        bucket: name, key: "k", file: .path(dir + "/big"), write: write, logger: quietLogger)
                    #expect(!expectRefusal, "\(server) took a completion whose If-Match did not hold")
                } catch {
                    #expect(expectRefusal && (error as? AWSError)?.httpStatus == 412, "\(server): \(error)")
                }
            }
        }
    }
}
