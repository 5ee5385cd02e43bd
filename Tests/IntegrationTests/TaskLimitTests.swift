import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import TaskLedger
import Testing
import TestSupport
import Worker

/// Limits per task (`memoryMax`, `cpuMax`, `pidsMax`) on this machine's cgroups, whichever hierarchy it gives the
/// daemon: each test says which (`cgroup v1` on the CI machines, a hybrid layout; `cgroup v2` on Amazon Linux 2023
/// and Ubuntu 22.04+). A command over its memory is killed, and its record says "out of memory (limit X)" with its
/// peak; a fork past pidsMax fails; the command runs inside its task's cgroup under the CPU quota; every failure
/// record and ledger task item carries the task's peak memory and CPU seconds.
@Suite(.enabled(if: TestEnvironment.canRun(.moto)), .timeLimit(.minutes(4)))
struct TaskLimitTests {
    @Test func limitsHoldAndTheRecordsSayWhatATaskUsed() async throws {
        try await withTemporaryDirectory { dir in
            let limits = ResourceLimits(memoryMax: 64 << 20, cpuMax: 0.5, pidsMax: 20)
            let hierarchy: String
            switch Cgroups.find(limits: limits, moveSelf: false) {
            case .success(let found): hierarchy = found.hierarchy
            case .failure(let why):
                // This machine gives no cgroup: the daemon must say so once and run the tasks without limits.
                hierarchy = "none (\(why))"
            }
            let h = try await WorkerHarness.make(directory: dir)
            let (dynamo, table) = try await makeLedgerTable()
            let program = h.script(
                "task.sh",
                """
                case "$1" in
                  *oom.txt) dd if=/dev/zero of=/dev/null bs=200M count=1 ;;
                  *fork.txt) for i in $(seq 1 40); do sleep 5 & done; wait ;;
                  *) { cat /proc/self/cgroup; for f in /sys/fs/cgroup/cpu/$(grep -o ':cpu:.*' /proc/self/cgroup | cut -d: -f3)/cpu.cfs_quota_us /sys/fs/cgroup$(grep -o '^0::.*' /proc/self/cgroup | cut -d: -f3)/cpu.max; do cat "$f" 2>/dev/null; done; } > "$1.out"; echo "$1.out" ;;
                esac
                """)
            for key in ["oom.txt", "fork.txt", "ok.txt"] { try await h.upload(key, "x") }
            try await h.send(["oom.txt", "fork.txt", "ok.txt"])
            let worker = try h.startWorker(
                name: "w",
                parameters: h.parameters(
                    [
                        "memoryMax": "64M", "cpuMax": "0.5", "pidsMax": "20", "maxAttempts": "1", "numThreads": "1",
                        "ledgerTable": table,
                    ], program: program))
            #expect(await worker.wait(timeout: 120) == .exited(0), "\(h.logTails(["w"]))")
            let log = h.log("w")
            guard hierarchy.hasPrefix("cgroup") else {
                #expect(log.contains("per-task limits are off"), "on \(hierarchy): \(log.suffix(2000))")
                return
            }
            #expect(log.contains("per-task limits through \(hierarchy)"), "\(log.suffix(2000))")

            func record(_ key: String) async throws -> JSONValue? {
                try JSONValue.parse(Array(try await h.output("_failed/\(key).json").utf8))
            }
            let oom = try #require(try await record("oom.txt"), "on \(hierarchy)")
            #expect(
                oom["reason"]?.stringValue?.hasPrefix("out of memory (limit 64 MiB), peak ") == true,
                "on \(hierarchy): \(oom)")
            #expect((oom["peakMemoryBytes"]?.intValue ?? 0) > 32 * 1_048_576, "\(oom)")
            #expect(oom["cpuSeconds"] != nil && oom["usageFrom"]?.stringValue == hierarchy)
            let fork = try #require(try await record("fork.txt"))
            #expect(fork["stderrTail"]?.stringValue?.contains("fork") == true, "on \(hierarchy): \(fork)")
            // The command ran in its task's cgroup, under the CPU quota (v1: 50000 of 100000 µs; v2: "50000 100000").
            let inside = try await h.output("ok.txt.out")
            #expect(inside.contains(hierarchy == "cgroup v1" ? "/pz-" : "/task-"), "on \(hierarchy): \(inside)")
            #expect(inside.contains("50000"), "on \(hierarchy): \(inside)")
            // The ledger's task items carry what each task used.
            let items = try await dynamo.queryAll(
                table: table, keyCondition: "#q = :q AND begins_with(#t, :p)",
                names: ["#q": LedgerSchema.partitionKey, "#t": LedgerSchema.sortKey],
                values: [":q": .s(LedgerSchema.queueName(h.queueURL)), ":p": .s("task#ok.txt#")], logger: quietLogger)
            #expect(items.first?[LedgerSchema.Task.peakMemoryBytes] != nil, "\(items)")
            #expect(items.first?[LedgerSchema.Task.cpuSeconds] != nil)
        }
    }
}
