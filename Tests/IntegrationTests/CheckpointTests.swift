import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport

/// Checkpoints (`checkpoint=true`) against moto: a spot notice stops a long command at once with SIGTERM; what it
/// wrote in `PARALLELIZER_CHECKPOINT_DIR` goes to `_checkpoints/<input key>/` (`CheckpointRuleTests` has what is refused),
/// and the message is released without spending an attempt. The next worker puts the folder back before its
/// command starts, the command goes on from there, and the completed task removes the checkpoint.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct CheckpointTests {
    @Test func aSpotNoticeSavesTheCheckpointAndTheNextAttemptGoesOnFromIt() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script(
                "long.sh",
                """
                state="$PARALLELIZER_CHECKPOINT_DIR"
                if [ -f "$state/progress" ]; then
                  echo "resumed from $(cat "$state/progress"), $(cat "$state/sub/state")" > "$1.out"
                  echo "$1.out"
                  exit 0
                fi
                trap 'echo step-7 > "$state/progress"; mkdir -p "$state/sub"; echo deep > "$state/sub/state"; exit 143' TERM
                touch "\(dir)/started"
                while :; do sleep 0.1; done
                """)
            try await h.upload("runs/long.txt", "x")
            try await h.send(["runs/long.txt"])
            let parameters = h.parameters(
                [
                    "checkpoint": "true", "checkpointGrace": "10", "shutdownGrace": "30", "visibilityTimeout": "300",
                    "maxAttempts": "1", "numThreads": "1",
                ], program: program)
            let imds = try await IMDSStandIn.start(directory: dir, userData: nil)
            defer { Task { await imds.stop() } }
            let first = try h.startWorker(name: "first", parameters: parameters, imds: imds.endpoint)
            try #require(
                await waitUntil { fileExists("\(dir)/started") }, "never started: \(h.log("first").suffix(2000))")
            try await imds.configure(#"{"spotAction": {"action": "terminate", "time": "2026-11-23T12:00:00Z"}}"#)
            #expect(await first.wait(timeout: 60) == .exited(0), "\(h.log("first").suffix(3000))")
            let log = h.log("first")
            #expect(log.contains("checkpoint saved"), "\(log.suffix(3000))")
            let saved = try await h.allOutputKeys().filter { $0.hasPrefix("_checkpoints/runs/long.txt/") }
            #expect(saved.contains("_checkpoints/runs/long.txt/manifest.json"), "\(saved)")
            #expect(saved.contains { $0.hasSuffix("/progress") } && saved.contains { $0.hasSuffix("/sub/state") })

            // Another instance: the folder is back before the command starts; maxAttempts 1 was not spent.
            let second = try h.startWorker(name: "second", parameters: parameters)
            #expect(await second.wait(timeout: 60) == .exited(0), "\(h.log("second").suffix(3000))")
            #expect(try await h.output("runs/long.txt.out") == "resumed from step-7, deep\n")
            #expect(try await h.allOutputKeys().filter { $0.hasPrefix("_checkpoints/") }.isEmpty, "not removed")
            #expect(try await h.allOutputKeys().filter { $0.hasPrefix("_failed/") }.isEmpty)
            #expect(try await h.queueDepth() == 0)
        }
    }
}
