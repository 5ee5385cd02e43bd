import TestSupport
import AWSServices
import Testing
@testable import Worker

@Suite struct MessageTests {
    let parser = MessageParser(inputBucket: "in-bucket")

    @Test func bodyForms() throws {
        #expect(try parser.parse("dir/a b.txt\n") == .tasks([S3URI(bucket: "in-bucket", key: "dir/a b.txt")]))
        #expect(try parser.parse("s3://other/x/y.txt") == .tasks([S3URI(bucket: "other", key: "x/y.txt")]))
        #expect(
            try parser.parse(#"{"bucket": "b2", "key": "k é"}"#)
                == .tasks([S3URI(bucket: "b2", key: "k é")]))
        #expect(try parser.parse(#"{"key": "only-key"}"#) == .tasks([S3URI(bucket: "in-bucket", key: "only-key")]))
        let prefixed = MessageParser(inputBucket: "in-bucket", inputPrefix: "raw/")
        #expect(try prefixed.parse("a.txt") == .tasks([S3URI(bucket: "in-bucket", key: "raw/a.txt")]))
        // Always relative to the prefix: a key that happens to start like it keeps its meaning.
        #expect(try prefixed.parse("raw/a.txt") == .tasks([S3URI(bucket: "in-bucket", key: "raw/raw/a.txt")]))
    }

    @Test func s3EventNotifications() throws {
        let event = """
            {"Records": [
              {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "in-bucket"}, "object": {"key": "dir/a+b%2Bc%C3%A9.txt"}}},
              {"eventName": "ObjectCreated:CompleteMultipartUpload", "s3": {"bucket": {"name": "in-bucket"}, "object": {"key": "two"}}}
            ]}
            """
        #expect(
            try parser.parse(event)
                == .tasks([
                    S3URI(bucket: "in-bucket", key: "dir/a b+cé.txt"),
                    S3URI(bucket: "in-bucket", key: "two"),
                ]))
        #expect(try parser.parse(#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"in-bucket"}"#) == .testEvent)
        let sns =
            #"{"Type": "Notification", "Message": "{\"Records\":[{\"s3\":{\"bucket\":{\"name\":\"in-bucket\"},\"object\":{\"key\":\"k\"}}}]}"}"#
        #expect(try parser.parse(sns) == .tasks([S3URI(bucket: "in-bucket", key: "k")]))
    }

    /// One record of an event that cannot be read (no key, another bucket, a NUL) is that record's trouble: the
    /// readable records stay tasks, and the others are named, never dropped with them.
    @Test func anUnreadableRecordDoesNotDropTheEvent() throws {
        let event = """
            {"Records": [
              {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "in-bucket"}, "object": {"key": "good"}}},
              {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "in-bucket"}}},
              {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "elsewhere"}, "object": {"key": "k"}}},
              {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "in-bucket"}, "object": {"key": "also-good"}}}
            ]}
            """
        guard case .partialEvent(let inputs, let unreadable) = try parser.parse(event) else {
            Issue.record("not a partial event: \(try parser.parse(event))")
            return
        }
        #expect(inputs == [S3URI(bucket: "in-bucket", key: "good"), S3URI(bucket: "in-bucket", key: "also-good")])
        #expect(unreadable.count == 2)
        #expect(unreadable[0].contains("record 1 has no s3.bucket.name or s3.object.key"), "\(unreadable)")
        #expect(unreadable[1].contains("record 2 is for bucket 'elsewhere'"), "\(unreadable)")
    }

    @Test(arguments: [
        "", "   \n", "{broken", #"{"files": ["a"]}"#, #"{"key": 5}"#, #"{"bucket": "", "key": "k"}"#,
        #"{"Records": [{"s3": {"bucket": {"name": "elsewhere"}, "object": {"key": "k"}}}]}"#,
        #"{"Records": [{"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "in-bucket"}, "object": {"key": "k"}}}]}"#,
        "s3://", "s3://bucket-only", "a\u{0}b", String(repeating: "k", count: 1025),
    ])
    func badBodiesAreRefusedWithAReason(_ body: String) {
        #expect { try parser.parse(body) } throws: { !(($0 as? BadMessage)?.reason.isEmpty ?? true) }
    }

    @Test(arguments: [
        ("../../etc/x", "x"), ("..", "input"), ("/abs/path/f.txt", "f.txt"), ("dir/", "dir"), ("a/./.", "input"),
        ("line\nbreak", "line_break"), ("%00.txt", "%00.txt"), ("plain", "plain"),
    ])
    func localNamesStayInsideTheTaskFolder(key: String, name: String) {
        let local = TaskPaths.localName(forKey: key)
        #expect(local == name)
        #expect(!local.contains("/"))
    }

    @Test func longNamesAreShortenedKeepingTheExtension() {
        let local = TaskPaths.localName(forKey: "d/" + String(repeating: "é", count: 300) + ".fastq")
        #expect(local.utf8.count <= 200)
        #expect(local.hasSuffix(".fastq"))
    }

    @Test func outputKeysFollowTheInputFolder() {
        #expect(
            TaskPaths.outputKey(inputKey: "a/x.txt", inputPrefix: "", outputPrefix: "out/", outputName: "x.res")
                == "out/a/x.res")
        #expect(
            TaskPaths.outputKey(inputKey: "b/x.txt", inputPrefix: "", outputPrefix: "out/", outputName: "x.res")
                == "out/b/x.res")
        #expect(
            TaskPaths.outputKey(inputKey: "raw/a/x.txt", inputPrefix: "raw/", outputPrefix: "", outputName: "y")
                == "a/y")
        #expect(
            TaskPaths.outputKey(inputKey: "top.txt", inputPrefix: "", outputPrefix: "", outputName: "top.out")
                == "top.out")
    }
}

/// One rule settles every message whose work is over: bad messages and given-up tasks alike.
@Suite struct FinalFateTests {
    typealias Fate = FinalFate

    @Test func aRecordedFailureIsDeletedUnlessItIsWorthARedrive() {
        #expect(Fate(recorded: true, hasDeadLetterQueue: false, worthRedriving: true) == .delete)
        #expect(Fate(recorded: true, hasDeadLetterQueue: false, worthRedriving: false) == .delete)
        #expect(Fate(recorded: true, hasDeadLetterQueue: true, worthRedriving: false) == .delete)
        #expect(Fate(recorded: true, hasDeadLetterQueue: true, worthRedriving: true) == .deadLetterQueue)
    }

    @Test func aFailureWithoutARecordIsNeverDeleted() {
        for worth in [false, true] {
            #expect(Fate(recorded: false, hasDeadLetterQueue: true, worthRedriving: worth) == .deadLetterQueue)
            #expect(Fate(recorded: false, hasDeadLetterQueue: false, worthRedriving: worth) == .keep)
        }
    }
}
