import AWSCore
import AWSServices
import FoundationEssentials
import Logging
import Synchronization
import Testing
import TestSupport
@testable import Operators
import Worker

/// What `enqueue` sends and how it decides an input is done, without a server.
struct EnqueueTests {
    static let awkwardKeys = [
        "{not json", "s3://looks/like/a/uri", "  {spaced", "ends with a line break\n", "plain/key.txt", "   ",
        "tab\tand \"quotes\" and \\ and é", "+plus=equals&amp",
    ]

    /// Every key, however it starts or ends, comes back exactly from a JSON body, as the daemon reads it; an `s3://`
    /// body is made only for keys that come back exactly from it.
    @Test(arguments: awkwardKeys)
    func bodiesAreReadBackExactly(key: String) throws {
        let parser = MessageParser(inputBucket: "in-bucket", inputPrefix: "")
        let body = try #require(BodyForm.json.body(bucket: "in-bucket", key: key))
        #expect(try parser.parse(body) == .tasks([S3URI(bucket: "in-bucket", key: key)]), "\(body)")
        let uri = BodyForm.s3uri.body(bucket: "in-bucket", key: key)
        let uriReadsBack = uri.flatMap { try? parser.parse($0) } == .tasks([S3URI(bucket: "in-bucket", key: key)])
        #expect((uri != nil) == uriReadsBack, "\(uri.debugDescription)")
        #expect(uri != nil || key.last?.isWhitespace == true)
        // JSON without a bucket means the daemon's input bucket.
        let bare = try #require(BodyForm.json.body(bucket: nil, key: key))
        #expect(try parser.parse(bare) == .tasks([S3URI(bucket: "in-bucket", key: key)]))
    }

    /// A bare key is sent only when the daemon would read it back as that key; the others are refused, not misread.
    @Test(arguments: awkwardKeys)
    func bareKeysAreSentOnlyWhenTheyReadBack(key: String) {
        let parser = MessageParser(inputBucket: "in-bucket", inputPrefix: "")
        let readsBack = (try? parser.parse(key)) == .tasks([S3URI(bucket: "in-bucket", key: key)])
        let body = BodyForm.key.body(bucket: "in-bucket", key: key)
        #expect((body != nil) == readsBack, "key \(key.debugDescription): body \(body.debugDescription)")
        #expect(BodyForm.s3uri.body(bucket: nil, key: key) == nil)
    }

    /// The predicted output key is the daemon's own rule: the folder below `inputPrefix`, under `outputPrefix`.
    @Test func thePredictedOutputIsTheDaemonsKey() {
        #expect(
            DoneCheck.predictedOutput(
                inputKey: "in/a/b/x.txt", outputName: "{name}.out", inputPrefix: "in/", outputPrefix: "res/")
                == "res/a/b/x.txt.out")
        #expect(
            DoneCheck.predictedOutput(
                inputKey: "x", outputName: "result-{name}-{name}", inputPrefix: "", outputPrefix: "")
                == "result-x-x")
        // The same rule the daemon applies to the name its command printed.
        #expect(
            DoneCheck.predictedOutput(
                inputKey: "in/a/x.txt", outputName: "y.csv", inputPrefix: "in/", outputPrefix: "o/")
                == TaskPaths.outputKey(
                    inputKey: "in/a/x.txt", inputPrefix: "in/", outputPrefix: "o/", outputName: "y.csv"))
    }

    @Test func aCheckpointSurvivesARoundTripAndIsNeverHalfWritten() async throws {
        try await withTemporaryDirectory { dir in
            let path = dir + "/checkpoint"
            let saved = EnqueueCheckpoint(source: "s3://b/p", lastKey: "p/ü \"x\"\n", lines: 0, sent: 12_000)
            #expect(saved.write(path))
            #expect(EnqueueCheckpoint.read(path) == saved)
            // Renamed into place: no temporary file is left beside it.
            #expect(LocalFile.listDirectory(dir) == ["checkpoint"])
            #expect(EnqueueCheckpoint.read(dir + "/none") == nil)
        }
    }
}

/// Answers SendMessageBatch as told: `refused` bodies fail as the sender's fault (for good), `flaky` bodies fail
/// with SQS's own fault (worth sending again) that many times first.
final class ScriptedSender: BatchSending {
    let refused: Set<String>
    let flaky: Mutex<[String: Int]>
    let sent = Mutex<[String]>([])

    init(refused: Set<String> = [], flaky: [String: Int] = [:]) {
        self.refused = refused
        self.flaky = Mutex(flaky)
    }

    func sendMessageBatch(queueURL: String, entries: [(id: String, body: String)], logger: Logger)
        async throws(AWSError) -> SQSBatchResult
    {
        var successful: [String] = []
        var failed: [SQSBatchResult.Failure] = []
        for entry in entries {
            if refused.contains(entry.body) {
                failed.append(.init(id: entry.id, code: "InvalidMessageContents", message: "no", senderFault: true))
            } else if flaky.withLock({ left in
                guard let n = left[entry.body], n > 0 else { return false }
                left[entry.body] = n - 1
                return true
            }) {
                failed.append(.init(id: entry.id, code: "InternalError", message: "again", senderFault: false))
            } else {
                successful.append(entry.id)
                sent.withLock { $0.append(entry.body) }
            }
        }
        return SQSBatchResult(successful: successful, failed: failed)
    }

    func sendMessage(queueURL: String, body: String, logger: Logger) async throws(AWSError) -> String { "id" }
}

/// Every entry ends counted: sent, or failed. An entry refused in a round where another entry had to go again
/// used to be counted as neither, and enqueue then exited 0 with its checkpoint past it.
struct EnqueuerCountingTests {
    @Test func anEntryRefusedBesideOneThatIsRetriedIsCountedFailed() async {
        let sender = ScriptedSender(refused: ["bad"], flaky: ["slow": 1])
        let totals = await Enqueuer(sqs: sender, queueURL: "q").send(["ok", "bad", "slow"], logger: Logger(label: "t"))
        #expect(totals.sent == 2 && totals.failed == 1, "\(totals)")
        #expect(sender.sent.withLock { $0 }.sorted() == ["ok", "slow"])
    }
}
