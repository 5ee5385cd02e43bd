import AWSCore
import Synchronization
import Testing
@testable import Worker

/// The rule that tells a task's failure from the daemon's dead end, and which AWS errors can be one.
struct DeadEndsTests {
    func error(_ code: String, status: Int = 403, service: String = "sqs") -> AWSError {
        AWSError(kind: .service, service: service, httpStatus: status, code: code, message: "m", requestID: "r")
    }

    final class Reached: Sendable {
        let found = Mutex<[DeadEnd]>([])
        var all: [DeadEnd] { found.withLock { $0 } }
        func watch(threshold: Int = 3) -> DeadEnds {
            DeadEnds(threshold: threshold) { d in self.found.withLock { $0.append(d) } }
        }
    }

    @Test func theSamePermanentErrorOnThreeDifferentTasksIsADeadEnd() {
        let reached = Reached()
        let watch = reached.watch()
        watch.failed(.deleteMessage, resource: "q", subject: "m1", error: error("AccessDenied"))
        watch.failed(.deleteMessage, resource: "q", subject: "m2", error: error("AccessDenied"))
        #expect(reached.all.isEmpty)
        // The same task again adds nothing: one task's error is never enough.
        watch.failed(.deleteMessage, resource: "q", subject: "m2", error: error("AccessDenied"))
        #expect(reached.all.isEmpty)
        watch.failed(.deleteMessage, resource: "q", subject: "m3", error: error("AccessDenied"))
        #expect(reached.all.count == 1)
        #expect(reached.all.first?.what == "sqs:DeleteMessage is denied on q (3 tasks in a row)")
        #expect(reached.all.first?.fix.contains("allow sqs:DeleteMessage on q") == true)
        // Reported once.
        watch.failed(.deleteMessage, resource: "q", subject: "m4", error: error("AccessDenied"))
        #expect(reached.all.count == 1)
        #expect(watch.deadEnd != nil)
    }

    /// Our own bucket gone: every call of any task meets it, so two slots retrying the same two messages end the
    /// daemon before giving either up (CI saw both given up, the third task still unreceived).
    @Test func aBucketOfOursGoneCountsCallsNotTasks() {
        let reached = Reached()
        let watch = reached.watch()
        let gone = error("NoSuchBucket", status: 404, service: "s3")
        watch.failed(.getInput, resource: "s3://in", subject: "m1", error: gone)
        watch.failed(.getInput, resource: "s3://in", subject: "m2", error: gone)
        #expect(reached.all.isEmpty)
        watch.failed(.getInput, resource: "s3://in", subject: "m1", error: gone)
        #expect(reached.all.first?.what == "the bucket s3://in does not exist (3 calls in a row)")
    }

    @Test func aSuccessOrAnotherProblemStartsTheCountAgain() {
        let reached = Reached()
        let watch = reached.watch()
        watch.failed(.putOutput, resource: "s3://o", subject: "m1", error: error("AccessDenied", service: "s3"))
        watch.failed(.putOutput, resource: "s3://o", subject: "m2", error: error("AccessDenied", service: "s3"))
        watch.succeeded(.putOutput)
        watch.failed(.putOutput, resource: "s3://o", subject: "m3", error: error("AccessDenied", service: "s3"))
        watch.failed(
            .putOutput, resource: "s3://o", subject: "m4", error: error("NoSuchBucket", status: 404, service: "s3"))
        watch.failed(
            .putOutput, resource: "s3://o", subject: "m5", error: error("NoSuchBucket", status: 404, service: "s3"))
        #expect(reached.all.isEmpty)
        // Another call's success does not help this one.
        watch.succeeded(.getInput)
        watch.failed(
            .putOutput, resource: "s3://o", subject: "m6", error: error("NoSuchBucket", status: 404, service: "s3"))
        #expect(reached.all.map(\.what) == ["the bucket s3://o does not exist (3 calls in a row)"])
    }

    @Test func errorsThatMayPassNeitherCountNorBreakTheRun() {
        let reached = Reached()
        let watch = reached.watch()
        let s3 = { (code: String, status: Int) in self.error(code, status: status, service: "s3") }
        watch.failed(.getInput, resource: "s3://i", subject: "1", error: s3("AccessDenied", 403))
        watch.failed(.getInput, resource: "s3://i", subject: "2", error: s3("SlowDown", 503))
        watch.failed(.getInput, resource: "s3://i", subject: "3", error: s3("InternalError", 500))
        watch.failed(
            .getInput, resource: "s3://i", subject: "4",
            error: AWSError(
                kind: .transport(.connect), service: "s3",
                code: "TransportError", message: "refused"))
        // A missing key is the task's own error.
        watch.failed(.getInput, resource: "s3://i", subject: "5", error: s3("NoSuchKey", 404))
        #expect(reached.all.isEmpty)
        watch.failed(.getInput, resource: "s3://i", subject: "6", error: s3("AccessDenied", 403))
        watch.failed(.getInput, resource: "s3://i", subject: "7", error: s3("AccessDenied", 403))
        #expect(reached.all.count == 1)
    }

    /// A receive carries no task: any final refusal of one (here the queue's KMS key, or a code no list names) meets
    /// the next receive too, so it counts; an error that may pass does not.
    @Test func anyFinalRefusalOfAReceiveCounts() {
        let reached = Reached()
        let watch = reached.watch()
        watch.failed(.receive, resource: "q", subject: "1", error: error("KMS.DisabledException", status: 400))
        watch.failed(.receive, resource: "q", subject: "2", error: error("ThrottlingException", status: 400))
        watch.failed(.receive, resource: "q", subject: "3", error: error("KMS.DisabledException", status: 400))
        watch.failed(.receive, resource: "q", subject: "4", error: error("KMS.DisabledException", status: 400))
        #expect(
            reached.all.map(\.what) == ["the KMS key of q cannot be used (KMS.DisabledException) (3 calls in a row)"])
        let other = Reached()
        let second = other.watch()
        for n in 1...3 {
            second.failed(.receive, resource: "q", subject: "\(n)", error: error("SomethingNew", status: 400))
        }
        #expect(other.all.map(\.what) == ["sqs:ReceiveMessage is refused on q (SomethingNew) (3 calls in a row)"])
        // For a task's call, an unknown final error is the task's.
        let third = Reached()
        let perTask = third.watch()
        for n in 1...3 {
            perTask.failed(.deleteMessage, resource: "q", subject: "\(n)", error: error("SomethingNew", status: 400))
        }
        #expect(third.all.isEmpty)
    }

    /// A denial of one object (a bucket policy on a prefix, a KMS key the role may not use) is that task's failure
    /// once any call of its kind has worked since start; only denials with no success at all since start are the
    /// role's. A bucket or the credentials reach every task whatever worked before.
    @Test func aDenialOfOneObjectIsItsTasksOnceAnyObjectWorked() {
        let s3 = { (code: String, status: Int) in self.error(code, status: status, service: "s3") }
        let reached = Reached()
        let watch = reached.watch()
        watch.succeeded(.getInput)
        for n in 1...9 { watch.failed(.getInput, resource: "s3://i", subject: "\(n)", error: s3("AccessDenied", 403)) }
        watch.succeeded(.getInput)
        for n in 10...18 {
            watch.failed(.getInput, resource: "s3://i", subject: "\(n)", error: s3("KMS.AccessDeniedException", 400))
        }
        #expect(reached.all.isEmpty, "\(reached.all)")
        // Ten different objects in a row, none read between: the policy changed under the fleet.
        let changed = Reached()
        let later = changed.watch()
        later.succeeded(.getInput)
        for n in 1...10 { later.failed(.getInput, resource: "s3://i", subject: "\(n)", error: s3("AccessDenied", 403)) }
        #expect(changed.all.map(\.what) == ["s3:GetObject is denied on s3://i (10 tasks in a row)"])
        // A bucket that is gone is every task's.
        for n in 11...13 {
            watch.failed(.getInput, resource: "s3://i", subject: "\(n)", error: s3("NoSuchBucket", 404))
        }
        #expect(reached.all.map(\.what) == ["the bucket s3://i does not exist (3 calls in a row)"])
        // Never a success: the role's.
        let fresh = Reached()
        let never = fresh.watch()
        for n in 1...3 { never.failed(.getInput, resource: "s3://i", subject: "\(n)", error: s3("AccessDenied", 403)) }
        #expect(fresh.all.map(\.what) == ["s3:GetObject is denied on s3://i (3 tasks in a row)"])
        // Refused credentials reach everything, whatever worked.
        let creds = Reached()
        let refused = creds.watch()
        refused.succeeded(.getInput)
        for n in 1...3 {
            refused.failed(.getInput, resource: "s3://i", subject: "\(n)", error: s3("InvalidAccessKeyId", 403))
        }
        #expect(creds.all.count == 1)
        // The queue's calls reach the whole queue.
        let queue = Reached()
        let q = queue.watch()
        q.succeeded(.deleteMessage)
        for n in 1...3 { q.failed(.deleteMessage, resource: "q", subject: "\(n)", error: error("AccessDenied")) }
        #expect(queue.all.count == 1)
    }

    /// Throttles and limits are waits, never refusals: SQS's OverLimit (too many messages in flight), S3's SlowDown,
    /// a throttled KMS key behind SQS, DynamoDB's throughput, 429.
    @Test func throttlesAndLimitsAreWaits() {
        let reached = Reached()
        let watch = reached.watch()
        let codes = [
            ("OverLimit", 403), ("AWS.SimpleQueueService.OverLimit", 403), ("com.amazonaws.sqs#OverLimit", 403),
            ("KMS.ThrottlingException", 400), ("ThrottlingException", 400), ("RequestThrottled", 403),
            ("TooManyRequests", 429), ("ProvisionedThroughputExceededException", 400),
        ]
        for (n, (code, status)) in codes.enumerated() {
            let e = error(code, status: status)
            #expect(e.isThrottle && e.isRetryable && e.setupProblem == nil, "\(code)")
            watch.failed(.receive, resource: "q", subject: "\(n)", error: e)
        }
        #expect(reached.all.isEmpty)
        #expect(!error("AccessDenied").isThrottle)
        #expect(error("InternalError", status: 500).isRetryable && !error("InternalError", status: 500).isThrottle)
    }

    /// Tasks in a row that meet this machine's trouble (a full disk) make the worker leave, once; a task that ends
    /// otherwise starts the count again.
    @Test func machineTroubleOnThreeTasksInARowMakesTheWorkerLeave() {
        let left = Mutex<[Int]>([])
        let watch = DeadEnds(reached: { _ in }, machineTrouble: { _, count in left.withLock { $0.append(count) } })
        watch.nodeTrouble("full", subject: "1")
        watch.nodeTrouble("full", subject: "2")
        watch.nodeHealthy()
        watch.nodeTrouble("full", subject: "3")
        watch.nodeTrouble("full", subject: "3")
        #expect(left.withLock { $0 }.isEmpty)
        // The same message again counts: given back, it may well be the next this worker receives.
        watch.nodeTrouble("full", subject: "3")
        watch.nodeTrouble("full", subject: "4")
        #expect(left.withLock { $0 } == [3])
    }

    /// The failure budget: the ledger is asked once `budget` tasks failed here in a row, and again at most every
    /// ten seconds while the streak lasts; a task that works starts it again; budget 0 never asks. Once the node
    /// leaves, every failure after is not the task's, and the streak's runs are handed over once.
    @Test func aStreakOfFailuresAsksTheLedgerAndTheBadNodeLeavesOnce() {
        func run(_ n: Int, at: Double) -> FailedRun {
            FailedRun(messageID: "m\(n)", receiveCount: 1, at: at, reason: "exit status 127")
        }
        var streak = FailureStreak(budget: 3)
        #expect(streak.failed(run(1, at: 0), now: 0) == nil)
        #expect(streak.failed(run(2, at: 1), now: 1) == nil)
        #expect(streak.failed(run(3, at: 2), now: 2)?.map(\.messageID) == ["m1", "m2", "m3"])
        #expect(streak.failed(run(4, at: 3), now: 3) == nil, "asked again within ten seconds")
        #expect(streak.failed(run(5, at: 13), now: 13)?.count == 5)
        streak.worked()
        #expect(streak.failed(run(6, at: 14), now: 14) == nil, "a task that worked starts the streak again")
        var off = FailureStreak(budget: 0)
        for i in 0..<10 { #expect(off.failed(run(i, at: Double(i)), now: Double(i)) == nil) }

        let left = Mutex<[String]>([])
        let watch = DeadEnds(failureBudget: 2, reached: { _ in }, badNode: { why in left.withLock { $0.append(why) } })
        #expect(watch.taskFailed(run(1, at: 0), now: 0) == nil)
        let runs = watch.taskFailed(run(2, at: 1), now: 1)
        #expect(runs?.count == 2)
        #expect(!watch.failuresAreNotTheTasks)
        watch.leaveAsBadNode("why", runs: runs ?? [])
        watch.leaveAsBadNode("again", runs: runs ?? [])
        #expect(left.withLock { $0 } == ["why"])
        #expect(watch.failuresAreNotTheTasks)
        #expect(watch.takeBadNodeRuns().map(\.messageID) == ["m1", "m2"])
        #expect(watch.takeBadNodeRuns().isEmpty, "handed over once")
        #expect(watch.taskFailed(run(3, at: 20), now: 20) == nil, "a node that left asks no more")
    }

    @Test func whichErrorsAreAboutTheSetUp() {
        #expect(error("AccessDenied").setupProblem == .denied)
        #expect(error("AccessDeniedException", status: 400).setupProblem == .denied)
        #expect(error("AWS.SimpleQueueService.NonExistentQueue", status: 400).setupProblem == .queueMissing)
        #expect(error("com.amazonaws.sqs#QueueDoesNotExist", status: 400).setupProblem == .queueMissing)
        #expect(error("NoSuchBucket", status: 404, service: "s3").setupProblem == .bucketMissing)
        #expect(
            error("com.amazonaws.dynamodb.v20120810#ResourceNotFoundException", status: 400, service: "dynamodb")
                .setupProblem == .tableMissing)
        #expect(error("InvalidClientTokenId").setupProblem == .credentialsRefused)
        #expect(error("SignatureDoesNotMatch").setupProblem == .credentialsRefused)
        #expect(error("InvalidAccessKeyId", service: "s3").setupProblem == .credentialsRefused)
        #expect(error("InvalidAction", status: 400).setupProblem == .unknownAction)
        #expect(error("PermanentRedirect", status: 301, service: "s3").setupProblem == .wrongRegion)
        #expect(
            AWSError(kind: .credentials, service: "sqs", code: "NoCredentials", message: "").setupProblem
                == .noCredentials)
        // A skewed clock is corrected by the client, a HEAD's bare 404 is a missing key: neither is the set-up.
        #expect(
            AWSError(
                kind: .service, service: "s3", httpStatus: 403, code: "SignatureDoesNotMatch",
                message: "Signature expired: 20261130T000000Z is now earlier than ..."
            ).setupProblem == nil)
        #expect(error("NotFound", status: 404, service: "s3").setupProblem == nil)
        #expect(error("NoSuchKey", status: 404, service: "s3").setupProblem == nil)
        #expect(error("ReceiptHandleIsInvalid", status: 400).setupProblem == nil)
        #expect(error("SlowDown", status: 503, service: "s3").setupProblem == nil)
    }

    @Test func aFailureRecordKeyStaysWithinS3sLimit() {
        #expect(FailureRecords.key(forInput: "a/b.txt") == "_failed/a/b.txt.json")
        let fits = String(repeating: "k", count: 1024 - "_failed/".count - ".json".count)
        #expect(FailureRecords.key(forInput: fits) == "_failed/\(fits).json")
        let long = String(repeating: "é", count: 510)  // 1,020 bytes: fine as a key, too long with the prefix
        let key = FailureRecords.key(forInput: long)
        #expect(key.hasPrefix("_failed/_long-keys/") && key.hasSuffix(".json"))
        #expect(key.utf8.count <= 1024)
        #expect(key == FailureRecords.key(forInput: long), "the same input must give the same record key")
        #expect(key != FailureRecords.key(forInput: long + "x"))
        #expect(FailureRecords.key(forInput: fits + "k").hasPrefix("_failed/_long-keys/"))
    }
}
