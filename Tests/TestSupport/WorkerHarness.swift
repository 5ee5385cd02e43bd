import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Testing
import Worker

/// Drives real `parallelizer run` processes against moto: buckets, a queue, inputs, workers, and what they left.
public struct WorkerHarness: Sendable {
    public let directory: String
    public let inputBucket: String
    public let outputBucket: String
    public let queueURL: String
    public let context: AWSContext
    /// Where S3 is: moto, or SeaweedFS (which takes moto's test key too, and checks the signing time as AWS does).
    public let s3Server: TestEnvironment.Server
    public let s3Context: AWSContext
    public var s3: S3Client { try! S3Client(context: s3Context) }
    public var sqs: SQSClient { SQSClient(context: context) }

    /// The built executable, next to the test bundle.
    public static var binary: String {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBufferPointer { raw in
            raw.withMemoryRebound(to: CChar.self) { readlink("/proc/self/exe", $0.baseAddress!, 4095) }
        }
        let exe = String(decoding: buffer.prefix(max(0, n)), as: UTF8.self)
        let dir = exe.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        // The xctest bundle is a folder on Linux builds of some toolchains; walk up until the binary is found.
        var candidate = dir
        for _ in 0..<4 {
            if access(candidate + "/parallelizer", X_OK) == 0 { return candidate + "/parallelizer" }
            candidate = candidate.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(
                separator: "/")
        }
        return dir + "/parallelizer"
    }

    /// Creates a fresh pair of buckets and a queue (with `queueAttributes`), in a fresh local folder.
    /// A harness whose queue has a dead-letter queue (its redrive policy, `maxReceiveCount`), and that queue's URL.
    public static func makeWithDeadLetterQueue(directory: String, maxReceiveCount: Int = 3) async throws
        -> (WorkerHarness, deadLetterQueue: String)
    {
        let sqs = SQSClient(context: try TestEnvironment.motoContext())
        let dlq = try await sqs.createQueue(name: uniqueName("pzw-dlq"), logger: quietLogger)
        let arn = try await sqs.getQueueAttributes(queueURL: dlq, names: ["QueueArn"], logger: quietLogger)["QueueArn"]
        let policy = #"{"deadLetterTargetArn":"\#(arn ?? "")","maxReceiveCount":"\#(maxReceiveCount)"}"#
        return (try await make(directory: directory, queueAttributes: ["RedrivePolicy": policy]), dlq)
    }

    public static func make(
        directory: String, queueAttributes: [String: String] = [:],
        s3 s3Server: TestEnvironment.Server = .moto
    ) async throws -> WorkerHarness {
        let context = try TestEnvironment.motoContext()
        let s3Context =
            s3Server == .moto
            ? context
            : TestEnvironment.context(
                endpoint: try TestEnvironment.endpoint(s3Server), credentials: try TestEnvironment.motoCredentials())
        let s3 = try S3Client(context: s3Context)
        let name = uniqueName("pzw")
        try await s3.createBucket(name + "-in", logger: quietLogger)
        try await s3.createBucket(name + "-out", logger: quietLogger)
        let queue = try await SQSClient(context: context).createQueue(
            name: name, attributes: queueAttributes, logger: quietLogger)
        return WorkerHarness(
            directory: directory, inputBucket: name + "-in", outputBucket: name + "-out", queueURL: queue,
            context: context, s3Server: s3Server, s3Context: s3Context)
    }

    public func upload(_ key: String, _ text: String) async throws {
        try await s3.putObject(bucket: inputBucket, key: key, bytes: Array(text.utf8), logger: quietLogger)
    }

    public func send(_ bodies: [String]) async throws {
        var index = 0
        while index < bodies.count {
            let batch = bodies[index..<min(index + 10, bodies.count)].enumerated().map {
                (id: "m\($0.offset)", body: $0.element)
            }
            let result = try await sqs.sendMessageBatch(queueURL: queueURL, entries: Array(batch), logger: quietLogger)
            precondition(result.failed.isEmpty, "send failed: \(result.failed.map(\.message))")
            index += 10
        }
    }

    /// The parameters every test needs, as key=value lines, plus `extra`.
    public func parameters(_ extra: [String: String] = [:], program: String) -> String {
        var values = [
            "queueURL": queueURL, "inputBucket": inputBucket, "outputBucket": outputBucket, "analysisProgram": program,
            "workDir": directory + "/work-\(UInt32.random(in: 0..<UInt32.max))", "logFile": directory + "/worker.log",
            "idleTimeout": "2", "shouldShutdown": "false", "visibilityTimeout": "30", "maxAttempts": "3",
            // A dead end powers off at once here: the pause is for an operator over SSH.
            "deadEndPause": "0",
        ]
        values.merge(extra) { $1 }
        return values.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: "\n") + "\n"
    }

    /// Starts a worker with `parameters` in a `--config` file (or none), IMDS as given.
    /// - Parameter instanceRole: give the worker no keys, so it takes the role's credentials from `imds`.
    public func startWorker(
        name: String, parameters: String?, imds: String? = nil, extraArguments: [String] = [],
        environment extra: [String: String] = [:], instanceRole: Bool = false
    ) throws -> ChildProcess {
        var arguments = ["run", "--receive-wait-seconds", "1", "--retry-backoff-seconds", "1"] + extraArguments
        if let parameters {
            let path = "\(directory)/\(name).params"
            LocalFile.write(path, Array(parameters.utf8))
            arguments += ["--config", path]
        }
        let moto = try TestEnvironment.endpoint(.moto)
        let creds = try TestEnvironment.motoCredentials()
        var environment = [
            "AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": creds.accessKeyID,
            "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey,
            "AWS_REGION": "us-east-1", "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": directory,
        ]
        if s3Server != .moto { environment["AWS_ENDPOINT_URL_S3"] = try TestEnvironment.endpoint(s3Server) }
        if let imds {
            environment["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = imds
        } else {
            environment["AWS_EC2_METADATA_DISABLED"] = "true"
        }
        if instanceRole {
            environment.removeValue(forKey: "AWS_ACCESS_KEY_ID")
            environment.removeValue(forKey: "AWS_SECRET_ACCESS_KEY")
        }
        environment.merge(extra) { $1 }
        return try ProcessRunner().start(
            argv: [Self.binary] + arguments, environment: environment, directory: directory,
            stdoutPath: "\(directory)/\(name).stdout", stderrPath: "\(directory)/\(name).log")
    }

    /// Runs a one-shot subcommand (`enqueue`, `status`) with moto's credentials; returns its exit and stdout.
    public func command(_ name: String, _ arguments: [String]) async throws -> (ProcessOutcome?, String) {
        let process = try startWorkerProcess(name: name, arguments: arguments)
        let outcome = await process.wait(timeout: 240)
        return (outcome, LocalFile.readText("\(directory)/\(name).stdout") ?? "")
    }

    public func startWorkerProcess(name: String, arguments: [String]) throws -> ChildProcess {
        let creds = try TestEnvironment.motoCredentials()
        var environment = [
            "AWS_ENDPOINT_URL": try TestEnvironment.endpoint(.moto), "AWS_ACCESS_KEY_ID": creds.accessKeyID,
            "AWS_SECRET_ACCESS_KEY": creds.secretAccessKey, "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PATH": "/usr/bin:/bin", "HOME": directory,
        ]
        if s3Server != .moto { environment["AWS_ENDPOINT_URL_S3"] = try TestEnvironment.endpoint(s3Server) }
        return try ProcessRunner().start(
            argv: [Self.binary] + arguments, environment: environment, directory: directory,
            stdoutPath: "\(directory)/\(name).stdout", stderrPath: "\(directory)/\(name).log")
    }

    /// A helper script of the repository (`scripts/lib/NAME`).
    public static func scriptPath(_ name: String) -> String {
        var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        parts.removeLast(3)
        return parts.joined(separator: "/") + "/scripts/lib/" + name
    }

    public func log(_ name: String) -> String { LocalFile.readText("\(directory)/\(name).log") ?? "" }

    /// The last `lines` lines of each named worker's log, headed by its name: what a failed or timed-out fleet test
    /// prints, so that the failure explains itself.
    public func logTails(_ names: [String], lines: Int = 40) -> String {
        names.map { name in
            let tail = log(name).split(separator: "\n", omittingEmptySubsequences: false).suffix(lines)
            return "== \(name).log, last \(tail.count) lines\n" + tail.joined(separator: "\n")
        }.joined(separator: "\n")
    }

    /// Every key in the output bucket, but the daemon's own bookkeeping (`_parallelizer/`: the notes of the
    /// receives it gave back unrun), which `releaseNotes()` lists.
    public func outputKeys() async throws -> [String] {
        try await allOutputKeys().filter { !$0.hasPrefix("_parallelizer/") && !$0.hasPrefix("_logs/") }
    }

    /// The daemon's notes of the receives it gave back unrun: `<message id>/<receive count>`.
    public func releaseNotes() async throws -> [String] {
        try await allOutputKeys().filter { $0.hasPrefix("_parallelizer/releases/") }
            .map { String($0.dropFirst("_parallelizer/releases/".count)) }
    }

    public func allOutputKeys() async throws -> [String] {
        var keys: [String] = []
        try await s3.listAll(bucket: outputBucket, logger: quietLogger) { page throws(AWSError) in
            keys += page.map(\.key)
        }
        return keys.sorted()
    }

    public func output(_ key: String) async throws -> String {
        let path = directory + "/fetched-\(UInt32.random(in: 0..<UInt32.max))"
        defer { unlink(path) }
        try await s3.getObject(bucket: outputBucket, key: key, to: path, logger: quietLogger)
        let text = LocalFile.readText(path) ?? ""
        // Failure records and outputs are scanned like logs (a report asked to show credentials is the exception).
        if !SecretScan.exempt(key) {
            for leak in SecretScan.leaks(in: text) {
                Issue.record("a secret (\(leak)) leaked into s3://\(outputBucket)/\(key)")
            }
        }
        return text
    }

    /// Visible + in flight + delayed.
    public func queueDepth() async throws -> Int {
        try await sqs.messageCounts(queueURL: queueURL, logger: quietLogger).total
    }

    /// Writes an executable script into the folder and returns its path.
    public func script(_ name: String, _ body: String) -> String {
        let path = "\(directory)/\(name)"
        LocalFile.write(path, Array(("#!/bin/sh\n" + body).utf8), mode: 0o755)
        return path
    }
}

/// A private IMDSv2 stand-in process for one test (user-data, instance id, spot notices).
public struct IMDSStandIn: Sendable {
    public let endpoint: String
    let process: ChildProcess

    /// - Parameter credentialLifetime: hand out real temporary credentials from moto's STS that say they expire
    ///   after this many seconds.
    /// - Parameter rotatingUser: instead, hand out keys of this new IAM user, each deleted from moto when it expires.
    public static func start(
        directory: String, userData: String?, instanceID: String = "i-0test",
        credentialLifetime: Int? = nil, rotatingUser: String? = nil,
        roleARN: String? = nil
    ) async throws -> IMDSStandIn {
        // The stand-in picks a free port itself and writes it down: a random one may be taken (even by an outgoing
        // connection's ephemeral port).
        let tag = UInt32.random(in: 0...UInt32.max)
        let portFile = directory + "/imds-port-\(tag)"
        var argv = [
            "/usr/bin/env", "python3", Self.script, "--port", "0", "--port-file", portFile, "--instance-id", instanceID,
        ]
        if let credentialLifetime {
            argv += [
                "--credential-lifetime", String(credentialLifetime), "--sts-endpoint",
                try TestEnvironment.endpoint(.moto),
                "--sts-key", try TestEnvironment.value("PZ_TEST_MOTO_KEY"),
                "--sts-secret", try TestEnvironment.value("PZ_TEST_MOTO_SECRET"),
                "--role-arn", try roleARN ?? TestEnvironment.value("PZ_TEST_MOTO_ROLE_ARN"),
            ]
            if let rotatingUser { argv += ["--rotate-user", rotatingUser] }
        }
        if let userData {
            let path = directory + "/user-data-\(tag)"
            LocalFile.write(path, Array(userData.utf8))
            argv += ["--user-data-file", path]
        }
        let process = try ProcessRunner().start(
            argv: argv,
            environment: ["PATH": "/usr/local/bin:/usr/bin:/bin"].merging(
                TestEnvironment.environment.filter { $0.key == "PATH" || $0.key.hasPrefix("PYENV") || $0.key == "HOME" }
            ) { $1 },
            directory: directory, stdoutPath: directory + "/imds-\(tag).out", stderrPath: directory + "/imds-\(tag).err"
        )
        if let port = await portWritten(to: portFile) {
            let standIn = IMDSStandIn(endpoint: "http://127.0.0.1:\(port)", process: process)
            for _ in 0..<100 {
                if (try? await HTTPClientProbe.get(standIn.endpoint + "/_standin/stats")) == 200 { return standIn }
                try await Task.sleep(nanoseconds: 100_000_000)
            }
        }
        process.signal(SIGKILL)
        throw TestEnvironment.Missing(
            name: "IMDS stand-in (\(LocalFile.readText(directory + "/imds-\(tag).err")?.suffix(500) ?? ""))")
    }

    static var script: String { WorkerHarness.scriptPath("imds_standin.py") }

    public func configure(_ json: String) async throws {
        _ = try await HTTPClientProbe.post(endpoint + "/_standin/config", json)
    }

    public func stats() async throws -> JSONValue {
        try JSONValue.parse(
            try await HTTPClient().execute(HTTPRequest(method: "GET", url: endpoint + "/_standin/stats")).body)
    }

    public func stop() async {
        process.signal(SIGTERM)
        _ = await process.wait(timeout: 5)
    }
}

import HTTPCurl

enum HTTPClientProbe {
    static func get(_ url: String) async throws -> Int {
        try await HTTPClient().execute(
            HTTPRequest(
                method: "GET", url: url,
                timeouts: Timeouts(connect: 1, lowSpeedBytes: 0, lowSpeedSeconds: 0, total: 2))
        ).status
    }
    static func post(_ url: String, _ body: String) async throws -> Int {
        try await HTTPClient().execute(
            HTTPRequest(
                method: "POST", url: url, headers: [("Content-Type", "application/json")],
                body: .bytes(Array(body.utf8)))
        ).status
    }
}

extension WorkerHarness {
    /// Builds a zip with Python's zipfile: entries are (name, content, mode) or a symlink (name, target).
    public func makeZip(_ path: String, files: [(String, String, Int)], symlinks: [(String, String)] = []) async throws
    {
        var script = "import zipfile, sys\nz = zipfile.ZipFile(sys.argv[1], 'w')\n"
        for (name, content, mode) in files {
            script += "i = zipfile.ZipInfo(\(pythonString(name)))\ni.external_attr = (0o100000 | \(mode)) << 16\n"
            script += "z.writestr(i, \(pythonString(content)))\n"
        }
        for (name, target) in symlinks {
            script += "i = zipfile.ZipInfo(\(pythonString(name)))\ni.external_attr = (0o120777) << 16\n"
            script += "z.writestr(i, \(pythonString(target)))\n"
        }
        script += "z.close()\n"
        LocalFile.write(directory + "/mkzip.py", Array(script.utf8))
        let outcome = try await ProcessRunner().run(
            argv: ["/usr/bin/env", "python3", directory + "/mkzip.py", path],
            environment: TestEnvironment.environment.filter {
                $0.key == "PATH" || $0.key.hasPrefix("PYENV") || $0.key == "HOME"
            },
            directory: directory, stdoutPath: directory + "/mkzip.out", stderrPath: directory + "/mkzip.err", user: nil,
            timeout: 60)
        precondition(outcome.succeeded, "mkzip failed: \(LocalFile.readText(directory + "/mkzip.err") ?? "")")
    }

    public func uploadFile(bucket: String, key: String, path: String) async throws {
        try await s3.putObject(bucket: bucket, key: key, file: path, logger: quietLogger)
    }
}

func pythonString(_ text: String) -> String {
    "'" + text.replacing("\\", with: "\\\\").replacing("'", with: "\\'").replacing("\n", with: "\\n") + "'"
}

/// PUTs `data` with an `aws-chunked` body whose CRC-32C trailer says `crc`, right or wrong: how a test stores an
/// object whose stored checksum it chooses (moto keeps the trailer's value unchecked; SeaweedFS checks it).
public func putWithCRC32CTrailer(_ s3: S3Client, bucket: String, key: String, data: [UInt8], crc: UInt32) async throws {
    let framing = ChunkedTrailerFraming(dataLength: Int64(data.count), trailerName: "x-amz-checksum-crc32c")
    let request = AWSRequest(
        method: "PUT", path: "/\(bucket)/\(key)",
        headers: [
            ("Content-Encoding", "aws-chunked"), ("x-amz-decoded-content-length", "\(data.count)"),
            ("x-amz-trailer", "x-amz-checksum-crc32c"), ("x-amz-sdk-checksum-algorithm", "CRC32C"),
        ], body: .bytes(framing.prefix + data + framing.suffix(crc: crc)), payload: .streamingUnsignedTrailer)
    _ = try await s3.context.client.send(request, to: s3.endpoint, signing: .s3, logger: quietLogger)
}
