import AWSCore
import AWSServices
import FoundationEssentials
import Glibc
import TestSupport
import Testing

/// The daemon's pipeline (`prefetch`) against moto: a stop releases the message ahead and removes its input, and a
/// message ahead of a command that turns out long goes back to the queue for a free worker.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(3)))
struct PrefetchTests {
    /// A script that, once another input lies beside its own in the work folder, touches `signal` and sleeps for
    /// `seconds`, then copies its input as its output.
    static func waitingForTheNextInput(_ h: WorkerHarness, work: String, signal: String, seconds: Int) -> String {
        h.script(
            "wait-next.sh",
            """
            # The first task, which tells the slot its tasks are short, just copies.
            if grep -q warm "$1"; then cp "$1" "$1.out"; echo "$1.out"; exit 0; fi
            n=0
            while [ "$(ls \(work)/tasks/*/data/*.txt 2>/dev/null | wc -l)" -lt 2 ] && [ $n -lt 100 ]; do
                sleep 0.1; n=$((n + 1))
            done
            touch \(signal)
            sleep \(seconds)
            cp "$1" "$1.out"
            echo "$1.out"
            """)
    }

    @Test func aStopReleasesTheMessageAheadAndRemovesItsInput() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            for key in ["warm.txt", "a.txt", "b.txt"] { try await h.upload(key, key) }
            let work = dir + "/work"
            let program = Self.waitingForTheNextInput(h, work: work, signal: dir + "/ahead", seconds: 2)
            let worker = try h.startWorker(
                name: "w", parameters: h.parameters(["workDir": work, "numThreads": "1"], program: program))
            defer { worker.signal(SIGKILL) }
            // A slot takes messages ahead once it knows its tasks are short: after its first.
            try await h.send(["warm.txt"])
            while try await !h.outputKeys().contains("warm.txt.out") { try await Task.sleep(for: .milliseconds(50)) }
            try await h.send(["a.txt", "b.txt"])
            while !fileExists(dir + "/ahead") { try await Task.sleep(for: .milliseconds(50)) }
            // Both inputs are on disk: one under its command, one ahead of it.
            worker.signal(SIGTERM)
            #expect(await worker.wait(timeout: 60) == .exited(0), "\(h.log("w").suffix(3000))")
            let log = h.log("w")
            #expect(try await h.outputKeys().count == 2, "\(log.suffix(3000))")
            #expect(log.contains("task interrupted by a stop; message released"), "\(log.suffix(3000))")
            #expect(try await h.sqs.messageCounts(queueURL: h.queueURL, logger: quietLogger).visible == 1)
            #expect(LocalFile.listDirectory(work + "/tasks").isEmpty)
        }
    }

    /// A message taken ahead of a command that turns out long waits at most the prefetch horizon (a quarter of the
    /// visibility timeout), is released for a free worker, which does it, and is not taken back by the busy slot.
    @Test func aMessageAheadOfALongCommandGoesToAFreeWorker() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script(
                "long.sh",
                """
                if grep -q long "$1"; then touch \(dir)/long-started; sleep 25; fi
                cp "$1" "$1.out"
                echo "$1.out"
                """)
            for key in ["short.txt", "long.txt", "next.txt"] { try await h.upload(key, key) }
            // Tasks of the busy worker's slot are short at first: it takes messages ahead (those that take at most a
            // quarter of the visibility timeout, 6 s: a loaded machine stretches the short one to 4).
            let parameters = { (work: String) in
                h.parameters(
                    ["workDir": dir + "/" + work, "numThreads": "1", "visibilityTimeout": "24", "idleTimeout": "4"],
                    program: program)
            }
            let busy = try h.startWorker(name: "busy", parameters: parameters("busy"))
            defer { busy.signal(SIGKILL) }
            try await h.send(["short.txt"])
            while try await !h.outputKeys().contains("short.txt.out") { try await Task.sleep(for: .milliseconds(50)) }
            try await h.send(["long.txt"])
            while !fileExists(dir + "/long-started") { try await Task.sleep(for: .milliseconds(50)) }
            try await h.send(["next.txt"])
            // Taken ahead of the 25-s command, it waits 6 s (a quarter of 24), then goes back to the queue.
            let deadline = ContinuousClock.now + .seconds(25)
            while !h.log("busy").contains("released for a free worker") && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            let free = try h.startWorker(name: "free", parameters: parameters("free"))
            defer { free.signal(SIGKILL) }
            #expect(await busy.wait(timeout: 60) == .exited(0), "\(h.log("busy").suffix(3000))")
            #expect(await free.wait(timeout: 60) == .exited(0), "\(h.log("free").suffix(3000))")
            #expect(Set(try await h.outputKeys()) == ["short.txt.out", "long.txt.out", "next.txt.out"])
            let busyLog = h.log("busy")
            #expect(busyLog.components(separatedBy: "released for a free worker").count - 1 == 1, "\(busyLog)")
            let starts = busyLog.split(separator: "\n").filter { $0.contains("task start") && $0.contains("next.txt") }
            #expect(starts.count == 1, "\(busyLog)")
            #expect(h.log("free").contains("task done"), "\(h.log("free"))")
            #expect(!busyLog.contains("next.txt.out"))
        }
    }
}
