import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import TestSupport
import Testing
import Worker

/// Logs that outlive their instance: each worker uploads its log when it ends, `parallelizer logs` merges the
/// fleet's, and the journal gets each line's priority.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct WorkerLogsTests {
    @Test func eachWorkerLeavesItsLogAndLogsMergesThemInTimeOrder() async throws {
        try await withTemporaryDirectory { dir in
            let h = try await WorkerHarness.make(directory: dir)
            let program = h.script("copy.sh", #"cp "$1" "$1.out" && echo "$1.out""#)
            for n in 0..<6 { try await h.upload("in/f\(n).txt", "x\(n)") }
            try await h.send((0..<6).map { "in/f\($0).txt" })
            var workers: [(ChildProcess, IMDSStandIn)] = []
            for n in 1...2 {
                let imds = try await IMDSStandIn.start(directory: dir, userData: nil, instanceID: "i-0logs\(n)")
                // Worker 1's stderr is the journal's stream, as systemd sets JOURNAL_STREAM (its device and inode).
                var environment: [String: String] = [:]
                if n == 1 {
                    LocalFile.write(dir + "/w1.log", [])
                    var st = stat()
                    _ = stat(dir + "/w1.log", &st)
                    environment["JOURNAL_STREAM"] = "\(st.st_dev):\(st.st_ino)"
                }
                let worker = try h.startWorker(
                    name: "w\(n)", parameters: h.parameters(["logFile": dir + "/file\(n).log"], program: program),
                    imds: imds.endpoint, environment: environment)
                workers.append((worker, imds))
            }
            for (n, (worker, imds)) in workers.enumerated() {
                #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.log("w\(n + 1)"))")
                await imds.stop()
            }
            let keys = try await h.allOutputKeys()
            #expect(keys.contains("_logs/i-0logs1.log") && keys.contains("_logs/i-0logs2.log"), "\(keys)")

            let (outcome, merged) = try await h.command("logs", ["logs", "--results", "s3://\(h.outputBucket)/"])
            #expect(outcome == .exited(0), "\(h.log("logs"))")
            let lines = merged.split(separator: "\n").map(String.init)
            #expect(lines.allSatisfy { $0.hasPrefix("i-0logs1 20") || $0.hasPrefix("i-0logs2 20") }, "\(merged)")
            let times = lines.map { $0.split(separator: " ")[1] }
            #expect(times == times.sorted(), "lines in time order")
            for n in 1...2 {
                #expect(lines.contains { $0.hasPrefix("i-0logs\(n) ") && $0.contains("parallelizer stopped") })
            }
            #expect(lines.filter { $0.contains("task done") }.count == 6, "\(merged)")
            let (_, worse) = try await h.command(
                "logs-warn", ["logs", "--results", "s3://\(h.outputBucket)/", "--level", "warning"])
            #expect(!worse.contains(" info "), "\(worse)")

            // The journal's stream starts each line with its priority; the file has the line alone.
            let journal = h.log("w1").split(separator: "\n")
            #expect(!journal.isEmpty && journal.allSatisfy { $0.hasPrefix("<") }, "\(journal.prefix(3))")
            #expect(journal.contains { $0.hasPrefix("<5>") && $0.contains("notice  parallelizer started") })
            #expect(journal.contains { $0.hasPrefix("<6>") && $0.contains("info    task done") })
            #expect(LocalFile.readText(dir + "/file1.log")?.hasPrefix("20") == true)
            #expect(h.log("w2").hasPrefix("20"), "without JOURNAL_STREAM, no prefix")
        }
    }
}
