import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import TestSupport
import Worker

/// A transport or service fault injected by the fault proxy while three workers drain the queue.
struct TransportFault: Sendable, CustomTestStringConvertible {
    var name: String
    var rules: String
    /// Text the workers' logs must show: the fault was met and got past.
    var logShows = "retrying AWS call"
    var testDescription: String { name }

    static let all: [TransportFault] = [
        TransportFault(name: "S3 503 SlowDown and 500s", rules: """
            [{"service":"s3","operation":"GetObject","error":{"code":"SlowDown","status":503},"probability":0.25},
             {"service":"s3","operation":"PutObject","error":{"code":"InternalError","status":500},"probability":0.25}]
            """),
        TransportFault(name: "SQS throttling", rules: """
            [{"service":"sqs","error":{"code":"ThrottlingException","status":400},"probability":0.2}]
            """),
        TransportFault(name: "TCP resets", rules: #"[{"reset":true,"probability":0.1}]"#),
        // Latency is no error: nothing to retry, only slower tasks (task.seconds in the log).
        TransportFault(name: "1-3 s latency", rules: """
            [{"latency":{"min_ms":1000,"max_ms":3000},"probability":0.15}]
            """, logShows: "task done"),
        TransportFault(name: "GET aborted mid-body", rules: """
            [{"service":"s3","operation":"GetObject","response":{"abort_frac":0.5},"probability":0.3}]
            """),
        TransportFault(name: "upload cut halfway", rules: """
            [{"service":"s3","operation":"PutObject","request":{"cut_upload":{"after_bytes":3072}},"probability":0.3}]
            """),
        // Every slot's first long poll hangs: each must time out on its own (wait + 15 s) and poll again.
        TransportFault(name: "ReceiveMessage hangs until the client's timeout", rules: """
            [{"service":"sqs","operation":"ReceiveMessage","timeout_ms":120000,"times":6}]
            """, logShows: "Timeout was reached"),
    ]
}

extension S3FaultTests {
    /// Every input gets exactly one correct output, nothing is given up, the queue ends empty, every worker exits
    /// cleanly, and the workers' logs show the faults they got past.
    @Test(arguments: TransportFault.all)
    func aFleetDrainsThroughTransportFaults(_ fault: TransportFault) async throws {
        try await withTemporaryDirectory { dir in
            let fleet = try await FaultFleet.make(directory: dir, count: 120)
            try await TestEnvironment.setFaultRules(fault.rules)
            defer { Task { try? await TestEnvironment.setFaultRules("[]") } }
            let started = ContinuousClock.now
            let parameters = fleet.parameters()
            let proxy = try FaultFleet.throughProxy()
            let workers = try (0..<3).map { try fleet.start($0, parameters: parameters, environment: proxy) }
            let fired = try await TestEnvironment.faultsFired()
            let result = try await fleet.finish(workers, started: started)
            try await TestEnvironment.setFaultRules("[]")
            print("fault scenario '\(fault.name)': \(result), faults fired \(try await TestEnvironment.faultsFired() - fired)")
            #expect(result.passed, "\(result)\n\(fleet.logs().suffix(3000))")
            #expect(fleet.logs().contains(fault.logShows), "no sign of the fault in the logs: \(result)")
        }
    }
}
