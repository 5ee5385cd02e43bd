@testable import AWSCore
@testable import AWSServices
import HTTPCurl
import Testing
import TestSupport
@preconcurrency import Glibc

@Suite struct ErrorAndParsingTests {
    @Test func receiveReplyIsReadWithAttributes() throws {
        let reply = try JSONValue.parse(
            #"""
            {"Messages":[{"MessageId":"m1","ReceiptHandle":"h1","MD5OfBody":"x","Body":"in/a.txt",
              "Attributes":{"ApproximateReceiveCount":"3","SentTimestamp":"1700000000000"}},
             {"MessageId":"m2","ReceiptHandle":"h2"}]}
            """#)
        let messages = try SQSClient.messages(in: reply)
        #expect(
            messages == [
                SQSMessage(
                    messageID: "m1", receiptHandle: "h1", body: "in/a.txt",
                    attributes: ["ApproximateReceiveCount": "3", "SentTimestamp": "1700000000000"]),
                SQSMessage(messageID: "m2", receiptHandle: "h2", body: "", attributes: [:]),
            ])
        #expect(messages[0].receiveCount == 3)
        #expect(try SQSClient.messages(in: .object([:])).isEmpty)
        // A message that cannot be deleted (no receipt handle) makes the reply unusable, rather than being dropped.
        #expect(throws: AWSError.self) {
            try SQSClient.messages(in: try JSONValue.parse(#"{"Messages":[{"MessageId":"m1"}]}"#))
        }
        #expect(throws: AWSError.self) { try SQSClient.messages(in: try JSONValue.parse(#"{"Messages":"m1"}"#)) }
    }

    @Test func batchReplyListsFailuresWithTheirCodes() throws {
        let result = SQSBatchResult(
            reply: try JSONValue.parse(
                #"""
                {"Successful":[{"Id":"0"},{"Id":"2"}],
                 "Failed":[{"Id":"1","Code":"ReceiptHandleIsInvalid","Message":"stale","SenderFault":true}]}
                """#))
        #expect(result.successful == ["0", "2"])
        #expect(result.failed.map(\.id) == ["1"])
        #expect(result.failed.first?.code == "ReceiptHandleIsInvalid")
        #expect(result.failed.first?.senderFault == true)
    }

    @Test func s3XMLErrorCarriesCodeMessageAndRequestID() {
        let body = Array(
            """
            <?xml version="1.0" encoding="UTF-8"?>
            <Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message>
            <Key>a&amp;b</Key><RequestId>4442587FB7D0A2F9</RequestId></Error>
            """.utf8)
        let error = AWSError.from(
            response: HTTPResponse(status: 404, headers: [("x-amz-request-id", "REQ1")], body: body),
            service: "s3")
        #expect(error.code == "NoSuchKey")
        #expect(error.message == "The specified key does not exist.")
        #expect(error.requestID == "REQ1")
        #expect(error.httpStatus == 404)
        #expect(!error.isRetryable)
        #expect("\(error)".contains("NoSuchKey"))
    }

    @Test func ec2QueryErrorIsNested() {
        let body = Array(
            "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>slow down</Message></Error></Errors><RequestID>ec2-req</RequestID></Response>"
                .utf8)
        let error = AWSError.from(response: HTTPResponse(status: 503, headers: [], body: body), service: "ec2")
        #expect(error.code == "RequestLimitExceeded")
        #expect(error.requestID == "ec2-req")
        #expect(error.isRetryable)
    }

    @Test func jsonErrorAndSQSQueryErrorHeader() {
        let body = Array(
            #"{"__type":"com.amazonaws.sqs#QueueDoesNotExist","message":"The specified queue does not exist."}"#.utf8)
        let error = AWSError.from(
            response: HTTPResponse(
                status: 400,
                headers: [
                    ("x-amzn-RequestId", "sqs-req"),
                    ("x-amzn-query-error", "AWS.SimpleQueueService.NonExistentQueue;Sender"),
                ],
                body: body), service: "sqs")
        #expect(error.code == "AWS.SimpleQueueService.NonExistentQueue")
        #expect(error.requestID == "sqs-req")
        #expect(!error.isRetryable)
        let throttled = AWSError.from(
            response: HTTPResponse(
                status: 400, headers: [],
                body: Array(#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"x"}"#.utf8)),
            service: "dynamodb")
        #expect(throttled.shortCode == "ThrottlingException")
        #expect(throttled.isRetryable)
        // SQS throttling as its JSON protocol answers it: the legacy code in the header is namespaced.
        let sqsThrottled = AWSError.from(
            response: HTTPResponse(
                status: 400, headers: [("x-amzn-query-error", "AWS.SimpleQueueService.ThrottlingException;Sender")],
                body: Array(#"{"__type":"com.amazonaws.sqs#ThrottlingException","message":"Rate exceeded"}"#.utf8)),
            service: "sqs")
        #expect(sqsThrottled.isRetryable)
    }

    @Test(arguments: [
        (500, "InternalError", true), (503, "SlowDown", true), (429, "", true), (400, "Throttling", true),
        (400, "ThrottlingException", true), (503, "RequestLimitExceeded", true), (403, "AccessDenied", false),
        (404, "NoSuchKey", false), (400, "InvalidParameterValue", false),
    ])
    func retryClassification(status: Int, code: String, retryable: Bool) {
        let error = AWSError(
            kind: .service, service: "s3", httpStatus: status, code: code.isEmpty ? "HTTP\(status)" : code,
            message: "")
        #expect(error.isRetryable == retryable)
    }

    @Test func clockSkewIsRecognised() {
        #expect(
            AWSError(kind: .service, service: "s3", httpStatus: 403, code: "RequestTimeTooSkewed", message: "")
                .isClockSkew)
        #expect(
            AWSError(
                kind: .service, service: "sqs", httpStatus: 400, code: "InvalidSignatureException",
                message: "Signature expired: 20150830T123600Z is now earlier than ..."
            ).isClockSkew)
        #expect(
            !AWSError(
                kind: .service, service: "s3", httpStatus: 403, code: "SignatureDoesNotMatch",
                message: "The request signature we calculated does not match"
            ).isClockSkew)
    }

    @Test func transportErrorsAreRetryableExceptLocalOnes() {
        #expect(AWSError(kind: .transport(.connect), service: "s3", code: "TransportError", message: "").isRetryable)
        #expect(AWSError(kind: .transport(.truncated), service: "s3", code: "TransportError", message: "").isRetryable)
        #expect(!AWSError(kind: .transport(.localFile), service: "s3", code: "TransportError", message: "").isRetryable)
        #expect(!AWSError(kind: .transport(.cancelled), service: "s3", code: "TransportError", message: "").isRetryable)
    }

    @Test func xmlParserHandlesEntitiesCDATAAndNamespaces() throws {
        let root = try XML.parse(
            """
            <?xml version="1.0"?><!-- c --><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
            <Contents><Key>a &lt;b&gt; &#233;&#x41;</Key><Size>3</Size></Contents>
            <Contents><Key><![CDATA[x&y]]></Key><Empty/></Contents></ListBucketResult>
            """)
        #expect(root.localName == "ListBucketResult")
        #expect(root.all("Contents").map { $0["Key"] } == ["a <b> éA", "x&y"])
        #expect(root.all("Contents")[1].child("Empty")?.text == "")
        #expect(throws: XMLParseError.self) { try XML.parse("<a><b></a>") }
        #expect(throws: XMLParseError.self) { try XML.parse("<a>&bogus;</a>") }
    }

    @Test func retryPolicyIsCappedExponentialWithFullJitter() {
        let top = RetryPolicy(maxAttempts: 10, baseDelay: 0.1, maxDelay: 5, random: { 0.999999 })
        #expect(abs(top.delay(beforeRetry: 1) - 0.1) < 0.001)
        #expect(abs(top.delay(beforeRetry: 3) - 0.4) < 0.001)
        #expect(abs(top.delay(beforeRetry: 9) - 5) < 0.001)  // capped
        let bottom = RetryPolicy(random: { 0 })
        #expect(bottom.delay(beforeRetry: 4) == 0)  // full jitter reaches zero
    }

    @Test func parsedURLs() {
        let url = ParsedURL("https://sqs.us-west-2.amazonaws.com/123456789012/my-queue")
        #expect(url?.host == "sqs.us-west-2.amazonaws.com")
        #expect(url?.port == nil)
        #expect(url?.path == "/123456789012/my-queue")
        #expect(ParsedURL("http://127.0.0.1:5000")?.port == 5000)
        #expect(ParsedURL("http://[::1]:8080/x")?.host == "::1")
        #expect(ParsedURL("ftp://x") == nil)
        #expect(ParsedURL("http://host:99999/") == nil)
    }
}

/// The secret scan that every test's folder goes through finds a planted secret, and nothing in a clean folder.
struct SecretScanTests {
    @Test func findsAPlantedSecretAndOnlyThen() async throws {
        try await withTemporaryDirectory { dir in
            let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
            LocalFile.write(dir + "/worker.log", Array("2026-11-23T10:00:00Z info task done slot=1\n".utf8))
            #expect(SecretScan.scan(directory: dir, secrets: [secret]).isEmpty)
            _ = mkdir(dir + "/nested", 0o700)
            LocalFile.write(dir + "/nested/w1.log", Array("error credentials=\(secret)\n".utf8))
            let hits = SecretScan.scan(directory: dir, secrets: [secret])
            #expect(hits.count == 1 && hits[0].contains("nested/w1.log"))
            removeTree(dir + "/nested")
        }
    }
}

/// Task folders are removed through descriptors: links are removed, never followed, whatever a command left.
struct TreeRemovalTests {
    @Test func linksAreRemovedNotFollowedAndDepthIsNoLimit() async throws {
        try await withTemporaryDirectory { dir in
            let outside = dir + "/outside", tree = dir + "/tree"
            _ = mkdir(outside, 0o700)
            LocalFile.write(outside + "/keep.txt", Array("keep".utf8))
            _ = mkdir(tree, 0o700)
            _ = symlink(outside, tree + "/to-outside")
            _ = symlink(outside + "/keep.txt", tree + "/to-file")
            // A name that is not UTF-8, and a chain of folders far deeper than the descriptors held at once.
            let odd: [CChar] = Array(tree.utf8CString.dropLast()) + [47, -23, 0]
            #expect(mkdir(odd, 0o700) == 0)
            let top = open(tree, O_RDONLY | O_DIRECTORY)
            var current = dup(top)
            for _ in 0..<600 {
                #expect(mkdirat(current, "d", 0o700) == 0)
                let next = openat(current, "d", O_RDONLY | O_DIRECTORY)
                close(current)
                current = next
            }
            LocalFile.write("/proc/self/fd/\(current)/deepest.txt", Array("x".utf8))
            close(current)
            close(top)
            let parent = open(dir, O_RDONLY | O_DIRECTORY)
            defer { close(parent) }
            let held = LocalFile.removeTree(in: parent, "tree", maxDepth: 48)
            #expect(!fileExists(tree), "the tree is still there")
            #expect(LocalFile.readText(outside + "/keep.txt") == "keep", "a link was followed")
            // A chain 600 deep never held more than 48 folders open at once (a command can make one deep enough to
            // run the daemon out of descriptors).
            #expect(held <= 48, "\(held) descriptors held at once")

        }
    }
}
