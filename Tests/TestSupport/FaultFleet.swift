import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import Worker

/// A three-worker fleet draining content-checked inputs through the fault proxy (microburst in front of moto).
///
/// Each input is a few KiB of text; the command writes its upper-case copy, so every output can be checked against
/// its input. The fleet passes when every input has exactly one correct output, there are no failure records, the
/// queue is empty, and every worker exited cleanly.
public struct FaultFleet: Sendable {
    public let harness: WorkerHarness
    public let keys: [String]
    public let directory: String
    public let size: Int

    public struct Result: Sendable, CustomStringConvertible {
        public var inputs: Int
        public var correctOutputs: Int
        public var wrongOutputs: [String]
        public var missingOutputs: [String]
        public var failureRecords: [String]
        public var queueDepth: Int
        public var exits: [ProcessOutcome?]
        /// "retrying AWS call" lines across the workers' logs: the faults they met and got past.
        public var retries: Int
        public var seconds: Double
        /// The end of each worker's log, for the failure message.
        public var workerLogTails: String

        public var passed: Bool {
            correctOutputs == inputs && wrongOutputs.isEmpty && missingOutputs.isEmpty && failureRecords.isEmpty
                && queueDepth == 0 && exits.allSatisfy { $0 == .exited(0) }
        }

        public var description: String {
            "inputs \(inputs), correct outputs \(correctOutputs), wrong \(wrongOutputs.count), missing \(missingOutputs.count), "
                + "failure records \(failureRecords.count), queue \(queueDepth), retries \(retries), "
                + "exits \(exits.map { $0.map { "\($0)" } ?? "running" }), \(Int(seconds)) s"
        }
    }

    public static func content(for key: String, size: Int) -> String {
        // FNV-1a of the key: the same content for the same key in every process.
        var generator = SplitMix(
            seed: key.utf8.reduce(0xcbf2_9ce4_8422_2325 as UInt64) { ($0 ^ UInt64($1)) &* 0x100_0000_01b3 })
        let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
        var text = "input \(key)\n"
        while text.utf8.count < size {
            text += words[Int(generator.next() % UInt64(words.count))] + (generator.next() % 8 == 0 ? "\n" : " ")
        }
        return text
    }

    /// Makes the buckets and queue, uploads `count` inputs of about `size` bytes, and queues them.
    public static func make(
        directory: String, count: Int, size: Int = 6144,
        s3: TestEnvironment.Server = .moto
    ) async throws -> FaultFleet {
        let harness = try await WorkerHarness.make(directory: directory, s3: s3)
        let keys = (0..<count).map { n in
            "in/" + String(repeating: "0", count: max(0, 4 - String(n).count)) + "\(n).txt"
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for chunk in stride(from: 0, to: keys.count, by: 20) {
                let part = keys[chunk..<min(chunk + 20, keys.count)]
                group.addTask { for key in part { try await harness.upload(key, content(for: key, size: size)) } }
            }
            try await group.waitForAll()
        }
        try await harness.send(keys)
        return FaultFleet(harness: harness, keys: keys, directory: directory, size: size)
    }

    /// The parameters of every worker: two slots, quick retries, many attempts (faults make tasks fail and retry).
    /// The command: `before` and `after` are shell lines around the upper-casing (markers for process faults).
    public func parameters(
        workDir: String? = nil, extra: [String: String] = [:], before: String = "",
        after: String = ""
    ) -> String {
        let program = harness.script(
            "upper.sh",
            """
            \(before)
            tr 'a-z' 'A-Z' < "$1" > "$1.up" || exit 1
            \(after)
            echo "$1.up"
            """)
        var values = ["numThreads": "2", "maxAttempts": "10", "visibilityTimeout": "20", "idleTimeout": "3"]
        if let workDir { values["workDir"] = workDir }
        values.merge(extra) { $1 }
        return harness.parameters(values, program: program)
    }

    /// Starts worker `index` with its own work folder (under `workRoot`, default the test's folder), as each
    /// instance has its own disk. With `instanceRole`, it has no keys of its own and takes the role's from `imds`.
    public func start(
        _ index: Int, parameters: String, environment: [String: String] = [:], imds: String? = nil,
        instanceRole: Bool = false, workRoot: String? = nil
    ) throws -> ChildProcess {
        try harness.startWorker(
            name: "w\(index)", parameters: parameters, imds: imds,
            extraArguments: ["--set", "workDir=\(workRoot ?? directory)/work-w\(index)"],
            environment: environment, instanceRole: instanceRole)
    }

    /// Waits for the workers, then checks every output against its input. The timeout stays inside the suites' time
    /// limit (3 minutes), so that a fleet that never drains is reported here, with its workers' logs.
    public func finish(_ workers: [ChildProcess], started: ContinuousClock.Instant, timeout: Double = 150) async throws
        -> Result
    {
        // One deadline for the fleet, so a fleet that never drains fails within `timeout`, not once per worker.
        let deadline = ContinuousClock.now + .seconds(timeout)
        var exits: [ProcessOutcome?] = []
        for worker in workers {
            exits.append(await worker.wait(timeout: max(1, (deadline - ContinuousClock.now).seconds)))
        }
        for (worker, exit) in zip(workers, exits) where exit == nil { worker.signal(SIGKILL) }
        if exits.contains(where: { $0 == nil }) {
            print("the fleet did not drain within \(Int(timeout)) s; its workers' logs:\n\(logTails(workers.count))")
        }
        let seconds = (ContinuousClock.now - started).seconds
        let outputs = Set(try await harness.outputKeys())
        var correct = 0
        var wrong: [String] = []
        var missing: [String] = []
        try await withThrowingTaskGroup(of: (String, Bool?).self) { group in
            for key in keys {
                group.addTask {
                    guard outputs.contains(key + ".up") else { return (key, nil) }
                    let text = try await harness.output(key + ".up")
                    return (key, text == Self.content(for: key, size: size).uppercased())
                }
            }
            for try await (key, ok) in group {
                switch ok {
                case nil: missing.append(key)
                case true?: correct += 1
                case false?: wrong.append(key)
                }
            }
        }
        let logs = (0..<workers.count).map { harness.log("w\($0)") }
        return Result(
            inputs: keys.count, correctOutputs: correct, wrongOutputs: wrong.sorted(), missingOutputs: missing.sorted(),
            failureRecords: outputs.filter { $0.hasPrefix("_failed/") }.sorted(),
            queueDepth: try await harness.queueDepth(), exits: exits,
            retries: logs.reduce(0) { $0 + $1.components(separatedBy: "retrying AWS call").count - 1 },
            seconds: seconds, workerLogTails: logTails(workers.count))
    }

    public func logs(_ count: Int = 3) -> String { (0..<count).map { harness.log("w\($0)") }.joined(separator: "\n") }

    public func logTails(_ count: Int = 3) -> String { harness.logTails((0..<count).map { "w\($0)" }) }
}

/// A small deterministic generator (SplitMix64): an input's content follows from its key, and a random test can be
/// replayed from its printed seed.
public struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
