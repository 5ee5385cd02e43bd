import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport
import Worker

/// The bad-input catalogue, end to end through a running worker: each case gets one clear log line and the right
/// fate for its message, and the worker goes on. (docs/failures.md, "Bad input, case by case", lists the cases and
/// where each is tested; the parsers' own cases are unit-tested in WorkerTests.)
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct BadInputCatalogueTests {
    static func event(bucket: String, key: String) -> String {
        #"{"Records":[{"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"\#(bucket)"},"object":{"key":"\#(key)"}}}]}"#
    }

    @Test func badMessagesAreRecordedAndDeletedAndMissingInputsGivenUp() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("good.txt", "good")
            // Cases whose body can never be processed: a bad-message record each, then deleted.
            let bad: [(String, String)] = [
                ("blank", "   "),
                ("256 KiB", String(repeating: "k", count: 256 * 1024 - 64)),
                ("not UTF-8 once decoded", Self.event(bucket: h.inputBucket, key: "%FF%FEbad.txt")),
                ("JSON of the wrong shape", #"{"files": ["a.txt"]}"#),
                ("an event for another bucket", Self.event(bucket: "someone-elses-bucket", key: "x.txt")),
                ("a key over 1024 bytes", String(repeating: "d/", count: 520) + "f.txt"),
                ("a NUL in the key", #"{"key": "a\u0000b.txt"}"#),
                ("%00 in an event key", Self.event(bucket: h.inputBucket, key: "a%00b.txt")),
            ]
            // Keys that are valid but name nothing: the input is missing, so a failure record at once.
            // (Keys with a newline or `%` are left out here: moto itself mishandles them, 404 on PUT and a refused
            // signature; their local names are unit-tested, and SeaweedFS takes such keys in S3SeaweedTests.)
            let missing = ["..", "/etc/passwd", "deleted-before-get.txt"]
            try await h.send(
                bad.map(\.1) + missing.map { #"{"key": \#(JSONValue.string($0).serialized)}"# } + ["good.txt"])
            let program = h.script("copy.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let worker = try h.startWorker(name: "w", parameters: h.parameters(["maxAttempts": "3"], program: program))
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.log("w").suffix(2000))")
            let keys = try await h.outputKeys()
            let log = h.log("w")
            #expect(keys.contains("good.txt.out"), "the worker did not go on to the good input")
            #expect(keys.filter { $0.hasPrefix("_failed/_bad-messages/") }.count == bad.count, "\(keys)")
            #expect(
                log.components(separatedBy: "bad message: recorded under _failed/ and deleted").count - 1 == bad.count)
            for reason in ["not UTF-8", "for bucket 'someone-elses-bucket'", "1024", "NUL", "wrong shape", "empty"] {
                #expect(log.contains(reason), "no log line says '\(reason)'")
            }
            for key in missing {
                #expect(keys.contains("_failed/\(key).json"), "no failure record for the missing '\(key)': \(keys)")
            }
            #expect(log.components(separatedBy: "input does not exist").count - 1 == missing.count)
            #expect(try await h.queueDepth() == 0)
        }
    }

    /// Megabytes on stdout are spooled to a file, not memory; the last line still names the output.
    @Test func aCommandPrintingMegabytesIsJudgedByItsLastLine() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("a.txt", "a")
            try await h.send(["a.txt"])
            let program = h.script(
                "loud.sh", "yes 'a line of chatter' | head -n 1000000\ncp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let worker = try h.startWorker(name: "w", parameters: h.parameters(program: program))
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.log("w").suffix(2000))")
            #expect(try await h.outputKeys() == ["a.txt.out"], "\(h.log("w").suffix(3000))")
        }
    }

    /// The task is given up, and its failure record cannot be written (the role may write outputs but not
    /// `_failed/`): the message is kept, never deleted without a trace. When it comes back, its attempts are used up:
    /// it is settled again without running the command. (A bucket missing or denied as a whole is a dead end instead:
    /// DeadEndTests.)
    @Test func anUnwritableFailureRecordKeepsTheMessage() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("a.txt", "a")
            try await h.send(["a.txt"])
            let program = h.script("fail.sh", "echo run >> \"\(dir)/runs\"\nexit 3\n")
            let denied = try await h.credentialsDenying([("s3:PutObject", "arn:aws:s3:::\(h.outputBucket)/_failed/*")])
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    ["maxAttempts": "1", "visibilityTimeout": "3"],
                    program: program), environment: denied)
            var keptTwice = false
            for _ in 0..<300 {
                let log = h.log("w")
                if log.components(separatedBy: "giving up, but the failure record could not be written: message kept")
                    .count > 2,
                    log.contains("attempts used up: settling the message without running it again")
                {
                    keptTwice = true
                    break
                }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            worker.signal(SIGTERM)
            #expect(await worker.wait(timeout: 30) == .exited(0))
            let log = h.log("w")
            #expect(keptTwice, "\(log.suffix(2000))")
            #expect(log.contains("AccessDenied"), "\(log.suffix(2000))")
            #expect(
                LocalFile.readText(dir + "/runs") == "run\n", "the command ran again after its attempts were used up")
            #expect(try await h.queueDepth() == 1, "the message was lost")
            #expect(try await h.outputKeys().isEmpty)
        }
    }

    /// A message that comes back after its attempts were used up (its record or its delete did not go through) is
    /// settled before anything is downloaded or run: a record unless one is there already (kept as it is), then
    /// deleted (this queue has no dead-letter queue).
    @Test func aMessagePastItsAttemptsIsSettledWithoutRunningTheCommand() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("a.txt", "a")
            try await h.upload("b.txt", "b")
            try await h.send(["a.txt", "b.txt"])
            // Another "instance" receives both three times without settling them.
            var seen: [String: Int] = [:]
            for _ in 0..<60 where seen.count < 2 || seen.values.contains(where: { $0 < 3 }) {
                for message in try await h.sqs.receiveMessages(
                    queueURL: h.queueURL, maxMessages: 10, waitSeconds: 1,
                    visibilityTimeout: 0, logger: quietLogger)
                {
                    seen[message.body, default: 0] += 1
                }
            }
            try #require(seen.count == 2 && seen.values.allSatisfy { $0 >= 3 }, "\(seen)")
            let earlier = #"{"reason": "the attempt that gave up wrote this"}"#
            try await h.s3.putObject(
                bucket: h.outputBucket, key: "_failed/a.txt.json", bytes: Array(earlier.utf8),
                logger: quietLogger)
            let program = h.script("copy.sh", "echo \"$1\" >> \"\(dir)/runs\"\ncp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let worker = try h.startWorker(name: "w", parameters: h.parameters(["maxAttempts": "2"], program: program))
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w").suffix(2000))")
            #expect(!fileExists(dir + "/runs"), "the command ran again: \(LocalFile.readText(dir + "/runs") ?? "")")
            #expect(try await h.output("_failed/a.txt.json") == earlier, "the earlier record was overwritten")
            #expect(try await h.output("_failed/b.txt.json").contains("not run again"))
            #expect(try await h.outputKeys() == ["_failed/a.txt.json", "_failed/b.txt.json"])
            #expect(try await h.queueDepth() == 0)
        }
    }

    /// An S3 event with several records: each gets its own fate. A missing one (with a key so long that its record
    /// needs a shortened key) is recorded on its own; the records after it are still processed.
    @Test func eachRecordOfAnS3EventHasItsOwnFate() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("ev/one.txt", "one")
            try await h.upload("ev/two.txt", "two")
            let missing = "ev/" + String(repeating: "m", count: 1010) + ".txt"
            let records = ["ev/one.txt", missing, "ev/two.txt"].map {
                #"{"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"\#(h.inputBucket)"},"object":{"key":"\#($0)"}}}"#
            }
            try await h.send([#"{"Records":["# + records.joined(separator: ",") + "]}"])
            let program = h.script("copy.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let worker = try h.startWorker(name: "w", parameters: h.parameters(program: program))
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w").suffix(2000))")
            let record = "_failed/_long-keys/" + Digest.sha256(Array(missing.utf8)).hexString + ".json"
            #expect(try await h.outputKeys() == [record, "ev/one.txt.out", "ev/two.txt.out"].sorted())
            #expect(try await h.output("ev/two.txt.out") == "two")
            #expect(try await h.output(record).contains(missing), "the record does not name the whole input")
            #expect(try await h.queueDepth() == 0)
        }
    }
}
