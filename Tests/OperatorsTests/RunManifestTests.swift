import AWSServices
import Operators
import Testing

/// The run manifest `enqueue` keeps on the queue's tags, and the progress `status` makes of it.
struct RunManifestTests {
    let earlier = RunManifest(source: "s3://in/a/", started: 1000, updated: 1100, sent: 50, skipped: 5)

    @Test func tagsRoundTripAndAnUntaggedQueueHasNoRun() {
        #expect(RunManifest(tags: earlier.tags) == earlier)
        #expect(RunManifest(tags: [:]) == nil)
        #expect(RunManifest(tags: ["parallelizer:run:sent": "x", "parallelizer:run:started": "1"]) == nil)
        #expect(earlier.tags.keys.allSatisfy { $0.hasPrefix("parallelizer:run:") })
        // A tag value holds letters, digits, spaces and `_ . : / = + - @` only, at most 256 of them.
        let odd = RunManifest(
            source: "s3://in/a (b)&c,d/é" + String(repeating: "x", count: 300), started: 1, updated: 1, sent: 1,
            skipped: 0)
        let value = odd.tags["parallelizer:run:source"]!
        #expect(value.hasPrefix("s3://in/a _b__c_d/é"))
        #expect(value.unicodeScalars.count == 256)
    }

    @Test func anEmptyQueueStartsANewRunAndWorkLeftAddsToTheOneUnderWay() {
        let fresh = RunManifest.begin(
            existing: earlier, queueIsEmpty: true, resuming: false, source: "s3://in/b/", now: 5000)
        #expect(fresh == RunManifest(source: "s3://in/b/", started: 5000, updated: 5000, sent: 0, skipped: 0))
        let added = RunManifest.begin(
            existing: earlier, queueIsEmpty: false, resuming: false, source: "s3://in/b/", now: 5000)
        #expect(added.sent == 50 && added.started == 1000 && added.source == "s3://in/a/ s3://in/b/")
        let resumed = RunManifest.begin(
            existing: earlier, queueIsEmpty: true, resuming: true, source: "s3://in/a/", now: 5000)
        #expect(resumed == earlier)
        #expect(RunManifest.begin(existing: nil, queueIsEmpty: false, resuming: true, source: "f", now: 7).started == 7)
    }

    @Test func progressCountsWhatLeftTheQueueAndTimesTheRest() throws {
        let run = RunManifest(source: "s", started: 0, updated: 0, sent: 1000, skipped: 200)
        let queue = SQSClient.MessageCounts(visible: 300, inFlight: 80, delayed: 20)
        let p = try #require(run.progress(queue: queue, now: 100, rate: nil))
        #expect(p.total == 1200)
        #expect(p.settled == 800)
        #expect(p.perSecond == 6)  // 600 of the run's own in 100 s
        #expect(p.etaSeconds == 67)
        #expect(p.bar.hasPrefix("[################--------] 66%  800/1200 settled  6.0/s  ETA 1m 7s"), "\(p.bar)")
        // The fleet's recent rate wins when the ledger gives one; a drained run is done.
        #expect(run.progress(queue: queue, now: 100, rate: 40)?.etaSeconds == 10)
        let done = run.progress(
            queue: SQSClient.MessageCounts(visible: 0, inFlight: 0, delayed: 0), now: 100, rate: nil)
        #expect(done?.settled == 1200 && done?.etaSeconds == 0)
        // Messages from elsewhere in the queue never make the settled count negative.
        let crowded = run.progress(
            queue: SQSClient.MessageCounts(visible: 5000, inFlight: 0, delayed: 0), now: 100, rate: nil)
        #expect(crowded?.settled == 200 && crowded?.etaSeconds == nil)
        // Nothing counted yet: no figure rather than "100%, ETA 0".
        let nothing = RunManifest(source: "s", started: 0, updated: 0, sent: 0, skipped: 0)
        #expect(nothing.progress(queue: queue, now: 100, rate: nil) == nil)
    }
}
