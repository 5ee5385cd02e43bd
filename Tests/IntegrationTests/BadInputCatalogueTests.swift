import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport
import Worker

/// The bad-input catalogue, end to end through a running worker: each case gets one clear log line and the right
/// fate for its message, and the worker goes on. (README, "Failure handling", lists the cases and where each is
/// tested; the parsers' own cases are unit-tested in WorkerTests.)
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
            try await h.send(bad.map(\.1) + missing.map { #"{"key": \#(JSONValue.string($0).serialized)}"# } + ["good.txt"])
            let program = h.script("copy.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let worker = try h.startWorker(name: "w", parameters: h.parameters(["maxAttempts": "3"], program: program))
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.log("w").suffix(2000))")
            let keys = try await h.outputKeys()
            let log = h.log("w")
            #expect(keys.contains("good.txt.out"), "the worker did not go on to the good input")
            #expect(keys.filter { $0.hasPrefix("_failed/_bad-messages/") }.count == bad.count, "\(keys)")
            #expect(log.components(separatedBy: "bad message: recorded under _failed/ and deleted").count - 1 == bad.count)
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
            let program = h.script("loud.sh", "yes 'a line of chatter' | head -n 1000000\ncp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            let worker = try h.startWorker(name: "w", parameters: h.parameters(program: program))
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.log("w").suffix(2000))")
            #expect(try await h.outputKeys() == ["a.txt.out"], "\(h.log("w").suffix(3000))")
        }
    }

    enum UnwritableOutput: String, CaseIterable, Sendable { case missingBucket, deniedByPolicy }

    /// Uploads fail (NoSuchBucket, or AccessDenied from the role's policy) and so does the failure record: the
    /// message is kept, never silently deleted.
    @Test(arguments: UnwritableOutput.allCases)
    func anUnwritableOutputBucketKeepsTheMessage(_ variant: UnwritableOutput) async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            try await h.upload("a.txt", "a")
            try await h.send(["a.txt"])
            let program = h.script("copy.sh", "cp \"$1\" \"$1.out\"\necho \"$1.out\"\n")
            var extra = ["maxAttempts": "2", "visibilityTimeout": "5"]
            var imds: IMDSStandIn?
            switch variant {
            case .missingBucket:
                extra["outputBucket"] = "no-such-bucket-\(UInt32.random(in: 0...UInt32.max))"
            case .deniedByPolicy:
                // The instance role may do anything but write to the output bucket (moto enforces IAM on it).
                imds = try await IMDSStandIn.start(directory: dir, userData: nil, credentialLifetime: 3600,
                                                   roleARN: try await Self.roleDenyingWrites(to: h.outputBucket, in: dir))
            }
            defer { if let imds { Task { await imds.stop() } } }
            let worker = try h.startWorker(name: "w", parameters: h.parameters(extra, program: program), imds: imds?.endpoint,
                                           instanceRole: imds != nil)
            var kept = false
            for _ in 0..<300 {
                if h.log("w").contains("giving up, but the failure record could not be written: message kept") { kept = true; break }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
            worker.signal(SIGTERM)
            #expect(await worker.wait(timeout: 30) == .exited(0))
            let log = h.log("w")
            #expect(kept, "\(log.suffix(2000))")
            #expect(log.contains(variant == .missingBucket ? "NoSuchBucket" : "AccessDenied"), "\(log.suffix(2000))")
            #expect(try await h.queueDepth() == 1, "the message was lost")
            #expect(try await h.outputKeys().isEmpty)
        }
    }

    /// A role that may do everything except put objects into `bucket`.
    static func roleDenyingWrites(to bucket: String, in dir: String) async throws -> String {
        let name = uniqueName("pz-denied")
        let trust = #"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#
        let role = try await Scripts.awsCLI(["iam", "create-role", "--role-name", name, "--assume-role-policy-document", trust],
                                            directory: dir)
        let policy = """
            {"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},
             {"Effect":"Deny","Action":"s3:PutObject","Resource":["arn:aws:s3:::\(bucket)","arn:aws:s3:::\(bucket)/*"]}]}
            """
        _ = try await Scripts.awsCLI(["iam", "put-role-policy", "--role-name", name, "--policy-name", "no-output",
                                      "--policy-document", policy], directory: dir)
        return try #require(role["Role"]?["Arn"]?.stringValue)
    }
}
